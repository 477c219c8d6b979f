"""CenterFace detector: letterbox, run, decode heatmap peaks, NMS, 5 keypoints."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from livefuse.faces import Faces
from livefuse.runtime.base import Runner

#: CenterFace works at stride 4 and its backbone needs sides that are multiples of 32.
_STRIDE = 4
_ALIGN = 32


class Detector(Protocol):
    """Finds faces: boxes, scores and five keypoints, in the image's pixels.
    ``calls`` counts the model runs (the detector rate in the stats)."""

    @property
    def calls(self) -> int: ...

    def detect(self, image: np.ndarray) -> Faces: ...


@dataclass(frozen=True, slots=True)
class DetectorConfig:
    """How the detector runs."""

    size: int = 640
    "Longest side, in pixels, the frame is scaled to before detection (faces ≥ ~1/20 of it)."
    threshold: float = 0.5
    "Heatmap score a face must reach."
    nms_iou: float = 0.3
    "Overlap above which the weaker of two boxes is dropped."


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Indices of the boxes kept by greedy non-maximum suppression, best first."""
    order = np.argsort(-scores)
    areas = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
    keep: list[int] = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(int(i))
        lt = np.maximum(boxes[i, :2], boxes[rest, :2])
        rb = np.minimum(boxes[i, 2:], boxes[rest, 2:])
        inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
        overlap = inter / (areas[i] + areas[rest] - inter + 1e-9)
        order = rest[overlap <= iou]
    return np.asarray(keep, dtype=np.int64)


class CenterFaceDetector:
    """Finds faces with CenterFace. Keeps one letterbox buffer per input size, so a
    steady stream allocates no new input tensor between calls."""

    def __init__(self, runner: Runner, config: DetectorConfig = DetectorConfig()) -> None:
        self.runner = runner
        self.config = config
        self._blob: np.ndarray | None = None
        self._canvas: np.ndarray | None = None
        self.calls = 0

    def _letterbox(self, image: np.ndarray) -> float:
        """Scale ``image`` into the reusable input blob; return the scale factor used."""
        h, w = image.shape[:2]
        scale = min(1.0, self.config.size / max(h, w))
        sw, sh = max(1, round(w * scale)), max(1, round(h * scale))
        bw, bh = -(-sw // _ALIGN) * _ALIGN, -(-sh // _ALIGN) * _ALIGN
        if self._canvas is None or self._canvas.shape[:2] != (bh, bw):
            self._canvas = np.zeros((bh, bw, 3), np.uint8)
            self._blob = np.zeros((1, 3, bh, bw), np.float32)
        self._canvas[:] = 0
        cv2.resize(image, (sw, sh), dst=self._canvas[:sh, :sw], interpolation=cv2.INTER_AREA)
        # The model takes RGB in 0..255, NCHW.
        np.copyto(self._blob[0], self._canvas[:, :, ::-1].transpose(2, 0, 1))  # type: ignore[index]
        return sw / w

    def detect(self, image: np.ndarray) -> Faces:
        """All faces in a BGR ``image``, in its pixel coordinates, best score first."""
        scale = self._letterbox(image)
        self.calls += 1
        name = self.runner.inputs[0].name
        heat, size, offset, lms = self.runner.infer({name: self._blob})  # type: ignore[dict-item]
        faces = decode(heat[0, 0], size[0], offset[0], lms[0], self.config.threshold)
        keep = nms(faces.boxes, faces.scores, self.config.nms_iou)
        faces = faces[keep]
        faces.boxes /= scale
        faces.kps /= scale
        h, w = image.shape[:2]
        np.clip(faces.boxes, 0, [w, h, w, h], out=faces.boxes)
        return faces


def decode(heat: np.ndarray, size: np.ndarray, offset: np.ndarray, lms: np.ndarray, threshold: float) -> Faces:
    """Turn CenterFace's stride-4 maps into boxes, scores and keypoints (input pixels)."""
    ys, xs = np.nonzero(heat > threshold)
    if ys.size == 0:
        return Faces.empty()
    bh = np.exp(size[0, ys, xs]) * _STRIDE
    bw = np.exp(size[1, ys, xs]) * _STRIDE
    cx = (xs + offset[1, ys, xs] + 0.5) * _STRIDE
    cy = (ys + offset[0, ys, xs] + 0.5) * _STRIDE
    x1, y1 = cx - bw / 2, cy - bh / 2
    boxes = np.stack([x1, y1, x1 + bw, y1 + bh], axis=1).astype(np.float32)
    # Landmarks are offsets from the box's top-left corner in box units, (y, x) pairs.
    pts = lms[:, ys, xs].T.reshape(-1, 5, 2)
    kps = np.stack([pts[:, :, 1] * bw[:, None] + x1[:, None], pts[:, :, 0] * bh[:, None] + y1[:, None]], axis=2)
    return Faces(boxes=boxes, scores=heat[ys, xs].astype(np.float32), kps=kps.astype(np.float32))


#: The narrowest face CenterFace finds reliably, in its input's pixels (box width). Measured:
#: 12 px (a face 24 px wide in a 1280-wide frame at input 640, 48 px at input 320); with margin.
MIN_FACE_INPUT = 20


class TieredDetector:
    """Live detection in two tiers: most passes run ``coarse`` (the frame at a smaller input:
    a quarter of the pixels, about a quarter of the time), every ``fine_every``-th pass runs
    ``fine`` (the full input size). Faces wide enough for the coarse input appear within one
    detector period, as before; narrower ones within ``fine_every`` periods.

    On a CPU the detector was the live path's largest cost after the swap (720p: 44 ms a
    pass at input 640, 12 ms at 320), and on a machine with little to spare its passes put
    the other frames' tail up. ``calls`` counts passes of both tiers.
    """

    def __init__(self, fine: CenterFaceDetector, coarse: CenterFaceDetector, fine_every: int) -> None:
        if fine_every < 1:
            raise ValueError("fine_every must be at least 1")
        self.fine, self.coarse, self.fine_every = fine, coarse, fine_every
        self._passes = 0

    @property
    def calls(self) -> int:
        return self.fine.calls + self.coarse.calls

    def detect(self, image: np.ndarray) -> Faces:
        """Faces in ``image``: the first pass and every ``fine_every``-th are fine."""
        tier = self.fine if self._passes % self.fine_every == 0 else self.coarse
        self._passes += 1
        return tier.detect(image)

    def reliable_share(self) -> float:
        """The narrowest face every pass finds, as a share of the frame's longest side: a
        track narrower than this may go unseen by a coarse pass without being lost."""
        return MIN_FACE_INPUT / self.coarse.config.size
