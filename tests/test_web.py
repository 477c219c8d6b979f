"""``livefuse serve``: the media path over real aiortc connections on 127.0.0.1, sessions and
their cleanup, limits, bad input and the token.

No STUN and no network: peers use ``RTCConfiguration(iceServers=[])`` and the
``loopback_ice`` fixture lets aioice gather 127.0.0.1 (it leaves loopback out by default).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
import zlib
from collections import deque
from collections.abc import AsyncIterator, Coroutine, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import cv2
import numpy as np
import pytest
from aiohttp import web
from aiortc import (
    AudioStreamTrack,
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
    VideoStreamTrack,
)
from aiortc.mediastreams import MediaStreamError
from av import VideoFrame

from livefuse.app import Engine
from livefuse.cli import build_parser
from livefuse.config import Settings, load_settings
from livefuse.errors import ConfigError, StreamEnded
from livefuse.frame import Frame
from livefuse.testing.fakecam import face_clip, read_counter
from livefuse.web.media import HubSink, TrackSource
from livefuse.web.server import MANAGER, UPLOADS, ServerConfig, create_app
from livefuse.web.sessions import SessionManager
from livefuse.web.track import FrameHub, take_newest
from livefuse.web.uploads import ImageLimits, check_image, image_size, sniff

REPO = Path(__file__).resolve().parents[1]
T = TypeVar("T")
Image = np.ndarray


def run(coro: Coroutine[Any, Any, T], timeout: float = 90) -> T:
    """Run one async scenario on a fresh event loop, with an overall time limit."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def loopback_ice(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let aioice gather 127.0.0.1 only (docs: testing-recipes §2); undone after each test.
    Every test here uses it: even an answer that is never connected gathers candidates."""
    import aioice.ice

    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4=True, use_ipv6=True: ["127.0.0.1"])


@pytest.fixture(scope="module")
def settings(livefuse_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    # The audit log goes to a state directory of the tests' own: the home is shared.
    state = tmp_path_factory.mktemp("state")
    return load_settings({"home": str(livefuse_home), "state_dir": str(state)}, env={})


@pytest.fixture(scope="module")
def engine(settings: Settings) -> Iterator[Engine]:
    with Engine(settings) as engine:
        yield engine


@pytest.fixture(scope="module")
def clip(livefuse_home: Path) -> list[Image]:
    """Two seconds of Obama's portrait swaying, with a frame counter (640x480)."""
    portrait = cv2.imread(str(livefuse_home / "samples" / "obama.jpg"))
    return face_clip(portrait, (640, 480), 60)


@pytest.fixture(scope="module")
def face_box(engine: Engine, clip: list[Image]) -> np.ndarray:
    """The face's box in the clip (x0, y0, x1, y1), from the project's own detector."""
    faces = engine.detector().detect(clip[0])
    assert len(faces) == 1, "the test clip shows one face"
    return faces.boxes[0]


# -- comparing frames --------------------------------------------------------------------------


