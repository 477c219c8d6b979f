"""Validating uploaded source-face photos and keeping them in a private directory.

A photo is checked before it is decoded: its type from its first bytes (the declared
Content-Type is not trusted), its byte size, and its pixel size from the file header, so
a small file that would decode to gigabytes (a "decompression bomb") is refused unread.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path

from livefuse.imagefile import decoded_bytes, image_size, sniff
from livefuse.web.errors import ApiError

log = logging.getLogger(__name__)

#: Largest upload accepted, in bytes.
MAX_UPLOAD_BYTES = 10 * 1024 * 1024
#: Largest photo accepted, in pixels per side.
MAX_IMAGE_SIDE = 4096
#: The types accepted, by the name ``sniff`` gives them.
IMAGE_TYPES = ("jpeg", "png", "webp")


@dataclass(frozen=True, slots=True)
class ImageLimits:
    """What an uploaded photo may be."""

    max_bytes: int = MAX_UPLOAD_BYTES
    max_side: int = MAX_IMAGE_SIDE
    max_decoded_bytes: int = 64 * 2**20
    "Memory decoding may take: a 4096x4096 8-bit photo fits, its 16-bit twin does not."

    def describe(self) -> str:
        """The limits in words, for messages and the page."""
        return f"JPEG, PNG or WebP, at most {self.max_bytes // (1024 * 1024)} MB and {self.max_side} px per side"


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
    if kind not in IMAGE_TYPES:
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
    if (need := decoded_bytes(data, kind, size)) > limits.max_decoded_bytes:
        raise ApiError(
            422,
            f"the photo would take {need / 2**20:.0f} MB to decode (16-bit colour or an alpha channel); "
            f"the limit is {limits.max_decoded_bytes // 2**20} MB. Save it as an 8-bit JPEG or PNG",
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
