"""The small contracts each pipeline stage implements."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Protocol

import numpy as np

from livefuse.faces import Faces
from livefuse.frame import Frame


@dataclass(frozen=True, slots=True)
class SourceInfo:
    """What a source delivers, known once it is open."""

    width: int
    height: int
    fps: float
    live: bool
    "True for cameras and network streams: newest frame wins. False for files: back-pressure."
    time_base: Fraction
    frame_count: int | None = None
    "Number of frames when known (files), else None."
    audio_path: Path | None = None
    "A file whose audio an output may copy, or None."
    name: str = ""


class Source(Protocol):
    """Delivers frames. ``read`` fills a caller-owned buffer so capture allocates nothing per frame."""

    def open(self) -> SourceInfo:
        """Open the input and say what it delivers. Raises ``SourceError`` with a fix."""
        ...

    def read(self, image: np.ndarray) -> int:
        """Write the next frame into ``image`` (H×W×3 BGR uint8) and return its pts.

        Raises ``StreamEnded`` at the end of a file, ``SourceStalled`` when a live source
        stops delivering.
        """
        ...

    def close(self) -> None:
        """Release the input. Idempotent."""
        ...


class Analyzer(Protocol):
    """Finds and tracks faces: sets ``frame.faces``.

    An analyzer may also define ``close()`` (a background detector's thread, say): the
    pipeline calls it once its threads have stopped.
    """

    def analyze(self, frame: Frame) -> Faces: ...

    def reset(self) -> None: ...


class Swapper(Protocol):
    """Puts the source face onto ``faces`` in ``image``, in place, touching only face regions.

    All or nothing: a swapper computes every face before it writes any, so when ``swap``
    raises, ``image`` is untouched and the frame can go on unswapped.
    """

    def swap(self, image: np.ndarray, faces: Faces) -> None: ...


class Sink(Protocol):
    """Consumes processed frames (file, window, virtual camera, WebRTC)."""

    def open(self, info: SourceInfo) -> None: ...

    def send(self, frame: Frame) -> None: ...

    def close(self) -> None: ...
