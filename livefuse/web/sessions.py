"""The registry of a server's sessions: creates, finds and closes them, enforces the limits,
closes idle ones. Each :class:`~livefuse.web.session.Session` owns its own life."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from livefuse.app import Engine
from livefuse.config import Settings
from livefuse.web.controls import with_choices
from livefuse.web.errors import ApiError, SessionLimit, SessionNotFound
from livefuse.web.options import Choices, SessionLimits, StartOptions
from livefuse.web.peers import check_offer_sdp
from livefuse.web.session import Session, SessionKind, SessionServices
from livefuse.web.uploads import PrivateDir

log = logging.getLogger(__name__)


class SessionManager:
    """The open sessions, by id, within the server's limits."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        choices: Choices,
        uploads: PrivateDir,
        limits: SessionLimits | None = None,
    ) -> None:
        executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="livefuse-web")
        self.services = SessionServices(engine, settings, choices, uploads, limits or SessionLimits(), executor)
        self._sessions: dict[str, Session] = {}

    @property
    def settings(self) -> Settings:
        return self.services.settings

    @property
    def choices(self) -> Choices:
        return self.services.choices

    @property
    def limits(self) -> SessionLimits:
        return self.services.limits

    # -- finding ----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._sessions)

    def find(self, session_id: str) -> Session | None:
        """The open session ``session_id``, or None."""
        session = self._sessions.get(session_id)
        return None if session is None or session.closed else session

    def get(self, session_id: str) -> Session:
        """The open session ``session_id``; ``latest`` is the newest one that has video."""
        if session_id == "latest":
            running = [s for s in self._sessions.values() if s.state == "running"]
            if not running:
                raise ApiError(
                    404, "no session is streaming yet; start the camera on the demo page or OBS's WHIP output"
                )
            return max(running, key=lambda s: s.created)
        session = self.find(session_id)
        if session is None:
            raise SessionNotFound(session_id)
        return session

    def summaries(self) -> list[dict[str, Any]]:
        """A short line per session."""
        return [s.summary() for s in self._sessions.values()]

    # -- opening and closing ----------------------------------------------------------------

    async def open(self, kind: SessionKind, sdp: object, options: StartOptions) -> tuple[Session, str]:
        """Start a session from an SDP offer; returns it and the SDP answer.

        The demo page (``page``) gets the processed stream back on the same connection;
        a WHIP client only sends. Raises ``SessionLimit`` (503) when every slot is taken.
        """
        offer = check_offer_sdp(sdp)
        settings = with_choices(self.settings.swap, **self.choices.check(options.choices))
        face = options.face or next(iter(self.choices.faces), None)
        if face is not None:
            self.services.photo(face)  # 404 for an unknown face before a slot is taken
        session = self._reserve(kind, options.size)
        session.controls.update(settings=settings, swap=options.swap)
        answer = await session.start(offer, send_back=kind == "page", face=face)
        log.info("session %s (%s) opened", session.id, kind)
        return session, answer

    def _reserve(self, kind: SessionKind, size: tuple[int, int] | None) -> Session:
        # Synchronous, before any await: concurrent offers cannot both take the last slot.
        if len(self._sessions) >= self.limits.max_sessions:
            n = self.limits.max_sessions
            raise SessionLimit(
                f"livefuse is already serving {n} session{'s' if n > 1 else ''}, its maximum; close "
                "another tab or OBS output and try again, or restart livefuse serve with a higher "
                "--max-sessions"
            )
        session = Session(kind, self.services, size, on_closed=self._forget)
        self._sessions[session.id] = session
        return session

    def _forget(self, session: Session) -> None:
        self._sessions.pop(session.id, None)

    async def close(self, session_id: str, reason: str) -> bool:
        """Close a session. False when it was not open."""
        session = self.find(session_id)
        return await session.close(reason) if session is not None else False

    async def close_idle(self) -> None:
        """Close sessions with no video for ``idle_timeout_s`` or whose pipeline stopped."""
        now = time.monotonic()
        for session in list(self._sessions.values()):
            reason = session.idle_reason(now)
            if reason is not None:
                await session.close(reason)

    async def watch(self, interval_s: float = 1.0) -> None:
        """Run ``close_idle`` every ``interval_s`` until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            await self.close_idle()

    async def close_all(self) -> None:
        """Close every session and stop the executor (server shutdown)."""
        for session in list(self._sessions.values()):
            await session.close("the server is stopping")
        self.services.executor.shutdown(wait=True)
