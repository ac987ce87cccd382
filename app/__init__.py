"""FastAPI service: HTTP -> service -> imaging / inference / registry (never imports training)."""

__version__ = "0.1.0"
