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
import time

import numpy as np

from livefuse.face.detect import Detector
from livefuse.faces import Faces

log = logging.getLogger(__name__)

#: How much nicer than the tracker the detector's thread runs when the machine has no idle
#: time to give it (Linux: per thread): it still gets about a tenth of a busy core.
DETECTOR_NICENESS = 10
#: A pass that took this many times its own CPU time in wall time waited for the CPU: the
#: machine had no idle time, and the next passes run at DETECTOR_NICENESS instead.
STARVED = 4.0


class DetectorPriority:
    """Where the detector's thread takes its CPU from (Linux only; elsewhere it is left as
    it is, since ``setpriority`` there would slow the whole process).

    By default from the machine's idle time alone (``SCHED_IDLE``): any thread of the
    pipeline, the encoder or the browser that wakes takes the core at once. With nice 10
    instead, a detection pass of tens of ms still held the core for a scheduler slice each
    time a frame's thread woke, and the frames' tail showed it (720p over WebRTC, server p95
    72–108 ms against 41–74). When a pass finds no idle time (it took ``STARVED`` times its
    CPU time), the thread falls back to nice 10 so new faces are still found on a saturated
    machine, and goes back to idle time once a pass runs unhindered.
    """

    def __init__(self) -> None:
        self.idle = False
        self._tid = 0

    def start(self) -> None:
        """Call from the detector's thread when it starts."""
        self._tid = threading.get_native_id()
        self.idle = self._set_idle(True)

    def after_pass(self, wall_s: float, cpu_s: float) -> None:
        """Adjust after a pass that took ``wall_s`` seconds of wall time and ``cpu_s`` of CPU."""
        starved = wall_s > STARVED * max(cpu_s, 1e-3)
        if starved == self.idle:  # idle and starved: leave idle; nice and unhindered: back
            self.idle = self._set_idle(not starved)

    def _set_idle(self, idle: bool) -> bool:
        """Move the thread to idle time (True) or to nice 10; return whether it is idle now."""
        if not sys.platform.startswith("linux") or not self._tid:
            return False
        try:
            if idle:
                os.sched_setscheduler(self._tid, os.SCHED_IDLE, os.sched_param(0))
                return True
            os.sched_setscheduler(self._tid, os.SCHED_OTHER, os.sched_param(0))
            os.setpriority(
                os.PRIO_PROCESS, self._tid, max(os.getpriority(os.PRIO_PROCESS, self._tid), DETECTOR_NICENESS)
            )
        except OSError as exc:  # a sandbox that forbids it: the detector keeps what it has
            log.debug("cannot change the detector thread's scheduling: %s", exc)
        return False


class BackgroundDetector:
    """Runs ``detector`` in a thread of its own, one frame at a time.

    ``submit`` copies the frame into a buffer made once per frame size (the caller's frame
    goes back to its pool right after), and is refused while a detection is running: the
    detector always works on the newest frame it can get, never on a queue of old ones. The
    thread starts with the first ``submit`` and ends with ``close`` (a later ``submit``
    starts it again); on Linux it runs in the machine's idle time (:class:`DetectorPriority`).
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
        priority = DetectorPriority()
        priority.start()
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending or self._closing)
                if self._closing:
                    return
                self._pending = False
                image, index = self._buffer, self._index
            assert image is not None
            wall, cpu = time.perf_counter(), time.thread_time()
            try:
                faces = self.detector.detect(image)
                priority.after_pass(time.perf_counter() - wall, time.thread_time() - cpu)
            except Exception as exc:  # noqa: BLE001 - handed to the tracker's thread by result()
                with self._cond:
                    self._error = exc
                    self._cond.notify_all()
                continue
            with self._cond:
                self._result = (index, faces)
                self._cond.notify_all()
