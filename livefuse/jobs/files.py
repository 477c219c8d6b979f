"""Job directories: where a job's uploads and result live, and the checks on uploads.

Layout under the storage root (shared between the API and Redis workers)::

    <root>/<job id>/source.<jpg|png|webp>   the face photo
    <root>/<job id>/target.<ext>            the video or image
    <root>/<job id>/<hidden temp>           the output being written (removed on failure)
    <root>/<job id>/result.<ext>            the finished output (``finalise_output``)
    <root>/.incoming-<job id>/              an upload still being received and checked

An upload is received into ``.incoming-…`` and renamed into place only once every check
passed, so a refused or broken upload leaves nothing behind.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from livefuse.jobs.model import is_job_id
from livefuse.web.errors import ApiError
from livefuse.web.uploads import ImageLimits, check_image, sniff

log = logging.getLogger(__name__)

#: Largest video or image target accepted, by default.
MAX_TARGET_BYTES = 2 * 1024**3
#: Largest face photo accepted, by default.
MAX_SOURCE_BYTES = 10 * 1024**2
#: Free space kept on the storage volume beyond an upload's size.
DISK_RESERVE_BYTES = 256 * 1024**2
_VIDEO_KINDS = ("mp4", "mkv", "avi")


@dataclass(frozen=True, slots=True)
class StorageLimits:
    """What uploads may be and how much the storage may hold."""

    max_target_bytes: int = MAX_TARGET_BYTES
    max_source_bytes: int = MAX_SOURCE_BYTES
    quota_bytes: int | None = None
    "Most bytes all jobs together may hold; None: only the disk's free space limits them."
    reserve_bytes: int = DISK_RESERVE_BYTES


def sniff_media(head: bytes) -> str | None:
    """The file type from its first bytes: jpeg/png/webp (stills) or mp4/mkv/avi (videos)."""
    if kind := sniff(head):
        return kind
    if head[4:8] == b"ftyp":
        return "mp4"  # MP4 and QuickTime both start with an ftyp box
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "mkv"  # Matroska and WebM
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    return None


def is_video(kind: str) -> bool:
    return kind in _VIDEO_KINDS


def extension(kind: str) -> str:
    return {"jpeg": ".jpg", "bmp": ".bmp", "png": ".png", "webp": ".webp", "mp4": ".mp4", "mkv": ".mkv", "avi": ".avi"}[
        kind
    ]


def result_extension(target_kind: str) -> str:
    """Videos come out as MP4, stills as PNG (lossless; a JPEG in, a PNG out)."""
    return ".mp4" if is_video(target_kind) else ".png"


def disk_full(exc: OSError) -> ApiError:
    """A 507 for a full disk or quota, saying what to do."""
    return ApiError(507, f"the job storage is full ({exc.strerror or exc}); delete finished jobs or free space")


class JobFiles:
    """The job directories under ``root``."""

    def __init__(self, root: Path, limits: StorageLimits = StorageLimits()) -> None:
        self.root = root
        self.limits = limits
        root.mkdir(parents=True, exist_ok=True)

    def dir(self, job_id: str) -> Path:
        if not is_job_id(job_id):
            raise ValueError(f"not a job id: {job_id!r}")
        return self.root / job_id

    def incoming(self, job_id: str) -> Path:
        """A fresh private directory an upload is received into."""
        path = self.root / f".incoming-{self.dir(job_id).name}"
        path.mkdir(mode=0o700)
        return path

    def commit(self, job_id: str, incoming: Path) -> Path:
        """Move a checked upload into its job directory (one rename)."""
        final = self.dir(job_id)
        os.replace(incoming, final)
        return final

    def remove(self, job_id: str) -> None:
        """Delete a job's directory and everything in it. Idempotent."""
        shutil.rmtree(self.dir(job_id), ignore_errors=True)

    def clear_outputs(self, job_id: str, keep: tuple[str, ...]) -> None:
        """Remove what an earlier, interrupted attempt wrote (a partial temp file), keeping ``keep``."""
        for path in self.dir(job_id).iterdir():
            if path.name not in keep and path.is_file():
                path.unlink(missing_ok=True)

    def discard(self, path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)

    def clean_incoming(self) -> None:
        """Uploads cut off by a restart: nothing of them is kept."""
        for path in self.root.glob(".incoming-*"):
            shutil.rmtree(path, ignore_errors=True)

    def check_room(self, incoming_bytes: int) -> None:
        """A 507 when ``incoming_bytes`` more would overfill the disk or the quota."""
        free = shutil.disk_usage(self.root).free
        if free - incoming_bytes < self.limits.reserve_bytes:
            raise disk_full(OSError(errno.ENOSPC, f"{free // 1024**2} MB free"))
        quota = self.limits.quota_bytes
        if quota is not None and self.used_bytes() + incoming_bytes > quota:
            raise disk_full(OSError(errno.EDQUOT, f"the quota of {quota // 1024**2} MB is used up"))

    def used_bytes(self) -> int:
        """Bytes held by every job directory (including uploads in progress)."""
        total = 0
        for dirpath, _dirs, names in os.walk(self.root):
            for name in names:
                try:
                    total += os.stat(os.path.join(dirpath, name)).st_size
                except FileNotFoundError:
                    continue  # removed while we walked: it holds nothing now
        return total


def finalise_output(produced: Path, result: Path, seal: Callable[[Path, Path], None] | None = None) -> Path:
    """The one place a job's output becomes its result: the complete file the pipeline wrote
    is sealed (content credentials, signed in place) and renamed into place atomically."""
    if seal is not None:
        seal(produced, result)
    os.replace(produced, result)
    return result


# -- checks run on the received files (in an executor: they decode) ---------------------------


def check_source_photo(path: Path, limits: ImageLimits) -> np.ndarray:
    """The decoded face photo, or a 4xx saying why it is refused."""
    data = path.read_bytes()
    check_image(data, limits)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ApiError(422, "the source photo cannot be decoded; export it again as JPEG or PNG")
    return image


def check_target(path: Path, kind: str) -> int | None:
    """Decode the target's first frame; its frame count (None when the container does not say)."""
    if not is_video(kind):
        image = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise ApiError(422, "the target image cannot be decoded; send a JPEG, PNG or WebP")
        return 1
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ApiError(422, "the target file has no video stream; send a video (MP4, MKV, AVI) or an image")
            stream = container.streams.video[0]
            next(container.decode(stream))
            return int(stream.frames) or None
    except (av.FFmpegError, StopIteration, OSError) as exc:
        raise ApiError(422, f"the target video cannot be decoded ({exc}); send an MP4, MKV or AVI") from None
