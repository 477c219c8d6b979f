"""The built-in swapper: a piecewise-affine warp of the source face over the mesh
triangles, colour and lighting matched, blended with a feathered mask — face regions only."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from livefuse.face.topology import FACE_OVAL, MOUTH_INNER
from livefuse.faces import Faces
from livefuse.scratch import Scratch
from livefuse.swap.blend import blend_into, feathered_mask, low_res, match_colour, to_low_res
from livefuse.swap.source import SourceFace


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


#: The outer ring of extra points sits this far out from the face's centre, relative to the
#: face outline, so the warp is defined across the whole feathered edge of the mask.
RING = 1.25


#: The blend mask follows the outline pulled in this much towards the centre: the mesh's
#: outline sits on the silhouette, where a source photo's pixels are half background.
MASK_INSET = 0.93


def mask_outline(points: np.ndarray) -> np.ndarray:
    """The face outline the blend mask fills, slightly inside the mesh's own outline."""
    oval = points[FACE_OVAL]
    centre = oval.mean(0)
    return centre + MASK_INSET * (oval - centre)


def with_ring(points: np.ndarray, scale: float = RING) -> np.ndarray:
    """(468 + len(FACE_OVAL), 2) points: the mesh plus a ring ``scale`` times the outline."""
    oval = points[FACE_OVAL]
    centre = oval.mean(0)
    return np.concatenate([points, centre + scale * (oval - centre)])


