"""Two runs of ``benchmarks/latency.py`` beyond the 2D model's variants (``--models``, ``--sizes``).

``--models``: every bundled model (2D, 3D whole tumour, 3D multi-class) through the service path
(``segcore.pipeline.segment``) on each backend of the service's table (``inprocess``, ``openvino``,
``openvino-int8`` where the version has a variant that may serve, and ``auto``, which picks one of them
at load), on one real case per model; per-volume median and the mask's Dice against TensorFlow's.

``--sizes``: cost against study size. The same real FLAIR volume resampled to 128^2, 240^2 and 512^2
in-plane (same field of view, so spacing 1.875 / 1 / 0.47 mm), segmented by the 2D model in a fresh
process per size and backend (``--size-child``): seconds per study and the process's peak resident set.
The network always sees the card's 1 mm grid, so what grows with size is reading, resampling onto that
grid and mapping the mask back onto the input's grid. A plot goes to ``benchmarks/results/cost_vs_size.png``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import SimpleITK as sitk

from benchmarks.common import RESULTS, SHARED_DATA, load_average

REPO = Path(__file__).resolve().parents[1]
DEEPMEDIC = SHARED_DATA / "brats2015_deepmedic" / "brats_2013_pat0003_1"  # validation case of every model
FILES = {"flair": DEEPMEDIC / "Flair_subtrMeanDivStd.nii.gz", "t1c": DEEPMEDIC / "T1c_subtrMeanDivStd.nii.gz"}
MODELS = ("brats-wt-flair", "brats-wt-flair-3d", "brats-mc-flair-t1c-3d")
BACKENDS = ("inprocess", "openvino", "openvino-int8", "auto")
SIZES = (128, 240, 512)


def build_runner(backend: str, version_dir: Path, threads: int | None):
    """The runner ``SEG_BACKEND=backend`` would build for this version (``None`` if not applicable)."""
    from app.config import Settings
    from app.runners.backends import runner_factory
    from segcore.card import ModelCard
    from segcore.runner import NotApplicable

    factory = runner_factory(Settings(backend=backend, intra_op_threads=threads, tuning_file=None))
    try:
        return factory(version_dir, ModelCard.load(version_dir))
    except NotApplicable:
        return None


def models_run(reps: int, threads: int | None) -> dict:
    """Per model and backend: median seconds per volume, Dice against TensorFlow, and auto's choice."""
    from segcore.metrics import dice
    from segcore.model_folder import latest_version_dir
    from segcore.pipeline import segment

    report: dict = {"case": DEEPMEDIC.name, "reps": reps, "models": {}}
    for name in MODELS:
        version_dir = latest_version_dir(REPO / "models" / name)
        runners = {b: r for b in BACKENDS if (r := build_runner(b, version_dir, threads)) is not None}
        card = runners["inprocess"].card
        images = {m: sitk.ReadImage(str(FILES[m]), sitk.sitkFloat32) for m in card.modalities}
        masks = {b: sitk.GetArrayFromImage(segment(images, r).mask) for b, r in runners.items()}  # warm-up
        times: dict[str, list[float]] = {b: [] for b in runners}
        for _ in range(reps):  # interleaved, so load bursts hit every backend alike
            for backend, runner in runners.items():
                started = time.perf_counter()
                segment(images, runner)
                times[backend].append(time.perf_counter() - started)
        reference = masks["inprocess"]
        report["models"][name] = {
            "auto_chose": runners["auto"].backend,
            "backends": {
                b: {
                    "median_s": round(statistics.median(t), 3),
                    "min_s": round(min(t), 3),
                    "dice_vs_tensorflow": round(dice(masks[b] > 0, reference > 0), 5),
                }
                for b, t in times.items()
            },
        }
        print(
            f"  {name}: "
            + ", ".join(f"{b} {v['median_s']:.2f} s" for b, v in report["models"][name]["backends"].items())
        )
    return report


