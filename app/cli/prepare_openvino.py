"""``python -m app.cli.prepare_openvino [MODELS_DIR]``: convert every model version under ``MODELS_DIR``
(default ``SEG_MODELS_DIR``) to OpenVINO IR in ``SEG_CACHE_DIR`` ahead of the first start
(:func:`app.runners.openvino.prepare`). The image runs it on its bundled models at build time, so
``SEG_BACKEND=auto`` (and ``openvino``) never converts them at start-up.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from app.config import Settings
    from app.runners.openvino import prepare

    settings = Settings()
    parser = argparse.ArgumentParser(description="Convert every model version to OpenVINO IR in SEG_CACHE_DIR.")
    parser.add_argument("models_dir", nargs="?", type=Path, default=settings.models_dir)
    args = parser.parse_args(argv)
    for version, outcome in prepare(args.models_dir, settings.cache_dir):
        print(f"{version}: {'already cached' if outcome == 'hit' else 'converted'} in {settings.cache_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
