"""Frame sources: cameras, network streams, video files, still images.

Every source writes each frame straight into the caller's pool image (``cv2``'s
``read``/``retrieve`` decode in place when the shape matches; otherwise the frame is
resized into it), so capture allocates nothing per frame.

One module for every kind of source (it is longer than most): they share the capture
contract, the in-place decode and the pacing helpers, and ``open_source`` chooses among them.
"""

from __future__ import annotations

import logging
import os
import platform
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from fractions import Fraction
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

import cv2
import numpy as np

from livefuse.errors import SourceError, SourceStalled, StreamEnded
from livefuse.imagefile import decode_image
from livefuse.pipeline.stages import Source, SourceInfo

log = logging.getLogger(__name__)

#: Time base of live sources: the 90 kHz RTP video clock, so WebRTC needs no rescale.
LIVE_TIME_BASE = Fraction(1, 90_000)
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
STREAM_SCHEMES = frozenset({"rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt"})
#: Cameras often take seconds to deliver their first frame (auto-exposure, USB setup).
FIRST_FRAME_TIMEOUT_S = 5.0
_RETRY_SLEEP_S = 0.01
#: Failed reads in a row after which a file is taken as ended rather than damaged.
_MAX_BAD_READS = 250


class Capture(Protocol):
    """The part of ``cv2.VideoCapture`` livefuse uses (tests inject fakes of it)."""

    def isOpened(self) -> bool: ...  # noqa: N802 - cv2's name

    def set(self, prop: int, value: float) -> bool: ...

    def get(self, prop: int) -> float: ...

    def grab(self) -> bool: ...

    def retrieve(self, image: np.ndarray | None = None) -> tuple[bool, np.ndarray]: ...

    def read(self, image: np.ndarray | None = None) -> tuple[bool, np.ndarray]: ...

    def release(self) -> None: ...


#: Builds a capture for a device index, device path, URL or file path.
CaptureFactory = Callable[[int | str], Capture]


def open_source(spec: str, size: tuple[int, int] | None = None, fps: float | None = None) -> Source:
    """Pick a source for ``spec``.

    A number or ``/dev/video*`` is a camera, ``rtsp://``/``http(s)://``/... a network
    stream, a file with an image extension a still, anything else a video file.
    ``size`` (w, h) and ``fps`` are requests to a camera; files keep their own.
    """
    spec = spec.strip()
    if not spec:
        raise SourceError("empty source: give a camera index (0), a URL or a file path")
    if spec.isdigit():
        return CameraSource(int(spec), size=size, fps=fps)
    if spec.startswith("/dev/video"):
        return CameraSource(spec, size=size, fps=fps)
    if urlsplit(spec).scheme.lower() in STREAM_SCHEMES:
        return StreamSource(spec)
    if Path(spec).suffix.lower() in IMAGE_EXTENSIONS:
        return ImageSource(spec)
    return VideoFileSource(spec)


# -- shared helpers ----------------------------------------------------------------------


def _fit_into(image: np.ndarray, frame: np.ndarray) -> None:
    """Make ``image`` hold ``frame``: nothing to do when decoded in place, else copy or resize."""
    if frame is image:
        return
    if frame.shape == image.shape:
        np.copyto(image, frame)
    elif frame.ndim == 3 and frame.shape[2] == image.shape[2]:
        cv2.resize(frame, (image.shape[1], image.shape[0]), dst=image, interpolation=cv2.INTER_AREA)
    else:
        raise SourceError(
            f"source delivered a frame of shape {frame.shape}, expected BGR {image.shape}: "
            "only 3-channel colour sources are supported"
        )


def _rate(fps: float) -> Fraction:
    """``fps`` as an exact fraction (29.97 → 30000/1001 style, 25.0 → 25)."""
    return Fraction(fps).limit_denominator(1001)


def _default_capture(target: int | str) -> Capture:
    if isinstance(target, str) and target.startswith("/dev/video"):
        return cv2.VideoCapture(target, cv2.CAP_V4L2)  # type: ignore[return-value]
    return cv2.VideoCapture(target)  # type: ignore[return-value]


