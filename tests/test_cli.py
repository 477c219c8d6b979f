"""The ``livefuse`` command end to end, in-process: exit codes, outputs and messages."""

from __future__ import annotations

import shutil
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from livefuse.cli import main
from livefuse.config import Settings, load_settings
from livefuse.errors import ConfigError


@pytest.fixture
def home(cli_home):
    """The shared ``cli_home`` (LIVEFUSE_HOME set, no config file), by this module's name."""
    return cli_home


@pytest.fixture(scope="module")
def short_clip(livefuse_home, tmp_path_factory) -> Path:
    """The first 24 frames of the demo clip (one moving face)."""
    path = tmp_path_factory.mktemp("clip") / "short.mp4"
    cap = cv2.VideoCapture(str(livefuse_home / "samples" / "demo.mp4"))
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=30)
        stream.width, stream.height, stream.pix_fmt = 640, 360, "yuv420p"
        for _ in range(24):
            ok, image = cap.read()
            assert ok
            frame = av.VideoFrame.from_ndarray(cv2.resize(image, (640, 360)), format="bgr24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    cap.release()
    return path


def count_frames(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def test_run_swaps_every_frame_and_prints_summary(home, short_clip, tmp_path, capsys):
    out = tmp_path / "out.mp4"
    code = main(
        ["run", "--source", str(home / "samples" / "biden.jpg"), "--input", str(short_clip), "--output", str(out)]
    )
    assert code == 0
    assert count_frames(out) == 24
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert "24 in / 24 out / 0 dropped" in summary and "detector" in summary and "p95" in summary
    with av.open(str(out)) as container:
        assert container.streams.video[0].average_rate == 30


def test_demo_writes_video_and_still(home, tmp_path, capsys):
    code = main(["demo", "--output", str(tmp_path)])
    assert code == 0
    assert count_frames(tmp_path / "demo-swapped.mp4") == 450
    still = cv2.imread(str(tmp_path / "demo-side-by-side.jpg"))
    assert still.shape == (720, 2560, 3)
    assert np.abs(still[:, :1280].astype(int) - still[:, 1280:].astype(int)).mean() > 1
    assert "fps" in capsys.readouterr().out


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.write_bytes(b"not a video at all"), "input"),
        (lambda p: None, "input"),
    ],
)
def test_unreadable_input_exits_1_with_reason(home, tmp_path, caplog, make, message):
    bad = tmp_path / "broken.mp4"
    make(bad)
    photo = str(home / "samples" / "biden.jpg")
    code = main(["run", "--source", photo, "--input", str(bad), "--output", str(tmp_path / "o.mp4")])
    assert code == 1
    assert str(bad) in caplog.text
    assert not (tmp_path / "o.mp4").exists()


def test_source_without_face_exits_1(home, short_clip, tmp_path, caplog):
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((300, 300, 3), 90, np.uint8))
    code = main(["run", "--source", str(blank), "--input", str(short_clip), "--output", str(tmp_path / "o.mp4")])
    assert code == 1
    assert "no face found" in caplog.text


def test_camera_that_cannot_open_exits_1_quickly(home, tmp_path, caplog):
    photo = str(home / "samples" / "biden.jpg")
    code = main(["cam", "--source", photo, "--camera", "/dev/video99", "--record", str(tmp_path / "r.mp4")])
    assert code == 1
    assert "/dev/video99" in caplog.text


def test_virtual_camera_without_device_says_how_to_create_one(home, short_clip, caplog):
    pytest.importorskip("pyvirtualcam")
    code = main(["cam", "--source", str(home / "samples" / "biden.jpg"), "--camera", str(short_clip), "--vcam"])
    assert code == 1
    assert "modprobe v4l2loopback" in caplog.text


def test_cam_without_any_output_is_a_usage_error(home, caplog):
    assert main(["cam", "--source", str(home / "samples" / "biden.jpg")]) == 2
    assert "--vcam" in caplog.text


def test_tampered_model_is_refused(livefuse_home, short_clip, tmp_path, monkeypatch, caplog):
    copy = tmp_path / "home"
    shutil.copytree(livefuse_home / "models", copy / "models")
    with open(copy / "models" / "face_mesh.onnx", "r+b") as fh:
        fh.seek(5000)
        fh.write(b"\x00" * 64)
    monkeypatch.setenv("LIVEFUSE_HOME", str(copy))
    photo = str(livefuse_home / "samples" / "biden.jpg")
    code = main(["run", "--source", photo, "--input", str(short_clip), "--output", str(tmp_path / "o.mp4")])
    assert code == 1
    assert "face_mesh" in caplog.text and "livefuse models pull" in caplog.text


def test_models_list_shows_verified(home, capsys):
    assert main(["models", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("centerface") and "verified" in line for line in lines)
    assert any(line.startswith("face_mesh") and "verified" in line for line in lines)


def test_settings_precedence(tmp_path):
    config = tmp_path / "livefuse.toml"
    config.write_text("detect-every = 7\nthreads = 3\nkeep_mouth = true\n")
    env = {"LIVEFUSE_THREADS": "2", "LIVEFUSE_OPACITY": "0.5"}
    settings = load_settings({"opacity": 0.8}, env=env, config=config)
    assert settings.analysis.detect_every == 7  # file
    assert settings.swap.keep_mouth is True  # file
    assert settings.runtime.threads == 2  # environment beats file
    assert settings.swap.opacity == 0.8  # command line beats environment
    assert load_settings({}, env={}, config=None).analysis.detect_every == Settings().analysis.detect_every


@pytest.mark.parametrize(
    "text, env, message",
    [
        ("detect_every = 'often'", {}, 'detect_every = "often": must be an integer from 1 to 1000'),
        ("no_such_option = 1", {}, "unknown option"),
        ("threads = [", {}, "not valid TOML"),
        ("", {"LIVEFUSE_SMOOTH": "maybe"}, "LIVEFUSE_SMOOTH=maybe: must be true or false"),
    ],
)
def test_bad_settings_name_the_problem(tmp_path, text, env, message):
    config = tmp_path / "c.toml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_settings({}, env=env, config=config)
