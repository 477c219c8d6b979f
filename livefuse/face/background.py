"""The detector beside the tracker: for live video, detection runs in its own thread on the
newest frame handed to it, at its own pace, so no live frame waits for it.

The tracker follows every face from its own landmarks each frame (a few ms); the detector
(tens of ms on a CPU) only finds new faces and re-anchors lost ones. Run inline, its frames
are the latency tail: every K-th frame waits for it. Here the tracker hands a frame over when
a detection is due and the detector is idle, carries on, and reconciles the boxes when they
are ready (usually a frame or two later) by overlap with its tracks.
"""

from __future__ import annotations

import logging
import os
import sys
import threading

import numpy as np

from livefuse.face.detect import Detector
from livefuse.faces import Faces

log = logging.getLogger(__name__)

#: How much nicer than the tracker the detector's thread runs (Linux: per thread). The CPU's
#: time goes to the frame in flight first; the detector takes what is left, which on a busy
#: machine means new faces are found a little later rather than every frame waiting.
DETECTOR_NICENESS = 10


def lower_thread_priority(step: int) -> bool:
    """Make the calling thread ``step`` nicer; True when done. Only Linux schedules threads
    by their own nice value (elsewhere ``setpriority`` would slow the whole process)."""
    if not sys.platform.startswith("linux"):
        return False
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + step))
    except OSError as exc:  # a sandbox that forbids it: the detector just runs at normal priority
        log.debug("cannot lower the detector thread's priority: %s", exc)
        return False
    return True


class BackgroundDetector:
    """Runs ``detector`` in a thread of its own, one frame at a time.

    ``submit`` copies the frame into a buffer made once per frame size (the caller's frame
    goes back to its pool right after), and is refused while a detection is running: the
    detector always works on the newest frame it can get, never on a queue of old ones. The
    thread starts with the first ``submit`` and ends with ``close`` (a later ``submit``
    starts it again); on Linux it runs :data:`DETECTOR_NICENESS` nicer than the tracker.
    """

    def __init__(self, detector: Detector) -> None:
        self.detector = detector
        self._buffer: np.ndarray | None = None
        self._cond = threading.Condition()
        self._pending = False
        "A frame waits in the buffer for the thread."
        self._index = 0
        self._busy = False
        "Submitted and not yet taken back by ``result``."
        self._result: tuple[int, Faces] | None = None
        self._error: BaseException | None = None
        self._closing = False
        self._thread: threading.Thread | None = None

    @property
    def calls(self) -> int:
        return self.detector.calls

    @property
    def busy(self) -> bool:
        """A detection is running, or its result has not been taken yet."""
        with self._cond:
            return self._busy

    def submit(self, image: np.ndarray, index: int) -> bool:
        """Detect faces in (a copy of) ``image``, frame ``index``; False when still busy."""
        with self._cond:
            if self._busy:
                return False
            if self._buffer is None or self._buffer.shape != image.shape:
                self._buffer = np.empty_like(image)
            np.copyto(self._buffer, image)
            self._busy, self._pending, self._index = True, True, index
            self._ensure_thread()
            self._cond.notify()
        return True

    def result(self) -> tuple[int, Faces] | None:
        """The finished detection as (frame index, faces), once; None while none is ready.
        Re-raises what the detector raised (the tracker's caller counts it as a frame error)."""
        with self._cond:
            if self._error is not None:
                error, self._error, self._busy = self._error, None, False
                raise error
            result, self._result = self._result, None
            if result is not None:
                self._busy = False
            return result

    def wait(self, timeout: float) -> bool:
        """Block until the running detection has finished (tests, and file-mode fallbacks)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending and self._thread_idle(), timeout)

    def close(self) -> None:
        """Stop the thread (after the detection in progress). Idempotent."""
        with self._cond:
            thread, self._thread = self._thread, None
            self._closing = True
            self._cond.notify_all()
        if thread is not None:
            thread.join()
        with self._cond:
            self._closing, self._pending, self._busy = False, False, False
            self._result = self._error = None

    def _thread_idle(self) -> bool:
        return self._result is not None or self._error is not None or not self._busy

    def _ensure_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="livefuse-detect", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        lower_thread_priority(DETECTOR_NICENESS)
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending or self._closing)
                if self._closing:
                    return
                self._pending = False
                image, index = self._buffer, self._index
            assert image is not None
            try:
                faces = self.detector.detect(image)
            except Exception as exc:  # noqa: BLE001 - handed to the tracker's thread by result()
                with self._cond:
                    self._error = exc
                    self._cond.notify_all()
                continue
            with self._cond:
                self._result = (index, faces)
                self._cond.notify_all()
