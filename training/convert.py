"""``python -m training.convert``: BraTS-style case folders -> one compressed shard per case.

Each shard (``<case_id>.npz``) holds the case already on the model grid (card orientation and spacing)
and normalized by ``segcore`` exactly as serving will: ``image`` float16 ``[Z, Y, X, C]`` (slices with
brain only), ``label`` uint8 ``[Z, Y, X]``, plus ``brain`` and provenance. Training reads shards; it
never re-reads NIfTI.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from segcore.geometry import onto_grid, to_model_grid
from segcore.normalization import zscore_brain
from training.datasets import TARGETS, Case, discover


def convert_case(
    case: Case, modalities: list[str], orientation: str, spacing_mm: list[float], target: str, clip: float = 5.0
) -> dict[str, np.ndarray]:
    images = {m: sitk.ReadImage(str(case.files[m]), sitk.sitkFloat32) for m in modalities}
    reference = to_model_grid(images[modalities[0]], orientation, spacing_mm)
    arrays = []
    for m in modalities:
        img = to_model_grid(images[m], orientation, spacing_mm)
        if m != modalities[0]:
            img = onto_grid(img, reference, label=False)
        arrays.append(sitk.GetArrayFromImage(img))
    channels, brain = zscore_brain(np.stack(arrays), clip=clip)
    label_img = sitk.ReadImage(str(case.label), sitk.sitkFloat32)
    # Labels go through the same reorientation, then nearest-neighbour onto the model grid.
    label_img = sitk.Cast(sitk.Round(sitk.DICOMOrient(label_img, orientation)), sitk.sitkUInt8)
    raw = sitk.GetArrayFromImage(onto_grid(label_img, reference, label=True))
    label = np.zeros_like(raw)
    recode = TARGETS[target]
    for source, value in case.layout.label_values.items():
        label[raw == source] = recode.get(value, value)
    keep = brain.any(axis=(1, 2)) | label.any(axis=(1, 2))
    return {
        "image": np.moveaxis(channels[:, keep], 0, -1).astype(np.float16),
        "label": label[keep],
        "brain": brain[keep],
        "slices": np.flatnonzero(keep).astype(np.int32),
        "shape": np.array(channels.shape[1:], dtype=np.int32),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("roots", nargs="+", type=Path, help="folders of case folders (or case folders)")
    parser.add_argument("--out", type=Path, required=True, help="shard directory to write")
    parser.add_argument("--modalities", default="flair", help="comma-separated, in channel order")
    parser.add_argument("--target", default="whole_tumour", choices=sorted(TARGETS))
    parser.add_argument("--orientation", default="LPS")
    parser.add_argument("--spacing", default="1,1,1", help="x,y,z in mm")
    args = parser.parse_args(argv)
    modalities = [m.strip() for m in args.modalities.split(",") if m.strip()]
    spacing = [float(s) for s in args.spacing.split(",")]
    cases = discover(args.roots, modalities)
    if not cases:
        parser.error(f"no case folder under {args.roots} provides {modalities} and a label")
    args.out.mkdir(parents=True, exist_ok=True)
    index = []
    for case in tqdm(cases, desc="convert", unit="case"):
        shard = convert_case(case, modalities, args.orientation, spacing, args.target)
        path = args.out / f"{case.case_id}.npz"
        tmp = path.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, **shard)
        tmp.replace(path)  # a reader never sees a half-written shard
        index.append(
            {
                "case_id": case.case_id,
                "source": str(case.folder),
                "layout": case.layout.name,
                "slices": int(shard["image"].shape[0]),
                "tumour_voxels": int((shard["label"] > 0).sum()),
            }
        )
    meta = {
        "modalities": modalities,
        "target": args.target,
        "orientation": args.orientation,
        "spacing_mm": spacing,
        "cases": index,
    }
    (args.out / "index.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {len(index)} shards to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
