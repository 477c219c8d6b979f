"""The engine build orchestration against a fake ``tensorrt`` module (tests/trt_fakes.py): which
TensorRT calls are made, which layers are constrained to FP32, the profiles, the timing cache,
what is written, and the errors. The real build is in tests/test_trt_gpu.py (needs a GPU)."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

from livefuse.engines.build import build_engines, load_timing_cache
from livefuse.engines.plan import BuildOptions
from livefuse.errors import ConfigError, EngineError, ModelError
from livefuse.models.files import sha256_file
from livefuse.models.store import ModelStore
from livefuse.runtime.engine_files import find_engine
from livefuse.runtime.trt_env import GpuInfo, import_tensorrt
from livefuse.testing.standins import make_tiny, pinned_manifest
from tests.trt_fakes import FakeConfig, FakeTrt, adain_model, write_model

H100 = GpuInfo("NVIDIA H100 80GB HBM3", (9, 0))

#: adain_model's nodes whose layers are constrained; its Reshape and Split read int64 shape
#: constants in the fake network, so they are left alone (and warned about).
CONSTRAINED = {
    "/b0/InstanceNormalization",
    "/b0/style/Gemm",
    "/b0/style/Add",
    "/b0/Mul",
    "/b0/Add",
    "/b1/ReduceMean",
    "/b1/Sub",
    "/b1/Pow",
    "/b1/ReduceMean_1",
    "/b1/Add",
    "/b1/Sqrt",
    "/b1/Div",
    "/b1/style/Gemm",
    "/b1/Mul",
    "/b1/Add_1",
}


def _store(tmp_path: Path, files: dict[str, Path]) -> ModelStore:
    """A home with ``files`` installed as the named models (the manifest pinned to them)."""
    store = ModelStore(tmp_path / "home", pinned_manifest(files))
    store.models_dir.mkdir(parents=True)
    for name, path in files.items():
        shutil.copyfile(path, store.models_dir / f"{name}.onnx")
    return store


@pytest.fixture
def swap_store(tmp_path: Path) -> ModelStore:
    """inswapper_128 installed as the inswapper-like :func:`adain_model` (dynamic batch)."""
    return _store(tmp_path, {"inswapper_128": write_model(adain_model(), tmp_path / "src" / "adain.onnx")})


def _only(trt: FakeTrt) -> tuple[FakeConfig, list]:  # type: ignore[type-arg]
    (builder,) = trt.builders
    (config,) = builder.configs
    (network,) = builder.networks
    return config, network.layers


@pytest.mark.parametrize("metadata", [True, False])
def test_fp16_build_with_fp32_norms_profiles_and_a_record(swap_store: ModelStore, metadata: bool) -> None:
    trt = FakeTrt(metadata=metadata)
    options = BuildOptions(models=("inswapper_128",), max_batch=4, opt_level=2, workspace_gib=1.5)
    (result,) = build_engines(options, trt=trt, gpu=H100, store=swap_store)
    assert result.status == "built", result.message
    config, layers = _only(trt)
    assert config.flags == {"FP16", "OBEY_PRECISION_CONSTRAINTS"}
    assert config.builder_optimization_level == 2 and config.pools == {"WORKSPACE": int(1.5 * (1 << 30))}
    (profile,) = config.profiles
    assert profile.shapes == {
        "target": ((1, 3, 8, 8), (1, 3, 8, 8), (4, 3, 8, 8)),
        "source": ((1, 16), (1, 16), (4, 16)),
    }
    fp32 = {layer.name for layer in layers if layer.precision is trt.float32}
    assert fp32 == CONSTRAINED | {"/b1/Sub_100"}  # the Sub's helper layer too, by its name or metadata
    assert all(layer.output_types == {0: trt.float32} for layer in layers if layer.name in fp32)
    record = find_engine(
        swap_store.spec("inswapper_128"),
        "10.3.0",
        (9, 0),
        swap_store.home / "engines",
        onnx_sha256=sha256_file(swap_store.path("inswapper_128")),
        batch=4,
    ).record
    assert {layer for layer, _ in record.layer_precisions} == fp32
    assert [t.name for t in record.tensors] == ["target", "source", "output"]
    assert record.tensors[0].shape == (-1, 3, 8, 8) and record.tensors[0].dtype == "float32"
    assert record.optimization_level == 2 and record.gpu_name == H100.name and record.max_batch == 4


def test_prefer_lets_tensorrt_fall_back(swap_store: ModelStore) -> None:
    trt = FakeTrt()
    build_engines(BuildOptions(precision_constraints="prefer"), trt=trt, gpu=H100, store=swap_store)
    assert _only(trt)[0].flags == {"FP16", "PREFER_PRECISION_CONSTRAINTS"}


def test_rebuilds_skip_fresh_engines_and_reuse_the_timing_cache(swap_store: ModelStore) -> None:
    options = BuildOptions(models=("inswapper_128",))
    first = FakeTrt()
    build_engines(options, trt=first, gpu=H100, store=swap_store)
    cache = swap_store.home / "engines" / "timing-10.3.0-sm90.cache"
    assert cache.read_bytes() == b"+" and _only(first)[0].cache_loaded == [b""]
    again = FakeTrt()
    (result,) = build_engines(options, trt=again, gpu=H100, store=swap_store)
    assert result.status == "up to date" and again.builders == []
    forced = FakeTrt()
    (result,) = build_engines(
        BuildOptions(models=("inswapper_128",), force=True), trt=forced, gpu=H100, store=swap_store
    )
    assert result.status == "built" and _only(forced)[0].cache_loaded == [b"+"]
    assert cache.read_bytes() == b"++"
    # Another GPU architecture gets its own engine and its own timing cache.
    (result,) = build_engines(options, trt=FakeTrt(), gpu=GpuInfo("RTX 4090", (8, 9)), store=swap_store)
    assert result.status == "built" and (swap_store.home / "engines" / "timing-10.3.0-sm89.cache").is_file()


def test_a_timing_cache_that_does_not_load_is_replaced(tmp_path: Path) -> None:
    config = FakeConfig(builder=None)  # type: ignore[arg-type]
    (tmp_path / "t.cache").write_bytes(b"corrupt")
    load_timing_cache(config, tmp_path / "t.cache")
    assert config.cache_loaded == [b"corrupt", b""] and config.cache is not None


def test_fixed_shape_models_get_no_profile_and_stay_fresh(tmp_path: Path) -> None:
    store = _store(tmp_path, {"inswapper_128": make_tiny("inswapper_128", tmp_path / "src")})
    trt = FakeTrt()
    (result,) = build_engines(BuildOptions(), trt=trt, gpu=H100, store=store)
    config, _ = _only(trt)
    assert result.status == "built" and config.profiles == [] and config.flags == {"FP16"}  # no norms here
    assert build_engines(BuildOptions(), trt=FakeTrt(), gpu=H100, store=store)[0].status == "up to date"


def test_weight_streaming_builds_a_strongly_typed_network(tmp_path: Path) -> None:
    files = {
        "inswapper_128_fp16": make_tiny("inswapper_128_fp16", tmp_path / "src"),
        "inswapper_128": make_tiny("inswapper_128", tmp_path / "src"),
    }
    store = _store(tmp_path, files)
    trt = FakeTrt()
    results = build_engines(BuildOptions(weight_streaming=True), trt=trt, gpu=H100, store=store)
    by_model = {r.model: r for r in results}
    assert by_model["inswapper_128"].status == "failed"
    assert "would be FP32" in by_model["inswapper_128"].message
    assert by_model["inswapper_128_fp16"].status == "built"
    (builder,) = trt.builders
    assert builder.networks[0].flags == 1 << 5  # STRONGLY_TYPED
    assert builder.configs[0].flags == {"WEIGHT_STREAMING"}  # no FP16 flag, no precision constraints
    record = find_engine(
        store.spec("inswapper_128_fp16"),
        "10.3.0",
        (9, 0),
        store.home / "engines",
        onnx_sha256=sha256_file(files["inswapper_128_fp16"]),
    ).record
    assert record.weight_streaming and record.layer_precisions == ()


def test_parse_errors_are_listed_and_other_models_still_build(tmp_path: Path) -> None:
    broken = adain_model()
    broken.graph.node[-1].op_type = "NonMaxSuppression"
    files = {
        "inswapper_128": write_model(broken, tmp_path / "src" / "broken.onnx"),
        "w600k_r50": make_tiny("w600k_r50", tmp_path / "src"),
    }
    results = build_engines(BuildOptions(), trt=FakeTrt(), gpu=H100, store=_store(tmp_path, files))
    by_model = {r.model: r for r in results}
    assert by_model["w600k_r50"].status == "built"
    failed = by_model["inswapper_128"]
    assert failed.status == "failed" and failed.engine is None
    assert "TensorRT cannot parse model 'inswapper_128'" in failed.message
    assert "No importer registered for op: NonMaxSuppression (node 23)" in failed.message


def test_a_failed_build_says_what_to_try(swap_store: ModelStore) -> None:
    trt = FakeTrt()
    trt.fail_build = True
    (result,) = build_engines(BuildOptions(), trt=trt, gpu=H100, store=swap_store)
    assert result.status == "failed" and "--workspace-gib" in result.message
    assert not list((swap_store.home / "engines").glob("*.engine"))


def test_named_models_must_be_installed(swap_store: ModelStore) -> None:
    with pytest.raises(ModelError, match=r"'w600k_r50' .* is not installed"):
        build_engines(BuildOptions(models=("w600k_r50",)), trt=FakeTrt(), gpu=H100, store=swap_store)


def test_nothing_installed_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="livefuse models pull"):
        build_engines(BuildOptions(), trt=FakeTrt(), gpu=H100, store=ModelStore(tmp_path))


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_missing_tensorrt_says_how_to_install_it() -> None:
    with pytest.raises(ConfigError, match=r"pip install 'livefuse\[tensorrt\]'"):
        import_tensorrt()


def test_no_gpu_is_named_before_anything_is_built() -> None:
    pytest.importorskip("cuda.bindings", reason="cuda-python is not installed")
    from livefuse.runtime import cuda
    from livefuse.runtime.trt_env import local_gpu

    if cuda.probe().gpus:
        pytest.skip("this machine has a GPU")
    with pytest.raises(EngineError, match="there is no CUDA GPU 0"):
        local_gpu(0)