class _Stalled(Exception):
    """A grab did not come back in time."""


class _Grabber:
    """Runs ``cap.grab()`` in a helper thread so a stalled device cannot hang the caller.

    The caller decodes with ``retrieve`` only between grabs, so the capture is never used
    by two threads at once. The helper releases the capture itself when it exits: a grab
    stuck in the driver would otherwise race a ``release`` from another thread.
    """

    def __init__(self, cap: Capture, name: str) -> None:
        self._cap = cap
        self._request = threading.Event()
        self._done = threading.Event()
        self._pending = False
        self._closing = False
        self._ok = False
        self._error: Exception | None = None
        # Daemon on purpose: a driver call cannot be interrupted, and a device stuck in
        # one must not keep the process alive. Every other livefuse thread is joined.
        self._thread = threading.Thread(target=self._loop, name=f"livefuse-grab-{name}", daemon=True)
        self._thread.start()

    def grab(self, timeout: float) -> bool:
        """``cap.grab()``'s result, or ``_Stalled`` after ``timeout`` seconds."""
        if self._pending and not self._done.wait(timeout):
            raise _Stalled
        self._done.clear()
        self._pending = True
        self._request.set()
        if not self._done.wait(timeout):
            raise _Stalled
        self._pending = False
        if self._error is not None:
            raise self._error
        return self._ok

    def close(self, timeout: float = 0.5) -> None:
        """Stop the helper; it releases the capture once any grab in flight returns."""
        self._closing = True
        self._request.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning(
                "%s is still blocked in the capture driver; the device is released when that call returns",
                self._thread.name,
            )

    def _loop(self) -> None:
        try:
            while True:
                self._request.wait()
                self._request.clear()
                if self._closing:
                    return
                self._grab_once()
                self._done.set()
        finally:
            self._cap.release()

    def _grab_once(self) -> None:
        try:
            self._ok, self._error = bool(self._cap.grab()), None
        except Exception as exc:  # noqa: BLE001 - handed to the reading thread
            self._ok, self._error = False, exc


# -- live sources ------------------------------------------------------------------------


