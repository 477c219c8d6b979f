"""Per-face cost of the neural swap stage outside the model call, against insightface.

On one CPU core (affinity pinned, OpenCV single-threaded), for a face in a 720p and a
1080p frame: livefuse's alignment + pre/post-processing + box mask + colour matching +
region-only paste-back, and insightface's documented ``INSwapper.get`` post-processing
with its full-frame ``paste_back`` (re-implemented in tests/insightface_ref.py), measured
side by side in one run. The model call itself is replaced by a runner that returns a
fixed output instantly, so only the work around it is timed.

Optionally (--model PATH, e.g. the architecture-faithful inswapper stand-in from
scripts/make_stand_in_models.py) it also times the real model call per face.
Usage: python benchmarks/bench_swap.py [--repeat 200] [--model inswapper_128.onnx]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from livefuse.app import Engine  # noqa: E402
from livefuse.config import load_settings  # noqa: E402
from livefuse.geometry.crop import CropSpec  # noqa: E402
from livefuse.models.files import default_home  # noqa: E402
from livefuse.runtime.base import Runner, TensorSpec  # noqa: E402
from livefuse.swap.neural.models import SwapModel  # noqa: E402
from livefuse.swap.neural.swapper import NeuralConfig, NeuralSwapper  # noqa: E402
from tests.helpers import frame_of  # noqa: E402
from tests.insightface_ref import INSwapperRef  # noqa: E402

ARCFACE_128 = np.array(
    [
        [0.36167656, 0.40387734],
        [0.63696719, 0.40235469],
        [0.50019687, 0.56044219],
        [0.38710391, 0.72160547],
        [0.61507734, 0.72034453],
    ]
)
OUT = Path(__file__).parent / "out"


class FixedRunner(Runner):
    """Returns a precomputed swapped crop at once: the model's cost taken out."""

    def __init__(self, output: np.ndarray) -> None:
        super().__init__("fixed")
        self.output = output

    provider = "none"  # type: ignore[assignment]
    inputs = [  # type: ignore[assignment]
        TensorSpec("target", (1, 3, 128, 128), "tensor(float)"),
        TensorSpec("source", (1, 512), "tensor(float)"),
    ]
    outputs = [TensorSpec("output", (1, 3, 128, 128), "tensor(float)")]  # type: ignore[assignment]

    def activate_impl(self) -> None: ...

    def infer_impl(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return [self.output]

    def close_impl(self) -> None: ...


def scene(portrait: np.ndarray, size: tuple[int, int], face_frac: float) -> np.ndarray:
    """A frame of ``size`` with the portrait scaled so the face is ``face_frac`` of its height."""
    w, h = size
    frame = np.full((h, w, 3), 90, np.uint8)
    scale = face_frac * h / 350  # the portrait's face is ~350 px tall
    img = cv2.resize(portrait, None, fx=scale, fy=scale)
    ph, pw = min(img.shape[0], h), min(img.shape[1], w)
    y, x = (h - ph) // 2, (w - pw) // 2
    frame[y : y + ph, x : x + pw] = img[:ph, :pw]
    return frame


def median_ms(fn, repeat: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e3)


def measure(name: str, frame: np.ndarray, one: object, model: SwapModel, output: np.ndarray, repeat: int) -> dict:
    """Median ms per face: livefuse with and without colour matching, insightface's paste_back."""
    rng = np.random.default_rng(1)
    swapper = NeuralSwapper(model, rng.random((1, 512), dtype=np.float32), NeuralConfig())
    plain = NeuralSwapper(model, rng.random((1, 512), dtype=np.float32), NeuralConfig(colour=False))
    work = frame.copy()
    m = model.crop.matrix(one.kps[0])  # type: ignore[attr-defined]
    bgr_fake = model.crop.to_image(output[0])
    ref = INSwapperRef.__new__(INSwapperRef)  # only its paste_back is used: no session needed
    row: dict[str, object] = {
        "size": name,
        "face_px": int(np.ptp(one.boxes[0, [0, 2]])),  # type: ignore[attr-defined]
        "livefuse_ms": round(median_ms(lambda: swapper.swap(work, one), repeat), 3),  # type: ignore[arg-type]
        "livefuse_no_colour_ms": round(median_ms(lambda: plain.swap(work, one), repeat), 3),  # type: ignore[arg-type]
        "insightface_paste_back_ms": round(
            median_ms(lambda: ref.paste_back(frame, bgr_fake, m), max(repeat // 10, 5)), 2
        ),
    }
    row["ratio"] = round(float(row["insightface_paste_back_ms"]) / float(row["livefuse_ms"]), 1)  # type: ignore[arg-type]
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--model", type=Path, help="an inswapper ONNX file to time the model call")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    cv2.setNumThreads(1)
    home = Path(os.environ.get("LIVEFUSE_HOME") or default_home())
    portrait = cv2.imread(str(home / "samples" / "obama.jpg"))
    output = np.random.default_rng(0).random((1, 3, 128, 128), dtype=np.float32)
    crop = CropSpec(128, ARCFACE_128, np.zeros(3, np.float32), np.ones(3, np.float32))
    fixed = FixedRunner(output)
    fixed.activate()
    model = SwapModel(fixed, crop, "normed")
    results: dict[str, object] = {"cpu_affinity": 1, "repeat": args.repeat, "rows": []}
    with Engine(load_settings({"home": str(home), "threads": 1}, env={})) as engine:
        for name, size in (("720p", (1280, 720)), ("1080p", (1920, 1080))):
            faces = engine.tracker().analyze(frame_of(scene(portrait, size, 0.4)))
            row = measure(name, scene(portrait, size, 0.4), faces[[0]], model, output, args.repeat)
            results["rows"].append(row)  # type: ignore[union-attr]
            print(json.dumps(row), file=sys.stderr)
    if args.model:
        import onnxruntime as ort

        so = ort.SessionOptions()
        session = ort.InferenceSession(str(args.model), so, providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(2)
        feeds = {
            "target": rng.random((1, 3, 128, 128), dtype=np.float32),
            "source": rng.random((1, 512), dtype=np.float32),
        }
        session.run(None, feeds)
        results["model_ms"] = round(median_ms(lambda: session.run(None, feeds), 3), 1)
    fixed.close()
    OUT.mkdir(exist_ok=True)
    (OUT / "swap-outside-model.json").write_text(json.dumps(results, indent=1))
    print("| frame | face width px | livefuse ms/face | without colour match | insightface paste_back ms | ratio |")
    print("|---|---|---|---|---|---|")
    for r in results["rows"]:  # type: ignore[union-attr]
        print(
            f"| {r['size']} | {r['face_px']} | {r['livefuse_ms']} | {r['livefuse_no_colour_ms']} | "
            f"{r['insightface_paste_back_ms']} | {r['ratio']}× |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
