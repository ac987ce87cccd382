"""Scale-out on one host: throughput of 1 service process on all cores vs N processes, one core each.

    .venv/bin/python benchmarks/scaleout.py                       # 1 x 2 vs 2 x 1, concurrency 1/2/4/8
    .venv/bin/python benchmarks/scaleout.py --levels 2,4 --backend openvino   # fewer levels, one backend

Variants, each on the same real FLAIR (case_6), with the bundled 2D model, one after the other:

- ``1x``: one ``python -m app`` on every CPU (SEG_INTRA_OP_THREADS = CPUs, one inference at a time),
  loaded by N clients (requests queue in the service, as behind one port);
- ``Nx``: N processes, each pinned to its own CPU (its affinity set before TensorFlow starts, as
  ``cpuset`` does for a container) with SEG_INTRA_OP_THREADS=1, each loaded by one client: what a
  least-connections balancer in front of N replicas does.

Both run the service's default backend (``SEG_BACKEND=auto``; ``--backend`` to force one), at each
concurrency level of ``--levels`` (1, 2, 4, 8 clients in total; ``Nx`` splits them over its processes
as evenly as they go, as a least-connections balancer would), ``--requests-per-client`` studies each
(at least 4 per level). Each server's peak resident set (VmHWM) after the run is the memory a
process (worker or replica) costs.

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
from benchmarks.common import DEFAULT_CASE, DEFAULT_MODEL, REPO, RESULTS, load_average, start_server  # noqa: E402


def _peak_rss_mb(pid: int) -> float | None:
    """VmHWM of a live process, in MB (None once it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    return round(next(int(x.split()[1]) for x in status.splitlines() if x.startswith("VmHWM")) / 1024, 1)


def _variant(
    models: Path, tmp: Path, files: dict, cpu_sets: list[set[int]], levels: list[int], per_client: int, backend: str
) -> dict:
    """Start one server per CPU set, warm each, then load them together at each concurrency level (clients
    split over the servers as evenly as they go); per level the summary of all answers, and each server's
    peak RSS at the end."""
    servers = []
    try:
        for i, cpus in enumerate(cpu_sets):
            env = {
                "SEG_BACKEND": backend,
                "SEG_INTRA_OP_THREADS": str(len(cpus)),
                "SEG_INTER_OP_THREADS": "1",
                "SEG_MAX_CONCURRENT_INFERENCES": "1",
            }
            servers.append(start_server(models, tmp / f"server{i}.log", env, timeout=900, cpus=cpus))
        urls = [segment_url(s.url, "json") for s in servers]
        for url in urls:  # warm: first-shape kernels
            asyncio.run(run_load(url, files, concurrency=1, requests=1, duration_s=300))

        async def together(clients: int) -> tuple[list, float]:
            split = [clients // len(urls) + (1 if i < clients % len(urls) else 0) for i in range(len(urls))]
            t0 = time.perf_counter()
            results = await asyncio.gather(
                *(
                    run_load(u, files, concurrency=c, requests=max(c * per_client, 1), duration_s=600)
                    for u, c in zip(urls, split, strict=True)
                    if c > 0
                )
            )
            return [s for samples, _ in results for s in samples], time.perf_counter() - t0

        by_level = {}
        for clients in levels:
            samples, wall = asyncio.run(together(clients))
            by_level[str(clients)] = aggregate(samples, wall)
            lat = by_level[str(clients)]["latency"]
            print(
                f"     {len(cpu_sets)}x{len(cpu_sets[0])} concurrency {clients}: {by_level[str(clients)]['ok']}/"
                f"{by_level[str(clients)]['requests']} ok, {by_level[str(clients)]['throughput_rps']} studies/s, "
                f"p50 {lat.get('p50_s')} s, p95 {lat.get('p95_s')} s",
                flush=True,
            )
        return {
            "processes": len(cpu_sets),
            "cpus_per_process": len(cpu_sets[0]),
            "levels": by_level,
            "peak_rss_mb_per_process": [_peak_rss_mb(s.process.pid) for s in servers],
        }
    finally:
        for server in servers:
            server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", type=Path, default=DEFAULT_CASE, help="FLAIR NIfTI sent as the study")
    parser.add_argument("--levels", default="1,2,4,8", help="total concurrent clients, comma-separated")
    parser.add_argument("--requests-per-client", type=int, default=2, help="studies per client and level")
    parser.add_argument("--backend", default="auto", help="SEG_BACKEND of every server (default: the default)")
    parser.add_argument("--models-dir", type=Path, default=REPO / "models")
    parser.add_argument("--out", type=Path, default=RESULTS / "scaleout.json")
    args = parser.parse_args(argv)
    if not args.case.is_file():
        parser.error(f"case {args.case} not found (../shared/data is read in place)")
    levels = [int(x) for x in args.levels.split(",")]
    cpus = sorted(os.sched_getaffinity(0))
    n = len(cpus)
    files = {"flair": (args.case.name, args.case.read_bytes())}
    report: dict = {
        "case": args.case.name,
        "cpus": n,
        "backend": args.backend,
        "load_average_start": load_average(),
        "variants": {},
    }
    variants = {"1x": [set(cpus)], f"{n}x": [{c} for c in cpus]}
    with tempfile.TemporaryDirectory(prefix="bench-scaleout-") as tmp:
        models = Path(tmp) / "models"  # the default model alone: no other model's load in the way
        models.mkdir()
        (models / DEFAULT_MODEL.name).symlink_to(args.models_dir.resolve() / DEFAULT_MODEL.name)
        for name, cpu_sets in variants.items():
            print(f"{name}: {len(cpu_sets)} process(es) x {len(cpu_sets[0])} CPU(s)", flush=True)
            report["variants"][name] = _variant(
                models, Path(tmp), files, cpu_sets, levels, args.requests_per_client, args.backend
            )
    one, many = report["variants"]["1x"]["levels"], report["variants"][f"{n}x"]["levels"]
    report["ratio_throughput_by_level"] = {
        lvl: round(many[lvl]["throughput_rps"] / one[lvl]["throughput_rps"], 3) if one[lvl]["throughput_rps"] else None
        for lvl in one
    }
    report["load_average_end"] = load_average()
    print(f"throughput {n} processes / 1 process by concurrency: {report['ratio_throughput_by_level']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
