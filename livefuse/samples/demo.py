"""The synthetic demo clip: ``home/samples/demo.mp4`` rendered from the sample stills, with
``demo.json`` next to it saying which frames hold one face, two faces or none, and roughly where
the faces are.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from livefuse.errors import SampleError
from livefuse.models.files import atomic_path, atomic_write, sha256_file
from livefuse.models.store import Log
from livefuse.samples.store import SampleStore

#: Bump when the clip's content changes, so stale clips are re-rendered.
CLIP_VERSION = 1
CLIP_SEED = 20261121


@dataclass(frozen=True, slots=True)
class ClipSegment:
    """Frames ``start`` (inclusive) to ``stop`` (exclusive) showing ``faces`` faces."""

    name: str
    start: int
    stop: int
    faces: int


@dataclass(frozen=True, slots=True)
class ClipFace:
    """Where a face is in one frame of the demo clip (approximate: measured by eye in the still)."""

    sample: str
    box: tuple[float, float, float, float]
    "x1, y1, x2, y2: the axis-aligned box around the rotated face (brows-to-chin, cheek-to-cheek)."
    angle: float
    "In-plane rotation in degrees, counter-clockwise."


@dataclass(frozen=True, slots=True)
class DemoClip:
    """The demo clip and what is in it, as recorded in ``demo.json``."""

    path: Path
    width: int
    height: int
    fps: int
    frame_count: int
    codec: str
    sha256: str
    segments: tuple[ClipSegment, ...]
    faces: tuple[tuple[ClipFace, ...], ...]
    "Per frame, the faces in it."

    def segment(self, name: str) -> ClipSegment:
        """The segment called ``name`` (``one_face``, ``two_faces`` or ``no_face``)."""
        for seg in self.segments:
            if seg.name == name:
                return seg
        raise KeyError(name)

    @classmethod
    def load(cls, json_path: Path) -> DemoClip:
        """Read ``demo.json``. Raises ``SampleError`` when it is missing or malformed."""
        try:
            raw = json.loads(Path(json_path).read_text("utf-8"))
            return cls(
                path=Path(json_path).with_name(raw["file"]),
                **{k: raw[k] for k in ("width", "height", "fps", "frame_count", "codec", "sha256")},
                segments=tuple(ClipSegment(**s) for s in raw["segments"]),
                faces=tuple(
                    tuple(ClipFace(f["sample"], tuple(f["box"]), f["angle"]) for f in frame) for frame in raw["faces"]
                ),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SampleError(
                f"cannot read the demo clip description {json_path} ({exc}); make the clip again with make_demo_clip()"
            ) from exc


@dataclass(frozen=True, slots=True)
class _Still:
    """Hand-measured geometry of a portrait (pixels of the original image)."""

    sample: str
    face: tuple[float, float, float, float]
    "x1, y1, x2, y2 around the face: forehead to chin, cheek to cheek."
    head: tuple[float, float, float, float]
    "Ellipse around head, hair and ears: centre x, y and semi-axes."


# Measured by eye on gridded views of the stills; the detector is not involved.
_OBAMA = _Still("obama.jpg", face=(380, 110, 620, 400), head=(497, 230, 172, 235))
_BIDEN = _Still("biden.jpg", face=(420, 185, 715, 565), head=(572, 350, 205, 265))

_W, _H, _FPS = 1280, 720, 30
_SEGMENTS = (
    ClipSegment("one_face", 0, 300, 1),
    ClipSegment("two_faces", 300, 390, 2),
    ClipSegment("no_face", 390, 450, 0),
)


@dataclass(frozen=True, slots=True)
class _Sprite:
    """A head cut out of a still with a feathered mask, ready to paste."""

    still: _Still
    image: np.ndarray
    "BGR uint8 crop."
    alpha: np.ndarray
    "float32 mask in [0, 1], same size."
    origin: tuple[int, int]
    "Top-left of the crop in the still."


def _sprite(image: np.ndarray, still: _Still, feather: float = 24.0) -> _Sprite:
    import cv2

    cx, cy, ax, ay = still.head
    h, w = image.shape[:2]
    x0, y0 = max(0, int(cx - ax)), max(0, int(cy - ay))
    x1, y1 = min(w, int(cx + ax)), min(h, int(cy + ay))
    alpha = np.zeros((y1 - y0, x1 - x0), np.float32)
    centre = (round(cx - x0), round(cy - y0))
    # Shrink the hard ellipse by the feather so the soft edge stays inside the crop.
    cv2.ellipse(alpha, centre, (int(ax - feather), int(ay - feather)), 0, 0, 360, 1.0, -1)
    alpha = cv2.GaussianBlur(alpha, (0, 0), feather / 2)
    crop = np.ascontiguousarray(image[y0:y1, x0:x1])
    return _Sprite(still, crop, alpha, (x0, y0))


def _background(rng: np.random.Generator) -> np.ndarray:
    """A neutral grey wall: soft colour blotches, a faint weave and grain."""
    import cv2

    blotches = cv2.resize(rng.normal(0.0, 1.0, (9, 16, 3)).astype(np.float32), (_W, _H), interpolation=cv2.INTER_CUBIC)
    yy, xx = np.mgrid[0:_H, 0:_W].astype(np.float32)
    weave = 4.0 * np.sin(xx / 7.0) * np.sin(yy / 9.0)
    grain = rng.normal(0.0, 4.0, (_H, _W)).astype(np.float32)
    base = np.array([146.0, 150.0, 152.0], np.float32)
    # Mostly brightness variation with a little tint: a neutral wall, not a rainbow.
    shade = blotches.mean(axis=2, keepdims=True)
    wall = base + 14.0 * shade + 3.0 * (blotches - shade) + (weave + grain)[..., None]
    return np.clip(wall, 0, 255).astype(np.uint8)


def _placement(
    sprite: _Sprite, centre: tuple[float, float], face_width: float, angle: float
) -> tuple[np.ndarray, ClipFace]:
    """The affine matrix putting ``sprite``'s face at ``centre``, and where the face lands."""
    import cv2

    fx1, fy1, fx2, fy2 = sprite.still.face
    scale = face_width / (fx2 - fx1)
    pivot = ((fx1 + fx2) / 2 - sprite.origin[0], (fy1 + fy2) / 2 - sprite.origin[1])
    matrix = cv2.getRotationMatrix2D(pivot, angle, scale)
    matrix[:, 2] += np.array(centre) - np.array(pivot)
    corners = np.array([[fx1, fy1], [fx2, fy1], [fx1, fy2], [fx2, fy2]], np.float64)
    corners -= sprite.origin
    moved = corners @ matrix[:, :2].T + matrix[:, 2]
    lo, hi = moved.min(axis=0), moved.max(axis=0)
    box = tuple(round(float(v), 1) for v in (lo[0], lo[1], hi[0], hi[1]))
    return matrix, ClipFace(sprite.still.sample, box, round(angle, 2))  # type: ignore[arg-type]


