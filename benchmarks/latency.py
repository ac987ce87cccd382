"""Per-volume latency of the bundled model, every variant in one run, as ratios to naive and to the best.

    .venv/bin/python benchmarks/latency.py            # full: >= 5 repetitions, HTTP, RSS (~10 min)
    .venv/bin/python benchmarks/latency.py --quick    # < 2 min: fewer repetitions, no HTTP/RSS

Every variant goes from the same SimpleITK image to a uint8 mask on the input grid, through the same
geometry and normalization (``segcore.preprocess``); only the inference part differs:

- ``naive``: the Keras model (rebuilt by ``training.unet`` from the SavedModel's own variables) and
  ``model.predict`` on every full 240x240 axial slice, one at a time, TensorFlow's default settings. This
  is what a user writes first; the only help it gets is the shared geometry/normalization code.
- ``service``: exactly what the service runs: ``segcore.pipeline.segment`` with ``SavedModelRunner``
  (the serving signature, a concrete function, batch size 1, brain-cropped slices, empty slices skipped,
  one preallocated input buffer).
- ``batched_8`` / ``batched_32`` / ``batched_all``: the same crop, with slices stacked into batches (a
  ``tf.function`` over the Keras model with an unknown batch size) — for reference; the service stays at
  batch size 1 because it answers one study at a time.
- ``onnxruntime``, ``openvino``, ``openvino_f32``: the service path with ONNX Runtime
  (``benchmarks/onnx_runner.py``) and the service's OpenVINO backend (``app.runners.backends``) on the same
  SavedModel (converted once into ``SEG_CACHE_DIR``, so ``conversion_seconds`` is a cache read after the
  first run). OpenVINO's default precision on a CPU with AVX-512 BF16 is bfloat16; ``openvino_f32`` forces
  float32.
- ``openvino_int8``: the version's NNCF INT8 variant (``benchmarks/quantize_int8.py``), when its card has
  one that may serve; ``auto``: whatever ``SEG_BACKEND=auto`` (the default) chose at load.

Two further runs (``benchmarks/scaling.py``): ``--models`` times every bundled model (the 3D ones too) on
every backend; ``--sizes`` measures latency and peak memory against study size (128^2, 240^2, 512^2
in-plane) and plots it to ``benchmarks/results/cost_vs_size.png``.

    .venv/bin/python benchmarks/latency.py --models --sizes --no-2d   # only the two further runs

``--api`` (``benchmarks/acceptance.py``): the default deployment (``SEG_BACKEND=auto``) over HTTP on every
bundled model, concurrency 1/2/4 on the 2D model, and the model call's share of the machine's peak.
The preprocessing stages of a raw four-series study are timed by ``benchmarks/preprocess.py``.

Repetitions are interleaved (round-robin over variants), so a burst of load from other users of the
machine hits all variants alike. Each peer's mask is compared with the service's (Dice >= 0.99).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

from benchmarks.common import (  # noqa: E402
    DEFAULT_CASE,
    DEFAULT_MODEL,
    RESULTS,
    SHARED_DATA,
    load_average,
    start_server,
    stats,
)
from segcore.model_folder import latest_version_dir  # noqa: E402

DICE_PARITY = 0.99
Segmenter = Callable[[sitk.Image], np.ndarray]


# --------------------------------------------------------------------------------------------- models


def rebuild_keras(version_dir: Path, card):
    """The Keras U-Net with the SavedModel's weights: architecture from ``training.unet``, sizes read off
    the variables (``down<i>_conv1/kernel``...). Raises ``ValueError`` if the names do not line up."""
    import tensorflow as tf

    from training.unet import build_unet

    loaded = tf.saved_model.load(str(version_dir))
    variables = {v.name.split(":")[0]: v for v in loaded.variables}
    depth = len([k for k in variables if re.fullmatch(r"down\d+_conv1/kernel", k)])
    if depth == 0:
        raise ValueError(f"{version_dir}: variables do not look like training.unet's U-Net")
    base = int(variables["down0_conv1/kernel"].shape[-1])
    model = build_unet(
        2,
        len(card.modalities),
        card.output_channels,
        depth=depth,
        base_filters=base,
        normalization="batch" if any("_bn" in k for k in variables) else "none",
        activation=card.activation,
    )
    for weight in model.weights:
        source = variables.get(weight.path)
        if source is None or tuple(source.shape) != tuple(weight.shape):
            raise ValueError(f"no matching SavedModel variable for {weight.path} {tuple(weight.shape)}")
        weight.assign(source)
    return model


class KerasPredictRunner:
    """``model.predict`` per call: builds a data adapter and runs a step function each time."""

    def __init__(self, model, card) -> None:
        self.model = model
        # Naive: every slice, full size (no brain crop, no skipping).
        self.card = card.model_copy(update={"tiling": card.tiling.model_copy(update={"crop_to_brain": False})})

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self.model.predict(batch, verbose=0)


def batched_segmenter(model, card, batch_size: int | None) -> Segmenter:
    """The service's crop and skipping, but slices stacked ``batch_size`` at a time (None: all at once)."""
    import tensorflow as tf

    from segcore.geometry import onto_grid
    from segcore.preprocess import PreprocessSpec, preprocess
    from segcore.tiling import crop_box, pad_amounts, probabilities_to_labels

    channels_in = len(card.modalities)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, channels_in], tf.float32)], reduce_retracing=True)
    def forward(x):
        return model(x, training=False)

    def run(image: sitk.Image) -> np.ndarray:
        prepared = preprocess({card.modalities[0]: image}, PreprocessSpec.of(card))
        channels, brain, grid = prepared.channels, prepared.brain, prepared.reference
        _, depth, height, width = channels.shape
        probs = np.zeros((card.output_channels, depth, height, width), dtype=np.float32)
        zbox, ybox, xbox = crop_box(brain, card.tiling.margin, card.tiling.divisor)
        zs = [z for z in range(zbox.start, zbox.stop) if brain[z].any()]
        bh, bw = ybox.stop - ybox.start, xbox.stop - xbox.start
        (py0, py1), (px0, px1) = pad_amounts((bh, bw), card.tiling.divisor)
        step = batch_size or max(len(zs), 1)
        for i in range(0, len(zs), step):
            chunk = zs[i : i + step]
            x = np.zeros((len(chunk), bh + py0 + py1, bw + px0 + px1, channels_in), dtype=np.float32)
            x[:, py0 : py0 + bh, px0 : px0 + bw, :] = np.moveaxis(channels[:, chunk][:, :, ybox, xbox], 0, -1)
            out = forward(tf.constant(x)).numpy()
            probs[:, chunk, ybox, xbox] = np.moveaxis(out[:, py0 : py0 + bh, px0 : px0 + bw, :], -1, 0)
        labels = probabilities_to_labels(probs, card.labels, card.activation, card.threshold)
        mask = sitk.GetImageFromArray(labels)
        mask.CopyInformation(grid)
        return sitk.GetArrayFromImage(onto_grid(mask, image, label=True))

    return run


