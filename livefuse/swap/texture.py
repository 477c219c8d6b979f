"""The source face prepared as a texture, once per source photo: only its visible skin.

- Hair or anything else lying on the face (a fringe, glasses frames) is found against a skin
  model fitted to the source's own cheeks and painted over from the skin around it; a
  triangle mostly covered is not used at all (the target shows through there).
- The outline is sampled from just inside the face, never from hair, ears or background.
- A triangle that faces away from the camera or is strongly foreshortened in the photo takes
  its texture from its mirror image on the other half of the face.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from livefuse.face.canonical import TRIANGLES
from livefuse.face.surface import (
    BROW_LEFT,
    BROW_RIGHT,
    EYE_LEFT,
    EYE_RIGHT,
    INNER_TRIANGLES,
    LIPS_OUTER,
    MIRROR,
    facing,
)
from livefuse.face.topology import FACE_OVAL, MOUTH_INNER
from livefuse.swap.source import SourceFace

#: On the source side the outline is pulled in this much towards the face's centre: the mesh
#: outline follows the silhouette, where a photo's pixels are partly hair, ears or background.
SOURCE_INSET = 0.92
#: A source triangle whose facing (cosine to the camera) is below this is foreshortened...
MIN_SOURCE_FACING = 0.2
#: ...and takes its mirror image's texture when that one faces the camera this much better.
MIRROR_GAIN = 0.3
#: A triangle with more than this share of its pixels covered (hair, frames) is not used.
MAX_COVERED = 0.8
#: A triangle with more than this share past the outline (less its margin) is not used.
MAX_OUTSIDE = 0.3
#: A mirror image is taken only when at most this share of it is covered.
MAX_MIRROR_COVERED = 0.02
#: Cheek points (image-left, then image-right) whose skin the skin model is fitted to.
CHEEKS = np.array([50, 101, 205, 187, 280, 330, 425, 411])
#: The forehead and temples, where hair falls over the face: the top of the outline from
#: temple to temple, then back along the upper edges of the brows.
FOREHEAD = np.array([
    127, 162, 21, 54, 103, 67, 109, 10, 338, 297, 332, 284, 251, 389, 356,
    300, 293, 334, 296, 336, 107, 66, 105, 63, 70,
])  # fmt: skip
#: The temples beside the brows' outer ends (each side: the brow's outer half, then the
#: outline from the forehead down to the eye's level), where grey brow ends and thin white
#: temple hair lie on the skin.
TEMPLES = (np.array([300, 293, 276, 283, 284, 251, 389, 356]), np.array([70, 63, 46, 53, 54, 21, 162, 127]))


@dataclass(frozen=True)
class SourceTexture:
    """One source face: per-triangle source coordinates and its texture at several sizes,
    smallest first (``levels[k] = (image, (T, 3, 2) triangle coordinates)``)."""

    usable: np.ndarray
    "(T,) bool: triangles with texture (False: covered in the photo; the target shows through)."
    mirrored: np.ndarray
    "(T,) bool: triangles textured from their mirror image."
    covered: np.ndarray
    "(h, w) bool at the photo crop's size: pixels found covering the skin (replaced)."
    levels: tuple[tuple[np.ndarray, np.ndarray], ...]
    width: float
    "The source face's width in pixels at full size."

    @classmethod
    def of(cls, source: SourceFace) -> SourceTexture:
        points = source.points
        pts = inset_outline(points[:, :2])
        covered = covered_skin(source.image, points)
        image = skin_filled(source.image, covered | mouth_opening(source.image.shape, points), points)
        image = evenly_lit(image, points)
        image = face_only(image, points)
        own = pts[TRIANGLES]
        # The mirror image of triangle (a, b, c) is (M[a], M[b], M[c]), wound the other way.
        mirror = pts[MIRROR[TRIANGLES]]
        own_facing, mirror_facing = facing(points), facing(points, MIRROR[TRIANGLES][:, ::-1])
        own_cover, mirror_cover = triangle_share(covered, own), triangle_share(covered, mirror)
        # Where the mesh folds at the source's silhouette, inner triangles reach past the
        # outline into the filled background: stretched over a target's cheek that faces
        # the camera they came out as pale stripes.
        outside = face_inside(source.image.shape, points) == 0
        own_out, mirror_out = triangle_share(outside, own), triangle_share(outside, mirror)
        # Only the outer face is mirrored: the nose's and eyes' sides are always half hidden,
        # and their mirror images carry the other side's light (a bright dot on the nose).
        # A mirror image with anything covering it is not taken either: its inpainted
        # pixels are the least reliable ones (pale arcs from white hair by the ear).
        mirrored = (
            (own_facing < MIN_SOURCE_FACING)
            & (mirror_facing > own_facing + MIRROR_GAIN)
            & ~INNER_TRIANGLES
            & (mirror_cover <= MAX_MIRROR_COVERED)
        )
        tri = np.where(mirrored[:, None, None], mirror, own)
        usable = (np.where(mirrored, mirror_cover, own_cover) <= MAX_COVERED) & (
            np.where(mirrored, mirror_out, own_out) <= MAX_OUTSIDE
        )
        levels = [(image, tri)]
        while np.ptp(levels[-1][1][..., 0]) > 96:
            img, t = levels[-1]
            levels.append((cv2.pyrDown(img), t / 2))
        return cls(usable, mirrored, covered, tuple(levels[::-1]), float(np.ptp(points[:, 0])))

    def level(self, face_w: float) -> tuple[np.ndarray, np.ndarray]:
        """The smallest texture at least as wide as the target face (no aliasing)."""
        for texture, tri in self.levels:
            if np.ptp(tri[..., 0]) >= face_w:
                return texture, tri
        return self.levels[-1]


#: The photo's own light is measured at this scale (Gaussian sigma, share of the face width).
LIGHT_SCALE = 0.08


def evenly_lit(image: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``image`` with the photo's own light tamed: luma is measured against the skin's smoothed
    luma (normalised convolution: eyes, brows, lips and background do not count), and the
    skin's highlights and deep shadows there are compressed towards the face's level, so
    a shiny nose tip or dark eye sockets are not carried onto the target, whose own light
    the swapper puts on. The rest of the photo's shading stays: fully evened, the results
    measured further from the source on the quality benchmark. The skin's colour cast is
    evened (:func:`even_tint`)."""
    xy = points[:, :2]
    face_w = float(np.ptp(xy[:, 0]))
    skin = np.zeros(image.shape[:2], np.uint8)
    cv2.fillPoly(skin, [np.round(inset_outline(xy)[FACE_OVAL]).astype(np.int32)], 1)
    for part in (EYE_LEFT, EYE_RIGHT, BROW_LEFT, BROW_RIGHT, LIPS_OUTER):
        cv2.fillConvexPoly(skin, cv2.convexHull(np.round(xy[part]).astype(np.int32)), 0)
    luma = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float32)
    area = skin.astype(np.float32)
    (low,) = smoothed([luma], area, LIGHT_SCALE * face_w)
    level = float(np.median(luma[skin > 0])) if skin.any() else float(luma.mean())
    gain = np.clip((level + 8) / (low + 8), 0.67, 1.5)
    lit = luma * gain
    temples = temple_zones(image.shape[:2], xy)
    seam = soft_skin(skin, face_w)
    calm = tamed(lit, level, seam, face_w, temples)
    out = image.astype(np.float32) * (calm / np.maximum(lit, 1.0))[..., None]
    # A highlight is the light's colour, not the skin's: toned down in luma only it turns
    # into a grey patch (a pale smear beside the nose). It takes the skin's colour at its
    # toned-down luma instead, fully once well above the highlight threshold.
    glare = np.clip((lit - level * (1 + HIGHLIGHT)) / (GLARE_RAMP * level), 0, 1) * ((skin | temples) > 0)
    glare = glare.astype(np.float32)
    if glare.any():
        tone = np.median(image[skin > 0].astype(np.float32), axis=0) / max(level, 1.0)
        soft = cv2.GaussianBlur(glare, (0, 0), max(1.0, 0.01 * face_w))[..., None]
        out += soft * (calm[..., None] * tone - out)
    return cv2.convertScaleAbs(even_tint(out, area, seam, level, face_w))


