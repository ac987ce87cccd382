"""Comparing two DICOM SEGs of the same source series: same referenced instances, same pixels per
source slice (frames matched through the source image each frame is derived from)."""

from __future__ import annotations

import numpy as np
import pydicom


def frames_by_source(seg: pydicom.Dataset) -> dict[str, np.ndarray]:
    """``{referenced source SOP Instance UID: frame}`` for every frame of a SEG."""
    frames = seg.pixel_array
    if frames.ndim == 2:
        frames = frames[None]
    out = {}
    for i, group in enumerate(seg.PerFrameFunctionalGroupsSequence):
        source = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        out[str(source)] = frames[i]
    return out


def referenced_instances(seg: pydicom.Dataset) -> set[str]:
    return {
        str(item.ReferencedSOPInstanceUID)
        for series in seg.ReferencedSeriesSequence
        for item in series.ReferencedInstanceSequence
    }


def assert_same_segmentation(seg: pydicom.Dataset, reference: pydicom.Dataset, sources: set[str]) -> None:
    """``seg`` encodes exactly what ``reference`` does, on the same source instances ``sources``."""
    assert seg.Modality == "SEG" and seg.SOPClassUID == reference.SOPClassUID
    assert seg.StudyInstanceUID == reference.StudyInstanceUID
    assert seg.FrameOfReferenceUID == reference.FrameOfReferenceUID
    assert referenced_instances(seg) == referenced_instances(reference) == sources
    ours, theirs = frames_by_source(seg), frames_by_source(reference)
    assert set(ours) == set(theirs) == sources
    marked = 0
    for uid, frame in theirs.items():
        np.testing.assert_array_equal(ours[uid], frame, err_msg=f"frame for source {uid} differs")
        marked += int(frame.astype(bool).sum())
    assert marked > 10000  # the comparison is about a real mask, not two empty ones
    assert [s.SegmentLabel for s in seg.SegmentSequence] == [s.SegmentLabel for s in reference.SegmentSequence]
