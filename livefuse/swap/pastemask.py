"""Blend masks for pasting a model's aligned face crop back into the frame.

- :func:`covering_mask` (the default): the face outline from the mesh at full opacity, with a
  soft edge only at the border, so the swapped face is not half-blended with the original
  over its cheeks.
- :func:`insightface_mask`: insightface's own paste-back mask (``INSwapper.get``, python
  package 0.7.3): the crop's square warped into the frame, eroded by a tenth of its size and
  blurred by a twentieth, computed in the frame over the face's box only and brought back
  into the crop, for results that match insightface's.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np

from livefuse.scratch import Scratch

#: Names of the paste mask styles.
MASK_STYLES = ("face", "insightface")
#: The soft edge's width, as a share of the crop's side.
EDGE = 0.03
#: The crop's own border is faded over this many pixels at 128 px (scaled with the crop), so
#: a face reaching the crop's side shows no square seam.
BORDER = 3


def covering_mask(
    size: int, outline: np.ndarray, holes: list[np.ndarray], scratch: Scratch, out: np.ndarray | None = None
) -> np.ndarray:
    """(size, size) float32 alpha: 1 over the face ``outline`` (crop pixels) except a soft
    edge ``EDGE``·size wide just inside it, 0 outside it and in ``holes``, faded at the
    crop's border. A linear ramp on the distance to the outline: nothing outside the face is
    touched, and the edge is no wider than asked (a blur would spread it both ways)."""
    width = max(1.0, EDGE * size)
    inside = scratch.get("cover_inside", (size, size), np.uint8)
    inside[:] = 0
    cv2.fillPoly(inside, [np.round(outline * 16).astype(np.int32)], 1, cv2.LINE_8, 4)
    alpha: np.ndarray = cv2.distanceTransform(inside, cv2.DIST_L2, 5).astype(np.float32, copy=False)
    if holes:
        # Grow the holes' soft edge outwards from them, the same width.
        keep = scratch.get("cover_keep", (size, size), np.uint8)
        keep[:] = 1
        cv2.fillPoly(keep, [np.round(h * 16).astype(np.int32) for h in holes], 0, cv2.LINE_8, 4)
        np.minimum(alpha, cv2.distanceTransform(keep, cv2.DIST_L2, 5), out=alpha)
    # One pixel of zeros first, so the bilinear warp into the frame cannot spill past the
    # outline or into a hole.
    alpha -= 1
    alpha *= 1 / width
    np.minimum(alpha, _border(size), out=alpha)
    np.clip(alpha, 0, 1, out=alpha)
    if out is None:
        return alpha
    np.copyto(out, alpha)
    return out


@functools.lru_cache(maxsize=8)
def _border(size: int) -> np.ndarray:
    """Ones with the crop's outer ``BORDER`` pixels (scaled) ramping to 0 (read-only)."""
    b = max(1, round(BORDER * size / 128))
    ramp = np.minimum(np.arange(size) + 0.5, np.arange(size)[::-1] + 0.5) / b
    edge = np.clip(ramp, 0, 1).astype(np.float32)
    out = np.minimum(edge[:, None], edge[None, :])
    out.flags.writeable = False
    return out


def insightface_mask(
    size: int, matrix: np.ndarray, frame_shape: tuple[int, ...], out: np.ndarray | None = None
) -> np.ndarray:
    """insightface's paste-back mask for the crop taken with ``matrix`` (frame → crop) from
    a frame of ``frame_shape``, as a (size, size) float32 alpha in the crop. Worked out in
    the frame, as insightface does (where the crop runs past the frame's edge the square is
    cut there and not eroded from it), but only over the face's box."""
    inverse = cv2.invertAffineTransform(matrix)
    corners = np.array([[0, 0], [size, 0], [0, size], [size, size]], np.float64)
    frame_pts = corners @ inverse[:, :2].T + inverse[:, 2]
    # A margin past the square wider than the erosion's and the blur's reach: the frame's
    # zeros there are what the square is eroded from.
    pad = int(np.ptp(frame_pts, 0).max()) // 4 + 4
    x0, y0 = np.maximum(np.floor(frame_pts.min(0)).astype(int) - pad, 0)
    x1, y1 = np.minimum(np.ceil(frame_pts.max(0)).astype(int) + pad, [frame_shape[1], frame_shape[0]])
    local = inverse.copy()
    local[:, 2] -= (x0, y0)
    white = cv2.warpAffine(np.full((size, size), 255, np.float32), local, (int(x1 - x0), int(y1 - y0)), borderValue=0.0)
    white[white > 20] = 255
    rows, cols = np.where(white == 255)
    mask_size = int(np.sqrt((rows.max() - rows.min()) * (cols.max() - cols.min())))
    k = max(mask_size // 10, 10)
    white = cv2.erode(white, np.ones((k, k), np.uint8), iterations=1)
    b = max(mask_size // 20, 5)
    white = cv2.GaussianBlur(white, (2 * b + 1, 2 * b + 1), 0)
    forward = matrix.astype(np.float64).copy()
    forward[:, 2] += forward[:, :2] @ np.array([x0, y0], np.float64)
    crop = cv2.warpAffine(white / 255, forward, (size, size), flags=cv2.INTER_LINEAR, borderValue=0.0)
    if out is None:
        return crop.astype(np.float32)
    np.copyto(out, crop, casting="unsafe")
    return out
