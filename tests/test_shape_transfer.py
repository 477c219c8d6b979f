"""Shape transfer in the mesh swapper: the exactly stateable properties. The outline never
moves; at full strength the nose and brows land on the source's fitted points, each eye's
corners on the source's corners with the target's own opening kept; a face transferred onto
itself does not move; an open mouth's kept interior moves with the lips; the option is
range-checked and refused by the neural swappers."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from livefuse.config import load_settings
from livefuse.errors import ConfigError
from livefuse.face.canonical import TRIANGLES
from livefuse.face.surface import BROW_LEFT, BROW_RIGHT, MOUTH_TRIANGLES
from livefuse.face.topology import FACE_OVAL, MOUTH_INNER
from livefuse.swap.mesh import MeshSwapConfig, MeshSwapper
from livefuse.swap.shape import EYE_CORNERS, EYE_L, EYE_R, MAX_MOVE, NOSE, UPPER_LIP, WEIGHT, ShapeTransfer
from livefuse.swap.source import SourceFace
from tests.helpers import frame_of


@pytest.fixture(scope="module")
def sources(engine, livefuse_home):
    return {n: engine.source_face(livefuse_home / "samples" / f"{n}.jpg")[1] for n in ("obama", "biden")}


@pytest.fixture(scope="module")
def targets(engine, livefuse_home):
    out = {}
    for name in ("t1", "obama", "biden"):
        image = cv2.imread(str(livefuse_home / "samples" / f"{name}.jpg"))
        out[name] = image, engine.tracker().analyze(frame_of(image))
    return out


def all_faces(targets):
    for image, faces in targets.values():
        for points in faces.landmarks:
            yield image, points


def test_outline_never_moves(sources, targets):
    for source in sources.values():
        shape = ShapeTransfer(source.points)
        for _, points in all_faces(targets):
            moved = shape.moved(points, 1.0)
            assert np.array_equal(moved[FACE_OVAL], points[FACE_OVAL])
            assert np.abs(moved - points).max() > 1, "the inner face does move"


def test_at_full_strength_features_take_the_fitted_source_shape(sources, targets):
    checked_points = checked_eyes = 0
    for source in sources.values():
        shape = ShapeTransfer(source.points)
        for _, points in all_faces(targets):
            fitted, moved = shape.fitted(points), shape.moved(points, 1.0)
            # Where no cap applies and the outline's fade is past, the nose and the brows are
            # exactly the fitted source's points.
            limit = MAX_MOVE * np.ptp(points[:, 0])
            free = (WEIGHT == 1) & (np.linalg.norm((fitted - points)[:, :2], axis=1) < 0.99 * limit)
            for part in (NOSE, BROW_LEFT, BROW_RIGHT):
                at = part[free[part]]
                np.testing.assert_allclose(moved[at, :2], fitted[at, :2], atol=1e-3)
                checked_points += len(at)
            # Each eye moves as a whole: its corners onto the source's, the target's own
            # opening (lid gap over width) kept, so blinks and gaze stay the target's.
            for eye, corners in ((EYE_L, EYE_CORNERS[0]), (EYE_R, EYE_CORNERS[1])):
                if not free[eye].all():
                    continue
                np.testing.assert_allclose(moved[corners, :2], fitted[corners, :2], atol=1e-3)
                assert opening(moved, corners) == pytest.approx(opening(points, corners), rel=1e-4)
                checked_eyes += 1
            if free[UPPER_LIP]:
                np.testing.assert_allclose(moved[UPPER_LIP, :2], fitted[UPPER_LIP, :2], atol=1e-3)
    assert checked_points > 300 and checked_eyes > 10, (checked_points, checked_eyes)


def opening(points: np.ndarray, corners: np.ndarray) -> float:
    """Upper-to-lower lid distance over the corner-to-corner width (eye on the image's left
    for corners 33/133, right for 263/362)."""
    lids = (159, 145) if corners[0] == 33 else (386, 374)
    gap = np.linalg.norm(points[lids[0], :2] - points[lids[1], :2])
    return float(gap / np.linalg.norm(points[corners[0], :2] - points[corners[1], :2]))


def test_strength_scales_the_move_and_zero_changes_nothing(sources, targets):
    shape = ShapeTransfer(sources["obama"].points)
    _, points = next(all_faces(targets))
    assert shape.moved(points, 0.0) is points
    full, half = shape.moved(points, 1.0) - points, shape.moved(points, 0.5) - points
    np.testing.assert_allclose(half, 0.5 * full, atol=1e-4)


def test_a_face_transferred_onto_itself_does_not_move(targets):
    image, faces = targets["obama"]
    points = faces.landmarks[0]
    moved = ShapeTransfer(points.copy()).moved(points, 1.0)
    assert np.abs(moved - points).max() < 0.05
    # …so the swap with the face's own photo as the source looks the same with and without it.
    source = SourceFace(image, points, 1)
    plain, shaped = image.copy(), image.copy()
    MeshSwapper(source, MeshSwapConfig(shape_transfer=0.0)).swap(plain, faces)
    MeshSwapper(source, MeshSwapConfig(shape_transfer=1.0)).swap(shaped, faces)
    assert np.percentile(np.abs(plain.astype(int) - shaped.astype(int)), 99.9) <= 2


def test_an_open_mouth_interior_moves_with_the_lips(sources, targets):
    # Obama's open smile as the target: the kept teeth are the target's own pixels, carried
    # by the same piecewise-affine map as the lips (no ghost of the old mouth around them).
    image, faces = targets["obama"]
    points = faces.landmarks[0]
    config = MeshSwapConfig(shape_transfer=1.0)
    out = image.copy()
    MeshSwapper(sources["biden"], config).swap(out, faces)
    moved = ShapeTransfer(sources["biden"].points).moved(points, 1.0)
    assert np.linalg.norm(moved[MOUTH_INNER, :2] - points[MOUTH_INNER, :2], axis=1).mean() > 3
    expected = np.zeros_like(image)
    inside = np.zeros(image.shape[:2], np.uint8)
    for tri in TRIANGLES[MOUTH_TRIANGLES]:
        warp = cv2.getAffineTransform(points[tri, :2].astype(np.float32), moved[tri, :2].astype(np.float32))
        moved_image = cv2.warpAffine(image, warp, image.shape[1::-1], flags=cv2.INTER_LINEAR)
        here = np.zeros(image.shape[:2], np.uint8)
        cv2.fillConvexPoly(here, np.round(moved[tri, :2]).astype(np.int32), 1)
        expected[here > 0] = moved_image[here > 0]
        inside |= here
    # Away from the lips' soft inner edge.
    inside = cv2.erode(inside, np.ones((7, 7), np.uint8)) > 0
    assert inside.sum() > 500
    diff = np.abs(out.astype(int) - expected.astype(int)).max(axis=2)[inside]
    assert np.median(diff) <= 3, np.median(diff)
    stayed = np.abs(out.astype(int) - image.astype(int)).max(axis=2)[inside]
    assert np.median(stayed) > 10, "the teeth did move"


def test_the_option_is_range_checked_and_mesh_only():
    assert load_settings({"shape_transfer": "0.5"}, env={}).swap.shape_transfer == 0.5
    assert load_settings({}, env={}).swap.shape_transfer is None
    with pytest.raises(ConfigError, match="shape-transfer 1.5: must be a number from 0 to 1"):
        load_settings({"shape_transfer": 1.5}, env={})
    with pytest.raises(ConfigError, match="mesh swapper only"):
        load_settings({"swapper": "inswapper_128", "shape_transfer": 0.5}, env={})
