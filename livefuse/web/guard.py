"""Request limits of ``livefuse serve``, as one aiohttp middleware and two body checks.

What a hostile or broken client could otherwise do, and the answer:

- an over-long path (5,000 characters under ``/static/``) → 414, and a path segment longer
  than a file name can be → 404, before any handler or file lookup sees it;
- a body sent slowly or never finished → 408 after ``body_timeout_s`` and the connection
  closed, so half-open requests cannot pin file descriptors; at most
  ``max_body_readers`` bodies are read at once (more → 503, closed at once);
- JSON nested deeper than ``max_json_depth`` → 400 before the parser recurses;
- an upload whose bytes are another type than its Content-Type says → 415.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from livefuse.web.errors import ApiError

#: Longest path segment: the usual file-name limit, and far beyond any id the server makes.
_MAX_NAME = 255

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Content-Type → the type the upload sniffer names.
_DECLARED = {"image/jpeg": "jpeg", "image/jpg": "jpeg", "image/pjpeg": "jpeg", "image/png": "png", "image/webp": "webp"}


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """How much a single request may ask of the server."""

    max_path: int = 2048
    "Longest request target (path and query), in characters."
    body_timeout_s: float = 10.0
    "Longest time a request body may take to arrive."
    max_body_readers: int = 64
    "Request bodies read at once; more are answered 503 and closed."
    max_json_depth: int = 32
    "Deepest nesting of arrays and objects in a JSON body."


def guard_middleware(limits: RequestLimits) -> Any:
    """The middleware: path length, then the whole body read under a deadline.

    The body is read here (aiohttp keeps it, so the handler's ``read()`` returns it), which
    puts one deadline on every handler's body instead of one per handler. Multipart bodies
    are the exception: their handler streams them to disk under its own size limits.
    """
    readers = 0

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        nonlocal readers
        if len(request.raw_path) > limits.max_path:
            raise ApiError(414, f"the request path is longer than {limits.max_path} characters")
        if any(len(part) > _MAX_NAME for part in request.path.split("/")):
            # No file, session or viewer has such a name (the file system would refuse it).
            raise ApiError(404, f"nothing here has a name longer than {_MAX_NAME} characters")
        # Multipart uploads (job videos up to gigabytes) are streamed to disk by their handler,
        # never read into memory here.
        if request.body_exists and not request.content_type.startswith("multipart/"):
            if readers >= limits.max_body_readers:
                return await _answer_and_close(
                    request, 503, "the server is busy reading other requests; try again in a moment"
                )
            readers += 1
            try:
                await asyncio.wait_for(request.read(), limits.body_timeout_s)
            except asyncio.TimeoutError:
                message = f"the request body did not arrive within {limits.body_timeout_s:.0f} s"
                return await _answer_and_close(request, 408, message)
            finally:
                readers -= 1
        return await handler(request)

    return guard


async def _answer_and_close(request: web.Request, status: int, message: str) -> web.Response:
    """Send the answer, then drop the connection at once.

    The body is half-sent, so the connection cannot carry another request; and aiohttp
    would otherwise linger up to 10 s reading the rest, which is what holds descriptors.
    """
    response = web.json_response({"error": message}, status=status, headers={"Retry-After": "1"})
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    if request.protocol is not None:
        request.protocol.force_close()
    return response


def check_json_depth(data: bytes, limit: int) -> None:
    """Raise ``ApiError`` 400 when ``data`` nests arrays/objects deeper than ``limit``.

    A linear scan that skips strings, so the depth is known before ``json.loads`` recurses.
    """
    if data.count(b"[") + data.count(b"{") <= limit:
        return  # cannot nest deeper than the brackets it has: skip the scan
    depth, in_string, escaped = 0, False, False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # closing quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > limit:
                raise ApiError(400, f"the JSON body is nested deeper than {limit} levels")
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1


def check_declared_type(declared: str, sniffed: str | None) -> None:
    """Raise ``ApiError`` 415 when an upload's bytes are not the type its Content-Type names."""
    if sniffed is not None and _DECLARED.get(declared.lower()) != sniffed:
        raise ApiError(
            415,
            f"the upload is declared as {declared} but its content is {sniffed.upper()}; "
            f"send it with Content-Type: image/{sniffed}",
        )
