"""Lighting and skin tone: the source face's detail under the target's low-frequency light.

The warped source face's luma is multiplied by the ratio of the target's and the source's
smoothed luma, and its chroma shifted by the difference of their smoothed chroma, all
measured over skin only (normalised convolution: eyes, brows, lips and the background do not
enter the averages). The result's low frequencies are then the target's own, so the face
joins the surrounding skin with no step, and carries the target's shading and tone; the
source's detail (its features) stays.

Luma as a ratio: a dark feature (brows) stays dark on a paler target, highlights scale with
it. Chroma as a shift, not a per-channel ratio: a per-channel ratio multiplies a grey
shadow's blue by a pale target's blue-over-red gain, and the source's eye sockets came out
as greyish-blue rings.
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
#: Outside the eyes and teeth, luma above KNEE × the target's light keeps KNEE_KEEP of its
#: excess: what is that much brighter than the skin around it on a pale target is a pale
#: brow end, white hair at a temple or a highlight of the source's (a white patch, a streak).
KNEE, KNEE_KEEP = 1.15, 0.3


def relight(
    face: np.ndarray,
    target: np.ndarray,
    skin: np.ndarray,
    face_w: float,
    scratch: Scratch,
    knee: np.ndarray | None = None,
) -> np.ndarray:
    """``face`` (BGR uint8, the warped source) relit to ``target`` (same shape) over ``skin``
    (weights in 0..1, any resolution: it is resized to the grid). Returns BGR uint8.
    ``knee`` (weights like ``skin``): where luma far above the target's light is compressed
    (everything but the eyes and teeth); None: nowhere.

    Frequency bands: result = target's low band + the source's detail band (source − its low
    band), the detail scaled by one gain per face (the square root of the two faces' luma
    ratio): a dark-skinned source's shadows do not blow out to white on a pale target, and a
    pale source's detail does not vanish on a dark one.
    """
    shape = face.shape[:2]
    step = max(1, int(face_w / CELLS))
    size = low_res(shape, step)
    wgt = cv2.resize(skin, size, interpolation=cv2.INTER_AREA)
    total = float(wgt.sum())
    if total < 4:
        return face
    ycc = cv2.cvtColor(face, cv2.COLOR_BGR2YCrCb)
    src = cv2.resize(ycc, size, interpolation=cv2.INTER_AREA).astype(np.float32)
    dst = cv2.cvtColor(cv2.resize(target, size, interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2YCrCb).astype(np.float32)
    weight = cv2.GaussianBlur(wgt, (0, 0), SIGMA) + 1e-4
    w3 = wgt[..., None]
    s = cv2.GaussianBlur(src * w3, (0, 0), SIGMA) / weight[..., None]
    d = cv2.GaussianBlur(dst * w3, (0, 0), SIGMA) / weight[..., None]
    # Per cell: luma = target's light × (source / source's light)^γ, linearised as A + B·Y.
    # Chroma: the pixel's own, scaled with its luma, plus the shift that turns the source's
    # skin into the target's, applied in proportion to the pixel's luma up to the skin's:
    # a dark brow or shadow stays neutral, a pale highlight gets at most the skin's tint.
    cells = np.empty((*d.shape[:2], 6), np.float32)
    light = np.maximum(s[..., 0], 8.0)
    cells[..., 0] = GAMMA * d[..., 0] / light
    cells[..., 1] = (1 - GAMMA) * d[..., 0]
    cells[..., 2:4] = (d[..., 1:] - 128) - (s[..., 1:] - 128) * (d[..., :1] / light[..., None])
    cells[..., 4] = 1 / np.maximum(d[..., 0], 8.0)
    cells[..., 5] = KNEE * d[..., 0]
    full = scratch.get("relight_cells", (*shape, 6), np.float32)
    cv2.resize(cells, (shape[1], shape[0]), dst=full, interpolation=cv2.INTER_LINEAR)
    out = scratch.get("relight_out", (*shape, 3), np.float32)
    np.copyto(out, ycc, casting="unsafe")
    luma = out[..., 0]
    ratio = scratch.get("relight_ratio", shape, np.float32)
    np.maximum(luma, 8.0, out=ratio)
    luma *= full[..., 0]
    luma += full[..., 1]
    if knee is not None:
        _knee(luma, full[..., 5], knee, scratch)
    np.divide(luma, ratio, out=ratio)
    share = scratch.get("relight_share", shape, np.float32)
    np.multiply(luma, full[..., 4], out=share)
    np.minimum(share, 1.0, out=share)
    out[..., 1:] -= 128
    out[..., 1:] *= ratio[..., None]
    out[..., 1:] += full[..., 2:4] * share[..., None]
    out[..., 1:] += 128
    return cv2.cvtColor(cv2.convertScaleAbs(out), cv2.COLOR_YCrCb2BGR)


def _knee(luma: np.ndarray, knee: np.ndarray, where: np.ndarray, scratch: Scratch) -> None:
    """Compress ``luma`` above ``knee`` (both full size) in place, weighted by ``where`` (any
    size, 0..1)."""
    over = scratch.get("relight_over", luma.shape, np.float32)
    np.subtract(luma, knee, out=over)
    np.maximum(over, 0, out=over)
    if not over.any():
        return
    weight = scratch.get("relight_skin", luma.shape, np.float32)
    cv2.resize(where, (luma.shape[1], luma.shape[0]), dst=weight, interpolation=cv2.INTER_LINEAR)
    over *= weight
    luma -= (1 - KNEE_KEEP) * over
