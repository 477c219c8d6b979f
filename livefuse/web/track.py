"""The asyncio side of the media path: reading incoming tracks, sending processed frames.

Everything here runs on the event loop and does no CPU work: frames are handed over by
reference. Decoding to pixels, face work and encoding happen in threads (the pipeline's
and aiortc's codec executor).

Queue policies, all "newest frame wins":

- aiortc's ``RemoteStreamTrack`` keeps decoded frames in an unbounded ``asyncio.Queue``.
  ``pump_track`` reads it continuously and, after each ``recv``, empties it down to the
  newest frame, counting the rest as dropped, so it can never grow.
- ``ProcessedTrack`` holds one frame; a new one replaces an unsent one (counted).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError
from av import VideoFrame
from av.frame import Frame as AvFrame
from av.packet import Packet

from livefuse.web.errors import ApiError

log = logging.getLogger(__name__)

#: Receives each newest frame and how many older ones were skipped to get to it.
FrameHandler = Callable[[VideoFrame, int], None]


def take_newest(track: MediaStreamTrack, frame: AvFrame | Packet) -> tuple[AvFrame | Packet, int, bool]:
    """``frame``, or a newer one already waiting in ``track``'s receive queue.

    Returns (newest frame, frames skipped, whether the track ended meanwhile). Reads
    aiortc's private ``_queue`` (``RemoteStreamTrack``): aiortc offers no way to bound it.
    Tracks without one are returned as they are.
    """
    queue: asyncio.Queue[AvFrame | Packet | None] | None = getattr(track, "_queue", None)
    skipped, ended = 0, False
    while queue is not None and not queue.empty():
        item = queue.get_nowait()
        if item is None:  # aiortc's end-of-stream marker: leave it for the next recv()
            queue.put_nowait(None)
            ended = True
            break
        frame, skipped = item, skipped + 1
    return frame, skipped, ended


async def pump_track(track: MediaStreamTrack, on_frame: FrameHandler) -> None:
    """Read ``track`` until it ends, giving ``on_frame`` only the newest frame each time."""
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        newest, skipped, ended = take_newest(track, frame)
        if isinstance(newest, VideoFrame):
            on_frame(newest, skipped)
        if ended:
            return


async def discard_track(track: MediaStreamTrack) -> None:
    """Read and drop a track nobody uses (OBS's audio), so aiortc's queue stays empty."""
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        _, _, ended = take_newest(track, frame)
        if ended:
            return


class ProcessedTrack(MediaStreamTrack):
    """An outgoing video track: the session's processed frames, newest first.

    ``recv`` awaits an ``asyncio.Event`` that ``put`` sets (``put`` runs on the event loop;
    threads reach it through ``loop.call_soon_threadsafe``). Frames keep the pts and
    time_base they arrived with.
    """

    kind = "video"

    def __init__(self, hub: FrameHub) -> None:
        super().__init__()
        self._hub = hub
        self._frame: VideoFrame | None = None
        self._ready = asyncio.Event()
        self.sent = 0
        "Frames handed to the encoder."
        self.dropped = 0
        "Frames replaced by a newer one before the encoder asked for them."

    def put(self, frame: VideoFrame) -> None:
        """Offer ``frame``; an unsent older one is dropped. Call on the event loop."""
        if self._frame is not None:
            self.dropped += 1
        self._frame = frame
        self._ready.set()

    async def recv(self) -> VideoFrame:
        """The newest processed frame; waits for one. Raises ``MediaStreamError`` once stopped."""
        while self._frame is None:
            if self.readyState != "live":
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        if self.readyState != "live":
            raise MediaStreamError
        frame, self._frame = self._frame, None
        self.sent += 1
        return frame

    def stop(self) -> None:
        """End the track and leave the hub. Idempotent."""
        super().stop()
        self._frame = None
        self._hub.unsubscribe(self)
        self._ready.set()  # wake a waiting recv() so it raises


class FrameHub:
    """Fans one session's processed frames out to its tracks (the page, WHEP viewers).

    :param max_tracks: most tracks at once; the next ``subscribe`` gets a 503.
    """

    def __init__(self, max_tracks: int) -> None:
        self.max_tracks = max_tracks
        self._tracks: list[ProcessedTrack] = []
        self._closed = False
        self.published = 0
        self._dropped_by_gone = 0

    @property
    def tracks(self) -> int:
        """Tracks subscribed now."""
        return len(self._tracks)

    @property
    def dropped(self) -> int:
        """Frames replaced before an encoder took them, over every track so far."""
        return self._dropped_by_gone + sum(t.dropped for t in self._tracks)

    def subscribe(self) -> ProcessedTrack:
        """A new track that gets every frame published from now on."""
        if self._closed:
            raise ApiError(410, "this session has ended; start a new one")
        if len(self._tracks) >= self.max_tracks:
            raise ApiError(
                503,
                f"this session already sends to {self.max_tracks} viewers, the most it serves; "
                "close a viewer (or an OBS Browser Source) and try again",
            )
        track = ProcessedTrack(self)
        self._tracks.append(track)
        return track

    def unsubscribe(self, track: ProcessedTrack) -> None:
        """Forget ``track`` (called by ``ProcessedTrack.stop``)."""
        if track in self._tracks:
            self._tracks.remove(track)
            self._dropped_by_gone += track.dropped

    def publish(self, frame: VideoFrame) -> None:
        """Give ``frame`` to every track. Call on the event loop."""
        if self._closed:
            return
        self.published += 1
        for track in self._tracks:
            track.put(frame)

    def close(self) -> None:
        """Stop every track. Idempotent."""
        self._closed = True
        for track in list(self._tracks):
            track.stop()
