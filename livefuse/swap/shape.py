"""Shape transfer: the target's inner face takes the source's proportions.

Painting the source's texture onto the target's own landmarks keeps the target's geometry
(eye spacing, nose length and width, mouth width, brow line), and geometry is much of what
makes a face recognisable. Here the source's mesh is brought into the target's pose by a 3-D
similarity fit on points that carry pose but little identity or expression (the upper face
outline and the forehead), and the target's inner landmarks move towards the fitted source's
by a strength s in 0..1:

- the face outline never moves (the oval and the join to the target's surroundings stay the
  target's), and the move fades in over a band inside it;
- nose, brows, cheeks: towards the fitted source point by point (the source's shape);
- each eye and the lips move as a whole, by the similarity that takes the target's corners
  onto the source's: they keep the target's own opening (blinks, speech) and gaze, and an open
  mouth's kept interior (the target's own pixels, moved by the same map) stays between them;
- the points between are smoothed over the mesh, so nothing folds where whole features and
  point-by-point moves meet.

The source's shape is fixed per photo; per frame only the pose fit and a (468 × 468) matrix
product run (a few tens of microseconds).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from livefuse.face.canonical import TRIANGLES, VERTICES
from livefuse.face.surface import BROW_LEFT, BROW_RIGHT, EYE_LEFT, EYE_RIGHT, LIPS_OUTER
from livefuse.face.topology import FACE_OVAL, MOUTH_INNER, MOUTH_LEFT, MOUTH_RIGHT

#: The move fades in from the outline over this share of the face's width, inwards.
FADE = 0.18
#: Smoothing passes over the mesh for the points between features (each: half own, half
#: the neighbours' mean).
SMOOTHING = 6


def _canonical_2d() -> np.ndarray:
    """Canonical vertices seen from the front, in image orientation (y down)."""
    return (VERTICES[:, :2] * np.array([1, -1], np.float32)).astype(np.float32)


def _inside(points: np.ndarray, ring: np.ndarray, grow: float = 0.0) -> np.ndarray:
    """(N,) bool: ``points`` inside the convex hull of ``ring`` (plus ``grow`` cm)."""
    hull = cv2.convexHull(ring.astype(np.float32))
    return np.array([cv2.pointPolygonTest(hull, (float(x), float(y)), True) >= -grow for x, y in points])


def _outline_weight() -> np.ndarray:
    """(468,) 0 on the outline and outside it, rising smoothly to 1 at ``FADE`` × the face's
    width inside it."""
    flat = _canonical_2d()
    oval = flat[FACE_OVAL]
    width = float(np.ptp(oval[:, 0]))
    depth = np.array([cv2.pointPolygonTest(oval, (float(x), float(y)), True) for x, y in flat]) / width
    t = np.clip(depth / FADE, 0, 1)
    w = t * t * (3 - 2 * t)
    w[FACE_OVAL] = 0
    return w.astype(np.float32)


def _groups() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vertex sets that move as a whole: the image-left eye, the image-right eye, the lips."""
    flat = _canonical_2d()
    return (
        np.flatnonzero(_inside(flat, flat[EYE_LEFT], 0.02)),
        np.flatnonzero(_inside(flat, flat[EYE_RIGHT], 0.02)),
        np.flatnonzero(_inside(flat, flat[LIPS_OUTER], 0.02)),
    )


#: Corner pairs that define each eye's similarity (outer, inner).
EYE_CORNERS = (np.array([33, 133]), np.array([263, 362]))
#: The top of the upper lip at the middle.
UPPER_LIP = 0
#: The lips are scaled by at most this factor (or its inverse) to the source's width.
MOUTH_SCALE = 1.25
#: Largest move of any point, as a share of the face's width.
MAX_MOVE = 0.07


def _smoother(pinned: np.ndarray) -> np.ndarray:
    """(468, 468) float32 linear map applied to the displacements: ``SMOOTHING`` passes of
    neighbour averaging over the mesh's edges, ``pinned`` vertices keeping their own value."""
    n = len(VERTICES)
    adj = np.zeros((n, n), np.float32)
    for a, b in ((0, 1), (1, 2), (2, 0)):
        adj[TRIANGLES[:, a], TRIANGLES[:, b]] = 1
        adj[TRIANGLES[:, b], TRIANGLES[:, a]] = 1
    step = 0.5 * np.eye(n, dtype=np.float32) + 0.5 * adj / np.maximum(adj.sum(1, keepdims=True), 1)
    step[pinned] = 0
    step[pinned, pinned] = 1
    return np.linalg.matrix_power(step, SMOOTHING).astype(np.float32)


def _smooth(move: np.ndarray) -> np.ndarray:
    """``SMOOTH`` applied to ``move`` (468, 3) by OpenCV's product, not numpy's: numpy hands
    a product this size to BLAS, whose threads fight the pipeline's (measured: the mesh
    path at 720p lost a quarter of its frame rate)."""
    return np.asarray(cv2.gemm(SMOOTH, np.ascontiguousarray(move, np.float32), 1.0, _NONE, 0.0))


