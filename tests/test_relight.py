"""Relighting: the result carries the target's low-frequency light and the face's detail."""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np
import pytest

from livefuse.scratch import Scratch
from livefuse.swap.relight import relight, relight_channels


# The mesh path's (luma ratio, chroma shift) and the neural paths' (ratio per channel).
@pytest.mark.parametrize("relight", [relight, relight_channels], ids=["mesh", "neural"])
def test_relight_takes_the_targets_light_and_keeps_the_detail(relight: Callable[..., np.ndarray]) -> None:
    rng = np.random.default_rng(1)
    h = w = 160
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    detail = cv2.GaussianBlur(rng.normal(0, 12, (h, w)).astype(np.float32), (0, 0), 1.0)[..., None]
    # The target lit from the left, the face evenly and darker, with its own detail.
    target = np.clip(np.dstack([60 + xx * 0.9, 90 + xx * 0.8, 120 + xx * 0.7]), 0, 255).astype(np.uint8)
    face = np.clip(np.full((h, w, 3), (70, 80, 110), np.float32) + detail, 0, 255).astype(np.uint8)
    skin = np.ones((h, w), np.float32)
    out = relight(face, target, skin, face_w=w, scratch=Scratch())
    low = lambda x: cv2.GaussianBlur(x.astype(np.float32), (0, 0), 12)[20:-20, 20:-20]  # noqa: E731
    # The step a paste would show: the result's light against the target's, well inside.
    assert np.abs(low(out) - low(target)).mean() < 8
    assert np.abs(low(face) - low(target)).mean() > 30
    # The face's detail (high band) survives, scaled by at most the one gain per face.
    high = lambda x: (x.astype(np.float32) - cv2.GaussianBlur(x.astype(np.float32), (0, 0), 3))[..., 1]  # noqa: E731
    r = np.corrcoef(high(out)[20:-20, 20:-20].ravel(), high(face)[20:-20, 20:-20].ravel())[0, 1]
    assert r > 0.9
