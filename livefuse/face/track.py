"""Face tracking: the detector runs every K frames or when a track is lost; in between
each track's crop is re-centred from its own previous landmarks.

For files the detector runs inline, so the same input always gives the same output. For live
video (``TrackerConfig.background``) it runs beside the tracker in its own thread
(:mod:`livefuse.face.background`), and its boxes are reconciled when they are ready.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from livefuse.face.background import BackgroundDetector
from livefuse.face.detect import Detector
from livefuse.face.mesh import MeshLandmarker, Roi, roi_from_detection, roi_from_landmarks
from livefuse.face.smooth import OneEuroFilter
from livefuse.face.topology import five_points
from livefuse.faces import Faces
from livefuse.frame import Frame


@dataclass(frozen=True, slots=True)
class TrackerConfig:
    """When the detector runs and when a track ends."""

    detect_every: int = 10
    "Run the detector at least every this many frames (new faces appear within it)."
    min_presence: float = 0.5
    "A track whose mesh presence falls below this is lost (and the detector runs)."
    refresh_presence: float = 0.9
    "Below this the track lives on, but the detector runs on the next frame to re-anchor it."
    max_missed: int = 3
    "A track the detector misses this many rounds in a row ends."
    miss_from: float = 0.0
    """Only tracks at least this wide (a share of the frame's longest side) count a round the
    detector did not see them; narrower ones end by their mesh presence alone (a live
    detector's coarse passes cannot see them: :class:`~livefuse.face.detect.TieredDetector`)."""
    max_faces: int = 8
    smooth: bool = True
    background: bool = False
    "Detect in a thread of its own on the newest frame (live video): no frame waits for it."


@dataclass(slots=True)
class Track:
    """One face followed across frames."""

    id: int
    roi: Roi
    points: np.ndarray
    presence: float
    missed: int = 0
    smoother: OneEuroFilter = field(default_factory=OneEuroFilter)
    smoothed: np.ndarray | None = None

    def box(self) -> np.ndarray:
        xy = self.points[:, :2]
        return np.concatenate([xy.min(0), xy.max(0)]).astype(np.float32)


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) intersection-over-union of two sets of x1,y1,x2,y2 boxes."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / (area_a[:, None] + area_b[None, :] - inter + 1e-9)


class FaceTracker:
    """The analysis stage: finds faces, follows them, returns smoothed landmarks.

    ``detector_calls`` and ``frames`` give the detector rate the pipeline reports.
    """

    def __init__(
        self,
        detector: Detector,
        landmarker: MeshLandmarker,
        config: TrackerConfig = TrackerConfig(),
    ) -> None:
        self.detector = detector
        self.landmarker = landmarker
        self.config = config
        self._ids = itertools.count(1)
        self.tracks: list[Track] = []
        self.frames = 0
        self._since_detect = config.detect_every  # detect on the first frame
        self._redetect = False
        self._background = BackgroundDetector(detector) if config.background else None

    @property
    def detector_calls(self) -> int:
        return self.detector.calls

    def reset(self) -> None:
        """Drop every track (a new scene or source)."""
        self.tracks.clear()
        self._since_detect = self.config.detect_every
        if self._background is not None:
            self._background.close()  # a detection of the old scene must not come back

    def close(self) -> None:
        """Stop the background detector's thread, if any. The tracker stays usable."""
        if self._background is not None:
            self._background.close()

    def analyze(self, frame: Frame) -> Faces:
        """Faces in ``frame``: tracks updated, the detector run if due, landmarks smoothed."""
        image, t = frame.image, frame.seconds
        self.frames += 1
        self._since_detect += 1
        lost = self._follow(image)
        if self._background is not None:
            self._collect(image)
        if lost or self._redetect or self._since_detect >= self.config.detect_every:
            if self._background is None:
                self._detect(image)
            elif self._background.submit(image, frame.index):
                self._since_detect = 0
        return self._faces(t)

    def _collect(self, image: np.ndarray) -> None:
        """Reconcile a finished background detection with the tracks (by overlap)."""
        assert self._background is not None
        done = self._background.result()
        if done is not None:
            self._reconcile(image, done[1])

    def _follow(self, image: np.ndarray) -> bool:
        """Update each track from its own crop; say whether any was lost."""
        before = len(self.tracks)
        self._redetect = False
        for track in self.tracks:
            track.points, track.presence = self.landmarker.landmarks(image, track.roi)
            track.roi = roi_from_landmarks(track.points)
            self._redetect |= track.presence < self.config.refresh_presence
        self.tracks = [t for t in self.tracks if t.presence >= self.config.min_presence]
        return len(self.tracks) < before

    def _detect(self, image: np.ndarray) -> None:
        self._since_detect = 0
        self._reconcile(image, self.detector.detect(image))

    def _reconcile(self, image: np.ndarray, found: Faces) -> None:
        """Count misses of the tracks no box overlaps, start tracks on the boxes no track
        overlaps (their landmarks from ``image``), and merge tracks that converged."""
        boxes = np.stack([t.box() for t in self.tracks]) if self.tracks else np.zeros((0, 4))
        overlap = iou(boxes, found.boxes) if len(found) else np.zeros((len(boxes), 0))
        narrowest = self.config.miss_from * max(image.shape[:2])
        for track, row in zip(self.tracks, overlap):
            if row.size and row.max() > 0.3:
                track.missed = 0
            elif np.ptp(track.points[:, 0]) >= narrowest:
                track.missed += 1
        self.tracks = [t for t in self.tracks if t.missed < self.config.max_missed]
        fresh = ~(overlap > 0.3).any(axis=0) if len(boxes) else np.ones(len(found), bool)
        for i in np.flatnonzero(fresh):
            if len(self.tracks) >= self.config.max_faces:
                break
            self._start(image, found.boxes[i], found.kps[i])
        self._dedupe()

    def _start(self, image: np.ndarray, box: np.ndarray, kps: np.ndarray) -> None:
        points, presence = self.landmarker.landmarks(image, roi_from_detection(box, kps))
        if presence >= self.config.min_presence:
            track = Track(next(self._ids), roi_from_landmarks(points), points, presence)
            self.tracks.append(track)

    def _dedupe(self) -> None:
        """Two tracks on one face (crops that converged): keep the older one."""
        if len(self.tracks) < 2:
            return
        overlap = iou(*(np.stack([t.box() for t in self.tracks]),) * 2)
        keep = [i for i in range(len(self.tracks)) if not (overlap[i, :i] > 0.5).any()]
        self.tracks = [self.tracks[i] for i in keep]

    def _faces(self, t: float) -> Faces:
        if not self.tracks:
            return Faces.empty()
        for track in self.tracks:
            size = float(np.ptp(track.points[:, 0]))
            track.smoothed = track.smoother(track.points, t, size) if self.config.smooth else track.points
        landmarks = np.stack([tr.smoothed for tr in self.tracks])  # type: ignore[misc]
        xy = landmarks[:, :, :2]
        return Faces(
            boxes=np.concatenate([xy.min(1), xy.max(1)], axis=1).astype(np.float32),
            scores=np.array([tr.presence for tr in self.tracks], np.float32),
            kps=five_points(landmarks),
            landmarks=landmarks,
            presence=np.array([tr.presence for tr in self.tracks], np.float32),
            track_ids=np.array([tr.id for tr in self.tracks], np.int64),
        )