def pipeline_segmenter(runner) -> Segmenter:
    from segcore.pipeline import segment

    def run(image: sitk.Image) -> np.ndarray:
        return sitk.GetArrayFromImage(segment({runner.card.modalities[0]: image}, runner).mask)

    return run


def validation_dice(card, segmenters: dict[str, Segmenter]) -> dict:
    """Whole-tumour Dice on the card's validation cases (read in place) for each segmenter, and the mean."""
    from segcore.metrics import dice
    from training.datasets import discover

    roots = [SHARED_DATA / "brats2015_deepmedic", SHARED_DATA / "brats2018_deepvoxnet2"]
    cases = [
        c
        for c in discover([r for r in roots if r.is_dir()], card.modalities)
        if c.case_id in card.provenance.validation_cases
    ]
    result: dict = {name: {} for name in segmenters}
    for case in cases:
        image = sitk.ReadImage(str(case.files[card.modalities[0]]), sitk.sitkFloat32)
        truth = sitk.GetArrayFromImage(sitk.ReadImage(str(case.label))) > 0
        for name, run in segmenters.items():
            result[name][case.case_id] = round(dice(run(image) > 0, truth), 4)
    for scores in result.values():
        if scores:
            scores["mean"] = round(float(np.mean(list(scores.values()))), 4)
    return result


# ----------------------------------------------------------------------------------------------- FLOPs


