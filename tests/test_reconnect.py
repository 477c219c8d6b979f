"""Live sources that drop: a real MJPEG-over-HTTP camera killed and restarted under `livefuse cam --record`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest

from livefuse.testing.mjpeg import MjpegCamera

LIVEFUSE = str(Path(sys.executable).parent / "livefuse")


@pytest.fixture
def camera():
    # Bright frames whose level changes with the index: the "reconnecting" band is dark.
    frames = [np.full((180, 320, 3), 120 + 12 * i, np.uint8) for i in range(10)]
    with MjpegCamera(frames, fps=15) as cam:
        yield cam


def recorded(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]


def is_marked(image: np.ndarray) -> bool:
    """True for a held frame: its bottom band is darkened."""
    band = image.shape[0] // 12
    return float(image[-band + 2 :].mean()) < 0.6 * float(image[: -2 * band].mean())


def start_cam(home: Path, url: str, out: Path, seconds: float, reconnect_for: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            LIVEFUSE,
            "cam",
            "--source",
            str(home / "samples" / "biden.jpg"),
            "--camera",
            url,
            "--record",
            str(out),
            "--seconds",
            str(seconds),
            "--reconnect-for",
            str(reconnect_for),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "LIVEFUSE_HOME": str(home)},
    )


def wait_for_frames(camera: MjpegCamera, proc: subprocess.Popen[str], count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while camera.served < count:
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "the camera was never read"
        time.sleep(0.05)


def test_camera_killed_and_restarted_mid_stream_is_reconnected(livefuse_home, camera, tmp_path):
    out = tmp_path / "rec.mp4"
    proc = start_cam(livefuse_home, camera.url, out, seconds=18, reconnect_for=20)
    try:
        wait_for_frames(camera, proc, 20)
        camera.kill()
        time.sleep(2)
        camera.start()  # same port
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "reconnecting for up to 20 s" in err and "is back after" in err
    frames = recorded(out)
    marks = [is_marked(f) for f in frames]
    assert any(marks), "no frame was marked as reconnecting"
    last_marked = max(i for i, m in enumerate(marks) if m)
    after = frames[last_marked + 1 :]
    assert len(after) > 15, "the output did not go on after the camera came back"
    assert len({int(f[:40].mean()) for f in after}) > 3  # live frames again, not the held one
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_camera_that_does_not_come_back_ends_with_exit_1_and_keeps_the_recording(livefuse_home, camera, tmp_path):
    out = tmp_path / "rec.mp4"
    proc = start_cam(livefuse_home, camera.url, out, seconds=120, reconnect_for=2)
    try:
        wait_for_frames(camera, proc, 20)
        camera.kill()
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, err
    assert "did not come back within 2 s" in err and "Traceback" not in err
    frames = recorded(out)  # finished and playable
    assert len(frames) >= 15 and not is_marked(frames[0])


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_signal_during_cam_finishes_the_recording(livefuse_home, camera, tmp_path, signum):
    out = tmp_path / "rec.mp4"
    proc = start_cam(livefuse_home, camera.url, out, seconds=120, reconnect_for=30)
    try:
        wait_for_frames(camera, proc, 25)
        proc.send_signal(signum)
        stdout, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # Stopping a live command is its normal end: the summary, exit 0, the recording playable.
    assert proc.returncode == 0, err
    assert "frames" in stdout and "Traceback" not in err
    assert len(recorded(out)) >= 10
    assert [p.name for p in tmp_path.iterdir()] == ["rec.mp4"]
