"""The GPU frame path on a real NVIDIA GPU: the NVRTC-compiled kernels against their CPU
emulator, and the whole path on CUDA streams against the emulated path. Skipped without
cuda-python and a GPU; everything else about the path is tested in test_gpu_kernels.py and
test_gpu_path.py on any machine.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from livefuse.faces import Faces
from livefuse.runtime.ort import OrtRunner
from livefuse.swap.gpu.kernels import BLOCK, ArgPack, grid_for
from livefuse.swap.gpu.path import GpuSwapPath, ModelIO
from livefuse.swap.neural.swapper import NeuralConfig
from livefuse.testing import emulate
from tests.helpers import cuda_gpus, small_swap_model
from tests.test_gpu_kernels import MATRICES, input_format, random_output, scene, spec_for
from tests.test_gpu_path import CONFIG, LATENTS, PAIRS, PLACES, SPEC, H, S, W, faces_at, make_path

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(cuda_gpus() == 0, reason="needs cuda-python and an NVIDIA GPU")]


@pytest.fixture(scope="module")
def gpu() -> Iterator[Any]:
    from livefuse.runtime.cuda import CudaDevice
    from livefuse.swap.gpu.launch import CudaKernels

    device = CudaDevice(0)
    with CudaKernels(0) as kernels:
        yield device, kernels


def upload(device: Any, array: np.ndarray) -> Any:
    from cuda.bindings import runtime as cudart

    from livefuse.runtime.cuda import check

    buffer = device.device_buffer(array.nbytes)
    kind = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
    check(cudart.cudaMemcpy(buffer.ptr, array.ctypes.data, array.nbytes, kind), "test upload")
    return buffer


def download(buffer: Any, like: np.ndarray) -> np.ndarray:
    from cuda.bindings import runtime as cudart

    from livefuse.runtime.cuda import check

    out = np.empty_like(like)
    kind = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
    check(cudart.cudaDeviceSynchronize(), "test sync")
    check(cudart.cudaMemcpy(out.ctypes.data, buffer.ptr, out.nbytes, kind), "test download")
    return out


def test_crop_kernel_on_the_gpu_equals_its_emulation(gpu: Any, tmp_path: Path) -> None:
    device, kernels = gpu
    frame, spec = scene(), spec_for(rgb=True, nchw=True)
    to_frame = np.stack([np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2] for m in MATRICES]).astype(np.float32)
    out = np.zeros((len(MATRICES), 3, S, S), np.float32)
    results = []
    for run in ("gpu", "cpu"):
        pack = ArgPack("lf_crop_input")
        if run == "gpu":
            f, a, o = upload(device, frame), upload(device, to_frame), upload(device, out)
            pointers = (f.ptr, a.ptr, o.ptr)
            stream = device.new_stream()
        else:
            pointers = (frame.ctypes.data, to_frame.ctypes.data, out.ctypes.data)
            stream = None
        pack.set(
            pointers[0],
            frame.strides[0],
            frame.shape[1],
            frame.shape[0],
            pointers[1],
            S,
            input_format(spec, False),
            pointers[2],
        )
        engine = kernels if run == "gpu" else emulate.EmulatedKernels(emulate.build(tmp_path))
        engine.launch(pack, grid_for(S, S, len(MATRICES)), BLOCK, stream)
        results.append(download(o, out) if run == "gpu" else out.copy())
    # --fmad=false on the GPU and -ffp-contract=off on the CPU: the same float operations.
    assert np.abs(results[0] - results[1]).max() < 1e-4


class RoundTripModel:
    """The test's device model: download the batch, run ONNX Runtime on the CPU, upload."""

    def __init__(self, runner: OrtRunner) -> None:
        self.runner = runner

    def infer_device(self, inputs: Mapping[str, int], outputs: Mapping[str, int], batch: int, stream: Any) -> None:
        from cuda.bindings import runtime as cudart

        from livefuse.runtime.cuda import check

        stream.synchronize()
        shapes = {"target": (batch, 3, S, S), "source": (batch, 512), "output": (batch, 3, S, S)}
        feeds = {}
        for name, ptr in inputs.items():
            feeds[name] = np.empty(shapes[name], np.float32)
            kind = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
            check(cudart.cudaMemcpy(feeds[name].ctypes.data, ptr, feeds[name].nbytes, kind), "test model in")
        result = np.ascontiguousarray(self.runner.infer(feeds)[0])
        kind = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        check(cudart.cudaMemcpy(outputs["output"], result.ctypes.data, result.nbytes, kind), "test model out")


def test_the_frame_path_on_cuda_streams_equals_the_emulated_path(gpu: Any, tmp_path: Path) -> None:
    device, kernels = gpu
    image, faces = scene(H, W, seed=4), faces_at(PLACES)
    faces = Faces(faces.boxes, faces.scores, faces.kps, track_ids=np.array([1, 2, 3]))
    with OrtRunner(small_swap_model(tmp_path / "swap.onnx"), threads=2) as runner:
        io = ModelIO("target", "source", "output", 512)
        outputs = []
        with GpuSwapPath(device, kernels, RoundTripModel(runner), io, SPEC, LATENTS, W, H, config=CONFIG) as path:
            for _ in range(3):
                slot = path.submit(image, faces, PAIRS)
                outputs.append(path.result(slot).copy())  # type: ignore[union-attr]
                path.release(slot)
        with make_path(runner, emulate.build(tmp_path), emulate.HostDevice()) as emulated:
            slot = emulated.submit(image, faces, PAIRS)
            reference = emulated.result(slot).copy()  # type: ignore[union-attr]
            emulated.release(slot)
    for out in outputs:
        assert np.abs(out.astype(int) - reference.astype(int)).max() <= 1


class FixedRunner:
    """Answers every face with one fixed model output: the device and the emulated path then
    get the very same output, so any difference between them is the kernels' alone."""

    outputs = [type("Output", (), {"name": "output"})()]

    def __init__(self, item: np.ndarray) -> None:
        self.item = item

    def infer(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return [np.repeat(self.item[None], len(feeds["target"]), 0)]


def test_relighting_on_cuda_streams_equals_the_emulated_path(gpu: Any, tmp_path: Path) -> None:
    """The colour moments, the light kernels and the relit paste on the device, frame by frame
    against the emulator (the colour map applies from the second frame on both)."""
    device, kernels = gpu
    image, faces = scene(H, W, seed=4), faces_at(PLACES)
    faces = Faces(faces.boxes, faces.scores, faces.kps, track_ids=np.array([1, 2, 3]))
    runner = FixedRunner(random_output(SPEC, 3))
    config = NeuralConfig(colour=True, relight=True)
    io = ModelIO("target", "source", "output", 512)
    outputs: dict[str, list[np.ndarray]] = {"gpu": [], "emulated": []}
    with (
        GpuSwapPath(device, kernels, RoundTripModel(runner), io, SPEC, LATENTS, W, H, config=config) as path,  # type: ignore[arg-type]
        make_path(runner, emulate.build(tmp_path), emulate.HostDevice()) as emulated,  # type: ignore[arg-type]
    ):
        emulated.config = config
        for _ in range(3):
            for name, run in (("gpu", path), ("emulated", emulated)):
                slot = run.submit(image, faces, PAIRS)
                outputs[name].append(run.result(slot).copy())  # type: ignore[union-attr]
                run.release(slot)
    assert np.any(outputs["emulated"][1] != outputs["emulated"][0])  # the colour map came in
    for out, reference in zip(outputs["gpu"], outputs["emulated"]):
        assert np.abs(out.astype(int) - reference.astype(int)).max() <= 1
