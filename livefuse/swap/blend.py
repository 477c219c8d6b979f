"""Masks, colour and lighting transfer, and blending, all on a face's region only."""

from __future__ import annotations

import cv2
import numpy as np

from livefuse.scratch import Scratch


def low_res(shape: tuple[int, int], factor: int) -> tuple[int, int]:
    """(w, h) of a region of ``shape`` (h, w) scaled down by ``factor``, at least 1×1."""
    return max(1, -(-shape[1] // factor)), max(1, -(-shape[0] // factor))


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
    small[:] = 0
    cv2.fillPoly(small, [np.round(outline / factor).astype(np.int32)], 255, cv2.LINE_AA)
    f = max(1, int(round(feather / factor)))
    # Erode by the feather width, so that after blurring alpha reaches 0 at the outline.
    cv2.erode(small, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (f + 1, f + 1)), dst=small)
    for hole in holes:
        cv2.fillPoly(small, [np.round(hole / factor).astype(np.int32)], 0, cv2.LINE_AA)
    k = 2 * f + 1
    cv2.GaussianBlur(small, (k, k), 0, dst=small)
    small_f = scratch.get("mask_small_f", (h, w), np.float32)
    np.multiply(small, 1 / 255, out=small_f, casting="unsafe")
    alpha = scratch.get("alpha", shape, np.float32)
    # resize writes into ``alpha`` only when dst already has the right size and type.
    cv2.resize(small_f, (shape[1], shape[0]), dst=alpha, interpolation=cv2.INTER_LINEAR)
    # Bilinear upscaling leaves tiny non-zero tails: cut them so outside pixels stay exact.
    alpha[alpha < 1 / 255] = 0
    return alpha


def match_colour(
    warped: np.ndarray, target: np.ndarray, alpha: np.ndarray, scratch: Scratch, factor: int = 8
) -> np.ndarray:
    """``warped`` recoloured to the target: chroma by mean/std transfer in Lab, lightness by
    the ratio of the two faces' low-frequency lightness (carries the target's shading).

    Returns float32 BGR in 0..255 (a scratch view).
    """
    src = cv2.cvtColor(warped, cv2.COLOR_BGR2LAB)
    dst = cv2.cvtColor(target, cv2.COLOR_BGR2LAB)
    inside = (alpha > 0.5).astype(np.uint8)
    if cv2.countNonZero(inside) < 16:
        return warped.astype(np.float32)
    s_mean, s_std = cv2.meanStdDev(src, mask=inside)
    t_mean, t_std = cv2.meanStdDev(dst, mask=inside)
    out = scratch.get("lab", src.shape, np.float32)
    np.copyto(out, src, casting="unsafe")
    gain = (t_std.ravel() + 1) / (s_std.ravel() + 1)
    out[..., 1:] = (out[..., 1:] - s_mean.ravel()[1:]) * gain[1:] + t_mean.ravel()[1:]
    out[..., 0] *= _shading(src[..., 0], dst[..., 0], inside, factor)
    np.clip(out, 0, 255, out=out)
    bgr = cv2.cvtColor(out.astype(np.uint8), cv2.COLOR_LAB2BGR)
    result = scratch.get("recoloured", bgr.shape, np.float32)
    np.copyto(result, bgr, casting="unsafe")
    return result


def _shading(src_l: np.ndarray, dst_l: np.ndarray, inside: np.ndarray, factor: int) -> np.ndarray:
    """Per-pixel lightness gain target/source from masked, blurred low-resolution copies."""
    size = low_res(src_l.shape[:2], factor)
    m = cv2.resize(inside.astype(np.float32), size, interpolation=cv2.INTER_AREA)
    k = (5, 5)
    # Normalised convolution: blur(L·m)/blur(m) keeps background out of the face's averages.
    weight = cv2.GaussianBlur(m, k, 0) + 1e-3
    s = cv2.GaussianBlur(cv2.resize(src_l, size, interpolation=cv2.INTER_AREA) * m, k, 0) / weight
    d = cv2.GaussianBlur(cv2.resize(dst_l, size, interpolation=cv2.INTER_AREA) * m, k, 0) / weight
    gain = np.clip((d + 8) / (s + 8), 0.5, 2.0).astype(np.float32)
    return cv2.resize(gain, (src_l.shape[1], src_l.shape[0]), interpolation=cv2.INTER_LINEAR)


def blend_into(region: np.ndarray, face: np.ndarray, alpha: np.ndarray, scratch: Scratch) -> None:
    """``region`` (uint8 view into the frame) ← region + alpha·(face − region), in place.

    Where alpha is 0 the pixel is written back unchanged, byte for byte.
    """
    acc = scratch.get("blend", region.shape, np.float32)
    np.copyto(acc, region, casting="unsafe")
    np.subtract(face, acc, out=face)
    face *= alpha[..., None]
    acc += face
    np.rint(acc, out=acc)
    np.copyto(region, acc, casting="unsafe")
