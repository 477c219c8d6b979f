"""OrtRunner: provider choice with options, and IO binding (tensors already in place).

IO binding runs here on host memory; on device memory it needs onnxruntime-gpu and a GPU
(marked ``gpu``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from livefuse.runtime.ort import BoundTensor, OrtRunner, choose_providers, cuda_provider_options
from livefuse.testing.standins import make_tiny

CUDA, TRT, CPU = "CUDAExecutionProvider", "TensorrtExecutionProvider", "CPUExecutionProvider"
MODEL, INPUT, OUTPUT = "w600k_r50", "input.1", "683"


@pytest.fixture(scope="module")
def onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny(MODEL, tmp_path_factory.mktemp("tiny"))


def faces(n: int = 2) -> np.ndarray:
    return np.random.default_rng(n).uniform(-1, 1, (n, 3, 112, 112)).astype(np.float32)


def bound(array: np.ndarray) -> BoundTensor:
    return BoundTensor(int(array.ctypes.data), array.shape, array.dtype)


def test_tensorrt_provider_only_when_asked_for() -> None:
    """ORT's TensorRT provider builds engines at session start unless given a prebuilt cache:
    never by default."""
    installed = [TRT, CUDA, CPU]
    assert choose_providers(None, installed) == [CUDA, CPU]
    assert choose_providers([TRT, CUDA], installed) == [TRT, CUDA, CPU]


def test_gpu_options_on_a_cpu_only_onnxruntime_fall_back_to_the_cpu(
    onnx: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import onnxruntime

    if CUDA in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    runner = OrtRunner(onnx, providers=[CUDA, CPU], provider_options=[cuda_provider_options(0, 1 << 30), {}])
    with runner:
        assert runner.provider == CPU
        assert runner.infer({INPUT: faces()})[0].shape == (2, 512)
    assert "CUDAExecutionProvider are not installed" in caplog.text


def test_provider_options_need_one_mapping_per_provider(onnx: Path) -> None:
    with pytest.raises(ValueError, match="one mapping per provider"):
        OrtRunner(onnx, providers=[CUDA, CPU], provider_options=[{}])


def test_bound_run_on_host_memory_writes_what_infer_returns(onnx: Path) -> None:
    x = faces(1)  # the stand-in declares its output (1, 512)
    out = np.full((1, 512), np.nan, np.float32)
    with OrtRunner(onnx, providers=[CPU]) as runner:
        runner.infer_bound({INPUT: bound(x)}, {OUTPUT: bound(out)})
        np.testing.assert_allclose(out, runner.infer({INPUT: x})[0], rtol=1e-6, atol=1e-6)


def test_bound_run_names_what_is_missing(onnx: Path) -> None:
    x, out = faces(1), np.empty((1, 512), np.float32)
    runner = OrtRunner(onnx, providers=[CPU])
    with pytest.raises(RuntimeError, match="must be activated"):
        runner.infer_bound({INPUT: bound(x)}, {OUTPUT: bound(out)})
    with runner:
        with pytest.raises(ValueError, match=r"needs exactly the inputs input\.1; got image"):
            runner.infer_bound({"image": bound(x)}, {OUTPUT: bound(out)})
        with pytest.raises(ValueError, match="needs exactly the outputs 683; got none"):
            runner.infer_bound({INPUT: bound(x)}, {})


def _cuda_gpu() -> bool:
    import onnxruntime

    if CUDA not in onnxruntime.get_available_providers() or importlib.util.find_spec("cuda") is None:
        return False
    try:
        from livefuse.runtime import cuda
    except ImportError:
        return False
    return bool(cuda.probe().gpus)


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_gpu(), reason="needs onnxruntime-gpu, cuda-python and an NVIDIA GPU")
def test_bound_run_on_device_memory_matches_the_cpu(onnx: Path) -> None:
    from livefuse.runtime import cuda

    x = faces(1)
    got = np.empty((1, 512), np.float32)
    gpu = cuda.CudaDevice(0)
    options = [cuda_provider_options(0, 1 << 30), {}]
    with (
        cuda.Stream() as stream,
        cuda.DeviceBuffer(x.nbytes) as dev_in,
        cuda.DeviceBuffer(got.nbytes) as dev_out,
        OrtRunner(onnx, providers=[CUDA, CPU], provider_options=options) as runner,
        OrtRunner(onnx, providers=[CPU]) as reference,
    ):
        assert runner.provider == CUDA
        gpu.copy_h2d(dev_in, x, x.nbytes, stream)
        stream.synchronize()  # ORT reads the input on its own stream
        runner.infer_bound(
            {INPUT: BoundTensor(dev_in.ptr, x.shape, x.dtype)}, {OUTPUT: BoundTensor(dev_out.ptr, got.shape, got.dtype)}
        )
        gpu.copy_d2h(got, dev_out, got.nbytes, stream)
        stream.synchronize()
        want = reference.infer({INPUT: x})[0]
    scale = float(np.abs(want).max())
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-2 * scale)  # cuDNN may use TF32 convolutions
