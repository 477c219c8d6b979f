"""Five-point alignment and region-only paste-back.

Alignment is the least-squares similarity (rotation, uniform scale, translation) taking a
face's five keypoints onto a model's template: the transform insightface estimates with
``SimilarityTransform.estimate`` (Umeyama), here in closed form because five points in 2-D
need no SVD.
"""

from __future__ import annotations

import cv2
import numpy as np

from livefuse.scratch import Scratch


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """2×3 matrix of the least-squares similarity mapping points ``src`` onto ``dst``."""
    src = src.astype(np.float64)
    dst = dst.astype(np.float64)
    sm, dm = src.mean(0), dst.mean(0)
    s, d = src - sm, dst - dm
    norm = (s**2).sum()
    a = (s * d).sum() / norm
    b = (s[:, 0] * d[:, 1] - s[:, 1] * d[:, 0]).sum() / norm
    rot = np.array([[a, -b], [b, a]])
    return np.hstack([rot, (dm - rot @ sm)[:, None]])


def template_points(template: np.ndarray, size: int) -> np.ndarray:
    """A normalised (0..1) template scaled to a ``size``-pixel crop."""
    return template * size


def crop(image: np.ndarray, matrix: np.ndarray, size: int, out: np.ndarray | None = None) -> np.ndarray:
    """The ``size``×``size`` aligned crop (``warpAffine`` reads only the pixels it needs)."""
    return cv2.warpAffine(image, matrix, (size, size), dst=out, flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def paste_region(
    inverse: np.ndarray, box: tuple[int, int, int, int], shape: tuple[int, ...]
) -> tuple[int, int, int, int] | None:
    """Frame box x0, y0, x1, y1 covering the crop-space box (x, y, w, h) once mapped back
    by ``inverse`` (crop → frame), clipped to the frame; None when off-frame."""
    x, y, w, h = box
    xs = (x, x + w, x, x + w)
    ys = (y, y, y + h, y + h)
    fx = [inverse[0, 0] * a + inverse[0, 1] * b + inverse[0, 2] for a, b in zip(xs, ys)]
    fy = [inverse[1, 0] * a + inverse[1, 1] * b + inverse[1, 2] for a, b in zip(xs, ys)]
    x0, y0 = max(int(min(fx)) - 1, 0), max(int(min(fy)) - 1, 0)
    x1, y1 = min(int(max(fx)) + 2, shape[1]), min(int(max(fy)) + 2, shape[0])
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    return x0, y0, x1, y1


def paste_back(
    frame: np.ndarray, face: np.ndarray, mask: np.ndarray, matrix: np.ndarray, scratch: Scratch
) -> None:
    """Blend the aligned ``face`` crop (uint8 BGR) into ``frame`` with ``mask`` (float32
    0..1, crop-sized, exactly 0 where nothing is pasted), warping both only into the box
    the mask covers — never the frame. Pixels where the warped mask is 0 stay unchanged.
    """
    size = face.shape[0]
    bgra = scratch.get("paste_bgra", (size, size, 4), np.uint8)
    cv2.cvtColor(face, cv2.COLOR_BGR2BGRA, dst=bgra)
    np.multiply(mask, 255, out=bgra[..., 3], casting="unsafe")
    support = cv2.boundingRect(bgra[..., 3].copy())
    inverse = cv2.invertAffineTransform(matrix)
    box = paste_region(inverse, support, frame.shape)
    if box is None or support[2] == 0:
        return
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    inverse[:, 2] -= (x0, y0)  # into the box's own coordinates
    # Face and mask travel together as one BGRA image: one 4-channel warp is cheaper than
    # a 3-channel and a float one.
    warped = scratch.get("paste_warped", (h, w, 4), np.uint8)
    cv2.warpAffine(bgra, inverse, (w, h), dst=warped, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    alpha = scratch.get("paste_alpha", (h, w), np.float32)
    np.multiply(warped[..., 3], 1 / 255, out=alpha, casting="unsafe")
    rest = scratch.get("paste_rest", (h, w), np.float32)
    np.subtract(1.0, alpha, out=rest)
    bgr = scratch.get("paste_bgr", (h, w, 3), np.uint8)
    cv2.cvtColor(warped, cv2.COLOR_BGRA2BGR, dst=bgr)
    region = frame[y0:y1, x0:x1]
    # blendLinear computes region·rest + bgr·alpha in one pass, in C, on uint8, in place.
    cv2.blendLinear(region, bgr, rest, alpha, dst=region)
