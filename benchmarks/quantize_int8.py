"""``python -m benchmarks.quantize_int8 models/brats-wt-flair``: an INT8 variant of a published version.

Post-training quantization with OpenVINO's NNCF (``quantize`` extra, pinned), in four steps:

1. **Calibrate on training cases only.** The card's provenance lists them; validation cases are never
   seen. Each training case goes through the service's own pipeline (``segcore.pipeline.segment``) on
   TensorFlow, and every batch the pipeline sends to the network is recorded, so the statistics come from
   exactly the inputs the variant will get (brain-cropped, normalized slices or 3D patches), evenly
   subsampled to ``--max-batches``.
2. **Quantize** the converted SavedModel (``nncf.quantize``, the default mixed preset: symmetric weights,
   asymmetric activations) and save it as an OpenVINO IR under ``assets.extra/openvino-int8/`` of the same
   version. *Why there, not a new version*: the variant is the same network (TF Serving and the other
   backends keep serving the SavedModel untouched), TF Serving ignores ``assets.extra``, and a new version
   number would make every backend switch versions for a change only one of them can run.
3. **Validate** on the card's validation cases with the same evaluation as training
   (``training.evaluate.evaluate``) and record the Dice in the card (``variants["openvino-int8"]``).
   ``SEG_BACKEND=openvino-int8`` (and ``auto``) serve it only if its mean Dice is within
   ``MAX_INT8_DICE_LOSS`` (0.005) of the float model's in the same card.
4. **Time** the model call on the card's representative input: OpenVINO f32, bf16 (the CPU default here)
   and INT8, median of ``--reps`` calls; table printed, JSON in ``benchmarks/results/int8_<model>.json``.

The card is rewritten in place (atomically): the version's SavedModel, signature and warm-up requests are
untouched, so a running server keeps serving it and picks the variant up when the version is next loaded.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

import numpy as np

from benchmarks.common import call_times
from segcore.card import ModelCard, Variant
from segcore.model_folder import CARD_RELPATH, latest_version_dir
from segcore.runner import Runner, SavedModelRunner

VARIANT_DIR = Path("assets.extra") / "openvino-int8"
REPO = Path(__file__).resolve().parents[1]


class RecordingRunner(Runner):
    """TensorFlow, keeping a copy of every batch it is asked to run (the calibration inputs)."""

    def __init__(self, inner: Runner) -> None:
        self.card = inner.card
        self.inner = inner
        self.batches: list[np.ndarray] = []

    def predict(self, batch: np.ndarray) -> np.ndarray:
        self.batches.append(np.array(batch, dtype=np.float32, copy=True))
        return self.inner.predict(batch)


def calibration_batches(version_dir: Path, card: ModelCard, roots: list[Path], max_batches: int) -> list[np.ndarray]:
    """The network inputs of the card's training cases (found under ``roots``), evenly subsampled."""
    import SimpleITK as sitk

    from segcore.pipeline import segment
    from training.datasets import discover

    train = set(card.provenance.train_cases)
    leaked = train & set(card.provenance.validation_cases)
    if leaked:
        raise SystemExit(f"the card lists {sorted(leaked)} as both training and validation cases")
    cases = [c for c in discover(roots, list(card.modalities)) if c.case_id in train]
    if not cases:
        raise SystemExit(f"none of the training cases {sorted(train)} found under {roots}")
    recorder = RecordingRunner(SavedModelRunner(version_dir, card))
    for case in cases:
        segment({m: sitk.ReadImage(str(case.files[m]), sitk.sitkFloat32) for m in card.modalities}, recorder)
    picked = np.linspace(0, len(recorder.batches) - 1, min(max_batches, len(recorder.batches))).round().astype(int)
    print(f"calibration: {len(recorder.batches)} batches from {len(cases)} training cases, {len(picked)} used")
    return [recorder.batches[i] for i in sorted(set(picked.tolist()))]


