"""Sample media: pinned stills from package sdists and the synthetic demo clip."""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from pathlib import Path

import av
import numpy as np
import pytest

from livefuse.errors import SampleError
from livefuse.models.files import sha256_file
from livefuse.samples import DemoClip, SampleStore, load_catalog, make_demo_clip

CATALOG = load_catalog()


def test_catalog_holds_the_pinned_stills() -> None:
    assert sorted(CATALOG) == sorted(
        ["obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg", "obama_partial_face.jpg", "t1.jpg"]
    )
    assert CATALOG["obama.jpg"].source.requirement == "face_recognition==1.3.0"
    assert CATALOG["obama.jpg"].source.sha256.startswith("5e5efdd1686a")
    assert CATALOG["t1.jpg"].source.requirement == "insightface==2.1"
    assert CATALOG["t1.jpg"].source.sha256.startswith("776cbd36b70f")


def test_installed_samples_match_their_pins(sample_store: SampleStore) -> None:
    for name, spec in CATALOG.items():
        assert sha256_file(sample_store.path(name)) == spec.sha256


def test_modified_sample_is_refused(tmp_path: Path, livefuse_home: Path) -> None:
    store = SampleStore(tmp_path)
    store.samples_dir.mkdir()
    shutil.copy(livefuse_home / "samples" / "biden.jpg", store.samples_dir)
    (store.samples_dir / "biden.jpg").write_bytes(b"changed")
    with pytest.raises(SampleError, match=r"'biden.jpg'.*corrupt or was modified.*samples pull"):
        store.path("biden.jpg")
    with pytest.raises(SampleError, match=r"'obama.jpg' is not installed"):
        store.path("obama.jpg")


def test_pull_from_dir_takes_loose_files_or_the_sdist(tmp_path: Path, package_dir: Path) -> None:
    offline = tmp_path / "offline"
    offline.mkdir()
    shutil.copy(package_dir / "face_recognition-1.3.0.tar.gz", offline)
    with tarfile.open(package_dir / "insightface-2.1.tar.gz") as tf:
        member = tf.extractfile(CATALOG["t1.jpg"].source.member)
        assert member is not None
        (offline / "t1.jpg").write_bytes(member.read())
    store = SampleStore(tmp_path / "home")
    paths = store.pull(from_dir=offline)
    assert sorted(p.name for p in paths) == sorted(CATALOG)
    assert all(store.is_verified(name) for name in CATALOG)
    assert sorted(os.listdir(store.samples_dir)) == sorted(CATALOG)


def test_pull_from_dir_with_a_wrong_sdist_leaves_nothing(tmp_path: Path) -> None:
    offline = tmp_path / "offline"
    offline.mkdir()
    (offline / "insightface-2.1.tar.gz").write_bytes(b"not an sdist")
    store = SampleStore(tmp_path / "home")
    with pytest.raises(SampleError) as err:
        store.pull(["t1.jpg"], from_dir=offline)
    message = str(err.value)
    assert "'t1.jpg'" in message and "matches neither pinned file" in message
    assert "776cbd36b70f" in message and "pip download --no-deps --no-binary=:all:" in message
    assert not store.samples_dir.exists() or os.listdir(store.samples_dir) == []


def test_demo_clip_has_the_promised_shape(demo_clip: DemoClip) -> None:
    assert demo_clip.path.name == "demo.mp4"
    assert sha256_file(demo_clip.path) == demo_clip.sha256
    with av.open(str(demo_clip.path)) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height) == (1280, 720)
        assert stream.average_rate == 30
        assert stream.codec_context.name == demo_clip.codec
        frames = [f.to_ndarray(format="gray") for f in container.decode(stream)]
    assert len(frames) == demo_clip.frame_count == stream.frames == 450
    # A face makes its part of the frame differ from the plain wall of the no-face segment.
    wall = frames[-1].astype(np.int16)
    for index in (0, 150, 299, 300, 389):
        for face in demo_clip.faces[index]:
            x1, y1, x2, y2 = (int(v) for v in face.box)
            diff = np.abs(frames[index].astype(np.int16)[y1:y2, x1:x2] - wall[y1:y2, x1:x2])
            assert diff.mean() > 20, (index, face)
    assert np.abs(frames[420].astype(np.int16) - wall).mean() < 3


def test_demo_json_records_segments_and_faces(demo_clip: DemoClip) -> None:
    raw = json.loads(demo_clip.path.with_name("demo.json").read_text())
    assert raw["segments"] == [
        {"name": "one_face", "start": 0, "stop": 300, "faces": 1},
        {"name": "two_faces", "start": 300, "stop": 390, "faces": 2},
        {"name": "no_face", "start": 390, "stop": 450, "faces": 0},
    ]
    assert len(demo_clip.faces) == demo_clip.frame_count
    for seg in demo_clip.segments:
        assert all(len(demo_clip.faces[i]) == seg.faces for i in range(seg.start, seg.stop))
    one = demo_clip.segment("one_face")
    widths = [f[0].box[2] - f[0].box[0] for f in demo_clip.faces[one.start : one.stop]]
    angles = [f[0].angle for f in demo_clip.faces[one.start : one.stop]]
    assert min(widths) > 145 and max(widths) < 400  # 150..330 px faces, widened by the tilt
    assert max(abs(a) for a in angles) <= 10
    for frame in demo_clip.faces:
        for face in frame:
            x1, y1, x2, y2 = face.box
            assert 0 <= x1 < x2 <= 1280 and 0 <= y1 < y2 <= 720


def test_the_current_demo_clip_is_handed_out_not_rendered_again(sample_store: SampleStore, demo_clip: DemoClip) -> None:
    assert make_demo_clip(sample_store).path == demo_clip.path
    assert DemoClip.load(demo_clip.path.with_name("demo.json")) == demo_clip
