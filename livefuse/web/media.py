"""The thread side of the media path: a pipeline ``Source`` and ``Sink`` for WebRTC.

``TrackSource`` is fed from the event loop and read by the pipeline's capture thread;
``HubSink`` is called by the pipeline's output thread and posts to the event loop. The
pipeline in between is the same one ``livefuse cam`` runs.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from fractions import Fraction

import cv2
import numpy as np
from av import VideoFrame

from livefuse.buffers import FrameQueue, QueueClosed
from livefuse.errors import SourceError, StreamEnded
from livefuse.frame import Frame
from livefuse.pipeline.metrics import Durations
from livefuse.pipeline.stages import Sink, SourceInfo
from livefuse.web.track import FrameHub

#: The RTP video clock; aiortc's decoded frames count in it.
VIDEO_TIME_BASE = Fraction(1, 90_000)


class RateMeter:
    """Events per second over the last ``window`` events (thread-safe enough: appends only)."""

    def __init__(self, window: int = 60) -> None:
        self._stamps: deque[float] = deque(maxlen=window)

    def tick(self) -> None:
        """Count one event now."""
        self._stamps.append(time.monotonic())

    def rate(self, stale_after_s: float = 2.0) -> float:
        """The recent rate; 0 when the last event is older than ``stale_after_s``."""
        stamps = list(self._stamps)
        if len(stamps) < 2 or time.monotonic() - stamps[-1] > stale_after_s:
            return 0.0
        return (len(stamps) - 1) / max(stamps[-1] - stamps[0], 1e-6)


class TrackSource:
    """A live pipeline ``Source`` fed with the decoded frames of a WebRTC track.

    The event loop calls ``offer`` with each frame; ``read``, in the capture thread,
    converts the newest one to BGR pixels. Between them is a one-slot ``FrameQueue`` with
    the ``"latest"`` policy: a frame the pipeline had no time for is replaced and counted.

    :param size: (width, height) the pipeline works at; None takes the first frame's. Later
        frames of another size (a browser lowers its send resolution when short of
        bandwidth or CPU) are scaled to it, so the returned stream keeps one size.
    """

    def __init__(self, name: str, size: tuple[int, int] | None = None) -> None:
        self.name = name
        self.size = size
        self._slot: FrameQueue[VideoFrame] = FrameQueue(1, "latest", name=f"{name}-in")
        self._info: SourceInfo | None = None
        self.received = 0
        "Frames offered."
        self.skipped = 0
        "Frames dropped from aiortc's receive queue before they were offered."
        self.last_frame = time.monotonic()
        "``time.monotonic()`` of the last offer (or of creation)."
        self.rate = RateMeter()
        self.convert = Durations()
        "ms per frame to convert the decoder's frame into the pipeline's BGR image."
        self._i420: np.ndarray | None = None

    @property
    def dropped(self) -> int:
        """Frames that arrived but never reached the pipeline."""
        return self.skipped + self._slot.dropped

    @property
    def info(self) -> SourceInfo | None:
        """What the source delivers; known once the first frame arrived."""
        return self._info

    def offer(self, frame: VideoFrame, skipped: int = 0) -> None:
        """Hand over the newest frame (event loop). Never blocks; ignored once ended."""
        if self._info is None:
            width, height = self.size or (frame.width, frame.height)
            self._info = SourceInfo(
                width=width,
                height=height,
                fps=30.0,  # WebRTC has no nominal rate; only a pacing hint for sinks
                live=True,
                time_base=frame.time_base or VIDEO_TIME_BASE,
                name=self.name,
            )
        self.received += 1
        self.skipped += skipped
        self.last_frame = time.monotonic()
        self.rate.tick()
        if self._slot.closed:
            return
        try:
            self._slot.put(frame)
        except QueueClosed:
            return  # ended between the check and the put: the frame is simply not needed

    def open(self) -> SourceInfo:
        """Say what the track delivers. Raises ``SourceError`` before the first frame."""
        if self._info is None:
            raise SourceError(f"{self.name}: no video frame has arrived yet, so its size is unknown")
        return self._info

    def read(self, image: np.ndarray) -> int:
        """Wait for the next frame, write it into ``image`` (BGR) and return its own pts."""
        try:
            frame = self._slot.get()
        except QueueClosed:
            raise StreamEnded(self.name) from None
        assert frame is not None  # get() without a timeout returns an item or raises
        started = time.perf_counter()
        self._to_bgr(frame, image)
        self.convert.add((time.perf_counter() - started) * 1e3)
        if frame.pts is None:
            return time.monotonic_ns() * 9 // 100_000  # ns → 90 kHz ticks
        return int(frame.pts)

    def _to_bgr(self, frame: VideoFrame, image: np.ndarray) -> None:
        """Convert the decoder's frame into ``image``. The usual case (yuv420p at the
        pipeline's size, unpadded rows): the planes are gathered into one I420 buffer made
        once, and OpenCV converts it straight into ``image``, about twice as fast as
        swscale into a new array and a copy. Anything else: one swscale pass, which also
        scales when the browser changed its sending size."""
        height, width = image.shape[:2]
        planes = frame.planes
        if (
            frame.format.name == "yuv420p"
            and (frame.width, frame.height) == (width, height)
            and width % 2 == 0 and height % 2 == 0
            and [p.line_size for p in planes] == [width, width // 2, width // 2]
        ):
            if self._i420 is None or self._i420.shape != (height * 3 // 2, width):
                self._i420 = np.empty((height * 3 // 2, width), np.uint8)
            flat, quarter = self._i420.reshape(-1), width * height // 4
            for plane, start, size in ((planes[0], 0, width * height), (planes[1], width * height, quarter),
                                       (planes[2], width * height + quarter, quarter)):
                flat[start:start + size] = np.frombuffer(memoryview(plane), np.uint8, count=size)
            cv2.cvtColor(self._i420, cv2.COLOR_YUV2BGR_I420, dst=image)
        else:
            np.copyto(image, frame.to_ndarray(width=width, height=height, format="bgr24"))

    def end(self) -> None:
        """End the stream: a waiting or later ``read`` raises ``StreamEnded``. Idempotent."""
        self._slot.close()

    def close(self) -> None:
        """End the stream and let go of any waiting frame. Idempotent."""
        self._slot.close()
        self._slot.drain()


class HubSink:
    """A pipeline ``Sink`` that posts each processed frame to a ``FrameHub`` on the event loop.

    Runs in the pipeline's output thread: the BGR image is converted into a yuv420p
    ``av.VideoFrame`` here (the encoders need yuv420p and would convert anyway), so the
    pool slot can go back and the loop only passes a reference on. The frame keeps the
    pts and time_base it arrived with.
    """

    def __init__(self, hub: FrameHub, loop: asyncio.AbstractEventLoop) -> None:
        self._hub = hub
        self._loop = loop
        self.sent = 0
        self.rate = RateMeter()
        self.convert = Durations()
        "ms per frame to convert the processed BGR image into the encoder's frame."
        self._i420: np.ndarray | None = None

    def open(self, info: SourceInfo) -> None:
        """Nothing to open: the hub exists for the session's whole life."""

    def send(self, frame: Frame) -> None:
        """Convert ``frame`` and post it to the hub."""
        started = time.perf_counter()
        out = self._to_yuv(frame.image)
        self.convert.add((time.perf_counter() - started) * 1e3)
        out.pts = frame.pts
        out.time_base = frame.time_base
        if self._loop.is_closed():
            return  # the server is shutting down; nobody is left to send to
        self._loop.call_soon_threadsafe(self._hub.publish, out)
        self.sent += 1
        self.rate.tick()

    def _to_yuv(self, image: np.ndarray) -> VideoFrame:
        """The encoder's yuv420p frame of ``image``: OpenCV converts into an I420 buffer made
        once, and the new frame copies it (1.5 bytes a pixel, where going through a BGR
        ``VideoFrame`` and swscale copies 3 and converts after; 1.5-4x faster here). Odd sizes
        take swscale, which pads."""
        height, width = image.shape[:2]
        if width % 2 or height % 2:
            return VideoFrame.from_ndarray(image, format="bgr24").reformat(format="yuv420p")
        if self._i420 is None or self._i420.shape != (height * 3 // 2, width):
            self._i420 = np.empty((height * 3 // 2, width), np.uint8)
        cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420, dst=self._i420)
        return VideoFrame.from_ndarray(self._i420, format="yuv420p")

    def close(self) -> None:
        """Nothing to close: the session closes the hub."""


class Opened:
    """A sink that is already open: the pipeline's ``open`` call is a no-op."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink

    def open(self, info: SourceInfo) -> None:
        """Already open."""

    def send(self, frame: Frame) -> None:
        """Pass ``frame`` on."""
        self._sink.send(frame)

    def close(self) -> None:
        """Close the sink."""
        self._sink.close()
