"""Every bundled model under ``models/``, served over HTTP as a user calls it and scored against the
real labels of a validation case: Dice at least the card's recorded value minus 0.02. The multi-class
model gets FLAIR (as a DICOM series) + T1c and answers per-region JSON and a multi-segment DICOM SEG."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from segcore.card import ModelCard
from segcore.metrics import dice
from tests.conftest import MODELS_DIR, shared_case, start_server, stop_server, wait_empty
from tests.dicom_fixtures import labels_from_seg, series_from_image, zip_of
from tests.helpers import make_broken_version, make_threshold_model, synthetic_head

BUNDLED = ("brats-wt-flair", "brats-wt-flair-3d", "brats-mc-flair-t1c-3d")
CASE = "brats_2013_pat0004_1"  # a validation case of all three cards, never trained on


def _card(name: str) -> ModelCard:
    root = MODELS_DIR / name
    return ModelCard.load(root / str(max(int(p.name) for p in root.iterdir() if p.name.isdigit())))


@pytest.fixture(scope="module")
def bundled(tmp_path_factory):
    """The service on the repository's own models directory (what ``make serve`` serves)."""
    missing = [n for n in BUNDLED if not (MODELS_DIR / n).is_dir()]
    assert not missing, f"bundled models missing from the repository: {missing}"
    srv = start_server(
        tmp_path_factory.mktemp("bundled"),
        {"SEG_MODELS_DIR": str(MODELS_DIR), "SEG_MAX_UPLOAD_MB": "64", "SEG_POLL_SECONDS": "0"},
    )
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def case():
    folder = shared_case("brats2015_deepmedic", CASE)
    labels = np.rint(sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "OTMultiClass.nii.gz")))).astype(int)
    return folder, labels


def test_every_bundled_version_is_serving_and_ready(bundled):
    with bundled.client() as client:
        models = {m["name"]: m for m in client.get("/models").json()["models"]}
        ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    for name in BUNDLED:
        on_disk = sorted(int(p.name) for p in (MODELS_DIR / name).iterdir() if p.name.isdigit())
        states = {v["version"]: v["state"] for v in models[name]["versions"]}
        assert set(states) == set(on_disk)
        # The newest version passes the quality gate and is served; older ones stay loaded beside it.
        assert states[on_disk[-1]] == "serving"
        assert all(states[v] in ("loaded", "available") for v in on_disk[:-1]), states
        assert models[name]["served_version"] == on_disk[-1]
        assert ready.json()["models"][name] == on_disk[-1]


def _nifti_mask(content: bytes, tmp_path) -> np.ndarray:
    (tmp_path / "mask.nii.gz").write_bytes(content)
    return sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "mask.nii.gz")))


def test_3d_whole_tumour_model_reaches_its_recorded_dice_over_http(bundled, case, tmp_path):
    folder, labels = case
    with bundled.client(timeout=1800) as client:
        r = client.post(
            "/segment",
            params={"model": "brats-wt-flair-3d"},
            files={"flair": ("flair.nii.gz", (folder / "Flair_subtrMeanDivStd.nii.gz").read_bytes())},
        )
    assert r.status_code == 200, r.text
    assert r.headers["x-model-name"] == "brats-wt-flair-3d"
    mask = _nifti_mask(r.content, tmp_path)
    recorded = _card("brats-wt-flair-3d").validation_dice[CASE]  # 0.936
    assert dice(mask > 0, labels > 0) >= recorded - 0.02
    assert wait_empty(bundled.tmp_dir) == []


def _flair_series(folder) -> tuple[bytes, sitk.Image]:
    """The case's FLAIR as a DICOM series (int16, slope 0.001: the z-scored values to 3 decimals)."""
    flair = sitk.ReadImage(str(folder / "Flair_subtrMeanDivStd.nii.gz"), sitk.sitkFloat32)
    files = series_from_image(flair, phi={"PatientName": "BraTS^pat0004", "PatientID": CASE}, slope=0.001)
    return zip_of([(f"{i:03d}.dcm", f) for i, f in enumerate(files)]), flair


