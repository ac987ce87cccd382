"""A whole DICOM study in one zip (field ``study``), made from a real BraTS case's four modalities."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from app.errors import ApiError
from app.inputs.study import StudyLimits, read_study
from app.inputs.uploads import UploadedFile
from segcore.card import ModelCard
from tests.study_fixtures import PROTOCOL, brainy_image, study_zip, write

FOUR = ["flair", "t1", "t1c", "t2"]


def _card(modalities: list[str]) -> ModelCard:
    return ModelCard(name="four", version=1, dims=2, modalities=modalities, spacing_mm=[1, 1, 1], labels={1: "t"})


def _upload(tmp_path, content: bytes) -> list[UploadedFile]:
    path = write(tmp_path, content)
    return [UploadedFile(field="study", filename="study.zip", path=path, size=len(content))]


@pytest.fixture(scope="module")
def four_series() -> tuple[bytes, dict]:
    return study_zip(FOUR)


def test_a_study_of_four_series_and_a_localizer_is_mapped_onto_the_modalities(tmp_path, four_series):
    content, uids = four_series
    study = read_study(_upload(tmp_path, content), _card(FOUR), StudyLimits())
    assert {m: s["series_uid"] for m, s in study.series.items()} == {m: uids[PROTOCOL[m][0]] for m in FOUR}
    assert {m: s["description"] for m, s in study.series.items()} == {m: PROTOCOL[m][0] for m in FOUR}
    for modality in FOUR:  # the right pixels, on the right grid
        expected = brainy_image(modality)
        got = study.images[modality]
        assert got.GetSize() == expected.GetSize()
        np.testing.assert_allclose(got.GetOrigin(), expected.GetOrigin(), atol=1e-3)
        np.testing.assert_array_equal(sitk.GetArrayViewFromImage(got), sitk.GetArrayViewFromImage(expected))
        assert len(study.dicom[modality].datasets) == expected.GetSize()[2]
    # nothing about the patient in what the answer will carry
    assert "Synthetic" not in str(study.series) and "SYN-0001" not in str(study.series)


def test_an_ambiguous_study_is_refused_listing_the_candidates(tmp_path):
    content, uids = study_zip(["flair", "t1c"], extra={"t2_tirm_cor_dark-fluid": "flair"}, localizer=False)
    with pytest.raises(ApiError) as refused:
        read_study(_upload(tmp_path, content), _card(["flair", "t1c"]), StudyLimits())
    assert refused.value.status == 422 and refused.value.code == "ambiguous_study"
    for description in ("t2_tirm_tra_dark-fluid", "t2_tirm_cor_dark-fluid"):
        assert description in refused.value.detail and uids[description] in refused.value.detail
    assert "Synthetic" not in refused.value.detail


def test_an_incomplete_study_is_refused_naming_what_it_holds(tmp_path):
    content, _ = study_zip(["flair"], localizer=True)
    with pytest.raises(ApiError) as refused:
        read_study(_upload(tmp_path, content), _card(["flair", "t1c"]), StudyLimits())
    assert refused.value.status == 422 and refused.value.code == "series_not_found"
    assert "t1c" in refused.value.detail and "localizer" in refused.value.detail


def test_a_study_zip_over_http_names_the_series_and_carries_warnings(server, tmp_path):
    """The bundled FLAIR model reads the FLAIR series out of a FLAIR + T2 study; JSON and the header say
    what was chosen and what to doubt."""
    content, uids = study_zip(["flair", "t2"], localizer=True)
    with server.client() as client:
        r = client.post("/segment", params={"format": "json"}, files={"study": ("study.zip", content)})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["series"]["flair"]["series_uid"] == uids["t2_tirm_tra_dark-fluid"]
        assert body["preprocessing"]["skull_stripped_input"] == {"flair": True}
        assert r.headers["X-Input-Warnings"] == (",".join(w["code"] for w in body["warnings"]) or "none")
        assert body["preprocessing"]["brain_volume_ml"] > 300 and body["tumour_volume_ml"] > 5
        seg = client.post("/segment", params={"format": "dicom-seg"}, files={"study": ("study.zip", content)})
        assert seg.status_code == 200, seg.text
        assert "X-Input-Warnings" in seg.headers
        mixed = client.post("/segment", files={"study": ("study.zip", content), "flair": ("x.zip", content)})
        assert mixed.status_code == 422 and mixed.json()["error"] == "mixed_study_fields"


def test_a_dicom_seg_references_every_source_series_used(tmp_path):
    """The multi-modality case: frames derive from the FLAIR, the T1c series is referenced as well."""
    import pydicom

    from app.outputs.dicom_seg import write_dicom_seg

    content, uids = study_zip(["flair", "t1c"], localizer=False)
    study = read_study(_upload(tmp_path, content), _card(["flair", "t1c"]), StudyLimits())
    flair = study.images["flair"]
    array = np.zeros(sitk.GetArrayViewFromImage(flair).shape, dtype=np.uint8)
    array[20:30, 100:120, 100:120] = 1
    mask = sitk.GetImageFromArray(array)
    mask.CopyInformation(flair)
    path = write_dicom_seg(mask, study.dicom["flair"].datasets, _card(["flair", "t1c"]), tmp_path, "test",
                           [study.dicom["t1c"].datasets])
    seg = pydicom.dcmread(path)
    referenced = {str(item.SeriesInstanceUID): len(item.ReferencedInstanceSequence)
                  for item in seg.ReferencedSeriesSequence}
    assert referenced == {uids["t2_tirm_tra_dark-fluid"]: 60, uids["t1_mprage_tra_p2_iso_Gd"]: 60}
