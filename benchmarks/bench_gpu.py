"""The GPU frame path on an NVIDIA GPU: per-frame latency, throughput and the model's share.

For 720p, 1080p and 4K with 1 and 4 faces:
- latency: one frame in flight, submit → result (host prep, upload, kernels, model, download),
  p50/p99 over --frames frames;
- throughput: every ring slot in flight, frames per second;
- model alone: the same batch through the model on the same buffers, timed alone (p50);
- model share: model alone ÷ per-frame time when throughput-bound (the goal: ≥ 90 %).
Also the pinned-memory H2D/D2H bandwidth. The model is the architecture-faithful inswapper
stand-in (the real compute, 554 MB) on torch + CUDA (FP16, CUDA graphs), or a TensorRT engine
built with scripts/build_engines.py (--runtime tensorrt).

    python benchmarks/bench_gpu.py                  # on a GPU machine
    python benchmarks/bench_gpu.py --emulate        # a tiny run on the CPU emulator: checks this
                                                    # script runs; its figures mean nothing
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.benchinfo import describe  # noqa: E402
from livefuse.faces import Faces  # noqa: E402
from livefuse.models.manifest import load_manifest  # noqa: E402
from livefuse.swap.gpu.path import GpuSwapPath, ModelIO  # noqa: E402
from livefuse.swap.neural.build import crop_spec  # noqa: E402
from livefuse.swap.neural.swapper import NeuralConfig  # noqa: E402

SIZES = {"720p": (1280, 720), "1080p": (1920, 1080), "4K": (3840, 2160)}
MODEL = "inswapper_128"


def faces_for(width: int, height: int, count: int, size: int, template: np.ndarray) -> Faces:
    """``count`` faces a quarter of the frame height tall, in a row across the frame."""
    side = height / 4
    points = []
    for k in range(count):
        centre = np.array([width * (k + 1) / (count + 1), height / 2])
        points.append(centre + (template - 0.5) * side)
    kps = np.array(points, np.float32)
    boxes = np.concatenate([kps.min(1) - side / 4, kps.max(1) + side / 4], 1).astype(np.float32)
    return Faces(boxes, np.ones(count, np.float32), kps, track_ids=np.arange(count))


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def latency_ms(path: GpuSwapPath, image: np.ndarray, faces: Faces, frames: int) -> list[float]:
    pairs = [(i, 0) for i in range(len(faces))]
    times = []
    for _ in range(frames):
        start = time.perf_counter()
        slot = path.submit(image, faces, pairs)
        path.result(slot)
        times.append((time.perf_counter() - start) * 1e3)
        path.release(slot)
    return times


def throughput_fps(path: GpuSwapPath, image: np.ndarray, faces: Faces, frames: int) -> float:
    pairs = [(i, 0) for i in range(len(faces))]
    pending: list[Any] = []
    start = time.perf_counter()
    for _ in range(frames):
        if len(pending) == path.slots:
            slot = pending.pop(0)
            path.result(slot)
            path.release(slot)
        pending.append(path.submit(image, faces, pairs))
    for slot in pending:
        path.result(slot)
        path.release(slot)
    return frames / (time.perf_counter() - start)


def model_alone_ms(path: GpuSwapPath, faces: int, sync: Callable[[], None], frames: int) -> float:
    """The model on the path's own buffers, nothing else queued."""
    slot = path.ring.acquire()
    assert slot is not None
    stream = path.ring.compute
    times = []
    for _ in range(frames):
        start = time.perf_counter()
        path._infer(faces, int(slot.dev_in.ptr) + path.layout.latents_at, stream)  # type: ignore[attr-defined]
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    path.ring.release(slot)
    return statistics.median(times)


