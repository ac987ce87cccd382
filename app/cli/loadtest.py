"""``python -m app.loadtest URL --modality flair=FILE``: a bounded load test of ``POST /segment``.

    python -m app.loadtest http://127.0.0.1:8000 --modality flair=FLAIR.nii.gz --concurrency 2 --requests 20

``--concurrency`` clients (asyncio tasks sharing one ``httpx.AsyncClient``) each send the study, wait for
the answer, and send again, until ``--requests`` have been sent or ``--duration`` seconds have passed
(whichever comes first; both are capped, so a run always stops by itself). It reports p50/p95/p99/max
latency of the successful answers, throughput, answers by status with 503 (backpressure: the service's
queue was full) counted apart from errors, and the service's own per-stage timings (``format=json``
answers carry ``timings_ms``). It writes JSON and, if matplotlib is installed, a PNG with the latency
histogram and latency over time.

Only loopback addresses are accepted unless ``--allow-remote`` is given: a load test is aimed at a
service you run (``make serve``, or the docker-compose deployment on its published localhost port).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np

MAX_REQUESTS = 10_000
MAX_DURATION_S = 3600.0


@dataclass
class Sample:
    """One request: when it started (s after the run began), how long it took, and what came back."""

    start_s: float
    latency_s: float
    status: int | None  # None: no HTTP answer (connection refused, timeout...)
    error: str | None = None
    retry_after: str | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)


def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def segment_url(url: str, fmt: str) -> str:
    """``http://host:port`` or ``.../segment``, with ``format=`` added unless the URL names one."""
    parts = urlsplit(url)
    path = parts.path if parts.path.rstrip("/") else "/segment"
    query = parts.query if "format=" in parts.query else "&".join(q for q in (parts.query, f"format={fmt}") if q)
    return urlunsplit((parts.scheme, parts.netloc, path, query, ""))


async def run_load(
    url: str,
    files: dict[str, tuple[str, bytes]],
    *,
    concurrency: int,
    requests: int,
    duration_s: float,
    timeout_s: float = 300.0,
    honour_retry_after: bool = False,
) -> tuple[list[Sample], float]:
    """Send up to ``requests`` requests from ``concurrency`` clients for at most ``duration_s``.

    Returns the samples and the wall time of the run. A request already sent when the time is up is
    waited for (up to ``timeout_s``); no new one starts.
    """
    import httpx

    if concurrency < 1 or requests < 1 or duration_s <= 0:
        raise ValueError(
            f"concurrency, requests and duration must be positive, not {concurrency}, {requests}, {duration_s}"
        )
    requests = min(requests, MAX_REQUESTS)
    duration_s = min(duration_s, MAX_DURATION_S)
    samples: list[Sample] = []
    sent = 0
    t_start = time.perf_counter()
    deadline = t_start + duration_s
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal sent
        while sent < requests and time.perf_counter() < deadline:
            sent += 1
            t0 = time.perf_counter()
            try:
                r = await client.post(url, files=files)
            except httpx.HTTPError as exc:
                samples.append(Sample(t0 - t_start, time.perf_counter() - t0, None, f"{type(exc).__name__}: {exc}"))
                continue
            latency = time.perf_counter() - t0
            timings: dict[str, float] = {}
            error = None
            if r.status_code == 200 and r.headers.get("content-type", "").startswith("application/json"):
                timings = {k: float(v) for k, v in r.json().get("timings_ms", {}).items()}
            elif r.status_code == 200 and "x-inference-ms" in r.headers:
                timings = {"infer": float(r.headers["x-inference-ms"])}
            elif r.status_code != 200:
                try:
                    error = r.json().get("error")
                except ValueError:
                    error = r.text[:200]
            retry_after = r.headers.get("retry-after")
            samples.append(Sample(t0 - t_start, latency, r.status_code, error, retry_after, timings))
            if r.status_code == 503 and honour_retry_after and retry_after:
                await asyncio.sleep(min(float(retry_after), max(deadline - time.perf_counter(), 0)))

    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
    return samples, time.perf_counter() - t_start


def aggregate(samples: list[Sample], wall_s: float) -> dict:
    """Latency percentiles of the 200 answers, throughput, and answers by status (503 apart)."""
    ok = [s for s in samples if s.status == 200]
    latencies = np.array([s.latency_s for s in ok], dtype=float)
    by_status: dict[str, int] = {}
    for s in samples:
        key = str(s.status) if s.status is not None else "transport_error"
        by_status[key] = by_status.get(key, 0) + 1
    errors = {k: v for k, v in by_status.items() if k not in ("200", "503")}
    latency = (
        {
            "p50_s": round(float(np.percentile(latencies, 50)), 4),
            "p95_s": round(float(np.percentile(latencies, 95)), 4),
            "p99_s": round(float(np.percentile(latencies, 99)), 4),
            "max_s": round(float(latencies.max()), 4),
            "min_s": round(float(latencies.min()), 4),
            "mean_s": round(float(latencies.mean()), 4),
        }
        if ok
        else {}
    )
    stages = sorted({k for s in ok for k in s.timings_ms})
    return {
        "requests": len(samples),
        "ok": len(ok),
        "by_status": dict(sorted(by_status.items())),
        "backpressure_503": by_status.get("503", 0),
        "errors": errors,
        "error_count": sum(errors.values()),
        "retry_after_on_503": sorted({s.retry_after for s in samples if s.status == 503 and s.retry_after}),
        "wall_s": round(wall_s, 3),
        "throughput_rps": round(len(ok) / wall_s, 4) if wall_s > 0 else 0.0,
        "latency": latency,
        "server_timings_ms_median": {
            k: round(float(np.median([s.timings_ms[k] for s in ok if k in s.timings_ms])), 1) for k in stages
        },
    }


