"""The built-in swapper: a piecewise-affine warp of the source face over MediaPipe's
canonical mesh triangles, relit to the target's light, blended with a mask that follows the
painted surface — face regions only.

The source side (texture.py) holds only the source's visible skin; on the target side
triangles turned away at the silhouette are not painted, and an open mouth keeps its
interior."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from livefuse.face.canonical import TRIANGLES
from livefuse.face.surface import (
    BROW_LEFT,
    BROW_RIGHT,
    EYE_LEFT,
    EYE_RIGHT,
    EYE_TRIANGLES,
    INNER_TRIANGLES,
    LIPS_OUTER,
    MOUTH_TRIANGLES,
    facing,
    mouth_open,
)  # fmt: skip
from livefuse.face.topology import MOUTH_INNER
from livefuse.faces import Faces
from livefuse.scratch import Scratch
from livefuse.swap.blend import blend_into, low_res, to_low_res
from livefuse.swap.relight import relight
from livefuse.swap.shape import EYE_L, EYE_R, LIPS, ShapeTransfer
from livefuse.swap.source import SourceFace
from livefuse.swap.texture import SourceTexture
from livefuse.swap.visible import HOLE, HOLE_FEATHER, cut, disc, skin_weight, visible_alpha

#: Default shape transfer strength (see swap/shape.py; chosen on the quality benchmark).
SHAPE_TRANSFER = 0.8


@dataclass(frozen=True, slots=True)
class MeshSwapConfig:
    """How the mesh swapper blends."""

    keep_mouth: bool = False
    "Keep the target's mouth interior (teeth, tongue) so talking looks natural."
    feather: float = 0.05
    "Width of the mask's soft edge, as a fraction of the face width."
    colour: bool = True
    "Match the source face's colour and lighting to the target."
    opacity: float = 1.0
    "0 leaves the target, 1 replaces it fully."
    keep_eyes: bool = False
    "Keep the target's eyeballs (its gaze) inside the source's eyelids."
    open_mouth: float = 0.0
    """Keep the target's mouth interior when its lip gap is at least this share of its width
    (0: always, the source's lips round the target's own teeth or lip line; inf: never)."""
    shape_transfer: float = SHAPE_TRANSFER
    "0..1: how far the target's inner face takes the source's proportions (0: the target's own)."


#: A target triangle facing the camera less than this (cosine) is not painted: it faces
#: away, or is seen so edge-on that any texture on it would be a streak.
MIN_FACING = 0.08


def _map_table(dst: np.ndarray, src: np.ndarray) -> np.ndarray:
    """(5, T + 2, 2) float32, per destination triangle: the x and y rows and the offset of
    the affine map taking it onto its source triangle (``s = x·row_x + y·row_y + offset``),
    then the source triangle's lower and upper corner. Degenerate triangles map to their
    source's first vertex. The two rows past the end are what ``ids`` −2 (an opening) and −1
    (nothing) index: they map to −1, outside every texture. Closed form (2 × 2 inverses
    written out): a batched solve costs ~10× more per frame."""
    d0, s0 = dst[:, 0].astype(np.float64), src[:, 0].astype(np.float64)
    e1, e2 = dst[:, 1] - d0, dst[:, 2] - d0  # (T, 2) edges
    f1, f2 = src[:, 1] - s0, src[:, 2] - s0
    det = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    ok = np.abs(det) > 1e-9
    r = (np.where(ok, 1.0, 0.0) / np.where(ok, det, 1.0))[:, None]
    out = np.empty((5, len(dst) + 2, 2), np.float32)
    row_x = (e2[:, 1:] * f1 - e1[:, 1:] * f2) * r
    row_y = (e1[:, :1] * f2 - e2[:, :1] * f1) * r
    out[0, :-2], out[1, :-2] = row_x, row_y
    out[2, :-2] = s0 - d0[:, :1] * row_x - d0[:, 1:] * row_y
    out[3, :-2] = np.minimum(np.minimum(src[:, 0], src[:, 1]), src[:, 2])
    out[4, :-2] = np.maximum(np.maximum(src[:, 0], src[:, 1]), src[:, 2])
    out[:2, -2:] = 0
    out[2:, -2:] = -1
    return out


class MeshSwapper:
    """Swaps the source face onto every face of a frame, in place.

    Work per face stays inside the face's bounding box; pixels outside the feathered mask
    are written back byte-identical. Not thread-safe (one instance per swap thread).
    """

    def __init__(self, source: SourceFace | Sequence[SourceFace], config: MeshSwapConfig = MeshSwapConfig()) -> None:
        self.config = config
        self.sources = [source] if isinstance(source, SourceFace) else list(source)
        self.source = self.sources[0]
        self._textures = [SourceTexture.of(s) for s in self.sources]
        self._shapes = [ShapeTransfer(s.points) for s in self.sources]
        self._scratch: list[Scratch] = []
        "One set of work arrays per face slot, so all faces can be computed before writing."
        self.faces_swapped = 0

    @property
    def textures(self) -> list[SourceTexture]:
        """The sources as prepared textures (which triangles are usable, which mirrored)."""
        return self._textures

    def swap(self, image: np.ndarray, faces: Faces) -> None:
        """Put the (first) source face onto each face of ``faces``; all or nothing."""
        self.commit(image, self.prepare(image, faces, [(i, 0) for i in range(len(faces))]))

    def prepare(self, image: np.ndarray, faces: Faces, pairs: Sequence[tuple[int, int]]) -> list[MeshPatch]:
        """Compute, without writing, source ``k``'s face for each (face index, k) pair."""
        if not pairs:
            return []
        if faces.landmarks is None:
            raise ValueError("the mesh swapper needs mesh landmarks (run the tracker first)")
        while len(self._scratch) < len(pairs):
            self._scratch.append(Scratch())
        patches = [
            self._patch(image, faces.landmarks[i], self._textures[k], self._shapes[k], scratch)
            for (i, k), scratch in zip(pairs, self._scratch)
        ]
        return [p for p in patches if p is not None]

    def commit(self, image: np.ndarray, patches: list[MeshPatch]) -> None:
        """Write prepared faces into ``image``."""
        for patch in patches:
            region = image[patch.region]
            blend_into(region, patch.face, patch.alpha, patch.scratch)
            # Over the openings (as far as their soft edges reach) the face lies on the
            # target's own pixels moved with the landmarks. Only there: past it the window
            # holds the face's soft outer edge on a turned head, where the feature's map
            # would carry the target's pixels too far (a square patch at the jaw).
            for window in patch.windows:
                under = window.under
                blend_into(under, patch.face[window.box], patch.alpha[window.box], patch.scratch)
                np.copyto(region[window.box], under, where=window.opening[..., None])
        self.faces_swapped += len(patches)

    def _patch(
        self, image: np.ndarray, points: np.ndarray, texture: SourceTexture, shape: ShapeTransfer, scratch: Scratch
    ) -> MeshPatch | None:
        """The face's region, its relit warped source face and blend alpha; None when the
        face is off-screen, too small to be seen, or turned fully away."""
        face_w = float(np.ptp(points[:, 0]))
        kept = self._mouth_kept(points)
        moved = shape.moved(points, self.config.shape_transfer)
        pts = moved[:, :2]
        y0, y1, x0, x1 = _window([pts, points[:, :2]], 1, image.shape[:2])
        if x1 - x0 < 8 or y1 - y0 < 8:
            return None
        source, tri_src = texture.level(face_w)
        local = (pts - (x0, y0)).astype(np.float32)
        region = (slice(y0, y1), slice(x0, x1))
        target = image[region]
        # Triangles turned away at the silhouette are not painted: the mask follows the
        # outline the face shows, not the full oval.
        painted = ((facing(points) >= MIN_FACING) | INNER_TRIANGLES) & texture.usable
        if not painted.any():
            return None
        opening = self._openings(kept)
        f = 1 if face_w < 96 else 2 if face_w < 320 else 4
        size = target.shape[:2]
        ids = self._rasterise(local, moved[:, 2], painted, opening, size, f, scratch)
        warped = self._warp(source, tri_src, ids, local[TRIANGLES], size, f, scratch)
        alpha = visible_alpha(ids, size, self.config.feather * face_w, f, scratch)
        cuts = [local[MOUTH_INNER]] if kept else []
        cut(alpha, cuts)
        windows = []
        if moved is not points and opening.any():
            own = (points[:, :2] - (x0, y0)).astype(np.float32)
            groups = ([LIPS] if kept else []) + ([EYE_L, EYE_R] if self.config.keep_eyes else [])
            openings = _Openings(ids, f, cuts, self.config.feather * face_w)
            windows = [openings.moved(target, g, local, own) for g in groups]
        if self.config.opacity < 1:
            alpha *= self.config.opacity
        if self.config.colour:
            small = to_low_res(local, size, ids.shape[::-1])
            parts = [small[p] for p in (EYE_LEFT, EYE_RIGHT, BROW_LEFT, BROW_RIGHT, LIPS_OUTER)]
            skin = skin_weight(ids, parts, scratch)
            knee = skin_weight(ids, [small[p] for p in (EYE_LEFT, EYE_RIGHT, MOUTH_INNER)], scratch, "knee")
            face = relight(warped, target, skin, face_w, scratch, knee)
        else:
            face = warped
        return MeshPatch(region, face, alpha, scratch, windows)

    def _openings(self, mouth_kept: bool) -> np.ndarray:
        """(T,) bool: triangles over the openings where the target's own pixels stay."""
        opening = EYE_TRIANGLES.copy() if self.config.keep_eyes else np.zeros(len(TRIANGLES), bool)
        if mouth_kept:
            opening |= MOUTH_TRIANGLES
        return opening

    def _mouth_kept(self, points: np.ndarray) -> bool:
        return self.config.keep_mouth or mouth_open(points) >= self.config.open_mouth

    @staticmethod
    def _rasterise(
        local: np.ndarray,
        depth: np.ndarray,
        painted: np.ndarray,
        opening: np.ndarray,
        shape: tuple[int, int],
        f: int,
        scratch: Scratch,
    ) -> np.ndarray:
        """A 1/``f`` resolution map of the triangle seen at each pixel: its index where it
        is painted, ``HOLE`` over the openings, −1 elsewhere (and under triangles facing away)."""
        mw, mh = low_res(shape, f)
        ids = scratch.get("ids", (mh, mw), np.int32)
        ids[:] = -1
        fixed = np.round(to_low_res(local, shape, (mw, mh))[TRIANGLES] * 16).astype(np.int32)
        # Far to near (painter's order): where a turned head folds the mesh over itself,
        # the visible, nearer side wins.
        drawn = np.flatnonzero(painted)
        order = drawn[np.argsort(-depth[TRIANGLES[drawn]].max(1), kind="stable")]
        # ~850 calls of ~1 µs each: the polygons and values are unpacked up front, so the
        # loop does nothing else (indexing inside it cost a fifth more).
        values = np.where(opening[order], HOLE, order).tolist()
        fill = cv2.fillConvexPoly
        for polygon, value in zip(list(fixed[order]), values):
            fill(ids, polygon, value, cv2.LINE_8, 4)  # 4 fractional bits
        return ids

    @staticmethod
    def _warp(
        texture: np.ndarray,
        tri_src: np.ndarray,
        ids: np.ndarray,
        tri_local: np.ndarray,
        shape: tuple[int, int],
        f: int,
        scratch: Scratch,
    ) -> np.ndarray:
        """The source texture warped triangle by triangle onto the target's painted triangles."""
        # The map is piecewise affine and, but for the seams _upscaled finds, continuous: it
        # is computed at 1/2 or 1/4 resolution and scaled up with no visible difference.
        maps = _low_res_map(ids, tri_local, tri_src, shape, scratch)
        if f > 1:
            # The map's usual step per low-res pixel: f × the texture's scale over the face's.
            scale = float(np.ptp(tri_src[..., 0])) / max(float(np.ptp(tri_local[..., 0])), 1.0)
            maps = _upscaled(maps, f * scale, shape)
        return cv2.remap(texture, maps[..., 0], maps[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _low_res_map(
    ids: np.ndarray, tri_local: np.ndarray, tri_src: np.ndarray, shape: tuple[int, int], scratch: Scratch
) -> np.ndarray:
    """(mh, mw, 2) float32 map taking each pixel of ``ids`` (a low-res copy of a ``shape``
    region) through the affine map of the triangle seen there from ``tri_local`` (full-res,
    (T, 3, 2)) onto ``tri_src``; −1 where no triangle is painted."""
    mh, mw = ids.shape
    table = _map_table(to_low_res(tri_local, shape, (mw, mh)), tri_src)
    # One gather per term into contiguous work arrays: the arithmetic below then runs on
    # plain arrays (a single gather of all terms leaves them strided, ~2× slower).
    flat = ids.ravel()
    row_x, row_y, offset, low, high = (
        np.take(table[k], flat, axis=0, out=scratch.get(f"map_{k}", (flat.size, 2))).reshape(mh, mw, 2)
        for k in range(5)
    )
    maps = scratch.get("map", (mh, mw, 2))
    np.multiply(row_x, np.arange(mw, dtype=np.float32)[None, :, None], out=maps)
    row_y *= np.arange(mh, dtype=np.float32)[:, None, None]
    maps += row_y
    maps += offset
    # Rasterisation covers pixel centres just outside a triangle; on a squashed triangle
    # its affine map flings those far across the source. Clamping to the triangle's own
    # source extent keeps every sample local.
    np.clip(maps, low, high, out=maps)
    return maps


@dataclass(frozen=True)
class MovedOpening:
    """An opening (an open mouth, a kept eye) of a face whose landmarks were moved: the
    target's own pixels there, moved with them."""

    box: tuple[slice, slice]
    "The window in the face's region."
    under: np.ndarray
    "The target's moved pixels in the window (BGR uint8)."
    opening: np.ndarray
    "(h, w) bool in the window: the opening and its soft edge's reach, written even where alpha is 0."


class _Openings:
    """Moves the target's own pixels at the openings with the landmarks. Only there does the
    target show through the inner face and must line up with the moved lips and lids;
    everywhere else the face covers it fully, or (its soft outer edge) hardly moves."""

    def __init__(self, ids: np.ndarray, f: int, cuts: list[np.ndarray], feather: float):
        self.f, self.cuts = f, cuts
        # The openings' reach: as far as visible_alpha's soft edge round them takes alpha to 0.
        self.reach = max(1, int(round(HOLE_FEATHER * feather / f))) + 2
        self.holes = cv2.dilate((ids == HOLE).view(np.uint8), disc(self.reach))

    def moved(self, target: np.ndarray, group: np.ndarray, moved: np.ndarray, original: np.ndarray) -> MovedOpening:
        """The opening of a feature whose vertices ``group`` moved as a whole (one similarity:
        see swap/shape.py) from ``original`` to ``moved`` (full-res (N, 2) points in the
        region): the target's pixels in the box round it carried by that map."""
        y0, y1, x0, x1 = _window([moved[group], original[group]], self.f * (self.reach + 1), target.shape[:2])
        # The least-squares affine map from the moved feature back onto the original one,
        # exact for a feature moved as a whole; in the box's own coordinates.
        ones = np.ones((len(group), 1), np.float32)
        src = np.hstack([moved[group] - (x0, y0), ones])
        back, *_ = np.linalg.lstsq(src.astype(np.float64), original[group].astype(np.float64), rcond=None)
        under = cv2.warpAffine(
            target,
            back.T,
            (x1 - x0, y1 - y0),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REPLICATE,
        )
        f, (mh, mw) = self.f, self.holes.shape
        rows = np.minimum(np.arange(y0, y1) // f, mh - 1)[:, None]
        cols = np.minimum(np.arange(x0, x1) // f, mw - 1)[None, :]
        opening = self.holes[rows, cols].copy()
        if self.cuts:
            shifted = [np.round((p - (x0, y0)) * 16).astype(np.int32) for p in self.cuts]
            cv2.fillPoly(opening, shifted, 1, cv2.LINE_8, 4)
        return MovedOpening((slice(y0, y1), slice(x0, x1)), under, opening.view(bool))


def _window(points: list[np.ndarray], pad: int, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1): the box round ``points`` (full-res (N, 2) sets), ``pad`` px wider,
    inside ``shape``."""
    both = np.concatenate(points)
    x0, y0 = np.maximum(np.floor(both.min(0)) - pad, 0).astype(int)
    x1, y1 = np.minimum(np.ceil(both.max(0)) + pad + 1, [shape[1], shape[0]]).astype(int)
    return int(y0), int(y1), int(x0), int(x1)


def _upscaled(maps: np.ndarray, step: float, shape: tuple[int, int]) -> np.ndarray:
    """The low-res sampling map scaled up to ``shape``: bilinear, except where the map jumps
    between neighbouring low-res pixels by over ``JUMP`` × ``step`` (its usual change per
    low-res pixel): at the seams between mirrored and own triangles, and where a turned
    head's nose or cheek hides the surface behind it. Interpolating across such a jump
    samples whatever lies between in the source (pale arcs of hair on the far cheek, a dark
    line along the nose's edge); nearest-neighbour keeps each sample in its own triangle."""
    full = cv2.resize(maps, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    limit = JUMP * step
    across = _jumps(maps[:, 1:], maps[:, :-1], limit)
    down = _jumps(maps[1:], maps[:-1], limit)
    if not (across.any() or down.any()):
        return full
    seam = np.zeros(maps.shape[:2], bool)
    seam[:, 1:] |= across
    seam[:, :-1] |= across
    seam[1:] |= down
    seam[:-1] |= down
    seam_full = cv2.resize(
        cv2.dilate(seam.view(np.uint8), _SQUARE), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST
    )
    nearest = cv2.resize(maps, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    cv2.copyTo(nearest, seam_full, full)  # in place; ~10× faster than np.copyto with a mask
    return full


def _jumps(a: np.ndarray, b: np.ndarray, limit: float) -> np.ndarray:
    """(h, w) bool: where neighbouring map values ``a`` and ``b`` ((h, w, 2) views) are both
    painted and differ by over ``limit`` in either coordinate. (The unpainted side of the
    surface's edge is a jump too, but the mask is 0 there.)"""
    h, w = a.shape[:2]
    big = cv2.absdiff(a, b).reshape(h, 2 * w) > limit
    big &= cv2.min(a, b).reshape(h, 2 * w) >= 0
    # The two coordinates' flags side by side, read as one 16-bit value: either set.
    return big.view(np.uint16) != 0


#: A sampling map jumping by more than this many times its usual step between neighbouring
#: low-res pixels is discontinuous there (see :func:`_upscaled`).
JUMP = 4.0
_SQUARE = np.ones((3, 3), np.uint8)


@dataclass(frozen=True)
class MeshPatch:
    """A computed, not yet written, face: region of the frame, face pixels, alpha."""

    region: tuple[slice, slice]
    face: np.ndarray
    alpha: np.ndarray
    scratch: Scratch
    windows: list[MovedOpening] = field(default_factory=list)
    "The openings of a face whose landmarks were moved (the target's own pixels moved there)."
