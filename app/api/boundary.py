"""The one exception boundary every HTTP request passes through.

Outermost application middleware (pure ASGI, so it sees what FastAPI's handlers did not handle):

- every request gets an id, answered in ``X-Request-Id`` and put on the log line of anything that goes
  wrong, so an operator can match a user's report to the log;
- a client that goes away is one INFO line (``client_disconnected``), not a traceback;
- anything else unexpected becomes ``500 {"error": "internal_error", "detail", "request_id"}`` and one
  ERROR line with the exception's types and frames only (:func:`app.logs.describe_exception`), never
  its message, which may quote a DICOM value.

Starlette's own ``exception_handler(Exception)`` cannot do this: its ``ServerErrorMiddleware`` re-raises
after answering, and the server then logs the full traceback.
"""

from __future__ import annotations

import logging
import uuid

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import telemetry
from app.logs import describe_exception

log = logging.getLogger("app.boundary")


class ClientGone(ClientDisconnect):
    """The client disconnected after its upload, while its study was ``phase`` (queued: cancelled;
    checking or running: finished and dropped)."""

    def __init__(self, phase: str) -> None:
        super().__init__(phase)
        self.phase = phase


def request_id(scope: Scope) -> str:
    """The id :class:`RequestBoundary` gave this request ("-" outside of it)."""
    return scope.get("state", {}).get("request_id", "-")


class RequestBoundary:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = rid
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except ClientDisconnect as exc:
            phase = exc.phase if isinstance(exc, ClientGone) else "upload"
            log.info("client_disconnected request_id=%s path=%s phase=%s", rid, scope.get("path"), phase)
        except Exception as exc:  # the boundary: whatever escaped every handler
            log.error("internal_error request_id=%s path=%s %s", rid, scope.get("path"), describe_exception(exc))
            telemetry.REQUESTS.labels("unhandled", "500").inc()
            if not started:
                await _json_500(send_with_id, rid)


async def _json_500(send: Send, rid: str) -> None:
    import json

    body = json.dumps(
        {
            "error": "internal_error",
            "detail": f"an internal error occurred; it was logged under request id {rid}",
            "request_id": rid,
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 500,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})
