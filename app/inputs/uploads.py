"""Streaming a multipart upload to disk with a size limit.

Starlette's own form parsing buffers the whole body before a handler can object; here the body is parsed
as it arrives (python-multipart's streaming parser), each file part goes straight to a file in the
request's private temporary directory, and the request is refused with 413 the moment it passes the limit.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from python_multipart.multipart import MultipartParser, parse_options_header

from app.errors import ApiError

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
MAX_PARTS = 2048


@dataclass
class UploadedFile:
    field: str
    filename: str  # the client's name, for messages only; never used as a path
    path: Path
    size: int = 0


@dataclass
class _State:
    directory: Path
    files: list[UploadedFile] = field(default_factory=list)
    header_field: bytes = b""
    headers: dict[bytes, bytes] = field(default_factory=dict)
    current: UploadedFile | None = None
    handle: BinaryIO | None = None


def _content_boundary(content_type: str | None) -> bytes:
    if not content_type:
        raise ApiError(415, "unsupported_media_type", "send the study as multipart/form-data")
    kind, params = parse_options_header(content_type)
    if kind != b"multipart/form-data" or b"boundary" not in params:
        raise ApiError(
            415, "unsupported_media_type", f"send the study as multipart/form-data, not {kind.decode(errors='replace')}"
        )
    return params[b"boundary"]


async def receive_files(
    stream: AsyncIterator[bytes], content_type: str | None, content_length: str | None, directory: Path, limit: int
) -> list[UploadedFile]:
    """Parse a multipart body into files under ``directory``; refuse bodies over ``limit`` bytes."""
    boundary = _content_boundary(content_type)
    too_large = ApiError(
        413, "upload_too_large", f"the upload exceeds the limit of {limit / 2**20:.0f} MB (SEG_MAX_UPLOAD_MB)"
    )
    if content_length and content_length.isdigit() and int(content_length) > limit:
        raise too_large
    state = _State(directory)

    def on_part_begin() -> None:
        state.headers = {}

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state.header_field += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        key = state.header_field.lower()
        state.headers[key] = state.headers.get(key, b"") + data[start:end]

    def on_header_end() -> None:
        state.header_field = b""

    def on_headers_finished() -> None:
        _, params = parse_options_header(state.headers.get(b"content-disposition", b""))
        name = params.get(b"name", b"").decode("utf-8", errors="replace")
        filename = params.get(b"filename")
        if filename is None:  # a plain form field: nothing in our API uses one
            raise ApiError(422, "unexpected_field", f'form field "{name}" is not a file; send files only')
        if len(state.files) >= MAX_PARTS:
            raise ApiError(413, "too_many_files", f"more than {MAX_PARTS} files in one request")
        client_name = filename.decode("utf-8", errors="replace")
        safe = _SAFE_NAME.sub("_", Path(client_name.replace("\\", "/")).name)[-80:] or "upload"
        path = directory / f"{len(state.files):05d}-{safe}"
        state.current = UploadedFile(name, client_name, path)
        state.handle = path.open("xb")
        state.files.append(state.current)

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if state.handle is not None and state.current is not None:
            state.handle.write(data[start:end])
            state.current.size += end - start

    def on_part_end() -> None:
        if state.handle is not None:
            state.handle.close()
        state.handle, state.current = None, None

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    received = 0
    try:
        async for chunk in stream:
            received += len(chunk)
            if received > limit:
                raise too_large
            try:
                parser.write(chunk)
            except ApiError:
                raise
            except Exception as exc:  # python-multipart raises its own errors for malformed bodies
                raise ApiError(400, "malformed_multipart", f"the multipart body could not be parsed: {exc}") from None
        parser.finalize()
    finally:
        if state.handle is not None:
            state.handle.close()
    if not state.files:
        raise ApiError(422, "no_files", "the request carries no files; send one file field per modality")
    return state.files
