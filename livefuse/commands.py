"""What each CLI command does, on top of the library. Returns exit codes; never exits."""

from __future__ import annotations

import argparse
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from livefuse.app import Engine, home_of
from livefuse.audit import audited
from livefuse.config import Settings, with_options
from livefuse.container.process import writable_dir
from livefuse.errors import ConfigError
from livefuse.frame import Frame
from livefuse.io.outputs import DiscardOnInterrupt, FinishOnFailure, check_output, file_sink, is_url
from livefuse.io.reconnect import ReconnectingSource
from livefuse.io.sinks import VideoFileSink
from livefuse.io.sources import CameraSource, ImageSource, StreamSource, VideoFileSource, open_source
from livefuse.io.window import WindowPreviewSink
from livefuse.models.install import ModelInstaller
from livefuse.models.store import ModelStore
from livefuse.pipeline.metrics import RunStats
from livefuse.pipeline.pipeline import Pipeline
from livefuse.pipeline.stages import Sink, Source
from livefuse.progress import ProgressLine
from livefuse.provenance import DEFAULT_LABEL
from livefuse.provenance.options import file_sealer, label_sink
from livefuse.samples import SampleStore, make_demo_clip
from livefuse.signals import Interrupted, interrupt_behind

log = logging.getLogger("livefuse")

#: The face the demo puts onto the person in the sample clip.
DEMO_SOURCE = "biden.jpg"


def _source_photo(settings: Settings) -> Path:
    if not settings.swap.source:
        raise ConfigError("no source face: pass --source FACE.jpg (or set 'source' in the config file)")
    return Path(settings.swap.source).expanduser()


def _report(stats: RunStats) -> None:
    line = stats.summary_line()
    if skipped := int(stats.extra.get("damaged_frames_skipped", 0)):
        line += f" | {skipped} damaged frames skipped"
    print(line, flush=True)


def cam(args: argparse.Namespace, settings: Settings) -> int:
    """Live: camera or stream → swap → virtual camera / preview / recording."""
    photo = _source_photo(settings)
    label = label_sink(settings)
    seal = file_sealer(settings) if args.record else None
    audit = audited(settings, "cam", photo=photo, target=settings.capture.camera, output=args.record)
    with audit, Engine(settings) as engine:
        swapper = engine.swapper(photo)
        capture, output = settings.capture, settings.output
        source = _reconnecting(open_source(capture.camera, capture.size, capture.fps), settings)
        sinks: list[Sink] = [label] if label else []
        stop = threading.Event()
        if output.vcam:
            from livefuse.io.vcam import VirtualCameraSink

            sinks.append(VirtualCameraSink(device=output.vcam_device, backend=output.vcam_backend))
        if output.preview:
            sinks.append(WindowPreviewSink(on_quit=stop.set))
        if args.record:
            check_output(args.record, [capture.camera, photo])
            sinks.append(FinishOnFailure(VideoFileSink(args.record, seal=seal)))
        if len(sinks) == (1 if label else 0):
            raise ConfigError("nothing to output to: add --vcam, --preview and/or --record OUT.mp4")
        pipeline = Pipeline(source, engine.tracker(live=True), swapper, sinks, queue_size=capture.queue_size)
        stats = _run_until(pipeline, stop, args.seconds)
    _report(stats)
    return 0


def _run_until(pipeline: Pipeline, stop: threading.Event, seconds: float | None) -> RunStats:
    """Run ``pipeline`` until it ends, ``stop`` is set, ``seconds`` pass, or Ctrl-C."""
    deadline = time.monotonic() + seconds if seconds else None
    pipeline.start()
    try:
        while pipeline.running and not stop.is_set():
            if deadline and time.monotonic() > deadline:
                break
            stop.wait(0.1)
    except KeyboardInterrupt:
        log.info("stopping (Ctrl-C)")
    finally:
        pipeline.stop()
    return pipeline.join()


def _reconnecting(source: Source, settings: Settings) -> Source:
    """Cameras and streams are reopened when they drop (``--reconnect-for``, default 30 s)."""
    if isinstance(source, (CameraSource, StreamSource)):
        return ReconnectingSource(source, _reconnect_for_s(settings))
    return source


def _reconnect_for_s(settings: Settings) -> float:
    """How long a dropped live source is tried again (the one place that reads the setting)."""
    return settings.capture.reconnect_for


def run(args: argparse.Namespace, settings: Settings) -> int:
    """File → swap → file, with a progress line; exit 1 if anything fails."""
    photo = _source_photo(settings)
    seal = file_sealer(settings)
    with audited(settings, "run", photo=photo, target=args.input, output=args.output):
        stats = process_file(
            settings, photo, args.input, args.output, seal=seal, live=bool(getattr(args, "live", False))
        )
    _report(stats)
    return 0


