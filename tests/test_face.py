"""Detection, face mesh and source-photo analysis on the sample portraits."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest

from livefuse.errors import NoFaceError, SourceError
from livefuse.swap.source import analyse_source, read_image
from tests.helpers import frame_of

# Hand-checked on t1.jpg (1280×886): box x1, y1, x2, y2 and the two eye centres of each of
# the six people, read off the picture with the boxes drawn on it.
T1_FACES = [
    ((60, 269, 168, 394), (85, 323), (128, 307)),
    ((274, 155, 371, 268), (289, 206), (324, 195)),
    ((464, 267, 572, 412), (494, 322), (545, 337)),
    ((746, 345, 847, 480), (761, 401), (806, 401)),
    ((903, 61, 1010, 204), (916, 122), (947, 116)),
    ((1135, 270, 1226, 395), (1152, 326), (1194, 323)),
]
OBAMA_FACE = ((368, 86, 619, 433), (435, 215), (560, 210))


def _match(found, expected, box_tol: float, eye_tol: float) -> None:
    order = np.argsort(found.boxes[:, 0])
    for i, (box, le, re) in zip(order, sorted(expected)):
        size = box[2] - box[0]
        assert np.abs(found.boxes[i] - box).max() < box_tol * size, (found.boxes[i], box)
        assert np.linalg.norm(found.kps[i, 0] - le) < eye_tol * size
        assert np.linalg.norm(found.kps[i, 1] - re) < eye_tol * size


def test_detects_six_faces_on_group_photo(engine, sample_store):
    faces = engine.detector().detect(cv2.imread(str(sample_store.path("t1.jpg"))))
    assert len(faces) == 6
    assert (faces.scores > 0.8).all()
    _match(faces, T1_FACES, box_tol=0.15, eye_tol=0.08)


def test_detects_one_face_on_portrait(engine, sample_store):
    faces = engine.detector().detect(cv2.imread(str(sample_store.path("obama.jpg"))))
    assert len(faces) == 1
    _match(faces, [OBAMA_FACE], box_tol=0.1, eye_tol=0.05)


def test_detects_nothing_on_blank_image(engine):
    assert len(engine.detector().detect(np.full((480, 640, 3), 127, np.uint8))) == 0


def test_mesh_points_lie_on_the_face(engine, sample_store):
    image = cv2.imread(str(sample_store.path("t1.jpg")))
    faces = engine.tracker().analyze(frame_of(image))
    assert len(faces) == 6
    assert faces.landmarks is not None and faces.landmarks.shape == (6, 468, 3)
    assert (faces.presence > 0.9).all()
    assert (faces.boxes[:, 2] - faces.boxes[:, 0] > 60).all()
    # Mesh eye centres agree with the detector's within a few percent of the face.
    det = engine.detector().detect(image)
    for kp in det.kps:
        d = np.linalg.norm(faces.kps[:, :2] - kp[None, :2], axis=2).mean(1)
        assert d.min() < 0.08 * (det.boxes[:, 2] - det.boxes[:, 0]).mean()
    assert len(set(faces.track_ids.tolist())) == 6


def test_face_at_image_border_is_tracked(engine, sample_store):
    image = cv2.imread(str(sample_store.path("obama.jpg")))
    # Cut the portrait so the face's left third is outside the frame.
    cut = np.ascontiguousarray(image[:, 450:])
    faces = engine.tracker().analyze(frame_of(cut))
    assert len(faces) == 1
    assert faces.landmarks[0, :, 0].min() < 0  # points continue beyond the edge


def test_source_with_several_faces_uses_largest(engine, sample_store, caplog):
    image = cv2.imread(str(sample_store.path("t1.jpg")))
    with caplog.at_level(logging.WARNING):
        source = analyse_source(image, engine.detector(), engine.landmarker())
    assert source.faces_in_photo == 6
    assert "using the largest" in caplog.text
    # The largest face in t1.jpg is the one at x≈746..847 (box 101×135 px).
    assert 95 < np.ptp(source.points[:, 0]) < 140


def test_source_without_face_is_a_clear_error(engine, tmp_path):
    path = tmp_path / "wall.png"
    cv2.imwrite(str(path), np.full((400, 400, 3), 200, np.uint8))
    with pytest.raises(NoFaceError, match="no face found in the source"):
        engine.swapper(path)


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "does not exist"),
        (b"", "empty file"),
        (b"\xff\xd8\xff\xe0garbage", "not a readable image"),
        (b"hello, I am text", "not a readable image"),
    ],
)
def test_bad_source_photo_is_a_clear_error(tmp_path, content, message):
    path = tmp_path / "face.jpg"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(SourceError, match=message):
        read_image(path)
