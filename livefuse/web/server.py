"""``livefuse serve``: the demo page, its API, WHIP ingest and WHEP/OBS viewers (aiohttp).

Routes (every one except the pages and static files needs the token when one is set):

====================================  ==================================================
``GET /``                              the demo page
``GET /view/{session}``                a full-window viewer of one session (OBS Browser
                                       Source); ``latest`` follows the newest session
``GET /api/config``                    faces to choose from, upload limits
``POST /api/offer``                    JSON ``{sdp, type, face?, swap?, keep_mouth?,
                                       width?, height?}`` → ``{sdp, type, session, viewer}``
``GET /api/sessions``                  the open sessions
``GET /api/sessions/{id}``             one session's stats (the overlay polls this)
``POST /api/sessions/{id}/settings``   JSON ``{swap?, keep_mouth?, face?}``, applied live
``POST /api/sessions/{id}/face``       a photo as the raw body (``image/*``)
``DELETE /api/sessions/{id}``          end a session
``POST /whip``                         WHIP ingest (``application/sdp``) → 201 + Location
``DELETE /whip/{id}``                  end a WHIP session
``POST /whep/{session}``               WHEP viewer (``application/sdp``) → 201 + Location
``DELETE /whep/{session}/{viewer}``    end a viewer
``GET /healthz``                       liveness for container health checks (no token)
====================================  ==================================================

Layers above add their own routes and background work through an ``Extension`` (the job
service's ``/api/jobs…`` and the gateway registration do), so this module imports none of them.

Errors are JSON ``{"error": message}`` with a status that fits; a bug answers 500 with no
details (they go to the server log), never a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal
from collections.abc import Callable, Coroutine
from contextlib import suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from aiohttp import web

from livefuse.app import Engine, home_of
from livefuse.audit.records import record, session_record
from livefuse.config import Settings, VideoCodecChoice
from livefuse.errors import ConfigError
from livefuse.models.store import ModelStore
from livefuse.samples import SampleStore
from livefuse.web.encoders import choose_encoder
from livefuse.web.errors import ApiError
from livefuse.web.guard import RequestLimits, check_declared_type, guard_middleware
from livefuse.web.health import add_health_route
from livefuse.web.http import (
    MAX_SMALL_BODY,
    SESSION_KEYS,
    auth_middleware,
    error_middleware,
    is_loopback,
    optional,
    read_json,
    read_sdp,
    security_headers,
    session_settings,
    size_hint,
)
from livefuse.web.options import Choices, SessionLimits, StartOptions
from livefuse.web.peers import check_offer_sdp
from livefuse.web.sessions import SessionManager
from livefuse.web.uploads import MAX_IMAGE_SIDE, MAX_UPLOAD_BYTES, ImageLimits, PrivateDir, sniff

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
#: The sample face a new session starts with when no --source photo is given.
DEFAULT_FACE = "biden.jpg"


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Where ``livefuse serve`` listens and what it accepts."""

    host: str = "127.0.0.1"
    port: int = 8080
    token: str | None = None
    "Required on every API call when set; always set (generated) off loopback."
    max_sessions: int = 4
    max_viewers: int = 4
    idle_timeout_s: float = 30.0
    max_upload_bytes: int = MAX_UPLOAD_BYTES
    max_image_side: int = MAX_IMAGE_SIDE
    ice_servers: tuple[str, ...] = field(default_factory=tuple)
    "STUN/TURN URLs for peers behind NAT; none by default (nothing outside is contacted)."
    video_codec: VideoCodecChoice = "auto"
    "The codec preferred with browsers: auto (H.264, in hardware where an encoder opens), vp8, h264."
    hardware_encoder: bool = True
    "Try hardware H.264 encoders (NVENC, Quick Sync, AMF, VideoToolbox) before software."

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port {self.port} is not a TCP port (0-65535)")
        if self.max_sessions < 1:
            raise ConfigError(f"--max-sessions must be at least 1, got {self.max_sessions}")
        if self.token is not None and len(self.token) < 8:
            raise ConfigError("--token must be at least 8 characters (or leave it out to get a random one)")

    @property
    def loopback(self) -> bool:
        """True when only this machine can connect."""
        return is_loopback(self.host)

    def resolved(self) -> ServerConfig:
        """This config with a random token when it binds beyond loopback without one."""
        if self.token is None and not self.loopback:
            return replace(self, token=secrets.token_urlsafe(24))
        return self

    def limits(self) -> SessionLimits:
        """The session limits this config sets."""
        return SessionLimits(
            max_sessions=self.max_sessions,
            max_viewers=self.max_viewers,
            idle_timeout_s=self.idle_timeout_s,
            ice_servers=self.ice_servers,
            image=ImageLimits(self.max_upload_bytes, self.max_image_side),
            encoders=choose_encoder(self.video_codec, self.hardware_encoder),
        )


