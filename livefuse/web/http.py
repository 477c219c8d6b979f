"""HTTP plumbing of ``livefuse serve``: reading and checking request bodies, the token and
host checks, error answers and security headers. Every check answers with a message."""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from livefuse.errors import LivefuseError
from livefuse.web.errors import ApiError
from livefuse.web.guard import check_json_depth

log = logging.getLogger(__name__)

#: Largest JSON or SDP request body.
MAX_SMALL_BODY = 256 * 1024
#: Deepest nesting of a JSON body (the API's bodies are flat; this leaves room).
MAX_JSON_DEPTH = 32
_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
_PUBLIC_PREFIXES = ("/static/", "/view/")
_PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "media-src 'self' blob: mediastream:; connect-src 'self'; object-src 'none'; base-uri 'none'"
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.strip("[]") in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# -- request bodies ----------------------------------------------------------------------------


async def read_json(request: web.Request) -> dict[str, Any]:
    """The request's JSON object, or ``ApiError`` 400/413/415 saying what is wrong."""
    if request.content_type != "application/json":
        raise ApiError(415, "send JSON with Content-Type: application/json")
    data = await _read_small(request)
    check_json_depth(data, MAX_JSON_DEPTH)
    try:
        body = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON ({exc})") from None
    if not isinstance(body, dict):
        raise ApiError(400, 'the request body must be a JSON object, e.g. {"swap": false}')
    return body


async def read_sdp(request: web.Request) -> str:
    """The SDP body of a WHIP/WHEP request."""
    if request.content_type != "application/sdp":
        raise ApiError(415, "WHIP and WHEP offers must be sent with Content-Type: application/sdp")
    try:
        return (await _read_small(request)).decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "the SDP offer is not UTF-8 text") from None


async def _read_small(request: web.Request) -> bytes:
    if request.content_length is not None and request.content_length > MAX_SMALL_BODY:
        raise ApiError(413, f"the request body is larger than {MAX_SMALL_BODY // 1024} kB")
    data = await request.read()
    if len(data) > MAX_SMALL_BODY:
        raise ApiError(413, f"the request body is larger than {MAX_SMALL_BODY // 1024} kB")
    return data


def optional(body: dict[str, Any], key: str, kind: type, default: Any = None) -> Any:
    """``body[key]`` if present and of type ``kind``, else ``default``; a wrong type is a 400."""
    if key not in body or body[key] is None:
        return default
    value = body[key]
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise ApiError(400, f"{key!r} must be a {kind.__name__}, got {json.dumps(value)[:40]}")
    return value


#: A session's own settings, as the API names them (``session_settings`` maps them to ``Settings``).
SESSION_KEYS = ("keep_mouth", "swapper", "enhancer", "masks")


def session_settings(body: dict[str, Any]) -> dict[str, Any]:
    """The session settings in a request, as ``Settings`` fields (``masks`` list → ``mask``)."""
    choices: dict[str, Any] = {}
    if (keep_mouth := optional(body, "keep_mouth", bool)) is not None:
        choices["keep_mouth"] = keep_mouth
    if (swapper := optional(body, "swapper", str)) is not None:
        choices["swapper"] = swapper
    if "enhancer" in body:  # null or "" turns the enhancer off
        choices["enhancer"] = optional(body, "enhancer", str) or None
    if (masks := optional(body, "masks", list)) is not None:
        if not all(isinstance(m, str) and m.isalpha() for m in masks):
            raise ApiError(400, "'masks' must be a list of mask names, e.g. [\"mouth\"]")
        choices["mask"] = ",".join(masks)
    return choices


def size_hint(body: dict[str, Any]) -> tuple[int, int] | None:
    """The camera size the page reports, if sane (even, at most 3840x2160)."""
    width, height = optional(body, "width", int), optional(body, "height", int)
    if width is None or height is None:
        return None
    if not (16 <= width <= 3840 and 16 <= height <= 2160) or width % 2 or height % 2:
        raise ApiError(400, f"camera size {width}x{height} is not supported; use even sizes up to 3840x2160")
    return width, height


# -- middleware ----------------------------------------------------------------------------------


def error_middleware(max_upload_bytes: int) -> Any:
    """Turns every error into JSON ``{"error": message}``; a bug into a bare 500."""
    limit_mb = max_upload_bytes // (1024 * 1024)

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            return _error(exc.status, str(exc), exc)
        except LivefuseError as exc:
            return _error(422, str(exc), exc)
        except web.HTTPRequestEntityTooLarge as exc:
            return _error(413, f"the request body is too large; photos may be at most {limit_mb} MB", exc)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return _error(exc.status, exc.reason, exc)
        except Exception:  # noqa: BLE001 - a bug: logged in full here, never shown to the client
            log.exception("error handling %s %s", request.method, request.path)
            return _error(500, "internal error in livefuse; the server log has the details", None)

    return errors


def _error(status: int, message: str, exc: BaseException | None) -> web.Response:
    log.debug("answering %d: %s", status, message)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return web.json_response({"error": message}, status=status, headers=headers)


def auth_middleware(token: str | None) -> Any:
    """Checks the token on API calls; without one, that requests name a loopback host."""

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if token is None:
            # Loopback without a token: refuse requests addressed to another host name,
            # so a web page cannot reach this server through DNS rebinding.
            if not is_loopback(request.url.host or ""):
                raise ApiError(
                    403,
                    "this server has no token, so it only answers requests addressed to 127.0.0.1 "
                    "or localhost; to serve other machines restart it with --host 0.0.0.0 and use "
                    "the token it prints",
                )
        elif not _is_public(request.path) and not _token_ok(request, token):
            raise ApiError(
                401,
                "this server needs its access token: send 'Authorization: Bearer <token>' or add "
                "?token=<token> to the URL (livefuse serve printed it when it started)",
            )
        return await handler(request)

    return auth


def _is_public(path: str) -> bool:
    """Pages and static files carry no data: they load without the token (their API calls need it)."""
    return path in ("/", "/favicon.ico", "/healthz") or path.startswith(_PUBLIC_PREFIXES)


def _token_ok(request: web.Request, token: str) -> bool:
    header = request.headers.get("Authorization", "")
    given = header[7:].strip() if header.lower().startswith("bearer ") else ""
    given = given or request.headers.get("X-Livefuse-Token", "") or request.query.get("token", "")
    return hmac.compare_digest(given.encode(), token.encode())


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """No sniffing, no Referer (URLs may hold the token), a strict CSP on pages, no caching."""
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    # The token can be in the page's URL: never send it on as a Referer.
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    if response.content_type == "text/html":
        response.headers.setdefault("Content-Security-Policy", _PAGE_CSP)
    if not request.path.startswith("/static/"):
        response.headers.setdefault("Cache-Control", "no-store")
