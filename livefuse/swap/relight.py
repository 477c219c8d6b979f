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

The neural paths (CPU and GPU frame paths alike) relight a model's output with
:func:`relight_channels`, the per-channel ratio, which the GPU kernels compute exactly.
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


def _skin_grid(skin: np.ndarray, shape: tuple[int, int], face_w: float) -> np.ndarray | None:
    """``skin`` on the light grid of a region of ``shape``; None when it covers under
    ``MIN_SKIN`` cells (no light to measure: the face stays as it is)."""
    wgt = cv2.resize(skin, grid_size(shape, face_w), interpolation=cv2.INTER_AREA)
    return wgt if float(wgt.sum()) >= MIN_SKIN else None


def _skin_light(src: np.ndarray, dst: np.ndarray, wgt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both faces' light per grid cell (``src``, ``dst``: float32, 3 channels on the grid):
    Gaussian averages over the skin only (normalised convolution), so eyes, brows, lips and
    the background do not enter them."""
    weight = (cv2.GaussianBlur(wgt, (0, 0), SIGMA) + EPS)[..., None]
    w3 = wgt[..., None]
    return cv2.GaussianBlur(src * w3, (0, 0), SIGMA) / weight, cv2.GaussianBlur(dst * w3, (0, 0), SIGMA) / weight


#: Outside the eyes and teeth, luma above KNEE × the target's light keeps KNEE_KEEP of its
#: excess: what is that much brighter than the skin around it on a pale target is a pale
#: brow end, white hair at a temple or a highlight of the source's (a white patch, a streak).
KNEE, KNEE_KEEP = 1.15, 0.3
#: ...or above the target's light plus this share of its headroom to white, when that is
#: lower: on a pale target 15 % above its light is beyond anything its own skin shows.
HEADROOM = 0.4


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

    Frequency bands: result = the target's low band with the source's detail on it (its
    ratio to the source's own low band, contrast kept at ``GAMMA``).
    """
    shape = face.shape[:2]
    wgt = _skin_grid(skin, shape, face_w)
    if wgt is None:
        return face
    size = wgt.shape[::-1]
    ycc = cv2.cvtColor(face, cv2.COLOR_BGR2YCrCb)
    src = cv2.resize(ycc, size, interpolation=cv2.INTER_AREA).astype(np.float32)
    dst = cv2.cvtColor(cv2.resize(target, size, interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2YCrCb).astype(np.float32)
    s, d = _skin_light(src, dst, wgt)
    # Per cell: luma = target's light × (source / source's light)^γ, linearised as A + B·Y.
    # Chroma: the pixel's own, scaled with its luma, plus the shift that turns the source's
    # skin into the target's, applied in proportion to the pixel's luma up to the skin's:
    # a dark brow or shadow stays neutral, a pale highlight gets at most the skin's tint.
    light = np.maximum(s[..., 0], FLOOR)
    cells = (
        GAMMA * d[..., 0] / light,
        (1 - GAMMA) * d[..., 0],
        (d[..., 1] - 128) - (s[..., 1] - 128) * (d[..., 0] / light),
        (d[..., 2] - 128) - (s[..., 2] - 128) * (d[..., 0] / light),
        1 / np.maximum(d[..., 0], 8.0),
        np.minimum(KNEE * d[..., 0], d[..., 0] + HEADROOM * (255 - d[..., 0])),
    )
    # Contiguous full-size planes: the per-pixel work below is a few vector passes each.
    gain, offset, shift_cr, shift_cb, inv_light, ceiling = (
        cv2.resize(
            np.ascontiguousarray(c, np.float32),
            (shape[1], shape[0]),
            dst=scratch.get(f"relight_{i}", shape),
            interpolation=cv2.INTER_LINEAR,
        )
        for i, c in enumerate(cells)
    )
    planes = cv2.split(ycc)
    luma = scratch.get("relight_luma", shape)
    np.copyto(luma, planes[0], casting="unsafe")
    ratio = scratch.get("relight_ratio", shape)
    np.maximum(luma, 8.0, out=ratio)
    luma *= gain
    luma += offset
    if knee is not None:
        _knee(luma, ceiling, knee, scratch)
    np.divide(luma, ratio, out=ratio)
    share = scratch.get("relight_share", shape)
    np.multiply(luma, inv_light, out=share)
    np.minimum(share, 1.0, out=share)
    out = [cv2.convertScaleAbs(luma)]
    work = scratch.get("relight_work", shape)
    for plane, shift in ((planes[1], shift_cr), (planes[2], shift_cb)):
        chroma = scratch.get("relight_chroma", shape)
        np.subtract(plane, np.float32(128), out=chroma, dtype=np.float32)
        chroma *= ratio
        np.multiply(shift, share, out=work)
        chroma += work
        chroma += 128
        np.clip(chroma, 0, 255, out=chroma)
        out.append(cv2.convertScaleAbs(chroma))
    return cv2.cvtColor(cv2.merge(out), cv2.COLOR_YCrCb2BGR)


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
    over *= 1 - KNEE_KEEP
    luma -= over


def relight_channels(
    face: np.ndarray, target: np.ndarray, skin: np.ndarray, face_w: float, scratch: Scratch
) -> np.ndarray:
    """The neural paths' relighting: each colour channel of ``face`` (BGR uint8, the model's
    output) multiplied by the ratio of ``target``'s and its own smoothed colour over ``skin``.
    The GPU frame path's kernels compute exactly this (``swap/gpu/kernels.cu``), so the two
    frame paths agree; the mesh path's :func:`relight` works on luma and chroma instead.

    Frequency bands: per channel and cell, result = target's light × (face / its own
    light)^γ, linearised as gain · face + offset.
    """
    shape = face.shape[:2]
    wgt = _skin_grid(skin, shape, face_w)
    if wgt is None:
        return face
    size = wgt.shape[::-1]
    src = cv2.resize(face, size, interpolation=cv2.INTER_AREA).astype(np.float32)
    dst = cv2.resize(target, size, interpolation=cv2.INTER_AREA).astype(np.float32)
    s, d = _skin_light(src, dst, wgt)
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
