"""``python -m training.evaluate``: per-case Dice of a published model on labelled case folders.

Runs the *same* ``segcore`` pipeline the service runs (read with SimpleITK, reorient/resample to the
card, normalize, tile or slide a window, stitch, map back onto the input grid) on the original files, and
compares with the label on the original grid. Whole-tumour Dice for every model; for a multi-class BraTS
model (``ModelCard.regions``) also tumour core (TC) and enhancing tumour (ET), with the truth's regions
taken from the archive's own label values (BraTS 2015 label 3 counts as core). Prints a table and writes
JSON.

``--shift thick|bias`` scores each case after a simulated protocol shift (:mod:`training.shifts`: thick
oblique slices, or a bias field), against the label on the shifted grid.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from segcore.card import BRATS_REGIONS
from segcore.runner import Runner
from segcore.threads import apply_thread_env
from training.datasets import discover


def _brats_labels(case) -> sitk.Image:
    """The case's label volume (uint8, the archive's grid) with the archive's values mapped to the BraTS
    convention (binary archives: 1 = whole tumour)."""
    label = sitk.ReadImage(str(case.label), sitk.sitkFloat32)
    # A copy, not a view: a view of the temporary image would read freed memory.
    raw = np.rint(sitk.GetArrayFromImage(label)).astype(int)
    source = np.zeros(raw.shape, dtype=np.uint8)
    for value, target in case.layout.label_values.items():
        source[raw == value] = target
    image = sitk.GetImageFromArray(source)
    image.CopyInformation(label)
    return image


def _load(case, modalities: list[str], shift: str | None) -> tuple[dict[str, sitk.Image], np.ndarray]:
    """The case's images (float32, or int16 after a ``thick`` shift) and its BraTS label array ``[Z, Y, X]``
    on the same grid, after the named :mod:`training.shifts` shift (None: as archived)."""
    images = {m: sitk.ReadImage(str(case.files[m]), sitk.sitkFloat32) for m in modalities}
    label = _brats_labels(case)
    if shift is not None:
        from training.shifts import SHIFTS

        images, label = SHIFTS[shift](images, label)
    return images, sitk.GetArrayFromImage(label).astype(int)


def evaluate(
    version_dir: Path,
    roots: list[Path],
    cases: list[str] | None = None,
    *,
    mirror: bool | None = None,
    runner: Runner | None = None,
    shift: str | None = None,
) -> list[dict]:
    """One row per case: Dice per region, predicted and true volumes (mL) and seconds per volume.
    ``shift``: a :data:`training.shifts.SHIFTS` name applied to every case first (None: as archived).

    ``runner``: what runs the network (default: the SavedModel in TensorFlow); another runtime's runner
    for the same version (``benchmarks/quantize_int8.py`` validates an INT8 variant this way)."""
    from segcore.card import ModelCard
    from segcore.metrics import dice
    from segcore.pipeline import segment
    from segcore.runner import SavedModelRunner

    card = ModelCard.load(version_dir)
    runner = runner or SavedModelRunner(version_dir, card)
    regions = card.regions or {"WT": sorted(card.labels)}
    found = discover(roots, list(card.modalities))
    if cases:
        unknown = sorted(set(cases) - {c.case_id for c in found})
        if unknown:
            raise SystemExit(f"cases not found under {roots}: {unknown}")
        found = [c for c in found if c.case_id in cases]
    rows = []
    for case in found:
        images, source = _load(case, list(card.modalities), shift)
        t0 = time.perf_counter()
        result = segment(images, runner, mirror=mirror)
        seconds = time.perf_counter() - t0
        pred = sitk.GetArrayViewFromImage(result.mask)
        row = {
            "case": case.case_id,
            "layout": case.layout.name,
            "role": "validation"
            if case.case_id in card.provenance.validation_cases
            else "train"
            if case.case_id in card.provenance.train_cases
            else "other",
        }
        binary_truth = set(case.layout.label_values.values()) == {1}
        for name, values in regions.items():
            if name != "WT" and binary_truth:
                continue  # a whole-tumour-only archive has no truth for core / enhancing
            truth = source > 0 if name == "WT" else np.isin(source, BRATS_REGIONS[name])
            predicted = pred > 0 if name == "WT" else np.isin(pred, values)
            row[f"dice_{name.lower()}"] = round(dice(predicted, truth), 4)
            if name == "WT":
                voxel_ml = float(np.prod(result.mask.GetSpacing())) / 1000
                row["pred_ml"] = round(float(predicted.sum()) * voxel_ml, 2)
                row["true_ml"] = round(float(truth.sum()) * voxel_ml, 2)
        row["seconds"] = round(seconds, 2)
        rows.append(row)
    return rows


def _means(rows: list[dict], metrics: list[str]) -> dict:
    """Case count, mean of each metric over ``rows`` that have it, and the mean absolute volume error (%)."""
    out: dict = {"cases": len(rows)}
    for m in metrics:
        scores = [r[m] for r in rows if m in r]
        if scores:
            out[f"mean_{m}"] = round(float(np.mean(scores)), 4)
    errors = [abs(r["pred_ml"] - r["true_ml"]) / r["true_ml"] * 100 for r in rows if r.get("true_ml")]
    if errors:
        out["mean_abs_volume_error_pct"] = round(float(np.mean(errors)), 1)
    return out


def _means_text(means: dict) -> str:
    text = ", ".join(f"{k[5:]} {v:.4f}" for k, v in means.items() if k.startswith("mean_dice"))
    if "mean_abs_volume_error_pct" in means:
        text += f", |volume error| {means['mean_abs_volume_error_pct']:.1f} %"
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("version_dir", type=Path, help="models/<name>/<version>")
    parser.add_argument("roots", nargs="+", type=Path, help="folders of labelled case folders")
    parser.add_argument("--cases", default="", help="comma-separated case ids (default: all found)")
    parser.add_argument("--json", type=Path, default=None, help="write the table here as JSON")
    parser.add_argument("--intra-op", type=int, default=None)
    parser.add_argument(
        "--mirror", choices=("card", "on", "off"), default="card", help="3D flip test-time augmentation"
    )
    parser.add_argument("--shift", choices=("thick", "bias"), default=None,
                        help="simulated protocol shift applied to every case first (training.shifts)")
    args = parser.parse_args(argv)
    apply_thread_env(intra_op=args.intra_op)
    mirror = None if args.mirror == "card" else args.mirror == "on"
    cases = [c for c in args.cases.split(",") if c] or None
    rows = evaluate(args.version_dir, args.roots, cases, mirror=mirror, shift=args.shift)
    metrics = [k for k in ("dice_wt", "dice_tc", "dice_et") if any(k in r for r in rows)]
    print(f"{'case':24} {'role':10} " + " ".join(f"{m.replace('dice_', 'Dice ').upper():>8}" for m in metrics)
          + f" {'pred mL':>8} {'true mL':>8} {'s':>6}")
    for r in rows:
        dices = " ".join(f"{r[m]:8.4f}" if m in r else f"{'-':>8}" for m in metrics)
        print(f"{r['case']:24} {r['role']:10} {dices} {r['pred_ml']:8.2f} {r['true_ml']:8.2f} {r['seconds']:6.2f}")
    summary = {}
    for role in ("validation", "train", "other"):
        chosen = [r for r in rows if r["role"] == role]
        if chosen:
            summary[role] = _means(chosen, metrics)
            print(f"mean ({role}, {len(chosen)} cases): {_means_text(summary[role])}")
            # Per source (the archive layout): a mean over three sources can hide one that fails.
            for layout in sorted({r["layout"] for r in chosen}):
                of_source = [r for r in chosen if r["layout"] == layout]
                summary[f"{role}:{layout}"] = _means(of_source, metrics)
                print(f"  {layout} ({len(of_source)} cases): {_means_text(summary[f'{role}:{layout}'])}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"model": str(args.version_dir), "mirror": args.mirror, "shift": args.shift, "cases": rows,
                        "summary": summary}, indent=2) + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
