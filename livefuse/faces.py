"""``Faces``: N faces of one frame as aligned arrays (struct of arrays)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np

#: Number of points of the MediaPipe face mesh.
MESH_POINTS = 468


def _check(name: str, value: np.ndarray | None, shape: tuple[int | None, ...], n: int) -> None:
    if value is None:
        return
    want = (n, *shape[1:])
    if value.ndim != len(want) or any(w is not None and w != s for w, s in zip(want, value.shape)):
        raise ValueError(f"Faces.{name} must have shape {want}, got {value.shape}")


@dataclass(slots=True)
class Faces:
    """N faces of one frame. Row ``i`` of every array describes face ``i``.

    Coordinates are in pixels of the frame they were found in. ``Faces`` supports
    boolean-mask and index selection: ``faces[faces.scores > 0.5]``.
    """

    boxes: np.ndarray
    "(n, 4) float32: x1, y1, x2, y2."
    scores: np.ndarray
    "(n,) float32: detector confidence, or the mesh presence score for tracked faces."
    kps: np.ndarray
    "(n, 5, 2) float32: right eye, left eye, nose, right mouth corner, left mouth corner (image left to right)."
    landmarks: np.ndarray | None = None
    "(n, 468, 3) float32: mesh points x, y in frame pixels and z in the same scale, or None."
    presence: np.ndarray | None = None
    "(n,) float32: the mesh model's face-presence probability, or None."
    track_ids: np.ndarray | None = None
    "(n,) int64: stable id of each face's track, or None before tracking."

    def __post_init__(self) -> None:
        n = len(self.boxes)
        _check("boxes", self.boxes, (None, 4), n)
        _check("scores", self.scores, (None,), n)
        _check("kps", self.kps, (None, 5, 2), n)
        _check("landmarks", self.landmarks, (None, MESH_POINTS, 3), n)
        _check("presence", self.presence, (None,), n)
        _check("track_ids", self.track_ids, (None,), n)

    @classmethod
    def empty(cls) -> Faces:
        """No faces."""
        return cls(
            boxes=np.zeros((0, 4), np.float32),
            scores=np.zeros((0,), np.float32),
            kps=np.zeros((0, 5, 2), np.float32),
        )

    def __len__(self) -> int:
        return len(self.boxes)

    def __getitem__(self, index: Any) -> Faces:
        if isinstance(index, (int, np.integer)):
            index = [int(index)]
        values: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        picked: dict[str, Any] = {k: None if v is None else v[index] for k, v in values.items()}
        return Faces(**picked)

    @property
    def areas(self) -> np.ndarray:
        """(n,) box areas in square pixels."""
        wh = np.clip(self.boxes[:, 2:] - self.boxes[:, :2], 0, None)
        return wh[:, 0] * wh[:, 1]

    def largest(self) -> int:
        """Index of the face with the largest box. Raises ``IndexError`` when empty."""
        if not len(self):
            raise IndexError("no faces")
        return int(np.argmax(self.areas))
