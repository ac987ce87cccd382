"""End to end: the real server (uvicorn, loopback) segments a real FLAIR."""

import gzip

import numpy as np
import pytest
import SimpleITK as sitk

from segcore.card import ModelCard
from segcore.metrics import dice
from tests.conftest import bundled_version_dir, shared_case, wait_empty


def _read_mask(content: bytes, tmp_path) -> sitk.Image:
    path = tmp_path / "mask.nii.gz"
    path.write_bytes(content)
    return sitk.ReadImage(str(path))


def test_flair_in_whole_tumour_mask_out_on_the_input_grid(server, tmp_path):
    case = shared_case("brats2018_deepvoxnet2", "case_6")  # a validation case, never trained on
    flair_path = case / "FLAIR.nii.gz"
    with server.client() as client:
        r = client.post("/segment", files={"flair": ("FLAIR.nii.gz", flair_path.read_bytes())})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/gzip"
    assert r.headers["x-model-name"] == "brats-wt-flair"
    assert int(r.headers["x-model-version"]) >= 1
    assert float(r.headers["x-inference-ms"]) > 0
    assert gzip.decompress(r.content)[344:348] == b"n+1\0"
    mask = _read_mask(r.content, tmp_path)
    flair = sitk.ReadImage(str(flair_path))
    assert mask.GetSize() == flair.GetSize()
    np.testing.assert_allclose(mask.GetSpacing(), flair.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(mask.GetOrigin(), flair.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(mask.GetDirection(), flair.GetDirection(), atol=1e-6)
    assert mask.GetPixelID() == sitk.sitkUInt8
    predicted = sitk.GetArrayViewFromImage(mask)
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "GT_W.nii.gz"))) > 0.5
    assert set(np.unique(predicted)) <= {0, 1}
    recorded = ModelCard.load(bundled_version_dir()).validation_dice["case_6"]  # 0.919, from training.evaluate
    assert dice(predicted > 0, truth) >= recorded - 0.02
    assert wait_empty(server.tmp_dir) == []


def test_json_answer_reports_volumes_model_and_timings(server):
    case = shared_case("brats2015_deepmedic", "brats_2013_pat0003_1")  # validation case
    with server.client() as client:
        r = client.post(
            "/segment",
            params={"format": "json"},
            files={"flair": ("Flair.nii.gz", (case / "Flair_subtrMeanDivStd.nii.gz").read_bytes())},
        )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"]["name"] == "brats-wt-flair"
    assert str(body["model"]["version"]) == r.headers["x-model-version"]
    (label,) = body["labels"]
    assert label["value"] == 1 and label["voxels"] == body["tumour_voxels"]
    assert label["volume_ml"] == body["tumour_volume_ml"] == round(label["voxels"] * 1.0 / 1000, 3)
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "OTMultiClass.nii.gz"))) > 0
    assert abs(label["voxels"] - int(truth.sum())) < 0.35 * truth.sum()  # the same order as the truth
    assert body["geometry"]["size"] == [240, 240, 155]
    assert set(body["timings_ms"]) >= {"read", "preprocess", "infer", "postprocess"}
    assert body["bounding_box"] is not None and len(body["bounding_box"]) == 3
    assert wait_empty(server.tmp_dir) == []


def test_aliases_and_uncompressed_nifti_are_accepted(server, tmp_path):
    """A plain .nii under the field name FLAIR (case-insensitive) works like a .nii.gz under flair.
    (Cropped around the tumour to stay under the test server's 16 MB upload limit.)"""
    image = sitk.ReadImage(str(shared_case("brats2018_deepvoxnet2", "case_6", "FLAIR.nii.gz")))
    crop = image[40:200, 30:210, 20:140]
    path = tmp_path / "flair.nii"
    sitk.WriteImage(crop, str(path))
    with server.client() as client:
        r = client.post("/segment", params={"format": "json"}, files={"FLAIR": ("scan.nii", path.read_bytes())})
    assert r.status_code == 200, r.text
    assert r.json()["geometry"]["size"] == [160, 180, 120]
    assert r.json()["geometry"]["origin"] == pytest.approx(list(crop.GetOrigin()))
    assert r.json()["tumour_voxels"] > 1000


def test_models_readyz_and_metrics(server):
    with server.client() as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200 and "brats-wt-flair" in ready.json()["models"]
        models = client.get("/models").json()["models"]
        (bundled,) = [m for m in models if m["name"] == "brats-wt-flair"]
        assert bundled["served_version"] == bundled["card"]["version"]
        assert any(v["state"] == "serving" for v in bundled["versions"])
        assert bundled["card"]["modalities"] == ["flair"]
        one = client.get("/models/brats-wt-flair").json()
        assert one["served_version"] == bundled["served_version"]
        assert client.get("/models/nope").status_code == 404
        reloaded = client.post("/models/brats-wt-flair/reload")
        assert reloaded.status_code == 200 and reloaded.json()["served_version"] == bundled["served_version"]
        client.get("/healthz")
        text = client.get("/metrics").text
    assert 'seg_http_requests_total{route="/healthz",status="200"}' in text
    assert "# TYPE seg_inference_seconds histogram" in text
    assert 'seg_model_served_version{model="brats-wt-flair"}' in text
