"""DICOM in (zip or several files), DICOM SEG / PNG out, on the real sagittal T1 series."""

from __future__ import annotations

import io

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from tests.conftest import wait_empty
from tests.dicom_fixtures import labels_from_seg, mprage_files, series_from_image, zip_files, zip_of
from tests.helpers import synthetic_head


@pytest.fixture(scope="module")
def mprage_zip() -> bytes:
    return zip_files(mprage_files(), prefix="t1_MPRAGE/")


@pytest.fixture(scope="module")
def series_image() -> sitk.Image:
    """What SimpleITK's own series reader makes of the folder: the reference geometry."""
    folder = str(mprage_files()[0].parent)
    (uid,) = sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder)
    return sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, uid))


def _mask(content: bytes, tmp_path) -> sitk.Image:
    path = tmp_path / "mask.nii.gz"
    path.write_bytes(content)
    return sitk.ReadImage(str(path))


def test_zip_of_a_sagittal_series_gives_a_mask_on_the_series_own_grid(server, mprage_zip, series_image, tmp_path):
    with server.client() as client:
        r = client.post("/segment", params={"model": "bright-t1"}, files={"t1": ("mprage.zip", mprage_zip)})
    assert r.status_code == 200, r.text
    mask = _mask(r.content, tmp_path)
    assert mask.GetSize() == series_image.GetSize() == (256, 256, 176)
    np.testing.assert_allclose(mask.GetSpacing(), series_image.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(mask.GetOrigin(), series_image.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(mask.GetDirection(), series_image.GetDirection(), atol=1e-4)
    # The threshold model marks bright voxels: the mask must sit on the bright voxels of the series.
    image = sitk.GetArrayViewFromImage(series_image).astype(np.float32)
    marked = sitk.GetArrayViewFromImage(mask) > 0
    assert marked.sum() > 10000
    assert image[marked].mean() > 1.5 * image[image > 0].mean()
    assert wait_empty(server.tmp_dir) == []


def test_several_dicom_files_under_one_field_work_like_a_zip(server, tmp_path):
    """60 contiguous slices sent as separate parts (under the test server's 16 MB limit)."""
    chosen = mprage_files()[60:120]
    files = [("t1", (p.name, p.read_bytes(), "application/dicom")) for p in reversed(chosen)]  # any order
    with server.client() as client:
        r = client.post("/segment", params={"model": "bright-t1"}, files=files)
    assert r.status_code == 200, r.text
    mask = _mask(r.content, tmp_path)
    folder = tmp_path / "subset"  # SimpleITK's series reader on just these files is the reference
    folder.mkdir()
    for p in chosen:
        (folder / p.name).symlink_to(p)
    (uid,) = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    reference = sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
    assert mask.GetSize() == reference.GetSize() == (256, 256, 60)
    np.testing.assert_allclose(mask.GetOrigin(), reference.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(mask.GetDirection(), reference.GetDirection(), atol=1e-4)


def test_dicom_seg_round_trip_equals_the_nifti_mask(server, mprage_zip, series_image, tmp_path):
    with server.client() as client:
        nifti = client.post("/segment", params={"model": "bright-t1"}, files={"t1": ("s.zip", mprage_zip)})
        seg_r = client.post(
            "/segment", params={"model": "bright-t1", "format": "dicom-seg"}, files={"t1": ("s.zip", mprage_zip)}
        )
    assert nifti.status_code == 200 and seg_r.status_code == 200, seg_r.text
    assert seg_r.headers["content-type"] == "application/dicom"
    mask = _mask(nifti.content, tmp_path)
    seg = hd.seg.segread(io.BytesIO(seg_r.content))
    plain = pydicom.dcmread(io.BytesIO(seg_r.content))  # pydicom reads it too
    assert plain.Modality == "SEG" and plain.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    sources = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in mprage_files()}
    source = pydicom.dcmread(next(iter(sources.values())), stop_before_pixels=True)
    # New identity, same patient and study; nothing invented.
    assert seg.SeriesInstanceUID != source.SeriesInstanceUID and seg.SOPInstanceUID not in sources
    assert seg.StudyInstanceUID == source.StudyInstanceUID and seg.PatientID == source.PatientID
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    (segment,) = seg.SegmentSequence
    assert segment.SegmentAlgorithmType == "AUTOMATIC"
    category = segment.SegmentedPropertyCategoryCodeSequence[0]
    assert (category.CodeValue, category.CodingSchemeDesignator) == ("49755003", "SCT")  # morphologically abnormal
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "108369006"  # neoplasm
    algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("bright-t1", "1")
    referenced = {i.ReferencedSOPInstanceUID for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == set(sources)
    # Decode frame by frame: each frame's position says which slice of the NIfTI mask it must equal.
    frames = seg.pixel_array
    expected = sitk.GetArrayViewFromImage(mask)
    assert frames.shape[0] == expected.shape[0] == 176
    for i, group in enumerate(seg.PerFrameFunctionalGroupsSequence):
        position = [float(v) for v in group.PlanePositionSequence[0].ImagePositionPatient]
        z = mask.TransformPhysicalPointToIndex(position)[2]
        np.testing.assert_array_equal(frames[i] > 0, expected[z] > 0)
        derived = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        ds = pydicom.dcmread(sources[derived], stop_before_pixels=True)
        np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient], position, atol=1e-3)
    # And through highdicom's geometry: the same number of voxels.
    assert int(seg.get_volume(combine_segments=True).array.astype(bool).sum()) == int((expected > 0).sum())


def test_png_overlay_preview(server, mprage_zip):
    with server.client() as client:
        r = client.post("/segment", params={"model": "bright-t1", "format": "png"}, files={"t1": ("s.zip", mprage_zip)})
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/png" and r.content[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    picture = Image.open(io.BytesIO(r.content))
    assert picture.width == 512 and picture.height > 512
    pixels = np.asarray(picture.convert("RGB")).astype(int)
    assert ((pixels[..., 0] - pixels[..., 1]) > 40).sum() > 1000  # the red overlay is there


def test_logs_carry_no_patient_identifying_values(server, mprage_zip):
    header = pydicom.dcmread(mprage_files()[0], stop_before_pixels=True)
    phi = [str(header.PatientName), str(header.PatientID), str(header.get("PatientBirthDate", ""))]
    phi = [v for v in phi if len(v) >= 4]
    assert "Rorden" in " ".join(phi)  # the test is only meaningful if the series carries these values
    before = len(server.log())
    with server.client(timeout=600) as client:  # the bundled model skull-strips this head first
        ok = client.post(
            "/segment", params={"model": "bright-t1", "format": "json"}, files={"t1": ("s.zip", mprage_zip)}
        )
        # the bundled model writing a DICOM SEG (which must carry the patient module) logs nothing either
        seg = client.post("/segment", files={"flair": ("s.zip", mprage_zip)}, params={"format": "dicom-seg"})
    assert ok.status_code == 200 and seg.status_code == 200
    logged = server.log()[before:]
    assert "segmented model=bright-t1" in logged  # the log was captured
    for value in phi:
        assert value not in logged
        assert value not in ok.text


@pytest.fixture(scope="module")
def left_lesion():
    """The synthetic head, whose bright lesion sits in the patient's left, anterior, superior quadrant
    (LPS x > centre, y < centre, z > centre), and the lesion's physical centre."""
    head, truth = synthetic_head()
    points = np.array(
        [
            truth.TransformIndexToPhysicalPoint(tuple(int(v) for v in idx[::-1]))
            for idx in np.argwhere(sitk.GetArrayViewFromImage(truth) > 0)
        ]
    )
    centre = np.array(head.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in head.GetSize()]))
    lesion = points.mean(axis=0)
    assert lesion[0] > centre[0] + 5 and lesion[1] < centre[1] - 5  # patient's left, anterior
    return head, truth, lesion, centre


