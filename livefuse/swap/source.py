"""The source face: the photo whose face livefuse puts onto people, analysed once."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from livefuse.errors import NoFaceError, SourceError
from livefuse.face.detect import Detector
from livefuse.face.mesh import MeshLandmarker, roi_from_detection, roi_from_landmarks
from livefuse.imagefile import decode_image

log = logging.getLogger(__name__)

#: Largest source photo accepted, in pixels per side (bigger ones are scaled down).
MAX_SIDE = 4096
#: A source face narrower than this (pixels) is upscaled onto most targets: it looks soft.
SHARP_WIDTH = 160


@dataclass(frozen=True, slots=True)
class SourceFace:
    """The source photo's face region and its 468 mesh points (in that region's pixels)."""

    image: np.ndarray
    "BGR crop around the face, with margin."
    points: np.ndarray
    "(468, 3) mesh points in ``image`` pixels."
    faces_in_photo: int
    origin: tuple[int, int] = (0, 0)
    "Top-left of ``image`` in the photo: photo points = ``points`` + origin."


def read_image(path: Path) -> np.ndarray:
    """A BGR photo from ``path``, with errors that say what is wrong with the file."""
    if not path.is_file():
        raise SourceError(f"source face photo {path} does not exist; pass the path of a JPEG or PNG photo")
    image = decode_image(path.read_bytes(), f"source face photo {path}")
    scale = MAX_SIDE / max(image.shape[:2])
    if scale < 1:
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return image


def analyse_source(
    image: np.ndarray, detector: Detector, landmarker: MeshLandmarker, name: str = "photo"
) -> SourceFace:
    """Find the largest face in ``image`` and its mesh; crop the region around it."""
    faces = detector.detect(image)
    if not len(faces):
        raise NoFaceError(
            f"no face found in the source {name}; use a photo with one clearly visible, "
            "roughly frontal face at least ~80 px wide"
        )
    best = faces.largest()
    if len(faces) > 1:
        log.warning("the source %s has %d faces; using the largest one", name, len(faces))
    points, presence = landmarker.landmarks(image, roi_from_detection(faces.boxes[best], faces.kps[best]))
    # A second pass from the mesh's own crop is what the tracker sees: more accurate.
    points, presence = landmarker.landmarks(image, roi_from_landmarks(points))
    if presence < 0.5:
        raise NoFaceError(
            f"the face in the source {name} is too unclear for the face mesh; use a sharper, frontal photo"
        )
    width = float(np.ptp(points[:, 0]))
    if width < SHARP_WIDTH:
        log.warning(
            "the face in the source %s is only %d px wide: swapped faces will look soft; use a photo "
            "with the face at least %d px across",
            name,
            width,
            SHARP_WIDTH,
        )
    return _crop(image, points, len(faces))


def _crop(image: np.ndarray, points: np.ndarray, count: int) -> SourceFace:
    h, w = image.shape[:2]
    lo, hi = points[:, :2].min(0), points[:, :2].max(0)
    pad = (hi - lo).max() * 0.1
    x0, y0 = np.maximum(np.floor(lo - pad), 0).astype(int)
    x1, y1 = np.minimum(np.ceil(hi + pad), [w, h]).astype(int)
    crop = np.ascontiguousarray(image[y0:y1, x0:x1])
    local = points.copy()
    local[:, :2] -= (x0, y0)
    return SourceFace(crop, local, count, (int(x0), int(y0)))
