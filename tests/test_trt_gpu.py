"""Real TensorRT engines: built with scripts/build_engines.py's code from the tiny stand-ins and
the inswapper-like :func:`tests.trt_fakes.adain_model`, then run with TrtRunner and compared
with ONNX Runtime on the CPU.

Marked ``gpu`` and skipped, with the reason, without TensorRT, cuda-python and an NVIDIA GPU.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from livefuse.engines.build import build_engines
from livefuse.engines.plan import BuildOptions
from livefuse.engines.precision import owner_node
from livefuse.errors import ConfigError
from livefuse.models.files import sha256_file
from livefuse.models.manifest import load_manifest
from livefuse.models.store import ModelStore
from livefuse.runtime.ort import OrtRunner
from livefuse.runtime.trt import TrtRunner
from livefuse.testing.standins import make_tiny, pinned_manifest
from tests.trt_fakes import ADAIN_FP32, adain_model, write_model


def _why_not() -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT is not installed (pip install 'livefuse[tensorrt]')"
    if importlib.util.find_spec("cuda") is None or importlib.util.find_spec("cuda.bindings") is None:
        return "cuda-python is not installed (pip install 'livefuse[tensorrt]')"
    from livefuse.runtime import cuda

    found = cuda.probe()
    return None if found.gpus else f"no CUDA GPU ({found.error or 'none visible'})"


_WHY_NOT = _why_not()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.slow,
    pytest.mark.skipif(_WHY_NOT is not None, reason=f"TensorRT tests need a GPU: {_WHY_NOT}"),
]

STANDINS = ("w600k_r50", "inswapper_128", "gfpgan_1.4", "scrfd_det_10g")
MAX_BATCH = 4


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    """A home with the stand-ins and ``adain_test`` installed, and their engines built."""
    src = tmp_path_factory.mktemp("src")
    files = {name: make_tiny(name, src) for name in STANDINS}
    files["adain_test"] = write_model(adain_model(), src / "adain_test.onnx")
    base = {**load_manifest(), "adain_test": dataclasses.replace(load_manifest()["inswapper_128"], name="adain_test")}
    store = ModelStore(tmp_path_factory.mktemp("home"), pinned_manifest(files, base))
    store.models_dir.mkdir(parents=True)
    for name, path in files.items():
        (store.models_dir / f"{name}.onnx").write_bytes(path.read_bytes())
    results = build_engines(BuildOptions(models=tuple(files), max_batch=MAX_BATCH, workspace_gib=1), store=store)
    assert [r.status for r in results] == ["built"] * len(files), [r.message for r in results]
    return store


def _runner(store: ModelStore, name: str, weight_budget: int | None = None) -> TrtRunner:
    path = store.path(name)
    return TrtRunner(
        store.spec(name), store.home / "engines", onnx_sha256=sha256_file(path), weight_budget=weight_budget
    )


def _feeds(store: ModelStore, name: str, batch: int, side: int = 640, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for contract in store.spec(name).inputs:
        shape = [d if isinstance(d, int) else side if d == "?" else batch for d in contract.shape]
        out[contract.name] = rng.uniform(-1, 1, shape).astype(contract.dtype)
    return out


def _close(got: list[np.ndarray], want: list[np.ndarray], rtol: float = 2e-2) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        scale = max(float(np.abs(w).max()), 1e-3)
        np.testing.assert_allclose(g.astype(np.float32), w, rtol=0, atol=rtol * scale)


@pytest.fixture
def ort(built: ModelStore, request: pytest.FixtureRequest) -> Iterator[OrtRunner]:
    with OrtRunner(built.path(request.param), providers=["CPUExecutionProvider"]) as runner:
        yield runner  # type: ignore[misc]


@pytest.mark.parametrize("ort", STANDINS, indirect=True)
def test_fp16_engines_match_onnxruntime_cpu(built: ModelStore, ort: OrtRunner) -> None:
    name = ort.name
    batches = (1, 3) if built.spec(name).inputs[0].shape[0] == "None" else (1,)
    with _runner(built, name) as runner:
        for batch in batches:
            for seed in (1, 2):  # the second call reuses every buffer and binding
                feeds = _feeds(built, name, batch, seed=seed)
                _close(runner.infer(feeds), ort.infer(feeds))


@pytest.mark.parametrize("ort", ["scrfd_det_10g"], indirect=True)
def test_a_detector_takes_smaller_images_within_its_profile(built: ModelStore, ort: OrtRunner) -> None:
    with _runner(built, "scrfd_det_10g") as runner:
        for side in (320, 640, 320):
            feeds = _feeds(built, "scrfd_det_10g", 1, side=side)
            _close(runner.infer(feeds), ort.infer(feeds))


@pytest.mark.parametrize("ort", ["adain_test"], indirect=True)
def test_inswapper_like_norms_stay_fp32_and_match(built: ModelStore, ort: OrtRunner) -> None:
    with _runner(built, "adain_test") as runner:
        record = runner.record
        assert record is not None and record.max_batch == MAX_BATCH
        owners = {owner_node(layer, "", frozenset(ADAIN_FP32)) for layer, _ in record.layer_precisions}
        assert {"/b0/InstanceNormalization", "/b1/ReduceMean_1", "/b1/Div", "/b1/Mul"} <= owners
        for batch in range(1, MAX_BATCH + 1):
            feeds = _feeds(built, "adain_test", batch)
            _close(runner.infer(feeds), ort.infer(feeds), rtol=1e-2)


def test_infer_device_matches_infer(built: ModelStore) -> None:
    from livefuse.runtime.cuda import CudaDevice, DeviceBuffer, PinnedBuffer, Stream

    name, batch = "w600k_r50", 2
    feeds = _feeds(built, name, batch)
    with _runner(built, name) as runner:
        want = [a.copy() for a in runner.infer(feeds)]
        sizes_in, sizes_out = runner.io_bytes(batch)
        gpu = CudaDevice(0)
        with (
            DeviceBuffer(sizes_in[0]) as x,
            DeviceBuffer(sizes_out[0]) as y,
            Stream() as stream,
            PinnedBuffer(sizes_in[0]) as host_in,
            PinnedBuffer(sizes_out[0]) as host_out,
        ):
            host_in.array[:] = feeds["input.1"].view(np.uint8).ravel()
            gpu.copy_h2d(x, host_in.array, sizes_in[0], stream)
            runner.infer_device({"input.1": x.ptr}, {"683": y.ptr}, batch, stream)
            gpu.copy_d2h(host_out.array, y, sizes_out[0], stream)
            stream.synchronize()
            got = host_out.array.view(want[0].dtype).reshape(want[0].shape)
            np.testing.assert_array_equal(got, want[0])
        _close(runner.infer(feeds), want, rtol=0)  # infer rebinds its own buffers afterwards


def test_weight_streaming_engine_runs_within_a_budget(built: ModelStore, tmp_path: Path) -> None:
    onnx = make_tiny("inswapper_128_fp16", tmp_path / "src")
    store = ModelStore(tmp_path / "home", pinned_manifest({"inswapper_128_fp16": onnx}))
    store.models_dir.mkdir(parents=True)
    (store.models_dir / "inswapper_128_fp16.onnx").write_bytes(onnx.read_bytes())
    (result,) = build_engines(BuildOptions(weight_streaming=True, workspace_gib=1), store=store)
    assert result.status == "built", result.message
    feeds = _feeds(store, "inswapper_128_fp16", 1)
    with OrtRunner(onnx, providers=["CPUExecutionProvider"]) as ort:
        try:
            with _runner(store, "inswapper_128_fp16", weight_budget=1 << 10) as runner:
                assert runner.record is not None and runner.record.weight_streaming
                _close(runner.infer(feeds), ort.infer(feeds))
        except ConfigError as exc:  # TensorRT found nothing worth streaming in so small a model
            pytest.skip(str(exc))
