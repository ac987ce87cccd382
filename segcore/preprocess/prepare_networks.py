"""``python -m segcore.preprocess.prepare_networks [--out DIR]``: convert the skull stripper's networks
to OpenVINO once, at setup time, so that serving never needs torch.

Without ``--out`` they go to the per-machine cache (scripts/bootstrap.sh runs this). With ``--out`` they
are written to ``DIR`` (for the service image: ``deploy/brain-networks/deepbet-openvino``, which the
Dockerfile copies and points ``SEG_BRAIN_NETWORKS_DIR`` at; see deploy/README.md). Idempotent.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import shutil
import sys
from pathlib import Path

from segcore.preprocess.skullstrip import convert_to_openvino, has_networks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write the converted networks into this folder")
    args = parser.parse_args(argv)
    folder = convert_to_openvino()
    if args.out is not None and not has_networks(args.out):
        tmp = args.out.with_name(f".{args.out.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(folder, tmp)
        # Provenance of the baked files: the wheel they were converted from.
        source = {"package": "deepbet", "version": importlib.metadata.version("deepbet"), "converted_by": "openvino"}
        (tmp / "source.json").write_text(json.dumps(source, indent=2) + "\n")
        shutil.rmtree(args.out, ignore_errors=True)
        tmp.rename(args.out)
        folder = args.out
    sys.stdout.write(f"deepbet networks converted to OpenVINO in {args.out or folder}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
