"""Live sources that drop: reopened with backoff while the outputs keep running.

A camera unplugged for a moment, an RTSP server restarting, Wi-Fi dropping: the source
stalls, the pipeline would end and a virtual camera would vanish from the video call.
:class:`ReconnectingSource` instead reopens the source in a helper thread, with growing
pauses between tries (each try logged), for ``retry_for_s`` seconds. Meanwhile it keeps
delivering the last good frame, marked "reconnecting", at the source's rate, so virtual
cameras, WebRTC viewers, previews and recordings go on. If the source does not come back
in time, ``read`` raises ``SourceError`` and the run ends with that message.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import cv2
import numpy as np

from livefuse.errors import SourceError, SourceStalled
from livefuse.pipeline.stages import Source, SourceInfo

log = logging.getLogger(__name__)

#: How long a dropped live source is tried again before the run ends (``--reconnect-for``).
DEFAULT_RETRY_FOR_S = 30.0


@dataclass(frozen=True, slots=True)
class Backoff:
    """Pauses between reopen tries: ``first_s``, doubling, at most ``max_s``."""

    first_s: float = 0.5
    max_s: float = 5.0

    def delay(self, attempt: int) -> float:
        """The pause before try ``attempt`` (1-based)."""
        return min(self.first_s * 2 ** max(attempt - 1, 0), self.max_s)


class _Reopener:
    """One helper thread that closes and reopens a source until it opens or time is up."""

    def __init__(self, source: Source, name: str, retry_for_s: float, backoff: Backoff) -> None:
        self._source = source
        self._name = name
        self._deadline = time.monotonic() + retry_for_s
        self._backoff = backoff
        self._cancel = threading.Event()
        self.done = threading.Event()
        self.info: SourceInfo | None = None
        "Set when the source is open again."
        self.tries = 0
        self.last_error = ""
        self._thread = threading.Thread(target=self._loop, name="livefuse-reconnect", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        try:
            self._source.close()
            while not self._cancel.is_set():
                self.tries += 1
                pause = min(self._backoff.delay(self.tries), max(self._deadline - time.monotonic(), 0))
                if self._cancel.wait(pause) or time.monotonic() >= self._deadline:
                    return
                try:
                    self.info = self._source.open()
                except SourceError as exc:
                    self.last_error = str(exc)
                    left = self._deadline - time.monotonic()
                    log.warning("%s: reconnect try %d failed (%.0f s left): %s", self._name, self.tries, left, exc)
                    continue
                if self._cancel.is_set():
                    # Closed while this try was in flight: the caller no longer owns the source.
                    self._source.close()
                    self.info = None
                    return
                log.warning("%s is back after %d tries", self._name, self.tries)
                return
        finally:
            self.done.set()

    def cancel(self, timeout: float = 1.0) -> bool:
        """Stop trying; wait a little for a try in flight (bounded by the source's open timeout).

        Returns False when a try is still in flight: the helper then closes the source itself.
        """
        self._cancel.set()
        self._thread.join(timeout)
        return not self._thread.is_alive()


class ReconnectingSource:
    """Wraps a live source: a stall or read error starts reconnecting instead of ending the run.

    pts come from this wrapper's own 90 kHz capture clock, so they keep increasing across
    reconnects (a reopened source restarts its clock). One whole-frame copy per frame keeps
    the last good frame for the time the source is away: after the stall is noticed the
    frame is gone downstream, so it cannot be fetched then.

    :param retry_for_s: how long to keep trying before ``read`` raises ``SourceError``.
    """

    def __init__(self, inner: Source, retry_for_s: float = DEFAULT_RETRY_FOR_S, backoff: Backoff | None = None) -> None:
        if retry_for_s < 0:
            raise ValueError(f"retry_for_s must be at least 0, got {retry_for_s}")
        self.inner = inner
        self.retry_for_s = retry_for_s
        self.backoff = backoff or Backoff()
        self.reconnects = 0
        "Times the source came back."
        self.held_frames = 0
        "Frames delivered as the held, marked last frame."
        self._info: SourceInfo | None = None
        self._last: np.ndarray | None = None
        self._have_last = False
        self._reopener: _Reopener | None = None
        self._t0_ns = 0
        self._next_hold_ns = 0

    @property
    def name(self) -> str:
        return str(getattr(self.inner, "name", "live source"))

    @property
    def reconnecting(self) -> bool:
        """True while the source is away and the last frame is being held."""
        return self._reopener is not None

    def open(self) -> SourceInfo:
        info = self.inner.open()
        self._info, self._t0_ns = info, time.monotonic_ns()
        self._last = np.zeros((info.height, info.width, 3), np.uint8)
        self._have_last = False
        return info

    def read(self, image: np.ndarray) -> int:
        """The next frame, or the held last one (marked) while the source is reconnecting."""
        if self._reopener is None:
            try:
                self.inner.read(image)
            except (SourceStalled, SourceError) as exc:
                if self.retry_for_s <= 0:
                    raise
                self._start_reconnect(exc)
            else:
                assert self._last is not None
                if self._last.shape != image.shape:
                    self._last = np.empty_like(image)
                np.copyto(self._last, image)
                self._have_last = True
                return self._pts()
        return self._hold(image)

    def close(self) -> None:
        reopener, self._reopener = self._reopener, None
        if reopener is not None and not reopener.cancel():
            return
        self.inner.close()

    # -- reconnecting ---------------------------------------------------------------------

    def _start_reconnect(self, exc: Exception) -> None:
        log.warning("%s dropped (%s); reconnecting for up to %.0f s", self.name, exc, self.retry_for_s)
        self._reopener = _Reopener(self.inner, self.name, self.retry_for_s, self.backoff)
        self._next_hold_ns = time.monotonic_ns()

    def _hold(self, image: np.ndarray) -> int:
        reopener = self._reopener
        assert reopener is not None and self._info is not None
        if reopener.done.is_set():
            self._reopener = None
            if reopener.info is None:
                raise SourceError(
                    f"{self.name} did not come back within {self.retry_for_s:.0f} s "
                    f"({reopener.tries} tries; last error: {reopener.last_error or 'none'}). "
                    "Check the camera or stream and start again, or allow longer with --reconnect-for SECONDS."
                )
            self.reconnects += 1
            return self.read(image)
        # Deliver at the source's rate: outputs (virtual camera, WebRTC) expect a steady stream.
        period_ns = int(1e9 / (self._info.fps or 30.0))
        wait_ns = self._next_hold_ns - time.monotonic_ns()
        if wait_ns > 0:
            time.sleep(wait_ns / 1e9)
        self._next_hold_ns = max(self._next_hold_ns + period_ns, time.monotonic_ns())
        assert self._last is not None
        if self._last.shape == image.shape:
            np.copyto(image, self._last)
        else:
            image[:] = 0
        mark_reconnecting(image)
        self.held_frames += 1
        return self._pts()

    def _pts(self) -> int:
        return (time.monotonic_ns() - self._t0_ns) * 9 // 100_000  # ns → 90 kHz ticks


def mark_reconnecting(image: np.ndarray) -> None:
    """Darken a band at the bottom of ``image`` and write "reconnecting..." in it."""
    h, w = image.shape[:2]
    band = max(h // 12, 16)
    image[h - band :] //= 3
    scale = band / 40
    cv2.putText(
        image,
        "reconnecting...",
        (band // 2, h - band // 3),
        cv2.FONT_HERSHEY_SIMPLEX,
        scale,
        (255, 255, 255),
        max(int(scale * 2), 1),
        cv2.LINE_AA,
    )