#: (468,) how far each vertex may move (0 on the outline, 1 well inside).
WEIGHT = _outline_weight()
EYE_L, EYE_R, LIPS = _groups()
#: Nose and brows: moved point by point, exactly (pinned against the smoothing).
NOSE = np.flatnonzero(
    _inside(_canonical_2d(), _canonical_2d()[[168, 129, 358, 2, 98, 327, 6, 197, 195, 5, 4, 1, 19, 94]], 0.0)
)
_PINNED = np.unique(np.concatenate([EYE_L, EYE_R, LIPS, NOSE, BROW_LEFT, BROW_RIGHT]))
SMOOTH = _smoother(_PINNED)
_NONE = np.zeros((len(VERTICES), 3), np.float32)
"gemm's added term, weighted 0."
#: Points for the pose fit: the outline above the mouth, and the forehead.
_FIT = np.unique(
    np.concatenate([
        FACE_OVAL[_canonical_2d()[FACE_OVAL, 1] < _canonical_2d()[MOUTH_INNER, 1].min()],
        [151, 9, 108, 337, 69, 299, 104, 333, 67, 297],
    ])
)  # fmt: skip


def similarity_3d(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """(scale, R, t) minimising ‖scale·R·src + t − dst‖ over (N, 3) point sets (Umeyama),
    R a proper rotation."""
    ms, md = src.mean(0), dst.mean(0)
    a, b = src - ms, dst - md
    u, sig, vt = np.linalg.svd(b.T @ a)
    d = np.ones(3)
    d[2] = np.sign(np.linalg.det(u @ vt)) or 1.0
    r = (u * d) @ vt
    scale = float((sig * d).sum() / max(float((a * a).sum()), 1e-9))
    return scale, r, md - scale * r @ ms


def _group_move(target: np.ndarray, fitted: np.ndarray, group: np.ndarray, corners: np.ndarray) -> np.ndarray:
    """(len(group), 3) displacement taking the target's ``group`` by the similarity (in the
    image plane; depth shifted by the corners' mean) that maps its ``corners`` onto the
    fitted source's."""
    t0, t1 = (complex(*target[c, :2]) for c in corners)
    s0, s1 = (complex(*fitted[c, :2]) for c in corners)
    a = (s1 - s0) / (t1 - t0) if abs(t1 - t0) > 1e-6 else 1.0
    return _moved_by(target, group, t0, s0, a, float((fitted[corners, 2] - target[corners, 2]).mean()))


def _mouth_move(target: np.ndarray, fitted: np.ndarray) -> np.ndarray:
    """(len(LIPS), 3) displacement of the lips: the top of the upper lip onto the fitted
    source's, scaled by the ratio of the mouths' widths within ``MOUTH_SCALE``, not turned.
    The lower lip and the corners carry expression (an open smile drops the one and spreads
    the others): matching them would paste the source photo's smile onto every frame."""
    t0, s0 = complex(*target[UPPER_LIP, :2]), complex(*fitted[UPPER_LIP, :2])
    wt = float(np.linalg.norm(target[MOUTH_RIGHT, :2] - target[MOUTH_LEFT, :2]))
    ws = float(np.linalg.norm(fitted[MOUTH_RIGHT, :2] - fitted[MOUTH_LEFT, :2]))
    k = float(np.clip(ws / max(wt, 1e-6), 1 / MOUTH_SCALE, MOUTH_SCALE))
    return _moved_by(target, LIPS, t0, s0, k, float(fitted[UPPER_LIP, 2] - target[UPPER_LIP, 2]))


def _moved_by(target: np.ndarray, group: np.ndarray, t0: complex, s0: complex, a: complex, dz: float) -> np.ndarray:
    """(len(group), 3) displacement of ``target[group]`` by ``p → s0 + a·(p − t0)`` in the
    image plane (complex numbers) and ``dz`` in depth."""
    p = target[group, 0] + 1j * target[group, 1]
    q = s0 + a * (p - t0)
    out = np.empty((len(group), 3), np.float32)
    out[:, 0], out[:, 1] = q.real - target[group, 0], q.imag - target[group, 1]
    out[:, 2] = dz
    return out


@dataclass(frozen=True)
class ShapeTransfer:
    """One source face's shape, ready to be fitted onto targets."""

    points: np.ndarray
    "(468, 3) the source's mesh (pixels, z in the same scale)."

    def fitted(self, target: np.ndarray) -> np.ndarray:
        """(468, 3) the source's mesh in the target's pose and size."""
        scale, r, t = similarity_3d(self.points[_FIT].astype(np.float64), target[_FIT].astype(np.float64))
        return (scale * self.points.astype(np.float64) @ r.T + t).astype(np.float32)

    def moved(self, target: np.ndarray, strength: float) -> np.ndarray:
        """(468, 3) the target's landmarks with the inner face moved ``strength`` (0..1) of
        the way to the source's shape (``target`` itself when ``strength`` is 0)."""
        if strength <= 0:
            return target
        fitted = self.fitted(target)
        move = fitted - target
        move[EYE_L] = _group_move(target, fitted, EYE_L, EYE_CORNERS[0])
        move[EYE_R] = _group_move(target, fitted, EYE_R, EYE_CORNERS[1])
        move[LIPS] = _mouth_move(target, fitted)
        move = _smooth(move)
        # No point moves more than MAX_MOVE of the face's width: a poor pose fit (a face
        # turned far, an odd expression in the source photo) cannot drag features around.
        limit = MAX_MOVE * float(np.ptp(target[:, 0]))
        size = np.linalg.norm(move[:, :2], axis=1)
        move *= (strength * WEIGHT * np.minimum(1.0, limit / np.maximum(size, 1e-6)))[:, None]
        return (target + move).astype(target.dtype)