def test_multiclass_model_on_flair_dicom_plus_t1c_answers_regions_and_a_multi_segment_seg(bundled, case):
    folder, labels = case
    card = _card("brats-mc-flair-t1c-3d")
    flair_zip, grid = _flair_series(folder)
    files = {
        "flair": ("flair.zip", flair_zip),
        "t1ce": ("t1c.nii.gz", (folder / "T1c_subtrMeanDivStd.nii.gz").read_bytes()),  # alias of t1c
    }
    with bundled.client(timeout=1800) as client:
        seg_r = client.post("/segment", params={"model": card.name, "format": "dicom-seg"}, files=files)
        json_r = client.post("/segment", params={"model": card.name, "format": "json"}, files=files)
    assert seg_r.status_code == 200, seg_r.text
    assert json_r.status_code == 200, json_r.text
    seg = pydicom.dcmread(io.BytesIO(seg_r.content))
    assert [int(s.SegmentNumber) for s in seg.SegmentSequence] == [1, 2, 3]
    assert {s.SegmentLabel for s in seg.SegmentSequence} == set(card.labels.values())
    predicted = labels_from_seg(seg_r.content, grid, {name: value for value, name in card.labels.items()})
    # BraTS regions from the archive's labels (1-4; 3 is non-enhancing core) and from the answer (1, 2, 4)
    regions = {"WT": ([1, 2, 3, 4], [1, 2, 4]), "TC": ([1, 3, 4], [1, 4]), "ET": ([4], [4])}
    for region, (truth_values, predicted_values) in regions.items():
        score = dice(np.isin(predicted, predicted_values), np.isin(labels, truth_values))
        assert score >= card.validation_dice[f"{CASE}:{region}"] - 0.02, (region, score)
    body = json_r.json()
    assert {k: v["labels"] for k, v in body["regions"].items()} == {"WT": [1, 2, 4], "TC": [1, 4], "ET": [4]}
    for region, (_, predicted_values) in regions.items():  # the same study: JSON volumes = SEG voxels
        assert body["regions"][region]["voxels"] == int(np.isin(predicted, predicted_values).sum())
    assert {e["value"]: e["voxels"] for e in body["labels"]} == {v: int((predicted == v).sum()) for v in (1, 2, 4)}
    assert wait_empty(bundled.tmp_dir) == []


def test_modalities_that_do_not_overlap_are_refused_over_http(bundled, tmp_path):
    head, _ = synthetic_head()
    far, _ = synthetic_head()
    far.SetOrigin((400.0, 400.0, 400.0))  # another place in space: not the same study
    for name, image in (("flair", head), ("t1c", far)):
        sitk.WriteImage(image, str(tmp_path / f"{name}.nii.gz"))
    with bundled.client() as client:
        r = client.post(
            "/segment",
            params={"model": "brats-mc-flair-t1c-3d"},
            files={m: (f"{m}.nii.gz", (tmp_path / f"{m}.nii.gz").read_bytes()) for m in ("flair", "t1c")},
        )
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "modalities_do_not_overlap"
    assert wait_empty(bundled.tmp_dir) == []


def test_readyz_is_503_and_names_a_model_that_cannot_be_served(tmp_path):
    """One good model is not enough: a models directory where one model only has a broken version is
    not ready, and /readyz says which model and why."""
    models = tmp_path / "models"
    make_threshold_model(models, name="good")
    make_broken_version(models, "broken", 1, "corrupt_saved_model")
    srv = start_server(tmp_path, {"SEG_MODELS_DIR": str(models), "SEG_DEFAULT_MODEL": "good"}, wait_ready=False)
    try:
        with srv.client() as client:
            ready = client.get("/readyz")
            states = {v["version"]: v["state"] for v in client.get("/models/broken").json()["versions"]}
    finally:
        stop_server(srv)
    assert states == {1: "failed"}
    assert ready.status_code == 503, ready.text
    body = ready.json()
    assert body["error"] == "not_ready" and "broken" in body["detail"]
    assert body["models"] == {"good": 1}
    assert list(body["not_ready"]) == ["broken"] and "failed" in body["not_ready"]["broken"]