def face_choices(settings: Settings) -> dict[str, Path]:
    """The faces sessions can pick: the --source photo first, then the installed samples."""
    choices: dict[str, Path] = {}
    if settings.swap.source:
        photo = Path(settings.swap.source).expanduser()
        choices[photo.name] = photo
    samples = SampleStore(home_of(settings))
    names = sorted(samples.catalog, key=lambda n: (n != DEFAULT_FACE, n))
    for name in names:
        if name.lower().endswith((".jpg", ".jpeg", ".png")) and samples.is_verified(name):
            choices.setdefault(name, samples.path(name))
    return choices


def session_choices(settings: Settings, store: ModelStore) -> Choices:
    """Faces, and the installed swappers, enhancers and masks sessions can choose from."""
    installed: dict[str, list[str]] = {}
    for status in store.list():
        if status.verified:
            installed.setdefault(status.role, []).append(status.name)
    masks = ["mouth"]
    masks += ["occlusion"] if installed.get("occluder") else []
    masks += ["parser"] if installed.get("parser") else []
    return Choices(
        faces=face_choices(settings),
        swappers=("mesh", *installed.get("swapper", [])),
        enhancers=tuple(installed.get("enhancer", [])),
        masks=tuple(masks),
    )


# -- app ---------------------------------------------------------------------------------------

MANAGER = web.AppKey("manager", SessionManager)
UPLOADS = web.AppKey("uploads", PrivateDir)
WATCHER = web.AppKey("watcher", asyncio.Task)


@dataclass(frozen=True, slots=True)
class Extension:
    """What a layer above adds to the server without this module importing it."""

    routes: Callable[[web.Application, Engine, Callable[[], int]], None] | None = None
    "Adds routes (and their start-up/clean-up) to the app, given the engine and the live-session count."
    listening: Callable[[str, Callable[[], tuple[int, int]]], Coroutine[Any, Any, None]] | None = None
    "Runs while the server listens, given its URL and its (free, max) session slots; cancelled at stop."


def create_app(
    config: ServerConfig, settings: Settings, engine: Engine, extension: Extension | None = None
) -> web.Application:
    """The aiohttp application. ``engine`` stays the caller's to close. ``extension`` adds
    the routes of layers above (the job service).

    Raises ``ConfigError`` for a config that binds beyond loopback without a token.
    """
    if not config.loopback and not config.token:
        raise ConfigError(f"serving on {config.host} needs a token: pass --token or use ServerConfig.resolved()")
    uploads = PrivateDir()
    choices = session_choices(settings, engine.store)
    manager = SessionManager(engine, settings, choices, uploads, config.limits())
    app = web.Application(
        client_max_size=config.max_upload_bytes + MAX_SMALL_BODY,
        middlewares=[
            error_middleware(config.max_upload_bytes),
            auth_middleware(config.token),
            guard_middleware(RequestLimits()),
        ],
    )
    app[MANAGER] = manager
    app[UPLOADS] = uploads
    Api(config, manager).add_routes(app)
    add_health_route(app, manager, config.max_sessions)
    if extension is not None and extension.routes is not None:
        extension.routes(app, engine, lambda: len(manager))
    app.on_response_prepare.append(security_headers)
    app.on_startup.append(_start_watcher)
    app.on_cleanup.append(_shutdown)
    return app


async def _start_watcher(app: web.Application) -> None:
    app[WATCHER] = asyncio.get_running_loop().create_task(app[MANAGER].watch())


async def _shutdown(app: web.Application) -> None:
    watcher = app[WATCHER]
    watcher.cancel()
    with suppress(asyncio.CancelledError):
        await watcher
    await app[MANAGER].close_all()
    app[UPLOADS].close()


