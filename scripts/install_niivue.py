#!/usr/bin/env python3
"""Fetch the NiiVue viewer library (npm ``@niivue/niivue``, BSD-2-Clause) at a pinned version into
``app/web/vendor/niivue/``, which the service serves to the page at ``GET /``.

Why a script and not a committed copy: third-party code comes from its registry at setup, pinned, and is
never committed (the folder is in .gitignore). The tarball is checked against the registry's own
``dist.integrity`` (sha512), pinned here, before anything is extracted, so a changed or tampered package
is refused instead of served. Only two files are kept: the self-contained ES module ``dist/index.js``
(no further imports, so the page works offline) and ``package.json`` (version and licence).

``npm pack`` fetches the tarball where npm exists (it honours the machine's npm registry settings); the
Docker image, which has Python but no Node.js, downloads the same tarball from the registry's URL. Either
way the bytes are verified against the same hash. Idempotent: a stamp naming the version and hash makes a
rerun free.

    python3 scripts/install_niivue.py            # install if missing
    python3 scripts/install_niivue.py --force    # reinstall
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

PACKAGE = "@niivue/niivue"
VERSION = "0.69.0"
# The registry's dist.integrity for this version (`npm view @niivue/niivue@0.69.0 dist.integrity`).
INTEGRITY = "sha512-YMjQvJgD1W2b7DuoxkwlC4VxbrgIePRJ5qyQzXKxi2v2MBVg285P/CIQyg46oDDGDIcaNlbd+MhtO/edMbXJkA=="
DEFAULT_REGISTRY = "https://registry.npmjs.org/"
#: tarball member -> file name under the vendor folder
KEEP = {"package/dist/index.js": "niivue.js", "package/package.json": "package.json"}

REPO = Path(__file__).resolve().parents[1]
DEST = REPO / "app" / "web" / "vendor" / "niivue"


def _integrity(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def _fetch_with_npm(work: Path) -> bytes:
    out = subprocess.run(
        ["npm", "pack", f"{PACKAGE}@{VERSION}", "--pack-destination", str(work), "--json", "--silent"],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    filename = json.loads(out.stdout)[0]["filename"]
    return (work / filename).read_bytes()


def _fetch_with_urllib() -> bytes:
    scope, name = PACKAGE.split("/")
    url = f"{DEFAULT_REGISTRY}{scope}/{name}/-/{name}-{VERSION}.tgz"
    with urllib.request.urlopen(url, timeout=300) as response:  # noqa: S310 (a fixed https URL)
        return response.read()


def install(force: bool = False) -> Path:
    """Install into ``DEST`` unless the stamp says this exact version and hash are there already."""
    stamp = DEST / ".installed"
    wanted = f"{PACKAGE}@{VERSION} {INTEGRITY}\n"
    if (
        not force
        and stamp.is_file()
        and stamp.read_text() == wanted
        and all((DEST / f).is_file() for f in KEEP.values())
    ):
        return DEST
    with tempfile.TemporaryDirectory(prefix="niivue-") as tmp:
        data = _fetch_with_npm(Path(tmp)) if shutil.which("npm") else _fetch_with_urllib()
        got = _integrity(data)
        if got != INTEGRITY:
            raise SystemExit(f"install_niivue: {PACKAGE}@{VERSION} integrity mismatch: expected {INTEGRITY}, got {got}")
        staging = DEST.with_name(".niivue-staging")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for member, target in KEEP.items():
                source = tar.extractfile(member)
                if source is None:
                    raise SystemExit(f"install_niivue: {member} is missing from {PACKAGE}@{VERSION}")
                (staging / target).write_bytes(source.read())
        (staging / ".installed").write_text(wanted)
        # Swap in one rename so a running server never serves half a library.
        shutil.rmtree(DEST, ignore_errors=True)
        staging.rename(DEST)
    print(f"install_niivue: {PACKAGE}@{VERSION} verified, installed into {DEST.relative_to(REPO)}")  # noqa: T201
    return DEST


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="reinstall even if the stamp matches")
    args = parser.parse_args(argv)
    install(force=args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
