"""The mesh swapper: what changes, what does not, and whose face comes out."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from livefuse.face.surface import mouth_open
from livefuse.face.topology import MOUTH_INNER
from livefuse.swap.mesh import MeshSwapConfig, MeshSwapper
from tests.helpers import frame_of, hull_mask, oval_mask, texture_similarity, unwrapped


@pytest.fixture(scope="module")
def biden(engine, livefuse_home):
    return engine.swapper(livefuse_home / "samples" / "biden.jpg")


@pytest.fixture(scope="module")
def group(engine, livefuse_home):
    image = cv2.imread(str(livefuse_home / "samples" / "t1.jpg"))
    return image, engine.tracker().analyze(frame_of(image))


def test_only_face_regions_change(biden, group):
    image, faces = group
    out = image.copy()
    biden.swap(out, faces)
    changed = (out != image).any(axis=2)
    outside = changed & ~hull_mask(image.shape, faces, grow=1)
    assert outside.sum() == 0, "pixels outside the faces must be byte-identical"
    inner = oval_mask(image.shape, faces)
    assert changed[inner].mean() > 0.6, "most of each face must be replaced"


@pytest.mark.parametrize(
    "source_name, target_name",
    [
        ("biden.jpg", "obama.jpg"),
        ("obama.jpg", "biden.jpg"),
    ],
)
def test_swapped_face_keeps_target_pose_and_looks_like_source(engine, livefuse_home, source_name, target_name):
    samples = livefuse_home / "samples"
    swapper = engine.swapper(samples / source_name)
    target = cv2.imread(str(samples / target_name))
    src = cv2.imread(str(samples / source_name))
    faces = engine.tracker().analyze(frame_of(target))
    out = target.copy()
    swapper.swap(out, faces)
    again = engine.tracker().analyze(frame_of(out))
    assert len(again) == 1
    width = np.ptp(faces.landmarks[0, :, 0])
    # Pose: the swapped face's own landmarks stay where the target's were (the shape transfer
    # moves the inner features by a few per cent of the face's width at most).
    err = np.linalg.norm(again.landmarks[0, :, :2] - faces.landmarks[0, :, :2], axis=1).mean()
    assert err < 0.04 * width, f"landmarks moved {err:.1f} px on a {width:.0f} px face"
    # Identity: with pose and shape taken out (each face unwrapped onto one mesh layout by
    # its landmarks), the swapped face's detail matches the source photo's, not the target's.
    src_faces = engine.tracker().analyze(frame_of(src))
    canon = src_faces.landmarks[0].copy()
    canon[:, :2] -= canon[:, :2].min(0)
    canon *= 200 / np.ptp(canon[:, 0])
    canon[:, :2] += 28
    # The swapped face is unwrapped by its own landmarks, found again on the result: the
    # shape transfer moved its inner features to the source's proportions.
    swapped_tex = unwrapped(out, again.landmarks[0], canon)
    # An open target mouth keeps its own interior (teeth): that part is the target's by design.
    lips = np.zeros((256, 256), np.uint8)
    cv2.fillPoly(lips, [np.round(canon[MOUTH_INNER, :2]).astype(np.int32)], 1)
    lips = cv2.dilate(lips, np.ones((45, 45), np.uint8)) > 0
    kept = lips if mouth_open(faces.landmarks[0]) >= MeshSwapConfig().open_mouth else None
    to_source = texture_similarity(swapped_tex, unwrapped(src, src_faces.landmarks[0], canon), kept)
    to_target = texture_similarity(swapped_tex, unwrapped(target, faces.landmarks[0], canon), kept)
    assert to_source > to_target + 0.03, (to_source, to_target)


def test_keep_mouth_leaves_mouth_interior(engine, sample_store, group):
    image, faces = group
    # Without shape transfer the interior stays exactly in place (with it, it moves with the
    # lips: tests/test_shape_transfer.py).
    config = MeshSwapConfig(keep_mouth=True, shape_transfer=0.0)
    swapper = MeshSwapper(engine.source_face(sample_store.path("biden.jpg"))[1], config)
    out = image.copy()
    swapper.swap(out, faces)
    mouth = np.zeros(image.shape[:2], np.uint8)
    for pts in faces.landmarks:
        cv2.fillPoly(mouth, [np.round(pts[MOUTH_INNER, :2]).astype(np.int32)], 255)
    mouth = cv2.erode(mouth, np.ones((3, 3), np.uint8)) > 0
    if mouth.sum() < 20:
        pytest.skip("mouths in the sample are closed")
    diff = np.abs(out.astype(int) - image.astype(int)).max(axis=2)
    assert np.median(diff[mouth]) <= 2


def test_faces_at_every_size_and_at_the_border(engine, biden, sample_store):
    portrait = cv2.imread(str(sample_store.path("obama.jpg")))
    for scale in (0.15, 0.5, 1.5):
        image = cv2.resize(portrait, None, fx=scale, fy=scale)
        faces = engine.tracker().analyze(frame_of(image))
        assert len(faces) == 1, scale
        out = image.copy()
        biden.swap(out, faces)
        assert (out != image).any()
    cut = np.ascontiguousarray(portrait[:, 450:])
    faces = engine.tracker().analyze(frame_of(cut))
    out = cut.copy()
    biden.swap(out, faces)
    assert (out != cut).any(axis=2)[:, :20].any(), "the part of the face at the edge is swapped"
