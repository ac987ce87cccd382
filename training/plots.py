"""Training curves as a PNG (matplotlib, Agg): loss per epoch and validation Dice (per BraTS region)."""

from __future__ import annotations

from pathlib import Path


def plot_curves(history: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax1 = plt.subplots(figsize=(7, 4), dpi=110)
    ax1.plot([h["epoch"] for h in history], [h["loss"] for h in history], color="tab:blue", label="training loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("training loss (Dice + cross-entropy)", color="tab:blue")
    ax2 = ax1.twinx()
    validated = [h for h in history if h.get("val_dice") is not None]
    ax2.plot([h["epoch"] for h in validated], [h["val_dice"] for h in validated], color="tab:red", marker="o", ms=3)
    regions = sorted({r for h in validated for r in h.get("val_dice_per_region", {})})
    regions = regions if len(regions) > 1 else []  # one region is the mean line itself
    for region, style in zip(regions, (":", "--", "-."), strict=False):
        ax2.plot(
            [h["epoch"] for h in validated],
            [h["val_dice_per_region"][region] for h in validated],
            color="tab:red",
            linestyle=style,
            alpha=0.6,
            label=region,
        )
    if regions:
        ax2.legend(loc="lower right", fontsize=8)
    ax2.set_ylabel("mean validation Dice", color="tab:red")
    ax2.set_ylim(0, 1)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