def masks(box: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(inside the face, well away from it): the middle 60 % of the box; outside 1.6x the box.

    The clip sways by ±8 px, so both leave room for it.
    """
    h, w = shape[:2]
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    bw, bh = box[2] - box[0], box[3] - box[1]
    yy, xx = np.mgrid[0:h, 0:w]
    inner = (np.abs(xx - cx) < 0.3 * bw) & (np.abs(yy - cy) < 0.3 * bh)
    outer = (np.abs(xx - cx) > 0.8 * bw + 8) | (np.abs(yy - cy) > 0.8 * bh + 8)
    return inner, outer


def diff(a: Image, b: Image, mask: np.ndarray) -> float:
    """Mean absolute difference of two BGR images over ``mask``, after a slight blur that
    takes out most of the codec's noise (a swapped face differs in shapes, not grain)."""
    a, b = (cv2.GaussianBlur(x, (0, 0), 2).astype(np.int16) for x in (a, b))
    return float(np.abs(a - b)[mask].mean())


#: Two encodes (VP8) leave frames this close, outside the face and with swapping off (~3-4).
SAME = 8.0
#: A swapped face differs from the input by more than this (Biden onto Obama: ~17).
CHANGED = 10.0


def assert_swapped(returned: Image, original: Image, box: np.ndarray) -> None:
    inner, outer = masks(box, original.shape)
    assert diff(returned, original, outer) < SAME, "outside the face the frame must come back as it went"
    assert diff(returned, original, inner) > CHANGED, "the face must be swapped"


def assert_untouched(returned: Image, original: Image, box: np.ndarray) -> None:
    inner, outer = masks(box, original.shape)
    assert diff(returned, original, outer) < SAME
    assert diff(returned, original, inner) < SAME, "with swapping off the face must come back as it went"


# -- peers ---------------------------------------------------------------------------------------


class ClipTrack(VideoStreamTrack):
    """Sends the clip in a loop at 30 fps, remembering the pts each counter went out with."""

    def __init__(self, clip: list[Image]) -> None:
        super().__init__()
        self.clip = clip
        self.sent = 0
        self.pts_of: dict[int, int] = {}

    async def recv(self) -> VideoFrame:
        pts, time_base = await self.next_timestamp()
        index = self.sent % len(self.clip)
        frame = VideoFrame.from_ndarray(self.clip[index], format="bgr24")
        frame.pts, frame.time_base = pts, time_base
        self.pts_of[index] = pts
        self.sent += 1
        return frame


@dataclass
class Returned:
    counter: int | None
    pts: int
    time_base: Fraction
    image: Image


class Receiver:
    """Collects the last frames of every track a peer receives."""

    def __init__(self, keep: int = 30) -> None:
        self.frames: deque[Returned] = deque(maxlen=keep)
        self.count = 0
        self.tasks: list[asyncio.Task[None]] = []

    def attach(self, track: MediaStreamTrack) -> None:
        if track.kind == "video":
            self.tasks.append(asyncio.get_running_loop().create_task(self._read(track)))

    async def _read(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            image = frame.to_ndarray(format="bgr24")
            self.frames.append(Returned(read_counter(image), frame.pts, frame.time_base, image))
            self.count += 1

    async def wait(self, more: int, timeout: float = 20) -> list[Returned]:
        """Wait for ``more`` new frames; return the newest ones that carry a counter."""
        target = self.count + more
        deadline = time.monotonic() + timeout
        while self.count < target:
            assert time.monotonic() < deadline, f"only {self.count} frames came back in {timeout} s"
            await asyncio.sleep(0.05)
        return [f for f in list(self.frames)[-more:] if f.counter is not None]

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def new_pc() -> RTCPeerConnection:
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


@dataclass
class Served:
    """A running server on 127.0.0.1 and a client session for it."""

    url: str
    http: aiohttp.ClientSession
    manager: SessionManager
    config: ServerConfig
    app: web.Application

    async def offer(self, pc: RTCPeerConnection, **extra: Any) -> dict[str, Any]:
        """The demo page's handshake: POST /api/offer, apply the answer."""
        await pc.setLocalDescription(await pc.createOffer())
        body = {"sdp": pc.localDescription.sdp, "type": "offer", **extra}
        async with self.http.post("/api/offer", json=body) as r:
            answer = await r.json()
            assert r.status == 200, answer
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
        return answer

    async def sdp_post(self, path: str, pc: RTCPeerConnection) -> str:
        """A WHIP/WHEP handshake: POST the offer as application/sdp; returns the Location."""
        await pc.setLocalDescription(await pc.createOffer())
        headers = {"Content-Type": "application/sdp"}
        async with self.http.post(path, data=pc.localDescription.sdp, headers=headers) as r:
            text = await r.text()
            assert r.status == 201, text
            assert r.content_type == "application/sdp"
            location = r.headers["Location"]
        await pc.setRemoteDescription(RTCSessionDescription(text, "answer"))
        return location

    async def stats(self, session: str) -> dict[str, Any]:
        async with self.http.get(f"/api/sessions/{session}") as r:
            assert r.status == 200
            return dict(await r.json())


@asynccontextmanager
async def serving(engine: Engine, settings: Settings, **config: Any) -> AsyncIterator[Served]:
    """``livefuse serve``'s app on an ephemeral 127.0.0.1 port."""
    server_config = ServerConfig(port=0, **config).resolved()
    app = create_app(server_config, settings, engine)
    runner = web.AppRunner(app, access_log=None)  # as livefuse serve runs it
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    headers = {"Authorization": f"Bearer {server_config.token}"} if server_config.token else {}
    try:
        async with aiohttp.ClientSession(base_url=url, headers=headers) as http:
            yield Served(url, http, app[MANAGER], server_config, app)
    finally:
        await runner.cleanup()


# -- the media path ------------------------------------------------------------------------------


def test_page_session_swaps_live_keeps_timestamps_and_feeds_viewers(
    loopback_ice: None, engine: Engine, settings: Settings, clip: list[Image], face_box: np.ndarray
) -> None:
    async def scenario() -> None:
        async with serving(engine, settings) as srv:
            pc, sender, received = new_pc(), ClipTrack(clip), Receiver()
            pc.on("track", received.attach)
            pc.addTrack(sender)
            answer = await srv.offer(pc)
            session = answer["session"]

            # Live, the detector runs beside the tracker: faces appear once its first run is back.
            frames = await received.wait(30)
            assert frames, "returned frames carry the clip's counter"
            for f in frames[-3:]:
                assert_swapped(f.image, clip[f.counter], face_box)  # type: ignore[index]
            # Returned frames keep the pts they came with: the offset to what was sent is
            # constant (aiortc's receivers start each stream's pts at 0; its 90 kHz rounding
            # moves single frames by up to 2 ticks, 0.02 ms, where re-stamping would be ms).
            offsets = [sender.pts_of[f.counter] - f.pts for f in frames if f.counter is not None]
            assert max(offsets) - min(offsets) <= 3, f"returned pts drifted from the input's: {sorted(offsets)}"
            assert all(f.time_base == Fraction(1, 90_000) for f in frames)

            await check_viewer(srv, session, clip, face_box)

            async with srv.http.post(f"/api/sessions/{session}/settings", json={"swap": False}) as r:
                assert r.status == 200 and (await r.json())["swap"] is False
            await asyncio.sleep(0.5)  # frames already in flight were swapped
            for f in (await received.wait(10))[-3:]:
                assert_untouched(f.image, clip[f.counter], face_box)  # type: ignore[index]

            stats = await srv.stats(session)
            assert stats["state"] == "running" and stats["size"] == [640, 480]
            # aiortc offers both codecs: the server's preferred H.264, by its real-time encoder.
            assert stats["video"]["codec"] == "h264" and stats["video"]["encoder"].startswith("h264 (")
            assert stats["frames_out"] > 0 and stats["latency_ms"]["p50"] is not None
            assert 0 < stats["detector_rate"] <= 1
            budget = stats["budget_ms"]  # where a frame's milliseconds go on the server
            assert list(budget) == ["convert_in", "capture", "analyze", "swap", "output", "convert_out"]
            assert budget["convert_in"]["p50"] > 0 and budget["convert_out"]["p50"] > 0
            assert budget["analyze"]["work_p50"] > 0 and budget["swap"]["work_p95"] > 0

            async with srv.http.delete(f"/api/sessions/{session}") as r:
                assert r.status == 200
            assert len(srv.manager) == 0
            await received.close()
            await pc.close()

    run(scenario())


async def check_viewer(srv: Served, session: str, clip: list[Image], face_box: np.ndarray) -> None:
    """A WHEP viewer of ``session`` gets its processed frames, until it DELETEs itself."""
    viewer, received = new_pc(), Receiver()
    viewer.on("track", received.attach)
    viewer.addTransceiver("video", direction="recvonly")
    location = await srv.sdp_post(f"/whep/{session}", viewer)
    _, whep, resolved, viewer_id = location.split("/")
    assert whep == "whep" and viewer_id and resolved == (session if session != "latest" else resolved)
    frames = await received.wait(8)
    assert frames
    assert_swapped(frames[-1].image, clip[frames[-1].counter], face_box)  # type: ignore[index]
    assert (await srv.stats(resolved))["viewers"] == 1
    async with srv.http.delete(location) as r:
        assert r.status == 200
    assert (await srv.stats(resolved))["viewers"] == 0
    await received.close()
    await viewer.close()


def test_whip_ingest_with_audio_serves_whep_latest_until_deleted(
    loopback_ice: None, engine: Engine, settings: Settings, clip: list[Image], face_box: np.ndarray
) -> None:
    async def scenario() -> None:
        async with serving(engine, settings) as srv:
            obs = new_pc()  # sends H.264 video and audio, as OBS does
            video = obs.addTransceiver(ClipTrack(clip), direction="sendonly")
            h264 = [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType == "video/H264"]
            video.setCodecPreferences(h264)
            obs.addTransceiver(AudioStreamTrack(), direction="sendonly")
            location = await srv.sdp_post("/whip", obs)
            session = location.rsplit("/", 1)[1]
            assert location == f"/whip/{session}"
            assert "H264/90000" in obs.remoteDescription.sdp and "VP8" not in obs.remoteDescription.sdp

            deadline = time.monotonic() + 20
            while (await srv.stats(session))["frames_out"] < 10:
                assert time.monotonic() < deadline, "the WHIP stream was not processed"
                await asyncio.sleep(0.1)
            await check_viewer(srv, "latest", clip, face_box)

            async with srv.http.delete(location) as r:
                assert r.status == 200
            async with srv.http.get(f"/api/sessions/{session}") as r:
                assert r.status == 404
            assert len(srv.manager) == 0
            await obs.close()

    run(scenario())


def test_vcam_gets_the_processed_stream_and_a_missing_one_is_a_warning(
    loopback_ice: None, engine: Engine, settings: Settings, clip: list[Image]
) -> None:
    """With --vcam the (first) session also goes to the virtual camera; without a device
    the session still runs and says why on the page."""
    from dataclasses import replace

    pyvirtualcam = pytest.importorskip("pyvirtualcam")
    from tests.test_vcam import BACKEND, RecordingBackend

    async def whip_session(srv: Served) -> tuple[RTCPeerConnection, str]:
        obs = new_pc()
        obs.addTransceiver(ClipTrack(clip), direction="sendonly")
        session = (await srv.sdp_post("/whip", obs)).rsplit("/", 1)[1]
        deadline = time.monotonic() + 20
        while (await srv.stats(session))["frames_out"] < 5:
            assert time.monotonic() < deadline, "the stream was not processed"
            await asyncio.sleep(0.1)
        return obs, session

    async def scenario() -> None:
        with_vcam = replace(settings, output=replace(settings.output, vcam=True, vcam_backend=BACKEND))
        async with serving(engine, with_vcam) as srv:
            obs, session = await whip_session(srv)
            camera = RecordingBackend.instances[-1]
            assert (camera.width, camera.height) == (640, 480) and camera.frames
            async with srv.http.delete(f"/whip/{session}") as r:
                assert r.status == 200
            assert camera.closed, "the virtual camera is released with its session"
            await obs.close()
        no_backend = replace(settings.output, vcam=True, vcam_backend="no-such-backend")
        async with serving(engine, replace(settings, output=no_backend)) as srv:
            obs, session = await whip_session(srv)
            assert "virtual camera" in (await srv.stats(session))["warning"]
            await obs.close()

    RecordingBackend.instances = []
    pyvirtualcam.register_backend(BACKEND, RecordingBackend)
    try:
        run(scenario())
    finally:
        pyvirtualcam.camera.BACKENDS.pop(BACKEND, None)


def test_sessions_free_everything_over_100_connect_disconnect_cycles(
    loopback_ice: None, engine: Engine, settings: Settings, livefuse_home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Connect, get a processed frame back, disconnect; 100 times. Nothing may pile up:
    Python heap (tracemalloc), RSS, threads, sessions, pipelines, peer connections."""
    # Log records kept by pytest's capture would count as growth: keep only warnings.
    caplog.set_level(logging.WARNING)
    from aiortc import RTCPeerConnection as Peer

    from livefuse.pipeline.pipeline import Pipeline
    from livefuse.web.session import Session

    # 320x240 keeps the codecs cheap: the cost under test is per session, not per pixel.
    PIPELINE_THREADS = {f"livefuse-{stage}" for stage in ("capture", "analyze", "swap", "output")}
    small = face_clip(cv2.imread(str(livefuse_home / "samples" / "obama.jpg")), (320, 240), 30)

    def alive(kind: type) -> int:
        return sum(isinstance(o, kind) for o in gc.get_objects())

    def rss_mb() -> float:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    async def cycle(srv: Served, i: int) -> None:
        pc, received = new_pc(), Receiver(keep=2)
        pc.on("track", received.attach)
        pc.addTrack(ClipTrack(small))
        answer = await srv.offer(pc)
        await received.wait(1)
        if i % 2:
            async with srv.http.delete(f"/api/sessions/{answer['session']}") as r:
                assert r.status == 200
        await received.close()
        await pc.close()  # even cycles: the server notices the closed connection by itself

    async def settle(srv: Served) -> None:
        deadline = time.monotonic() + 10
        while len(srv.manager):
            assert time.monotonic() < deadline, "sessions were not closed after their peers left"
            await asyncio.sleep(0.02)
        gc.collect()

    async def scenario() -> dict[str, float]:
        async with serving(engine, settings) as srv:
            for i in range(5):  # warm-up: executors and codec/model caches fill once
                await cycle(srv, i)
            await settle(srv)
            objects = {"sessions": alive(Session), "pipelines": alive(Pipeline), "peers": alive(Peer)}
            tracemalloc.start(1)
            traced = tracemalloc.get_traced_memory()[0]
            rss, threads = {}, {}
            for i in range(100):
                await cycle(srv, i)
                if i in (49, 99):  # the allocator's caches and executor pools fill up first
                    await settle(srv)
                    rss[i], threads[i] = rss_mb(), threading.active_count()
            growth = {
                "traced_mb": (tracemalloc.get_traced_memory()[0] - traced) / 2**20,
                "rss_mb_last_50": rss[99] - rss[49],
                "threads_last_50": threads[99] - threads[49],
                "pipeline_threads": sum(t.name in PIPELINE_THREADS for t in threading.enumerate()),
                # Other tests' objects may still be alive in this process: compare counts.
                "sessions": alive(Session) - objects["sessions"],
                "pipelines": alive(Pipeline) - objects["pipelines"],
                "peers": alive(Peer) - objects["peers"],
            }
            tracemalloc.stop()
            return growth

    growth = run(scenario(), timeout=240)
    assert growth["sessions"] <= 0 and growth["pipelines"] <= 0 and growth["peers"] <= 0, growth
    # A leak adds a thread per session (50 here); a pool of aiortc's or aiohttp's growing by one
    # thread at a busy moment is not one.
    assert growth["threads_last_50"] <= 1 and growth["pipeline_threads"] == 0, growth
    # A session holds ~3 MB of frames: leaking them over the last 50 cycles would be ~150 MB; the
    # allocator's and aiortc's own caches move by a few MB between runs (up to 8 seen on 2 cores).
    assert growth["traced_mb"] < 16, growth
    assert growth["rss_mb_last_50"] < 30, growth


# -- the parts of the media path, one by one -------------------------------------------------------


def yuv_frame(value: int, pts: int, size: tuple[int, int] = (64, 48)) -> VideoFrame:
    frame = VideoFrame.from_ndarray(np.full((size[1], size[0], 3), value, np.uint8), format="bgr24")
    frame = frame.reformat(format="yuv420p")
    frame.pts, frame.time_base = pts, Fraction(1, 90_000)
    return frame


def test_track_source_keeps_only_the_newest_frame_and_its_pts() -> None:
    source = TrackSource("test", size=(32, 24))
    for i, value in enumerate((50, 100, 200)):
        source.offer(yuv_frame(value, 3000 * (i + 7)), skipped=1)
    info = source.open()
    assert (info.width, info.height, info.live, info.time_base) == (32, 24, True, Fraction(1, 90_000))
    image = np.zeros((24, 32, 3), np.uint8)
    assert source.read(image) == 27000, "the newest frame, with its own pts"
    assert abs(float(image.mean()) - 200) < 5, "scaled to the session size"
    assert source.dropped == 3 + 2, "skipped in aiortc's queue + replaced in the slot"
    source.end()
    with pytest.raises(StreamEnded):
        source.read(image)


def test_media_conversions_are_as_faithful_as_swscale(clip: list[Image]) -> None:
    """The conversions in and out of the pipeline (OpenCV, into buffers made once) keep the
    picture at least as well as swscale did; a frame of another size still gets scaled."""
    picture = clip[0]  # 640x480, the real test face
    height, width = picture.shape[:2]

    def error(image: np.ndarray, truth: np.ndarray = picture) -> float:
        return float(np.abs(image.astype(np.int16) - truth).mean())

    decoded = VideoFrame.from_ndarray(picture, format="bgr24").reformat(format="yuv420p")
    swscale_error = error(decoded.to_ndarray(format="bgr24"))
    source = TrackSource("convert", size=(width, height))
    source.offer(decoded)
    source.open()
    image = np.zeros_like(picture)
    source.read(image)
    assert error(image) <= swscale_error + 0.1, (error(image), swscale_error)
    small = TrackSource("scaled", size=(width // 2, height // 2))  # the browser sent a bigger frame
    small.offer(decoded)
    small.open()
    half = np.zeros((height // 2, width // 2, 3), np.uint8)
    small.read(half)
    assert error(half, cv2.resize(picture, (width // 2, height // 2), interpolation=cv2.INTER_AREA)) < 4

    async def scenario() -> VideoFrame:
        hub = FrameHub(max_tracks=1)
        track = hub.subscribe()
        HubSink(hub, asyncio.get_running_loop()).send(
            Frame(index=0, pts=1, time_base=Fraction(1, 90_000), capture_ns=0, image=picture)
        )
        await asyncio.sleep(0)
        out = await track.recv()
        hub.close()
        return out

    sent = run(scenario())
    assert (sent.width, sent.height, sent.format.name) == (width, height, "yuv420p")
    assert error(sent.to_ndarray(format="bgr24")) <= swscale_error + 0.1


def test_hub_sink_hands_frames_to_the_loop_with_their_timestamps() -> None:
    from livefuse.frame import Frame

    async def scenario() -> None:
        hub = FrameHub(max_tracks=2)
        track = hub.subscribe()
        sink = HubSink(hub, asyncio.get_running_loop())
        image = np.full((24, 32, 3), 90, np.uint8)
        for pts in (111, 222):  # the second replaces the first before the encoder asks
            sink.send(Frame(index=0, pts=pts, time_base=Fraction(1, 90_000), capture_ns=0, image=image))
        await asyncio.sleep(0)
        frame = await track.recv()
        assert (frame.pts, frame.time_base, frame.format.name) == (222, Fraction(1, 90_000), "yuv420p")
        assert track.dropped == 1 and hub.dropped == 1
        hub.close()
        with pytest.raises(MediaStreamError):
            await track.recv()
        assert hub.tracks == 0

    run(scenario())


def test_take_newest_empties_aiortcs_unbounded_queue() -> None:
    async def scenario() -> None:
        track = VideoStreamTrack()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        track._queue = queue  # type: ignore[attr-defined]  # the shape of aiortc's RemoteStreamTrack
        for pts in (1, 2, 3):
            queue.put_nowait(yuv_frame(0, pts))
        newest, skipped, ended = take_newest(track, yuv_frame(0, 0))
        assert (newest.pts, skipped, ended, queue.qsize()) == (3, 3, False, 0)
        queue.put_nowait(yuv_frame(0, 4))
        queue.put_nowait(None)  # end of stream stays queued for the next recv()
        newest, skipped, ended = take_newest(track, yuv_frame(0, 0))
        assert (newest.pts, skipped, ended, queue.qsize()) == (4, 1, True, 1)

    run(scenario())


# -- limits and bad input --------------------------------------------------------------------------


async def bare_offer(srv: Served) -> tuple[RTCPeerConnection, str]:
    """A session from an offer that is never connected (enough for the API)."""
    pc = new_pc()
    pc.addTransceiver("video", direction="sendrecv")
    await pc.setLocalDescription(await pc.createOffer())
    async with srv.http.post("/api/offer", json={"sdp": pc.localDescription.sdp, "type": "offer"}) as r:
        body = await r.json()
        assert r.status == 200, body
    return pc, body["session"]


def test_session_cap_answers_503_until_a_session_ends(engine: Engine, settings: Settings) -> None:
    async def scenario() -> None:
        async with serving(engine, settings, max_sessions=1) as srv:
            pc, session = await bare_offer(srv)
            other = new_pc()
            other.addTransceiver("video")
            await other.setLocalDescription(await other.createOffer())
            body = {"sdp": other.localDescription.sdp, "type": "offer"}
            async with srv.http.post("/api/offer", json=body) as r:
                assert r.status == 503
                assert "maximum" in (await r.json())["error"]
            async with srv.http.post("/whip", data=body["sdp"], headers={"Content-Type": "application/sdp"}) as r:
                assert r.status == 503
            async with srv.http.delete(f"/api/sessions/{session}") as r:
                assert r.status == 200
            async with srv.http.post("/api/offer", json=body) as r:
                assert r.status == 200
            for peer in (pc, other):
                await peer.close()

    run(scenario())


def test_a_session_without_video_is_closed_after_the_idle_timeout(engine: Engine, settings: Settings) -> None:
    async def scenario() -> None:
        async with serving(engine, settings, idle_timeout_s=0.2) as srv:
            pc, session = await bare_offer(srv)  # never connects, so no video ever comes
            await asyncio.sleep(0.3)
            await srv.manager.close_idle()  # what the server's watcher runs every second
            async with srv.http.get(f"/api/sessions/{session}") as r:
                assert r.status == 404
            assert len(srv.manager) == 0
            await pc.close()

    run(scenario())


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width``x``height`` (no pixel data needed to refuse it)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + b"\0" * 64


def jpeg(image: Image) -> bytes:
    ok, data = cv2.imencode(".jpg", image)
    assert ok
    return data.tobytes()


@pytest.mark.parametrize(
    ("name", "status", "words"),
    [
        ("oversized", 413, "10 MB"),
        ("not an image", 415, "not a JPEG, PNG or WebP"),
        ("text/plain", 415, "image/* Content-Type"),
        ("too many pixels", 422, "5000x100"),
        ("damaged header", 422, "damaged"),
        ("no face", 422, "no face"),
        ("a portrait", 200, ""),
    ],
)
def test_face_upload_is_validated(
    name: str, status: int, words: str, engine: Engine, settings: Settings, livefuse_home: Path
) -> None:
    bodies: dict[str, tuple[bytes, str]] = {
        "oversized": (b"\xff\xd8\xff" + b"\0" * (10 * 2**20 + 10), "image/jpeg"),
        "not an image": (b"<html>hello</html>" * 10, "image/png"),
        "text/plain": (b"hello", "text/plain"),
        "too many pixels": (png_header(5000, 100), "image/png"),
        "damaged header": (b"\xff\xd8\xff\xe0\x00\x10JFIF", "image/jpeg"),
        "no face": (jpeg(np.full((300, 300, 3), 128, np.uint8)), "image/jpeg"),
        "a portrait": ((livefuse_home / "samples" / "obama.jpg").read_bytes(), "image/jpeg"),
    }
    data, content_type = bodies[name]

    async def scenario() -> None:
        async with serving(engine, settings) as srv:
            pc, session = await bare_offer(srv)
            headers = {"Content-Type": content_type}
            async with srv.http.post(f"/api/sessions/{session}/face", data=data, headers=headers) as r:
                body = await r.json()
                assert r.status == status, body
            if status == 200:
                assert body["face"] == "uploaded photo"
            else:
                assert words in body["error"] and "Traceback" not in body["error"]
                assert str(srv.app[UPLOADS].path) not in body["error"], "the private path stays private"
            uploads = srv.app[UPLOADS].path
            assert uploads.stat().st_mode & 0o777 == 0o700
            assert len(list(uploads.iterdir())) == (1 if status == 200 else 0), "refused uploads are not kept"
            async with srv.http.delete(f"/api/sessions/{session}") as r:
                assert r.status == 200
            assert not list(uploads.iterdir()), "a session's upload goes with it"
            await pc.close()
        assert not uploads.exists()

    run(scenario())


MALFORMED: list[tuple[str, str, str, bytes | str, str, int, str]] = [
    # (case, method, path, body, content type, status, words in the error)
    ("offer not JSON", "POST", "/api/offer", b"{sdp:", "application/json", 400, "not valid JSON"),
    ("offer JSON list", "POST", "/api/offer", b"[1, 2]", "application/json", 400, "JSON object"),
    ("offer as form", "POST", "/api/offer", b"sdp=x", "application/x-www-form-urlencoded", 415, "application/json"),
    ("offer without sdp", "POST", "/api/offer", b'{"type": "offer"}', "application/json", 400, "no SDP"),
    ("offer sdp number", "POST", "/api/offer", b'{"sdp": 5}', "application/json", 400, "no SDP"),
    ("offer not SDP", "POST", "/api/offer", b'{"sdp": "hello"}', "application/json", 400, "v=0"),
    (
        "offer broken SDP",
        "POST",
        "/api/offer",
        b'{"sdp": "v=0\\r\\nm=video 9 UDP/TLS/RTP/SAVPF 96\\r\\na=rtpmap:x"}',
        "application/json",
        400,
        "malformed",
    ),
    ("offer is answer", "POST", "/api/offer", b'{"sdp": "v=0", "type": "answer"}', "application/json", 400, "offer"),
    (
        "bad size",
        "POST",
        "/api/offer",
        b'{"sdp": "v=0 m=video", "width": 641, "height": 480}',
        "application/json",
        400,
        "even",
    ),
    ("whip text", "POST", "/whip", "v=0", "text/plain", 415, "application/sdp"),
    ("whip garbage", "POST", "/whip", "v=0\r\nm=video banana\r\n", "application/sdp", 400, "malformed"),
    ("whip audio only", "POST", "/whip", "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n", "application/sdp", 400, "video"),
    ("whep no session", "POST", "/whep/nope", "v=0\r\nm=video 9 x\r\n", "application/sdp", 404, "no session"),
    ("stats no session", "GET", "/api/sessions/nope", b"", "", 404, "no session"),
    ("settings no session", "POST", "/api/sessions/nope/settings", b"{}", "application/json", 404, "no session"),
    ("delete no session", "DELETE", "/api/sessions/nope", b"", "", 404, "nope"),
]


@pytest.mark.parametrize(("case", "method", "path", "body", "content_type", "status", "words"), MALFORMED)
def test_malformed_requests_get_a_message_not_a_crash(
    case: str,
    method: str,
    path: str,
    body: bytes | str,
    content_type: str,
    status: int,
    words: str,
    engine: Engine,
    settings: Settings,
) -> None:
    async def scenario() -> None:
        async with serving(engine, settings) as srv:
            headers = {"Content-Type": content_type} if content_type else {}
            async with srv.http.request(method, path, data=body, headers=headers) as r:
                answer = await r.json()
                assert r.status == status, answer
                assert words in answer["error"] and "Traceback" not in answer["error"]
            assert len(srv.manager) == 0, "a refused offer leaves no session behind"
            async with srv.http.get("/api/config") as r:
                assert r.status == 200, "the server keeps serving"

    run(scenario())


def test_bad_settings_are_refused_and_good_ones_apply(engine: Engine, settings: Settings) -> None:
    async def scenario() -> None:
        async with serving(engine, settings) as srv:
            pc, session = await bare_offer(srv)
            url = f"/api/sessions/{session}/settings"
            cases = [
                ({"swap": "yes"}, 400, "must be a bool"),
                ({"colour": False}, 400, "unknown setting"),
                ({"face": "nobody.jpg"}, 404, "no face named"),
                ({"enhancer": "gfpgan_1.4"}, 400, "not installed"),
                ({"swapper": "magic"}, 400, "not installed"),
                ({"masks": ["mouth", "x"]}, 400, "not available"),
            ]
            for body, status, words in cases:
                async with srv.http.post(url, json=body) as r:
                    answer = await r.json()
                    assert (r.status, words in answer.get("error", "")) == (status, True), (body, answer)
            async with srv.http.post(url, json={"face": "t1.jpg", "keep_mouth": True, "masks": ["mouth"]}) as r:
                now = await r.json()
                assert r.status == 200, now
            assert (now["face"], now["keep_mouth"], now["masks"]) == ("t1.jpg", True, ["mouth"])
            await pc.close()

    run(scenario())


def test_token_is_required_off_localhost(engine: Engine, settings: Settings) -> None:
    config = ServerConfig(host="0.0.0.0").resolved()
    assert config.token and len(config.token) >= 24, "a random token is made when none is given"
    with pytest.raises(ConfigError, match="token"):
        create_app(ServerConfig(host="0.0.0.0"), settings, engine)
    with pytest.raises(ConfigError, match="8 characters"):
        ServerConfig(token="abc")

    async def scenario() -> None:
        async with serving(engine, settings, host="0.0.0.0", token="s3cret-token-1234") as srv:
            async with aiohttp.ClientSession(base_url=srv.url) as anonymous:
                for path in ("/api/config", "/api/sessions", "/api/config?token=wrong-token-0000"):
                    async with anonymous.get(path) as r:
                        assert r.status == 401 and "token" in (await r.json())["error"]
                async with anonymous.post("/whip", data="v=0", headers={"Content-Type": "application/sdp"}) as r:
                    assert r.status == 401
                async with anonymous.get("/api/config", headers={"Authorization": "Bearer s3cret-token-1234"}) as r:
                    assert r.status == 200
                async with anonymous.get("/api/config?token=s3cret-token-1234") as r:
                    assert r.status == 200
                for page in ("/", "/view/latest", "/static/client.js"):
                    async with anonymous.get(page) as r:
                        assert r.status == 200, f"{page} carries no data and loads without the token"

    run(scenario())


def test_healthz_answers_probes_without_the_token_and_counts_sessions(engine: Engine, settings: Settings) -> None:
    async def scenario() -> None:
        async with serving(engine, settings, host="0.0.0.0", token="s3cret-token-1234", max_sessions=3) as srv:
            async with aiohttp.ClientSession(base_url=srv.url) as probe:  # a probe carries no token
                async with probe.get("/healthz") as r:
                    assert r.status == 200 and r.content_type == "application/json"
                    assert await r.json() == {"status": "ok", "version": "0.1.0", "max_sessions": 3, "sessions": 0}
                    assert r.headers["Cache-Control"] == "no-store"
                pc, session = await bare_offer(srv)
                async with probe.get("/healthz") as r:
                    assert (await r.json())["sessions"] == 1
                async with probe.post("/healthz") as r:
                    assert r.status == 405, "only GET: the probe endpoint changes nothing"
                await pc.close()

    run(scenario())


def test_loopback_server_refuses_other_host_names(engine: Engine, settings: Settings) -> None:
    async def scenario() -> None:
        async with serving(engine, settings) as srv:
            async with srv.http.get("/api/config", headers={"Host": "attacker.example:80"}) as r:
                assert r.status == 403 and "127.0.0.1" in (await r.json())["error"]
            async with srv.http.get("/api/config", headers={"Host": "localhost"}) as r:
                assert r.status == 200
            async with srv.http.get("/") as r:
                assert r.status == 200
                assert "script-src 'self'" in r.headers["Content-Security-Policy"]
                assert r.headers["Referrer-Policy"] == "no-referrer"

    run(scenario())


def test_upload_header_checks_come_before_decoding() -> None:
    limits = ImageLimits(max_bytes=1000, max_side=100)
    png = cv2.imencode(".png", np.zeros((30, 40, 3), np.uint8))[1].tobytes()
    webp = cv2.imencode(".webp", np.zeros((30, 40, 3), np.uint8))[1].tobytes()
    jpg = jpeg(np.zeros((30, 40, 3), np.uint8))
    assert [sniff(d) for d in (png, webp, jpg, b"GIF89a")] == ["png", "webp", "jpeg", None]
    assert image_size(png, "png") == image_size(webp, "webp") == image_size(jpg, "jpeg") == (40, 30)
    assert check_image(png, limits) == "png"
    with pytest.raises(Exception, match="100 px per side"):
        check_image(png_header(101, 5), limits)


# -- the command line ---------------------------------------------------------------------------------


def test_serve_command_line_and_missing_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    argv = ["serve", "--port", "0", "--max-sessions", "2", "--keep-mouth", "--token", "x" * 8]
    args = build_parser().parse_args(argv)
    assert (args.host, args.port, args.max_sessions, args.token, args.keep_mouth) == ("127.0.0.1", 0, 2, "x" * 8, True)

    import livefuse
    from livefuse import commands

    for name in [m for m in sys.modules if m == "livefuse.web" or m.startswith("livefuse.web.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.delattr(livefuse, "web", raising=False)
    monkeypatch.setitem(sys.modules, "aiortc", None)  # as if the webrtc extra were not installed
    with pytest.raises(ConfigError, match=r'pip install "livefuse\[webrtc\]"'):
        commands.serve(args, Settings())


def test_livefuse_serve_prints_a_token_off_localhost_and_stops_on_sigint(livefuse_home: Path) -> None:
    command = [sys.executable, "-m", "livefuse", "serve", "--home", str(livefuse_home)]
    command += ["--host", "0.0.0.0", "--port", "0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    try:
        assert process.stdout is not None
        lines = []
        for line in process.stdout:
            lines.append(line)
            if "access token:" in line:
                break
        banner = "".join(lines)
        token = banner.split("access token: ", 1)[1].split()[0]
        port = int(banner.split("http://127.0.0.1:", 1)[1].split("/", 1)[0])

        async def probe() -> tuple[int, int]:
            async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{port}") as http:
                async with http.get("/api/config") as anonymous:
                    pass
                async with http.get("/api/config", headers={"Authorization": f"Bearer {token}"}) as allowed:
                    return anonymous.status, allowed.status

        assert run(probe(), timeout=20) == (401, 200)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
