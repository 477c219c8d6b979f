"""Batched model calls that run out of GPU memory: halved, remembered, logged once, never a crash
while one face still fits."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import pytest

from livefuse.runtime.base import Runner, TensorSpec, is_out_of_memory
from livefuse.swap.neural.models import run_batched

#: What ONNX Runtime's CUDA arena raises when it cannot grow (an ``onnxruntime...RuntimeException``).
ORT_OOM = (
    "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while running Conv node. "
    "Name:'Conv_0' Status Message: Failed to allocate memory for requested buffer of size 268435456"
)


class OrtRuntimeException(Exception):
    """ONNX Runtime's exception classes derive from Exception directly, as this one does."""


class Squarer(Runner):
    """Squares a (N, 4) batch; a batch of more than ``fits`` runs out of memory. Returns one
    reused output buffer per batch size, as runners that preallocate do."""

    def __init__(self, fits: int, dynamic: bool = True, error: Exception | None = None) -> None:
        super().__init__("squarer")
        self.fits, self.dynamic, self.error = fits, dynamic, error
        self.calls: list[int] = []
        self._out: dict[int, np.ndarray] = {}

    def infer_impl(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        x = feeds["x"]
        self.calls.append(len(x))
        if len(x) > self.fits:
            raise self.error or OrtRuntimeException(ORT_OOM)
        out = self._out.setdefault(len(x), np.empty_like(x))
        np.multiply(x, x, out=out)
        return [out]

    def activate_impl(self) -> None:
        pass

    def close_impl(self) -> None:
        pass

    provider = "test"

    @property
    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec("x", (None if self.dynamic else 1, 4), "tensor(float)")]

    @property
    def outputs(self) -> list[TensorSpec]:
        return [TensorSpec("y", (None if self.dynamic else 1, 4), "tensor(float)")]


def batch(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).uniform(-1, 1, (n, 4)).astype(np.float32)}


def test_out_of_memory_halves_the_batch_remembers_it_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    with Squarer(fits=3) as runner, caplog.at_level(logging.WARNING, logger="livefuse.swap.neural.models"):
        for seed in range(3):
            feeds = batch(8, seed)
            np.testing.assert_array_equal(run_batched(runner, feeds, dynamic=True), feeds["x"] ** 2)
    assert runner.batch_limit == 2
    # First call: 8 and 4 do not fit, then 2 at a time; later calls start at 2.
    assert runner.calls == [8, 4, 2, 2, 2, 2] + [2, 2, 2, 2] * 2
    assert [r.getMessage() for r in caplog.records] == [
        "model squarer ran out of memory on a batch of 8; from now on it runs at most 2 per call"
    ]


def test_a_remembered_limit_still_lets_small_batches_through_whole() -> None:
    with Squarer(fits=3) as runner:
        run_batched(runner, batch(8), dynamic=True)
        runner.calls.clear()
        feeds = batch(2)
        np.testing.assert_array_equal(run_batched(runner, feeds, dynamic=True), feeds["x"] ** 2)
    assert runner.calls == [2]


def test_one_face_that_does_not_fit_raises_the_runtimes_error(caplog: pytest.LogCaptureFixture) -> None:
    with Squarer(fits=0) as runner, pytest.raises(OrtRuntimeException, match="Failed to allocate memory"):
        run_batched(runner, batch(4), dynamic=True)
    assert runner.calls == [4, 2, 1]
    assert runner.batch_limit == 1
    assert "at most 1 per call" in caplog.text


def test_other_errors_are_not_retried() -> None:
    with Squarer(fits=0, error=ValueError("input 'x' has the wrong shape")) as runner:
        with pytest.raises(ValueError, match="wrong shape"):
            run_batched(runner, batch(4), dynamic=True)
    assert runner.calls == [4] and runner.batch_limit is None


def test_fixed_batch_models_get_one_face_per_call_even_with_a_reused_output_buffer() -> None:
    with Squarer(fits=1, dynamic=False) as runner:
        feeds = batch(3)
        np.testing.assert_array_equal(run_batched(runner, feeds, dynamic=False), feeds["x"] ** 2)
    assert runner.calls == [1, 1, 1]


@pytest.mark.parametrize(
    ("error", "oom"),
    [
        (OrtRuntimeException(ORT_OOM), True),
        (RuntimeError("CUDA failure 2: out of memory ; GPU=0 ; hostname=x ; expr=cudaMalloc((void**)&p, size);"), True),
        (RuntimeError("CUDNN failure 4: CUDNN_STATUS_ALLOC_FAILED ; GPU=0"), True),
        (OrtRuntimeException("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got invalid dimensions for input"), False),
        (ValueError("operands could not be broadcast together"), False),
    ],
)
def test_out_of_memory_is_recognised_by_its_wording(error: Exception, oom: bool) -> None:
    assert is_out_of_memory(error) is oom


def test_torch_out_of_memory_is_recognised_by_its_type() -> None:
    torch = pytest.importorskip("torch")
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("Tried to allocate 2.00 GiB"))
    assert not is_out_of_memory(RuntimeError("Tried to allocate 2.00 GiB"))


def test_cuda_error_is_out_of_memory_only_for_the_allocation_code() -> None:
    cuda = pytest.importorskip("livefuse.runtime.cuda", reason="needs cuda-python")
    assert is_out_of_memory(cuda.CudaError("CUDA: cudaMalloc failed", 2))
    assert not is_out_of_memory(cuda.CudaError("CUDA: cudaSetDevice(0) failed: cudaErrorNoDevice", 100))
