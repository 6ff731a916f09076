"""Bounds on what clients can send: body size (streamed, before any parsing), content type,
per-key request rate, and zip archives (file count and uncompressed size)."""

from __future__ import annotations

import io
import json
import threading
import time
import zipfile
import zlib
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, BinaryIO

from starlette.exceptions import HTTPException

from ..errors import InputTooLargeError, InvalidInputError

__all__ = ["BodyLimitMiddleware", "RateLimiter", "read_zip", "BodyTooLarge"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` while a body streams in; an HTTPException, so that FastAPI's body
    parsing passes it on (it wraps other errors in a 400) and it is answered 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, detail=f"the request body is over the {limit}-byte limit for this endpoint")
        self.limit = limit


#: Early error responses read at most this much of the body first (see :func:`_drain`).
_DRAIN_CAP = 1 << 20


async def _send_json(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


async def _drain(receive: Receive, cap: int) -> None:
    """Read and drop up to ``cap`` bytes of the request body before an early error response.

    Closing a connection while request bytes sit unread in the socket makes the kernel send a
    reset instead of a clean close, and the client may lose the response it was sent (seen
    with a 415 to a small non-multipart POST). Bodies over ``cap`` are not read: they are
    answered 413 from their declared length and the connection is closed.
    """
    seen = 0
    while seen <= cap:
        msg = await receive()
        if msg["type"] != "http.request":
            return
        seen += len(msg.get("body", b""))
        if not msg.get("more_body", False):
            return


class BodyLimitMiddleware:
    """Reject over-large bodies without reading them, and uploads that are not multipart.

    ``limits`` maps a path prefix to a byte limit (the longest matching prefix wins). A declared
    ``Content-Length`` over the limit is answered 413 at once; a body streamed without one is
    counted as it arrives and cut off with 413 as soon as it passes the limit. POSTs to
    ``upload_paths`` must be ``multipart/form-data`` (else 415).
    """

    def __init__(self, app: ASGIApp, *, limits: dict[str, int], default: int, upload_paths: tuple[str, ...]) -> None:
        self.app = app
        self.limits = sorted(limits.items(), key=lambda kv: -len(kv[0]))
        self.default = default
        self.upload_paths = upload_paths

    def limit_for(self, path: str) -> int:
        for prefix, lim in self.limits:
            if path.startswith(prefix):
                return lim
        return self.default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        limit = self.limit_for(path)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if scope.get("method") == "POST" and path.rstrip("/") in self.upload_paths:
            ctype = headers.get("content-type", "")
            if not ctype.lower().startswith("multipart/form-data"):
                await _drain(receive, min(limit, _DRAIN_CAP))
                await _send_json(send, 415, f"send the file as multipart/form-data (a 'file' field); got content type "
                                            f"{ctype or 'none'!r}")
                return
        declared = headers.get("content-length")
        if declared is not None:
            try:
                n = int(declared)
            except ValueError:
                await _drain(receive, min(limit, _DRAIN_CAP))
                await _send_json(send, 400, "the Content-Length header is not a number")
                return
            if n > limit:
                await _send_json(send, 413, f"the request body is {n} bytes; the limit for {path} is {limit} bytes")
                return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return msg

        async def tracking_send(msg: Message) -> None:
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge as exc:
            if not started:
                await _send_json(send, 413, str(exc.detail))


class RateLimiter:
    """A token bucket per key: ``per_minute`` requests a minute, bursts up to ``burst``.

    State is per process; with several workers each enforces the limit on its own share.
    """

    def __init__(self, *, per_minute: float, burst: int) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """0 if the request may go ahead, else the seconds to wait."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic()
        with self._lock:
            tokens, t = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - t) * self.rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate


@dataclass(frozen=True)
class ZipMember:
    name: str
    data: bytes


def read_zip(fileobj: BinaryIO, *, max_files: int, max_total_bytes: int, max_file_bytes: int) -> list[ZipMember]:
    """The files in a zip archive, with bounds checked on the bytes actually inflated (not the
    sizes the archive claims). Folders, hidden files and ``__MACOSX`` entries are skipped.

    Raises :class:`InvalidInputError` for a corrupt archive or too many files and
    :class:`InputTooLargeError` past the byte limits (zip bombs).
    """
    try:
        zf = zipfile.ZipFile(fileobj)
        infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise InvalidInputError(f"the zip archive is corrupt: {exc}") from exc
    members = [i for i in infos if not i.is_dir() and not i.filename.split("/")[-1].startswith(".")
               and not i.filename.startswith("__MACOSX/")]
    if len(members) > max_files:
        raise InvalidInputError(f"the zip holds {len(members)} files; the limit is {max_files}")
    if not members:
        raise InvalidInputError("the zip archive holds no files")
    out: list[ZipMember] = []
    total = 0
    for info in members:
        if info.flag_bits & 0x1:
            raise InvalidInputError(f"{info.filename}: encrypted zip members are not supported")
        buf = io.BytesIO()
        try:
            with zf.open(info) as fh:
                while chunk := fh.read(1 << 16):
                    buf.write(chunk)
                    total += len(chunk)
                    if buf.tell() > max_file_bytes:
                        raise InputTooLargeError(f"{info.filename} inflates past the {max_file_bytes}-byte file limit")
                    if total > max_total_bytes:
                        raise InputTooLargeError(f"the zip inflates past the {max_total_bytes}-byte limit")
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError, NotImplementedError, RuntimeError) as exc:
            raise InvalidInputError(f"{info.filename}: corrupt zip member: {exc}") from exc
        out.append(ZipMember(info.filename[-200:], buf.getvalue()))
    return out