def conv_flops(model, input_hw: tuple[int, int]) -> float:
    """Multiply-add FLOPs (2 per MAC) of the convolutions for one ``[1, H, W, C]`` call.

    Batch norm, ReLU, pooling and concatenation are ignored (< 1 % of the work in a U-Net).
    """
    import keras

    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D | keras.layers.Conv2DTranspose)]
    probe = keras.Model(model.inputs, [layer.input for layer in convs])
    x = np.zeros((1, *input_hw, model.inputs[0].shape[-1]), dtype=np.float32)
    total = 0.0
    for layer, tensor in zip(convs, probe([x]), strict=True):
        h, w, cin = tensor.shape[1:]
        kh, kw = layer.kernel_size
        cout = layer.filters
        total += 2.0 * h * w * kh * kw * cin * cout  # transposed stride-2 2x2: one tap per output, same count
    return total


def machine_peak() -> dict:
    """Nominal FP32 peak from lscpu (cores x TSC clock x FMA width) and a measured SGEMM ceiling."""
    import tensorflow as tf

    text = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    field = dict(re.findall(r"^([^:]+):\s+(.*)$", text, flags=re.M))
    flags = set(field.get("Flags", "").split())
    cores = int(field.get("Core(s) per socket", 1)) * int(field.get("Socket(s)", 1))
    mhz = float(field.get("CPU max MHz") or float(field.get("BogoMIPS", 0)) / 2)
    # 2 FMA pipes per core on Zen 4/5 and Skylake-SP+; FP32 lanes per pipe by the widest vector ISA.
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    nominal = cores * mhz * 1e6 * 2 * lanes * 2 / 1e9
    n = 2048
    a = tf.random.normal((n, n))
    b = tf.random.normal((n, n))
    tf.linalg.matmul(a, b).numpy()
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        tf.linalg.matmul(a, b).numpy()
        times.append(time.perf_counter() - t0)
    return {
        "model_name": field.get("Model name", "?"),
        "cores": cores,
        "clock_mhz_assumed": mhz,
        "isa": "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "sse",
        "avx512_bf16": "avx512_bf16" in flags,
        "fma": "fma" in flags,
        "nominal_peak_gflops_fp32": round(nominal, 1),
        "sgemm_2048_gflops_measured": round(2 * n**3 / min(times) / 1e9, 1),
    }


# --------------------------------------------------------------------------------------- RSS (child)


def _vm_kb(field: str) -> float:
    """A ``/proc/self/status`` memory field in MB (VmHWM: this process image's peak resident set).

    Not ``ru_maxrss``: Linux carries that high-water mark across fork and exec, so a child started by a big
    parent would report the parent's peak.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_child(version_dir: Path, study: Path) -> None:
    """Run in a fresh process: load + warm the model, then segment ``study``; print peak RSS as JSON."""
    from segcore.runner import SavedModelRunner

    runner = SavedModelRunner(version_dir)
    runner.predict(np.zeros(runner.card.representative_input_shape, dtype=np.float32))
    base = _vm_kb("VmHWM")
    image = sitk.ReadImage(str(study), sitk.sitkFloat32)
    t0 = time.perf_counter()
    pipeline_segmenter(runner)(image)
    seconds = time.perf_counter() - t0
    peak = _vm_kb("VmHWM")
    print(
        json.dumps(
            {
                "after_load_mb": round(base, 1),
                "peak_mb": round(peak, 1),
                "study_adds_mb": round(peak - base, 1),
                "segment_s": round(seconds, 2),
            }
        )
    )


def synthetic_study(path: Path, size_xyz=(512, 512, 300), spacing=(0.5, 0.5, 0.6)) -> Path:
    """A head-sized int16 ellipsoid with noise and a bright blob: a high-resolution study's shape."""
    nx, ny, nz = size_xyz
    z, y, x = np.ogrid[:nz, :ny, :nx]
    head = ((x - nx / 2) / (0.4 * nx)) ** 2 + ((y - ny / 2) / (0.45 * ny)) ** 2 + ((z - nz / 2) / (0.45 * nz)) ** 2
    volume = np.zeros((nz, ny, nx), dtype=np.int16)
    rng = np.random.default_rng(0)
    inside = head <= 1
    volume[inside] = (400 + 30 * rng.standard_normal(int(inside.sum()))).astype(np.int16)
    blob = ((x - 0.6 * nx) / 30) ** 2 + ((y - 0.4 * ny) / 30) ** 2 + ((z - 0.55 * nz) / 20) ** 2 <= 1
    volume[blob & inside] = 900
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))
    return path


