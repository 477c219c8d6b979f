"""Pipeline behaviour with fake stages: order, back-pressure, drops, errors, shutdown."""

from __future__ import annotations

import _thread
import logging
import threading
import time
from fractions import Fraction

import numpy as np
import pytest

from livefuse.errors import OutputError, SourceError, SourceStalled, StreamEnded
from livefuse.faces import Faces
from livefuse.frame import Frame
from livefuse.io.sinks import MemorySink, NullSink
from livefuse.pipeline import Pipeline, RunStats
from livefuse.pipeline.metrics import Metrics
from livefuse.pipeline.stages import SourceInfo

W, H = 64, 48
MARK = (0, 0, 255)


def draw_counter(image: np.ndarray, n: int) -> None:
    """16-bit counter as black/white 4-px blocks along the top rows."""
    image[:] = 60
    for bit in range(16):
        image[:8, bit * 4 : (bit + 1) * 4] = 255 if (n >> bit) & 1 else 0


def read_counter(image: np.ndarray) -> int:
    blocks = image[:8, : 16 * 4].reshape(8, 16, 4, 3).mean(axis=(0, 2, 3))
    return int(sum(1 << bit for bit in range(16) if blocks[bit] > 128))


class CounterSource:
    """In-memory source: frame n shows counter n. Optional pacing, failure and endlessness."""

    def __init__(
        self,
        n: int | None = 20,
        live: bool = False,
        fps: float = 30.0,
        paced: bool = False,
        fail_at: int | None = None,
        error: Exception | None = None,
    ) -> None:
        self.n, self.live, self.fps, self.paced = n, live, fps, paced
        self.fail_at, self.error = fail_at, error or SourceError("camera unplugged")
        self.i = 0
        self.opened = self.closed = False
        self._next = 0.0

    def open(self) -> SourceInfo:
        self.opened, self._next = True, time.monotonic()
        return SourceInfo(W, H, self.fps, self.live, Fraction(1, int(self.fps)), self.n, name="counter")

    def read(self, image: np.ndarray) -> int:
        if self.paced:
            time.sleep(max(0.0, self._next - time.monotonic()))
            self._next += 1 / self.fps
        if self.fail_at is not None and self.i == self.fail_at:
            raise self.error
        if self.n is not None and self.i >= self.n:
            raise StreamEnded("done")
        draw_counter(image, self.i)
        self.i += 1
        return self.i - 1

    def close(self) -> None:
        self.closed = True


class FakeAnalyzer:
    """Finds one face everywhere; can sleep, and raise on chosen frames."""

    def __init__(self, sleep_s: float = 0.0, fail_on: frozenset[int] = frozenset()) -> None:
        self.sleep_s, self.fail_on = sleep_s, fail_on
        self.detector_calls = 0

    def analyze(self, frame: Frame) -> Faces:
        if self.sleep_s:
            time.sleep(self.sleep_s)
        if frame.index in self.fail_on:
            raise RuntimeError(f"analyzer broke on frame {frame.index}")
        self.detector_calls += 1
        box = np.array([[10, 10, 30, 30]], np.float32)
        return Faces(box, np.ones(1, np.float32), np.zeros((1, 5, 2), np.float32))

    def reset(self) -> None:
        self.detector_calls = 0


class MarkingSwapper:
    """Paints the bottom-right corner; on chosen frames raises first (swappers are all or nothing)."""

    def __init__(self, sleep_s: float = 0.0, fail_on: frozenset[int] = frozenset()) -> None:
        self.sleep_s, self.fail_on = sleep_s, fail_on
        self.seen: list[int] = []

    def swap(self, image: np.ndarray, faces: Faces) -> None:
        if self.sleep_s:
            time.sleep(self.sleep_s)
        counter = read_counter(image)
        self.seen.append(counter)
        if counter in self.fail_on:
            raise ValueError(f"swap broke on frame {counter}")
        image[-8:, -8:] = MARK


def is_marked(image: np.ndarray) -> bool:
    return bool((image[-8:, -8:] == MARK).all())


def livefuse_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("livefuse-")]


class RecordingSink(MemorySink):
    def __init__(self, fail_at: int | None = None) -> None:
        super().__init__()
        self.fail_at = fail_at
        self.opened_with: SourceInfo | None = None

    def open(self, info: SourceInfo) -> None:
        self.opened_with = info
        super().open(info)

    def send(self, frame: Frame) -> None:
        if self.fail_at is not None and frame.index == self.fail_at:
            raise OutputError("disk full")
        super().send(frame)


# -- file mode ---------------------------------------------------------------------------


def test_file_mode_outputs_every_frame_in_order_with_back_pressure() -> None:
    sink = RecordingSink()
    source = CounterSource(n=60)
    # A slow middle stage: with "block" queues capture must wait, never drop.
    stats = Pipeline(source, FakeAnalyzer(sleep_s=0.002), MarkingSwapper(), [sink]).run()
    assert [f.index for f in sink.frames] == list(range(60))
    assert [read_counter(f.image) for f in sink.frames] == list(range(60))
    assert [f.pts for f in sink.frames] == list(range(60))
    assert all(is_marked(f.image) for f in sink.frames)
    assert stats.frames_in == stats.frames_out == 60 and stats.dropped == 0
    assert sink.opened_with is not None and sink.opened_with.width == W and sink.closed
    assert source.closed


