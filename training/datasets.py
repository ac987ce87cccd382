"""Where each archive keeps its files: a small declarative table, not special cases in code.

A case folder matches a layout when every file the layout names for a modality or label exists in it.
Patterns are globs relative to the case folder (standard BraTS names carry the case id as a prefix).
"""

from __future__ import annotations

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

#: Label recodings a training config may ask for, applied after ``label_values``.
TARGETS: dict[str, dict[int, int]] = {
    "whole_tumour": {1: 1, 2: 1, 3: 1, 4: 1},
    "brats": {1: 1, 2: 2, 3: 1, 4: 4},  # BraTS 2017+ convention: non-enhancing (3) merged into core (1)
}


@dataclass(frozen=True)
class Case:
    case_id: str
    folder: Path
    layout: Layout
    files: dict[str, Path]
    label: Path


def _find(folder: Path, pattern: str) -> Path | None:
    matches = sorted(folder.glob(pattern))
    return matches[0] if len(matches) == 1 else None


def find_case(folder: Path, modalities: list[str]) -> Case:
    """Match ``folder`` against the layouts; the first that provides ``modalities`` and a label wins."""
    folder = Path(folder)
    for layout in LAYOUTS:
        if not set(modalities) <= set(layout.modalities):
            continue
        files = {m: _find(folder, layout.modalities[m]) for m in modalities}
        label = _find(folder, layout.label)
        if label is not None and all(files.values()):
            return Case(folder.name, folder, layout, files, label)  # type: ignore[arg-type]
    raise ValueError(
        f"{folder} matches no known layout providing {modalities} and a label; known: "
        + ", ".join(layout.name for layout in LAYOUTS)
    )


def discover(roots: list[Path], modalities: list[str]) -> list[Case]:
    """Every case folder directly under ``roots`` (or a root that is itself a case), sorted by id."""
    cases = []
    for root in roots:
        root = Path(root)
        candidates = [root] if any(root.glob("*.nii*")) else sorted(p for p in root.iterdir() if p.is_dir())
        for folder in candidates:
            try:
                cases.append(find_case(folder, modalities))
            except ValueError:
                continue
    ids = [c.case_id for c in cases]
    if len(set(ids)) != len(ids):
        raise ValueError(f"case ids are not unique across roots: {ids}")
    return sorted(cases, key=lambda c: c.case_id)