def measure_rss(version_dir: Path, study: Path) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--rss-child", str(study), "--model-dir", str(version_dir)],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        check=False,
    )
    if out.returncode != 0:
        return {"error": out.stderr[-800:]}
    result = json.loads(out.stdout.strip().splitlines()[-1])
    image = sitk.ReadImage(str(study))
    result["size_xyz"] = list(image.GetSize())
    result["spacing_mm"] = [round(s, 3) for s in image.GetSpacing()]
    result["float32_volume_mb"] = round(float(np.prod(image.GetSize())) * 4 / 2**20, 1)
    return result


# ------------------------------------------------------------------------------------------ HTTP e2e


def measure_http(version_dir: Path, case: Path, reps: int, threads: dict, backend: str = "inprocess") -> dict:
    """End to end through ``python -m app`` on loopback: client wall time vs the service's stage timings."""
    import httpx

    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmp:
        models = Path(tmp) / "models"
        (models / version_dir.parent.name).mkdir(parents=True)
        (models / version_dir.parent.name / version_dir.name).symlink_to(version_dir.resolve())
        env = {"SEG_DEFAULT_MODEL": version_dir.parent.name, "SEG_BACKEND": backend}
        env.update({f"SEG_{k.upper()}_THREADS": str(v) for k, v in threads.items() if v is not None})
        server = start_server(models, Path(tmp) / "server.log", env)
        body = case.read_bytes()
        walls, nifti_walls, infer, stages = [], [], [], []
        try:
            with httpx.Client(base_url=server.url, timeout=300) as client:
                for i in range(reps + 1):
                    t0 = time.perf_counter()
                    r = client.post("/segment", params={"format": "json"}, files={"flair": (case.name, body)})
                    wall = time.perf_counter() - t0
                    r.raise_for_status()
                    t0 = time.perf_counter()
                    r2 = client.post("/segment", files={"flair": (case.name, body)})
                    nifti_wall = time.perf_counter() - t0
                    r2.raise_for_status()
                    if i == 0:
                        continue  # the first request pays one-off costs (imports, first-shape kernels)
                    walls.append(wall)
                    nifti_walls.append(nifti_wall)
                    infer.append(float(r2.headers["x-inference-ms"]) / 1000)
                    stages.append(r.json().get("timings_ms", {}))
        finally:
            server.stop()
    stage_names = sorted({k for s in stages for k in s})
    return {
        "e2e_nifti": stats(nifti_walls),
        "e2e_json": stats(walls),
        "model_only_infer": stats(infer),
        "server_stage_median_ms": {k: round(float(np.median([s.get(k, 0) for s in stages])), 1) for k in stage_names},
        "overhead_nifti_vs_model_s": round(float(np.median(nifti_walls) - np.median(infer)), 3),
    }


# ---------------------------------------------------------------------------------------------- main


