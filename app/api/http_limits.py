"""HTTP/1.1 connection limits, enforced in uvicorn's h11 protocol (no reverse proxy needed).

uvicorn's default parser (httptools, when installed) buffers request headers without a bound, and
uvicorn has no timeout for a request whose headers never end. So the server runs on the h11 protocol
with:

- a header size limit: h11's ``max_incomplete_event_size`` (uvicorn's ``h11_max_incomplete_event_size``,
  from ``SEG_MAX_HEADER_KB``): a request head that grows past it is answered 431;
- a header timeout (``SEG_HEADER_TIMEOUT_SECONDS``): a request head not complete that long after its
  first byte is answered 408 and the connection closed (slowloris);
- JSON instead of uvicorn's plain-text 400 for unparseable requests.

The body timeout (``SEG_BODY_TIMEOUT_SECONDS``) is applied where the body is read
(:func:`app.inputs.uploads.receive_files`), since only the application knows it is waiting for one.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("app.http")


def _raw_response(status: int, reason: str, code: str, detail: str) -> bytes:
    body = json.dumps({"error": code, "detail": detail}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    ).encode()
    return head + body


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header timeout and JSON protocol errors. Configure a subclass with
    :func:`guarded_protocol`."""

    header_timeout_seconds: float = 10.0
    max_header_bytes: int = 16 * 1024

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._header_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        super().connection_lost(exc)

    def _awaiting_head(self) -> bool:
        return self.conn.their_state is h11.IDLE and bool(self.conn.trailing_data[0])

    def _watch_head(self) -> None:
        """Arm the timer at the first byte of a request head; disarm it once the head is complete. It is
        never re-armed by more bytes: a head trickled in a byte at a time still ends at the deadline."""
        if self._awaiting_head():
            if self._header_timer is None and not self.transport.is_closing():
                self._header_timer = self.loop.call_later(self.header_timeout_seconds, self._head_timed_out)
        else:
            self._stop_timer()

    def _stop_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _head_timed_out(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or not self._awaiting_head():
            return
        log.info("header_timeout client_port=%s", self.client[1] if self.client else "-")
        detail = f"the request headers did not arrive within {self.header_timeout_seconds:g} s"
        self.transport.write(_raw_response(408, "Request Timeout", "header_timeout", detail))
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """A request h11 cannot parse: 431 if its head outgrew the limit, else 400; JSON either way."""
        self._stop_timer()
        if len(self.conn.trailing_data[0]) > self.max_header_bytes:
            response = _raw_response(
                431,
                "Request Header Fields Too Large",
                "headers_too_large",
                f"the request headers exceed {self.max_header_bytes // 1024} KB (SEG_MAX_HEADER_KB)",
            )
        else:
            response = _raw_response(400, "Bad Request", "bad_http_request", "the HTTP request could not be parsed")
        self.transport.write(response)
        self.transport.close()


def guarded_protocol(header_timeout_seconds: float, max_header_bytes: int) -> type[GuardedH11Protocol]:
    return type(
        "ConfiguredGuardedH11Protocol",
        (GuardedH11Protocol,),
        {"header_timeout_seconds": header_timeout_seconds, "max_header_bytes": max_header_bytes},
    )


def uvicorn_options(header_timeout_seconds: float, max_header_kb: int) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run`` that apply these limits (and leave logging to the app)."""
    max_header_bytes = max_header_kb * 1024
    return {
        "http": guarded_protocol(header_timeout_seconds, max_header_bytes),
        "h11_max_incomplete_event_size": max_header_bytes,
        "log_config": None,  # app.logs configures every logger, uvicorn's included
    }