def _paste(frame: np.ndarray, sprite: _Sprite, matrix: np.ndarray) -> None:
    """Blend ``sprite`` warped by ``matrix`` into ``frame``, touching only its bounding box."""
    import cv2

    h, w = sprite.alpha.shape
    corners = np.array([[0, 0], [w, 0], [0, h], [w, h]], np.float64) @ matrix[:, :2].T + matrix[:, 2]
    x0, y0 = np.maximum(np.floor(corners.min(axis=0)).astype(int), 0)
    x1, y1 = np.minimum(np.ceil(corners.max(axis=0)).astype(int), (_W, _H))
    if x1 <= x0 or y1 <= y0:
        return
    local = matrix.copy()
    local[:, 2] -= (x0, y0)
    size = (int(x1 - x0), int(y1 - y0))
    fg = cv2.warpAffine(sprite.image, local, size, flags=cv2.INTER_LINEAR)
    alpha = cv2.warpAffine(sprite.alpha, local, size, flags=cv2.INTER_LINEAR)
    roi = frame[y0:y1, x0:x1]
    # blendLinear is ~10x faster than the same sum in numpy floats.
    roi[:] = cv2.blendLinear(fg, roi, alpha, 1.0 - alpha)


def _one_face_pose(t: float) -> tuple[tuple[float, float], float, float]:
    """Centre, face width and angle at ``t`` s: a left-right pan, a bob, a zoom, a tilt."""
    centre = (
        640.0 - 360.0 * math.cos(2 * math.pi * t / 10.0),
        360.0 + 60.0 * math.sin(2 * math.pi * t / 5.0),
    )
    width = 240.0 - 90.0 * math.cos(2 * math.pi * t / 7.5)  # 150..330 px
    angle = 10.0 * math.sin(2 * math.pi * t / 4.0)
    return centre, width, angle