class _LiveSource:
    """Common part of cameras and network streams: watchdog reads, capture-clock pts."""

    kind = "live source"

    def __init__(self, stall_timeout_s: float, capture_factory: CaptureFactory | None) -> None:
        if stall_timeout_s <= 0:
            raise ValueError(f"stall_timeout_s must be positive, got {stall_timeout_s}")
        self.stall_timeout_s = stall_timeout_s
        self._factory = capture_factory or _default_capture
        self._cap: Capture | None = None
        self._grabber: _Grabber | None = None
        self._t0_ns = 0
        self._frames = 0

    def open(self) -> SourceInfo:
        """Open the device and report the size and rate it actually delivers."""
        cap = self._factory(self._target())
        if not cap.isOpened():
            cap.release()
            raise SourceError(self._cannot_open_message())
        self._configure(cap)
        width, height = (
            int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
            int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
        )
        fps = float(cap.get(cv2.CAP_PROP_FPS)) or self._fallback_fps()
        self._cap, self._grabber = cap, _Grabber(cap, self.kind)
        self._t0_ns, self._frames = time.monotonic_ns(), 0
        if width <= 0 or height <= 0:
            # Some drivers report 0 until the first frame: measure it instead.
            try:
                height, width = self._probe_shape()
            except BaseException:
                self.close()
                raise
        return SourceInfo(
            width=width,
            height=height,
            fps=fps,
            live=True,
            time_base=LIVE_TIME_BASE,
            name=self.name,
        )

    def read(self, image: np.ndarray) -> int:
        """Wait for the next frame (at most the stall timeout) and decode it into ``image``."""
        if self._cap is None or self._grabber is None:
            raise SourceError(f"{self.name}: read() called before open()")
        self._grab_with_retry()
        pts = (time.monotonic_ns() - self._t0_ns) * 9 // 100_000  # ns → 90 kHz ticks
        ok, frame = self._cap.retrieve(image)
        if not ok:
            raise SourceStalled(f"{self.name} delivered a frame that could not be decoded")
        _fit_into(image, frame)
        self._frames += 1
        return pts

    def close(self) -> None:
        """Release the device. Idempotent."""
        grabber, self._grabber, self._cap = self._grabber, None, None
        if grabber is not None:
            grabber.close()

    @property
    def name(self) -> str:
        """How messages name this source."""
        raise NotImplementedError

    def _grab_with_retry(self) -> None:
        """Grab; a failed grab is retried until the stall timeout, then it is a stall."""
        assert self._grabber is not None
        timeout = self.stall_timeout_s
        if self._frames == 0:
            timeout = max(timeout, FIRST_FRAME_TIMEOUT_S)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self._grabber.grab(max(deadline - time.monotonic(), 0.001)):
                    return
            except _Stalled:
                break
            if time.monotonic() >= deadline:
                break
            time.sleep(_RETRY_SLEEP_S)
        raise SourceStalled(self._stalled_message(timeout))

    def _probe_shape(self) -> tuple[int, int]:
        assert self._cap is not None
        self._grab_with_retry()
        ok, frame = self._cap.retrieve()
        if not ok or frame is None:
            raise SourceError(f"{self.name} opened but its first frame could not be decoded")
        return int(frame.shape[0]), int(frame.shape[1])

    def _target(self) -> int | str:
        raise NotImplementedError

    def _configure(self, cap: Capture) -> None:
        """Apply requested settings before the size and rate are read back."""

    def _fallback_fps(self) -> float:
        return 30.0

    def _cannot_open_message(self) -> str:
        raise NotImplementedError

    def _stalled_message(self, timeout: float) -> str:
        raise NotImplementedError


class CameraSource(_LiveSource):
    """A local camera by index (``0``) or device path (``/dev/video0``). Live.

    :param size: requested (width, height); the camera may pick another, and
        ``open()`` reports what it really delivers.
    :param fps: requested frame rate, same caveat.
    :param stall_timeout_s: a camera that delivers nothing for this long raises
        ``SourceStalled`` (the first frame gets at least 5 s).
    :param capture_factory: builds the ``cv2.VideoCapture``; tests inject fakes here.
    """

    kind = "camera"

    def __init__(
        self,
        device: int | str = 0,
        size: tuple[int, int] | None = None,
        fps: float | None = None,
        stall_timeout_s: float = 2.0,
        capture_factory: CaptureFactory | None = None,
    ) -> None:
        super().__init__(stall_timeout_s, capture_factory)
        self.device = device
        self.size = size
        self.fps = fps

    @property
    def name(self) -> str:
        """``camera 0`` or ``camera /dev/video2``."""
        return f"camera {self.device}"

    def _target(self) -> int | str:
        return self.device

    def _configure(self, cap: Capture) -> None:
        # Keep the driver queue short: a stale buffered frame is latency.
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        if self.size is not None:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.size[0])
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.size[1])
        if self.fps is not None:
            cap.set(cv2.CAP_PROP_FPS, self.fps)
        self._log_mismatch(cap)

    def _log_mismatch(self, cap: Capture) -> None:
        got = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        if self.size is not None and got != tuple(self.size):
            log.info("%s delivers %dx%d instead of the requested %dx%d", self.name, *got, *self.size)
        got_fps = cap.get(cv2.CAP_PROP_FPS)
        if self.fps is not None and got_fps and abs(got_fps - self.fps) > 0.5:
            log.info("%s delivers %.1f fps instead of the requested %.1f", self.name, got_fps, self.fps)

    def _fallback_fps(self) -> float:
        return float(self.fps or 30.0)

    def _cannot_open_message(self) -> str:
        return f"cannot open {self.name}. {_camera_fixes(self.device, platform.system())}"

    def _stalled_message(self, timeout: float) -> str:
        return (
            f"{self.name} delivered no frame for {timeout:.1f} s: it was unplugged, went to "
            "sleep or was taken by another app. Reconnect it and start again (or raise the "
            "stall timeout for a slow camera)."
        )