def process_file(
    settings: Settings,
    photo: Path,
    input_spec: str,
    output: Path,
    on_frame: Callable[[Frame], None] | None = None,
    seal: Callable[[Path, Path], None] | None = None,
    live: bool = False,
) -> RunStats:
    """Swap ``photo``'s face into every frame of ``input_spec`` and write ``output``, signed by
    ``seal`` (see ``provenance.options.file_sealer``).

    A URL is read like a file (every frame, back-pressure) unless ``live``. Interrupted
    (Ctrl-C, SIGTERM, SIGHUP), it leaves nothing at ``output`` and re-raises.
    """
    check_output(output, [input_spec, photo])
    source = VideoFileSource(input_spec) if is_url(input_spec) and not live else open_source(input_spec)
    sink = DiscardOnInterrupt(file_sink(output, isinstance(source, ImageSource), seal))
    try:
        with Engine(settings) as engine:
            swapper = engine.swapper(photo)
            progress = _Progress(on_frame)
            pipeline = Pipeline(source, engine.tracker(live=live), swapper, [sink], on_frame=progress, live=live)
            progress.pipeline = pipeline
            stats = _run_discarding_on_interrupt(pipeline, sink)
            progress.finish()
    except (KeyboardInterrupt, ImportError) as exc:
        stop = interrupt_behind(exc)
        if stop is None:  # a real ImportError
            raise
        # Wherever it came (loading the models, preparing the face, mid-file), say what is
        # left at the output path: a stopped run either kept a complete file or wrote nothing.
        if sink.finished:
            log.warning("%s: %s was already complete and is kept", _signal_name(stop), output)
        else:
            log.error("%s: stopped; nothing was written to %s", _signal_name(stop), output)
        raise stop from None
    skipped = getattr(source, "skipped", 0)
    if skipped:
        stats.extra["damaged_frames_skipped"] = float(skipped)
    return stats


def _run_discarding_on_interrupt(pipeline: Pipeline, sink: DiscardOnInterrupt) -> RunStats:
    pipeline.start()
    try:
        return pipeline.join()
    except KeyboardInterrupt:
        # Set before stopping: the pipeline's shutdown closes the sink, which then discards.
        sink.discard = True
        pipeline.stop()
        if not sink.finished:
            sink.abort()
        raise


def _signal_name(exc: BaseException) -> str:
    return exc.name if isinstance(exc, Interrupted) else "SIGINT"


class _Progress:
    """Per-frame callback: the shared progress line (on a terminal), then the caller's own callback."""

    def __init__(self, then: Callable[[Frame], None] | None) -> None:
        self.then = then
        self.pipeline: Pipeline | None = None
        self._line: ProgressLine | None = None

    def __call__(self, frame: Frame) -> None:
        if self._line is None:
            info = self.pipeline.info if self.pipeline else None
            self._line = ProgressLine("swapping", info.frame_count if info else None)
        self._line.advance()
        if self.then is not None:
            self.then(frame)

    def finish(self) -> None:
        if self._line is not None:
            self._line.close()


def demo(args: argparse.Namespace, settings: Settings) -> int:
    """Pull what is needed, swap the sample face into the sample clip, write video + still."""
    home = home_of(settings)
    out_dir = writable_dir(args.output, "the demo's video and still")
    ModelInstaller(ModelStore(home)).pull(log=log.info)
    samples = SampleStore(home)
    samples.pull(log=log.info)
    clip = make_demo_clip(samples).path
    photo = Path(settings.swap.source) if settings.swap.source else samples.path(DEMO_SOURCE)
    # The sample person smiles and talks: keeping his own mouth interior looks natural.
    settings = replace(settings, swap=replace(settings.swap, keep_mouth=True))
    video = out_dir / "demo-swapped.mp4"
    still_at = 90  # a frame in the one-face part of the clip
    keep: dict[str, np.ndarray] = {}

    def grab(frame: Frame) -> None:
        if frame.index == still_at:
            keep["out"] = frame.image.copy()

    seal = file_sealer(settings)
    with audited(settings, "demo", photo=photo, target=str(clip), output=video):
        stats = process_file(settings, photo, str(clip), video, on_frame=grab, seal=seal)
    still = out_dir / "demo-side-by-side.jpg"
    _write_side_by_side(clip, still_at, keep.get("out"), still, seal)
    print(f"wrote {video} and {still}")
    _report(stats)
    return 0


