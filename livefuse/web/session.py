"""Sessions: one incoming stream each, with its own pipeline, live settings and viewers.

A session is made by an offer from the demo page (which also gets the processed stream
back) or by a WHIP client such as OBS (whose processed stream goes to WHEP viewers and,
with ``--vcam``, to the virtual camera). The ``SessionManager`` owns every session and
every object a session holds; closing a session frees all of them: peer connections,
tracks, tasks, the pipeline's threads and frame pool, and the session's face.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, Literal

from aiortc import MediaStreamTrack, RTCPeerConnection
from av import VideoFrame

from livefuse.app import Engine
from livefuse.config import Settings, SwapSettings
from livefuse.errors import LivefuseError, OutputError, StreamEnded
from livefuse.pipeline.pipeline import Pipeline
from livefuse.pipeline.stages import Sink, Swapper
from livefuse.web.controls import (
    LiveAnalyzer,
    LiveSwapper,
    SwapControls,
    SwapState,
    with_choices,
)
from livefuse.web.errors import ApiError, SessionLimit, SessionNotFound
from livefuse.web.media import HubSink, Opened, TrackSource
from livefuse.web.options import Choices, SessionLimits, StartOptions
from livefuse.web.peers import answer_offer, check_offer_sdp, new_peer
from livefuse.web.track import FrameHub, ProcessedTrack, discard_track, pump_track
from livefuse.web.uploads import PrivateDir, check_image

log = logging.getLogger(__name__)

SessionKind = Literal["page", "whip"]

#: Recent frames the latency percentiles in a session's stats cover (~20 s at 30 fps).
STATS_WINDOW = 600


class Session:
    """One incoming stream and everything that serves it. Owned by a ``SessionManager``."""

    def __init__(
        self,
        session_id: str,
        kind: SessionKind,
        swap: SwapSettings,
        size: tuple[int, int] | None,
        max_viewers: int,
    ) -> None:
        self.id = session_id
        self.kind: SessionKind = kind
        self.created = time.monotonic()
        self.controls = SwapControls(SwapState(swap))
        self.source = TrackSource(f"session {session_id}", size)
        self.hub = FrameHub(max_viewers + 1)  # + the demo page's own returned stream
        self.pc: RTCPeerConnection | None = None
        self.viewers: dict[str, tuple[RTCPeerConnection, ProcessedTrack]] = {}
        self.pipeline: Pipeline | None = None
        self.sink: HubSink | None = None
        self.start_task: asyncio.Task[None] | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.update_lock = asyncio.Lock()
        self.closed = False
        self.warning: str | None = None
        "A problem the user should know about (shown on the page), e.g. no virtual camera."

    @property
    def state(self) -> str:
        """``waiting`` (for video), ``running`` or ``closed``."""
        if self.closed:
            return "closed"
        return "running" if self.pipeline is not None else "waiting"

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``coro`` as a task the session cancels when it closes."""
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def stats(self) -> dict[str, Any]:
        """What the stats overlay shows: rates, server latency, drops, detector rate."""
        run = self.pipeline.stats() if self.pipeline is not None else None
        info = self.source.info
        dropped = {
            "receive": self.source.dropped,
            "pipeline": run.dropped if run else 0,
            "send": self.hub.dropped,
        }
        return {
            "session": self.id,
            "kind": self.kind,
            "state": self.state,
            "size": [info.width, info.height] if info else None,
            "fps_in": round(self.source.rate.rate(), 1),
            "fps": round(self.sink.rate.rate(), 1) if self.sink else 0.0,
            "frames_in": self.source.received,
            "frames_out": self.sink.sent if self.sink else 0,
            "latency_ms": {
                "p50": round(run.latency_p50_ms, 1) if run else None,
                "p95": round(run.latency_p95_ms, 1) if run else None,
            },
            "dropped": {**dropped, "total": sum(dropped.values())},
            "detector_rate": round(run.detector_rate, 3) if run else 0.0,
            "errors": run.errors if run else {},
            "viewers": len(self.viewers),
            "warning": self.warning,
            **self.controls.state.public(),
        }


