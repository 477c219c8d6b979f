"""``livefuse gateway``: the one public address in front of several ``livefuse serve`` workers.

It serves the demo page itself. A new session (``POST /api/offer`` or ``POST /whip``) goes to
the registered worker with the most free slots; every later request for that session
(``/api/sessions/<id>…``, ``/whip/<id>``, ``/whep/<id>…``) goes to the worker that owns it,
looked up by session id in the registry (no load-balancer stickiness). Media does not pass
through here: the SDP answer carries the worker's own ICE candidates, so browsers and OBS send
UDP straight to the worker (each worker must be reachable on its UDP ports).
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, cast

import aiohttp
from aiohttp import web

from livefuse.cluster.registry import Node, Registry
from livefuse.errors import ConfigError
from livefuse.web.errors import ApiError
from livefuse.web.http import MAX_SMALL_BODY, auth_middleware, error_middleware, security_headers
from livefuse.web.server import STATIC
from livefuse.web.uploads import MAX_UPLOAD_BYTES

log = logging.getLogger(__name__)

#: Request headers passed on to a worker, and response headers passed back.
_FORWARD = ("Authorization", "Content-Type", "X-Livefuse-Token", "Accept")
_BACK = ("Content-Type", "Location", "X-Livefuse-Viewer", "WWW-Authenticate", "Link", "ETag")
_TIMEOUT = aiohttp.ClientTimeout(total=30)


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    queue: str = "redis://127.0.0.1:6379/0"


HTTP = web.AppKey("http", aiohttp.ClientSession)


class Gateway:
    """The handlers; ``registry`` calls block, so they run in the executor."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.pages = {name: (STATIC / name).read_bytes() for name in ("index.html", "viewer.html")}

    def app(self, token: str | None) -> web.Application:
        app = web.Application(
            client_max_size=MAX_UPLOAD_BYTES + MAX_SMALL_BODY,
            middlewares=[error_middleware(MAX_UPLOAD_BYTES), auth_middleware(token)],
        )
        r = app.router
        r.add_get("/", self._page("index.html"))
        r.add_get("/view/{session}", self._page("viewer.html"))
        r.add_get("/favicon.ico", _no_icon)
        r.add_static("/static/", STATIC, append_version=False)
        r.add_get("/api/config", self.any_worker)
        r.add_get("/api/sessions", self.sessions)
        r.add_get("/api/nodes", self.nodes)
        r.add_post("/api/offer", self.new_session)
        r.add_post("/whip", self.new_session)
        for path in ("/api/sessions/{session}{tail:.*}", "/whip/{session}", "/whep/{session}{tail:.*}"):
            r.add_route("*", path, self.to_owner)
        app.on_response_prepare.append(security_headers)
        app.on_startup.append(self._open)
        app.on_cleanup.append(self._close)
        return app

    async def _open(self, app: web.Application) -> None:
        app[HTTP] = aiohttp.ClientSession(timeout=_TIMEOUT)

    async def _close(self, app: web.Application) -> None:
        await app[HTTP].close()

    def _page(self, name: str) -> Callable[[web.Request], Any]:
        async def page(request: web.Request) -> web.Response:
            return web.Response(body=self.pages[name], content_type="text/html")

        return page

    async def _registry(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    async def nodes(self, request: web.Request) -> web.Response:
        """The live workers and their free slots."""
        nodes = await self._registry(self.registry.nodes)
        return web.json_response(
            {
                "nodes": [
                    {"id": n.id, "url": n.url, "free": n.free, "max": n.max} for n in sorted(nodes, key=lambda n: n.id)
                ]
            }
        )

    async def any_worker(self, request: web.Request) -> web.StreamResponse:
        node = await self._registry(self.registry.roomiest) or await self._first(request)
        return await self._forward(request, node)

    async def _first(self, request: web.Request) -> Node:
        nodes = await self._registry(self.registry.nodes)
        if not nodes:
            raise ApiError(503, "no livefuse serve worker is registered; start one with --queue pointing here")
        return nodes[0]

    async def sessions(self, request: web.Request) -> web.Response:
        """Every worker's open sessions, together."""
        nodes = await self._registry(self.registry.nodes)
        found: list[dict[str, Any]] = []
        for node in nodes:
            response = await self._forward(request, node)
            if response.status == 200 and response.body is not None:
                found += [{**s, "node": node.id} for s in json.loads(cast(bytes, response.body))["sessions"]]
        return web.json_response({"sessions": found})

    async def new_session(self, request: web.Request) -> web.StreamResponse:
        """A new session goes to the worker with the most room (the next one if that one turns
        out to be full); the registry records the owner."""
        tried: frozenset[str] = frozenset()
        while (node := await self._registry(self.registry.roomiest, tried)) is not None:
            response = await self._forward(request, node)
            if response.status != 503:
                break
            tried |= {node.id}
        else:
            raise ApiError(503, "every livefuse worker is full (or none is registered); try again later")
        session = _session_of(request.path, response)
        if session is not None:
            await self._registry(self.registry.reserve, node)
            await self._registry(self.registry.own, session, node)
            log.info("session %s → worker %s (%s)", session, node.id, node.url)
        return response

    async def to_owner(self, request: web.Request) -> web.StreamResponse:
        session = request.match_info["session"]
        node = await self._registry(self.registry.owner, session)
        if node is None:
            raise ApiError(404, f"no session {session!r}: it ended, or the worker that ran it is gone; start a new one")
        return await self._forward(request, node)

    async def _forward(self, request: web.Request, node: Node) -> web.Response:
        headers = {k: request.headers[k] for k in _FORWARD if k in request.headers}
        body = await request.read() if request.can_read_body else None
        url = node.url.rstrip("/") + request.rel_url.path_qs
        try:
            async with request.app[HTTP].request(request.method, url, headers=headers, data=body) as answer:
                data = await answer.read()
                back = {k: answer.headers[k] for k in _BACK if k in answer.headers}
                back["X-Livefuse-Node"] = node.id
                return web.Response(status=answer.status, body=data, headers=back)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise ApiError(
                502,
                f"worker {node.id} ({node.url}) did not answer ({exc}); it may have stopped — its sessions have ended",
            ) from None


async def _no_icon(request: web.Request) -> web.Response:
    return web.Response(status=204)


def _session_of(path: str, response: web.Response) -> str | None:
    """The new session's id from a worker's answer (JSON ``session``, or the WHIP Location)."""
    if response.status >= 300:
        return None
    if path == "/whip":
        location = response.headers.get("Location", "")
        return location.rsplit("/", 1)[-1] or None
    try:
        return str(json.loads(cast(bytes, response.body))["session"])
    except (KeyError, ValueError, TypeError):
        return None


def run_gateway(config: GatewayConfig, announce: Callable[[str], None] = print) -> int:
    """Serve until Ctrl-C or SIGTERM."""
    from livefuse.jobs.rqueue import connect

    if config.token is None and config.host not in ("127.0.0.1", "localhost", "::1"):
        raise ConfigError(f"a gateway on {config.host} needs --token (the same one the workers use)")
    registry = Registry(connect(config.queue))
    asyncio.run(_run(Gateway(registry).app(config.token), config, announce))
    return 0


async def _run(app: web.Application, config: GatewayConfig, announce: Callable[[str], None]) -> None:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, config.host, config.port).start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(f"cannot listen on {config.host}:{config.port} ({exc.strerror or exc})") from None
    port = runner.addresses[0][1] if runner.addresses else config.port
    announce(f"livefuse gateway: open http://{config.host}:{port}/ (workers from {config.queue})")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
