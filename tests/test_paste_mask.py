"""The neural paste-back masks: the default covers the face; the insightface style matches
insightface's own paste-back (tests/insightface_ref.py re-implements it)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from livefuse.app import Engine
from livefuse.config import load_settings
from livefuse.face.topology import FACE_OVAL
from livefuse.geometry import align
from livefuse.scratch import Scratch
from livefuse.swap.neural.swapper import box_mask, face_mask
from tests.helpers import frame_of
from tests.insightface_ref import INSwapperRef, estimate_norm


@pytest.fixture(scope="module")
def frontal(livefuse_home):
    image = cv2.imread(str(livefuse_home / "samples" / "obama.jpg"))
    with Engine(load_settings({"threads": 2, "home": str(livefuse_home)}, env={})) as engine:
        faces = engine.tracker().analyze(frame_of(image))
    assert len(faces) == 1
    return image, faces


def oval_in_crop(faces, matrix: np.ndarray, size: int) -> np.ndarray:
    pts = faces.landmarks[0, FACE_OVAL, :2] @ matrix[:, :2].T + matrix[:, 2]
    inside = np.zeros((size, size), np.uint8)
    cv2.fillPoly(inside, [np.round(pts).astype(np.int32)], 1)
    return inside > 0


def test_default_mask_covers_the_face_at_full_opacity(frontal):
    image, faces = frontal
    m = estimate_norm(faces.kps[0], 128)
    oval = oval_in_crop(faces, m, 128)
    mask = face_mask(box_mask(128), faces, 0, m, False, Scratch())
    full = (mask >= 254 / 255)[oval].mean()
    assert full >= 0.8, f"only {full:.0%} of the face oval is pasted at full opacity"
    # ...with a soft edge, not a cut-out: the mask falls to 0 within a few pixels outside.
    outside = cv2.dilate(oval.astype(np.uint8), np.ones((15, 15), np.uint8)) == 0
    assert mask[outside].max() == 0
    assert 0 < ((mask > 0) & (mask < 1)).sum()


def test_insightface_style_pastes_like_insightface(frontal):
    image, faces = frontal
    m = estimate_norm(faces.kps[0], 128)
    rng = np.random.default_rng(3)
    fake = cv2.GaussianBlur(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8), (0, 0), 2)
    want = INSwapperRef.paste_back(None, image, fake, m)  # type: ignore[arg-type]
    mask = face_mask(box_mask(128), faces, 0, m, False, Scratch(), style="insightface", frame_shape=image.shape)
    got = image.copy()
    align.paste_back(got, fake, mask, m, Scratch())
    diff = np.abs(got.astype(int) - want.astype(int))
    # Rounding (insightface truncates) and the crop warped once more: a few grey levels.
    assert diff.mean() < 0.2 and diff.max() <= 6, (diff.mean(), diff.max())
