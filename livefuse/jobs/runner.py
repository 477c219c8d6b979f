"""One job through the same file pipeline as ``livefuse run``: progress out, cancel in.

The pipeline is not changed: its per-frame callback reports progress and, when the job is
cancelled, raises ``JobCancelled``; the pipeline then stops and aborts its sinks, so the
half-written output is deleted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from livefuse.app import Engine
from livefuse.audit.records import audited
from livefuse.config import Settings
from livefuse.errors import LivefuseError, OutputError
from livefuse.face.track import FaceTracker, TrackerConfig
from livefuse.frame import Frame
from livefuse.io.sinks import VideoFileSink
from livefuse.io.sources import open_source
from livefuse.jobs.files import finalise_output
from livefuse.jobs.model import Progress
from livefuse.pipeline.pipeline import Pipeline
from livefuse.pipeline.stages import Sink, SourceInfo
from livefuse.provenance.options import file_sealer

log = logging.getLogger(__name__)

#: How often progress is reported (the last frame always is).
REPORT_EVERY_S = 0.25


class JobCancelled(LivefuseError):
    """The job was cancelled while it ran; its partial output is gone."""


@dataclass(frozen=True, slots=True)
class JobPaths:
    """The files one run reads and writes."""

    source: Path
    target: Path
    result: Path

    @property
    def produced(self) -> Path:
        """Where the pipeline writes; renamed to ``result`` when complete."""
        return self.result.with_name("output" + self.result.suffix)

    @classmethod
    def in_dir(cls, directory: Path, source_name: str, target_name: str) -> JobPaths:
        result_ext = ".mp4" if Path(target_name).suffix in (".mp4", ".mkv", ".avi") else ".png"
        return cls(directory / source_name, directory / target_name, directory / f"result{result_ext}")


class StillSink:
    """Writes the one frame of a still target to an image file, atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._image: np.ndarray | None = None

    def open(self, info: SourceInfo) -> None:
        self._image = None

    def send(self, frame: Frame) -> None:
        self._image = frame.image.copy()  # the frame's buffer goes back to the pool

    def close(self) -> None:
        if self._image is None:
            raise OutputError(f"no frame reached {self.path}")
        ok, data = cv2.imencode(self.path.suffix, self._image)
        if not ok:
            raise OutputError(f"cannot encode {self.path.suffix} output")
        tmp = self.path.with_name("." + self.path.name + ".tmp")
        tmp.write_bytes(data.tobytes())
        tmp.replace(self.path)

    def abort(self) -> None:
        self._image = None


class _Watch:
    """The per-frame callback: counts, reports progress, yields to live work, stops on cancel."""

    def __init__(
        self,
        report: Callable[[Progress], None],
        cancelled: Callable[[], bool],
        pause: Callable[[], float],
    ) -> None:
        self.report, self.cancelled, self.pause = report, cancelled, pause
        self.pipeline: Pipeline | None = None
        self.done = 0
        self.first_frame: float | None = None
        self._start = time.monotonic()
        self._last = 0.0

    def __call__(self, frame: Frame) -> None:
        self.done += 1
        if self.cancelled():
            raise JobCancelled("cancelled")
        self.first_frame = self.first_frame or time.time()
        total = self.pipeline.info.frame_count if self.pipeline and self.pipeline.info else None
        if time.monotonic() - self._last >= REPORT_EVERY_S or self.done == total:
            self._last = time.monotonic()
            self.report(self.progress(total))
        if (wait := self.pause()) > 0:
            time.sleep(wait)  # live sessions first: this job's frames wait a little

    def progress(self, total: int | None) -> Progress:
        fps = self.done / max(time.monotonic() - self._start, 1e-6)
        return Progress(self.done, total, fps, self.first_frame)


def run_job(
    engine: Engine,
    settings: Settings,
    paths: JobPaths,
    report: Callable[[Progress], None],
    cancelled: Callable[[], bool],
    pause: Callable[[], float] = lambda: 0.0,
    who: str = "job service",
) -> Path:
    """Swap the face in ``paths.source`` into ``paths.target``; return the finished result.

    ``engine`` keeps the models warm between jobs; the stages are built per job from
    ``settings``. Raises ``JobCancelled`` when ``cancelled()`` turns true (checked every
    frame), or the pipeline's error; either way no output file is left.
    """
    swapper = engine.swapper(paths.source, settings.swap)
    a = settings.analysis
    # Inline detection, as files have: the same output every time.
    tracker = FaceTracker(
        engine.detector(),
        engine.landmarker(),
        TrackerConfig(detect_every=a.detect_every, max_faces=a.max_faces, smooth=a.smooth, background=False),
    )
    seal = file_sealer(settings)  # loads the signing key before any work
    sink: Sink = VideoFileSink(paths.produced) if paths.result.suffix == ".mp4" else StillSink(paths.produced)
    watch = _Watch(report, cancelled, pause)
    pipeline = Pipeline(open_source(str(paths.target)), tracker, swapper, [sink], on_frame=watch)
    watch.pipeline = pipeline
    with audited(settings, "job", photo=paths.source, target=str(paths.target), output=paths.result, who=who):
        try:
            pipeline.run()
        except BaseException:
            paths.produced.unlink(missing_ok=True)
            raise
        if not paths.produced.is_file():
            raise OutputError("the target held no frames, so there is no output")
        report(watch.progress(watch.done))
        return finalise_output(paths.produced, paths.result, seal)
