"""TrtRunner's own logic against a fake ``tensorrt`` module and a fake GPU (tests/trt_fakes.py):
engine matching, buffers made once for the largest batch, input shapes set only when the batch
changes, tensor addresses only when one changes, bytes really moved through the pinned buffers
and the stream, FP16 I/O, weight budgets, and cleanup. The real round trip is in
tests/test_trt_gpu.py (needs a GPU and TensorRT)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from livefuse.errors import ConfigError, EngineError, EngineMismatch, LivefuseError
from livefuse.models.manifest import load_manifest
from livefuse.runtime.engine_files import EngineRecord, InputProfile, build_command, save_engine
from livefuse.runtime.trt import TrtRunner
from tests.trt_fakes import FakeGpu, FakeMemory, FakeTrt

SPEC = load_manifest()["w600k_r50"]
SHA = "c" * 64
H100 = (9, 0)


def _record(cc: tuple[int, int] = H100, max_batch: int = 8) -> EngineRecord:
    return EngineRecord(
        model=SPEC.name,
        onnx_sha256=SHA,
        trt_version="10.3.0",
        cc=cc,
        precision="fp16",
        profiles=(InputProfile("x", (1, 4), (1, 4), (max_batch, 4)),),
        tensors=(),
        layer_precisions=(),
        optimization_level=3,
        workspace_bytes=1 << 30,
        build_seconds=1.0,
        built_at="2026-01-01T00:00:00+00:00",
    )


@pytest.fixture
def engines(tmp_path: Path) -> Path:
    save_engine(tmp_path / "engines", b"a fake engine", _record())
    return tmp_path / "engines"


@pytest.fixture
def gpu() -> FakeGpu:
    return FakeGpu()


@pytest.fixture
def trt(gpu: FakeGpu) -> FakeTrt:
    return FakeTrt(gpu)


def _runner(engines: Path, trt: FakeTrt, gpu: FakeGpu, **kwargs: object) -> TrtRunner:
    return TrtRunner(SPEC, engines, onnx_sha256=SHA, trt=trt, gpu=gpu, cc=H100, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def runner(engines: Path, trt: FakeTrt, gpu: FakeGpu) -> Iterator[TrtRunner]:
    with _runner(engines, trt, gpu) as active:
        yield active  # type: ignore[misc]


def feeds(batch: int, seed: int = 0, scale: float = 2.0) -> dict[str, np.ndarray]:
    x = np.random.default_rng(seed).uniform(-1, 1, (batch, 4)).astype(np.float32)
    return {"x": x, "s": np.array([scale], np.float32)}


def test_outputs_are_computed_and_returned_as_views_of_pinned_buffers(runner: TrtRunner, gpu: FakeGpu) -> None:
    fed = feeds(3)
    y, n = runner.infer(fed)
    assert y.dtype == np.float16 and y.shape == (3, 4) and n.dtype == np.float32 and n.shape == (1,)
    np.testing.assert_allclose(y, fed["x"] * 2 + 1, atol=2e-3)  # FP16 output
    assert n[0] == 3
    hosts = [b.array for b in gpu.owned if isinstance(b, FakeMemory) and b.ptr == 0]
    assert any(np.shares_memory(y, host) for host in hosts)  # no copy out of the pinned buffer
    again = runner.infer(feeds(3, seed=1, scale=-1.0))
    assert again[0] is y and again[1] is n  # same views, new values
    np.testing.assert_allclose(y, feeds(3, seed=1)["x"] * -1 + 1, atol=2e-3)


def test_buffers_are_made_once_for_the_largest_batch(engines: Path, trt: FakeTrt, gpu: FakeGpu) -> None:
    with _runner(engines, trt, gpu) as runner:
        sizes = sorted(b.nbytes for b in gpu.owned if isinstance(b, FakeMemory) and b.ptr)
        assert sizes == [2, 4, 8 * 4 * 2, 8 * 4 * 4]  # s (fp16), n, y (8 x 4 fp16), x (8 x 4 fp32)
        made = gpu.allocations
        for batch in (1, 8, 3, 8, 2, 5):
            runner.infer(feeds(batch))
        assert gpu.allocations == made == 8
        assert runner.memory().io_bytes == 2 + 4 + 64 + 128
    with _runner(engines, trt, FakeGpu(), max_batch=2) as small:
        assert small.capacity == 2 and small.memory().io_bytes == 2 + 4 + 16 + 32
        with pytest.raises(ValueError, match=r"at most 2 faces per call"):
            small.infer(feeds(3))


def test_input_shapes_are_set_only_when_the_batch_changes(runner: TrtRunner, trt: FakeTrt) -> None:
    (context,) = trt.engines[0].contexts
    context.shape_calls.clear()
    for batch in (2, 2, 3, 3, 3, 2):
        runner.infer(feeds(batch))
    assert context.shape_calls == [("x", (2, 4)), ("x", (3, 4)), ("x", (2, 4))]  # 's' is fixed: never set


def test_addresses_are_set_only_when_one_changes(runner: TrtRunner, trt: FakeTrt, gpu: FakeGpu) -> None:
    (context,) = trt.engines[0].contexts
    assert context.address_calls == []
    runner.infer(feeds(1))
    assert [name for name, _ in context.address_calls] == ["x", "s", "y", "n"]
    context.address_calls.clear()
    runner.infer(feeds(2))
    assert context.address_calls == []
    x, y = gpu.device_buffer(64), gpu.device_buffer(64)
    stream = gpu.new_stream()
    runner.infer_device({"x": x.ptr, "s": runner._own_in[1]}, {"y": y.ptr}, 2, stream)
    assert context.address_calls == [("x", x.ptr), ("y", y.ptr)]  # 'n' goes to the runner's own buffer
    context.address_calls.clear()
    runner.infer_device({"x": x.ptr, "s": runner._own_in[1]}, {"y": y.ptr}, 2, stream.handle)
    assert context.address_calls == []
    runner.infer(feeds(2))
    assert [name for name, _ in context.address_calls] == ["x", "y"]


def test_infer_device_runs_on_the_callers_memory_and_stream(runner: TrtRunner, gpu: FakeGpu) -> None:
    sizes_in, sizes_out = runner.io_bytes(batch=2)
    assert sizes_in == [32, 2] and sizes_out == [16, 4]
    x, s, y, n = (gpu.device_buffer(size) for size in (*sizes_in, *sizes_out))
    fed = feeds(2)
    x.array[:32] = fed["x"].view(np.uint8).ravel()
    s.array[:2] = np.array([3.0], np.float16).view(np.uint8)
    stream = gpu.new_stream()
    runner.infer_device({"x": x.ptr, "s": s.ptr}, {"y": y.ptr, "n": n.ptr}, 2, stream)
    assert y.array.view(np.float16).max() == 0  # queued, not run: the caller synchronises
    stream.synchronize()
    np.testing.assert_allclose(y.array.view(np.float16).reshape(2, 4), fed["x"] * 3 + 1, atol=3e-3)
    assert n.array.view(np.float32)[0] == 2
    with pytest.raises(ValueError, match=r"missing \['s'\], unknown \['z'\]"):
        runner.infer_device({"x": x.ptr}, {"z": y.ptr}, 1, stream)
    with pytest.raises(ValueError, match="takes 1..8 faces per call, got 9"):
        runner.infer_device({"x": x.ptr, "s": s.ptr}, {}, 9, stream)
    with pytest.raises(EngineError, match="refused address 0x[0-9a-f]+ for tensor 'x'.*256-byte aligned"):
        runner.infer_device({"x": x.ptr + 4, "s": s.ptr}, {}, 1, stream)


def test_bad_feeds_are_named(runner: TrtRunner) -> None:
    with pytest.raises(ValueError, match="needs input 's'"):
        runner.infer({"x": np.zeros((1, 4), np.float32)})
    with pytest.raises(ValueError, match=r"input 'x' .* between \(1, 4\) and \(8, 4\) \(at most 8 faces"):
        runner.infer(feeds(9))
    with pytest.raises(ValueError, match=r"input 'x' .* between"):
        runner.infer({"x": np.zeros((2, 5), np.float32), "s": np.ones(1, np.float32)})
    with pytest.raises(ValueError, match=r"input 's' .* between \(1,\) and \(1,\)"):
        runner.infer({"x": np.zeros((2, 4), np.float32), "s": np.ones(2, np.float32)})


def test_tensors_and_provider_are_described(runner: TrtRunner) -> None:
    assert runner.provider == "tensorrt"
    assert [(s.name, s.shape, s.dtype) for s in runner.inputs] == [
        ("x", (None, 4), "tensor(float)"),
        ("s", (1,), "tensor(float16)"),
    ]
    assert [(s.name, s.dtype) for s in runner.outputs] == [("y", "tensor(float16)"), ("n", "tensor(float)")]
    assert runner.memory().activation_bytes == 3 << 20


def test_engines_for_another_gpu_are_refused_with_the_rebuild_command(
    tmp_path: Path, trt: FakeTrt, gpu: FakeGpu
) -> None:
    save_engine(tmp_path, b"built on a 4090", _record(cc=(8, 9)))
    with pytest.raises(EngineMismatch, match="other GPU") as err:
        _runner(tmp_path, trt, gpu).activate()
    assert build_command(SPEC.name) in str(err.value)
    assert gpu.allocations == 0 and trt.engines == []


def test_more_faces_than_the_engine_was_built_for_are_refused(engines: Path, trt: FakeTrt, gpu: FakeGpu) -> None:
    with pytest.raises(EngineMismatch, match="at most 8 faces per call, 16 are needed"):
        _runner(engines, trt, gpu, max_batch=16).activate()


def test_an_engine_tensorrt_cannot_load_says_rebuild(engines: Path, trt: FakeTrt, gpu: FakeGpu) -> None:
    trt.loadable = False
    runner = _runner(engines, trt, gpu)
    with pytest.raises(EngineError, match=r"could not load the engine .* rebuild it: python scripts/build_engines"):
        runner.activate()
    assert not runner.is_active and gpu.open() == []


def test_weight_budget(engines: Path, trt: FakeTrt, gpu: FakeGpu) -> None:
    with pytest.raises(ConfigError, match="has no streamable weights.*--weight-streaming"):
        _runner(engines, trt, gpu, weight_budget=100).activate()
    trt.streamable = 1000
    with _runner(engines, trt, gpu, weight_budget=400) as runner:
        assert trt.engines[-1].weight_streaming_budget_v2 == 400
        memory = runner.memory()  # type: ignore[attr-defined]
        assert memory.weight_budget_bytes == 400 and memory.streamable_weights_bytes == 1000
        assert "weights streamed (0 of 0 MiB" in memory.summary()
    with _runner(engines, trt, gpu, weight_budget=5000):
        assert trt.engines[-1].weight_streaming_budget_v2 == 1000  # everything fits: all of it stays
    with pytest.raises(ConfigError, match="number of bytes"):
        _runner(engines, trt, gpu, weight_budget=-1)


def test_close_frees_everything_and_a_failed_activate_leaves_nothing(engines: Path, trt: FakeTrt, gpu: FakeGpu) -> None:
    runner = _runner(engines, trt, gpu)
    with runner:
        runner.infer(feeds(2))
        assert len(gpu.open()) == 9  # 4 device + 4 pinned buffers and the stream
    assert gpu.open() == [] and not runner.is_active and runner.provider == "inactive"
    runner.close()  # idempotent

    class FullGpu(FakeGpu):
        def device_buffer(self, nbytes: int) -> FakeMemory:
            if self.allocations >= 4:  # after the device and pinned buffers of two tensors
                raise LivefuseError("CUDA: cudaMalloc failed: out of memory")
            return super().device_buffer(nbytes)

    full = FullGpu()
    failing = _runner(engines, FakeTrt(full), full)
    with pytest.raises(LivefuseError, match="out of memory"):
        failing.activate()
    assert full.allocations == 4 and full.open() == [] and not failing.is_active


def test_infer_needs_activate(engines: Path, trt: FakeTrt, gpu: FakeGpu) -> None:
    runner = _runner(engines, trt, gpu)
    with pytest.raises(RuntimeError, match="activated"):
        runner.infer(feeds(1))
    with pytest.raises(RuntimeError, match="activated"):
        runner.infer_device({}, {}, 1, 0)
