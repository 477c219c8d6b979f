"""The mesh swap's exactly stateable properties: texture only from the source's face, the
target's turned-away triangles left alone, mirrored texture for the source's turned-away
triangles, covered forehead skin found, no sample of the source's open mouth, no sample
interpolated across a fold of the surface, a colour cast on the source evened, and a warning
for small source faces."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest

from livefuse.face.canonical import TRIANGLES
from livefuse.face.surface import INNER_TRIANGLES, LIPS_OUTER, MIRROR, facing
from livefuse.face.topology import FACE_OVAL, MOUTH_INNER
from livefuse.swap.mesh import MIN_FACING, MeshSwapConfig, MeshSwapper, _upscaled
from livefuse.swap.source import SourceFace, analyse_source
from livefuse.swap.texture import (
    CHEEKS,
    FOREHEAD,
    MAX_MIRROR_COVERED,
    SourceTexture,
    inset_outline,
    smoothed,
    triangle_share,
)
from tests.helpers import frame_of

PLAIN = MeshSwapConfig(colour=False)


@pytest.fixture(scope="module")
def obama(engine, livefuse_home):
    return engine.source_face(livefuse_home / "samples" / "obama.jpg")[1]


@pytest.fixture(scope="module")
def targets(engine, livefuse_home):
    out = {}
    for name in ("biden.jpg", "t1.jpg"):
        image = cv2.imread(str(livefuse_home / "samples" / name))
        out[name] = image, engine.tracker().analyze(frame_of(image))
    return out


def polygon_mask(shape: tuple[int, ...], points: np.ndarray) -> np.ndarray:
    m = np.zeros(shape[:2], np.uint8)
    cv2.fillPoly(m, [np.round(points).astype(np.int32)], 1)
    return m > 0


def green_taken(obama: SourceFace, green: np.ndarray, targets) -> dict[str, int]:
    """Per target, how many pixels of its swapped faces are green when the source photo's
    ``green`` pixels are painted pure green: any is a sample of them."""
    image = obama.image.copy()
    image[green] = (0, 255, 0)
    source = SourceFace(image, obama.points, 1)
    taken = {}
    for name, (target, faces) in targets.items():
        out = target.copy()
        MeshSwapper(source, PLAIN).swap(out, faces)
        b, g, r = (out.astype(int)[..., c] for c in range(3))
        taken[name] = int(((g - np.maximum(r, b) > 40) & (out != target).any(2)).sum())
    return taken


def test_no_texture_from_outside_the_source_face(obama, targets):
    # Everything in the source photo outside the mesh's face outline: background, hair, ears.
    outside = ~polygon_mask(obama.image.shape, obama.points[FACE_OVAL, :2])
    taken = green_taken(obama, outside, targets)
    assert not any(taken.values()), f"pixels took the source's background: {taken}"


def test_no_texture_from_the_source_mouth_opening(obama, targets):
    # Obama's open smile, its teeth: the lips are sampled right up to their inner edge, and
    # where a target's lips meet, teeth there were a white sliver.
    teeth = polygon_mask(obama.image.shape, obama.points[MOUTH_INNER, :2])
    taken = green_taken(obama, teeth, targets)
    assert not any(taken.values()), f"pixels took the source's teeth: {taken}"


def test_target_triangles_turned_away_are_not_painted(obama, targets):
    image, faces = targets["t1.jpg"]
    swapper = MeshSwapper(obama, PLAIN)
    culled_total = 0
    for i, points in enumerate(faces.landmarks):
        turned = (facing(points) < MIN_FACING) & ~INNER_TRIANGLES
        culled_total += int(turned.sum())
        (patch,) = swapper.prepare(image, faces, [(i, 0)])
        ids = patch.scratch.get("ids", patch.scratch.get("ids", (1,), np.int32).shape, np.int32)
        # The rasterised surface holds no turned-away triangle, and nothing is blended
        # where no triangle is painted.
        assert not np.isin(ids, np.flatnonzero(turned)).any()
    assert culled_total > 20, "the group photo's turned faces have triangles facing away"


def test_source_triangles_turned_away_take_the_mirror_image(obama, targets):
    # The source's image-left half squashed towards the midline, as if turned away: its
    # triangles whose mirror images face the camera take their texture from those.
    points = obama.points.copy()
    mid = float(points[MIRROR == np.arange(len(MIRROR)), 0].mean())
    left = points[:, 0] < mid
    points[left, 0] = mid - 0.15 * (mid - points[left, 0])
    texture = SourceTexture.of(SourceFace(obama.image, points, 1))
    squashed = left[TRIANGLES].all(1) & (facing(points) < 0.2)
    well_seen = facing(points, MIRROR[TRIANGLES][:, ::-1]) > 0.6
    # The outer face is mirrored; the nose's and eyes' sides never are (their mirror
    # images carry the other side's light).
    # ...and only from a mirror image with nothing found covering it.
    clean = triangle_share(texture.covered, inset_outline(points[:, :2])[MIRROR[TRIANGLES]]) <= MAX_MIRROR_COVERED
    assert (squashed & well_seen & ~INNER_TRIANGLES & clean).sum() > 12
    assert texture.mirrored[squashed & well_seen & ~INNER_TRIANGLES & clean].all()
    assert not texture.mirrored[INNER_TRIANGLES].any()
    np.testing.assert_allclose(
        texture.levels[-1][1][texture.mirrored], inset_outline(points[:, :2])[MIRROR[TRIANGLES[texture.mirrored]]]
    )
    assert not texture.mirrored[(~left)[TRIANGLES].all(1)].any()


def test_hair_on_the_source_forehead_is_not_pasted(obama, targets):
    # Dark strands drawn across the source's forehead (a fringe).
    image = obama.image.copy()
    forehead = polygon_mask(image.shape, obama.points[FOREHEAD, :2])
    strands = np.zeros(image.shape[:2], np.uint8)
    ys, xs = np.nonzero(forehead)
    for x in range(int(xs.min()), int(xs.max()), 9):
        cv2.line(strands, (x, int(ys.min())), (x + 12, int(ys.max())), 1, 3)
    strands = (strands > 0) & forehead
    image[strands] = (20, 15, 10)
    texture = SourceTexture.of(SourceFace(image, obama.points, 1))
    assert texture.covered[strands].mean() > 0.8
    target, faces = targets["biden.jpg"]
    plain, fringed = target.copy(), target.copy()
    MeshSwapper(obama, PLAIN).swap(plain, faces)
    MeshSwapper(SourceFace(image, obama.points, 1), PLAIN).swap(fringed, faces)
    dark = lambda x: cv2.cvtColor(x, cv2.COLOR_BGR2GRAY) < 45  # noqa: E731
    pasted = (dark(fringed) & ~dark(plain)).sum()
    assert pasted < 0.01 * strands.sum(), f"{pasted} px of the fringe's dark strands were pasted"


def test_a_colour_cast_on_the_source_is_evened(obama):
    # Blue light on the image-left half of the face (a window, a blue curtain): before, the
    # cast went onto every target as grey-blue patches. The texture's skin there takes the
    # face's skin colour; the lips keep theirs.
    image = obama.image.astype(np.float32)
    x = np.arange(image.shape[1], dtype=np.float32)
    mid = float(np.median(obama.points[:, 0]))
    blue = np.clip((mid - x) / (0.25 * np.ptp(obama.points[:, 0])), 0, 1)[None, :]
    image[..., 0] += 40 * blue
    image[..., 2] -= 25 * blue
    cast = SourceFace(np.clip(image, 0, 255).astype(np.uint8), obama.points, 1)
    texture = SourceTexture.of(cast).levels[-1][0]
    cr_cb = lambda img: cv2.cvtColor(img, cv2.COLOR_BGR2YCrCb).astype(np.float32)[..., 1:]  # noqa: E731
    cheek = lambda i: polygon_mask(image.shape, cv2.convexHull(obama.points[CHEEKS[i], :2]).reshape(-1, 2))  # noqa: E731
    left, right = cheek(slice(0, 4)), cheek(slice(4, 8))
    before = np.linalg.norm(cr_cb(cast.image)[left].mean(0) - cr_cb(cast.image)[right].mean(0))
    after = np.linalg.norm(cr_cb(texture)[left].mean(0) - cr_cb(texture)[right].mean(0))
    assert before > 15
    assert after < 0.1 * before, (before, after)
    lips = polygon_mask(image.shape, obama.points[LIPS_OUTER, :2]) & ~polygon_mask(
        image.shape, obama.points[MOUTH_INNER, :2]
    )
    assert abs(cr_cb(texture)[lips][:, 0].mean() - cr_cb(cast.image)[lips][:, 0].mean()) < 3


def test_the_light_is_smoothed_as_at_full_size():
    # The source's light and colour cast are averaged at a reduced size (seconds saved on a
    # large photo): inside the face they match the full-size normalised convolution.
    rng = np.random.default_rng(1)
    noise = cv2.GaussianBlur(rng.uniform(0, 255, (480, 400)).astype(np.float32), (0, 0), 12) * 4 - 300
    plane = noise + np.linspace(40, 200, 400, dtype=np.float32)[None, :]  # side light, and texture
    skin = np.zeros(plane.shape, np.uint8)
    cv2.ellipse(skin, (200, 240), (150, 200), 0, 0, 360, 1, -1)
    weight = skin.astype(np.float32)
    sigma = 24.0
    full = cv2.GaussianBlur(plane * weight, (0, 0), sigma) / (cv2.GaussianBlur(weight, (0, 0), sigma) + 1e-3)
    (fast,) = smoothed([plane], weight, sigma)
    inside = cv2.erode(skin, np.ones((9, 9), np.uint8)) > 0
    assert np.ptp(full[inside]) > 40  # there is light to follow
    assert np.abs(fast - full)[inside].max() < 2.0


def test_small_source_face_warns(engine, livefuse_home, caplog):
    photo = cv2.imread(str(livefuse_home / "samples" / "obama.jpg"))
    with caplog.at_level(logging.WARNING, logger="livefuse.swap.source"):
        analyse_source(photo, engine.detector(), engine.landmarker())
        assert "look soft" not in caplog.text
        analyse_source(cv2.resize(photo, None, fx=0.3, fy=0.3), engine.detector(), engine.landmarker())
    assert "look soft" in caplog.text


def test_the_sampling_map_is_not_interpolated_across_a_fold():
    # A low-res map whose left half samples the source near x = 10 and right half near
    # x = 200 (a turned nose over the cheek behind it): scaled up, no sample may land in
    # between, where the source holds neither surface (a dark line at the nose's edge).
    h, w, f = 12, 16, 2
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    maps = np.dstack([np.where(xs < w // 2, 10 + xs, 200 + xs), 50 + ys]).astype(np.float32)
    full = _upscaled(maps, float(f), (h * f, w * f))
    x = full[..., 0]
    assert not ((x > 10 + w) & (x < 200)).any()
    assert (x >= 200).any() and (x <= 10 + w).any()
    # A smooth map (and a painted surface's edge, −1 beyond it) is plain bilinear.
    smooth = np.dstack([10 + 1.5 * xs, 50 + ys]).astype(np.float32)
    smooth[:, -3:] = -1
    np.testing.assert_array_equal(
        _upscaled(smooth, float(f), (h * f, w * f)), cv2.resize(smooth, (w * f, h * f), interpolation=cv2.INTER_LINEAR)
    )
