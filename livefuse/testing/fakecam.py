"""A fake camera for tests and benchmarks: a clip of a real face with a frame counter.

Chromium plays the clip as its camera (``--use-file-for-fake-video-capture=clip.y4m``,
4:2:0 only). The counter, 16 black/white blocks with their complement underneath, says
which clip frame a returned frame was made from, so a test can compare a returned frame
with its own input and a benchmark can time the round trip. ``static/probe.js`` reads it
in the page with the same geometry as ``counter_geometry``.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

COUNTER_BITS = 16


def counter_geometry(width: int, height: int) -> tuple[int, int, int]:
    """(x, y, block): where the counter starts and its block size, for a frame size."""
    block = max(8, width // 40)
    return block // 2, height - 2 * block - block // 2, block


def draw_counter(image: np.ndarray, n: int) -> None:
    """Draw ``n`` (16 bits) into ``image``'s bottom-left corner: a block row and its complement."""
    x0, y0, b = counter_geometry(image.shape[1], image.shape[0])
    for bit in range(COUNTER_BITS):
        on = (n >> bit) & 1
        x = x0 + bit * b
        image[y0 : y0 + b, x : x + b] = 255 if on else 0
        image[y0 + b : y0 + 2 * b, x : x + b] = 0 if on else 255


def read_counter(image: np.ndarray) -> int | None:
    """The counter in ``image``, or None where a block and its complement do not disagree."""
    x0, y0, b = counter_geometry(image.shape[1], image.shape[0])
    m = b // 4  # sample each block's middle: codecs smear the edges
    value = 0
    for bit in range(COUNTER_BITS):
        x = x0 + bit * b
        top = float(image[y0 + m : y0 + b - m, x + m : x + b - m].mean())
        bottom = float(image[y0 + b + m : y0 + 2 * b - m, x + m : x + b - m].mean())
        if abs(top - bottom) < 60:
            return None
        value |= (top > bottom) << bit
    return value


def wall(width: int, height: int, seed: int = 7) -> np.ndarray:
    """A still, softly textured grey background (BGR)."""
    rng = np.random.default_rng(seed)
    blotches = cv2.resize(rng.normal(0, 1, (6, 8)).astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    grey = 140 + 18 * blotches + 5 * np.sin(xx / 9) * np.sin(yy / 11)
    image = np.clip(grey, 0, 255).astype(np.uint8)
    return cv2.merge([image, (image * 0.98).astype(np.uint8), (image * 0.95).astype(np.uint8)])


def face_clip(
    portrait: np.ndarray, size: tuple[int, int] = (640, 480), frames: int = 60, top: float = 0.6
) -> list[np.ndarray]:
    """``frames`` BGR frames of ``portrait`` in front of a wall, swaying gently, with counters.

    The top ``top`` of the portrait (head and shoulders of an official portrait) fills
    92 % of the frame's height, so the face is about a quarter of the frame wide, as on
    a webcam.
    """
    width, height = size
    background = wall(width, height)
    portrait = portrait[: max(1, round(top * portrait.shape[0]))]
    scale = 0.92 * height / portrait.shape[0]
    sprite = cv2.resize(portrait, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)[:, :width]
    sh, sw = sprite.shape[:2]
    clip = []
    for i in range(frames):
        frame = background.copy()
        dx = round(0.012 * width * math.sin(2 * math.pi * i / frames))
        x = min(max((width - sw) // 2 + dx, 0), width - sw)
        frame[height - sh :, x : x + sw] = sprite
        draw_counter(frame, i)
        clip.append(frame)
    return clip


def write_y4m(path: Path, frames: list[np.ndarray], fps: int = 30) -> Path:
    """Write BGR ``frames`` as a 4:2:0 y4m file (what Chromium's fake camera plays)."""
    height, width = frames[0].shape[:2]
    with Path(path).open("wb") as fh:
        fh.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for frame in frames:
            fh.write(b"FRAME\n")
            fh.write(cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420).tobytes())
    return Path(path)


def chromium_flags(camera: Path) -> list[str]:
    """Chromium flags for offline, loopback-only WebRTC with ``camera`` (a 4:2:0 y4m or an
    MJPEG file) as the camera: what the browser test and the latency benchmark launch with."""
    return [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-video-capture={camera}",
        "--allow-loopback-in-peer-connection",  # without it Chromium gathers no candidate on lo
        "--disable-features=WebRtcHideLocalIpsWithMdns",
        "--autoplay-policy=no-user-gesture-required",
    ]
