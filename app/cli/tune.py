"""``python -m app.tune``: measure the served model over a grid of thread settings and keep the best.

TensorFlow sizes its intra-op and inter-op pools once, when it runs its first op, so every trial runs in a
fresh subprocess (``python -m app.cli.tune --trial ...``). A trial loads the default model's newest version
with the configured backend, warms it, then times batch-of-one calls on the card's warm-up shape (a
typical brain-cropped slice), which is what a study costs per slice.

OpenMP variables (``OMP_NUM_THREADS``, ``KMP_BLOCKTIME``, ``KMP_AFFINITY``) only matter if an OpenMP
runtime is loaded into the process. That is checked, not assumed: a probe trial reports whether
``libgomp``/``libiomp`` appears in ``/proc/self/maps`` after inference, and times ``OMP_NUM_THREADS=1``
against unset. Only if a runtime is loaded do the OpenMP variables join the grid.

The best setting is written as JSON (read at start through ``SEG_TUNING_FILE``) and printed as
environment lines for docker-compose.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

OPENMP_LIBS = ("libgomp", "libiomp", "libomp.so")


# ---------------------------------------------------------------------------------------------- trial


def run_trial(spec: dict) -> dict:
    """One measurement in this (fresh) process. ``spec``: intra, inter, calls, reps, models_dir, model."""
    from segcore.threads import apply_thread_env

    apply_thread_env(intra_op=spec["intra"], inter_op=spec["inter"])
    from app.config import Settings
    from app.runners.backends import runner_factory
    from segcore.card import ModelCard
    from segcore.model_folder import latest_version_dir

    settings = Settings(
        models_dir=spec["models_dir"],
        intra_op_threads=spec["intra"],
        inter_op_threads=spec["inter"],
        tuning_file=None,
    )
    version_dir = latest_version_dir(Path(settings.models_dir) / spec["model"])
    card = ModelCard.load(version_dir)
    runner = runner_factory(settings)(version_dir, card)
    shape = card.representative_input_shape
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    for _ in range(3):
        runner.predict(x)
    per_call = []
    for _ in range(spec["reps"]):
        t0 = time.perf_counter()
        for _ in range(spec["calls"]):
            runner.predict(x)
        per_call.append((time.perf_counter() - t0) / spec["calls"] * 1000)
    import tensorflow as tf

    maps = Path("/proc/self/maps").read_text() if Path("/proc/self/maps").exists() else ""
    status = Path("/proc/self/status").read_text() if Path("/proc/self/status").exists() else ""
    threads = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("Threads:")), None)
    return {
        "intra": spec["intra"],
        "inter": spec["inter"],
        "env": spec.get("env", {}),
        "backend": settings.backend,
        "model": f"{spec['model']}/{version_dir.name}",
        "input_shape": list(shape),
        "ms_per_call_median": round(float(np.median(per_call)), 2),
        "ms_per_call_min": round(float(np.min(per_call)), 2),
        "ms_per_call_runs": [round(v, 2) for v in per_call],
        "tf_pools_in_effect": [
            tf.config.threading.get_intra_op_parallelism_threads(),
            tf.config.threading.get_inter_op_parallelism_threads(),
        ],
        "os_threads": threads,
        "openmp_runtime_loaded": sorted({lib for lib in OPENMP_LIBS if lib in maps}),
    }


def trial_subprocess(spec: dict, timeout: float) -> dict:
    """Run :func:`run_trial` in a fresh interpreter with ``spec['env']`` added to the environment."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **spec.get("env", {})}
    for name in ("OMP_NUM_THREADS", "KMP_BLOCKTIME", "KMP_AFFINITY"):
        if name not in spec.get("env", {}):
            env.pop(name, None)  # a trial measures exactly its own settings
    try:
        out = subprocess.run(
            [sys.executable, "-m", "app.cli.tune", "--trial", json.dumps(spec)],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {**spec, "error": f"timed out after {timeout:.0f} s"}
    if out.returncode != 0:
        return {**spec, "error": (out.stderr or out.stdout)[-600:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------- grid


def default_grid(cores: int) -> tuple[list[int], list[int]]:
    """Intra-op: 1, half and all cores; inter-op: 1 and 2 (a U-Net is a chain: little runs side by side)."""
    intra = sorted({1, max(cores // 2, 1), cores})
    return intra, [1, 2]


def _ints(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f'expected positive integers separated by commas, not "{text}"')
    return values


def env_lines(best: dict, out: Path) -> list[str]:
    lines = [f"SEG_INTRA_OP_THREADS={best['intra_op_threads']}", f"SEG_INTER_OP_THREADS={best['inter_op_threads']}"]
    lines += [f"{k}={v}" for k, v in best.get("env", {}).items()]
    lines.append(f"SEG_TUNING_FILE={out.resolve()}")
    return lines


def openmp_check(base: dict, intra: int, cores: int, timeout: float) -> tuple[dict, list[dict[str, str]]]:
    """Whether an OpenMP runtime is loaded, and so whether OMP/KMP variables join the grid (see the module
    docstring). Returns the report entry and the extra environments to try."""
    unset = trial_subprocess({**base, "intra": intra, "inter": 1, "env": {}}, timeout)
    one = trial_subprocess({**base, "intra": intra, "inter": 1, "env": {"OMP_NUM_THREADS": "1"}}, timeout)
    loaded = unset.get("openmp_runtime_loaded", [])
    openmp = {
        "checked": True,
        "openmp_runtime_loaded": loaded,
        "ms_unset": unset.get("ms_per_call_median"),
        "ms_omp_num_threads_1": one.get("ms_per_call_median"),
        "honoured": bool(loaded),
        "verdict": (
            f"OpenMP runtime loaded ({', '.join(loaded)}): OMP_NUM_THREADS/KMP_BLOCKTIME are in the grid"
            if loaded
            else "no OpenMP runtime is loaded by this TensorFlow build (oneDNN uses TensorFlow's own thread "
            "pool), so OMP_NUM_THREADS/KMP_* cannot change anything; left out of the grid"
        ),
    }
    extra_envs: list[dict[str, str]] = [{}]
    if loaded:
        extra_envs = [{}, {"OMP_NUM_THREADS": str(cores), "KMP_BLOCKTIME": "1"}, {"KMP_BLOCKTIME": "0"}]
    print(
        f"OpenMP check: {openmp['verdict']} (unset {openmp['ms_unset']} ms, OMP_NUM_THREADS=1 "
        f"{openmp['ms_omp_num_threads_1']} ms per call)",
        flush=True,
    )
    return openmp, extra_envs


def run_grid(
    base: dict, intra_grid: list[int], inter_grid: list[int], envs: list[dict[str, str]], timeout: float
) -> list[dict]:
    """One trial subprocess per (intra, inter, environment), in order; failures are results too."""
    trials = []
    for intra, inter, env in itertools.product(intra_grid, inter_grid, envs):
        result = trial_subprocess({**base, "intra": intra, "inter": inter, "env": env}, timeout)
        trials.append(result)
        shown = result.get("ms_per_call_median", result.get("error", "?"))
        print(f"  intra={intra} inter={inter} {env or ''}: {shown}", flush=True)
    return trials


def print_report(ok: list[dict], trials: list[dict], best: dict, out: Path) -> None:
    """The trials as a table (fastest first), the failures, and the lines to paste into a deployment."""
    print(f"\n{'intra':>5s} {'inter':>5s} {'env':24s} {'ms/call':>8s} {'min':>8s} {'vs best':>8s}")
    for t in sorted(ok, key=lambda t: t["ms_per_call_median"]):
        env = " ".join(f"{k}={v}" for k, v in t["env"].items()) or "-"
        print(
            f"{t['intra']:5d} {t['inter']:5d} {env:24s} {t['ms_per_call_median']:8.1f} {t['ms_per_call_min']:8.1f} "
            f"{t['ms_per_call_median'] / best['ms_per_call']:7.2f}x"
        )
    for t in trials:
        if "error" in t:
            print(f"  intra={t['intra']} inter={t['inter']} failed: {t['error'][:200]}")
    print(f"\nwrote {out}; for docker-compose (environment:) or a shell:")
    for line in env_lines(best, out):
        print(f"  {line}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.tune", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", type=Path, default=None, help="default: SEG_MODELS_DIR")
    parser.add_argument("--model", default=None, help="default: SEG_DEFAULT_MODEL")
    parser.add_argument("--intra", type=_ints, default=None, help="intra-op counts, e.g. 1,2 (default: 1, half, all)")
    parser.add_argument("--inter", type=_ints, default=None, help="inter-op counts (default: 1,2)")
    parser.add_argument("--calls", type=int, default=20, help="model calls per timed run")
    parser.add_argument("--reps", type=int, default=3, help="timed runs per trial (median reported)")
    parser.add_argument("--skip-openmp-check", action="store_true", help="do not probe OMP/KMP variables")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per trial subprocess")
    parser.add_argument("--out", type=Path, default=Path("tuning.json"), help="where the best settings go")
    parser.add_argument("--trial", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.trial is not None:
        print(json.dumps(run_trial(json.loads(args.trial))))
        return 0

    from app.config import Settings

    settings = Settings(tuning_file=None)
    models_dir = str((args.models_dir or settings.models_dir).resolve())
    model = args.model or settings.default_model
    cores = os.cpu_count() or 1
    intra_grid, inter_grid = default_grid(cores)
    intra_grid, inter_grid = args.intra or intra_grid, args.inter or inter_grid
    base = {"models_dir": models_dir, "model": model, "calls": args.calls, "reps": args.reps}

    openmp: dict = {"checked": False}
    extra_envs: list[dict[str, str]] = [{}]
    if not args.skip_openmp_check:
        openmp, extra_envs = openmp_check(base, max(intra_grid), cores, args.timeout)
    trials = run_grid(base, intra_grid, inter_grid, extra_envs, args.timeout)
    ok = [t for t in trials if "ms_per_call_median" in t]
    if not ok:
        print("every trial failed:\n" + "\n".join(str(t.get("error")) for t in trials), file=sys.stderr)
        return 1
    best_trial = min(ok, key=lambda t: (t["ms_per_call_median"], t["intra"] + t["inter"]))
    best = {
        "intra_op_threads": best_trial["intra"],
        "inter_op_threads": best_trial["inter"],
        "env": best_trial["env"],
        "ms_per_call": best_trial["ms_per_call_median"],
    }
    report = {
        "best": best,
        "model": best_trial["model"],
        "backend": best_trial["backend"],
        "input_shape": best_trial["input_shape"],
        "openmp": openmp,
        "trials": trials,
        "machine": {"cpus": cores, "platform": platform.platform(), "load_average": list(os.getloadavg())},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    print_report(ok, trials, best, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
