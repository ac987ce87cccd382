"""``python -m app.loadtest``: the documented short name of :mod:`app.cli.loadtest` (the load tester)."""

from app.cli.loadtest import main

if __name__ == "__main__":
    raise SystemExit(main())
