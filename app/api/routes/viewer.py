"""The browser page (``GET /``) and its static files (``/web/...``): HTML, CSS and ES modules from
``app/web/``, plus the NiiVue library that ``scripts/install_niivue.py`` puts in ``app/web/vendor/`` at
setup. Everything is served from this app, so the page works offline (no CDN)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

WEB_DIR = Path(__file__).resolve().parents[2] / "web"
NIIVUE_FILE = WEB_DIR / "vendor" / "niivue" / "niivue.js"

router = APIRouter(tags=["viewer"])


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    """The viewer page. If NiiVue is not installed the page itself says how to install it."""
    return FileResponse(WEB_DIR / "index.html", media_type="text/html", headers={"Cache-Control": "no-cache"})


def mount_static(app: FastAPI) -> None:
    """Serve ``app/web/`` at ``/web``. ES modules need a JavaScript media type, which Starlette derives
    from the ``.js`` suffix."""
    app.mount("/web", StaticFiles(directory=WEB_DIR), name="web")
