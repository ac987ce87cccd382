"""``python -m app.predict``: the documented short name of :mod:`app.cli.predict` (folder in, folder out)."""

from app.cli.predict import main

if __name__ == "__main__":
    raise SystemExit(main())
