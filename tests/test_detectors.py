"""SCRFD and YuNet decoding, held against their documented contracts with crafted outputs."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from livefuse.face.detectors import ScrfdDetector, YunetDetector
from livefuse.geometry.crop import CropSpec
from livefuse.runtime.base import Runner, TensorSpec


class Crafted(Runner):
    """Returns fixed outputs and remembers the input it was given."""

    def __init__(self, outputs: list[np.ndarray]) -> None:
        super().__init__("crafted")
        self.out = outputs
        self.seen: np.ndarray | None = None

    provider = "none"  # type: ignore[assignment]
    inputs = [TensorSpec("input", (1, 3, 640, 640), "tensor(float)")]  # type: ignore[assignment]
    outputs = []  # type: ignore[assignment]

    def activate_impl(self) -> None: ...

    def infer_impl(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        self.seen = next(iter(feeds.values())).copy()
        return self.out

    def close_impl(self) -> None: ...


def crop(mean: float, std: float, rgb: bool) -> CropSpec:
    return CropSpec(640, np.zeros((5, 2)), np.full(3, mean, np.float32), np.full(3, std, np.float32), rgb=rgb)


def test_scrfd_decodes_distances_from_anchor_centres():
    outs = []
    for s in (8, 16, 32):
        outs.append(np.zeros(((640 // s) ** 2 * 2, 1), np.float32))
    for s in (8, 16, 32):
        outs.append(np.zeros(((640 // s) ** 2 * 2, 4), np.float32))
    for s in (8, 16, 32):
        outs.append(np.zeros(((640 // s) ** 2 * 2, 10), np.float32))
    # Stride 16, row 10, column 20, second anchor: centre (320, 160).
    index = (10 * 40 + 20) * 2 + 1
    outs[1][index] = 0.9
    outs[4][index] = [2, 3, 4, 5]  # left, top, right, bottom in strides
    outs[7][index] = np.arange(10) / 10
    image = np.full((160, 320, 3), 127, np.uint8)  # letterboxed at scale 2 into the top half
    with Crafted(outs) as runner:
        faces = ScrfdDetector(runner, crop(0.5, 128 / 255, True)).detect(image)
    assert len(faces) == 1
    np.testing.assert_allclose(faces.boxes[0], np.array([320 - 32, 160 - 48, 320 + 64, 160 + 80]) / 2, atol=1e-4)
    expected_kps = (np.array([320, 160]) + (np.arange(10) / 10).reshape(5, 2) * 16) / 2
    np.testing.assert_allclose(faces.kps[0], expected_kps, atol=1e-4)
    assert abs(faces.scores[0] - 0.9) < 1e-6
    # Input: RGB, (x - 127.5) / 128, letterboxed top-left into zeros.
    assert runner.seen is not None
    assert np.allclose(runner.seen[0, :, 0, 0], (127 - 127.5) / 128, atol=1e-5)
    assert np.allclose(runner.seen[0, :, -1, -1], -127.5 / 128, atol=1e-5)


def test_yunet_decodes_cells_with_exp_sizes_and_sqrt_scores():
    outs = []
    for width in (1, 1, 4, 10):  # cls, obj, bbox, kps
        for s in (8, 16, 32):
            outs.append(np.zeros((1, (640 // s) ** 2, width), np.float32))
    # Stride 32, row 3, column 5.
    index = 3 * 20 + 5
    outs[2][0, index] = 0.81
    outs[5][0, index] = 1.0
    outs[8][0, index] = [0.5, 0.25, np.log(2), np.log(3)]
    outs[11][0, index] = np.arange(10) / 10
    with Crafted(outs) as runner:
        faces = YunetDetector(runner, crop(0.0, 1 / 255, False)).detect(np.zeros((640, 640, 3), np.uint8))
    assert len(faces) == 1
    cx, cy = (5 + 0.5) * 32, (3 + 0.25) * 32
    np.testing.assert_allclose(faces.boxes[0], [cx - 32, cy - 48, cx + 32, cy + 48], atol=1e-3)
    expected = (np.arange(10).reshape(5, 2) / 10 + [5, 3]) * 32
    np.testing.assert_allclose(faces.kps[0], expected, atol=1e-3)
    assert abs(faces.scores[0] - 0.9) < 1e-6