def _render(stills: Mapping[str, np.ndarray]) -> Iterator[tuple[np.ndarray, tuple[ClipFace, ...]]]:
    """Yield every frame of the clip with the faces in it."""
    rng = np.random.default_rng(CLIP_SEED)
    wall = _background(rng)
    obama = _sprite(stills[_OBAMA.sample], _OBAMA)
    biden = _sprite(stills[_BIDEN.sample], _BIDEN)
    one, two, _none = _SEGMENTS
    for index in range(_SEGMENTS[-1].stop):
        frame = wall.copy()
        t = index / _FPS
        poses: list[tuple[_Sprite, tuple[float, float], float, float]] = []
        if index < one.stop:
            centre, width, angle = _one_face_pose(t)
            poses.append((obama, centre, width, angle))
        elif index < two.stop:
            u = (index - two.start) / (two.stop - two.start)  # 0..1 over the segment
            bob = 15.0 * math.sin(2 * math.pi * u)
            poses.append((obama, (420.0 + 40.0 * u, 370.0 + bob), 210.0, 3.0 * math.sin(2 * math.pi * u)))
            poses.append((biden, (860.0 - 40.0 * u, 370.0 - bob), 210.0, -3.0 * math.sin(2 * math.pi * u)))
        faces = []
        for sprite, centre, width, angle in poses:
            matrix, face = _placement(sprite, centre, width, angle)
            _paste(frame, sprite, matrix)
            faces.append(face)
        yield frame, tuple(faces)


def _encode(
    frames: Iterator[tuple[np.ndarray, tuple[ClipFace, ...]]], path: Path
) -> tuple[str, list[tuple[ClipFace, ...]]]:
    """Encode ``frames`` to an MP4 at ``path``; return the codec used and the faces per frame."""
    import av

    # Some PyAV builds lack libx264; mpeg4 is always there and every reader decodes it.
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    faces = []
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = cast("av.video.stream.VideoStream", container.add_stream(codec, rate=_FPS))
        stream.width, stream.height, stream.pix_fmt = _W, _H, "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "20", "preset": "veryfast"}
        else:
            stream.bit_rate = 8_000_000
        for index, (image, frame_faces) in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="bgr24")
            frame.pts = index
            container.mux(stream.encode(frame))
            faces.append(frame_faces)
        container.mux(stream.encode(None))
    return ("h264" if codec == "libx264" else "mpeg4"), faces


def _describe(path: Path, codec: str, faces: list[tuple[ClipFace, ...]]) -> dict[str, Any]:
    return {
        "version": CLIP_VERSION,
        "file": path.name,
        "width": _W,
        "height": _H,
        "fps": _FPS,
        "frame_count": len(faces),
        "codec": codec,
        "sha256": sha256_file(path),
        "segments": [dataclasses.asdict(s) for s in _SEGMENTS],
        "faces": [[dataclasses.asdict(f) for f in frame] for frame in faces],
    }


def _current_clip(json_path: Path) -> DemoClip | None:
    """The clip described by ``json_path`` if it is complete and of this version, else None."""
    try:
        version = json.loads(json_path.read_text("utf-8")).get("version")
    except (OSError, ValueError, AttributeError):
        return None
    if version != CLIP_VERSION:
        return None
    try:
        clip = DemoClip.load(json_path)
    except SampleError:
        return None  # half-written or hand-edited: render it again
    if not clip.path.is_file() or sha256_file(clip.path) != clip.sha256:
        return None
    return clip


def make_demo_clip(samples: SampleStore, *, force: bool = False, log: Log | None = None) -> DemoClip:
    """Render ``home/samples/demo.mp4`` and ``demo.json`` (unless current ones exist).

    1280x720 at 30 fps, 15 s: ``one_face`` (10 s, Obama panning, zooming and tilting),
    ``two_faces`` (3 s, Obama and Biden side by side) and ``no_face`` (2 s). Rendering is
    deterministic (fixed seed). Needs the ``obama.jpg`` and ``biden.jpg`` samples.
    """
    import cv2

    json_path = samples.samples_dir / "demo.json"
    current = None if force else _current_clip(json_path)
    if current is not None:
        return current
    stills = {}
    for still in (_OBAMA, _BIDEN):
        image = cv2.imread(str(samples.path(still.sample)), cv2.IMREAD_COLOR)
        if image is None:
            raise SampleError(f"OpenCV cannot decode {still.sample}; run 'livefuse samples pull' again")
        stills[still.sample] = image
    target = samples.samples_dir / "demo.mp4"
    (log or (lambda _msg: None))(f"rendering {target}")
    with atomic_path(target) as tmp:
        codec, faces = _encode(_render(stills), tmp)
    atomic_write(json_path, json.dumps(_describe(target, codec, faces), indent=1).encode())
    return DemoClip.load(json_path)
