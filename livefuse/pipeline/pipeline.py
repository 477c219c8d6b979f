"""The threaded pipeline: capture → analyze → swap → output.

Each stage runs in its own thread and hands frames on through a bounded
``FrameQueue``. Live sources use the ``"latest"`` policy (each queue keeps only the
newest frames, so latency stays bounded and drops are counted); files use
``"block"`` (back-pressure: every frame comes out, in order).

Failure rules:

- a stage that fails on one frame passes that frame through unswapped, counts the
  error by kind and logs it once per kind: one bad frame never kills a live stream;
- a failing source or sink ends the run, and ``run()``/``join()`` re-raise its error
  after every thread has been joined;
- ``StreamEnded`` from the source is the normal end.

Sinks are opened with the ``SourceInfo`` before the threads start and closed after
they are joined. A sink may also define ``abort()``: after a failed run it is called
instead of ``close()``, so a file sink can discard its half-written output.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from types import TracebackType

from livefuse.buffers import FramePool, FrameQueue, Policy, QueueClosed
from livefuse.errors import StreamEnded
from livefuse.frame import Frame
from livefuse.pipeline.metrics import DEFAULT_WINDOW, Metrics, RunStats
from livefuse.pipeline.stages import Analyzer, Sink, Source, SourceInfo, Swapper

log = logging.getLogger(__name__)

#: Threads each hold at most one frame, so a pool needs this many slots beyond the queues.
_FRAMES_HELD_BY_THREADS = 4


class Pipeline:
    """Runs ``source`` through ``analyzer`` and ``swapper`` into every sink.

    :param queue_size: capacity of each of the three queues between the four threads.
    :param pool_slots: preallocated frame images; default is enough that capture never
        waits for a slot (``3 * queue_size + 4``).
    :param live: ``None`` takes ``SourceInfo.live``: True drops the oldest frames when a
        stage falls behind, False applies back-pressure and keeps every frame.
    :param on_frame: called in the output thread with each frame after the sinks. The
        frame's image returns to the pool afterwards: copy it to keep it.
    :param join_timeout_s: how long shutdown waits for all threads together before it
        reports the ones that did not stop.
    """

    def __init__(
        self,
        source: Source,
        analyzer: Analyzer,
        swapper: Swapper,
        sinks: Sequence[Sink],
        *,
        queue_size: int = 2,
        pool_slots: int | None = None,
        live: bool | None = None,
        on_frame: Callable[[Frame], None] | None = None,
        join_timeout_s: float = 5.0,
        metrics_window: int = DEFAULT_WINDOW,
    ) -> None:
        if queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, got {queue_size}")
        self.source = source
        self.analyzer = analyzer
        self.swapper = swapper
        self.sinks = list(sinks)
        self.queue_size = queue_size
        self.pool_slots = pool_slots or 3 * queue_size + _FRAMES_HELD_BY_THREADS
        self.join_timeout_s = join_timeout_s
        self._live = live
        self._on_frame = on_frame
        self.metrics = Metrics(metrics_window)
        self.info: SourceInfo | None = None
        "What the source delivers; set by ``start``."
        self.error: BaseException | None = None
        "The source or sink error that ended the run, if any."
        self._stop = threading.Event()
        self._ended = threading.Event()
        self._lock = threading.Lock()
        self._shutdown_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._queues: list[FrameQueue[Frame]] = []
        self._pool: FramePool | None = None
        self._started = False
        self._shut_down = False

    # -- public lifecycle -------------------------------------------------------------

    @property
    def live(self) -> bool:
        """True when queues drop the oldest frames (known once started)."""
        if self._live is not None:
            return self._live
        return bool(self.info and self.info.live)

    @property
    def running(self) -> bool:
        """True between ``start`` and the end of the run."""
        return self._started and not self._ended.is_set()

    @property
    def alive_threads(self) -> list[str]:
        """Names of this pipeline's threads that are still running."""
        return [t.name for t in self._threads if t.is_alive()]

    def start(self) -> None:
        """Open the source and sinks, then start the four threads. Returns at once.

        Raises what ``Source.open`` or ``Sink.open`` raise, with nothing left open.
        """
        if self._started:
            raise RuntimeError("a Pipeline runs once: build a new one to run again")
        self._started = True
        try:
            self.info = info = self.source.open()
        except BaseException:
            self._ended.set()
            self._shut_down = True
            raise
        try:
            self._open_sinks(info)
        except BaseException:
            self._close_quietly(self.source.close, "source")
            self._ended.set()
            self._shut_down = True
            raise
        self._build(info)
        self.metrics.start()
        for thread in self._threads:
            thread.start()

    def stop(self, wait: bool = True) -> None:
        """Ask every thread to stop; with ``wait``, also join them and close the sinks.

        Safe to call from any thread, a sink callback included (it then only asks).
        Output files written so far are kept: stopping is not a failure.
        """
        self._request_stop()
        if wait and threading.current_thread() not in self._threads:
            self._shutdown()

    def join(self, timeout: float | None = None) -> RunStats:
        """Wait for the end of the stream (or ``stop``), shut down and return the stats.

        Re-raises the source or sink error that ended the run, after every thread has
        been joined. Raises ``TimeoutError`` if the run is still going after ``timeout``.
        """
        if not self._started:
            raise RuntimeError("Pipeline.join() called before start()")
        deadline = None if timeout is None else time.monotonic() + timeout
        # Short waits keep Ctrl-C responsive on every platform.
        while not self._ended.wait(0.1):
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"pipeline still running after {timeout} s")
        self._shutdown()
        if self.error is not None:
            raise self.error
        return self.stats()

    def run(self) -> RunStats:
        """Start, block until the end of the stream, and return the stats.

        On Ctrl-C every thread is stopped and joined, then ``KeyboardInterrupt`` is
        re-raised; ``stats()`` still has the numbers.
        """
        self.start()
        try:
            return self.join()
        except KeyboardInterrupt:
            log.info("interrupted: stopping the pipeline")
            self.stop()
            raise

    def stats(self) -> RunStats:
        """The stats so far; final once the run has ended."""
        return self.metrics.snapshot(
            dropped=sum(q.dropped for q in self._queues),
            detector_calls=int(getattr(self.analyzer, "detector_calls", 0)),
            extra={f"dropped_before_{q.name}": float(q.dropped) for q in self._queues},
        )

    def __enter__(self) -> Pipeline:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        if exc_type is None and self.error is not None:
            raise self.error

    # -- setup --------------------------------------------------------------------------

    def _open_sinks(self, info: SourceInfo) -> None:
        opened: list[Sink] = []
        try:
            for sink in self.sinks:
                sink.open(info)
                opened.append(sink)
        except BaseException:
            for sink in opened:
                _close_sink(sink, failed=True)
            raise

    def _build(self, info: SourceInfo) -> None:
        policy: Policy = "latest" if self.live else "block"
        self._pool = pool = FramePool(self.pool_slots, info.height, info.width)
        names = ("analyze", "swap", "output")
        self._queues = [
            FrameQueue(self.queue_size, policy, on_drop=lambda f: pool.release(f.image), name=n) for n in names
        ]
        q_analyze, q_swap, q_output = self._queues
        targets: list[tuple[str, Callable[[], None]]] = [
            ("capture", lambda: self._capture(q_analyze)),
            ("analyze", lambda: self._work(q_analyze, q_swap, self._analyze)),
            ("swap", lambda: self._work(q_swap, q_output, self._swap)),
            ("output", lambda: self._output(q_output)),
        ]
        self._threads = [
            threading.Thread(target=self._guard, args=(stage, fn), name=f"livefuse-{stage}") for stage, fn in targets
        ]

    # -- threads ------------------------------------------------------------------------

    def _guard(self, stage: str, body: Callable[[], None]) -> None:
        """Run one thread's loop; a source/sink error ends the whole run."""
        try:
            body()
        except BaseException as exc:  # noqa: BLE001 - recorded, re-raised by join()
            log.debug("%s thread failed", stage, exc_info=True)
            self._fail(exc)
        finally:
            self._close_downstream(stage)

    def _capture(self, out: FrameQueue[Frame]) -> None:
        assert self._pool is not None and self.info is not None
        time_base, index = self.info.time_base, 0
        while not self._stop.is_set():
            image = self._pool.acquire(stop=self._stop)
            if image is None:
                return
            started = time.monotonic_ns()
            try:
                pts = self.source.read(image)
            except StreamEnded:
                self._pool.release(image)
                return
            except BaseException:
                self._pool.release(image)
                raise
            now = time.monotonic_ns()
            frame = Frame(index=index, pts=pts, time_base=time_base, capture_ns=now, image=image)
            frame.stamps["capture:in"] = started
            frame.stamps["capture"] = now
            self.metrics.frame_in()
            index += 1
            if not self._hand_on(out, frame):
                return

    def _frames(self, inbox: FrameQueue[Frame]) -> Iterator[Frame]:
        """The frames arriving in ``inbox`` until the pipeline stops or the queue closes,
        each stamped ``<stage>:in`` when its stage takes it (the end of its queue wait)."""
        key = f"{inbox.name}:in"
        while not self._stop.is_set():
            try:
                frame = inbox.get()
            except QueueClosed:
                return
            if frame is not None:
                frame.stamps[key] = time.monotonic_ns()
                yield frame

    def _work(self, inbox: FrameQueue[Frame], out: FrameQueue[Frame], step: Callable[[Frame], None]) -> None:
        for frame in self._frames(inbox):
            step(frame)
            if not self._hand_on(out, frame):
                return

    def _analyze(self, frame: Frame) -> None:
        try:
            frame.faces = self.analyzer.analyze(frame)
        except Exception as exc:  # noqa: BLE001 - one bad frame must not end a live stream
            self._frame_failed(frame, "analyze", exc)
        frame.stamps["analyze"] = time.monotonic_ns()

    def _swap(self, frame: Frame) -> None:
        faces = frame.faces
        if faces is not None:
            # Swappers are all-or-nothing (see ``Swapper``): one that raises has written
            # nothing, so the frame goes on unswapped without a full-frame backup copy.
            try:
                self.swapper.swap(frame.image, faces)
            except Exception as exc:  # noqa: BLE001 - one bad frame must not end a live stream
                self._frame_failed(frame, "swap", exc)
        frame.stamps["swap"] = time.monotonic_ns()

    def _output(self, inbox: FrameQueue[Frame]) -> None:
        assert self._pool is not None
        for frame in self._frames(inbox):
            for sink in self.sinks:
                sink.send(frame)
            frame.stamps["output"] = time.monotonic_ns()
            self.metrics.frame_out(frame)
            if self._on_frame is not None:
                self._on_frame(frame)
            self._pool.release(frame.image)

    def _hand_on(self, out: FrameQueue[Frame], frame: Frame) -> bool:
        """Put ``frame`` into ``out``; False (and the slot returned) once it is closed."""
        try:
            out.put(frame)
            return True
        except QueueClosed:
            assert self._pool is not None
            self._pool.release(frame.image)
            return False

    def _frame_failed(self, frame: Frame, stage: str, exc: Exception) -> None:
        kind = f"{stage}:{type(exc).__name__}"
        frame.error = kind
        if self.metrics.error(kind):
            log.warning(
                "frame %d: %s failed (%s: %s); such frames pass through unswapped, "
                "further %s errors are counted but not logged",
                frame.index,
                stage,
                type(exc).__name__,
                exc,
                kind,
            )
            log.debug("traceback of the first %s error", kind, exc_info=exc)

    # -- shutdown -----------------------------------------------------------------------

    def _close_downstream(self, stage: str) -> None:
        order = ("capture", "analyze", "swap")
        if stage in order:
            self._queues[order.index(stage)].close()
        else:
            self._ended.set()

    def _fail(self, exc: BaseException) -> None:
        with self._lock:
            if self.error is None:
                self.error = exc
        self._request_stop()

    def _request_stop(self) -> None:
        self._stop.set()
        for queue in self._queues:
            queue.close()
        self._ended.set()

    def _shutdown(self) -> None:
        """Join every thread, then close sinks and source. Runs once."""
        with self._shutdown_lock:
            if self._shut_down or not self._started:
                return
            self._shut_down = True
            self.metrics.stop()
            self._request_stop()
            self._join_threads()
            failed = self.error is not None
            for sink in self.sinks:
                self._keep_first_error(partial(_close_sink, sink, failed), "sink")
            self._close_quietly(self.source.close, "source")
            close_analyzer = getattr(self.analyzer, "close", None)
            if close_analyzer is not None:
                self._close_quietly(close_analyzer, "analyzer")
            for queue in self._queues:
                queue.drain()

    def _join_threads(self) -> None:
        deadline = time.monotonic() + self.join_timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if stuck := self.alive_threads:
            log.error(
                "pipeline threads did not stop within %.1f s: %s. A source or sink call is "
                "blocking; they will exit when it returns.",
                self.join_timeout_s,
                ", ".join(stuck),
            )

    def _keep_first_error(self, close: Callable[[], None], what: str) -> None:
        """Run ``close``; a failure becomes the run's error unless it already has one."""
        try:
            close()
        except Exception as exc:  # noqa: BLE001 - reported through join()
            with self._lock:
                if self.error is None:
                    self.error = exc
                    return
            log.warning("closing the %s failed too: %s", what, exc, exc_info=True)

    @staticmethod
    def _close_quietly(close: Callable[[], None], what: str) -> None:
        try:
            close()
        except Exception as exc:  # noqa: BLE001 - closing must not hide the run's result
            log.warning("closing the %s failed: %s", what, exc, exc_info=True)


def _close_sink(sink: Sink, failed: bool) -> None:
    """Close ``sink``; after a failed run, ``abort()`` it instead when it can discard output."""
    abort = getattr(sink, "abort", None)
    if failed and callable(abort):
        abort()
    else:
        sink.close()
