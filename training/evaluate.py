"""``python -m training.evaluate``: per-case Dice of a published model on labelled case folders.

Runs the *same* ``segcore`` pipeline the service runs (read with SimpleITK, reorient/resample to the
card, normalize, tile, stitch, map back onto the input grid) on the original files, and compares with
the label on the original grid. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from segcore.threads import apply_thread_env
from training.datasets import TARGETS, discover


def evaluate(version_dir: Path, roots: list[Path], cases: list[str] | None = None) -> list[dict]:
    from segcore.card import ModelCard
    from segcore.metrics import dice
    from segcore.pipeline import segment
    from segcore.runner import SavedModelRunner

    card = ModelCard.load(version_dir)
    runner = SavedModelRunner(version_dir, card)
    found = discover(roots, list(card.modalities))
    if cases:
        unknown = sorted(set(cases) - {c.case_id for c in found})
        if unknown:
            raise SystemExit(f"cases not found under {roots}: {unknown}")
        found = [c for c in found if c.case_id in cases]
    rows = []
    for case in found:
        images = {m: sitk.ReadImage(str(case.files[m]), sitk.sitkFloat32) for m in card.modalities}
        t0 = time.perf_counter()
        result = segment(images, runner)
        seconds = time.perf_counter() - t0
        pred = sitk.GetArrayViewFromImage(result.mask)
        raw = np.rint(sitk.GetArrayViewFromImage(sitk.ReadImage(str(case.label), sitk.sitkFloat32))).astype(int)
        truth = np.isin(raw, [s for s, v in case.layout.label_values.items() if TARGETS["whole_tumour"].get(v)])
        rows.append(
            {
                "case": case.case_id,
                "layout": case.layout.name,
                "role": "validation"
                if case.case_id in card.provenance.validation_cases
                else "train"
                if case.case_id in card.provenance.train_cases
                else "other",
                "dice_wt": round(dice(pred > 0, truth), 4),
                "pred_ml": round(float((pred > 0).sum()) / 1000, 2),
                "true_ml": round(float(truth.sum()) / 1000, 2),
                "seconds": round(seconds, 2),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("version_dir", type=Path, help="models/<name>/<version>")
    parser.add_argument("roots", nargs="+", type=Path, help="folders of labelled case folders")
    parser.add_argument("--cases", default="", help="comma-separated case ids (default: all found)")
    parser.add_argument("--json", type=Path, default=None, help="write the table here as JSON")
    parser.add_argument("--intra-op", type=int, default=None)
    args = parser.parse_args(argv)
    apply_thread_env(intra_op=args.intra_op)
    rows = evaluate(args.version_dir, args.roots, [c for c in args.cases.split(",") if c] or None)
    print(f"{'case':24} {'role':10} {'Dice WT':>8} {'pred mL':>8} {'true mL':>8} {'s':>6}")
    for r in rows:
        row = f"{r['case']:24} {r['role']:10} {r['dice_wt']:8.4f} {r['pred_ml']:8.2f} {r['true_ml']:8.2f}"
        print(f"{row} {r['seconds']:6.2f}")
    summary = {}
    for role in ("validation", "train", "other"):
        scores = [r["dice_wt"] for r in rows if r["role"] == role]
        if scores:
            summary[role] = {"cases": len(scores), "mean_dice_wt": round(float(np.mean(scores)), 4)}
            print(f"mean Dice ({role}, {len(scores)} cases): {summary[role]['mean_dice_wt']:.4f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"model": str(args.version_dir), "cases": rows, "summary": summary}, indent=2) + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
