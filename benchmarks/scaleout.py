"""Scale-out on one host: throughput of 1 service process on all cores vs N processes, one core each.

    .venv/bin/python benchmarks/scaleout.py                  # 1 x 2 cores vs 2 x 1 core, 8 studies each
    .venv/bin/python benchmarks/scaleout.py --requests 4     # shorter

Variants, each on the same real FLAIR (case_6), with the bundled 2D model, one after the other:

- ``1x``: one ``python -m app`` on every CPU (SEG_INTRA_OP_THREADS = CPUs, one inference at a time),
  loaded by N clients (requests queue in the service, as behind one port);
- ``Nx``: N processes, each pinned to its own CPU (its affinity set before TensorFlow starts, as
  ``cpuset`` does for a container) with SEG_INTRA_OP_THREADS=1, each loaded by one client: what a
  least-connections balancer in front of N replicas does.

Throughput is completed studies per second of wall time after a warm-up request per process. The
development machine is shared with other engineers: absolute numbers drift with its load, so the JSON
records the load average and the result to read is the ratio between variants measured in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.cli.loadtest import aggregate, run_load, segment_url  # noqa: E402
from benchmarks.common import DEFAULT_CASE, REPO, RESULTS, load_average, start_server  # noqa: E402


def _variant(models: Path, tmp: Path, files: dict, cpu_sets: list[set[int]], clients: int, requests: int) -> dict:
    """Start one server per CPU set, warm each, load them together; the summary of all answers."""
    servers = []
    try:
        for i, cpus in enumerate(cpu_sets):
            env = {
                "SEG_INTRA_OP_THREADS": str(len(cpus)),
                "SEG_INTER_OP_THREADS": "1",
                "SEG_MAX_CONCURRENT_INFERENCES": "1",
            }
            servers.append(start_server(models, tmp / f"server{i}.log", env, cpus=cpus))
        urls = [segment_url(s.url, "json") for s in servers]
        for url in urls:  # warm: first-shape kernels
            asyncio.run(run_load(url, files, concurrency=1, requests=1, duration_s=300))

        async def together() -> tuple[list, float]:
            per_server = clients // len(urls)
            share = requests // len(urls)
            t0 = time.perf_counter()
            results = await asyncio.gather(
                *(run_load(u, files, concurrency=per_server, requests=share, duration_s=600) for u in urls)
            )
            return [s for samples, _ in results for s in samples], time.perf_counter() - t0

        samples, wall = asyncio.run(together())
        summary = aggregate(samples, wall)
        summary["processes"] = len(cpu_sets)
        summary["cpus_per_process"] = len(cpu_sets[0])
        return summary
    finally:
        for server in servers:
            server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", type=Path, default=DEFAULT_CASE, help="FLAIR NIfTI sent as the study")
    parser.add_argument("--requests", type=int, default=8, help="studies per variant")
    parser.add_argument("--models-dir", type=Path, default=REPO / "models")
    parser.add_argument("--out", type=Path, default=RESULTS / "scaleout.json")
    args = parser.parse_args(argv)
    if not args.case.is_file():
        parser.error(f"case {args.case} not found (../shared/data is read in place)")
    cpus = sorted(os.sched_getaffinity(0))
    n = len(cpus)
    files = {"flair": (args.case.name, args.case.read_bytes())}
    report: dict = {"case": args.case.name, "cpus": n, "load_average_start": load_average(), "variants": {}}
    variants = {"1x": [set(cpus)], f"{n}x": [{c} for c in cpus]}
    with tempfile.TemporaryDirectory(prefix="bench-scaleout-") as tmp:
        for name, cpu_sets in variants.items():
            summary = _variant(args.models_dir, Path(tmp), files, cpu_sets, clients=n, requests=args.requests)
            report["variants"][name] = summary
            lat = summary["latency"]
            print(
                f"{name:>3}: {len(cpu_sets)} process(es) x {len(cpu_sets[0])} CPU(s): {summary['ok']}/"
                f"{summary['requests']} ok, {summary['throughput_rps']} studies/s, p50 {lat.get('p50_s')} s",
                flush=True,
            )
    one, many = report["variants"]["1x"]["throughput_rps"], report["variants"][f"{n}x"]["throughput_rps"]
    report["ratio_throughput"] = round(many / one, 3) if one else None
    report["load_average_end"] = load_average()
    print(f"throughput {n} processes / 1 process: {report['ratio_throughput']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
