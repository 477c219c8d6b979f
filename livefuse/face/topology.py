"""Named parts of MediaPipe's 468-point face mesh (indices into the landmark array)."""

from __future__ import annotations

import numpy as np

#: Face outline, clockwise from the forehead top.
FACE_OVAL = np.array([
    10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
    152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109,
])  # fmt: skip

#: Inner edge of the lips: the mouth opening.
MOUTH_INNER = np.array([
    78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308, 324, 318, 402, 317, 14, 87, 178, 88, 95,
])  # fmt: skip

#: Eye corners (outer, inner) of the eye on the image's left, then of the one on its right.
EYE_LEFT_CORNERS = np.array([33, 133])
EYE_RIGHT_CORNERS = np.array([362, 263])
NOSE_TIP = 1
MOUTH_LEFT, MOUTH_RIGHT = 61, 291


def five_points(landmarks: np.ndarray) -> np.ndarray:
    """(n, 5, 2) detector-style keypoints from (n, 468, ≥2) mesh points:
    eye centres, nose tip and mouth corners, image left to right."""
    pts = landmarks[..., :2]
    return np.stack(
        [
            pts[:, EYE_LEFT_CORNERS].mean(axis=1),
            pts[:, EYE_RIGHT_CORNERS].mean(axis=1),
            pts[:, NOSE_TIP],
            pts[:, MOUTH_LEFT],
            pts[:, MOUTH_RIGHT],
        ],
        axis=1,
    ).astype(np.float32)
