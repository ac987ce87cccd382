"""Commands that come with the service (``python -m app.cli.<name>``; ``python -m app.tune`` and
``python -m app.loadtest`` are kept as short aliases)."""