#: The soft seam round the skin where the source's light and colour are corrected (Gaussian
#: sigma, share of the face's width).
SEAM = 0.015


def soft_skin(skin: np.ndarray, face_w: float) -> np.ndarray:
    """(h, w) float32: 1 well inside ``skin`` (uint8, 1 on the skin), 0 off it (the eyes,
    brows, lips and past the outline), with a soft seam (``SEAM``): where the source's light
    and colour are corrected."""
    soft = max(1.0, SEAM * face_w)
    return cv2.GaussianBlur(cv2.erode(skin, np.ones((3, 3), np.uint8)).astype(np.float32), (0, 0), soft)


def even_tint(image: np.ndarray, area: np.ndarray, seam: np.ndarray, level: float, face_w: float) -> np.ndarray:
    """``image`` (BGR float32) with its skin's chroma pulled to the skin's median chroma at
    the light's scale (``LIGHT_SCALE``). A photo lit blue from one side (a window, a blue
    curtain), or with grey-blue eye sockets, carried that cast onto every target as grey-blue
    patches on the far cheek and rings round the eyes. Finer colour (freckles, a red spot,
    the lips' edge) stays. The cast is measured over ``area`` (float32, 1 on the skin); the
    shift is weighted by the pixel's luma over ``level`` (a shadow's colour is that much
    weaker) and by ``seam`` (:func:`soft_skin`: the eyes, brows and lips keep their colour)."""
    inside = area > 0
    if not inside.any():
        return image
    ycc = cv2.cvtColor(np.clip(image, 0, 255).astype(np.float32), cv2.COLOR_BGR2YCrCb)
    weight = seam * np.clip(ycc[..., 0] / max(level, 1.0), 0, 1)
    planes = [ycc[..., 1], ycc[..., 2]]
    for plane, low in zip(planes, smoothed(planes, area, LIGHT_SCALE * face_w)):
        plane -= weight * (low - float(np.median(plane[inside])))
    return cv2.cvtColor(ycc, cv2.COLOR_YCrCb2BGR)


