"""Load test of the in-process service at concurrency 1, 2 and 4 (``app.loadtest``), one run, one JSON.

    .venv/bin/python benchmarks/load.py                 # real FLAIR, 6/8/12 requests per level
    .venv/bin/python benchmarks/load.py --requests 4    # shorter

Starts ``python -m app`` on a loopback port with the bundled model (SEG_BACKEND=inprocess, one inference
at a time, the default queue of 8), waits until it is ready, then runs the load levels one after the other
against the same server. With one inference slot, latency at concurrency N is roughly N x the service time
(requests queue) while throughput stays flat: that is the expected shape, and what the queue-depth gauge
and 503 backpressure exist for.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.cli.loadtest import aggregate, plot, run_load, segment_url  # noqa: E402
from benchmarks.common import DEFAULT_CASE, REPO, RESULTS, load_average, start_server  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", type=Path, default=DEFAULT_CASE, help="FLAIR NIfTI sent as the study")
    parser.add_argument("--levels", default="1,2,4", help="concurrency levels")
    parser.add_argument("--requests", type=int, default=None, help="requests per level (default: 3 x level, >= 6)")
    parser.add_argument("--duration", type=float, default=180.0, help="cap per level (s)")
    parser.add_argument("--models-dir", type=Path, default=REPO / "models")
    parser.add_argument("--intra", type=int, default=2)
    parser.add_argument("--inter", type=int, default=1)
    parser.add_argument("--backend", default="inprocess", help="SEG_BACKEND of the server (inprocess, openvino)")
    parser.add_argument("--out", type=Path, default=RESULTS / "load.json")
    args = parser.parse_args(argv)
    if not args.case.is_file():
        parser.error(f"case {args.case} not found (../shared/data is read in place)")
    levels = [int(v) for v in args.levels.split(",")]
    files = {"flair": (args.case.name, args.case.read_bytes())}
    report: dict = {"case": args.case.name, "load_average_start": load_average(), "levels": {}}
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        env = {
            "SEG_INTRA_OP_THREADS": str(args.intra),
            "SEG_INTER_OP_THREADS": str(args.inter),
            "SEG_BACKEND": args.backend,
        }
        server = start_server(args.models_dir, Path(tmp) / "server.log", env)
        try:
            url = segment_url(server.url, "json")
            asyncio.run(run_load(url, files, concurrency=1, requests=1, duration_s=300))  # warm: first-shape kernels
            for level in levels:
                n = args.requests or max(6, 3 * level)
                samples, wall = asyncio.run(
                    run_load(url, files, concurrency=level, requests=n, duration_s=args.duration)
                )
                summary = aggregate(samples, wall)
                report["levels"][str(level)] = summary
                png = args.out.with_name(f"{args.out.stem}_c{level}.png")
                plot(samples, png, f"POST /segment, concurrency {level}, backend {args.backend}")
                lat = summary["latency"]
                print(
                    f"concurrency {level}: {summary['ok']}/{summary['requests']} ok, "
                    f"503 {summary['backpressure_503']}, p50 {lat.get('p50_s')} s p95 {lat.get('p95_s')} s "
                    f"p99 {lat.get('p99_s')} s max {lat.get('max_s')} s,"
                    f" {summary['throughput_rps']} studies/s, stages {summary['server_timings_ms_median']}",
                    flush=True,
                )
        finally:
            server.stop()
    report["server"] = {"backend": args.backend, "intra_op": args.intra, "inter_op": args.inter, "slots": 1, "queue": 8}
    report["load_average_end"] = load_average()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
