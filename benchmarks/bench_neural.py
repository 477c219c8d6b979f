"""Per-frame budget of the neural path on the CPU, with architecture-faithful stand-ins.

Builds (once, into .cache/standins/faithful) the inswapper_128 stand-in with the real
architecture (138.3 M parameters, 174.6 GMAC per face) and the IResNet-50 ArcFace, then
swaps faces in 720p and 1080p frames with 1 and 4 faces and splits each frame's time into
detect, track (mesh), align + pre-processing, model, paste-back (post-processing, masks,
colour, blend) and output (H.264 encode of the frame). Medians over a few frames; the
model dominates on a CPU (≈1–2 s per face), which is why this is not run in CI.

Usage: python benchmarks/bench_neural.py [--frames 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
import time
from pathlib import Path

import av
import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import livefuse.app as app  # noqa: E402
import livefuse.swap.neural.swapper as swapper_module  # noqa: E402
from livefuse.config import load_settings  # noqa: E402
from livefuse.models.files import default_home, sha256_file  # noqa: E402
from livefuse.models.manifest import load_manifest  # noqa: E402
from livefuse.models.store import ModelStore  # noqa: E402
from livefuse.swap.neural import models as neural_models  # noqa: E402
from livefuse.testing.standins import make_faithful  # noqa: E402
from tests.helpers import frame_of  # noqa: E402

CACHE = Path(__file__).resolve().parents[1] / ".cache" / "standins" / "faithful"
OUT = Path(__file__).parent / "out"
MODELS = ("inswapper_128", "w600k_r50")


class Clock:
    """Accumulates wall time per named part."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}

    def wrap(self, owner: object, name: str, part: str) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args: object, **kwargs: object) -> object:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.ms[part] = self.ms.get(part, 0.0) + (time.perf_counter() - start) * 1e3

        setattr(owner, name, timed)


def faithful_home(home: Path) -> tuple[Path, dict]:
    """A home with the built-in models and the faithful stand-ins, and a manifest pinning them."""
    CACHE.mkdir(parents=True, exist_ok=True)
    manifest = dict(load_manifest())
    bench_home = Path(__file__).resolve().parents[1] / ".cache" / "bench-home"
    (bench_home / "models").mkdir(parents=True, exist_ok=True)
    for name in ("centerface", "face_mesh"):
        target = bench_home / "models" / f"{name}.onnx"
        if not target.exists():
            os.symlink(home / "models" / f"{name}.onnx", target)
    if not (bench_home / "samples").exists():
        os.symlink(home / "samples", bench_home / "samples")
    for name in MODELS:
        path = CACHE / f"{name}.onnx"
        if not path.exists():
            print(f"building the faithful {name} stand-in…", file=sys.stderr)
            make_faithful(name, CACHE)
        digest = sha256_file(path)
        spec = manifest[name]
        source = dataclasses.replace(spec.source, sha256=digest, size=path.stat().st_size)
        manifest[name] = dataclasses.replace(spec, source=source, sha256=digest, also_sha256=())
        target = bench_home / "models" / f"{name}.onnx"
        if not target.exists():
            ModelStore(bench_home, manifest).add(name, path)
    return bench_home, manifest


def scene(home: Path, size: tuple[int, int], faces: int) -> np.ndarray:
    """A frame with 1 face (a portrait) or 4 (four portraits side by side)."""
    w, h = size
    frame = np.full((h, w, 3), 80, np.uint8)
    names = ["obama.jpg"] if faces == 1 else ["obama.jpg", "biden.jpg", "obama2.jpg", "obama3.jpg"]
    cell = w // len(names)
    for i, name in enumerate(names):
        img = cv2.imread(str(home / "samples" / name))
        scale = min(cell / img.shape[1], h / img.shape[0]) * (0.8 if faces == 1 else 0.95)
        img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        x = i * cell + (cell - img.shape[1]) // 2
        y = (h - img.shape[0]) // 2
        frame[y : y + img.shape[0], x : x + img.shape[1]] = img
    return frame


def budget(engine: app.Engine, frame: np.ndarray, frames: int, clock: Clock) -> dict[str, float]:
    tracker = engine.tracker()
    swapper = engine.swapper((engine.settings.runtime.home or Path()) / "samples" / "biden.jpg")
    encoder = av.CodecContext.create("libx264", "w")
    encoder.width, encoder.height, encoder.pix_fmt = frame.shape[1], frame.shape[0], "yuv420p"
    encoder.options = {"preset": "veryfast"}
    clock.wrap(tracker.landmarker, "landmarks", "track")
    per_frame: list[dict[str, float]] = []
    found = 0
    for i in range(frames + 1):  # the first frame warms up
        clock.ms.clear()
        image = frame.copy()
        start = time.perf_counter()
        faces = tracker.analyze(frame_of(image, i))
        swapper.swap(image, faces)
        t = time.perf_counter()
        encoder.encode(av.VideoFrame.from_ndarray(image, format="bgr24"))
        clock.ms["output"] = (time.perf_counter() - t) * 1e3
        total = (time.perf_counter() - start) * 1e3
        found = len(faces)
        if i:
            parts = dict(clock.ms)
            parts["paste-back"] = parts.pop("prepare+commit", 0.0) - parts.get("model", 0.0) - parts.get("align", 0.0)
            parts["track"] = parts.get("track", 0.0)
            parts["total"] = total
            per_frame.append(parts)
    keys = ["track", "align", "model", "paste-back", "output", "total"]
    result = {k: round(float(np.median([p.get(k, 0.0) for p in per_frame])), 2) for k in keys}
    # The detector runs on 1 frame in detect_every: timed on its own, per call.
    detector = engine.detector()
    calls = []
    for _ in range(5):
        start = time.perf_counter()
        detector.detect(frame)
        calls.append((time.perf_counter() - start) * 1e3)
    result["detect_call"] = round(float(np.median(calls)), 2)
    result["faces"] = found
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=3)
    args = parser.parse_args()
    home = Path(os.environ.get("LIVEFUSE_HOME") or default_home())
    bench_home, manifest = faithful_home(home)
    app.ModelStore = functools.partial(ModelStore, manifest=manifest)  # type: ignore[misc]
    clock = Clock()
    # Model calls, alignment + pre-processing, and the whole prepare+commit of the swap.
    clock.wrap(neural_models.SwapModel, "run", "model")
    clock.wrap(swapper_module.NeuralSwapper, "prepare", "prepare+commit")
    clock.wrap(swapper_module.NeuralSwapper, "commit", "prepare+commit")
    clock.wrap(swapper_module.align, "crop", "align")
    rows = []
    options = {"home": str(bench_home), "swapper": "inswapper_128", "threads": 2, "detect_every": 10}
    settings = load_settings(options, env={})
    with app.Engine(settings) as engine:
        for name, size in (("720p", (1280, 720)), ("1080p", (1920, 1080))):
            for faces in (1, 4):
                row = {"size": name, **budget(engine, scene(home, size, faces), args.frames, clock)}
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
    OUT.mkdir(exist_ok=True)
    (OUT / "neural-budget.json").write_text(json.dumps(rows, indent=1))
    print(
        "| frame | faces | detect (per call, 1 frame in 10) | track | align | model | pre/post + paste-back "
        "| output (H.264) | total ms (no detector) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['size']} | {r['faces']} | {r['detect_call']} | {r['track']} | {r['align']} | {r['model']} | "
            f"{r['paste-back']} | {r['output']} | {r['total']} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
