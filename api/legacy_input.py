"""Reading legacy device requests: JSON or urlencoded bodies, and bounded multipart uploads.

Every problem becomes an ``HTTPException`` with a JSON body that names the
reason (and, for a bad field, FastAPI's validation shape with the legacy field
name), so a hostile or broken request never turns into a 500 or a hang.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import parse_qsl

from fastapi import HTTPException, Request
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Message

from bridge.validate import nesting_error

# Legacy bodies are a handful of fields; anything bigger is not a device talking.
MAX_BODY_BYTES = 64 * 1024
MAX_FORM_FIELDS = 100
# Room for the multipart framing and the text fields around the files.
MULTIPART_OVERHEAD = 256 * 1024


class _TooLarge(Exception):
    """The request body went past its bound while being read."""


def field_error(name: str, msg: str, *, status: int = 422) -> HTTPException:
    """An error in FastAPI's validation shape naming the body field ``name``."""
    detail = [{"loc": ["body", name], "msg": msg, "type": "value_error"}]
    return HTTPException(status, detail=detail)


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _too_large(limit: int) -> NoReturn:
    raise HTTPException(413, detail=f"request body larger than {limit} bytes")


def _check_length(request: Request, limit: int) -> None:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        _too_large(limit)


def _bounded(request: Request, limit: int) -> Request:
    """``request`` whose body reads raise ``_TooLarge`` past ``limit`` bytes (chunked too)."""
    received = 0
    upstream = request.receive

    async def receive() -> Message:
        nonlocal received
        message = await upstream()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise _TooLarge
        return message

    return Request(request.scope, receive)


async def read_body(request: Request) -> dict[str, Any]:
    """The legacy body as the client sent it: a JSON object, or a form as a dict of strings."""
    media = _media_type(request)
    is_json = media == "application/json" or media.endswith("+json")
    if not is_json and media != "application/x-www-form-urlencoded":
        raise HTTPException(
            415, detail="send application/json or application/x-www-form-urlencoded"
        )
    _check_length(request, MAX_BODY_BYTES)
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            _too_large(MAX_BODY_BYTES)
    if not raw.strip():
        raise HTTPException(400, detail="empty request body")
    return _parse_json(bytes(raw)) if is_json else _parse_form(bytes(raw))


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


def _parse_json(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise HTTPException(400, detail=f"invalid JSON body: {exc}") from exc
    except RecursionError as exc:
        raise HTTPException(400, detail="invalid JSON body: nested too deeply") from exc
    if not isinstance(body, dict):
        raise HTTPException(400, detail="the JSON body must be an object")
    # The body travels one level down in the MQTT message (its "legacy" field),
    # which must stay within the bridge's nesting bound (and far from Python's
    # recursion limit when it is re-serialised).
    reason = nesting_error(body, depth=2)
    if reason is not None:
        raise HTTPException(400, detail=f"invalid JSON body: {reason.removeprefix('payload: ')}")
    return body


def _parse_form(raw: bytes) -> dict[str, Any]:
    try:
        pairs = parse_qsl(
            raw.decode("utf-8"),
            keep_blank_values=True,
            errors="strict",
            max_num_fields=MAX_FORM_FIELDS,
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise HTTPException(400, detail=f"invalid urlencoded body: {exc}") from exc
    if not pairs:
        raise HTTPException(400, detail="the form has no fields")
    # A dict keeps the order fields were sent; a repeated name keeps its last value.
    return dict(pairs)


@dataclass(frozen=True, slots=True)
class Upload:
    """One uploaded file, read whole (it is bounded)."""

    filename: str | None
    data: bytes


async def read_uploads(
    request: Request,
    *,
    max_files: int,
    max_file_bytes: int,
    before_reading: Callable[[], None] | None = None,
) -> tuple[dict[str, str], list[Upload]]:
    """The text fields and the ``files`` of a multipart upload, every size bounded.

    The whole body is bounded while it is parsed (so a hostile upload fills
    neither memory nor the temporary directory), then each file on its own.
    ``before_reading`` runs once the body has arrived (its files spooled to
    disk), before the files are read into memory; it may refuse by raising.
    """
    # A urlencoded form cannot carry files, but it is read so the error can name 'files'.
    if _media_type(request) not in ("multipart/form-data", "application/x-www-form-urlencoded"):
        raise HTTPException(415, detail="send multipart/form-data with files in field 'files'")
    limit = max_files * max_file_bytes + MULTIPART_OVERHEAD
    _check_length(request, limit)
    try:
        async with _bounded(request, limit).form(
            max_files=max_files, max_fields=MAX_FORM_FIELDS, max_part_size=MAX_BODY_BYTES
        ) as form:
            if before_reading is not None:
                before_reading()
            fields: dict[str, str] = {}
            uploads: list[Upload] = []
            for name, value in form.multi_items():
                if isinstance(value, str):
                    fields[name] = value
                    continue
                if name != "files":
                    raise field_error(name, "files must be sent in the field 'files'")
                uploads.append(await _read_file(value, len(uploads), max_file_bytes))
    except _TooLarge:
        _too_large(limit)
    except StarletteHTTPException as exc:
        if isinstance(exc.detail, str) and exc.detail.startswith("Too many files"):
            raise field_error(
                "files", f"at most {max_files} files per upload", status=413
            ) from exc
        raise
    return fields, uploads


async def _read_file(upload: UploadFile, index: int, limit: int) -> Upload:
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise field_error(f"files[{index}]", f"file larger than {limit} bytes", status=413)
    return Upload(upload.filename, data)