class SessionManager:
    """Creates, finds and closes sessions; enforces the limits; closes idle ones.

    Blocking work (building and stopping pipelines, analysing faces) runs in a small
    executor of its own, never on the event loop.
    """

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        choices: Choices,
        uploads: PrivateDir,
        limits: SessionLimits | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.choices = choices
        self.uploads = uploads
        self.limits = limits or SessionLimits()
        self._sessions: dict[str, Session] = {}
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="livefuse-web")
        self._vcam_owner: str | None = None

    # -- finding ----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, session_id: str) -> Session:
        """The open session ``session_id``; ``latest`` is the newest one that has video."""
        if session_id == "latest":
            running = [s for s in self._sessions.values() if s.state == "running"]
            if not running:
                raise ApiError(
                    404, "no session is streaming yet; start the camera on the demo page or OBS's WHIP output"
                )
            return max(running, key=lambda s: s.created)
        session = self._sessions.get(session_id)
        if session is None or session.closed:
            raise SessionNotFound(session_id)
        return session

    def summaries(self) -> list[dict[str, Any]]:
        """A short line per session."""
        return [
            {"session": s.id, "kind": s.kind, "state": s.state, "viewers": len(s.viewers), **s.controls.state.public()}
            for s in self._sessions.values()
        ]

    # -- opening ----------------------------------------------------------------------------

    async def open(self, kind: SessionKind, sdp: object, options: StartOptions) -> tuple[Session, str]:
        """Start a session from an SDP offer; returns it and the SDP answer.

        The demo page (``page``) gets the processed stream back on the same connection;
        a WHIP client only sends. Raises ``SessionLimit`` (503) when every slot is taken.
        The source face is prepared while the connection comes up: video flows at once,
        and swapping starts as soon as the face is ready (a problem with it becomes the
        session's ``warning``).
        """
        offer = check_offer_sdp(sdp)
        settings = with_choices(self.settings.swap, **self.choices.check(options.choices))
        name = options.face or next(iter(self.choices.faces), None)
        photo = self._photo(name) if name is not None else None
        session = self._reserve(kind, options.size)
        session.controls.update(settings=settings, swap=options.swap)
        try:
            answer = await self._connect(session, offer, send_back=kind == "page")
        except BaseException:
            await self.close(session.id, "it could not be set up")
            raise
        if name is None or photo is None:
            session.warning = "no source face is installed: upload a photo of a face"
        else:
            session.spawn(self._first_face(session, name, photo))
        log.info("session %s (%s) opened", session.id, kind)
        return session, answer

    async def _first_face(self, session: Session, name: str, photo: Path) -> None:
        async with session.update_lock:
            if session.controls.state.photo is not None:
                return  # the user chose another face meanwhile
            try:
                swapper = await self._run(self._build, session.controls.state.settings, photo, name)
            except ApiError as exc:
                session.warning = str(exc)
                return
            session.controls.update(face=name, photo=photo, swapper=swapper)

    def _reserve(self, kind: SessionKind, size: tuple[int, int] | None) -> Session:
        # Synchronous, before any await: concurrent offers cannot both take the last slot.
        if len(self._sessions) >= self.limits.max_sessions:
            n = self.limits.max_sessions
            raise SessionLimit(
                f"livefuse is already serving {n} session{'s' if n > 1 else ''}, its maximum; close "
                "another tab or OBS output and try again, or restart livefuse serve with a higher "
                "--max-sessions"
            )
        session = Session(secrets.token_urlsafe(9), kind, self.settings.swap, size, self.limits.max_viewers)
        self._sessions[session.id] = session
        return session

    async def _connect(self, session: Session, offer: str, send_back: bool) -> str:
        pc = new_peer(self.limits.ice_servers)
        session.pc = pc
        video: list[MediaStreamTrack] = []

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "video" and not video:
                video.append(track)
                session.spawn(pump_track(track, partial(self._on_frame, session)))
            else:
                # Audio (OBS sends it) and extra videos are read and dropped: an unread
                # aiortc track queues every frame forever.
                session.spawn(discard_track(track))

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                await self.close(session.id, f"its connection is {pc.connectionState}")

        answer = await answer_offer(pc, offer, send=session.hub.subscribe() if send_back else None)
        if not video:
            raise ApiError(400, "the offer has no video track livefuse can decode (VP8 or H.264)")
        return answer

    def _on_frame(self, session: Session, frame: VideoFrame, skipped: int) -> None:
        session.source.offer(frame, skipped)
        if session.start_task is None and not session.closed:
            # The frame size is known now: build the pipeline (off the loop).
            session.start_task = asyncio.get_running_loop().create_task(self._start_pipeline(session))

    async def _start_pipeline(self, session: Session) -> None:
        use_vcam = self.settings.output.vcam and self._vcam_owner is None
        if use_vcam:
            self._vcam_owner = session.id
        loop = asyncio.get_running_loop()
        try:
            pipeline, vcam_error = await self._run(self._build_pipeline, session, loop, use_vcam)
        except LivefuseError as exc:
            log.error("session %s: cannot start its pipeline: %s", session.id, exc)
            await self.close(session.id, f"its pipeline could not start: {exc}")
            return
        if vcam_error is not None:
            session.warning = f"no virtual camera: {vcam_error}"
            self._vcam_owner = None
        session.pipeline = pipeline
        if session.closed:  # closed while the pipeline was starting
            await self._run(pipeline.stop)
            return
        info = session.source.info
        assert info is not None
        log.info("session %s: processing %dx%d", session.id, info.width, info.height)

    def _build_pipeline(
        self, session: Session, loop: asyncio.AbstractEventLoop, use_vcam: bool
    ) -> tuple[Pipeline, OutputError | None]:
        """Assemble and start the same pipeline ``livefuse cam`` runs (executor thread).

        Returns it and, when the virtual camera would not open, why (the session then
        runs without it).
        """
        session.sink = HubSink(session.hub, loop)
        sinks: list[Sink] = [session.sink]
        vcam_error = None
        if use_vcam:
            try:
                sinks.append(self._open_vcam(session))
            except OutputError as exc:
                log.error("session %s: no virtual camera: %s", session.id, exc)
                vcam_error = exc
        pipeline = Pipeline(
            session.source,
            LiveAnalyzer(self.engine.tracker(), session.controls),
            LiveSwapper(session.controls),
            sinks,
            queue_size=self.settings.capture.queue_size,
            live=True,
            metrics_window=STATS_WINDOW,
        )
        pipeline.start()
        return pipeline, vcam_error

    def _open_vcam(self, session: Session) -> Sink:
        """The virtual camera, opened here so that a missing one cannot stop the pipeline."""
        from livefuse.io.vcam import VirtualCameraSink

        info = session.source.open()
        output = self.settings.output
        vcam = VirtualCameraSink(device=output.vcam_device, backend=output.vcam_backend)
        vcam.open(info)
        return Opened(vcam)

    # -- live settings ------------------------------------------------------------------------

    async def update(
        self, session_id: str, *, swap: bool | None = None, face: str | None = None, **choices: Any
    ) -> dict[str, Any]:
        """Change a session's settings; they apply from the next frame.

        ``choices`` are session settings (``controls.SESSION_SETTINGS``); changing one or
        the face builds a new swap stage (off the loop) and swaps it in.
        """
        session = self.get(session_id)
        self.choices.check(choices)
        async with session.update_lock:
            state = session.controls.state
            if face is not None or choices:
                settings = with_choices(state.settings, **choices)
                name, photo = (face, self._photo(face)) if face is not None else (state.face, state.photo)
                swapper = await self._run(self._build, settings, photo, name) if photo else None
                session.controls.update(settings=settings, face=name, photo=photo, swapper=swapper)
                if face is not None:
                    self._forget_upload(state.photo)
                    session.warning = None
            if swap is not None:
                session.controls.update(swap=swap)
        return session.controls.state.public()

    async def upload_face(self, session_id: str, data: bytes) -> dict[str, Any]:
        """Make the photo in ``data`` the session's source face (validated first).

        The photo stays in the private upload directory while it is the session's face
        (a changed option rebuilds the swap stage from it) and is deleted after.
        """
        session = self.get(session_id)
        check_image(data, self.limits.image)
        photo = self.uploads.write(session.id, data)
        async with session.update_lock:
            state = session.controls.state
            try:
                swapper = await self._run(self._build, state.settings, photo, "uploaded photo")
            except BaseException:
                photo.unlink(missing_ok=True)
                raise
            session.controls.update(face="uploaded photo", photo=photo, swapper=swapper)
            self._forget_upload(state.photo)
            session.warning = None
        return session.controls.state.public()

    def _photo(self, name: str) -> Path:
        photo = self.choices.faces.get(name)
        if photo is None:
            known = ", ".join(self.choices.faces) or "none (upload a photo)"
            raise ApiError(404, f"there is no face named {name!r}; the faces are: {known}")
        return photo

    def _build(self, settings: SwapSettings, photo: Path, name: str) -> Swapper:
        """The session's swap stage for ``photo`` (executor thread)."""
        try:
            # Blocking (the photo is analysed); the runners stay the engine's, shared.
            return self.engine.swapper(photo, settings)
        except LivefuseError as exc:
            # Messages name the file; users know it by its name here (and an upload's
            # private path is nobody's business).
            message = str(exc).replace(f"photo {photo}", name).replace(str(photo), name)
            raise ApiError(422, f"the face {name!r} cannot be used: {message}") from None

    def _forget_upload(self, photo: Path | None) -> None:
        """Delete ``photo`` if it is an upload (samples and --source stay)."""
        if photo is not None and photo.parent == self.uploads.path:
            photo.unlink(missing_ok=True)

    # -- viewers (WHEP) -----------------------------------------------------------------------

    async def add_viewer(self, session_id: str, sdp: object) -> tuple[Session, str, str]:
        """Send a session's processed stream to a new viewer; returns (session, viewer id, answer)."""
        offer = check_offer_sdp(sdp)
        session = self.get(session_id)
        if len(session.viewers) >= self.limits.max_viewers:
            raise ApiError(
                503,
                f"session {session.id} already has {self.limits.max_viewers} viewers, the most it "
                "serves; close one (an OBS Browser Source or a viewer tab) and try again",
            )
        track = session.hub.subscribe()
        pc = new_peer(self.limits.ice_servers)
        viewer_id = secrets.token_urlsafe(9)
        session.viewers[viewer_id] = (pc, track)

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                await self.close_viewer(session.id, viewer_id)

        try:
            answer = await answer_offer(pc, offer, send=track)
        except BaseException:
            await self.close_viewer(session.id, viewer_id)
            raise
        log.info("session %s: viewer %s joined", session.id, viewer_id)
        return session, viewer_id, answer

    async def close_viewer(self, session_id: str, viewer_id: str) -> bool:
        """End one viewer's stream. False when there was no such viewer."""
        session = self._sessions.get(session_id)
        entry = session.viewers.pop(viewer_id, None) if session else None
        if entry is None:
            return False
        pc, track = entry
        track.stop()
        await pc.close()
        return True

    # -- closing ------------------------------------------------------------------------------

    async def close(self, session_id: str, reason: str) -> bool:
        """Close a session and free everything it holds. False when it was not open."""
        session = self._sessions.get(session_id)
        if session is None or session.closed:
            return False
        session.closed = True
        log.info("session %s closed: %s", session.id, reason)
        session.source.end()  # the capture thread wakes up and ends the pipeline
        session.hub.close()
        tasks = list(session.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._close_peers(session)
        start = session.start_task
        if start is not None and start is not asyncio.current_task():
            # Never cancelled: it may be mid-way through starting threads in the executor.
            await asyncio.shield(start)
        if session.pipeline is not None:
            await self._run(_stop_pipeline, session.id, session.pipeline)
        session.source.close()
        if self._vcam_owner == session.id:
            self._vcam_owner = None
        self._forget_upload(session.controls.state.photo)
        session.controls.update(swapper=None, photo=None)
        session.pipeline = None
        session.pc = None
        session.start_task = None
        del self._sessions[session.id]
        return True

    async def _close_peers(self, session: Session) -> None:
        for viewer_id in list(session.viewers):
            await self.close_viewer(session.id, viewer_id)
        if session.pc is not None:
            await session.pc.close()

    async def close_idle(self) -> None:
        """Close sessions with no video for ``idle_timeout_s`` or whose pipeline stopped."""
        now = time.monotonic()
        for session in list(self._sessions.values()):
            idle = now - session.source.last_frame
            if idle > self.limits.idle_timeout_s:
                await self.close(session.id, f"no video for {idle:.0f} s")
            elif session.pipeline is not None and not session.pipeline.running:
                await self.close(session.id, f"its pipeline stopped ({session.pipeline.error or 'end of stream'})")

    async def watch(self, interval_s: float = 1.0) -> None:
        """Run ``close_idle`` every ``interval_s`` until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            await self.close_idle()

    async def close_all(self) -> None:
        """Close every session and stop the executor (server shutdown)."""
        for session_id in list(self._sessions):
            await self.close(session_id, "the server is stopping")
        self._executor.shutdown(wait=True)

    async def _run(self, fn: Any, *args: Any) -> Any:
        """``fn(*args)`` in the manager's executor (blocking work off the event loop)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)


def _stop_pipeline(session_id: str, pipeline: Pipeline) -> None:
    """Stop and join a session's pipeline (executor thread); log how it ended."""
    pipeline.stop()
    if pipeline.error is not None and not isinstance(pipeline.error, StreamEnded):
        log.warning("session %s: its pipeline failed: %s", session_id, pipeline.error)