def quantize(version_dir: Path, batches: list[np.ndarray]) -> Path:
    """Write the INT8 IR under ``VARIANT_DIR``; returns its .xml path."""
    import nncf
    import openvino as ov

    model = ov.convert_model(str(version_dir))
    quantized = nncf.quantize(model, nncf.Dataset(batches), subset_size=len(batches))
    out = version_dir / VARIANT_DIR / "model.xml"
    out.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(quantized, str(out), compress_to_fp16=False)
    return out


def time_calls(runner: Runner, shape: tuple[int, ...], reps: int) -> float:
    """Median seconds of one model call on a fixed random input of ``shape`` (after two warm calls)."""
    batch = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    return statistics.median(call_times(runner.predict, batch, reps))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="models/<name> (its newest version) or a version directory")
    parser.add_argument(
        "--data",
        type=Path,
        nargs="+",
        default=[REPO.parent / "shared/data/brats2015_deepmedic", REPO.parent / "shared/data/brats2018_deepvoxnet2"],
    )
    parser.add_argument("--max-batches", type=int, default=300)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args(argv)

    from app.runners.openvino import INT8_VARIANT, MAX_INT8_DICE_LOSS, OpenVINORunner
    from training.evaluate import evaluate

    version_dir = args.model if (args.model / CARD_RELPATH).is_file() else latest_version_dir(args.model)
    card = ModelCard.load(version_dir)
    xml = quantize(version_dir, calibration_batches(version_dir, card, args.data, args.max_batches))
    int8 = OpenVINORunner(version_dir, card, threads=args.threads, model_path=xml)
    rows = evaluate(version_dir, args.data, card.provenance.validation_cases, runner=int8)
    dice = {row["case"]: row["dice_wt"] for row in rows}
    dice["mean"] = round(statistics.mean(dice.values()), 4)
    variant = Variant(
        path=str(xml.relative_to(version_dir)),
        method=f"NNCF {__import__('nncf').__version__} post-training quantization, {args.max_batches} batches",
        calibration_cases=sorted(card.provenance.train_cases),
        validation_dice=dice,
    )
    updated = card.model_copy(update={"variants": {**card.variants, INT8_VARIANT: variant}})
    tmp = version_dir / CARD_RELPATH.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(updated.model_dump(mode="json"), indent=2) + "\n")
    os.replace(tmp, version_dir / CARD_RELPATH)

    shape = card.representative_input_shape
    seconds = {
        "f32": time_calls(OpenVINORunner(version_dir, card, threads=args.threads, precision="f32"), shape, args.reps),
        "bf16": time_calls(OpenVINORunner(version_dir, card, threads=args.threads, precision="bf16"), shape, args.reps),
        "int8": time_calls(int8, shape, args.reps),
    }
    float_mean = card.validation_dice.get("mean", float("nan"))
    loss = float_mean - dice["mean"]
    report = {
        "model": card.name,
        "version": card.version,
        "variant": variant.model_dump(mode="json"),
        "float_validation_dice_mean": float_mean,
        "dice_loss": round(loss, 4),
        "served": loss <= MAX_INT8_DICE_LOSS,
        "model_call_ms": {k: round(v * 1000, 2) for k, v in seconds.items()},
        "input_shape": list(shape),
        "threads": args.threads,
        "ir_bytes": sum(p.stat().st_size for p in xml.parent.iterdir()),
        "load_average": os.getloadavg(),
    }
    out = REPO / "benchmarks/results" / f"int8_{card.name}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    served = report["served"]
    print(f"validation Dice: float {float_mean:.4f}, int8 {dice['mean']:.4f} (loss {loss:+.4f}; served: {served})")
    print(f"{'precision':<10}{'model call ms':>14}{'vs f32':>8}")
    for name, s in seconds.items():
        print(f"{name:<10}{s * 1000:>14.1f}{seconds['f32'] / s:>7.2f}x")
    print(f"IR {report['ir_bytes'] / 2**20:.1f} MB; load average {os.getloadavg()[0]:.1f}; wrote {out}")


if __name__ == "__main__":
    main()
