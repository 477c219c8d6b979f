"""Masks, colour and lighting transfer, and blending, all on a face's region only."""

from __future__ import annotations

import functools

import cv2
import numpy as np

from livefuse.scratch import Scratch


def low_res(shape: tuple[int, int], factor: int) -> tuple[int, int]:
    """(w, h) of a region of ``shape`` (h, w) scaled down by ``factor``, at least 1×1."""
    return max(1, -(-shape[1] // factor)), max(1, -(-shape[0] // factor))


def to_low_res(points: np.ndarray, shape: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """Full-resolution pixel coordinates → coordinates on a ``size`` (w, h) copy of a
    ``shape`` (h, w) region, with ``cv2.resize``'s pixel-centre convention, so drawing
    there and scaling back up lands exactly on the original positions."""
    scale = np.array([size[0] / shape[1], size[1] / shape[0]], np.float32)
    return (points + 0.5) * scale - 0.5


def feathered_mask(
    shape: tuple[int, int],
    outline: np.ndarray,
    holes: list[np.ndarray],
    feather: float,
    scratch: Scratch,
    factor: int = 4,
) -> np.ndarray:
    """Alpha in 0..1 (float32, ``shape``): 1 well inside ``outline``, 0 outside it and
    inside ``holes``, with soft edges ``feather`` px wide that stay inside the outline.

    Drawn, eroded and blurred at 1/``factor`` resolution, then scaled up: the cost does not
    grow with the square of the face size.
    """
    w, h = low_res(shape, factor)
    small = scratch.get("mask_small", (h, w), np.uint8)
    hard = scratch.get("mask_hard", (h, w), np.uint8)
    hard[:] = 0
    cv2.fillPoly(hard, [_fixed(to_low_res(outline, shape, (w, h)))], 255, cv2.LINE_8, 4)
    # One low-res pixel in: bilinear upscaling then cannot spill past the outline.
    cv2.erode(hard, _disc(1), dst=hard)
    f = max(1, int(round(feather / factor)))
    # Erode by the blur's reach so the soft edge lies inside the outline, not across it.
    cv2.erode(hard, _disc(f), dst=small)
    if holes:
        # Grow the holes by the blur's reach first, so the soft edge lies outside them.
        cut = scratch.get("mask_holes", (h, w), np.uint8)
        cut[:] = 0
        cv2.fillPoly(cut, [_fixed(to_low_res(x, shape, (w, h))) for x in holes], 255, cv2.LINE_8, 4)
        cv2.dilate(cut, _disc(f), dst=cut)
        small[cut > 0] = 0
    k = 2 * f + 1
    cv2.GaussianBlur(small, (k, k), 0, dst=small)
    np.minimum(small, hard, out=small)
    small_f = scratch.get("mask_small_f", (h, w), np.float32)
    np.multiply(small, 1 / 255, out=small_f, casting="unsafe")
    alpha = scratch.get("alpha", shape, np.float32)
    # resize writes into ``alpha`` only when dst already has the right size and type.
    cv2.resize(small_f, (shape[1], shape[0]), dst=alpha, interpolation=cv2.INTER_LINEAR)
    # Bilinear upscaling spreads the low-res edge by up to a low-res pixel: clip the alpha
    # to the outline drawn at full resolution, so nothing outside it is ever touched.
    inside = scratch.get("mask_inside", shape, np.uint8)
    inside[:] = 0
    cv2.fillPoly(inside, [_fixed(outline)], 1, cv2.LINE_8, 4)
    np.multiply(alpha, inside, out=alpha)
    alpha[alpha < 1 / 255] = 0
    if holes:
        # Holes can be thinner than a low-res pixel (a mouth just opening): cut them exactly.
        cv2.fillPoly(alpha, [_fixed(x) for x in holes], 0, cv2.LINE_8, 4)
    return alpha


@functools.lru_cache(maxsize=64)
def _disc(radius: int) -> np.ndarray:
    """A disc-shaped structuring element (cached: a constant per radius)."""
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def _fixed(points: np.ndarray) -> np.ndarray:
    """Points as int32 with 4 fractional bits, for OpenCV's sub-pixel drawing (shift=4)."""
    return np.round(points * 16).astype(np.int32)


#: Lighting is carried over on a grid this many cells across the face: coarse enough that
#: the target's eyes, brows and mouth do not ghost into the result, fine enough for shading.
SHADING_CELLS = 6


def match_colour(warped: np.ndarray, target: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``warped`` (BGR uint8) recoloured to ``target``: chroma by mean/std transfer in
    YCrCb over the pixels where ``alpha`` > 0.5, luma by the ratio of the two faces'
    low-frequency luma (which carries the target's shading). Returns BGR uint8.

    YCrCb rather than Lab: its conversions are linear and ~6× cheaper, and the chroma
    statistics it gives are as good for skin.
    """
    inside = (alpha > 0.5).view(np.uint8)
    if cv2.countNonZero(inside) < 16:
        return warped
    src = cv2.cvtColor(warped, cv2.COLOR_BGR2YCrCb)
    dst = cv2.cvtColor(target, cv2.COLOR_BGR2YCrCb)
    s_mean, s_std = (v.ravel() for v in cv2.meanStdDev(src, mask=inside))
    t_mean, t_std = (v.ravel() for v in cv2.meanStdDev(dst, mask=inside))
    gain = (t_std + 1) / (s_std + 1)
    # One per-pixel affine map in C: Cr and Cb shifted and scaled, Y left for the shading.
    chroma = np.zeros((3, 4), np.float32)
    chroma[0, 0] = 1
    for c in (1, 2):
        chroma[c, c] = gain[c]
        chroma[c, 3] = t_mean[c] - s_mean[c] * gain[c]
    ycc = cv2.transform(src, chroma)
    luma = cv2.multiply(src[..., 0], _shading(src[..., 0], dst[..., 0], inside), dtype=cv2.CV_8U)
    cv2.insertChannel(luma, ycc, 0)
    return cv2.cvtColor(ycc, cv2.COLOR_YCrCb2BGR)


#: OpenCV's 8-bit BGR → YCrCb as a 3×4 affine map (rows Y, Cr, Cb; columns B, G, R, 1).
_YCC = np.array(
    [
        [0.114, 0.587, 0.299, 0.0],
        [-0.114 * 0.713, -0.587 * 0.713, 0.701 * 0.713, 128.0],
        [0.886 * 0.564, -0.587 * 0.564, -0.299 * 0.564, 128.0],
    ]
)
_YCC_INV = np.linalg.inv(np.vstack([_YCC, [0, 0, 0, 1]]))


def colour_transfer(face: np.ndarray, target: np.ndarray, alpha: np.ndarray) -> np.ndarray | None:
    """The 3×4 BGR affine map that gives ``face`` (BGR uint8) the Y, Cr and Cb means and
    spreads of ``target`` over ``alpha`` > 0.5 — the whole YCrCb transfer folded into one
    map (apply it with ``cv2.transform``). None when the region is too small to measure.

    Cheaper than :func:`match_colour` (no per-pixel shading), for model outputs, which
    already carry the target's lighting; and cheap to keep for a few frames per face.
    """
    inside = (alpha > 0.5).view(np.uint8)
    if cv2.countNonZero(inside) < 16:
        return None
    s_mean, s_std = (v.ravel() for v in cv2.meanStdDev(cv2.cvtColor(face, cv2.COLOR_BGR2YCrCb), mask=inside))
    t_mean, t_std = (v.ravel() for v in cv2.meanStdDev(cv2.cvtColor(target, cv2.COLOR_BGR2YCrCb), mask=inside))
    return transfer_map(s_mean, s_std, t_mean, t_std)


def transfer_from_sums(sums: np.ndarray) -> np.ndarray | None:
    """:func:`colour_transfer` from sums over the measured pixels: the face's Y, Cr, Cb and
    their squares, the target's likewise, and the pixel count (13 values, as the GPU path's
    ``lf_colour_moments`` kernel adds them up)."""
    count = float(sums[12])
    if count < 16:
        return None
    mean = sums[:12].reshape(4, 3) / count
    s_std = np.sqrt(np.maximum(mean[1] - mean[0] ** 2, 0))
    t_std = np.sqrt(np.maximum(mean[3] - mean[2] ** 2, 0))
    return transfer_map(mean[0], s_std, mean[2], t_std)


def transfer_map(s_mean: np.ndarray, s_std: np.ndarray, t_mean: np.ndarray, t_std: np.ndarray) -> np.ndarray:
    """The 3×4 BGR map giving YCrCb means/spreads ``s_*`` the values ``t_*``."""
    gain = (t_std + 1) / (s_std + 1)
    scale = np.eye(4)
    scale[:3, :3] = np.diag(gain)
    scale[:3, 3] = t_mean - s_mean * gain
    return (_YCC_INV @ scale @ np.vstack([_YCC, [0, 0, 0, 1]]))[:3]


def _shading(src_l: np.ndarray, dst_l: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Per-pixel luma gain target/source from masked, blurred low-resolution copies."""
    size = low_res(src_l.shape[:2], max(1, src_l.shape[1] // SHADING_CELLS))
    m = cv2.resize(inside.astype(np.float32), size, interpolation=cv2.INTER_AREA)
    k = (3, 3)
    # Normalised convolution: blur(L·m)/blur(m) keeps background out of the face's averages.
    weight = cv2.GaussianBlur(m, k, 0) + 1e-3
    s = cv2.GaussianBlur(cv2.resize(src_l, size, interpolation=cv2.INTER_AREA) * m, k, 0) / weight
    d = cv2.GaussianBlur(cv2.resize(dst_l, size, interpolation=cv2.INTER_AREA) * m, k, 0) / weight
    gain = np.clip((d + 8) / (s + 8), 0.5, 2.0).astype(np.float32)
    return cv2.resize(gain, (src_l.shape[1], src_l.shape[0]), interpolation=cv2.INTER_LINEAR)


def blend_into(region: np.ndarray, face: np.ndarray, alpha: np.ndarray, scratch: Scratch) -> None:
    """``region`` (uint8 view into the frame) ← region·(1 − alpha) + face·alpha, in place.

    Where alpha is 0 the pixel is written back unchanged, byte for byte.
    """
    rest = scratch.get("blend_rest", alpha.shape, np.float32)
    np.subtract(1.0, alpha, out=rest)
    cv2.blendLinear(region, face, rest, alpha, dst=region)