class Api:
    """The request handlers; everything they use comes through the constructor."""

    def __init__(self, config: ServerConfig, manager: SessionManager) -> None:
        self.config = config
        self.manager = manager
        self.pages = {name: (STATIC / name).read_bytes() for name in ("index.html", "viewer.html")}

    def add_routes(self, app: web.Application) -> None:
        """Register every route on ``app``."""
        app.router.add_get("/", self.index)
        app.router.add_get("/favicon.ico", self.no_icon)
        app.router.add_get("/view/{session}", self.viewer)
        app.router.add_static("/static/", STATIC, append_version=False)
        app.router.add_get("/api/config", self.settings_view)
        app.router.add_post("/api/offer", self.offer)
        app.router.add_get("/api/sessions", self.sessions)
        app.router.add_get("/api/sessions/{session}", self.stats)
        app.router.add_post("/api/sessions/{session}/settings", self.settings)
        app.router.add_post("/api/sessions/{session}/face", self.face)
        app.router.add_delete("/api/sessions/{session}", self.close)
        app.router.add_post("/whip", self.whip)
        app.router.add_delete("/whip/{session}", self.close)
        app.router.add_post("/whep/{session}", self.whep)
        app.router.add_delete("/whep/{session}/{viewer}", self.whep_close)

    async def index(self, request: web.Request) -> web.Response:
        """The demo page."""
        return web.Response(body=self.pages["index.html"], content_type="text/html")

    async def no_icon(self, request: web.Request) -> web.Response:
        """No favicon (browsers ask for one; a 404 would clutter their console)."""
        return web.Response(status=204)

    async def viewer(self, request: web.Request) -> web.Response:
        """The OBS viewer page (it reads the session from its own URL)."""
        return web.Response(body=self.pages["viewer.html"], content_type="text/html")

    async def settings_view(self, request: web.Request) -> web.Response:
        """What the page needs to draw its controls."""
        limits = self.manager.limits.image
        s = self.manager.settings.swap
        defaults = {"swapper": s.swapper, "enhancer": s.enhancer, "masks": sorted(s.masks), "keep_mouth": s.keep_mouth}
        return web.json_response(
            {
                **self.manager.choices.public(),
                "defaults": defaults,
                "upload": {"max_bytes": limits.max_bytes, "max_side": limits.max_side, "text": limits.describe()},
                "max_sessions": self.config.max_sessions,
            }
        )

    async def offer(self, request: web.Request) -> web.Response:
        """Start a demo-page session from the browser's offer."""
        body = await read_json(request)
        if body.get("type", "offer") != "offer":
            raise ApiError(400, f"expected an SDP offer, got type {body.get('type')!r}")
        options = StartOptions(
            face=optional(body, "face", str),
            swap=optional(body, "swap", bool, True),
            choices=session_settings(body),
            size=size_hint(body),
        )
        session, answer = await self.manager.open("page", body.get("sdp"), options)
        await self._audit(request, session.id, "page", options.face)
        return web.json_response(
            {"sdp": answer, "type": "answer", "session": session.id, "viewer": f"/view/{session.id}", **session.stats()}
        )

    async def _audit(self, request: web.Request, session_id: str, kind: str, face: str | None) -> None:
        """Append the new session to the audit log, in the sessions' own bounded executor (SQLite
        waits on other writers; the loop's default pool would grow a thread per busy moment)."""
        faces = self.manager.choices.faces
        photo = faces.get(face) if face else next(iter(faces.values()), None)
        entry = session_record(
            self.manager.settings,
            client=request.remote,
            token=self.config.token,
            photo=photo,
            session_id=session_id,
            kind=kind,
        )
        await self.manager.services.run(record, self.manager.settings, entry)

    async def sessions(self, request: web.Request) -> web.Response:
        """The open sessions."""
        return web.json_response({"sessions": self.manager.summaries(), "max_sessions": self.config.max_sessions})

    async def stats(self, request: web.Request) -> web.Response:
        """One session's stats."""
        return web.json_response(self.manager.get(request.match_info["session"]).stats())

    async def settings(self, request: web.Request) -> web.Response:
        """Change a session's settings live."""
        body = await read_json(request)
        unknown = sorted(set(body) - {"swap", "face", *SESSION_KEYS})
        if unknown:
            known = ", ".join(["swap", "face", *SESSION_KEYS])
            raise ApiError(400, f"unknown setting(s) {', '.join(unknown)}; the settings are {known}")
        state = await self.manager.get(request.match_info["session"]).update(
            swap=optional(body, "swap", bool),
            face=optional(body, "face", str),
            **session_settings(body),
        )
        return web.json_response(state)

    async def face(self, request: web.Request) -> web.Response:
        """Upload a source face photo (the raw request body)."""
        session_id = request.match_info["session"]
        session = self.manager.get(session_id)  # 404 before reading a large body for nothing
        if not request.content_type.startswith("image/"):
            raise ApiError(
                415,
                "send the photo as the raw request body with an image/* Content-Type "
                f"({self.manager.limits.image.describe()})",
            )
        data = await request.read()
        check_declared_type(request.content_type, sniff(data))
        return web.json_response(await session.upload_face(data))

    async def close(self, request: web.Request) -> web.Response:
        """End a session (the page's Stop, or a WHIP client's DELETE)."""
        session_id = request.match_info["session"]
        if not await self.manager.close(session_id, "the client ended it"):
            raise ApiError(404, f"no session {session_id!r} is open")
        return web.json_response({"closed": session_id})

    async def whip(self, request: web.Request) -> web.Response:
        """WHIP ingest: a client (OBS 30+) sends its stream; the answer is 201 + Location."""
        sdp = await read_sdp(request)
        session, answer = await self.manager.open("whip", sdp, StartOptions())
        await self._audit(request, session.id, "whip", None)
        log.info("WHIP session %s: its processed stream is at /view/%s", session.id, session.id)
        return web.Response(
            status=201,
            text=answer,
            content_type="application/sdp",
            headers={"Location": f"/whip/{session.id}", "X-Livefuse-Viewer": f"/view/{session.id}"},
        )

    async def whep(self, request: web.Request) -> web.Response:
        """WHEP egress: a viewer gets a session's processed stream; 201 + Location."""
        sdp = await read_sdp(request)
        offer = check_offer_sdp(sdp)
        session = self.manager.get(request.match_info["session"])
        viewer, answer = await session.add_viewer(offer)
        return web.Response(
            status=201,
            text=answer,
            content_type="application/sdp",
            headers={"Location": f"/whep/{session.id}/{viewer}"},
        )

    async def whep_close(self, request: web.Request) -> web.Response:
        """End one viewer."""
        session_id, viewer = request.match_info["session"], request.match_info["viewer"]
        session = self.manager.find(session_id)
        if session is None or not await session.close_viewer(viewer):
            raise ApiError(404, f"no viewer {viewer!r} on session {session_id!r}")
        return web.json_response({"closed": viewer})


