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


def crop(image: np.ndarray, matrix: np.ndarray, size: int, out: np.ndarray | None = None) -> np.ndarray:
    """The ``size``×``size`` aligned crop (``warpAffine`` reads only the pixels it needs)."""
    return cv2.warpAffine(
        image, matrix, (size, size), dst=out, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )


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


def paste_box(mask: np.ndarray, matrix: np.ndarray, shape: tuple[int, ...]) -> tuple[int, int, int, int] | None:
    """The frame box x0, y0, x1, y1 that pasting a crop with ``mask`` through ``matrix``
    (frame → crop) can change; None when the mask is empty or the box is off-frame."""
    x, y, w, h = cv2.boundingRect((mask > 0).view(np.uint8))
    if w == 0:
        return None
    return paste_region(cv2.invertAffineTransform(matrix), (x, y, w, h), shape)


def paste_back(frame: np.ndarray, face: np.ndarray, mask: np.ndarray, matrix: np.ndarray, scratch: Scratch) -> None:
    """Blend the aligned ``face`` crop (uint8 BGR) into ``frame`` with ``mask`` (float32
    0..1, crop-sized, exactly 0 where nothing is pasted), warping only into the box the
    mask covers — never the whole frame. Pixels where the mask is 0 stay unchanged.

    The crop travels premultiplied, as one BGRA image (face·mask, 255·(1 − mask)): one
    4-channel warp, then region·(1 − mask) + face·mask in two saturating uint8 passes.
    Premultiplying also keeps dark fringes out of the interpolated edge.
    """
    size = face.shape[0]
    packed = scratch.get("paste_packed", (size, size, 4), np.uint8)
    mask3 = scratch.get("paste_mask3", (size, size, 3), np.float32)
    cv2.merge([mask, mask, mask], dst=mask3)
    premultiplied = scratch.get("paste_pm", (size, size, 3), np.uint8)
    cv2.multiply(face, mask3, dst=premultiplied, dtype=cv2.CV_8U)
    cv2.cvtColor(premultiplied, cv2.COLOR_BGR2BGRA, dst=packed)
    keep_crop = scratch.get("paste_keep_crop", (size, size), np.float32)
    np.multiply(1.0 - mask, 255, out=keep_crop)
    np.rint(keep_crop, out=keep_crop)  # rounded, as the premultiplied face is: no bias
    np.copyto(packed[..., 3], keep_crop, casting="unsafe")
    box = paste_box(mask, matrix, frame.shape)
    if box is None:
        return
    x0, y0, x1, y1 = box
    inverse = cv2.invertAffineTransform(matrix)
    w, h = x1 - x0, y1 - y0
    inverse[:, 2] -= (x0, y0)  # into the box's own coordinates
    warped = scratch.get("paste_warped", (h, w, 4), np.uint8)
    # Outside the crop: nothing to add, everything of the frame kept.
    cv2.warpAffine(
        packed,
        inverse,
        (w, h),
        dst=warped,
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0, 255),
    )
    keep = scratch.get("paste_keep", (h, w, 3), np.uint8)
    alpha = warped[..., 3]
    cv2.merge([alpha, alpha, alpha], dst=keep)
    add = scratch.get("paste_add", (h, w, 3), np.uint8)
    cv2.cvtColor(warped, cv2.COLOR_BGRA2BGR, dst=add)
    region = frame[y0:y1, x0:x1]
    cv2.multiply(region, keep, dst=region, scale=1 / 255)
    cv2.add(region, add, dst=region)