def resampled_study(source: Path, in_plane: int, out: Path) -> Path:
    """``source`` resampled to ``in_plane`` x ``in_plane`` voxels in-plane over the same field of view."""
    image = sitk.ReadImage(str(source), sitk.sitkFloat32)
    size = image.GetSize()
    spacing = [image.GetSpacing()[0] * size[0] / in_plane, image.GetSpacing()[1] * size[1] / in_plane]
    resampled = sitk.Resample(
        image,
        [in_plane, in_plane, size[2]],
        sitk.Transform(),
        sitk.sitkLinear,
        image.GetOrigin(),
        [*spacing, image.GetSpacing()[2]],
        image.GetDirection(),
        0.0,
        sitk.sitkFloat32,
    )
    sitk.WriteImage(resampled, str(out))
    return out


def size_child(backend: str, study: Path, reps: int) -> None:
    """In a fresh process: build the 2D model's runner on ``backend``, segment ``study`` ``reps`` times;
    print median seconds and peak RSS (VmHWM) as JSON."""
    from segcore.model_folder import latest_version_dir
    from segcore.pipeline import segment

    runner = build_runner(backend, latest_version_dir(REPO / "models" / MODELS[0]), None)
    image = sitk.ReadImage(str(study), sitk.sitkFloat32)
    segment({"flair": image}, runner)
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        segment({"flair": image}, runner)
        times.append(time.perf_counter() - started)
    peak = next(int(x.split()[1]) for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM"))
    print(json.dumps({"median_s": round(statistics.median(times), 3), "peak_rss_mb": round(peak / 1024, 1)}))


def sizes_run(reps: int, backends: tuple[str, ...], tmp: Path) -> dict:
    """Seconds and peak memory per in-plane size and backend (one fresh process each)."""
    rows = []
    for in_plane in SIZES:
        study = resampled_study(FILES["flair"], in_plane, tmp / f"flair_{in_plane}.nii.gz")
        for backend in backends:
            out = subprocess.run(
                [sys.executable, "-m", "benchmarks.latency", "--size-child", backend, str(study), "--reps", str(reps)],
                capture_output=True,
                text=True,
                cwd=REPO,
                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
                check=False,
            )
            if out.returncode != 0:
                rows.append({"in_plane": in_plane, "backend": backend, "error": out.stderr[-600:]})
                continue
            row = {"in_plane": in_plane, "backend": backend, **json.loads(out.stdout.strip().splitlines()[-1])}
            row["input_mb_float32"] = round(
                in_plane * in_plane * sitk.ReadImage(str(study)).GetSize()[2] * 4 / 2**20, 1
            )
            rows.append(row)
            print(f"  {in_plane}^2 {backend}: {row['median_s']:.2f} s, peak {row['peak_rss_mb']:.0f} MB", flush=True)
    report = {"case": DEEPMEDIC.name, "model": MODELS[0], "reps": reps, "rows": rows, "load_average": load_average()}
    plot_sizes(rows, RESULTS / "cost_vs_size.png")
    return report


def plot_sizes(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(9, 3.6))
    for backend in sorted({r["backend"] for r in rows if "error" not in r}):
        ok = [r for r in rows if r["backend"] == backend and "error" not in r]
        sizes = [r["in_plane"] for r in ok]
        ax_t.plot(sizes, [r["median_s"] for r in ok], marker="o", label=backend)
        ax_m.plot(sizes, [r["peak_rss_mb"] for r in ok], marker="o", label=backend)
    for ax, label in ((ax_t, "seconds per study"), (ax_m, "peak RSS (MB)")):
        ax.set_xlabel("in-plane size (voxels, same field of view)")
        ax.set_ylabel(label)
        ax.set_xticks(list(SIZES))
        ax.grid(alpha=0.3)
    ax_t.legend()
    fig.suptitle("2D model, BraTS FLAIR resampled in-plane (155 slices)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
