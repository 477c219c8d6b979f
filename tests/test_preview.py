"""`--preview` draws a real window (Tk), here on an Xvfb display; headless it says why not."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from livefuse.errors import OutputError
from livefuse.frame import Frame
from livefuse.io.window import WindowPreviewSink
from livefuse.pipeline.stages import SourceInfo

LIVEFUSE = str(Path(sys.executable).parent / "livefuse")
#: A colour no window decoration uses: found on screen only if the frame was drawn.
MARK_BGR = (23, 201, 67)


@pytest.fixture
def display(tmp_path, monkeypatch):
    """An Xvfb display whose framebuffer is a file (XWD) the test can read."""
    if shutil.which("Xvfb") is None:
        if os.environ.get("CI"):
            pytest.fail("Xvfb is missing: .ci/run installs it (Debian package xvfb)")
        pytest.skip("Xvfb is not installed (Debian package xvfb)")
    number = 90 + os.getpid() % 500
    proc = subprocess.Popen(
        ["Xvfb", f":{number}", "-screen", "0", "800x600x24", "-fbdir", str(tmp_path), "-nolisten", "tcp"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while not Path(f"/tmp/.X11-unix/X{number}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    monkeypatch.setenv("DISPLAY", f":{number}")
    yield tmp_path / "Xvfb_screen0"
    proc.terminate()
    proc.wait(10)


def marked_pixels(framebuffer: Path) -> int:
    """Pixels of MARK_BGR on the screen (XWD, 32 bits per pixel, stored B G R x)."""
    data = framebuffer.read_bytes()
    header = int.from_bytes(data[:4], "big")
    ncolors = int.from_bytes(data[76:80], "big")
    pixels = np.frombuffer(data[header + 12 * ncolors :], np.uint8)
    pixels = pixels[: pixels.size // 4 * 4].reshape(-1, 4)
    return int(np.all(pixels[:, :3] == MARK_BGR, axis=1).sum())


def test_window_shows_the_frames(display):
    quit_called = []
    sink = WindowPreviewSink(on_quit=lambda: quit_called.append(True))
    sink.open(SourceInfo(width=320, height=240, fps=30, live=True, time_base=Fraction(1, 90000)))
    try:
        image = np.zeros((240, 320, 3), np.uint8)
        image[:] = MARK_BGR
        deadline = time.monotonic() + 20
        while marked_pixels(display) < 320 * 240 * 0.9 and time.monotonic() < deadline:
            sink.send(Frame(0, 0, Fraction(1, 30), 0, image))
            time.sleep(0.05)
        assert marked_pixels(display) >= 320 * 240 * 0.9, "the frame is not on the screen"
    finally:
        sink.close()
    assert sink.shown >= 1 and not quit_called


def test_cam_preview_runs_on_a_display(display, livefuse_home, tmp_path):
    clip = livefuse_home / "samples" / "demo.mp4"
    result = subprocess.run(
        [
            LIVEFUSE,
            "cam",
            "--source",
            str(livefuse_home / "samples" / "biden.jpg"),
            "--camera",
            str(clip),
            "--preview",
            "--seconds",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "LIVEFUSE_HOME": str(livefuse_home)},
    )
    assert result.returncode == 0, result.stderr
    assert "frames" in result.stdout


def test_headless_preview_says_why(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    sink = WindowPreviewSink()
    with pytest.raises(OutputError, match="no display"):
        sink.open(SourceInfo(width=64, height=64, fps=30, live=True, time_base=Fraction(1, 90000)))
