"""Still-image files read safely: type from the first bytes, size from the header, then decoded.

A photo is checked before it is decoded, so a small file that would decode to gigabytes
(a "decompression bomb", or a 16-bit PNG of a huge size) is refused unread. Used for the
source face photo, image inputs and uploads alike.
"""

from __future__ import annotations

import struct

import cv2
import numpy as np

from livefuse.errors import SourceError

#: Most pixels an image may have (about 8000 x 8000): far beyond any photo a face is taken from.
MAX_PIXELS = 64_000_000
#: Most memory decoding one image may take (a 16-bit RGBA PNG needs 8 bytes a pixel).
MAX_DECODED_BYTES = 512 * 1024 * 1024

# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic...): they carry the size.
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
# JPEG markers that stand alone, with no length field after them.
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xDA)})


def sniff(data: bytes) -> str | None:
    """``"jpeg"``, ``"png"``, ``"webp"`` or ``"bmp"`` from the file's first bytes; None for anything else."""
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data.startswith(b"BM"):
        return "bmp"
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
        if kind == "bmp":
            width, height = struct.unpack("<ii", data[18:26])
            return abs(width), abs(height)
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


def decoded_bytes(data: bytes, kind: str, size: tuple[int, int]) -> int:
    """Bytes the decoder needs for the full image: samples per pixel times bytes per sample."""
    width, height = size
    if kind == "png" and len(data) >= 26:
        depth, colour = data[24], data[25]
        channels = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}.get(colour, 4)
        return width * height * max(channels, 3) * (2 if depth == 16 else 1)
    if kind == "webp":
        return width * height * 4
    return width * height * 3


def decode_image(data: bytes, what: str, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """``data`` decoded to BGR (EXIF orientation applied), after the header checks.

    Raises ``SourceError`` naming ``what`` for an empty file, an image over ``max_pixels``
    or ``MAX_DECODED_BYTES``, or bytes no decoder reads.
    """
    if not data:
        raise SourceError(f"{what} is an empty file (0 bytes); export or copy it again")
    kind = sniff(data)
    size = image_size(data, kind) if kind else None
    if size is not None and kind is not None:
        pixels = size[0] * size[1]
        if pixels > max_pixels or decoded_bytes(data, kind, size) > MAX_DECODED_BYTES:
            raise SourceError(
                f"{what} is {size[0]}x{size[1]} px ({pixels / 1e6:.0f} MP); the limit is {max_pixels / 1e6:.0f} MP: "
                "scale it down (a face needs far fewer pixels) and try again"
            )
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise SourceError(f"{what} is not a readable image (corrupt, or not JPEG/PNG/WebP/BMP/TIFF)")
    return image
