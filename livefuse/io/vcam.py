"""Virtual camera output through pyvirtualcam (optional dependency: ``livefuse[vcam]``)."""

from __future__ import annotations

import logging
import platform
from typing import Any

import cv2
import numpy as np

from livefuse.errors import OutputError
from livefuse.frame import Frame
from livefuse.pipeline.stages import SourceInfo

log = logging.getLogger(__name__)

LINUX_MODPROBE = 'sudo modprobe v4l2loopback devices=1 video_nr=10 card_label="livefuse" exclusive_caps=1'


class VirtualCameraSink:
    """Sends BGR frames to a virtual camera that video-call apps can pick.

    Pacing comes from the pipeline (one ``send`` per frame as it is ready); this sink
    never sleeps. Frames of another size are resized into a preallocated buffer.

    :param width, height, fps: what the camera advertises; ``None`` takes the source's.
    :param device: e.g. ``/dev/video10`` on Linux; ``None`` takes the first free one.
    :param backend: a pyvirtualcam backend name (``v4l2loopback``, ``obs``,
        ``unitycapture``); ``None`` tries every one available.
    """

    def __init__(
        self,
        width: int | None = None,
        height: int | None = None,
        fps: float | None = None,
        device: str | None = None,
        backend: str | None = None,
    ) -> None:
        self.width = width
        self.height = height
        self.fps = fps
        self.device = device
        self.backend = backend
        self._camera: Any = None
        self._resized: np.ndarray | None = None

    @property
    def device_name(self) -> str | None:
        """The device in use once open (what to pick in the video-call app)."""
        return None if self._camera is None else str(self._camera.device)

    def open(self, info: SourceInfo) -> None:
        """Open the virtual camera. Raises ``OutputError`` with setup steps when there is none."""
        pyvirtualcam = _import_pyvirtualcam()
        width, height = self.width or info.width, self.height or info.height
        fps = self.fps or info.fps or 30.0
        self._check_backend(pyvirtualcam)
        try:
            self._camera = pyvirtualcam.Camera(
                width,
                height,
                fps,
                fmt=pyvirtualcam.PixelFormat.BGR,
                device=self.device,
                backend=self.backend,
            )
        except (RuntimeError, ValueError, OSError) as exc:
            raise OutputError(no_device_message(platform.system(), str(exc), self.device)) from exc
        if (width, height) != (info.width, info.height):
            self._resized = np.empty((height, width, 3), np.uint8)
        log.info(
            "virtual camera %s (%s) open at %dx%d %.1f fps",
            self._camera.device,
            self._camera.backend,
            width,
            height,
            fps,
        )

    def send(self, frame: Frame) -> None:
        """Send one frame now."""
        if self._camera is None:
            raise OutputError("VirtualCameraSink: send() called before open() or after close()")
        image = frame.image
        if self._resized is not None:
            size = (self._resized.shape[1], self._resized.shape[0])
            image = cv2.resize(image, size, dst=self._resized, interpolation=cv2.INTER_AREA)
        self._camera.send(image)

    def close(self) -> None:
        """Release the device. Idempotent."""
        camera, self._camera = self._camera, None
        if camera is not None:
            camera.close()

    def _check_backend(self, pyvirtualcam: Any) -> None:
        # pyvirtualcam answers an unknown name with a bare KeyError (and a noisy __del__).
        known = sorted(pyvirtualcam.camera.BACKENDS)
        if self.backend is not None and self.backend not in known:
            raise OutputError(
                f"virtual camera backend {self.backend!r} is not available on "
                f"{platform.system()}; available here: {', '.join(known) or 'none'}. "
                "Leave the backend unset to try them all."
            )


def _import_pyvirtualcam() -> Any:
    try:
        import pyvirtualcam
    except ImportError as exc:
        raise OutputError('virtual camera output needs pyvirtualcam: pip install "livefuse[vcam]"') from exc
    return pyvirtualcam


def no_device_message(system: str, detail: str, device: str | None = None) -> str:
    """What to do when no virtual camera could be opened, for ``system`` (``platform.system()``).

    ``detail`` is pyvirtualcam's own error text, quoted at the end.
    """
    which = f"the virtual camera {device}" if device else "a virtual camera"
    if system == "Linux":
        steps = (
            "Create a v4l2loopback device:\n"
            "  sudo apt install v4l2loopback-dkms   (or your distribution's v4l2loopback package)\n"
            f"  {LINUX_MODPROBE}\n"
            "then run with --vcam (livefuse finds the device) or --vcam-device /dev/video10."
        )
    elif system == "Windows":
        steps = (
            "Install OBS Studio (https://obsproject.com) and click 'Start Virtual Camera' "
            "once, then stop it (livefuse drives it after that); or install Unity Capture "
            "(https://github.com/schellingb/UnityCapture) and run with --vcam-backend unitycapture."
        )
    elif system == "Darwin":
        steps = (
            "Install OBS Studio (https://obsproject.com), start its virtual camera once from "
            "OBS (and allow the system extension in System Settings), then stop it."
        )
    else:
        steps = f"pyvirtualcam has no virtual camera backend for {system or 'this system'}."
    return f"cannot open {which}. {steps}\npyvirtualcam said: {detail}"
