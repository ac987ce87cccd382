"""Where each archive keeps a case's files: a small declarative table, not special cases in code.

Shared by training (cases with a label, ``training.datasets``) and the folder command of the service
(``python -m app.predict``: cases to segment, no label needed), so both find the same files in the same
folders. A case folder provides a modality when the layout's glob for it matches exactly one file.
Patterns are globs relative to the case folder (standard BraTS names carry the case id as a prefix).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    name: str
    modalities: dict[str, str]
    label: str
    #: source label value -> target label value; values not listed become 0.
    label_values: dict[int, int] = field(default_factory=dict)


LAYOUTS: tuple[Layout, ...] = (
    Layout(
        name="deepmedic-brats2015",
        modalities={"flair": "Flair_subtrMeanDivStd.nii.gz", "t1c": "T1c_subtrMeanDivStd.nii.gz"},
        label="OTMultiClass.nii.gz",
        label_values={1: 1, 2: 2, 3: 3, 4: 4},
    ),
    Layout(
        name="deepvoxnet2-brats2018",
        modalities={"flair": "FLAIR.nii.gz", "t1": "T1.nii.gz"},
        label="GT_W.nii.gz",
        label_values={1: 1},  # binary whole tumour
    ),
    Layout(
        name="brats-standard",
        modalities={
            "flair": "*_flair.nii*",
            "t1": "*_t1.nii*",
            "t1c": "*_t1ce.nii*",
            "t2": "*_t2.nii*",
        },
        label="*_seg.nii*",
        label_values={1: 1, 2: 2, 3: 3, 4: 4},
    ),
)


def find_file(folder: Path, pattern: str) -> Path | None:
    """The one file in ``folder`` matching ``pattern``, or None when none or several match (ambiguous)."""
    matches = sorted(Path(folder).glob(pattern))
    return matches[0] if len(matches) == 1 else None


def find_images(folder: Path, modalities: Iterable[str]) -> tuple[Layout, dict[str, Path]] | None:
    """The first layout under which ``folder`` has one file for every modality in ``modalities``, with
    those files by modality; None when no layout fits. Labels are not looked for."""
    wanted = list(modalities)
    for layout in LAYOUTS:
        if not set(wanted) <= set(layout.modalities):
            continue
        files = {m: find_file(folder, layout.modalities[m]) for m in wanted}
        if all(files.values()):
            return layout, files  # type: ignore[return-value]
    return None
