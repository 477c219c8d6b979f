"""The built-in swapper: a piecewise-affine warp of the source face over MediaPipe's
canonical mesh triangles, relit to the target's light, blended with a mask that follows the
painted surface — face regions only.

The source side (texture.py) holds only the source's visible skin; on the target side
triangles turned away at the silhouette are not painted, and an open mouth keeps its
interior."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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
from livefuse.swap.source import SourceFace
from livefuse.swap.texture import SourceTexture
from livefuse.swap.visible import HOLE, cut, skin_weight, visible_alpha


@dataclass(frozen=True, slots=True)
class MeshSwapConfig:
    """How the mesh swapper blends."""

    keep_mouth: bool = False
    "Keep the target's mouth interior (teeth, tongue) so talking looks natural."
    feather: float = 0.08
    "Width of the mask's soft edge, as a fraction of the face width."
    colour: bool = True
    "Match the source face's colour and lighting to the target."
    opacity: float = 1.0
    "0 leaves the target, 1 replaces it fully."
    keep_eyes: bool = False
    "Keep the target's eyeballs (its gaze) inside the source's eyelids."
    open_mouth: float = 0.06
    "Keep the target's mouth interior when its lip gap is at least this share of its width (inf: never)."


#: A target triangle facing the camera less than this (cosine) is not painted: it faces
#: away, or is seen so edge-on that any texture on it would be a streak.
MIN_FACING = 0.08


def _affines(dst: np.ndarray, src: np.ndarray) -> np.ndarray:
    """(T, 3, 2) affine maps taking each destination triangle onto its source triangle
    (``[x, y, 1] @ A = [sx, sy]``); degenerate triangles get an all-zero map."""
    d = np.concatenate([dst, np.ones((*dst.shape[:2], 1), dst.dtype)], axis=2)
    det = np.linalg.det(d)
    ok = np.abs(det) > 1e-9
    out = np.zeros((len(d), 3, 2), np.float32)
    out[ok] = np.linalg.solve(d[ok], src[ok])
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
            self._patch(image, faces.landmarks[i], self._textures[k], scratch)
            for (i, k), scratch in zip(pairs, self._scratch)
        ]
        return [p for p in patches if p is not None]

    def commit(self, image: np.ndarray, patches: list[MeshPatch]) -> None:
        """Write prepared faces into ``image``."""
        for patch in patches:
            blend_into(image[patch.region], patch.face, patch.alpha, patch.scratch)
        self.faces_swapped += len(patches)

    def _patch(
        self, image: np.ndarray, points: np.ndarray, texture: SourceTexture, scratch: Scratch
    ) -> MeshPatch | None:
        """The face's region, its relit warped source face and blend alpha; None when the
        face is off-screen, too small to be seen, or turned fully away."""
        pts = points[:, :2]
        h, w = image.shape[:2]
        x0, y0 = np.maximum(np.floor(pts.min(0)) - 1, 0).astype(int)
        x1, y1 = np.minimum(np.ceil(pts.max(0)) + 2, [w, h]).astype(int)
        if x1 - x0 < 8 or y1 - y0 < 8:
            return None
        face_w = float(np.ptp(pts[:, 0]))
        source, tri_src = texture.level(face_w)
        local = (pts - (x0, y0)).astype(np.float32)
        region = (slice(y0, y1), slice(x0, x1))
        target = image[region]
        # Triangles turned away at the silhouette are not painted: the mask follows the
        # outline the face shows, not the full oval.
        painted = ((facing(points) >= MIN_FACING) | INNER_TRIANGLES) & texture.usable
        if not painted.any():
            return None
        opening = self._openings(points)
        f = 1 if face_w < 96 else 2 if face_w < 320 else 4
        shape = target.shape[:2]
        ids = self._rasterise(local, points[:, 2], painted, opening, shape, f, scratch)
        warped = self._warp(source, tri_src, ids, local[TRIANGLES], shape, f, scratch, texture.mirrored)
        alpha = visible_alpha(ids, shape, self.config.feather * face_w, f, scratch)
        cut(alpha, [local[MOUTH_INNER]] if self._mouth_kept(points) else [])
        if self.config.opacity < 1:
            alpha *= self.config.opacity
        if self.config.colour:
            small = to_low_res(local, shape, ids.shape[::-1])
            parts = [small[p] for p in (EYE_LEFT, EYE_RIGHT, BROW_LEFT, BROW_RIGHT, LIPS_OUTER)]
            face = relight(warped, target, skin_weight(ids, parts, scratch), face_w, scratch)
        else:
            face = warped
        return MeshPatch(region, face, alpha, scratch)

    def _openings(self, points: np.ndarray) -> np.ndarray:
        """(T,) bool: triangles over the openings where the target's own pixels stay."""
        opening = EYE_TRIANGLES.copy() if self.config.keep_eyes else np.zeros(len(TRIANGLES), bool)
        if self._mouth_kept(points):
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
        for i in order.tolist():
            cv2.fillConvexPoly(ids, fixed[i], HOLE if opening[i] else i, cv2.LINE_8, 4)  # 4 fractional bits
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
        mirrored: np.ndarray,
    ) -> np.ndarray:
        """The source texture warped triangle by triangle onto the target's painted triangles
        (``mirrored``: (T,) bool, triangles textured from their mirror image)."""
        # The map is piecewise affine and continuous, so it is computed at 1/2 or 1/4
        # resolution and scaled up bilinearly with no visible difference.
        mh, mw = ids.shape
        tri_dst = to_low_res(tri_local, shape, (mw, mh))
        aff = _affines(tri_dst, tri_src)
        inside = ids >= 0
        safe = np.where(inside, ids, 0)
        coef = aff[safe]  # (mh, mw, 3, 2)
        gx = np.arange(mw, dtype=np.float32)[None, :]
        gy = np.arange(mh, dtype=np.float32)[:, None]
        maps = coef[..., 0, :] * gx[..., None] + coef[..., 1, :] * gy[..., None] + coef[..., 2, :]
        # Rasterisation covers pixel centres just outside a triangle; on a squashed triangle
        # its affine map flings those far across the source. Clamping to the triangle's own
        # source extent keeps every sample local.
        np.clip(maps, tri_src.min(1)[safe], tri_src.max(1)[safe], out=maps)
        maps[~inside] = -1
        if f > 1:
            maps = _upscaled(maps, ids, mirrored, shape)
        return cv2.remap(texture, maps[..., 0], maps[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _upscaled(maps: np.ndarray, ids: np.ndarray, mirrored: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The low-res sampling map scaled up to ``shape``: bilinear, except along the seams
    between mirrored and own triangles. The map jumps across the face there, and
    interpolating across the jump would sample whatever lies between (pale arcs of hair
    and background on the far cheek); nearest-neighbour keeps each sample in its triangle."""
    full = cv2.resize(maps, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    if not mirrored.any():
        return full
    flip = (mirrored[ids] & (ids >= 0)).view(np.uint8)
    if not flip.any():
        return full
    seam = cv2.dilate(flip, _SQUARE) != cv2.erode(flip, _SQUARE)
    seam_full = cv2.resize(seam.view(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST).view(bool)
    nearest = cv2.resize(maps, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    full[seam_full] = nearest[seam_full]
    return full


_SQUARE = np.ones((3, 3), np.uint8)


@dataclass(frozen=True)
class MeshPatch:
    """A computed, not yet written, face: region of the frame, face pixels, alpha."""

    region: tuple[slice, slice]
    face: np.ndarray
    alpha: np.ndarray
    scratch: Scratch
