"""FastAPI service, by role: ``api/`` (HTTP) -> ``service`` -> ``inputs/`` (uploads to images) / ``segcore``
pipeline / ``runners/`` (backends) / ``outputs/`` (answers); ``registry`` (model versions), ``cli/`` (commands).
Never imports ``training``."""

__version__ = "0.1.0"
