"""Assembles the stages from settings: the one place that knows how they fit together."""

from __future__ import annotations

import logging
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType

from livefuse.config import Settings
from livefuse.face.detect import CenterFaceDetector, DetectorConfig
from livefuse.face.mesh import MeshLandmarker
from livefuse.face.track import FaceTracker, TrackerConfig
from livefuse.models.store import ModelStore, default_home
from livefuse.runtime.ort import OrtRunner
from livefuse.swap.mesh import MeshSwapConfig, MeshSwapper
from livefuse.swap.source import analyse_source, read_image

log = logging.getLogger(__name__)


def home_of(settings: Settings) -> Path:
    """The models-and-samples directory the settings point at."""
    return Path(settings.home).expanduser() if settings.home else default_home()


class Engine:
    """The model runners and the stages built on them. Close it (or use ``with``) to free
    the sessions. Each ``tracker()``/``swapper()`` call makes a fresh stage; a stage is used
    by one thread."""

    def __init__(self, settings: Settings, store: ModelStore | None = None) -> None:
        self.settings = settings
        self.store = store or ModelStore(home_of(settings))
        self._stack = ExitStack()
        providers = settings.providers.split(",") if settings.providers else None
        self._runners = {
            name: self._stack.enter_context(
                OrtRunner(self.store.path(name), name=name, providers=providers, threads=settings.threads)
            )
            for name in ("centerface", "face_mesh")
        }

    def detector(self) -> CenterFaceDetector:
        s = self.settings
        return CenterFaceDetector(
            self._runners["centerface"], DetectorConfig(s.detect_size, s.detect_threshold)
        )

    def landmarker(self) -> MeshLandmarker:
        return MeshLandmarker(self._runners["face_mesh"])

    def tracker(self) -> FaceTracker:
        s = self.settings
        config = TrackerConfig(detect_every=s.detect_every, max_faces=s.max_faces, smooth=s.smooth)
        return FaceTracker(self.detector(), self.landmarker(), config)

    def swapper(self, photo: Path) -> MeshSwapper:
        """The mesh swapper for the face in ``photo`` (analysed once, here)."""
        source = analyse_source(read_image(photo), self.detector(), self.landmarker(), f"photo {photo}")
        s = self.settings
        config = MeshSwapConfig(keep_mouth=s.keep_mouth, colour=s.colour, opacity=s.opacity)
        return MeshSwapper(source, config)

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