# -- running -----------------------------------------------------------------------------------


def serve(
    config: ServerConfig,
    settings: Settings,
    announce: Callable[[str], None] = print,
    extension: Extension | None = None,
) -> int:
    """Run the server until Ctrl-C or SIGTERM; returns 0. Prints the URLs (and token) first."""
    config = config.resolved()
    with Engine(settings) as engine:
        asyncio.run(_serve(config, settings, engine, announce, extension))
    return 0


async def _serve(
    config: ServerConfig,
    settings: Settings,
    engine: Engine,
    announce: Callable[[str], None],
    extension: Extension | None,
) -> None:
    app = create_app(config, settings, engine, extension)
    runner = web.AppRunner(app, access_log=None)  # URLs may hold the token
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.host, config.port)
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(
            f"cannot listen on {config.host}:{config.port} ({exc.strerror or exc}); pick another --port "
            "or stop the program that uses it"
        ) from None
    port = runner.addresses[0][1] if runner.addresses else config.port
    announce(banner(config, port))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with suppress(NotImplementedError):  # Windows: Ctrl-C arrives as KeyboardInterrupt
            loop.add_signal_handler(sig, stop.set)
    beat: asyncio.Task[None] | None = None
    if extension is not None and extension.listening is not None:
        room = lambda: (config.max_sessions - len(app[MANAGER]), config.max_sessions)  # noqa: E731
        beat = loop.create_task(extension.listening(f"http://{config.host}:{port}", room))
    try:
        await stop.wait()
    finally:
        announce("livefuse serve: stopping")
        if beat is not None:
            beat.cancel()
            with suppress(asyncio.CancelledError):
                await beat
        await runner.cleanup()


def banner(config: ServerConfig, port: int) -> str:
    """What ``livefuse serve`` prints at start: where to point the browser and OBS."""
    host = config.host if config.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    base = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    query = f"?token={config.token}" if config.token else ""
    lines = [
        f"livefuse serve: open {base}/{query} in a browser for the demo page",
        f"  OBS Browser Source (newest session's processed stream): {base}/view/latest{query}",
        f"  OBS WHIP output: server {base}/whip" + (f", Bearer token {config.token}" if config.token else ""),
    ]
    if config.token:
        lines.append(f"  access token: {config.token}  (API: 'Authorization: Bearer <token>' or ?token=<token>)")
    if not config.loopback:
        lines.append(f"  listening on {config.host}: other machines use this machine's address instead of {host}")
    return "\n".join(lines)
