"""``python -m app.tune``: the documented short name of :mod:`app.cli.tune` (the thread-settings tuner)."""

from app.cli.tune import main

if __name__ == "__main__":
    raise SystemExit(main())
