"""A session: one incoming stream with its own pipeline, live settings and viewers.

A session is made by an offer from the demo page (which also gets the processed stream
back) or by a WHIP client such as OBS (whose processed stream goes to WHEP viewers and,
with ``--vcam``, to the virtual camera). Each ``Session`` owns its life: its peer
connection, tracks and tasks, its pipeline's threads and frame pool, its uploaded face and
its viewers; ``close`` frees all of them. What sessions share (the engine, the executor for
blocking work, the face catalogue, the one virtual camera) comes in a ``SessionServices``;
the registry and the limits are :class:`livefuse.web.sessions.SessionManager`'s.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from aiortc import MediaStreamTrack, RTCPeerConnection
from av import VideoFrame

from livefuse.app import Engine
from livefuse.config import Settings, SwapSettings
from livefuse.errors import LivefuseError, OutputError, StreamEnded
from livefuse.pipeline.metrics import RunStats
from livefuse.pipeline.pipeline import Pipeline
from livefuse.pipeline.stages import Sink, Swapper
from livefuse.provenance.options import label_sink
from livefuse.web.controls import LiveAnalyzer, LiveSwapper, SwapControls, SwapState, with_choices
from livefuse.web.encoders import VideoCodec, negotiated_codec
from livefuse.web.errors import ApiError
from livefuse.web.media import HubSink, Opened, TrackSource
from livefuse.web.options import Choices, SessionLimits
from livefuse.web.peers import answer_offer, new_peer
from livefuse.web.track import FrameHub, ProcessedTrack, discard_track, pump_track
from livefuse.web.uploads import PrivateDir, check_image

log = logging.getLogger(__name__)

SessionKind = Literal["page", "whip"]

#: Recent frames the latency percentiles in a session's stats cover (~20 s at 30 fps).
STATS_WINDOW = 600


@dataclass
class SessionServices:
    """What every session of a server shares. Blocking work runs in ``executor``, never on the
    event loop; the one virtual camera goes to the first session that asks for it."""

    engine: Engine
    settings: Settings
    choices: Choices
    uploads: PrivateDir
    limits: SessionLimits
    executor: ThreadPoolExecutor
    vcam_owner: str | None = field(default=None)

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in the executor (blocking work off the event loop)."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def photo(self, name: str) -> Path:
        """The photo of the catalogue's face ``name`` (404 when there is none)."""
        photo = self.choices.faces.get(name)
        if photo is None:
            known = ", ".join(self.choices.faces) or "none (upload a photo)"
            raise ApiError(404, f"there is no face named {name!r}; the faces are: {known}")
        return photo

    def build(self, settings: SwapSettings, photo: Path, name: str) -> Swapper:
        """A swap stage for ``photo`` (executor thread)."""
        try:
            # Blocking (the photo is analysed); the runners stay the engine's, shared.
            return self.engine.swapper(photo, settings)
        except LivefuseError as exc:
            # Messages name the file; users know it by its name here (and an upload's
            # private path is nobody's business).
            message = str(exc).replace(f"photo {photo}", name).replace(str(photo), name)
            raise ApiError(422, f"the face {name!r} cannot be used: {message}") from None

    def forget_upload(self, photo: Path | None) -> None:
        """Delete ``photo`` if it is an upload (samples and --source stay)."""
        if photo is not None and photo.parent == self.uploads.path:
            photo.unlink(missing_ok=True)


