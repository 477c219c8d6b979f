"""MediaPipe face mesh: 468 points from a rotated square crop around a face."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from livefuse.face.topology import EYE_LEFT_CORNERS, EYE_RIGHT_CORNERS
from livefuse.faces import MESH_POINTS
from livefuse.runtime.base import Runner

#: Side of the model's input crop.
CROP = 192
#: The crop spans this many times the face's size (MediaPipe's own margin).
MARGIN = 1.5


@dataclass(frozen=True, slots=True)
class Roi:
    """A rotated square region around a face: centre, side and roll (radians)."""

    cx: float
    cy: float
    size: float
    angle: float

    def to_crop(self) -> np.ndarray:
        """2×3 affine matrix mapping frame pixels into the model's crop."""
        m = cv2.getRotationMatrix2D((self.cx, self.cy), np.degrees(self.angle), CROP / self.size)
        m[:, 2] += np.array([CROP / 2 - self.cx, CROP / 2 - self.cy])
        return m


def roi_from_detection(box: np.ndarray, kps: np.ndarray) -> Roi:
    """The crop around a detector box, levelled by the eye keypoints."""
    (x1, y1, x2, y2), (le, re) = box, kps[:2]
    angle = float(np.arctan2(re[1] - le[1], re[0] - le[0]))
    return Roi((x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, y2 - y1) * MARGIN, angle)


def roi_from_landmarks(points: np.ndarray) -> Roi:
    """The crop for the next frame from this frame's mesh points (re-centring a track)."""
    xy = points[:, :2]
    le, re = xy[EYE_LEFT_CORNERS].mean(0), xy[EYE_RIGHT_CORNERS].mean(0)
    angle = float(np.arctan2(re[1] - le[1], re[0] - le[0]))
    # Measure the extent in the face's own (levelled) frame so roll does not inflate it.
    c, s = np.cos(-angle), np.sin(-angle)
    rot = xy @ np.array([[c, s], [-s, c]], dtype=np.float32)
    lo, hi = rot.min(0), rot.max(0)
    mid = (lo + hi) / 2
    cx, cy = mid @ np.array([[c, -s], [s, c]], dtype=np.float32)
    return Roi(float(cx), float(cy), float(max(hi - lo)) * MARGIN, angle)


class MeshLandmarker:
    """Runs the face-mesh model on one face at a time. Input buffers are reused."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self._crop = np.zeros((CROP, CROP, 3), np.uint8)
        self._blob = np.zeros((1, 3, CROP, CROP), np.float32)
        self._input = runner.inputs[0].name

    def landmarks(self, image: np.ndarray, roi: Roi) -> tuple[np.ndarray, float]:
        """(468, 3) points in frame pixels (z in the same scale) and the presence score."""
        m = roi.to_crop()
        # warpAffine reads only the pixels under the crop: no whole-frame work.
        cv2.warpAffine(image, m, (CROP, CROP), dst=self._crop, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        np.multiply(self._crop[:, :, ::-1].transpose(2, 0, 1), 1 / 255, out=self._blob[0], casting="unsafe")
        coords, logit = self.runner.infer({self._input: self._blob})
        pts = coords.reshape(MESH_POINTS, 3).astype(np.float32)
        inv = cv2.invertAffineTransform(m)
        out = np.empty_like(pts)
        out[:, :2] = pts[:, :2] @ inv[:, :2].T + inv[:, 2]
        out[:, 2] = pts[:, 2] * (roi.size / CROP)
        presence = float(1 / (1 + np.exp(-float(logit.ravel()[0]))))
        return out, presence