def service_backend(name: str, threads: int | None, precision: str):
    """The runner factory the service would use with ``SEG_BACKEND=name`` (``app.runners.backends``)."""
    from app.config import Settings
    from app.runners.backends import runner_factory

    return runner_factory(
        Settings(backend=name, intra_op_threads=threads, openvino_precision=precision, tuning_file=None)
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=None, help="version directory (default: newest bundled)")
    parser.add_argument("--case", type=Path, default=DEFAULT_CASE, help="a 3D FLAIR NIfTI (read in place)")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions per variant after warm-up")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="< 2 minutes: naive once, others 2 reps; no batched 8/32, OpenVINO f32, HTTP, RSS",
    )
    parser.add_argument("--intra", type=int, default=None, help="TensorFlow intra-op threads (default: TF's)")
    parser.add_argument("--inter", type=int, default=None, help="TensorFlow inter-op threads (default: TF's)")
    parser.add_argument("--no-http", action="store_true")
    parser.add_argument("--no-rss", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS / "latency.json")
    parser.add_argument("--rss-child", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--models", action="store_true", help="every bundled model on every backend")
    parser.add_argument("--sizes", action="store_true", help="latency and peak memory vs in-plane size")
    parser.add_argument("--api", action="store_true", help="the acceptance run (benchmarks/acceptance.py)")
    parser.add_argument("--no-2d", action="store_true", help="skip the 2D model's variant comparison")
    parser.add_argument("--size-child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rss_child is None and not args.case.is_file():
        parser.error(f"case {args.case} not found (../shared/data is read in place)")
    return args


def build_variants(
    version_dir: Path, card, model, threads: int, quick: bool
) -> tuple[dict[str, Segmenter], dict[str, str], dict[str, float]]:
    """Every variant as a segmenter; peers that fail to convert are reported, not fatal.
    Returns ``(variants, conversion errors, conversion seconds)``."""
    from segcore.runner import SavedModelRunner

    variants: dict[str, Segmenter] = {
        "naive": pipeline_segmenter(KerasPredictRunner(model, card)),
        "service": pipeline_segmenter(SavedModelRunner(version_dir, card)),
    }
    for size in (None,) if quick else (8, 32, None):
        variants[f"batched_{size or 'all'}"] = batched_segmenter(model, card, size)
    peers = {
        "onnxruntime": lambda: __import__("benchmarks.onnx_runner").onnx_runner.OnnxRuntimeRunner(
            version_dir, card, threads=threads
        ),
        # OpenVINO through the service's own backend table: what is measured is what SEG_BACKEND=openvino runs.
        "openvino": lambda: service_backend("openvino", threads, "default")(version_dir, card),
        "openvino_f32": lambda: service_backend("openvino", threads, "f32")(version_dir, card),
        "openvino_int8": lambda: service_backend("openvino-int8", threads, "default")(version_dir, card),
        "auto": lambda: service_backend("auto", threads, "default")(version_dir, card),
    }
    if quick:  # auto converts and times every backend again at build: minutes on a busy machine
        del peers["openvino_f32"], peers["auto"]
    errors: dict[str, str] = {}
    conversion_s: dict[str, float] = {}
    for name, build in peers.items():
        t0 = time.perf_counter()
        try:
            runner = build()
        except Exception as exc:  # a converter that fails is a result, not a crash
            errors[name] = f"{type(exc).__name__}: {exc}"[:800]
            print(f"  {name}: conversion failed: {errors[name]}", flush=True)
            continue
        conversion_s[name] = round(time.perf_counter() - t0, 2)
        variants[name] = pipeline_segmenter(runner)
    return variants, errors, conversion_s


def time_variants(
    variants: dict[str, Segmenter], image: sitk.Image, model, card, reps: int, quick: bool
) -> tuple[dict[str, dict], str]:
    """Warm up each variant on one volume (``quick``: naive is warmed on one slice and timed once), then
    ``reps`` interleaved timed rounds. Returns per-variant statistics (with ratios and the mask's Dice
    against the service's) and the fastest variant's name."""
    from segcore.metrics import dice

    masks: dict[str, np.ndarray] = {}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for name, run in variants.items():
        t0 = time.perf_counter()
        if quick and name == "naive":
            model.predict(np.zeros((1, 240, 240, len(card.modalities)), dtype=np.float32), verbose=0)
        masks[name] = run(image)
        seconds = time.perf_counter() - t0
        if quick and name == "naive":
            times[name].append(seconds)
        print(f"  warm-up {name:14s} {seconds:7.2f} s", flush=True)
    reference = masks["service"] > 0
    parity = {name: round(dice(mask > 0, reference), 4) for name, mask in masks.items()}
    for rep in range(reps):
        for name, run in variants.items():
            if quick and name == "naive":
                continue
            t0 = time.perf_counter()
            run(image)
            times[name].append(time.perf_counter() - t0)
        print(f"  rep {rep + 1}/{reps} done, load avg {load_average()}", flush=True)
    results = {name: stats(t) for name, t in times.items()}
    naive = results["naive"]["median_s"]
    best = min(results, key=lambda n: results[n]["median_s"])
    for name, r in results.items():
        r["x_faster_than_naive"] = round(naive / r["median_s"], 2)
        r["x_slower_than_best"] = round(r["median_s"] / results[best]["median_s"], 2)
        r["dice_vs_service"] = parity[name]
    return results, best


def flops_report(model, card, image: sitk.Image, results: dict[str, dict], peak: dict) -> dict:
    """Convolution FLOPs per volume: the service's crop (one box for the volume) vs naive's full slices,
    and the rate each variant achieved (whole-pipeline time: a lower bound on the kernels' rate)."""
    from segcore.preprocess import PreprocessSpec, preprocess
    from segcore.tiling import crop_box

    prepared = preprocess({card.modalities[0]: image}, PreprocessSpec.of(card))
    channels, brain = prepared.channels, prepared.brain
    zbox, ybox, xbox = crop_box(brain, card.tiling.margin, card.tiling.divisor)
    div = card.tiling.divisor
    box_hw = (-(-(ybox.stop - ybox.start) // div) * div, -(-(xbox.stop - xbox.start) // div) * div)
    run_slices = int(brain.any(axis=(1, 2)).sum())
    full_hw = tuple(-(-s // div) * div for s in channels.shape[2:])
    flops_service = conv_flops(model, box_hw) * run_slices
    flops_naive = conv_flops(model, full_hw) * channels.shape[1]
    achieved = {
        name: round((flops_naive if name == "naive" else flops_service) / r["median_s"] / 1e9, 1)
        for name, r in results.items()
    }
    return {
        "service_box_hw": list(box_hw),
        "service_slices_run": run_slices,
        "naive_slice_hw": list(full_hw),
        "naive_slices_run": int(channels.shape[1]),
        "gflop_per_volume_service": round(flops_service / 1e9, 1),
        "gflop_per_volume_naive": round(flops_naive / 1e9, 1),
        "achieved_gflops": achieved,
        "service_fraction_of_nominal_peak": round(achieved["service"] / peak["nominal_peak_gflops_fp32"], 3),
        "service_fraction_of_sgemm": round(achieved["service"] / peak["sgemm_2048_gflops_measured"], 3),
    }


def end_to_end(args: argparse.Namespace, version_dir: Path, card, variants: dict[str, Segmenter], reps: int) -> dict:
    """The slow parts of a full run: HTTP end to end per backend, validation Dice, peak RSS."""
    extra: dict = {}
    if not (args.quick or args.no_http):
        print("  HTTP end to end ...", flush=True)
        extra["http"] = {
            backend: measure_http(
                version_dir, args.case, reps, {"intra_op": args.intra, "inter_op": args.inter}, backend
            )
            for backend in ("inprocess", "openvino")
            if backend == "inprocess" or "openvino" in variants
        }
        print("  validation Dice ...", flush=True)
        extra["validation_dice"] = validation_dice(
            card, {n: variants[n] for n in ("service", "openvino", "openvino_f32") if n in variants}
        )
    if not (args.quick or args.no_rss):
        print("  peak RSS ...", flush=True)
        with tempfile.TemporaryDirectory(prefix="bench-rss-") as tmp:
            extra["peak_rss"] = {
                "brats_240x240x155": measure_rss(version_dir, args.case),
                "synthetic_512x512x300": measure_rss(version_dir, synthetic_study(Path(tmp) / "big.nii")),
            }
    return extra


def further_runs(args: argparse.Namespace) -> None:
    """``--models`` and ``--sizes`` (``benchmarks/scaling.py``): each writes its own JSON."""
    from benchmarks import scaling

    reps = 2 if args.quick else args.reps
    if args.models:
        print(f"every model on every backend, load avg {load_average()}", flush=True)
        start = load_average()
        report = scaling.models_run(reps, args.intra)
        report["load_average"] = {"start": start, "end": load_average()}
        (RESULTS / "latency_models.json").write_text(json.dumps(report, indent=2) + "\n")
    if args.api:
        from benchmarks import acceptance

        print(f"the default deployment over HTTP, load avg {load_average()}", flush=True)
        acceptance.run(reps, [1, 2, 4], 30, RESULTS / "acceptance.json")
    if args.sizes:
        print(f"cost against size, load avg {load_average()}", flush=True)
        with tempfile.TemporaryDirectory(prefix="bench-sizes-") as tmp:
            report = scaling.sizes_run(reps, ("inprocess", "openvino"), Path(tmp))
        (RESULTS / "cost_vs_size.json").write_text(json.dumps(report, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    version_dir = args.model_dir or latest_version_dir(DEFAULT_MODEL)
    if args.rss_child is not None:
        rss_child(version_dir, args.rss_child)
        return 0
    if args.size_child is not None:
        from benchmarks.scaling import size_child

        size_child(args.size_child[0], Path(args.size_child[1]), args.reps)
        return 0
    if args.models or args.sizes or args.api:
        further_runs(args)
        if args.no_2d:
            return 0
    from segcore.threads import apply_thread_env

    apply_thread_env(intra_op=args.intra, inter_op=args.inter)  # before TensorFlow runs any op
    import tensorflow as tf

    from segcore.card import ModelCard

    load_start = load_average()
    reps = 2 if args.quick else args.reps
    card = ModelCard.load(version_dir)
    image = sitk.ReadImage(str(args.case), sitk.sitkFloat32)
    print(f"model {version_dir}  case {args.case.name} {image.GetSize()}  load avg {load_start}", flush=True)
    model = rebuild_keras(version_dir, card)
    threads = args.intra or tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count()
    variants, errors, conversion_s = build_variants(version_dir, card, model, threads, args.quick)
    results, best = time_variants(variants, image, model, card, reps, args.quick)
    peak = machine_peak()
    report: dict = {
        "model": str(version_dir.relative_to(version_dir.parents[2]) if len(version_dir.parents) > 2 else version_dir),
        "case": args.case.name,
        "case_size_xyz": list(image.GetSize()),
        "quick": args.quick,
        "reps": reps,
        "threads": {
            "intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
            "peer_runtime_threads": threads,
            "note": "0 = TensorFlow's default (all cores); one process, so naive shares the service's pools",
        },
        "variants": results,
        "speedup_service_vs_naive": round(results["naive"]["median_s"] / results["service"]["median_s"], 2),
        "best_variant": best,
        "service_vs_best_ratio": round(results["service"]["median_s"] / results[best]["median_s"], 2),
        "conversion_seconds": conversion_s,
        "conversion_errors": errors,
        "flops": flops_report(model, card, image, results, peak),
        "machine": {**peak, "python": platform.python_version(), "tensorflow": tf.__version__},
        **end_to_end(args, version_dir, card, variants, reps),
    }
    report["load_average"] = {"start": load_start, "end": load_average()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    print(f"wrote {args.out}")
    return 0


def print_table(report: dict) -> None:
    rows = report["variants"]
    print(
        f"\n{'variant':16s} {'median s':>9s} {'p90 s':>8s} {'min s':>8s} {'vs naive':>9s} {'vs best':>8s} "
        f"{'Dice':>6s} {'GFLOP/s':>8s}"
    )
    achieved = report["flops"]["achieved_gflops"]
    for name, r in sorted(rows.items(), key=lambda kv: kv[1]["median_s"]):
        print(
            f"{name:16s} {r['median_s']:9.2f} {r['p90_s']:8.2f} {r['min_s']:8.2f} {r['x_faster_than_naive']:8.2f}x "
            f"{r['x_slower_than_best']:7.2f}x {r['dice_vs_service']:6.3f} {achieved[name]:8.1f}"
        )
    for name, err in report["conversion_errors"].items():
        print(f"{name:16s} conversion failed: {err[:100]}")
    f = report["flops"]
    print(
        f"\nservice vs naive: {report['speedup_service_vs_naive']}x   best: {report['best_variant']}   "
        f"service/best: {report['service_vs_best_ratio']}x"
    )
    print(
        f"GFLOP/volume: service {f['gflop_per_volume_service']} ({f['service_slices_run']} slices of "
        f"{f['service_box_hw']}), naive {f['gflop_per_volume_naive']}; machine nominal "
        f"{report['machine']['nominal_peak_gflops_fp32']} GFLOP/s, "
        f"SGEMM {report['machine']['sgemm_2048_gflops_measured']}"
    )
    for backend, h in report.get("http", {}).items():
        print(
            f"HTTP e2e ({backend}, nifti) median {h['e2e_nifti']['median_s']} s vs model-only "
            f"{h['model_only_infer']['median_s']} s; stages (ms) {h['server_stage_median_ms']}"
        )
    for name, scores in report.get("validation_dice", {}).items():
        print(f"validation Dice {name}: {scores}")
    for name, r in report.get("peak_rss", {}).items():
        print(f"peak RSS {name}: {r}")


if __name__ == "__main__":
    raise SystemExit(main())
