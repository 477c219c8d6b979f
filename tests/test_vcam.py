"""VirtualCameraSink through pyvirtualcam's real Camera with an in-test backend."""

from __future__ import annotations

import glob
import sys
import time
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

import numpy as np
import pytest

from livefuse.errors import OutputError, StreamEnded
from livefuse.frame import Frame
from livefuse.io.vcam import LINUX_MODPROBE, VirtualCameraSink, no_device_message
from livefuse.pipeline import Pipeline
from livefuse.pipeline.stages import SourceInfo
from tests.helpers import NoFaces, Untouched

pyvirtualcam = pytest.importorskip("pyvirtualcam")

BACKEND = "livefuse-test"
W, H = 64, 48


class RecordingBackend:
    """A pyvirtualcam backend (duck-typed, as pyvirtualcam asks) that keeps what it gets."""

    instances: list[RecordingBackend] = []

    def __init__(self, *, width: int, height: int, fps: float, fourcc: int, device: str | None, **kw: Any) -> None:
        self.width, self.height, self.fps, self.fourcc = width, height, fps, fourcc
        self._device = device or "fake-cam"
        self.frames: list[np.ndarray] = []
        self.closed = False
        RecordingBackend.instances.append(self)

    def send(self, frame: np.ndarray) -> None:
        self.frames.append(frame.copy())

    def close(self) -> None:
        self.closed = True

    def device(self) -> str:
        return self._device

    def native_fourcc(self) -> int | None:
        return None


@pytest.fixture
def backend() -> Iterator[type[RecordingBackend]]:
    RecordingBackend.instances = []
    pyvirtualcam.register_backend(BACKEND, RecordingBackend)
    yield RecordingBackend
    # register_backend fills a process-wide registry: leave it as we found it.
    pyvirtualcam.camera.BACKENDS.pop(BACKEND, None)


class ColourSource:
    """Frame i is filled with BGR (i, 100, 200)."""

    def __init__(self, n: int = 5, size: tuple[int, int] = (W, H)) -> None:
        self.n, self.size, self.i = n, size, 0

    def open(self) -> SourceInfo:
        return SourceInfo(self.size[0], self.size[1], 30.0, False, Fraction(1, 30), self.n)

    def read(self, image: np.ndarray) -> int:
        if self.i >= self.n:
            raise StreamEnded("done")
        image[:] = (self.i, 100, 200)
        self.i += 1
        return self.i - 1

    def close(self) -> None:
        pass


def test_frames_arrive_with_the_right_size_format_and_content(
    backend: type[RecordingBackend],
) -> None:
    sink = VirtualCameraSink(backend=BACKEND)
    Pipeline(ColourSource(n=5), NoFaces(), Untouched(), [sink]).run()
    (cam,) = backend.instances
    assert (cam.width, cam.height, cam.fps) == (W, H, 30.0)
    assert cam.fourcc == pyvirtualcam.util.encode_fourcc(pyvirtualcam.PixelFormat.BGR.value)
    assert len(cam.frames) == 5 and cam.closed
    for i, flat in enumerate(cam.frames):
        assert flat.size == W * H * 3
        pixels = flat.reshape(H, W, 3)
        assert (pixels == np.array([i, 100, 200], np.uint8)).all()  # BGR, untouched


def test_frames_are_resized_to_the_advertised_size(backend: type[RecordingBackend]) -> None:
    sink = VirtualCameraSink(width=32, height=24, fps=15, device="/dev/video10", backend=BACKEND)
    Pipeline(ColourSource(n=3), NoFaces(), Untouched(), [sink]).run()
    (cam,) = backend.instances
    assert (cam.width, cam.height, cam.fps) == (32, 24, 15)
    assert [f.size for f in cam.frames] == [32 * 24 * 3] * 3
    assert (cam.frames[2].reshape(24, 32, 3) == np.array([2, 100, 200], np.uint8)).all()


def test_send_does_not_pace_by_sleeping(backend: type[RecordingBackend]) -> None:
    sink = VirtualCameraSink(fps=1, backend=BACKEND)  # at 1 fps, sleeping would take seconds
    sink.open(SourceInfo(W, H, 1.0, True, Fraction(1, 90_000)))
    frame = Frame(0, 0, Fraction(1, 90_000), 0, np.zeros((H, W, 3), np.uint8))
    start = time.monotonic()
    for _ in range(5):
        sink.send(frame)
    sink.close()
    assert time.monotonic() - start < 0.5
    assert sink.device_name is None  # closed


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the v4l2loopback backend is Linux-only")
def test_no_loopback_device_gives_the_modprobe_line() -> None:
    if glob.glob("/dev/video*"):
        pytest.skip("this machine has video devices; the no-device path cannot be forced")
    with pytest.raises(OutputError) as err:
        VirtualCameraSink(backend="v4l2loopback").open(SourceInfo(W, H, 30.0, True, Fraction(1, 90_000)))
    message = str(err.value)
    assert "modprobe v4l2loopback" in message
    assert LINUX_MODPROBE in message and "sudo apt install v4l2loopback-dkms" in message
    assert "No v4l2 loopback device found" in message  # pyvirtualcam's own words


def test_unknown_backend_lists_the_available_ones() -> None:
    with pytest.raises(OutputError, match="'obs' is not available") as err:
        VirtualCameraSink(backend="obs").open(SourceInfo(W, H, 30.0, True, Fraction(1, 90_000)))
    if sys.platform.startswith("linux"):
        assert "v4l2loopback" in str(err.value)


@pytest.mark.parametrize(
    "system, expected",
    [
        ("Linux", [LINUX_MODPROBE, "v4l2loopback-dkms"]),
        ("Windows", ["OBS Studio", "Start Virtual Camera", "Unity Capture"]),
        ("Darwin", ["OBS Studio", "virtual camera"]),
    ],
)
def test_no_device_message_per_platform(system: str, expected: list[str]) -> None:
    message = no_device_message(system, "backend said no", device=None)
    assert all(part in message for part in expected)
    assert message.endswith("pyvirtualcam said: backend said no")


def test_missing_pyvirtualcam_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyvirtualcam", None)  # makes `import pyvirtualcam` fail
    with pytest.raises(OutputError, match=r'pip install "livefuse\[vcam\]"'):
        VirtualCameraSink().open(SourceInfo(W, H, 30.0, True, Fraction(1, 90_000)))