def _write_side_by_side(
    clip: Path, index: int, swapped: np.ndarray | None, path: Path, seal: Callable[[Path, Path], None] | None
) -> None:
    cap = cv2.VideoCapture(str(clip))
    cap.set(cv2.CAP_PROP_POS_FRAMES, index)
    ok, original = cap.read()
    cap.release()
    if not ok or swapped is None:
        log.warning("could not make the side-by-side still")
        return
    tmp = path.with_name(path.name + ".tmp.jpg")
    cv2.imwrite(str(tmp), np.hstack([original, swapped]))
    try:
        if seal is not None:
            seal(tmp, path)
    finally:
        tmp.replace(path)


def models(args: argparse.Namespace, settings: Settings) -> int:
    store = ModelStore(home_of(settings))
    if args.action == "pull":
        with ProgressLine("downloading", unit="B", scale_bytes=True) as line:
            paths = ModelInstaller(store).pull(
                args.names or None, from_dir=args.from_dir, log=log.info, progress=line.set
            )
        for path in paths:
            print(path)
        return 0
    if args.action == "add":
        print(ModelInstaller(store).add(args.name, args.path))
        return 0
    for status in store.list():
        state = "verified" if status.verified else "CORRUPT" if status.installed else "missing"
        print(f"{status.name:<12} {status.role:<11} {state:<9} {status.license:<11} {status.path}")
    return 0


def samples(args: argparse.Namespace, settings: Settings) -> int:
    store = SampleStore(home_of(settings))
    store.pull(from_dir=args.from_dir, log=log.info)
    print(make_demo_clip(store).path)
    return 0


#: What ``livefuse serve`` needs beyond the core install (the ``webrtc`` extra).
_WEBRTC_MODULES = frozenset({"aiortc", "aiohttp", "aioice"})


def serve(args: argparse.Namespace, settings: Settings) -> int:
    """The web demo page, WHIP ingest and WHEP/OBS viewers, until Ctrl-C."""
    try:
        from livefuse import web
    except ImportError as exc:
        if (exc.name or "").split(".")[0] not in _WEBRTC_MODULES:
            raise
        raise ConfigError(
            f'livefuse serve needs aiortc and aiohttp ({exc.name} is missing): pip install "livefuse[webrtc]"'
        ) from exc
    if args.force_label:  # every session's output carries the label
        settings = with_options(settings, {"label": settings.safeguards.label or DEFAULT_LABEL})

    from livefuse.jobs.setup import jobs_config, jobs_routes
    from livefuse.web.server import Extension

    config = web.ServerConfig(
        host=args.host,
        port=args.port,
        token=args.token,
        max_sessions=args.max_sessions,
        video_codec=args.video_codec,
        hardware_encoder=args.hardware_encoder,
    )
    jobs = jobs_config(args, settings)
    listening = None
    if jobs.queue:  # a worker behind 'livefuse gateway': it registers in the same Redis
        from livefuse.cluster.registry import registration

        listening = registration(jobs.queue, jobs.advertise)
    return web.serve(config, settings, extension=Extension(jobs_routes(jobs, settings), listening))


def doctor(args: argparse.Namespace, settings: Settings) -> int:
    """Print what this machine has for livefuse and what to fix; 1 when something blocks."""
    from livefuse import doctor as checkup
    from livefuse.container import checks as container

    facts = checkup.gather(home_of(settings), args.engines, probe_bandwidth=args.probe)
    box = container.gather(home_of(settings))
    problems = checkup.diagnose(facts) + container.diagnose(box, facts)
    print(checkup.render(facts, problems, container.report_lines(box)), end="")
    return 1 if any(p.blocks for p in problems) else 0


def verify(args: argparse.Namespace, settings: Settings) -> int:
    """Say what a file's content credentials show: 0 valid (livefuse's), 1 none, 2 invalid, 3 cannot check."""
    from livefuse.provenance.credentials import CredentialsError, verify_file

    try:
        verdict = verify_file(args.file)
    except CredentialsError as exc:
        log.error("%s", exc)
        return 3
    print(verdict.render())
    if verdict.state == "invalid":
        return 2
    return 0 if verdict.state == "valid" and verdict.by_livefuse else 1


def audit(args: argparse.Namespace, settings: Settings) -> int:
    """Print the audit log (or check its chain: 0 intact, 2 edited or rows missing)."""
    from livefuse.audit import audit_log
    from livefuse.audit.render import parse_since, render_rows

    log_file = audit_log(settings)
    if args.verify:
        report = log_file.verify()
        state = "intact" if report.ok else "BROKEN"
        print(f"{log_file.path}: {report.rows} records, chain {state}, head {report.head}")
        for problem in report.problems:
            print(f"  {problem}")
        return 0 if report.ok else 2
    rows = log_file.rows(since=parse_since(args.since) if args.since else None)
    print(render_rows(rows, as_json=args.json))
    return 0
