"""Training cases: folders matched against the layout table (``segcore.case_layouts``, shared with the
service's folder command) that provide the wanted modalities *and* a label.

A case folder matches a layout when every file the layout names for a modality or label exists in it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from segcore.case_layouts import LAYOUTS, Layout, find_file

__all__ = ["LAYOUTS", "TARGETS", "Case", "Layout", "discover", "find_case"]

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


def find_case(folder: Path, modalities: list[str]) -> Case:
    """Match ``folder`` against the layouts; the first that provides ``modalities`` and a label wins."""
    folder = Path(folder)
    for layout in LAYOUTS:
        if not set(modalities) <= set(layout.modalities):
            continue
        files = {m: find_file(folder, layout.modalities[m]) for m in modalities}
        label = find_file(folder, layout.label)
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
