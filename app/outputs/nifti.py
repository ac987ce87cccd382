"""The mask as NIfTI (``format=nifti``, the default answer)."""

from __future__ import annotations

from pathlib import Path

import SimpleITK as sitk


def write_nifti(mask: sitk.Image, directory: Path) -> Path:
    """Write ``mask`` (uint8) as ``.nii.gz``; SimpleITK writes its own origin/spacing/direction into
    the qform and sform, so any viewer puts it where the input was."""
    path = directory / "mask.nii.gz"
    sitk.WriteImage(mask, str(path), useCompression=True)
    return path
