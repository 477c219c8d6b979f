"""The face mesh as a surface: its triangles, their left/right mirror images, which way each
faces in an image, and the triangles that close the eyes and the mouth."""

from __future__ import annotations

import cv2
import numpy as np

from livefuse.face.canonical import TRIANGLES, VERTICES
from livefuse.face.topology import FACE_OVAL, MOUTH_INNER

#: Eyelid margins (the visible eyeball lies inside), image-left eye then image-right eye.
EYE_LEFT = np.array([33, 246, 161, 160, 159, 158, 157, 173, 133, 155, 154, 153, 145, 144, 163, 7])
EYE_RIGHT = np.array([263, 466, 388, 387, 386, 385, 384, 398, 362, 382, 381, 380, 374, 373, 390, 249])
#: Eyebrows (upper and lower edge), image-left then image-right.
BROW_LEFT = np.array([70, 63, 105, 66, 107, 55, 65, 52, 53, 46])
BROW_RIGHT = np.array([300, 293, 334, 296, 336, 285, 295, 282, 283, 276])
#: Outer edge of the lips.
LIPS_OUTER = np.array([
    61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 375, 321, 405, 314, 17, 84, 181, 91, 146,
])  # fmt: skip


def _mirror() -> np.ndarray:
    """Index of each vertex's mirror image across the face's midline (x → −x on the
    canonical face, which is exactly symmetric); midline vertices map to themselves."""
    flipped = VERTICES * np.array([-1, 1, 1], np.float32)
    d = np.abs(VERTICES[None, :, :] - flipped[:, None, :]).sum(-1)
    return d.argmin(1).astype(np.int32)


#: ``MIRROR[i]`` is the vertex at the mirror-image position of vertex ``i``.
MIRROR = _mirror()


def _inside(triangles: np.ndarray, ring: np.ndarray) -> np.ndarray:
    return np.asarray(np.isin(triangles, ring).all(1))


#: Triangles spanning an eye opening (between the eyelids) and the mouth opening (between the lips).
EYE_TRIANGLES = _inside(TRIANGLES, EYE_LEFT) | _inside(TRIANGLES, EYE_RIGHT)
MOUTH_TRIANGLES = _inside(TRIANGLES, MOUTH_INNER)


def _inner(scale: float) -> np.ndarray:
    """(T,) bool: triangles whose centre lies inside the face outline scaled ``scale`` about
    its centre, on the canonical face seen from the front."""
    oval = VERTICES[FACE_OVAL, :2]
    centre = oval.mean(0)
    ring = (centre + scale * (oval - centre)).astype(np.float32)
    mids = VERTICES[TRIANGLES, :2].mean(1)
    return np.array([cv2.pointPolygonTest(ring, (float(x), float(y)), False) >= 0 for x, y in mids])


#: Triangles of the face's inner part (eyes, nose, mouth and around them). A strong
#: expression folds the mesh there (a smile's creases turn a few triangles over): those
#: are painted whatever their facing, since the triangles around them cover them anyway.
INNER_TRIANGLES = _inner(0.7)


def facing(points: np.ndarray, triangles: np.ndarray = TRIANGLES) -> np.ndarray:
    """(T,) cosine between each triangle's normal and the view direction, from (N, 3) mesh
    points in image pixels (z in the same scale): 1 facing the camera, 0 edge-on, negative
    facing away. The sign comes from the triangle's winding in the image, which flips when
    the surface turns away; the magnitude from its 3-D normal."""
    p = points[triangles].astype(np.float32)
    e1, e2 = p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]
    area_2d = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    normal = np.cross(e1, e2)
    return area_2d / np.maximum(np.linalg.norm(normal, axis=1), 1e-6)


def mouth_open(points: np.ndarray) -> float:
    """The mouth's opening (inner lip gap at the centre) as a fraction of its width."""
    gap = float(np.linalg.norm(points[13, :2] - points[14, :2]))
    width = float(np.linalg.norm(points[61, :2] - points[291, :2]))
    return gap / max(width, 1e-6)