def test_stats_and_summary_line() -> None:
    stats = Pipeline(CounterSource(n=30), FakeAnalyzer(), MarkingSwapper(), [NullSink()]).run()
    assert isinstance(stats, RunStats)
    assert stats.detector_calls == 30 and stats.detector_rate == pytest.approx(1.0)
    assert stats.fps > 0 and stats.wall_s > 0
    assert 0 < stats.latency_p50_ms <= stats.latency_p95_ms <= stats.latency_p99_ms
    assert set(stats.stage_ms) == {"capture", "analyze", "swap", "output"}
    line = stats.summary_line()
    assert "\n" not in line
    for part in ("30 in", "30 out", "0 dropped", "fps", "p50", "p95", "detector 30 calls"):
        assert part in line


def test_budget_shows_where_the_milliseconds_go() -> None:
    # File mode: a 20 ms swap is the bottleneck, so frames queue in front of it, not elsewhere.
    stats = Pipeline(CounterSource(n=30), FakeAnalyzer(), MarkingSwapper(sleep_s=0.020), [NullSink()]).run()
    budget = stats.budget
    assert set(budget) == {"capture", "analyze", "swap", "output"}
    assert set(budget["swap"]) == {"wait_p50", "wait_p95", "work_p50", "work_p95"}
    assert 19 <= budget["swap"]["work_p50"] < 60, budget
    assert budget["analyze"]["work_p50"] < 10 and budget["output"]["work_p50"] < 10, budget
    assert budget["swap"]["wait_p50"] > 10, budget  # the back-pressure queue holds frames for it
    assert budget["capture"]["wait_p95"] == 0.0
    # Each frame's parts add up to its latency.
    frame_parts = sum(b["work_p50"] + b["wait_p50"] for b in budget.values())
    assert frame_parts == pytest.approx(stats.latency_p50_ms + budget["capture"]["work_p50"], rel=0.5)


def test_on_frame_sees_every_frame_before_its_slot_is_reused() -> None:
    seen: list[int] = []
    Pipeline(
        CounterSource(n=10),
        FakeAnalyzer(),
        MarkingSwapper(),
        [],
        on_frame=lambda f: seen.append(read_counter(f.image)),
    ).run()
    assert seen == list(range(10))


# -- live mode ---------------------------------------------------------------------------


def test_live_mode_bounds_latency_and_counts_drops() -> None:
    # 30 fps paced source, a 60 ms stage: half the frames cannot be processed.
    source = CounterSource(n=45, live=True, paced=True)
    sink = RecordingSink()
    stats = Pipeline(source, FakeAnalyzer(sleep_s=0.060), MarkingSwapper(), [sink]).run()
    assert stats.dropped > 0
    assert stats.frames_out + stats.dropped == stats.frames_in == 45
    # Without dropping, latency would grow to ~45*27 ms ≈ 1.2 s by the end. With 2-slot
    # latest-frame queues it stays near 2 frame periods + 60 ms.
    assert stats.latency_p95_ms < 250, stats.summary_line()
    indexes = [f.index for f in sink.frames]
    assert indexes == sorted(indexes) and len(set(indexes)) == len(indexes)


def test_live_override_on_a_file_source() -> None:
    pipeline = Pipeline(CounterSource(n=5), FakeAnalyzer(), MarkingSwapper(), [], live=True)
    pipeline.run()
    assert pipeline.live is True


# -- per-frame errors --------------------------------------------------------------------


def test_failing_frames_pass_through_unswapped(caplog: pytest.LogCaptureFixture) -> None:
    sink = RecordingSink()
    caplog.set_level(logging.WARNING, logger="livefuse.pipeline.pipeline")
    stats = Pipeline(
        CounterSource(n=20),
        FakeAnalyzer(fail_on=frozenset({2, 4})),
        MarkingSwapper(fail_on=frozenset({5, 7, 9})),
        [sink],
    ).run()
    assert [f.index for f in sink.frames] == list(range(20))  # the stream went on
    assert stats.errors == {"analyze:RuntimeError": 2, "swap:ValueError": 3}
    by_index = {f.index: f for f in sink.frames}
    for i in (2, 4, 5, 7, 9):
        # Unswapped: the frame's own pixels are intact.
        assert not is_marked(by_index[i].image) and read_counter(by_index[i].image) == i
    assert by_index[2].error == "analyze:RuntimeError"
    assert by_index[5].error == "swap:ValueError"
    assert all(is_marked(f.image) and f.error is None for f in sink.frames if f.index not in {2, 4, 5, 7, 9})
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2  # once per kind, not once per frame
    assert "swap:ValueError" in " ".join(r.getMessage() for r in warnings)


# -- fatal errors ------------------------------------------------------------------------