def cuda_setup(runtime: str, cache: Path) -> tuple[Any, Any, Any, Callable[[], None], dict[str, str]]:
    """Device, kernels, model runner and a synchronise-all for a real GPU."""
    from cuda.bindings import runtime as cudart

    from livefuse.runtime.cuda import CudaDevice, check, probe
    from livefuse.swap.gpu.launch import CudaKernels
    from livefuse.testing.standins import make_faithful

    device, kernels = CudaDevice(0), CudaKernels(0)
    onnx = cache / f"{MODEL}.onnx"
    if not onnx.exists():
        make_faithful(MODEL, cache)
    if runtime == "tensorrt":
        from livefuse.models.files import sha256_file
        from livefuse.runtime.trt import TrtRunner

        spec = load_manifest()[MODEL]
        runner: Any = TrtRunner(spec, cache / "engines", onnx_sha256=sha256_file(onnx), name=MODEL)
    else:
        from livefuse.runtime.torch_runner import TorchRunner

        runner = TorchRunner(onnx, name=MODEL, device="cuda")
    runner.activate()
    gpu = probe().gpus[0]
    info = {"gpu": gpu.name, "runtime": runner.provider}

    def sync() -> None:
        check(cudart.cudaDeviceSynchronize(), "synchronise")

    return device, kernels, runner, sync, info


def emulated_setup(cache: Path) -> tuple[Any, Any, Any, Callable[[], None], dict[str, str]]:
    """The CPU emulator and a tiny stand-in: only checks that this script runs."""
    from livefuse.runtime.ort import OrtRunner
    from livefuse.testing import emulate
    from livefuse.testing.standins import make_tiny

    runner = OrtRunner(make_tiny(MODEL, cache), name=MODEL)
    runner.activate()
    model = emulate.HostModel(runner, {"target": (3, 128, 128), "source": (512,), "output": (3, 128, 128)})
    kernels = emulate.EmulatedKernels(emulate.build(cache))
    return emulate.HostDevice(), kernels, model, lambda: None, {"gpu": "none (CPU emulator)", "runtime": "onnxruntime"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--emulate", action="store_true", help="tiny run on the CPU emulator (checks the script)")
    parser.add_argument("--runtime", choices=["torch", "tensorrt"], default="torch")
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "livefuse-bench-gpu")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    spec = load_manifest()[MODEL]
    crop = crop_spec(spec)
    if args.emulate:
        device, kernels, model, sync, info = emulated_setup(args.cache)
        sizes, counts, frames = {"240p": (320, 240)}, (1, 2), 3
        io = ModelIO("target", "source", "output", 512, max_batch=1)
    else:
        device, kernels, model, sync, info = cuda_setup(args.runtime, args.cache)
        sizes, counts, frames = SIZES, (1, 4), args.frames
        from livefuse.swap.gpu.swapper import model_io

        io = model_io(model, "target", "source")
    latents = np.random.default_rng(0).normal(0, 1, (1, io.latent_size)).astype(np.float32)
    rows = []
    for label, (width, height) in sizes.items():
        image = cv2.resize(np.random.default_rng(1).integers(0, 256, (90, 160, 3), np.uint8), (width, height))
        for count in counts:
            faces = faces_for(width, height, count, crop.size, crop.template)
            config = NeuralConfig(colour=True, relight=True)  # as the app runs it
            with GpuSwapPath(device, kernels, model, io, crop, latents, width, height, config=config) as path:
                latency_ms(path, image, faces, max(frames // 10, 1))  # warm-up: graphs, caches
                times = latency_ms(path, image, faces, frames)
                fps = throughput_fps(path, image, faces, frames)
                alone = model_alone_ms(path, count, sync, max(frames // 3, 1))
            rows.append(
                {
                    "size": label,
                    "faces": count,
                    "p50_ms": percentile(times, 50),
                    "p99_ms": percentile(times, 99),
                    "fps": fps,
                    "model_ms": alone,
                    "model_share": alone * fps / 1e3,
                }
            )
            r = rows[-1]
            print(
                f"{label:>6} {count} faces: p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms  "
                f"{r['fps']:.0f} fps  model alone {r['model_ms']:.2f} ms  model share {r['model_share']:.0%}"
            )
    for closeable in (model, kernels):
        getattr(closeable, "runner", closeable).close()  # the emulator's model wraps its runner
    result: dict[str, Any] = {"machine": describe(**info), "rows": rows}
    if not args.emulate:
        from livefuse.runtime.cuda import pinned_bandwidth

        result["h2d_gbps"], result["d2h_gbps"] = pinned_bandwidth()
        print(f"pinned H2D {result['h2d_gbps']:.1f} GB/s, D2H {result['d2h_gbps']:.1f} GB/s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
