"""Optional detectors for users who have their weights: SCRFD (insightface) and YuNet
(OpenCV Zoo). Same contract as the built-in CenterFace: ``detect(image) -> Faces``."""

from __future__ import annotations

import cv2
import numpy as np

from livefuse.face.detect import nms
from livefuse.faces import Faces
from livefuse.geometry.crop import CropSpec
from livefuse.runtime.base import Runner

STRIDES = (8, 16, 32)


def _grid(rows: int, cols: int, stride: int, repeat: int) -> np.ndarray:
    """(rows·cols·repeat, 2) cell origins (x, y)·stride, row-major, each ``repeat`` times."""
    ys, xs = np.mgrid[:rows, :cols]
    cells = np.stack([xs, ys], axis=-1).reshape(-1, 2).astype(np.float32) * stride
    return np.repeat(cells, repeat, axis=0)


class _Letterboxed:
    """Shared input handling: the frame scaled into the top-left of a square canvas."""

    def __init__(self, runner: Runner, crop: CropSpec, threshold: float, nms_iou: float) -> None:
        self.runner, self.crop = runner, crop
        self.threshold, self.nms_iou = threshold, nms_iou
        self.calls = 0
        s = crop.size
        self._canvas = np.zeros((s, s, 3), np.uint8)
        self._blob = np.zeros((1, 3, s, s), np.float32)
        self._input = runner.inputs[0].name

    def _run(self, image: np.ndarray) -> tuple[list[np.ndarray], float]:
        s = self.crop.size
        h, w = image.shape[:2]
        scale = min(s / h, s / w)
        nh, nw = max(1, int(h * scale)), max(1, int(w * scale))
        self._canvas[:] = 0
        cv2.resize(image, (nw, nh), dst=self._canvas[:nh, :nw])
        self.crop.to_input(self._canvas, self._blob[0])
        self.calls += 1
        outs = [o[0] if o.ndim == 3 else o for o in self.runner.infer({self._input: self._blob})]
        return outs, scale

    def _finish(self, boxes: np.ndarray, scores: np.ndarray, kps: np.ndarray, scale: float) -> Faces:
        if not len(scores):
            return Faces.empty()
        keep = nms(boxes, scores, self.nms_iou)
        return Faces(
            boxes=(boxes[keep] / scale).astype(np.float32),
            scores=scores[keep].astype(np.float32),
            kps=(kps[keep] / scale).astype(np.float32),
        )


class ScrfdDetector(_Letterboxed):
    """SCRFD (``det_10g``): 9 outputs, scores then box distances then keypoint offsets for
    strides 8, 16, 32, two anchors per cell (insightface 0.7.3's decoding)."""

    def __init__(self, runner: Runner, crop: CropSpec, threshold: float = 0.5) -> None:
        super().__init__(runner, crop, threshold, 0.4)

    def detect(self, image: np.ndarray) -> Faces:
        outs, scale = self._run(image)
        s = self.crop.size
        boxes, scores, kps = [], [], []
        for i, stride in enumerate(STRIDES):
            centres = _grid(s // stride, s // stride, stride, 2)
            score = outs[i].reshape(-1)
            keep = score >= self.threshold
            c = centres[keep]
            d = outs[i + 3].reshape(-1, 4)[keep] * stride
            k = outs[i + 6].reshape(-1, 5, 2)[keep] * stride
            boxes.append(np.concatenate([c - d[:, :2], c + d[:, 2:]], axis=1))
            kps.append(c[:, None, :] + k)
            scores.append(score[keep])
        return self._finish(np.concatenate(boxes), np.concatenate(scores), np.concatenate(kps), scale)


class YunetDetector(_Letterboxed):
    """YuNet (OpenCV Zoo 2023mar): 12 outputs — cls, obj, bbox, kps for strides 8, 16, 32,
    one anchor per cell; score = √(cls·obj) as OpenCV's FaceDetectorYN computes it."""

    def __init__(self, runner: Runner, crop: CropSpec, threshold: float = 0.6) -> None:
        super().__init__(runner, crop, threshold, 0.3)

    def detect(self, image: np.ndarray) -> Faces:
        outs, scale = self._run(image)
        s = self.crop.size
        boxes, scores, kps = [], [], []
        for i, stride in enumerate(STRIDES):
            cells = _grid(s // stride, s // stride, 1, 1)
            cls = np.clip(outs[i].reshape(-1), 0, 1)
            obj = np.clip(outs[i + 3].reshape(-1), 0, 1)
            score = np.sqrt(cls * obj)
            keep = score >= self.threshold
            c = cells[keep]
            b = outs[i + 6].reshape(-1, 4)[keep]
            centre = (c + b[:, :2]) * stride
            size = np.exp(b[:, 2:]) * stride
            boxes.append(np.concatenate([centre - size / 2, centre + size / 2], axis=1))
            k = outs[i + 9].reshape(-1, 5, 2)[keep]
            kps.append((k + c[:, None, :]) * stride)
            scores.append(score[keep])
        return self._finish(np.concatenate(boxes), np.concatenate(scores), np.concatenate(kps), scale)