@pytest.mark.parametrize("error", [SourceError("camera unplugged"), SourceStalled("no frames")])
def test_source_error_ends_run_and_is_reraised(error: SourceError) -> None:
    source = CounterSource(n=None, fail_at=7, error=error)
    sink = RecordingSink()
    with pytest.raises(type(error), match=str(error)):
        Pipeline(source, FakeAnalyzer(), MarkingSwapper(), [sink]).run()
    assert livefuse_threads() == []
    assert source.closed and sink.closed
    # Frames still in flight when the source failed are discarded, never reordered.
    indexes = [f.index for f in sink.frames]
    assert indexes == list(range(len(indexes))) and len(indexes) <= 7


def test_sink_error_ends_run_and_is_reraised() -> None:
    source = CounterSource(n=None)
    pipeline = Pipeline(source, FakeAnalyzer(), MarkingSwapper(), [RecordingSink(fail_at=3)])
    with pytest.raises(OutputError, match="disk full"):
        pipeline.run()
    assert livefuse_threads() == [] and source.closed
    assert pipeline.stats().frames_out == 3


def test_sink_open_failure_starts_nothing() -> None:
    class BadSink(NullSink):
        def open(self, info: SourceInfo) -> None:
            raise OutputError("no such device")

    good = RecordingSink()
    source = CounterSource()
    with pytest.raises(OutputError, match="no such device"):
        Pipeline(source, FakeAnalyzer(), MarkingSwapper(), [good, BadSink()]).run()
    assert source.closed and good.closed and livefuse_threads() == []


def test_source_open_failure_is_raised() -> None:
    class Unopenable(CounterSource):
        def open(self) -> SourceInfo:
            raise SourceError("cannot open camera 99")

    pipeline = Pipeline(Unopenable(), FakeAnalyzer(), MarkingSwapper(), [])
    with pytest.raises(SourceError, match="camera 99"):
        pipeline.run()
    assert not pipeline.running


# -- shutdown ----------------------------------------------------------------------------


def test_stop_joins_every_thread() -> None:
    before = set(threading.enumerate())
    source = CounterSource(n=None, live=True, paced=True)
    pipeline = Pipeline(source, FakeAnalyzer(sleep_s=0.01), MarkingSwapper(), [NullSink()])
    pipeline.start()
    time.sleep(0.2)
    assert len(livefuse_threads()) == 4 and pipeline.running
    pipeline.stop()
    assert set(threading.enumerate()) == before
    assert pipeline.alive_threads == [] and not pipeline.running and source.closed
    assert pipeline.join().frames_out > 0


def test_stop_from_a_sink_callback_does_not_deadlock() -> None:
    holder: list[Pipeline] = []

    def quit_at_5(frame: Frame) -> None:
        if frame.index == 5:
            holder[0].stop()  # as the preview window's 'q' key does, from the output thread

    pipeline = Pipeline(CounterSource(n=None), FakeAnalyzer(), MarkingSwapper(), [], on_frame=quit_at_5)
    holder.append(pipeline)
    stats = pipeline.run()
    assert stats.frames_out >= 6 and livefuse_threads() == []


def test_keyboard_interrupt_shuts_down_cleanly() -> None:
    pipeline = Pipeline(CounterSource(n=None, live=True, paced=True), FakeAnalyzer(), MarkingSwapper(), [])
    threading.Timer(0.2, _thread.interrupt_main).start()
    with pytest.raises(KeyboardInterrupt):
        pipeline.run()
    assert livefuse_threads() == []
    assert pipeline.stats().frames_out > 0


def test_context_manager_stops_on_exit() -> None:
    with Pipeline(CounterSource(n=None, live=True, paced=True), FakeAnalyzer(), MarkingSwapper(), []) as p:
        time.sleep(0.1)
        assert p.running
    assert livefuse_threads() == []


def test_join_timeout_and_single_use() -> None:
    pipeline = Pipeline(CounterSource(n=None, live=True, paced=True), FakeAnalyzer(), MarkingSwapper(), [])
    pipeline.start()
    with pytest.raises(TimeoutError):
        pipeline.join(timeout=0.05)
    pipeline.stop()
    with pytest.raises(RuntimeError, match="runs once"):
        pipeline.start()


# -- metrics -----------------------------------------------------------------------------


def test_metrics_memory_is_bounded() -> None:
    metrics = Metrics(window=8)
    metrics.start()
    for i in range(100):
        frame = Frame(i, i, Fraction(1, 30), capture_ns=1_000_000 * i, image=np.zeros((1, 1, 3), np.uint8))
        frame.stamps.update(
            capture=frame.capture_ns,
            analyze=frame.capture_ns + 1_000_000,
            swap=frame.capture_ns + 2_000_000,
            output=frame.capture_ns + 3_000_000 + i,
        )
        metrics.frame_out(frame)
    stats = metrics.snapshot()
    assert stats.frames_out == 100
    assert metrics._latency.shape == (8,)  # the ring, not a growing list
    # Percentiles cover the last 8 frames only (latency 3 ms + i ns).
    assert stats.latency_p50_ms == pytest.approx(3.0, abs=1e-3)
    assert stats.stage_ms["analyze"] == pytest.approx(1.0)
