"""Training throughput (samples/s) of the real training loop with 1 and 2 Horovod processes on this host.

    .venv/bin/python benchmarks/horovod_throughput.py                 # 2D FLAIR U-Net (the bundled config)
    .venv/bin/python benchmarks/horovod_throughput.py --config training/configs/brats-wt-flair-3d.toml

Each run is ``horovodrun -np N -H localhost:N --gloo python -m training.train --horovod`` on the config's
network, crop and per-rank batch (weak scaling: the global batch grows with N, as in multi-node training),
``--steps`` steps per epoch for ``--epochs`` epochs, no export, one validation case. Throughput is
taken from the last epoch (the first includes tracing), as global samples/s; validation is not counted.
The threads per rank follow ``training.train.plan_world`` (cores / ranks). Prints a table and writes JSON
to ``benchmarks/results/horovod_throughput.json``. The machine is shared, so repeat before trusting a
difference of a few percent.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "horovod_throughput.json"


def run(config: Path, processes: int, epochs: int, steps: int, workdir: Path) -> dict:
    """One horovodrun job; returns rank 0's last-epoch throughput and the job's wall time."""
    bindir = Path(sys.executable).parent
    run_dir = workdir / f"np{processes}"
    command = [
        str(bindir / "horovodrun"), "-np", str(processes), "-H", f"localhost:{processes}", "--gloo",
        sys.executable, "-m", "training.train", "--config", str(config), "--horovod", "--no-export", "--quiet",
        "--epochs", str(epochs), "--steps", str(steps), "--run-dir", str(run_dir),
    ]  # fmt: skip
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PATH": f"{bindir}:{os.environ['PATH']}"}
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"horovodrun -np {processes} failed:\n{(done.stdout + done.stderr)[-3000:]}")
    name = tomllib.loads(config.read_text())["name"]
    history = json.loads((run_dir / name / "history.json").read_text())
    last = history[-1]["samples_per_s"]
    return {"processes": processes, "samples_per_s": round(last, 2), "job_wall_s": round(wall, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=REPO / "training" / "configs" / "brats-wt-flair.toml")
    parser.add_argument("--processes", default="1,2", help="comma-separated process counts")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    raw = tomllib.loads(args.config.read_text())
    raw["data"]["validation"] = raw["data"]["validation"][-1:]  # one case: validation is not what is measured
    raw["data"]["shards"] = str((REPO / raw["data"]["shards"]).resolve())
    raw.setdefault("optim", {})["validate_every"] = 1000
    with tempfile.TemporaryDirectory(prefix="hvd-bench-") as tmp:
        config = Path(tmp) / "bench.toml"
        config.write_text(_to_toml(raw))
        rows = [run(config, int(n), args.epochs, args.steps, Path(tmp)) for n in args.processes.split(",")]
    base = rows[0]["samples_per_s"]
    for row in rows:
        row["speedup"] = round(row["samples_per_s"] / base, 2)
        row["efficiency"] = round(row["speedup"] / (row["processes"] / rows[0]["processes"]), 2)
    print(
        f"config {args.config.name}: dims {raw.get('dims', 2)}, per-rank batch {raw['optim']['batch_size']}, "
        f"crop {raw['data']['patch']}, {os.cpu_count()} cores"
    )
    print(f"{'processes':>9} {'samples/s':>10} {'speedup':>8} {'efficiency':>10} {'job wall s':>10}")
    for r in rows:
        print(
            f"{r['processes']:9d} {r['samples_per_s']:10.2f} {r['speedup']:8.2f} {r['efficiency']:10.2f} "
            f"{r['job_wall_s']:10.1f}"
        )
    report = {
        "config": str(args.config.relative_to(REPO) if args.config.is_relative_to(REPO) else args.config),
        "dims": raw.get("dims", 2),
        "per_rank_batch": raw["optim"]["batch_size"],
        "crop": raw["data"]["patch"],
        "steps_per_epoch": args.steps,
        "epochs": args.epochs,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "processor": _cpu_model()},
        "load_average_after": os.getloadavg(),
        "rows": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _to_toml(raw: dict) -> str:
    """Just enough TOML for a training config (tables of scalars and lists)."""

    def value(v) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return repr(v)

    lines = [f"{k} = {value(v)}" for k, v in raw.items() if not isinstance(v, dict)]
    for table, body in raw.items():
        if isinstance(body, dict):
            lines.append(f"\n[{table}]")
            lines += [f"{json.dumps(str(k)) if isinstance(k, int) else k} = {value(v)}" for k, v in body.items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