def _camera_fixes(device: int | str, system: str) -> str:
    """What to check when a camera will not open, per platform."""
    if system == "Linux":
        path = device if isinstance(device, str) else f"/dev/video{device}"
        return (
            f"Check that {path} exists (`v4l2-ctl --list-devices` or `ls /dev/video*`), that "
            "your user may open it (`sudo usermod -aG video $USER`, then log in again) and "
            "that no other app (browser tab, Zoom, OBS) is using it."
        )
    if system == "Darwin":
        return (
            "Allow camera access for your terminal in System Settings > Privacy & Security > "
            "Camera, close other apps using the camera, or try another index (0, 1, ...)."
        )
    return (
        "Allow desktop apps to use the camera in Settings > Privacy & security > Camera, "
        "close other apps using it (Teams, Zoom, OBS), or try another index (0, 1, ...)."
    )


class StreamSource(_LiveSource):
    """A network stream (RTSP, RTMP, HTTP, ...) read with FFmpeg. Live.

    Credentials in the URL never appear in messages or logs.
    """

    kind = "stream"

    def __init__(
        self,
        url: str,
        stall_timeout_s: float = 5.0,
        open_timeout_s: float = 10.0,
        capture_factory: CaptureFactory | None = None,
    ) -> None:
        super().__init__(stall_timeout_s, capture_factory or self._ffmpeg_capture)
        self.url = url
        self.open_timeout_s = open_timeout_s
        self._length = 0

    @property
    def name(self) -> str:
        """``stream rtsp://host/path`` without user or password."""
        return f"stream {_redact(self.url)}"

    def _configure(self, cap: Capture) -> None:
        # A URL of a finite file (http://host/clip.mp4) has a frame count; a live feed has 0.
        self._length = max(int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), 0)

    def read(self, image: np.ndarray) -> int:
        """The next frame; ``StreamEnded`` once a finite stream has delivered all of it."""
        if self._length and self._frames >= self._length:
            raise StreamEnded(f"{self.name} ended after {self._frames} frames")
        return super().read(image)

    def _target(self) -> int | str:
        return self.url

    def _ffmpeg_capture(self, target: int | str) -> Capture:
        # FFmpeg's own timeouts bound open and read; our watchdog is the backstop.
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            int(self.open_timeout_s * 1000),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            int(self.stall_timeout_s * 1000),
        ]
        return cv2.VideoCapture(target, cv2.CAP_FFMPEG, params)  # type: ignore[return-value]

    def _cannot_open_message(self) -> str:
        return (
            f"cannot open {self.name}: check the URL, that the server is up and reachable "
            "from here, and the credentials (rtsp://user:password@host/path). "
            f"`ffprobe '{_redact(self.url)}'` shows what FFmpeg sees."
        )

    def _stalled_message(self, timeout: float) -> str:
        return (
            f"{self.name} delivered no frame for {timeout:.1f} s: the server stopped sending "
            "or the network dropped. Check the connection and start again."
        )


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=f"***@{netloc}"))


# -- files -------------------------------------------------------------------------------


