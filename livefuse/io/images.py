"""Still images out: a real image file (JPEG, PNG, WebP, ...) chosen by extension, written atomically."""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from livefuse.errors import OutputError
from livefuse.frame import Frame
from livefuse.pipeline.stages import SourceInfo

log = logging.getLogger(__name__)

#: Extensions written as one image rather than a video.
IMAGE_OUTPUTS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})

#: Encoder settings per extension: near-lossless, as a photo editor's "high quality".
_ENCODE_PARAMS: dict[str, list[int]] = {
    ".jpg": [cv2.IMWRITE_JPEG_QUALITY, 95],
    ".jpeg": [cv2.IMWRITE_JPEG_QUALITY, 95],
    ".webp": [cv2.IMWRITE_WEBP_QUALITY, 95],
    ".png": [cv2.IMWRITE_PNG_COMPRESSION, 3],
}


class ImageFileSink:
    """Writes the last frame it is sent as one image file, by ``path``'s extension.

    The image is encoded in memory and written to a hidden temporary file that ``close()``
    renames over ``path``; ``abort()`` leaves nothing. The picture is the upright one
    (the source's EXIF orientation was applied on reading), so no orientation tag is written.
    """

    def __init__(self, path: str | os.PathLike[str], seal: Callable[[Path, Path], None] | None = None) -> None:
        self.path = Path(path)
        self.seal = seal
        "Called with the finished temporary file and ``path`` before the rename (content credentials)."
        self.frames_written = 0
        self._image: np.ndarray | None = None

    def open(self, info: SourceInfo) -> None:
        """Check that this OpenCV build can write the extension."""
        if not cv2.haveImageWriter(str(self.path)):
            raise OutputError(
                f"cannot write {self.path}: no encoder for {self.path.suffix or 'files without an extension'}; "
                "use .jpg, .png or .webp"
            )
        self._image, self.frames_written = None, 0

    def send(self, frame: Frame) -> None:
        """Keep a copy of the frame (its buffer goes back to the pipeline's pool)."""
        if self._image is None or self._image.shape != frame.image.shape:
            self._image = np.empty_like(frame.image)
        np.copyto(self._image, frame.image)
        self.frames_written += 1

    def close(self) -> None:
        """Encode and move the image into place. With no frame, nothing is created."""
        image, self._image = self._image, None
        if image is None:
            return
        ok, data = cv2.imencode(self.path.suffix.lower(), image, _ENCODE_PARAMS.get(self.path.suffix.lower(), []))
        if not ok:
            raise OutputError(f"encoding {self.path} failed: OpenCV could not encode a {image.shape} image")
        write_atomic(self.path, data.tobytes(), self.seal)
        log.info("wrote %s (%dx%d)", self.path, image.shape[1], image.shape[0])

    def abort(self) -> None:
        """Forget the frame: nothing was written yet, so nothing is left."""
        self._image = None


def write_atomic(path: Path, data: bytes, seal: Callable[[Path, Path], None] | None = None) -> None:
    """Write ``data`` to ``path`` whole or not at all (temporary file in the same directory, then
    rename). ``seal(tmp, path)`` runs on the complete file first; the temporary file keeps the
    extension, which says its format. If sealing fails the picture still goes into place, unsealed,
    and the error goes on."""
    tmp = path.with_name(f".{path.stem}.{secrets.token_hex(4)}.partial{path.suffix}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            if seal is not None:
                seal(tmp, path)
        finally:
            os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"writing {path} failed: {exc.strerror or exc} (is the disk full?)") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
