"""``python -m app.cli.listen``: the service with its DICOM listener on (the same as ``python -m app`` with
``SEG_LISTENER_ENABLED=true``). Options override the ``SEG_LISTENER_*`` settings; everything else comes
from the environment as usual.

    python -m app.cli.listen --port 11112 --ae-title BRATS --calling-aets ORTHANC \\
        --destination ORTHANC@127.0.0.1:4242 --quiet-seconds 10

Studies sent by an allowed calling AE are segmented once they have been quiet for ``--quiet-seconds``
(see ``GET /jobs?kind=listener``), and the DICOM SEG goes to ``--destination`` by C-STORE (or, without a
destination, by STOW-RS to ``SEG_PACS_URL``).
"""

from __future__ import annotations

import argparse

import uvicorn

from app.config import Settings
from app.main import create_app


def parse(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(prog="python -m app.cli.listen", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, help="DICOM port to listen on (SEG_LISTENER_PORT)")
    parser.add_argument("--host", help="address to bind (SEG_LISTENER_HOST)")
    parser.add_argument("--ae-title", help="our AE title (SEG_LISTENER_AE_TITLE)")
    parser.add_argument("--calling-aets", help="comma-separated AE titles allowed to send (SEG_LISTENER_CALLING_AETS)")
    parser.add_argument("--destination", help="AET@host:port the SEG is sent to (SEG_LISTENER_DESTINATION)")
    parser.add_argument("--quiet-seconds", type=float, help="segment a study after this quiet time")
    parser.add_argument("--model", help="model the listener's studies are segmented with (SEG_LISTENER_MODEL)")
    args = parser.parse_args(argv)
    overrides = {
        "listener_port": args.port,
        "listener_host": args.host,
        "listener_ae_title": args.ae_title,
        "listener_calling_aets": args.calling_aets,
        "listener_destination": args.destination,
        "listener_quiet_seconds": args.quiet_seconds,
        "listener_model": args.model,
    }
    return {k: v for k, v in overrides.items() if v is not None}


def main(argv: list[str] | None = None) -> None:
    settings = Settings(listener_enabled=True, **parse(argv))
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level.lower())


if __name__ == "__main__":
    main()
