"""``python -m training.robustness``: versions of a model side by side, as archived and under each simulated
protocol shift (:mod:`training.shifts`), on the same cases. A table, JSON and a picture.

    python -m training.robustness models/brats-wt-flair/1 models/brats-wt-flair/2 \\
        ../shared/data/brats2015_deepmedic ../shared/data/brats2018_deepvoxnet2 ../shared/data/brats2018_brainy \\
        --cases brats_2013_pat0003_1,brats_2013_pat0004_1,case_6,Brats18_TCIA05_396_1 \\
        --out models/brats-wt-flair/robustness.json

Each cell is :func:`training.evaluate.evaluate` (the service's pipeline, card settings) on one version and
one shift; whole-tumour Dice and predicted vs true volume per case. The PNG beside the JSON shows each
version's mean whole-tumour Dice per condition with the cases as dots: the question it answers is whether
a new version holds up where the old one broke, not only where both were trained.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from segcore.threads import apply_thread_env
from training.evaluate import evaluate
from training.shifts import SHIFTS

CONDITIONS = ["as archived", *SHIFTS]


def compare(versions: list[Path], roots: list[Path], cases: list[str] | None) -> dict[str, dict[str, list[dict]]]:
    """``{version label: {condition: evaluate rows}}`` for every version and condition (:data:`CONDITIONS`);
    a version's label is ``<name>/<version>`` from its folder."""
    table: dict[str, dict[str, list[dict]]] = {}
    jobs = [(v, c) for v in versions for c in CONDITIONS]
    for version, condition in tqdm(jobs, desc="robustness", unit="run"):
        label = f"{version.parent.name}/{version.name}"
        shift = None if condition == "as archived" else condition
        table.setdefault(label, {})[condition] = evaluate(version, roots, cases, shift=shift)
    return table


def summary_lines(table: dict[str, dict[str, list[dict]]]) -> list[str]:
    """One line per case and condition: whole-tumour Dice of every version, and the volume errors."""
    labels = list(table)
    lines = [f"{'case':24} {'condition':12} " + " ".join(f"{lab:>22}" for lab in labels)]
    for condition in CONDITIONS:
        cases = [r["case"] for r in table[labels[0]][condition]]
        for i, case in enumerate(cases):
            cells = []
            for lab in labels:
                r = table[lab][condition][i]
                error = 100 * (r["pred_ml"] - r["true_ml"]) / max(r["true_ml"], 1e-6)
                cells.append(f"{r['dice_wt']:.3f} ({error:+5.1f} % vol)")
            lines.append(f"{case:24} {condition:12} " + " ".join(f"{c:>22}" for c in cells))
        means = [np.mean([r["dice_wt"] for r in table[lab][condition]]) for lab in labels]
        lines.append(f"{'mean':24} {condition:12} " + " ".join(f"{m:>22.3f}" for m in means))
    return lines


def plot(table: dict[str, dict[str, list[dict]]], path: Path, title: str) -> None:
    """Grouped bars: per condition, each version's mean whole-tumour Dice, its cases as dots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(table)
    width = 0.8 / len(labels)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for k, lab in enumerate(labels):
        xs = np.arange(len(CONDITIONS)) + (k - (len(labels) - 1) / 2) * width
        per_case = [[r["dice_wt"] for r in table[lab][c]] for c in CONDITIONS]
        ax.bar(xs, [np.mean(d) for d in per_case], width * 0.9, label=lab, alpha=0.75)
        for x, dices in zip(xs, per_case, strict=True):
            ax.scatter([x] * len(dices), dices, color="black", s=8, zorder=3)
    ax.set_xticks(np.arange(len(CONDITIONS)), [c if c != "thick" else "thick slices" for c in CONDITIONS])
    ax.set_ylabel("whole-tumour Dice (dots: cases)")
    lowest = min(r["dice_wt"] for conditions in table.values() for rows in conditions.values() for r in rows)
    ax.set_ylim(min(0.5, np.floor(lowest * 10) / 10), 1.0)
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", type=Path, help="models/<name>/<version> folders, then case roots")
    parser.add_argument("--cases", default="", help="comma-separated case ids (default: all found)")
    parser.add_argument("--out", type=Path, required=True, help="JSON to write; the PNG goes beside it")
    parser.add_argument("--intra-op", type=int, default=None)
    args = parser.parse_args(argv)
    versions = [p for p in args.paths if (p / "saved_model.pb").is_file()]
    roots = [p for p in args.paths if p not in versions]
    if not versions or not roots:
        parser.error("give at least one version folder (with saved_model.pb) and one case root")
    apply_thread_env(intra_op=args.intra_op)
    table = compare(versions, roots, [c for c in args.cases.split(",") if c] or None)
    print("\n".join(summary_lines(table)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"conditions": CONDITIONS, "table": table}, indent=2) + "\n")
    plot(table, args.out.with_suffix(".png"), f"{versions[0].parent.name}: versions under protocol shifts")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
