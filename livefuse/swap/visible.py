"""The mesh swap's blend mask, from the triangles actually painted: it follows the visible
silhouette of a turned face, with a wide soft edge at the border and a narrow one around
the openings (eyes, an open mouth) where the target's own pixels stay."""

from __future__ import annotations

import functools

import cv2
import numpy as np

from livefuse.scratch import Scratch


@functools.lru_cache(maxsize=32)
def disc(radius: int) -> np.ndarray:
    """A disc-shaped structuring element (a constant per radius)."""
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


#: ``ids`` value of pixels under a triangle that is drawn but not painted (an opening).
HOLE = -2
#: Soft edge around an opening, as a share of the border's.
HOLE_FEATHER = 0.2


def visible_alpha(ids: np.ndarray, shape: tuple[int, int], feather: float, factor: int, scratch: Scratch) -> np.ndarray:
    """Alpha in 0..1 (float32, ``shape``) from ``ids``, a 1/``factor`` resolution map of the
    triangle under each pixel (−1 none, ``HOLE`` an opening, ≥ 0 painted): 1 well inside the
    painted surface, 0 outside it and in the openings, with soft edges ``feather`` px wide
    (full-resolution pixels) that lie inside the painted surface."""
    h, w = ids.shape
    full = scratch.get("vis_full", (h, w), np.uint8)
    np.not_equal(ids, -1, out=full.view(bool))
    full *= 255
    r = max(1, int(round(feather / factor)))
    small = scratch.get("vis_small", (h, w), np.uint8)
    # One low-res pixel more than the blur's reach: bilinear upscaling then cannot spill
    # past the painted surface, so nothing outside it is ever touched.
    cv2.erode(full, disc(r + 1), dst=small)
    cv2.GaussianBlur(small, (2 * r + 1, 2 * r + 1), 0, dst=small)
    holes = scratch.get("vis_holes", (h, w), np.uint8)
    np.equal(ids, HOLE, out=holes.view(bool))
    if holes.any():
        rh = max(1, int(round(HOLE_FEATHER * feather / factor)))
        holes *= 255
        cv2.dilate(holes, disc(rh + 1), dst=holes)
        cv2.GaussianBlur(holes, (2 * rh + 1, 2 * rh + 1), 0, dst=holes)
        cv2.subtract(small, holes, dst=small)
    small_f = scratch.get("vis_small_f", (h, w), np.float32)
    np.multiply(small, 1 / 255, out=small_f, casting="unsafe")
    alpha = scratch.get("alpha", shape, np.float32)
    cv2.resize(small_f, (shape[1], shape[0]), dst=alpha, interpolation=cv2.INTER_LINEAR)
    alpha[alpha < 1 / 255] = 0
    return alpha


def cut(alpha: np.ndarray, polygons: list[np.ndarray]) -> None:
    """Zero ``alpha`` exactly inside ``polygons`` (full-resolution points): an opening can be
    thinner than a low-res pixel (a mouth just opening)."""
    if polygons:
        cv2.fillPoly(alpha, [np.round(p * 16).astype(np.int32) for p in polygons], 0, cv2.LINE_8, 4)


def skin_weight(ids: np.ndarray, features: list[np.ndarray], scratch: Scratch, key: str = "vis_skin") -> np.ndarray:
    """(h, w) float32 at ``ids``' resolution: 1 on painted skin, 0 elsewhere and on
    ``features`` (convex polygons in ``ids``' pixels: eyes, brows, lips), for the light's
    averages. ``key`` names its scratch buffers (one per weight kept at once)."""
    skin = scratch.get(key, ids.shape, np.uint8)
    np.greater_equal(ids, 0, out=skin.view(bool))
    for poly in features:
        cv2.fillConvexPoly(skin, np.round(poly * 16).astype(np.int32), 0, cv2.LINE_8, 4)
    out = scratch.get(key + "_f", ids.shape, np.float32)
    np.copyto(out, skin, casting="unsafe")
    return out