@pytest.mark.parametrize("orientation", ["RAS", "PIR"])
def test_dicom_seg_marks_the_lesion_on_the_patients_left(server, left_lesion, orientation):
    """Source slices written in a non-LPS voxel order (RAS axial, PIR sagittal); the SEG is decoded by its
    own frame positions onto the grid this test wrote, and compared with the lesion this test drew."""
    head, truth, lesion, centre = left_lesion
    moved, moved_truth = sitk.DICOMOrient(head, orientation), sitk.DICOMOrient(truth, orientation)
    files = series_from_image(moved)
    with server.client() as client:
        r = client.post(
            "/segment",
            params={"model": "bright-t1", "format": "dicom-seg"},
            files={"t1": ("s.zip", zip_of([(f"{i:03d}.dcm", f) for i, f in enumerate(files)]))},
        )
    assert r.status_code == 200, r.text
    marked = labels_from_seg(r.content, moved, {"bright": 1})
    np.testing.assert_array_equal(marked, sitk.GetArrayViewFromImage(moved_truth))
    points = np.array(
        [moved.TransformIndexToPhysicalPoint(tuple(int(v) for v in idx[::-1])) for idx in np.argwhere(marked > 0)]
    )
    np.testing.assert_allclose(points.mean(axis=0), lesion, atol=0.5)
    assert points[:, 0].min() > centre[0]  # every marked voxel on the patient's left


@pytest.mark.parametrize("orientation", ["RAS", "PIR"])
def test_png_preview_shows_the_patients_left_on_the_right_and_anterior_on_top(
    server, left_lesion, tmp_path, orientation
):
    """Radiological convention, whatever the voxel order of the upload: a lesion in the patient's left
    anterior brain is drawn in the right half and the upper half of the large slice."""
    from PIL import Image

    head, _, _, _ = left_lesion
    sitk.WriteImage(sitk.DICOMOrient(head, orientation), str(tmp_path / "head.nii.gz"))
    with server.client() as client:
        r = client.post(
            "/segment",
            params={"model": "bright-t1", "format": "png"},
            files={"t1": ("head.nii.gz", (tmp_path / "head.nii.gz").read_bytes())},
        )
    assert r.status_code == 200, r.text
    pixels = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB")).astype(int)
    header, width = 40, pixels.shape[1]
    height = round(width * 72 / 64)  # the large slice: 64 x 72 mm shown at 512 px wide
    main = pixels[header : header + height]
    red = (main[..., 0] - main[..., 1]) > 40
    assert red.sum() > 200, "no overlay in the large slice"
    rows, cols = np.nonzero(red)
    assert cols.mean() > 0.6 * width, f"lesion drawn at column {cols.mean():.0f} of {width}: not on the right"
    assert rows.mean() < 0.45 * height, f"lesion drawn at row {rows.mean():.0f} of {height}: not anterior (top)"
