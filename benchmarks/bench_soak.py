"""Soak: a live 720p30 stream through the whole pipeline for N minutes; does anything grow?

The source is a real MJPEG-over-HTTP camera on 127.0.0.1 (livefuse.testing.mjpeg) serving the
sample clip's 1280x720 frames at 30 fps, read as ``livefuse cam`` reads an IP camera (FFmpeg,
stall watchdog, reconnects), through the tracker and the mesh swapper into a null output.
Every ``--sample-s`` seconds it records RSS, threads and open file descriptors. The goal:
RSS after the first 5 minutes grows by less than 1 % to the end; threads and descriptors flat.

By hand, not in CI. Writes benchmarks/out/soak-<date>.json and prints a Markdown table.
Usage: python benchmarks/bench_soak.py [--minutes 60] [--sample-s 60] [--home DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path

import benchinfo
import cv2

from livefuse.app import Engine
from livefuse.config import load_settings
from livefuse.io.reconnect import ReconnectingSource
from livefuse.io.sinks import NullSink
from livefuse.io.sources import StreamSource
from livefuse.models.files import default_home
from livefuse.pipeline.pipeline import Pipeline
from livefuse.testing.mjpeg import MjpegCamera

OUT = Path(__file__).parent / "out"


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


def sample(start: float, pipeline: Pipeline) -> dict[str, float]:
    stats = pipeline.stats()
    return {
        "minute": round((time.monotonic() - start) / 60, 2),
        "rss_mib": round(rss_mib(), 1),
        "threads": threading.active_count(),
        "fds": len(os.listdir("/proc/self/fd")),
        "frames_out": stats.frames_out,
        "dropped": stats.dropped,
        "fps": round(stats.fps, 1),
    }


def clip_frames(home: Path, count: int) -> list:
    cap = cv2.VideoCapture(str(home / "samples" / "demo.mp4"))
    frames = []
    while len(frames) < count:
        ok, image = cap.read()
        if not ok:
            break
        frames.append(cv2.resize(image, (1280, 720)) if image.shape[:2] != (720, 1280) else image)
    cap.release()
    return frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--sample-s", type=float, default=60.0)
    parser.add_argument("--home", type=Path, default=None)
    args = parser.parse_args()
    home = args.home or default_home()
    settings = load_settings({"home": str(home)}, env={})
    samples: list[dict[str, float]] = []
    with MjpegCamera(clip_frames(home, 150), fps=30) as camera, Engine(settings) as engine:
        source = ReconnectingSource(StreamSource(camera.url), 30.0)
        pipeline = Pipeline(source, engine.tracker(), engine.swapper(home / "samples" / "biden.jpg"), [NullSink()])
        pipeline.start()
        start = time.monotonic()
        try:
            while time.monotonic() - start < args.minutes * 60 and pipeline.running:
                samples.append(sample(start, pipeline))
                print(samples[-1], flush=True)
                time.sleep(min(args.sample_s, max(args.minutes * 60 - (time.monotonic() - start), 0.1)))
            samples.append(sample(start, pipeline))
        finally:
            pipeline.stop()
        stats = pipeline.join()
    settle = next((s for s in samples if s["minute"] >= 5), samples[len(samples) // 2])
    growth = (samples[-1]["rss_mib"] - settle["rss_mib"]) / settle["rss_mib"] * 100
    result = {
        "machine": benchinfo.describe(),
        "minutes": args.minutes,
        "samples": samples,
        "rss_growth_after_settle_pct": round(growth, 2),
        "settle_minute": settle["minute"],
        "summary": stats.summary_line(),
        "reconnects": source.reconnects,
    }
    OUT.mkdir(exist_ok=True)
    path = OUT / f"soak-{time.strftime('%Y%m%d-%H%M')}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {path}\n")
    print("| minute | RSS MiB | threads | fds | frames out | dropped | fps |")
    print("|---|---|---|---|---|---|---|")
    for s in samples:
        print(
            f"| {s['minute']} | {s['rss_mib']} | {s['threads']} | {s['fds']} | {s['frames_out']} "
            f"| {s['dropped']} | {s['fps']} |"
        )
    print(f"\nRSS growth from minute {settle['minute']} to the end: {growth:+.2f} % (goal < 1 %)")


if __name__ == "__main__":
    main()
