"""``python -m app``: serve with settings from ``SEG_*`` environment variables.

uvicorn runs on its h11 protocol with the connection limits of :mod:`app.api.http_limits` (header size,
header timeout) and leaves logging to :func:`app.logs.configure_logging`.
"""

from __future__ import annotations

import uvicorn

from app.api.http_limits import uvicorn_options
from app.config import Settings
from app.main import create_app


def main() -> None:
    settings = Settings()
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        **uvicorn_options(settings.header_timeout_seconds, settings.max_header_kb),
    )


if __name__ == "__main__":
    main()
