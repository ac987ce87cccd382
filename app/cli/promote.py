"""``python -m app.cli.promote NAME VERSION [--url URL]``: an operator promotes a version the quality gate
refused (or one not yet judged), so the service serves it.

It asks the running service (``POST /models/{name}/versions/{version}/promote``), which records the
decision next to the model (``<models_dir>/<name>/.promotions.json``, kept across restarts) and serves
the version at once if it is the newest promoted one. Prints the model's versions afterwards; exit status
0 when the service accepted, 1 otherwise (with the service's error).

    python -m app.cli.promote brats-wt-flair 3                      # the service on 127.0.0.1:8000
    python -m app.cli.promote brats-wt-flair 3 --url http://10.0.0.5:8000
"""

from __future__ import annotations

import argparse
import sys

import httpx


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", help="model name (a directory under the models directory)")
    parser.add_argument("version", type=int, help="version number to promote")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the service's base URL")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds (loading a version can take long)")
    args = parser.parse_args(argv)
    url = f"{args.url.rstrip('/')}/models/{args.name}/versions/{args.version}/promote"
    try:
        response = httpx.post(url, timeout=args.timeout)
    except httpx.HTTPError as exc:
        print(f"promote: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1
    if response.status_code != 200:
        try:
            body = response.json()
            message = f"{body.get('error')}: {body.get('detail')}"
        except ValueError:
            message = response.text[:500]
        print(f"promote: {response.status_code} {message}", file=sys.stderr)
        return 1
    described = response.json()
    print(f"{described['name']}: served_version {described['served_version']}")
    for entry in described["versions"]:
        reason = entry.get("reason") or entry.get("error") or ""
        print(f"  version {entry['version']}: {entry['state']}{'  (' + reason + ')' if reason else ''}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
