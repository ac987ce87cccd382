"""``python -m training.convert``: BraTS-style case folders -> one compressed shard per case.

Each shard (``<case_id>.npz``) holds the case already on the model grid (card orientation and spacing)
and normalized by ``segcore.preprocess`` exactly as serving will: ``image`` float16 ``[Z, Y, X, C]``
(slices with brain only), ``label`` uint8 ``[Z, Y, X]``, plus ``brain`` and provenance. Training reads
shards; it never re-reads NIfTI.

``--config`` takes the grid, modalities, target and output folder from the training config, so shards are
made for the model that will train on them; ``index.json`` records the spec they were made with, and
training refuses shards whose spec differs from its config (``training.data.check_shards``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from segcore.card import Normalization, Preprocessing
from segcore.geometry import onto_grid
from segcore.preprocess import PreprocessSpec, preprocess
from training.config import TrainConfig
from training.datasets import TARGETS, Case, discover


def convert_case(
    case: Case,
    modalities: list[str],
    orientation: str,
    spacing_mm: list[float],
    target: str,
    clip: float = 5.0,
    preprocessing: Preprocessing | None = None,
) -> dict[str, np.ndarray]:
    """One case as a shard: the images through ``segcore.preprocess`` (what serving does, with the card's
    ``preprocessing`` in mode auto: the input stage keeps the first modality's grid, so the label stays
    aligned), the label through the same reorientation and then nearest neighbour onto the model grid,
    recoded for ``target``."""
    spec = PreprocessSpec(
        modalities=modalities,
        orientation=orientation,
        spacing_mm=spacing_mm,
        normalization=Normalization(clip=clip),
        preprocessing=preprocessing or Preprocessing(),
    )
    images = {m: sitk.ReadImage(str(case.files[m]), sitk.sitkFloat32) for m in modalities}
    prepared = preprocess(images, spec, "auto", card_name="training")
    channels, brain, reference = prepared.channels, prepared.brain, prepared.reference
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


def _spec(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict:
    """The shard spec: from ``--config`` (then the grid flags must not be given), or from the flags."""
    flags = {"modalities": args.modalities, "target": args.target, "orientation": args.orientation}
    flags["spacing"] = args.spacing
    if args.config is not None:
        given = [f"--{k}" for k, v in flags.items() if v is not None]
        if given:
            parser.error(f"{', '.join(given)} come from --config; give one or the other")
        config = TrainConfig.load(args.config)
        if args.out is None:
            args.out = Path(config.data.shards)
        return config.shard_spec()
    if args.out is None:
        parser.error("--out is required without --config")
    modalities = [m.strip() for m in (args.modalities or "flair").split(",") if m.strip()]
    spacing = [float(s) for s in (args.spacing or "1,1,1").split(",")]
    spec = PreprocessSpec(modalities=modalities, orientation=args.orientation or "LPS", spacing_mm=spacing)
    return {**spec.model_dump(mode="json"), "target": args.target or "whole_tumour"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("roots", nargs="+", type=Path, help="folders of case folders (or case folders)")
    parser.add_argument("--config", type=Path, default=None, help="training config: grid, modalities, target, out")
    parser.add_argument("--out", type=Path, default=None, help="shard directory to write (default: data.shards)")
    parser.add_argument("--modalities", default=None, help="comma-separated, in channel order (default: flair)")
    parser.add_argument("--target", default=None, choices=sorted(TARGETS), help="default: whole_tumour")
    parser.add_argument("--orientation", default=None, help="default: LPS")
    parser.add_argument("--spacing", default=None, help="x,y,z in mm (default: 1,1,1)")
    args = parser.parse_args(argv)
    spec = _spec(args, parser)
    modalities = spec["modalities"]
    cases = discover(args.roots, modalities)
    if not cases:
        parser.error(f"no case folder under {args.roots} provides {modalities} and a label")
    args.out.mkdir(parents=True, exist_ok=True)
    index = []
    for case in tqdm(cases, desc="convert", unit="case"):
        shard = convert_case(
            case,
            modalities,
            spec["orientation"],
            spec["spacing_mm"],
            spec["target"],
            spec["normalization"]["clip"],
            Preprocessing.model_validate(spec.get("preprocessing") or {}),
        )
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
    (args.out / "index.json").write_text(json.dumps({**spec, "cases": index}, indent=2) + "\n")
    print(f"wrote {len(index)} shards to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
