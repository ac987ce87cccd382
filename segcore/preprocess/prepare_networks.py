"""``python -m segcore.preprocess.prepare_networks``: convert the skull stripper's networks to OpenVINO
once, at setup time (scripts/bootstrap.sh runs it), so that serving never needs torch."""

from __future__ import annotations

import sys

from segcore.preprocess.skullstrip import convert_to_openvino


def main() -> int:
    sys.stdout.write(f"deepbet networks converted to OpenVINO in {convert_to_openvino()}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