def smoothed(planes: list[np.ndarray], weight: np.ndarray, sigma: float) -> list[np.ndarray]:
    """Each of ``planes`` (float32, full size) averaged over ``weight`` (normalised
    convolution: where the weight is 0 does not count) with a Gaussian of ``sigma`` px.
    Computed where ``sigma`` is 4 px, then scaled back up: the result is that smooth anyway,
    and a blur this wide at full size cost seconds on a large source photo."""
    k = max(1, int(sigma / 4))
    h, w = weight.shape
    size = (max(1, w // k), max(1, h // k))
    small = cv2.resize(weight, size, interpolation=cv2.INTER_AREA)
    norm = cv2.GaussianBlur(small, (0, 0), sigma / k) + 1e-3
    return [
        cv2.resize(
            cv2.GaussianBlur(cv2.resize(p * weight, size, interpolation=cv2.INTER_AREA), (0, 0), sigma / k) / norm,
            (w, h),
            interpolation=cv2.INTER_LINEAR,
        )
        for p in planes
    ]


#: On the skin, luma above the face's level × (1 + HIGHLIGHT) is a highlight of the photo's
#: light (a shiny nose tip, a wet forehead): it keeps only HIGHLIGHT_KEEP of its excess...
HIGHLIGHT, HIGHLIGHT_KEEP = 0.10, 0.25
#: A highlight takes the skin's colour over this share of the level above the threshold.
GLARE_RAMP = 0.15
#: ...and luma below level × (1 − SHADOW) keeps SHADOW_KEEP of its depth (eye bags, sockets
#: in top light), which the target's paler light would otherwise deepen into dark rings.
SHADOW, SHADOW_KEEP = 0.22, 0.5


def tamed(
    luma: np.ndarray, level: float, weight: np.ndarray, face_w: float, temples: np.ndarray | None = None
) -> np.ndarray:
    """``luma`` (float32) with the skin's highlights and deep shadows compressed towards
    ``level`` where ``weight`` (:func:`soft_skin`) says; eyes, brows and lips are left as
    they are, with a soft seam. In ``temples`` (uint8, 1 inside; brows included) the
    highlights are compressed too."""
    hi, lo = level * (1 + HIGHLIGHT), level * (1 - SHADOW)
    bright = np.where(luma > hi, hi + HIGHLIGHT_KEEP * (luma - hi), luma)
    out = np.where(bright < lo, lo - SHADOW_KEEP * (lo - bright), bright)
    soft = max(1.0, SEAM * face_w)
    calm = luma + weight * (out - luma)
    if temples is not None:
        # A grey brow end or thin white hair there, lit on a pale target, was a white spot.
        calm += cv2.GaussianBlur(temples.astype(np.float32), (0, 0), soft) * (1 - weight) * (bright - luma)
    return calm.astype(np.float32)


def temple_zones(shape: tuple[int, int], xy: np.ndarray) -> np.ndarray:
    """(h, w) uint8: 1 in the temples beside the brows' outer ends (``TEMPLES``)."""
    zones = np.zeros(shape, np.uint8)
    for side in TEMPLES:
        cv2.fillConvexPoly(zones, cv2.convexHull(np.round(xy[side]).astype(np.int32)), 1)
    return zones


#: face_only fills past the outline from this far inside it (share of the face width).
EDGE_MARGIN = 0.03


def _disc(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def face_inside(shape: tuple[int, ...], points: np.ndarray) -> np.ndarray:
    """(h, w) uint8: 1 inside the face outline less a margin of ``EDGE_MARGIN`` × its width."""
    outline = np.zeros(shape[:2], np.uint8)
    cv2.fillPoly(outline, [np.round(points[FACE_OVAL, :2]).astype(np.int32)], 1)
    return cv2.erode(outline, _disc(max(1, int(EDGE_MARGIN * np.ptp(points[:, 0])))))


def face_only(image: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``image`` with every pixel outside the face outline replaced by the nearest pixel
    inside it: no sample of the texture (its smaller copies blurred from it included) can
    then carry background, hair or ears in from past the outline."""
    # Filled from well inside the outline: its last pixels are often hair or background
    # the skin model missed, and on a turned face the far cheek's triangles reach past the
    # outline (it lies behind the cheek), where they would take those pixels as pale arcs.
    inside = face_inside(image.shape, points)
    if not inside.any():
        return image
    # Labels of the nearest zero pixel of (1 − inside), i.e. the nearest inside pixel.
    _, labels = cv2.distanceTransformWithLabels(1 - inside, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
    ys, xs = np.nonzero(inside == 1)
    # DIST_LABEL_PIXEL numbers the zero pixels in row-major order, as np.nonzero lists them.
    lut_y = np.concatenate([[0], ys])
    lut_x = np.concatenate([[0], xs])
    return image[lut_y[labels], lut_x[labels]]


def skin_filled(image: np.ndarray, covered: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``image`` with the ``covered`` pixels inpainted from the face's own skin only: past the
    outline lies background or hair, which inpainting would otherwise draw into a cover at
    the jaw's or the temple's edge."""
    ys, xs = np.nonzero(covered)
    if not len(ys):
        return image
    # Only round what is covered: the rest of the background is replaced by face_only anyway,
    # and inpainting all of it cost seconds on a large source photo.
    pad = 4 * INPAINT_RADIUS
    h, w = covered.shape
    box = (
        slice(max(0, ys.min() - pad), min(h, ys.max() + pad + 1)),
        slice(max(0, xs.min() - pad), min(w, xs.max() + pad + 1)),
    )
    unknown = (covered | (face_inside(image.shape, points) == 0))[box].view(np.uint8)
    out = image.copy()
    out[box] = cv2.inpaint(
        np.ascontiguousarray(image[box]), np.ascontiguousarray(unknown), INPAINT_RADIUS, cv2.INPAINT_TELEA
    )
    return out


#: How far round a pixel inpainting looks.
INPAINT_RADIUS = 5


#: The source's mouth opening is filled grown by this share of the face's width.
MOUTH_GROW = 0.01


def mouth_opening(shape: tuple[int, ...], points: np.ndarray) -> np.ndarray:
    """(h, w) bool: the source's mouth opening (teeth, tongue) and a pixel or two of the
    lips' inner edge. Filled from the lips round it: the lips' triangles are sampled right up
    to that edge, and on a target whose lips meet, teeth there were a white sliver."""
    mouth = np.zeros(shape[:2], np.uint8)
    cv2.fillPoly(mouth, [np.round(points[MOUTH_INNER, :2] * 16).astype(np.int32)], 1, cv2.LINE_8, 4)
    grow = max(1, int(round(MOUTH_GROW * np.ptp(points[:, 0]))))
    return cv2.dilate(mouth, _disc(grow)).astype(bool)


def inset_outline(points: np.ndarray) -> np.ndarray:
    """(N, 2) source points with the face outline pulled ``SOURCE_INSET`` towards the centre."""
    out = points.astype(np.float32)
    oval = out[FACE_OVAL]
    centre = oval.mean(0)
    out[FACE_OVAL] = centre + SOURCE_INSET * (oval - centre)
    return out


def covered_skin(image: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Pixels inside the face outline that are not its skin, (h, w) bool: of another colour
    than the cheeks anywhere (background or hair inside the outline of a turned face, glasses
    frames), brighter and paler (grey or white hair), or much darker on the forehead and
    temples (a fringe, strands of hair).

    Darkness counts only up there: lower down, creases and shadows beside the nose and mouth
    are as dark as hair and belong to the face."""
    h, w = image.shape[:2]
    xy = points[:, :2]
    face_w = float(np.ptp(xy[:, 0]))
    ycc = cv2.cvtColor(image, cv2.COLOR_BGR2YCrCb).astype(np.float32)
    cheeks = np.zeros((h, w), np.uint8)
    for p in xy[CHEEKS]:
        cv2.circle(cheeks, (int(p[0]), int(p[1])), max(2, int(0.04 * face_w)), 1, -1)
    skin = ycc[cheeks > 0]
    if len(skin) < 20:
        return np.zeros((h, w), bool)
    mean = np.median(skin, 0)
    spread = np.maximum(1.4826 * np.median(np.abs(skin - mean), 0), [8.0, 4.0, 4.0])
    face = np.zeros((h, w), np.uint8)
    cv2.fillPoly(face, [np.round(points[FACE_OVAL, :2]).astype(np.int32)], 1)
    forehead = np.zeros((h, w), np.uint8)
    cv2.fillPoly(forehead, [np.round(inset_outline(xy)[FOREHEAD]).astype(np.int32)], 1)
    features = np.zeros((h, w), np.uint8)
    for part in (EYE_LEFT, EYE_RIGHT, BROW_LEFT, BROW_RIGHT, LIPS_OUTER):
        cv2.fillConvexPoly(features, cv2.convexHull(np.round(xy[part]).astype(np.int32)), 1)
    cv2.dilate(features, np.ones((3, 3), np.uint8), dst=features, iterations=max(1, int(0.02 * face_w)))
    z = (ycc - mean) / spread
    dark = (-z[..., 0] > 4.0) & (forehead > 0)
    chroma = np.hypot(z[..., 1], z[..., 2])
    hue = chroma > 6.0
    # Grey or white hair: brighter than the skin and less coloured.
    pale = (z[..., 0] > 2.5) & (chroma > 3.0)
    found = ((dark | hue | pale) & (face > 0) & (features == 0)).view(np.uint8)
    # Drop single noisy pixels, then grow a little to take in the strands' soft edges.
    found = cv2.morphologyEx(found, cv2.MORPH_OPEN, np.ones((5, 5), np.uint8))
    found = cv2.dilate(found, np.ones((3, 3), np.uint8), iterations=2)
    return (found > 0) & (face > 0)


def triangle_share(mask: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """(T,) share of each triangle's pixels (``triangles`` (T, 3, 2)) where ``mask`` is set."""
    ids = np.full(mask.shape, -1, np.int32)
    for i, t in enumerate(np.round(triangles * 16).astype(np.int32)):
        cv2.fillConvexPoly(ids, t, i, cv2.LINE_8, 4)
    inside = ids >= 0
    total = np.bincount(ids[inside], minlength=len(triangles))
    hit = np.bincount(ids[inside & mask], minlength=len(triangles))
    return hit / np.maximum(total, 1)
