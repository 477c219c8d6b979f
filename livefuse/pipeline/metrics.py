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
        with self._lock:
            i = self._recorded % self._window
            self._latency[i] = latency
            self._stages[:, i] = stage_ms
            self._recorded += 1

    @property
    def frames_out(self) -> int:
        """Frames recorded by ``frame_out``."""
        return self._recorded

    def snapshot(
        self, *, dropped: int = 0, detector_calls: int = 0, extra: dict[str, float] | None = None
    ) -> RunStats:
        """The stats so far (or of the whole run once ``stop`` was called)."""
        with self._lock:
            n = min(self._recorded, self._window)
            latency = self._latency[:n].copy()
            stages = self._stages[:, :n].copy()
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