class Session:
    """One incoming stream and everything that serves it, from its offer to its close."""

    def __init__(
        self,
        kind: SessionKind,
        services: SessionServices,
        size: tuple[int, int] | None,
        on_closed: Callable[[Session], None],
    ) -> None:
        self.id = secrets.token_urlsafe(9)
        self.kind: SessionKind = kind
        self.created = time.monotonic()
        self.services = services
        self._on_closed = on_closed
        self.controls = SwapControls(SwapState(services.settings.swap))
        self.source = TrackSource(f"session {self.id}", size)
        self.hub = FrameHub(services.limits.max_viewers + 1)  # + the demo page's own returned stream
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
        self.codec: VideoCodec | None = None
        "The video codec agreed with the page or the WHIP sender (vp8, h264)."

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
            "budget_ms": self._budget(run),
            "errors": run.errors if run else {},
            "viewers": len(self.viewers),
            "video": self._video(),
            "warning": self.warning,
            **self.controls.state.public(),
        }

    def _video(self) -> dict[str, Any]:
        """The codec agreed and what encodes the returned stream with it."""
        if self.codec is None:
            return {"codec": None, "encoder": None}
        return {"codec": self.codec, "encoder": self.services.limits.encoders.spec(self.codec).describe()}

    def _budget(self, run: RunStats | None) -> dict[str, Any]:
        """Where a frame's milliseconds go on the server: the conversion from the decoder's
        frame, each pipeline stage's queue wait and work, the conversion for the encoder."""
        stages = {name: {k: round(v, 2) for k, v in b.items()} for name, b in run.budget.items()} if run else {}
        return {
            "convert_in": self.source.convert.percentiles(),
            **stages,
            "convert_out": self.sink.convert.percentiles() if self.sink else {"p50": 0.0, "p95": 0.0},
        }

    def summary(self) -> dict[str, Any]:
        """A short line about the session."""
        return {
            "session": self.id,
            "kind": self.kind,
            "state": self.state,
            "viewers": len(self.viewers),
            **self.controls.state.public(),
        }

    # -- starting -----------------------------------------------------------------------------

    async def start(self, offer: str, send_back: bool, face: str | None) -> str:
        """Connect to the offer's peer and return the SDP answer. The source face is prepared
        while the connection comes up: video flows at once, and swapping starts as soon as the
        face is ready (a problem with it becomes the session's ``warning``)."""
        photo = self.services.photo(face) if face is not None else None
        try:
            answer = await self._connect(offer, send_back)
        except BaseException:
            await self.close("it could not be set up")
            raise
        if face is None or photo is None:
            self.warning = "no source face is installed: upload a photo of a face"
        else:
            self.spawn(self._first_face(face, photo))
        return answer

    async def _first_face(self, name: str, photo: Path) -> None:
        async with self.update_lock:
            if self.controls.state.photo is not None:
                return  # the user chose another face meanwhile
            try:
                swapper = await self.services.run(self.services.build, self.controls.state.settings, photo, name)
            except ApiError as exc:
                self.warning = str(exc)
                return
            self.controls.update(face=name, photo=photo, swapper=swapper)

    async def _connect(self, offer: str, send_back: bool) -> str:
        pc = new_peer(self.services.limits.ice_servers)
        self.pc = pc
        video: list[MediaStreamTrack] = []

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "video" and not video:
                video.append(track)
                self.spawn(pump_track(track, self._on_frame))
            else:
                # Audio (OBS sends it) and extra videos are read and dropped: an unread
                # aiortc track queues every frame forever.
                self.spawn(discard_track(track))

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                await self.close(f"its connection is {pc.connectionState}")

        send = self.hub.subscribe() if send_back else None
        answer = await answer_offer(pc, offer, send, self.services.limits.encoders)
        self.codec = negotiated_codec(answer)
        if not video:
            raise ApiError(400, "the offer has no video track livefuse can decode (VP8 or H.264)")
        return answer

    def _on_frame(self, frame: VideoFrame, skipped: int) -> None:
        self.source.offer(frame, skipped)
        if self.start_task is None and not self.closed:
            # The frame size is known now: build the pipeline (off the loop).
            self.start_task = asyncio.get_running_loop().create_task(self._start_pipeline())

    async def _start_pipeline(self) -> None:
        services = self.services
        use_vcam = services.settings.output.vcam and services.vcam_owner is None
        if use_vcam:
            services.vcam_owner = self.id
        loop = asyncio.get_running_loop()
        try:
            pipeline, vcam_error = await services.run(self._build_pipeline, loop, use_vcam)
        except LivefuseError as exc:
            log.error("session %s: cannot start its pipeline: %s", self.id, exc)
            await self.close(f"its pipeline could not start: {exc}")
            return
        if vcam_error is not None:
            self.warning = f"no virtual camera: {vcam_error}"
            services.vcam_owner = None
        self.pipeline = pipeline
        if self.closed:  # closed while the pipeline was starting
            await services.run(pipeline.stop)
            return
        info = self.source.info
        assert info is not None
        log.info("session %s: processing %dx%d", self.id, info.width, info.height)

    def _build_pipeline(self, loop: asyncio.AbstractEventLoop, use_vcam: bool) -> tuple[Pipeline, OutputError | None]:
        """Assemble and start the same pipeline ``livefuse cam`` runs (executor thread).

        Returns it and, when the virtual camera would not open, why (the session then
        runs without it).
        """
        self.sink = HubSink(self.hub, loop)
        label = label_sink(self.services.settings)  # first, so WebRTC and the virtual camera get it
        sinks: list[Sink] = [*([label] if label else []), self.sink]
        vcam_error = None
        if use_vcam:
            try:
                sinks.append(self._open_vcam())
            except OutputError as exc:
                log.error("session %s: no virtual camera: %s", self.id, exc)
                vcam_error = exc
        pipeline = Pipeline(
            self.source,
            LiveAnalyzer(self.services.engine.tracker(live=True), self.controls),
            LiveSwapper(self.controls),
            sinks,
            queue_size=self.services.settings.capture.queue_size,
            live=True,
            metrics_window=STATS_WINDOW,
        )
        pipeline.start()
        return pipeline, vcam_error

    def _open_vcam(self) -> Sink:
        """The virtual camera, opened here so that a missing one cannot stop the pipeline."""
        from livefuse.io.vcam import VirtualCameraSink

        info = self.source.open()
        output = self.services.settings.output
        vcam = VirtualCameraSink(device=output.vcam_device, backend=output.vcam_backend)
        vcam.open(info)
        return Opened(vcam)

    # -- live settings ------------------------------------------------------------------------

    async def update(self, *, swap: bool | None = None, face: str | None = None, **choices: Any) -> dict[str, Any]:
        """Change the settings; they apply from the next frame.

        ``choices`` are session settings (``controls.SESSION_SETTINGS``); changing one or
        the face builds a new swap stage (off the loop) and swaps it in.
        """
        services = self.services
        services.choices.check(choices)
        async with self.update_lock:
            state = self.controls.state
            if face is not None or choices:
                settings = with_choices(state.settings, **choices)
                name, photo = (face, services.photo(face)) if face is not None else (state.face, state.photo)
                swapper = await services.run(services.build, settings, photo, name) if photo else None
                self.controls.update(settings=settings, face=name, photo=photo, swapper=swapper)
                if face is not None:
                    services.forget_upload(state.photo)
                    self.warning = None
            if swap is not None:
                self.controls.update(swap=swap)
        return self.controls.state.public()

    async def upload_face(self, data: bytes) -> dict[str, Any]:
        """Make the photo in ``data`` the source face (validated first).

        The photo stays in the private upload directory while it is the session's face
        (a changed option rebuilds the swap stage from it) and is deleted after.
        """
        services = self.services
        check_image(data, services.limits.image)
        photo = services.uploads.write(self.id, data)
        async with self.update_lock:
            state = self.controls.state
            try:
                swapper = await services.run(services.build, state.settings, photo, "uploaded photo")
            except BaseException:
                photo.unlink(missing_ok=True)
                raise
            self.controls.update(face="uploaded photo", photo=photo, swapper=swapper)
            services.forget_upload(state.photo)
            self.warning = None
        return self.controls.state.public()

    # -- viewers (WHEP) -----------------------------------------------------------------------

    async def add_viewer(self, offer: str) -> tuple[str, str]:
        """Send the processed stream to a new viewer; returns (viewer id, answer)."""
        limit = self.services.limits.max_viewers
        if len(self.viewers) >= limit:
            raise ApiError(
                503,
                f"session {self.id} already has {limit} viewers, the most it "
                "serves; close one (an OBS Browser Source or a viewer tab) and try again",
            )
        track = self.hub.subscribe()
        pc = new_peer(self.services.limits.ice_servers)
        viewer_id = secrets.token_urlsafe(9)
        self.viewers[viewer_id] = (pc, track)

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                await self.close_viewer(viewer_id)

        try:
            answer = await answer_offer(pc, offer, track, self.services.limits.encoders)
        except BaseException:
            await self.close_viewer(viewer_id)
            raise
        log.info("session %s: viewer %s joined", self.id, viewer_id)
        return viewer_id, answer

    async def close_viewer(self, viewer_id: str) -> bool:
        """End one viewer's stream. False when there was no such viewer."""
        entry = self.viewers.pop(viewer_id, None)
        if entry is None:
            return False
        pc, track = entry
        track.stop()
        await pc.close()
        return True

    # -- closing ------------------------------------------------------------------------------

    def idle_reason(self, now: float) -> str | None:
        """Why the session should be closed as idle (no video for the idle timeout, or its
        pipeline stopped), or None."""
        idle = now - self.source.last_frame
        if idle > self.services.limits.idle_timeout_s:
            return f"no video for {idle:.0f} s"
        if self.pipeline is not None and not self.pipeline.running:
            return f"its pipeline stopped ({self.pipeline.error or 'end of stream'})"
        return None

    async def close(self, reason: str) -> bool:
        """Close the session and free everything it holds. False when it was closed already."""
        if self.closed:
            return False
        self.closed = True
        log.info("session %s closed: %s", self.id, reason)
        self.source.end()  # the capture thread wakes up and ends the pipeline
        self.hub.close()
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._close_peers()
        start = self.start_task
        if start is not None and start is not asyncio.current_task():
            # Never cancelled: it may be mid-way through starting threads in the executor.
            await asyncio.shield(start)
        if self.pipeline is not None:
            await self.services.run(_stop_pipeline, self.id, self.pipeline)
        self.source.close()
        if self.services.vcam_owner == self.id:
            self.services.vcam_owner = None
        self.services.forget_upload(self.controls.state.photo)
        self.controls.update(swapper=None, photo=None)
        self.pipeline = None
        self.pc = None
        self.start_task = None
        self._on_closed(self)
        return True

    async def _close_peers(self) -> None:
        for viewer_id in list(self.viewers):
            await self.close_viewer(viewer_id)
        if self.pc is not None:
            await self.pc.close()


def _stop_pipeline(session_id: str, pipeline: Pipeline) -> None:
    """Stop and join a session's pipeline (executor thread); log how it ended."""
    pipeline.stop()
    if pipeline.error is not None and not isinstance(pipeline.error, StreamEnded):
        log.warning("session %s: its pipeline failed: %s", session_id, pipeline.error)
