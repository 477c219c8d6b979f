"""The frame envelope that travels through the pipeline."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from livefuse.faces import Faces

#: Stage names, in pipeline order, used as keys of :attr:`Frame.stamps`.
STAGES = ("capture", "analyze", "swap", "output")


@dataclass(slots=True)
class Frame:
    """One video frame and what the pipeline learned about it.

    ``pts``/``time_base`` and ``capture_ns`` are stamped once, at capture, and copied
    forward unchanged by every stage (as aiortc does for ``VideoFrame``).
    """

    index: int
    "Position in the stream, counting from 0 (dropped frames keep their index)."
    pts: int
    "Presentation timestamp in ``time_base`` units."
    time_base: Fraction
    "Unit of ``pts`` in seconds."
    capture_ns: int
    "``time.monotonic_ns()`` when the frame was captured."
    image: np.ndarray
    "H×W×3 BGR uint8. Stages may write into it in place (the swap writes only face regions)."
    faces: Faces | None = None
    "Faces found or tracked in this frame, set by the analysis stage."
    stamps: dict[str, int] = field(default_factory=dict)
    """Stage name → ``monotonic_ns`` when that stage finished with the frame, and
    ``<stage>:in`` → when it took the frame (the end of its wait in the queue before it)."""
    error: str | None = None
    "Kind of the error that made a stage pass this frame through untouched."

    @classmethod
    def of(cls, image: np.ndarray, index: int = 0, fps: int = 30) -> Frame:
        """``image`` as frame ``index`` of a ``fps`` stream, captured now: for library users who
        hand livefuse their own pictures."""
        return cls(index, index, Fraction(1, fps), time.monotonic_ns(), image)

    @property
    def seconds(self) -> float:
        """The presentation time in seconds."""
        return float(self.pts * self.time_base)

    def stage_ms(self, stage: str) -> float:
        """Milliseconds spent in ``stage`` (from the previous stamp, or capture)."""
        order = [s for s in STAGES if s in self.stamps]
        i = order.index(stage)
        start = self.capture_ns if i == 0 else self.stamps[order[i - 1]]
        return (self.stamps[stage] - start) / 1e6

    def wait_work_ms(self, stage: str) -> tuple[float, float]:
        """Milliseconds ``stage`` had the frame waiting in its queue, and working on it.
        For ``capture`` the wait is 0 and the work is the source's ``read`` (decode or convert,
        and for live sources the wait for the next frame)."""
        taken, done = self.stamps.get(f"{stage}:in"), self.stamps.get(stage)
        if taken is None or done is None:
            return 0.0, 0.0
        order = [s for s in STAGES if s in self.stamps]
        i = order.index(stage)
        before = taken if i == 0 else self.stamps[order[i - 1]]
        return (taken - before) / 1e6, (done - taken) / 1e6

    def latency_ms(self) -> float:
        """Capture → output latency in milliseconds."""
        return (self.stamps["output"] - self.capture_ns) / 1e6