class VideoFileSource:
    """A video file, decoded frame by frame. Not live: the pipeline keeps every frame.

    pts count frames in a time base of 1/fps, fps being the container's exact
    average rate (so an output written at that rate keeps the source's timing).
    """

    def __init__(self, path: str | os.PathLike[str], capture_factory: CaptureFactory | None = None) -> None:
        # A URL (http://host/clip.mp4, rtsp://...) is read like a file: every frame, in order.
        self.url = str(path) if urlsplit(str(path)).scheme.lower() in STREAM_SCHEMES else None
        self.path = Path(path)
        self._factory = capture_factory or (_url_capture if self.url else _default_capture)
        self._cap: Capture | None = None
        self._first: np.ndarray | None = None
        self._index = 0
        self._frame_count: int | None = None
        self.skipped = 0
        "Reads that failed mid-file (corrupt packets) and were skipped."

    @property
    def name(self) -> str:
        """The file name (a URL without its credentials)."""
        return _redact(self.url) if self.url else str(self.path)

    def open(self) -> SourceInfo:
        """Probe the file, open the decoder, decode the first frame (catches corrupt files now)."""
        if self.url is None:
            _check_file(self.path, "video file")
        target = self.url or str(self.path)
        rate, frame_count, has_audio = _probe(target)
        cap = self._factory(target)
        if not cap.isOpened():
            cap.release()
            raise SourceError(_unreadable(self.name, "OpenCV cannot open it"))
        ok, first = cap.read()
        if not ok or first is None:
            cap.release()
            raise SourceError(_unreadable(self.name, "its first frame cannot be decoded"))
        if rate is None:
            rate = _rate(cap.get(cv2.CAP_PROP_FPS) or 30.0)
        self._cap, self._first, self._index, self._frame_count = cap, first, 0, frame_count
        return SourceInfo(
            width=first.shape[1],
            height=first.shape[0],
            fps=float(rate),
            live=False,
            time_base=1 / rate,
            frame_count=frame_count,
            audio_path=self.path if has_audio else None,
            name=self.name,
        )

    def read(self, image: np.ndarray) -> int:
        """Decode the next frame into ``image``; ``StreamEnded`` after the last one."""
        if self._cap is None:
            raise SourceError(f"{self.name}: read() called before open() or after close()")
        if self._first is not None:
            _fit_into(image, self._first)
            self._first = None
        else:
            frame = self._read_past_damage(image)
            _fit_into(image, frame)
        self._index += 1
        return self._index - 1

    def close(self) -> None:
        """Release the decoder. Idempotent."""
        cap, self._cap, self._first = self._cap, None, None
        if cap is not None:
            cap.release()

    def _read_past_damage(self, image: np.ndarray) -> np.ndarray:
        """The next decodable frame. A read that fails before the known end is a damaged
        packet: it is skipped and counted, and decoding goes on (as FFmpeg does)."""
        assert self._cap is not None
        failed = 0
        while True:
            ok, frame = self._cap.read(image)
            if ok:
                if failed:
                    self.skipped += failed
                    log.warning("%s: skipped %d damaged frame(s) before frame %d", self.name, failed, self._index)
                return frame
            failed += 1
            if not self._frame_count or self._index + failed >= self._frame_count or failed > _MAX_BAD_READS:
                self._warn_if_short()
                raise StreamEnded(self.name)

    def _warn_if_short(self) -> None:
        if self._frame_count and self._index < self._frame_count - 1:
            log.warning(
                "%s ended after %d of %d frames: the file may be truncated or corrupt",
                self.name,
                self._index,
                self._frame_count,
            )


def _check_file(path: Path, what: str) -> None:
    if not path.exists():
        raise SourceError(f"{what} not found: {path} (relative paths start from {Path.cwd()})")
    if not path.is_file():
        raise SourceError(f"{what} {path} is not a regular file")
    if not os.access(path, os.R_OK):
        raise SourceError(f"{what} {path} is not readable: check its permissions")


def _unreadable(path: Path | str, why: str) -> str:
    return (
        f"cannot read video file {path}: {why}. It is not a video or is corrupt; "
        f"`ffprobe {path}` shows what is wrong with it."
    )


def _url_capture(target: int | str) -> Capture:
    # FFmpeg waits forever on a silent server by default: bound open and each read.
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, 10_000, cv2.CAP_PROP_READ_TIMEOUT_MSEC, 10_000]
    return cv2.VideoCapture(target, cv2.CAP_FFMPEG, params)  # type: ignore[return-value]


