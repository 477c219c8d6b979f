"""Per-frame timings and run counters, in bounded memory."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from livefuse.frame import STAGES, Frame

#: How many recent frames the latency percentiles are computed over.
DEFAULT_WINDOW = 100_000


@dataclass(frozen=True, slots=True)
class RunStats:
    """What a pipeline run did. Latencies are capture → output, in milliseconds."""

    frames_in: int
    frames_out: int
    dropped: int
    errors: dict[str, int]
    "Frames passed through untouched, by error kind (``stage:ExceptionName``)."
    fps: float
    "Frames out per second of wall time."
    latency_p50_ms: float
    latency_p95_ms: float
    latency_p99_ms: float
    stage_ms: dict[str, float]
    """Median ms per stage, from the previous stage's stamp, queue wait included.
    ``capture`` is stamped when ``read`` returns, so it is ~0: decode time is not in it."""
    budget: dict[str, dict[str, float]]
    """Where the milliseconds go, per stage: ``wait_p50``/``wait_p95`` in the queue before the
    stage and ``work_p50``/``work_p95`` in it (see :meth:`Frame.wait_work_ms`)."""
    detector_calls: int
    detector_rate: float
    "Detector calls per frame out (1.0 = detect every frame)."
    wall_s: float
    extra: dict[str, float] = field(default_factory=dict)
    "Anything else a caller wants in the JSON (queue high-water marks, ...)."

    def summary_line(self) -> str:
        """One line for a terminal: counts, fps, latency, detector calls."""
        line = (
            f"frames {self.frames_in} in / {self.frames_out} out / {self.dropped} dropped"
            f" | {self.fps:.1f} fps"
            f" | latency p50 {self.latency_p50_ms:.1f} ms p95 {self.latency_p95_ms:.1f} ms"
            f" | detector {self.detector_calls} calls ({self.detector_rate:.2f}/frame)"
        )
        errors = sum(self.errors.values())
        return f"{line} | {errors} frame errors" if errors else line


class Durations:
    """The last ``window`` durations of one kind of work (ms), in a preallocated ring; for work
    outside the pipeline's stages (a WebRTC frame's conversions). One writer thread."""

    def __init__(self, window: int = 600) -> None:
        self._ms = np.zeros(window, np.float32)
        self._count = 0

    def add(self, ms: float) -> None:
        self._ms[self._count % len(self._ms)] = ms
        self._count += 1

    def percentiles(self) -> dict[str, float]:
        """``p50`` and ``p95`` of the recent durations (0 before any)."""
        recent = self._ms[: min(self._count, len(self._ms))]
        if not recent.size:
            return {"p50": 0.0, "p95": 0.0}
        p50, p95 = np.percentile(recent, [50, 95])
        return {"p50": round(float(p50), 2), "p95": round(float(p95), 2)}


class Metrics:
    """Thread-safe collector the pipeline threads write into.

    Timings live in preallocated numpy rings of the last ``window`` frames, so a
    stream that runs for days uses the same memory as one that runs for a minute.
    """

    def __init__(self, window: int = DEFAULT_WINDOW) -> None:
        if window < 1:
            raise ValueError(f"Metrics window must be at least 1, got {window}")
        self._lock = threading.Lock()
        self._latency = np.zeros(window, np.float64)
        self._stages = np.zeros((len(STAGES), window), np.float32)
        self._waits = np.zeros((len(STAGES), window), np.float32)
        self._works = np.zeros((len(STAGES), window), np.float32)
        self._window = window
        self._recorded = 0
        self._frames_in = 0
        self._errors: Counter[str] = Counter()
        self._start_ns: int | None = None
        self._end_ns: int | None = None

    def start(self) -> None:
        """Mark the start of the run (wall time counts from here)."""
        self._start_ns = time.monotonic_ns()
        self._end_ns = None

    def stop(self) -> None:
        """Mark the end of the run."""
        self._end_ns = time.monotonic_ns()

    def frame_in(self) -> None:
        """Count one captured frame."""
        with self._lock:
            self._frames_in += 1

    def error(self, kind: str) -> bool:
        """Count one frame error of ``kind``. True the first time this kind is seen."""
        with self._lock:
            self._errors[kind] += 1
            return self._errors[kind] == 1

    def frame_out(self, frame: Frame) -> None:
        """Record the timings of a frame that reached the output stage."""
        latency = frame.latency_ms()
        stage_ms = [_stage_ms(frame, stage) for stage in STAGES]
        wait_work = [frame.wait_work_ms(stage) for stage in STAGES]
        with self._lock:
            i = self._recorded % self._window
            self._latency[i] = latency
            self._stages[:, i] = stage_ms
            for k, (wait, work) in enumerate(wait_work):
                self._waits[k, i], self._works[k, i] = wait, work
            self._recorded += 1

    @property
    def frames_out(self) -> int:
        """Frames recorded by ``frame_out``."""
        return self._recorded

    def snapshot(self, *, dropped: int = 0, detector_calls: int = 0, extra: dict[str, float] | None = None) -> RunStats:
        """The stats so far (or of the whole run once ``stop`` was called)."""
        with self._lock:
            n = min(self._recorded, self._window)
            latency = self._latency[:n].copy()
            stages = self._stages[:, :n].copy()
            waits, works = self._waits[:, :n].copy(), self._works[:, :n].copy()
            frames_out, frames_in = self._recorded, self._frames_in
            errors = dict(self._errors)
        wall_s = self._wall_s()
        p50, p95, p99 = np.percentile(latency, [50, 95, 99]) if n else (0.0, 0.0, 0.0)
        return RunStats(
            frames_in=frames_in,
            frames_out=frames_out,
            dropped=dropped,
            errors=errors,
            fps=frames_out / wall_s if wall_s > 0 else 0.0,
            latency_p50_ms=float(p50),
            latency_p95_ms=float(p95),
            latency_p99_ms=float(p99),
            stage_ms={s: float(np.median(stages[k])) if n else 0.0 for k, s in enumerate(STAGES)},
            budget={s: _budget(waits[k], works[k]) for k, s in enumerate(STAGES)},
            detector_calls=detector_calls,
            detector_rate=detector_calls / frames_out if frames_out else 0.0,
            wall_s=wall_s,
            extra=dict(extra or {}),
        )

    def _wall_s(self) -> float:
        if self._start_ns is None:
            return 0.0
        end = self._end_ns if self._end_ns is not None else time.monotonic_ns()
        return (end - self._start_ns) / 1e9


def _stage_ms(frame: Frame, stage: str) -> float:
    # A stage that passed a frame through without stamping it (none today) counts as 0.
    return frame.stage_ms(stage) if stage in frame.stamps else 0.0


def _budget(waits: np.ndarray, works: np.ndarray) -> dict[str, float]:
    if not waits.size:
        return {"wait_p50": 0.0, "wait_p95": 0.0, "work_p50": 0.0, "work_p95": 0.0}
    (w50, w95), (k50, k95) = np.percentile(waits, [50, 95]), np.percentile(works, [50, 95])
    return {"wait_p50": float(w50), "wait_p95": float(w95), "work_p50": float(k50), "work_p95": float(k95)}
