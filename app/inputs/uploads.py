"""Streaming a multipart upload to disk with a size limit.

Starlette's own form parsing buffers the whole body before a handler can object; here the body is parsed
as it arrives (python-multipart's streaming parser), each file part goes straight to a file in the
request's private temporary directory, and the request is refused with 413 the moment it passes the limit.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from python_multipart.multipart import MultipartParser, parse_options_header

from app.errors import ApiError

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
MAX_PARTS = 2048
MAX_BOUNDARY = 70  # RFC 2046; python-multipart fails on much longer ones with an internal error


@dataclass
class UploadedFile:
    field: str
    filename: str  # the client's name, for messages only; never used as a path
    path: Path
    size: int = 0


@dataclass
class _State:
    """The multipart parser's callbacks and what they have seen so far: each file part is written
    straight to a file in ``directory`` as it arrives."""

    directory: Path
    files: list[UploadedFile] = field(default_factory=list)
    header_field: bytes = b""
    headers: dict[bytes, bytes] = field(default_factory=dict)
    current: UploadedFile | None = None
    handle: BinaryIO | None = None

    def on_part_begin(self) -> None:
        self.headers = {}

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        key = self.header_field.lower()
        self.headers[key] = self.headers.get(key, b"") + data[start:end]

    def on_header_end(self) -> None:
        self.header_field = b""

    def on_headers_finished(self) -> None:
        _, params = parse_options_header(self.headers.get(b"content-disposition", b""))
        name = params.get(b"name", b"").decode("utf-8", errors="replace")
        filename = params.get(b"filename")
        if filename is None:  # a plain form field: nothing in our API uses one
            raise ApiError(422, "unexpected_field", f'form field "{name}" is not a file; send files only')
        if len(self.files) >= MAX_PARTS:
            raise ApiError(413, "too_many_files", f"more than {MAX_PARTS} files in one request")
        client_name = filename.decode("utf-8", errors="replace")
        safe = _SAFE_NAME.sub("_", Path(client_name.replace("\\", "/")).name)[-80:] or "upload"
        path = self.directory / f"{len(self.files):05d}-{safe}"
        self.current = UploadedFile(name, client_name, path)
        self.handle = path.open("xb")
        self.files.append(self.current)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.handle is not None and self.current is not None:
            self.handle.write(data[start:end])
            self.current.size += end - start

    def on_part_end(self) -> None:
        if self.handle is not None:
            self.handle.close()
        self.handle, self.current = None, None

    def callbacks(self) -> dict[str, object]:
        events = ("part_begin", "header_field", "header_value", "header_end", "headers_finished", "part_data")
        return {f"on_{e}": getattr(self, f"on_{e}") for e in (*events, "part_end")}


def _content_boundary(content_type: str | None) -> bytes:
    if not content_type:
        raise ApiError(415, "unsupported_media_type", "send the study as multipart/form-data")
    kind, params = parse_options_header(content_type)
    if kind != b"multipart/form-data" or b"boundary" not in params:
        raise ApiError(
            415, "unsupported_media_type", f"send the study as multipart/form-data, not {kind.decode(errors='replace')}"
        )
    boundary = params[b"boundary"]
    if not 1 <= len(boundary) <= MAX_BOUNDARY:
        raise ApiError(
            400, "malformed_multipart", f"the multipart boundary must be 1 to {MAX_BOUNDARY} characters (RFC 2046)"
        )
    return boundary


async def _chunks(stream: AsyncIterator[bytes], idle_timeout: float) -> AsyncIterator[bytes]:
    """The body's chunks; 408 when the client sends nothing for ``idle_timeout`` seconds (a stalled
    upload, or a Content-Length longer than the body actually sent)."""
    iterator = stream.__aiter__()
    while True:
        try:
            async with asyncio.timeout(idle_timeout):
                chunk = await anext(iterator)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise ApiError(
                408,
                "upload_timeout",
                f"the upload stalled: nothing arrived for {idle_timeout:g} s (SEG_BODY_TIMEOUT_SECONDS)",
                headers={"Connection": "close"},
            ) from None
        yield chunk


def _parse(step, *args) -> None:
    try:
        step(*args)
    except ApiError:
        raise
    except Exception as exc:  # python-multipart raises its own errors for malformed bodies
        raise ApiError(400, "malformed_multipart", f"the multipart body could not be parsed: {exc}") from None


async def receive_files(
    stream: AsyncIterator[bytes],
    content_type: str | None,
    content_length: str | None,
    directory: Path,
    limit: int,
    idle_timeout: float = 30.0,
) -> list[UploadedFile]:
    """Parse a multipart body into files under ``directory``; refuse bodies over ``limit`` bytes and
    bodies that stall for ``idle_timeout`` seconds."""
    boundary = _content_boundary(content_type)
    too_large = ApiError(
        413, "upload_too_large", f"the upload exceeds the limit of {limit / 2**20:.0f} MB (SEG_MAX_UPLOAD_MB)"
    )
    if content_length and content_length.isdigit() and int(content_length) > limit:
        raise too_large
    state = _State(directory)
    parser = MultipartParser(boundary, state.callbacks())
    received = 0
    try:
        async for chunk in _chunks(stream, idle_timeout):
            received += len(chunk)
            if received > limit:
                raise too_large
            _parse(parser.write, chunk)
        _parse(parser.finalize)
    finally:
        if state.handle is not None:
            state.handle.close()
    if not state.files:
        raise ApiError(422, "no_files", "the request carries no files; send one file field per modality")
    return state.files