def _probe(path: Path | str) -> tuple[Fraction | None, int | None, bool]:
    """Exact frame rate, frame count and whether there is audio, read with PyAV."""
    import av  # heavy: only needed for files

    options = {"timeout": "10000000"} if isinstance(path, str) and "://" in path else None
    try:
        with av.open(str(path), options=options) as container:
            if not container.streams.video:
                raise SourceError(f"{path} has no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            return (
                (Fraction(rate) if rate else None),
                (stream.frames or None),
                bool(container.streams.audio),
            )
    except av.FFmpegError as exc:
        raise SourceError(_unreadable(path, str(exc))) from exc


class ImageSource:
    """A still image delivered ``repeat`` times (``None``: until stopped). Not live."""

    def __init__(self, path: str | os.PathLike[str], repeat: int | None = 1, fps: float = 1.0) -> None:
        if repeat is not None and repeat < 1:
            raise ValueError(f"repeat must be at least 1 or None, got {repeat}")
        self.path = Path(path)
        self.repeat = repeat
        self.fps = fps
        self._image: np.ndarray | None = None
        self._index = 0

    @property
    def name(self) -> str:
        """The file name."""
        return str(self.path)

    def open(self) -> SourceInfo:
        """Load the image."""
        _check_file(self.path, "image")
        # Decoded from the bytes, not imread: imread cannot open non-ASCII paths on Windows.
        image = decode_image(self.path.read_bytes(), f"image {self.path}")
        self._image, self._index = image, 0
        return SourceInfo(
            width=image.shape[1],
            height=image.shape[0],
            fps=self.fps,
            live=False,
            time_base=1 / _rate(self.fps),
            frame_count=self.repeat,
            name=self.name,
        )

    def read(self, image: np.ndarray) -> int:
        """Copy the still into ``image``; ``StreamEnded`` after ``repeat`` frames."""
        if self._image is None:
            raise SourceError(f"{self.name}: read() called before open() or after close()")
        if self.repeat is not None and self._index >= self.repeat:
            raise StreamEnded(self.name)
        _fit_into(image, self._image)
        self._index += 1
        return self._index - 1

    def close(self) -> None:
        """Forget the image. Idempotent."""
        self._image = None


class PacedSource:
    """Delivers ``inner``'s frames at real-time pace and calls itself live.

    Simulates a camera from a file for tests and benchmarks ("live mode, source paced
    at 30 fps"). When reads come late the schedule restarts from now instead of
    bursting to catch up, as a camera would.

    :param fps: delivery rate; ``None`` keeps ``inner``'s rate and timestamps (and so
        its audio stays in sync). Another rate renumbers the frames and drops the audio.
    """

    def __init__(self, inner: Source, fps: float | None = None) -> None:
        self.inner = inner
        self.fps = fps
        self._period_ns = 0
        self._next_ns = 0
        self._index: int | None = None

    def open(self) -> SourceInfo:
        """Open ``inner``; report it as live at the paced rate."""
        info = self.inner.open()
        self._next_ns = time.monotonic_ns()
        if self.fps is None:
            self._period_ns, self._index = round(1e9 / info.fps), None
            return replace(info, live=True)
        rate = _rate(self.fps)
        self._period_ns, self._index = round(1e9 / rate), 0
        same_rate = abs(float(rate) - info.fps) < 1e-3
        return replace(
            info,
            live=True,
            fps=float(rate),
            time_base=1 / rate,
            audio_path=info.audio_path if same_rate else None,
        )

    def read(self, image: np.ndarray) -> int:
        """Wait until the next frame is due, then read it from ``inner``."""
        wait_ns = self._next_ns - time.monotonic_ns()
        if wait_ns > 0:
            time.sleep(wait_ns / 1e9)
        pts = self.inner.read(image)
        self._next_ns = max(self._next_ns + self._period_ns, time.monotonic_ns())
        if self._index is None:
            return pts
        self._index += 1
        return self._index - 1

    def close(self) -> None:
        """Close ``inner``."""
        self.inner.close()
