"""``python -m training.train --config FILE [--horovod]``: train a 2D or 3D U-Net on converted shards and
publish it.

The command only. The training itself is split along nnU-Net's lines: ``training.data`` (shards and crop
sampling), ``training.distributed`` (Horovod and the per-rank plan), ``training.schedule`` (learning rate),
``training.loop`` (epochs, validation, best epoch), ``training.plots`` (curves) and ``training.export``
(model card and atomic publication). Thread settings are applied before TensorFlow starts.

Data-parallel training (``--horovod``, started by ``horovodrun``) uses the same loop; with one process,
``--horovod`` is a single-node run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from training.config import TrainConfig
from training.loop import train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True, help="training config (TOML)")
    parser.add_argument("--no-export", action="store_true", help="train and plot, but publish nothing")
    parser.add_argument("--version", type=int, default=None, help="version number to publish (default: next)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one config value before validation (repeatable), e.g. --set augmentation.enabled=false",
    )
    # Shorthands for the four overrides used most; they go through --set's validation like any other.
    parser.add_argument("--epochs", type=int, default=None, help="= --set optim.epochs=N")
    parser.add_argument("--steps", type=int, default=None, help="= --set optim.steps_per_epoch=N")
    parser.add_argument("--models-dir", type=Path, default=None, help="= --set models_dir=\"DIR\"")
    parser.add_argument("--run-dir", type=Path, default=None, help="= --set run_dir=\"DIR\"")
    parser.add_argument("--horovod", action="store_true", help="data-parallel under horovodrun (see README)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    shorthands = {"optim.epochs": args.epochs, "optim.steps_per_epoch": args.steps,
                  "models_dir": args.models_dir, "run_dir": args.run_dir}
    overrides = [f"{key}={json.dumps(value if isinstance(value, int) else str(value))}"
                 for key, value in shorthands.items() if value is not None] + args.overrides
    try:
        config = TrainConfig.load(args.config, overrides)
    except ValueError as error:  # pydantic's ValidationError is a ValueError: unknown keys, bad values
        parser.error(str(error))
    summary = train(config, export=not args.no_export, version=args.version, horovod=args.horovod, quiet=args.quiet)
    if summary["rank"] == 0:
        print(json.dumps({k: v for k, v in summary.items() if k != "val_dice_per_case"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
