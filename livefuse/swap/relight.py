"""Lighting and skin tone: the source face's detail under the target's low-frequency light.

Each colour channel of the warped source face is multiplied by the ratio of the target's and
the source's smoothed colour, both measured over skin only (normalised convolution: eyes,
brows, lips and the background do not enter the averages). The result's low frequencies are
then the target's own, so the face joins the surrounding skin with no step, and carries the
target's shading and tone; the source's detail (its features) stays.
"""

from __future__ import annotations

import cv2
import numpy as np

from livefuse.scratch import Scratch
from livefuse.swap.blend import low_res

#: The light is measured on a grid this many cells across the face, smoothed over ~1.5
#: cells: coarse enough that the target's features do not ghost in, fine enough for shading.
CELLS = 6
SIGMA = 1.5
#: How much of the source's contrast (relative to its light) the result keeps.
GAMMA = 0.8
#: The source's light is taken as at least this (grey levels): dark cells do not blow up the gain.
FLOOR = 8.0
#: Added to the blurred skin weight: cells far from any skin divide by this, not by 0.
EPS = 1e-4
#: Less skin than this (in grid cells) and there is no light to measure: the face stays as it is.
MIN_SKIN = 4.0


def grid_size(shape: tuple[int, int], face_w: float) -> tuple[int, int]:
    """(w, h) of the light grid over a region of ``shape`` (h, w) with a face ``face_w`` px wide."""
    return low_res(shape, max(1, int(face_w / CELLS)))


def blur_taps() -> np.ndarray:
    """The light's blur, as ``cv2.GaussianBlur`` makes it for float images at ``SIGMA``: its
    float32 taps (the GPU frame path applies the very same kernel)."""
    ksize = int(round(SIGMA * 4 * 2 + 1)) | 1
    return cv2.getGaussianKernel(ksize, SIGMA, cv2.CV_32F).ravel()


def relight(face: np.ndarray, target: np.ndarray, skin: np.ndarray, face_w: float, scratch: Scratch) -> np.ndarray:
    """``face`` (BGR uint8, the warped source) relit to ``target`` (same shape) over ``skin``
    (weights in 0..1, any resolution: it is resized to the grid). Returns BGR uint8.

    Frequency bands: result = target's low band + the source's detail band (source − its low
    band), the detail scaled by one gain per face (the square root of the two faces' luma
    ratio): a dark-skinned source's shadows do not blow out to white on a pale target, and a
    pale source's detail does not vanish on a dark one.
    """
    shape = face.shape[:2]
    size = grid_size(shape, face_w)
    wgt = cv2.resize(skin, size, interpolation=cv2.INTER_AREA)
    total = float(wgt.sum())
    if total < MIN_SKIN:
        return face
    src = cv2.resize(face, size, interpolation=cv2.INTER_AREA).astype(np.float32)
    dst = cv2.resize(target, size, interpolation=cv2.INTER_AREA).astype(np.float32)
    weight = cv2.GaussianBlur(wgt, (0, 0), SIGMA) + EPS
    w3 = wgt[..., None]
    s = cv2.GaussianBlur(src * w3, (0, 0), SIGMA) / weight[..., None]
    d = cv2.GaussianBlur(dst * w3, (0, 0), SIGMA) / weight[..., None]
    # Per channel and per cell: result = target's light × (source / source's light)^γ,
    # linearised as A + B·face. A ratio, not a difference: a dark feature (brows) stays dark
    # and neutral on a paler target instead of shifting hue, and highlights scale with it.
    scale = GAMMA * d / np.maximum(s, FLOOR)
    offset = (1 - GAMMA) * d
    full = scratch.get("relight_offset", (*shape, 3), np.float32)
    cv2.resize(offset, (shape[1], shape[0]), dst=full, interpolation=cv2.INTER_LINEAR)
    gain = scratch.get("relight_gain", (*shape, 3), np.float32)
    cv2.resize(scale, (shape[1], shape[0]), dst=gain, interpolation=cv2.INTER_LINEAR)
    out = scratch.get("relight_out", (*shape, 3), np.float32)
    np.multiply(face, gain, out=out, casting="unsafe")
    out += full
    return cv2.convertScaleAbs(out)
