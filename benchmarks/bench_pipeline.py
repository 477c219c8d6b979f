"""End-to-end pipeline benchmark on the sample clip (mesh swapper, one face).

For 480p, 720p and 1080p copies of the clip's one-face part it measures, in one run:
- file mode (back-pressure, every frame): throughput fps, with and without writing an
  H.264 output file;
- live mode (the source paced at 30 fps, newest frame wins): capture→output latency
  p50/p95/p99 and dropped frames;
- per stage: median ms inside analyze (detect+track) and swap calls, detector calls per
  frame; CPU % of the process and peak RSS.

Writes benchmarks/out/pipeline-<date>.json and prints a Markdown table for RESULTS.md.
Usage: python benchmarks/bench_pipeline.py [--frames 300] [--sizes 480p,720p,1080p]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import av
import benchinfo
import cv2
import numpy as np

from livefuse.app import Engine
from livefuse.config import load_settings
from livefuse.faces import Faces
from livefuse.frame import Frame
from livefuse.io.sinks import NullSink, VideoFileSink
from livefuse.io.sources import PacedSource, VideoFileSource
from livefuse.models.files import default_home
from livefuse.models.install import ModelInstaller
from livefuse.models.store import ModelStore
from livefuse.pipeline.pipeline import Pipeline
from livefuse.samples import SampleStore, make_demo_clip

SIZES = {"480p": (854, 480), "720p": (1280, 720), "1080p": (1920, 1080)}
OUT = Path(__file__).parent / "out"


class Timed:
    """Wraps a stage and keeps the wall time of each call (ms)."""

    def __init__(self, stage: object, method: str) -> None:
        self.stage, self.method, self.ms = stage, method, []

    def __getattr__(self, name: str) -> object:
        return getattr(self.stage, name)

    def _call(self, *args: object) -> object:
        t = time.perf_counter()
        result = getattr(self.stage, self.method)(*args)
        self.ms.append((time.perf_counter() - t) * 1e3)
        return result

    def analyze(self, frame: Frame) -> Faces:
        return self._call(frame)  # type: ignore[return-value]

    def swap(self, image: np.ndarray, faces: Faces) -> None:
        self._call(image, faces)


class DetectorFrames:
    """Wraps the tracker: notes the frames on which a detection started (inline: ran on that
    frame; beside the tracker: was handed to the detector's thread)."""

    def __init__(self, tracker: Timed) -> None:
        self.tracker, self.indices = tracker, set()

    def __getattr__(self, name: str) -> object:
        return getattr(self.tracker, name)

    def analyze(self, frame: Frame) -> Faces:
        faces = self.tracker.analyze(frame)
        if self.tracker._since_detect == 0:  # the tracker resets it on the frame a detection starts
            self.indices.add(frame.index)
        return faces


class LatencySink(NullSink):
    """Keeps each frame's capture → output latency (ms) by frame index."""

    def __init__(self) -> None:
        super().__init__()
        self.ms: dict[int, float] = {}

    def send(self, frame: Frame) -> None:
        self.ms[frame.index] = (time.monotonic_ns() - frame.capture_ns) / 1e6
        super().send(frame)


def split_by_detection(latency: dict[int, float], detected: set[int]) -> dict[str, object]:
    """p50/p95 latency of the frames a detection started on, and of the others: the detector's
    frames should not stand out from the rest."""
    on = [ms for i, ms in latency.items() if i in detected]
    off = [ms for i, ms in latency.items() if i not in detected]
    return {"detector_frames": len(on), "detector_p50_p95": _p50_p95(on), "other_p50_p95": _p50_p95(off)}


def _p50_p95(values: list[float]) -> list[float] | None:
    return [round(float(v), 1) for v in np.percentile(values, [50, 95])] if values else None


def make_clip(demo: Path, size: tuple[int, int], frames: int) -> Path:
    """The first ``frames`` frames of the demo clip scaled to ``size`` (cached)."""
    path = OUT / f"clip-{size[1]}p-{frames}.mp4"
    if path.is_file():
        return path
    cap = cv2.VideoCapture(str(demo))
    tmp = path.with_suffix(".tmp.mp4")
    with av.open(str(tmp), "w") as out:
        stream = out.add_stream("libx264", rate=30, options={"crf": "18", "preset": "veryfast"})
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for _ in range(frames):
            ok, image = cap.read()
            if not ok:
                break
            frame = av.VideoFrame.from_ndarray(cv2.resize(image, size, interpolation=cv2.INTER_AREA), format="bgr24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    cap.release()
    tmp.replace(path)
    return path


def run_once(engine: Engine, photo: Path, clip: Path, mode: str) -> dict[str, object]:
    # Live runs detect beside the tracker, as `livefuse cam` does; "live-inline" is the old
    # way (the detector's frames wait for it), kept for the side-by-side comparison.
    timed = Timed(engine.tracker(live=mode == "live"), "analyze")
    analyzer = DetectorFrames(timed)
    swapper = Timed(engine.swapper(photo), "swap")
    source = VideoFileSource(clip)
    latency = LatencySink()
    if mode in ("live", "live-inline"):
        source = PacedSource(source)  # the clip's own 30 fps
        sinks = [latency]
    elif mode == "file+encode":
        sinks = [VideoFileSink(OUT / "bench-output.mp4")]
    else:
        sinks = [NullSink()]
    usage0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    stats = Pipeline(source, analyzer, swapper, sinks).run()  # type: ignore[arg-type]
    wall = time.perf_counter() - t0
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (usage1.ru_utime - usage0.ru_utime + usage1.ru_stime - usage0.ru_stime) / wall
    return {
        "mode": mode,
        "frames_in": stats.frames_in,
        "frames_out": stats.frames_out,
        "dropped": stats.dropped,
        "errors": stats.errors,
        "fps": round(stats.fps, 1),
        "latency_ms": {k: round(getattr(stats, f"latency_{k}_ms"), 1) for k in ("p50", "p95", "p99")},
        "analyze_ms_median": round(float(np.median(timed.ms)), 2),
        "swap_ms_median": round(float(np.median(swapper.ms)), 2),
        "detector_per_frame": round(stats.detector_rate, 3),
        "cpu_percent": round(100 * cpu, 0),
        "peak_rss_mb": round(usage1.ru_maxrss / 1024, 0),
        "budget_ms": {k: {m: round(v, 1) for m, v in b.items()} for k, b in stats.budget.items()},
        **(split_by_detection(latency.ms, analyzer.indices) if latency.ms else {}),
    }


def machine() -> dict[str, object]:
    import onnxruntime

    return benchinfo.describe(onnxruntime=onnxruntime.__version__, opencv=cv2.__version__)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--sizes", default="480p,720p,1080p")
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    home = Path(os.environ.get("LIVEFUSE_HOME") or default_home())
    ModelInstaller(ModelStore(home)).pull()
    samples = SampleStore(home)
    samples.pull()
    demo = make_demo_clip(samples).path
    photo = samples.path("biden.jpg")
    results = {"machine": machine(), "swapper": "mesh", "runs": {}}
    with Engine(load_settings({"home": str(home)}, env={})) as engine:
        for name in args.sizes.split(","):
            clip = make_clip(demo, SIZES[name], args.frames)
            modes = ("file", "file+encode", "live", "live-inline")
            results["runs"][name] = [run_once(engine, photo, clip, mode) for mode in modes]
            print(name, json.dumps(results["runs"][name]), file=sys.stderr)
    path = OUT / f"pipeline-{results['machine']['date']}.json"
    path.write_text(json.dumps(results, indent=1))
    print(table(results))
    print(f"\nwrote {path}", file=sys.stderr)
    return 0


def _wait_work(b: dict[str, float]) -> str:
    return f"{b['wait_p50']}/{b['wait_p95']} · {b['work_p50']}/{b['work_p95']}"


def table(results: dict) -> str:
    rows = [
        "| size | file fps | file+H.264 fps | live 30 fps: p50 / p95 / p99 ms | live dropped "
        "| analyze ms | swap ms | detector/frame | CPU % | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, (file, enc, live, _) in results["runs"].items():
        lat = live["latency_ms"]
        rows.append(
            f"| {name} | {file['fps']} | {enc['fps']} | {lat['p50']} / {lat['p95']} / {lat['p99']} | "
            f"{live['dropped']} of {live['frames_in']} | {file['analyze_ms_median']} | {file['swap_ms_median']} | "
            f"{file['detector_per_frame']} | {file['cpu_percent']:.0f} | {file['peak_rss_mb']:.0f} |"
        )
    rows += [
        "",
        "Live 30 fps, detector beside the tracker vs inline (side by side), and where the ms go "
        "(queue wait / work, p50 and p95):",
        "",
        "| size | detection | p50 / p95 / p99 ms | detector's frames p50 / p95 (n) | other frames p50 / p95 "
        "| dropped | capture work | analyze wait / work | swap wait / work | output wait / work |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, (_, _, live, inline) in results["runs"].items():
        for label, run in (("beside", live), ("inline", inline)):
            lat, b = run["latency_ms"], run["budget_ms"]
            part = {stage: _wait_work(b[stage]) for stage in ("analyze", "swap", "output")}
            on, off = run.get("detector_p50_p95") or ["-", "-"], run.get("other_p50_p95") or ["-", "-"]
            rows.append(
                f"| {name} | {label} | {lat['p50']} / {lat['p95']} / {lat['p99']} "
                f"| {on[0]} / {on[1]} ({run.get('detector_frames', 0)}) | {off[0]} / {off[1]} | {run['dropped']} | "
                f"{b['capture']['work_p50']}/{b['capture']['work_p95']} | {part['analyze']} | {part['swap']} | "
                f"{part['output']} |"
            )
    return "\n".join(rows)


if __name__ == "__main__":
    raise SystemExit(main())