def triangulate(points: np.ndarray) -> np.ndarray:
    """(T, 3) Delaunay triangles over 2-D ``points`` (indices into them)."""
    lo = points.min(0) - 1
    hi = points.max(0) + 1
    subdiv = cv2.Subdiv2D((int(lo[0]), int(lo[1]), int(hi[0] - lo[0]) + 2, int(hi[1] - lo[1]) + 2))
    subdiv.insert([(float(x), float(y)) for x, y in points])
    tri = subdiv.getTriangleList().reshape(-1, 3, 2)
    # Map vertex coordinates back to indices; drop triangles touching the virtual outer vertices.
    d = np.abs(tri[:, :, None, :] - points[None, None, :, :]).sum(-1)
    idx = d.argmin(-1)
    ok = (d.min(-1) < 1e-3).all(1)
    return idx[ok].astype(np.int32)


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

    def __init__(
        self, source: SourceFace | Sequence[SourceFace], config: MeshSwapConfig = MeshSwapConfig()
    ) -> None:
        self.config = config
        self.sources = [source] if isinstance(source, SourceFace) else list(source)
        self.source = self.sources[0]
        self._textures = [_Texture.of(s) for s in self.sources]
        self._scratch: list[Scratch] = []
        "One set of work arrays per face slot, so all faces can be computed before writing."
        self.faces_swapped = 0

    @property
    def triangles(self) -> np.ndarray:
        """The first source's triangles (indices into the mesh points plus the outer ring)."""
        return self._textures[0].triangles

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

    def _patch(self, image: np.ndarray, points: np.ndarray, texture: _Texture, scratch: Scratch) -> MeshPatch | None:
        """The face's region, its recoloured warped source face and blend alpha; None when
        the face is off-screen or too small to be seen."""
        pts = points[:, :2]
        h, w = image.shape[:2]
        x0, y0 = np.maximum(np.floor(pts.min(0)) - 1, 0).astype(int)
        x1, y1 = np.minimum(np.ceil(pts.max(0)) + 2, [w, h]).astype(int)
        if x1 - x0 < 8 or y1 - y0 < 8:
            return None
        face_w = float(np.ptp(pts[:, 0]))
        source, src_pts = texture.level(face_w)
        local = (with_ring(pts) - (x0, y0)).astype(np.float32)
        region = (slice(y0, y1), slice(x0, x1))
        target = image[region]
        order = _draw_order(texture.triangles, points[:, 2])
        warped = self._warp(source, src_pts, local, texture.triangles, order, target.shape[:2], face_w, scratch)
        alpha = feathered_mask(
            target.shape[:2],
            mask_outline(local),
            [local[MOUTH_INNER]] if self.config.keep_mouth else [],
            self.config.feather * face_w,
            scratch,
        )
        if self.config.opacity < 1:
            alpha *= self.config.opacity
        face = match_colour(warped, target, alpha) if self.config.colour else warped
        return MeshPatch(region, face, alpha, scratch)

    def _warp(
        self,
        texture: np.ndarray,
        src: np.ndarray,
        dst: np.ndarray,
        triangles: np.ndarray,
        order: np.ndarray,
        shape: tuple[int, int],
        face_w: float,
        scratch: Scratch,
    ) -> np.ndarray:
        """The source texture warped triangle by triangle onto the target points."""
        # The map is piecewise affine and continuous, so it is computed at 1/2 or 1/4
        # resolution and scaled up bilinearly with no visible difference.
        f = 1 if face_w < 96 else 2 if face_w < 320 else 4
        mw, mh = low_res(shape, f)
        ids = scratch.get("ids", (mh, mw), np.int32)
        ids[:] = -1
        tri_dst = to_low_res(dst, shape, (mw, mh))[triangles]
        fixed = np.round(tri_dst * 16).astype(np.int32)
        for i in order.tolist():
            cv2.fillConvexPoly(ids, fixed[i], i, cv2.LINE_8, 4)  # 4 fractional bits: sub-pixel accurate
        tri_src = src[triangles]
        aff = _affines(tri_dst, tri_src)
        inside = ids >= 0
        safe = np.where(inside, ids, 0)
        coef = aff[safe]  # (mh, mw, 3, 2)
        gx = np.arange(mw, dtype=np.float32)[None, :]
        gy = np.arange(mh, dtype=np.float32)[:, None]
        maps = coef[..., 0, :] * gx[..., None] + coef[..., 1, :] * gy[..., None] + coef[..., 2, :]
        # Rasterisation covers pixel centres just outside a triangle; on a squashed triangle
        # (the far cheek of a turned head) its affine map flings those far across the
        # source. Clamping to the triangle's own source extent keeps every sample local.
        np.clip(maps, tri_src.min(1)[safe], tri_src.max(1)[safe], out=maps)
        maps[~inside] = -1
        if f > 1:
            maps = cv2.resize(maps, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
        return cv2.remap(texture, maps[..., 0], maps[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _draw_order(triangles: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """Triangles far to near (painter's order): where a turned head folds the mesh over
    itself, the visible, nearer side wins. Ring triangles go first of all."""
    z = np.concatenate([depth, np.full(len(FACE_OVAL), np.inf, depth.dtype)])
    return np.argsort(-z[triangles].max(1), kind="stable")


@dataclass(frozen=True)
class MeshPatch:
    """A computed, not yet written, face: region of the frame, face pixels, alpha."""

    region: tuple[slice, slice]
    face: np.ndarray
    alpha: np.ndarray
    scratch: Scratch


@dataclass(frozen=True)
class _Texture:
    """One source face: its triangles and its texture at several sizes, smallest first."""

    triangles: np.ndarray
    levels: tuple[tuple[np.ndarray, np.ndarray], ...]

    @classmethod
    def of(cls, source: SourceFace) -> _Texture:
        levels = [(source.image, _source_points(source.points[:, :2]))]
        while np.ptp(levels[-1][1][:, 0]) > 96:
            img, pts = levels[-1]
            levels.append((cv2.pyrDown(img), pts / 2))
        return cls(triangulate(with_ring(source.points[:, :2])), tuple(levels[::-1]))

    def level(self, face_w: float) -> tuple[np.ndarray, np.ndarray]:
        """The smallest texture at least as wide as the target face (no aliasing)."""
        for texture, pts in self.levels:
            if np.ptp(pts[:, 0]) >= face_w:
                return texture, pts
        return self.levels[-1]


#: On the source side the outline is pulled in this much, and the ring sits on it.
SOURCE_INSET = 0.92


def _source_points(points: np.ndarray) -> np.ndarray:
    """Source mesh points with the outline and ring pulled inside the face.

    The mesh outline follows the silhouette, so a photo's pixels there are partly hair,
    ears or background; a turned target face shows that edge across its far cheek.
    Sampling the edge from just inside the face keeps it skin.
    """
    out = with_ring(points, SOURCE_INSET).astype(np.float32)
    out[FACE_OVAL] = out[len(points):]
    return out