def plot(samples: list[Sample], path: Path, title: str) -> Path | None:
    """Latency histogram (200 answers) and latency over time (every answer, by status); None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (hist, over_time) = plt.subplots(1, 2, figsize=(11, 4), dpi=80)
    ok = [s.latency_s for s in samples if s.status == 200]
    hist.hist(ok, bins=min(max(len(ok) // 2, 5), 40), color="tab:blue")
    hist.set_xlabel("latency (s), 200 answers")
    hist.set_ylabel("requests")
    for status in sorted({s.status for s in samples}, key=lambda v: (v is None, v or 0)):
        sel = [s for s in samples if s.status == status]
        over_time.scatter(
            [s.start_s for s in sel], [s.latency_s for s in sel], s=14, label=str(status or "transport error")
        )
    over_time.set_xlabel("request start (s)")
    over_time.set_ylabel("latency (s)")
    over_time.legend(title="status")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _modality(text: str) -> tuple[str, Path]:
    name, sep, file = text.partition("=")
    if not sep or not name or not file:
        raise argparse.ArgumentTypeError(f'--modality looks like "flair=FILE", not "{text}"')
    path = Path(file)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f'file "{file}" for modality "{name}" does not exist')
    return name, path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.loadtest", description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="service base URL (http://127.0.0.1:8000) or its /segment URL")
    parser.add_argument("--modality", type=_modality, action="append", required=True, help="NAME=FILE, repeatable")
    parser.add_argument("--concurrency", type=int, default=1)
    bound = parser.add_mutually_exclusive_group()
    bound.add_argument("--duration", type=float, default=None, help=f"seconds (at most {MAX_DURATION_S:.0f})")
    bound.add_argument("--requests", type=int, default=None, help=f"requests in all (at most {MAX_REQUESTS})")
    parser.add_argument("--format", default="json", help="format= of the requests (json carries stage timings)")
    parser.add_argument("--timeout", type=float, default=300.0, help="per-request timeout (s)")
    parser.add_argument("--honour-retry-after", action="store_true", help="a client that got 503 waits Retry-After")
    parser.add_argument("--allow-remote", action="store_true", help="allow a non-loopback URL (your own host)")
    parser.add_argument("--out", type=Path, default=Path("loadtest.json"))
    parser.add_argument("--png", type=Path, default=None, help="default: --out with .png")
    args = parser.parse_args(argv)
    if not is_loopback(args.url) and not args.allow_remote:
        parser.error(f"{args.url} is not a loopback address; pass --allow-remote to test a host you run")
    if args.concurrency < 1:
        parser.error(f"--concurrency must be at least 1, not {args.concurrency}")
    requests = args.requests if args.requests is not None else (MAX_REQUESTS if args.duration else 20)
    duration = args.duration if args.duration is not None else MAX_DURATION_S
    url = segment_url(args.url, args.format)
    files = {name: (path.name, path.read_bytes()) for name, path in args.modality}
    samples, wall = asyncio.run(
        run_load(
            url,
            files,
            concurrency=args.concurrency,
            requests=requests,
            duration_s=duration,
            timeout_s=args.timeout,
            honour_retry_after=args.honour_retry_after,
        )
    )
    summary = aggregate(samples, wall)
    report = {
        "url": url,
        "concurrency": args.concurrency,
        "bound": {"requests": requests, "duration_s": duration},
        **summary,
        "samples": [asdict(s) for s in samples],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    png = plot(samples, args.png or args.out.with_suffix(".png"), f"{url}  concurrency {args.concurrency}")
    lat = summary["latency"]
    print(
        f"{summary['requests']} requests, {summary['ok']} ok, {summary['backpressure_503']} x 503 (backpressure), "
        f"{summary['error_count']} errors {summary['errors'] or ''} in {summary['wall_s']} s -> "
        f"{summary['throughput_rps']} studies/s"
    )
    if lat:
        print(
            f"latency p50 {lat['p50_s']} s  p95 {lat['p95_s']} s  p99 {lat['p99_s']} s  max {lat['max_s']} s;"
            f" server stages (ms, median) {summary['server_timings_ms_median']}"
        )
    print(f"wrote {args.out}" + (f" and {png}" if png else " (no PNG: matplotlib not installed)"))
    return 0 if summary["ok"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
