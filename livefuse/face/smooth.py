"""One-Euro filter for face landmarks: steady when still, quick when moving."""

from __future__ import annotations

import math

import numpy as np


def _alpha(cutoff: float, dt: float) -> float:
    tau = 1.0 / (2 * math.pi * cutoff)
    return 1.0 / (1.0 + tau / dt)


class OneEuroFilter:
    """Smooths one face's landmarks over time (Casiez et al., CHI 2012).

    The cutoff rises with the face's speed, measured in face sizes per second and shared
    by all points, so the filter removes jitter from a still face without lagging a moving
    one, and never bends the face's shape by filtering points differently.
    """

    def __init__(self, min_cutoff: float = 2.0, beta: float = 25.0, d_cutoff: float = 2.0) -> None:
        self.min_cutoff = min_cutoff
        self.beta = beta
        self.d_cutoff = d_cutoff
        self.reset()

    def reset(self) -> None:
        """Forget the history: the next sample passes through unchanged."""
        self._x: np.ndarray | None = None
        self._speed = 0.0
        self._t = 0.0

    def __call__(self, x: np.ndarray, t: float, scale: float) -> np.ndarray:
        """Filtered copy of ``x`` observed at time ``t`` (s); ``scale`` is the face size (px)."""
        if self._x is None:
            self._x, self._t = x.copy(), t
            return self._x
        dt = t - self._t if t > self._t else 1 / 30
        self._t = t
        speed = float(np.abs(x[:, :2] - self._x[:, :2]).mean()) / max(scale, 1.0) / dt
        self._speed += _alpha(self.d_cutoff, dt) * (speed - self._speed)
        a = _alpha(self.min_cutoff + self.beta * self._speed, dt)
        self._x += a * (x - self._x)
        return self._x
