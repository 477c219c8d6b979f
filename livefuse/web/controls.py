"""Live settings of a session, and the stage wrappers that read them once per frame.

The server never touches a running stage: it builds a new immutable ``SwapState`` (with a
new swapper, built by the engine exactly as ``livefuse cam`` builds it, when the face or a
swap option changed) and publishes it with one reference assignment. The pipeline's
analyze and swap threads read ``controls.state`` once per frame, so a change takes
effect on the next frame, without reconnecting.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from livefuse.config import Settings, SwapSettings, with_options
from livefuse.faces import Faces
from livefuse.frame import Frame
from livefuse.pipeline.stages import Analyzer, Swapper

#: Settings a session may choose for itself (the rest are the server's).
SESSION_SETTINGS = ("keep_mouth", "swapper", "enhancer", "mask")


@dataclass(frozen=True, slots=True)
class SwapState:
    """One consistent set of a session's live settings. Replaced whole, never changed."""

    settings: SwapSettings
    "The server's swap settings with this session's own choices (``SESSION_SETTINGS``)."
    swap: bool = True
    "Swap faces; off passes frames through untouched (and skips face tracking)."
    face: str | None = None
    "The source face as users know it: a sample's name, the --source photo, an upload."
    photo: Path | None = None
    swapper: Swapper | None = None
    "This session's own swap stage for ``photo`` and ``settings`` (its swap thread's only)."

    def public(self) -> dict[str, Any]:
        """The settings as the API shows them."""
        s = self.settings
        return {
            "swap": self.swap,
            "face": self.face,
            "keep_mouth": s.keep_mouth,
            "swapper": s.swapper,
            "enhancer": s.enhancer,
            "masks": sorted(s.masks),
        }


class SwapControls:
    """A session's live knobs: the server replaces the state, the stages read it."""

    def __init__(self, state: SwapState) -> None:
        self._state = state
        self._lock = threading.Lock()

    @property
    def state(self) -> SwapState:
        """The current settings (one reference read: always a consistent set)."""
        return self._state

    def update(self, **changes: Any) -> SwapState:
        """Publish a copy of the state with ``changes``; returns it."""
        with self._lock:
            self._state = replace(self._state, **changes)
            return self._state


class LiveAnalyzer:
    """The session's tracker, skipped while swapping is off.

    Off then costs only the transport. When swapping comes back on the tracker starts
    afresh: tracks from before the pause describe old frames.
    """

    def __init__(self, tracker: Analyzer, controls: SwapControls) -> None:
        self._tracker = tracker
        self._controls = controls
        self._paused = False

    @property
    def detector_calls(self) -> int:
        """Detector runs so far (the pipeline reports the rate)."""
        return int(getattr(self._tracker, "detector_calls", 0))

    def close(self) -> None:
        """Stop the tracker's background detector (the pipeline calls this at its end)."""
        close = getattr(self._tracker, "close", None)
        if close is not None:
            close()

    def analyze(self, frame: Frame) -> Faces:
        """The tracker's faces, or none while swapping is off."""
        if not self._controls.state.swap:
            self._paused = True
            return Faces.empty()
        if self._paused:
            self._tracker.reset()
            self._paused = False
        return self._tracker.analyze(frame)

    def reset(self) -> None:
        """Forget every track."""
        self._tracker.reset()


class LiveSwapper:
    """Swaps with whatever swap stage the session's current state holds, if swapping is on."""

    def __init__(self, controls: SwapControls) -> None:
        self._controls = controls

    def swap(self, image: np.ndarray, faces: Faces) -> None:
        """Put the chosen face onto ``faces``; no-op while off or while no face is chosen."""
        state = self._controls.state
        if state.swap and state.swapper is not None:
            state.swapper.swap(image, faces)


def with_choices(settings: SwapSettings, **choices: Any) -> SwapSettings:
    """``settings`` with a session's choices (``SESSION_SETTINGS`` options) parsed and applied."""
    unknown = set(choices) - set(SESSION_SETTINGS)
    if unknown:
        raise ValueError(f"not a session setting: {', '.join(sorted(unknown))}")
    return with_options(Settings(swap=settings), choices).swap
