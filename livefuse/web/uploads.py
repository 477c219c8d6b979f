"""Validating uploaded source-face photos and keeping them in a private directory.

A photo is checked before it is decoded: its type from its first bytes (the declared
Content-Type is not trusted), its byte size, and its pixel size from the file header, so
a small file that would decode to gigabytes (a "decompression bomb") is refused unread.
"""

from __future__ import annotations

import logging
import os
import shutil
import struct
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path

from livefuse.web.errors import ApiError

log = logging.getLogger(__name__)

#: Largest upload accepted, in bytes.
MAX_UPLOAD_BYTES = 10 * 1024 * 1024
#: Largest photo accepted, in pixels per side.
MAX_IMAGE_SIDE = 4096
#: The types accepted, by the name ``sniff`` gives them.
IMAGE_TYPES = ("jpeg", "png", "webp")

# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic...): they carry the size.
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
# JPEG markers that stand alone, with no length field after them.
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xDA)})


@dataclass(frozen=True, slots=True)
class ImageLimits:
    """What an uploaded photo may be."""

    max_bytes: int = MAX_UPLOAD_BYTES
    max_side: int = MAX_IMAGE_SIDE

    def describe(self) -> str:
        """The limits in words, for messages and the page."""
        return f"JPEG, PNG or WebP, at most {self.max_bytes // (1024 * 1024)} MB and {self.max_side} px per side"


def sniff(data: bytes) -> str | None:
    """``"jpeg"``, ``"png"`` or ``"webp"`` from the file's first bytes; None for anything else."""
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def image_size(data: bytes, kind: str) -> tuple[int, int] | None:
    """(width, height) read from the header of a ``kind`` image; None when it cannot be read."""
    try:
        if kind == "png":
            return _png_size(data)
        if kind == "jpeg":
            return _jpeg_size(data)
        if kind == "webp":
            return _webp_size(data)
    except (struct.error, IndexError):
        return None
    return None


def _png_size(data: bytes) -> tuple[int, int] | None:
    if data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if marker in _JPEG_STANDALONE:
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if marker in _JPEG_SOF:
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return int(width), int(height)
        if marker == 0xDA:  # start of scan before any frame header: corrupt
            return None
        i += 2 + length
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8 ":
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    return None


def check_image(data: bytes, limits: ImageLimits) -> str:
    """Check an uploaded photo against ``limits`` before decoding it; return its type.

    Raises ``ApiError`` 413 (too many bytes), 415 (not JPEG/PNG/WebP) or 422 (unreadable
    header or too many pixels), each saying what is accepted.
    """
    accepted = limits.describe()
    if not data:
        raise ApiError(400, f"the upload is empty; send a photo ({accepted})")
    if len(data) > limits.max_bytes:
        raise ApiError(413, f"the photo is {len(data) / 1e6:.1f} MB; the limit is {accepted}")
    kind = sniff(data)
    if kind is None:
        raise ApiError(415, f"the upload is not a JPEG, PNG or WebP image; send a photo ({accepted})")
    size = image_size(data, kind)
    if size is None or min(size) < 1:
        raise ApiError(422, f"the {kind.upper()} file is damaged (its header cannot be read); export it again")
    if max(size) > limits.max_side:
        raise ApiError(
            422,
            f"the photo is {size[0]}x{size[1]} px; the limit is {limits.max_side} px per side. "
            "Scale it down and upload it again",
        )
    return kind


class PrivateDir:
    """A temporary directory only this user can read (0700), removed on ``close``.

    Files get names the server makes up, never a client's file name, so an upload cannot
    land anywhere else.
    """

    def __init__(self, prefix: str = "livefuse-uploads-") -> None:
        # mkdtemp creates the directory with mode 0700 whatever the umask.
        self.path = Path(tempfile.mkdtemp(prefix=prefix))
        self._count = 0
        # Also removed at interpreter exit: a server stopped before its cleanup ran leaves nothing.
        weakref.finalize(self, shutil.rmtree, self.path, ignore_errors=True)

    def write(self, stem: str, data: bytes) -> Path:
        """Write ``data`` to a new file (0600) named after ``stem`` and a counter."""
        if not stem.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"PrivateDir file stem must be alphanumeric, got {stem!r}")
        self._count += 1
        path = self.path / f"{stem}-{self._count}.upload"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        return path

    def close(self) -> None:
        """Remove the directory and everything in it. Idempotent."""
        if not self.path.exists():
            return
        try:
            shutil.rmtree(self.path)
        except OSError as exc:
            log.warning("could not remove the upload directory %s: %s", self.path, exc)
