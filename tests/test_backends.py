"""Each model's runner on the backend chosen for it: ONNX Runtime providers and their options,
forced runtimes, fallbacks, the settings. From recorded facts: the GPU runners themselves need a
GPU (their tests are marked ``gpu``)."""

from __future__ import annotations

import dataclasses
import logging
import re
import sys
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from livefuse.app import Engine, runner_options
from livefuse.cli import build_parser
from livefuse.config import load_settings
from livefuse.errors import ConfigError
from livefuse.models.files import sha256_file
from livefuse.models.manifest import ModelSpec, load_manifest
from livefuse.runtime.backends import RUNTIMES, RunnerFactory, RunnerOptions, ort_config, parse_runtime
from livefuse.runtime.base import Runner, TensorSpec
from livefuse.runtime.engine_files import EngineMatch, EngineRecord, batch_profiles, save_engine
from livefuse.runtime.ort import OrtRunner
from livefuse.runtime.providers import Backend, RuntimeFacts, choose, ort_trt_cache_dir
from livefuse.runtime.torch_runner import memory_fraction
from livefuse.testing.standins import make_tiny

MODEL = "w600k_r50"
GIB = 1 << 30
CUDA, TRT, CPU = "CUDAExecutionProvider", "TensorrtExecutionProvider", "CPUExecutionProvider"

CPU_ONLY = RuntimeFacts(ort_providers=(CPU,))
#: A GPU box with onnxruntime-gpu (its TensorRT provider included) and nothing else.
ORT_GPU = RuntimeFacts(gpus=1, cc=(9, 0), ort_providers=(TRT, CUDA, CPU))
#: A GPU box with TensorRT and cuda-python too.
TRT_GPU = dataclasses.replace(ORT_GPU, tensorrt="10.3.0", cuda_python="12.6.0")
#: A GPU box with torch + onnx2torch and the CPU build of onnxruntime.
TORCH_GPU = RuntimeFacts(
    gpus=1, cc=(9, 0), ort_providers=(CPU,), torch="2.5.1+cu124", torch_cuda=True, onnx2torch="1.5.15"
)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelSpec, Path]:
    """The recognizer's manifest record and its tiny stand-in ONNX file (dynamic batch)."""
    return load_manifest()[MODEL], make_tiny(MODEL, tmp_path_factory.mktemp("tiny"))


def factory(facts: RuntimeFacts, engines_dir: Path, **options: Any) -> RunnerFactory:
    return RunnerFactory(RunnerOptions(**options), engines_dir, gather=lambda models, where: facts)


def feeds(batch: int = 2) -> dict[str, np.ndarray]:
    return {"input.1": np.random.default_rng(0).uniform(-1, 1, (batch, 3, 112, 112)).astype(np.float32)}


def save_engine_for(onnx: Path, engines_dir: Path) -> EngineMatch:
    record = EngineRecord(
        model=MODEL,
        onnx_sha256=sha256_file(onnx),
        trt_version="10.3.0",
        cc=(9, 0),
        precision="fp16",
        profiles=batch_profiles([("input.1", (1, 3, 112, 112))], 8),
        tensors=(),
        layer_precisions=(),
        optimization_level=3,
        workspace_bytes=GIB,
        build_seconds=1.0,
        built_at="2026-11-20T00:00:00+00:00",
    )
    return save_engine(engines_dir, b"engine", record)


# --------------------------------------------------------------------------- providers and their options


def test_cuda_provider_gets_the_budget_and_start_up_friendly_options() -> None:
    choice = choose(MODEL, ORT_GPU)
    names, options = ort_config(choice, RunnerOptions(vram_budget=6 * GIB))
    assert names == [CUDA, CPU]
    assert options == [
        {
            "device_id": "0",
            "gpu_mem_limit": str(6 * GIB),
            "arena_extend_strategy": "kSameAsRequested",
            "cudnn_conv_algo_search": "HEURISTIC",
            "do_copy_in_default_stream": "1",
        },
        {},
    ]
    _, unlimited = ort_config(choice, RunnerOptions())
    assert "gpu_mem_limit" not in unlimited[0]


def test_tensorrt_provider_loads_its_prebuilt_cache_and_nothing_else(tmp_path: Path) -> None:
    cached = dataclasses.replace(ORT_GPU, ort_trt_caches=frozenset({MODEL}))
    names, options = ort_config(choose(MODEL, cached, engines_dir=tmp_path), RunnerOptions(vram_budget=4 * GIB))
    cache = str(ort_trt_cache_dir(tmp_path, MODEL))
    assert names == [TRT, CUDA, CPU]
    assert options[0] == {
        "device_id": "0",
        "trt_fp16_enable": "1",
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": cache,
        "trt_timing_cache_enable": "1",
        "trt_timing_cache_path": cache,
        "trt_max_workspace_size": str(4 * GIB),
    }
    assert options[1]["gpu_mem_limit"] == str(4 * GIB)
    # Without a cache ORT's TensorRT provider would build engines at session start: it is left out.
    assert ort_config(choose(MODEL, ORT_GPU, engines_dir=tmp_path), RunnerOptions())[0] == [CUDA, CPU]


def test_cpu_keeps_onnxruntimes_own_order_unless_cpu_is_forced() -> None:
    assert ort_config(choose(MODEL, CPU_ONLY), RunnerOptions()) == ([], [])
    forced = choose(MODEL, ORT_GPU, allowed={Backend.CPU})
    assert ort_config(forced, RunnerOptions(runtime=Backend.CPU)) == ([CPU], [{}])


def test_providers_setting_wins_and_keeps_the_cuda_options() -> None:
    names, options = ort_config(choose(MODEL, ORT_GPU), RunnerOptions(providers=(CUDA,), vram_budget=GIB))
    assert names == [CUDA] and options[0]["gpu_mem_limit"] == str(GIB)


def test_torch_budget_is_a_share_of_the_gpu() -> None:
    assert memory_fraction(6 * GIB, 80 * GIB) == pytest.approx(0.075)
    assert memory_fraction(100 * GIB, 80 * GIB) == 1.0
    with pytest.raises(ValueError, match="must both be positive"):
        memory_fraction(0, 80 * GIB)


# --------------------------------------------------------------------------- settings


def test_runtime_and_budget_come_from_cli_environment_and_config_file(tmp_path: Path) -> None:
    config = tmp_path / "livefuse.toml"
    config.write_text('runtime = "cpu"\nvram_budget = "2GiB"\n')
    from_file = load_settings({}, env={}, config=config)
    assert (from_file.runtime.runtime, from_file.runtime.vram_budget) == ("cpu", 2 * GIB)
    env = {"LIVEFUSE_RUNTIME": "torch", "LIVEFUSE_VRAM_BUDGET": "4GiB"}
    from_env = load_settings({}, env=env, config=config)
    assert (from_env.runtime.runtime, from_env.runtime.vram_budget) == ("torch", 4 * GIB)
    args = build_parser().parse_args(
        ["run", "--input", "a.mp4", "--output", "b.mp4", "--runtime", "tensorrt", "--vram-budget", "6000MB"]
    )
    from_cli = load_settings({"runtime": args.runtime, "vram_budget": args.vram_budget}, env=env, config=config)
    assert (from_cli.runtime.runtime, from_cli.runtime.vram_budget) == ("tensorrt", 6_000_000_000)
    assert runner_options(from_cli.runtime).runtime is Backend.TENSORRT
    assert load_settings({"vram_budget": "0"}, env={}).runtime.vram_budget == 0  # 0: no limit


def test_cli_offers_exactly_the_known_runtimes(capsys: pytest.CaptureFixture[str]) -> None:
    def parse(runtime: str) -> str:
        args = build_parser().parse_args(["run", "--input", "a", "--output", "b", "--runtime", runtime])
        return str(args.runtime)

    assert [parse(name) for name in RUNTIMES] == ["auto", "cpu", "cuda", "torch", "tensorrt"]
    with pytest.raises(SystemExit):
        parse("gpu")
    assert "invalid choice: 'gpu'" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["6", "6G", "lots", "-1GiB", "6 GiBs", "0.0000001KB"])
def test_bad_budget_names_the_value_and_an_example(text: str) -> None:
    with pytest.raises(ConfigError, match=rf"--vram-budget '?{re.escape(text)}'?: .*6GiB"):
        load_settings({"vram_budget": text}, env={})


def test_unknown_runtime_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="runtime 'gpu' is unknown: use one of auto, cpu, cuda, torch, tensorrt"):
        parse_runtime("gpu")
    assert parse_runtime("TensorRT") is Backend.TENSORRT and parse_runtime("auto") is None


# --------------------------------------------------------------------------- making runners


def test_auto_on_a_cpu_machine_is_todays_onnxruntime_runner(model: tuple[ModelSpec, Path], tmp_path: Path) -> None:
    runner = factory(CPU_ONLY, tmp_path).open(*model)
    try:
        assert isinstance(runner, OrtRunner) and runner.provider == CPU
        assert runner.infer(feeds())[0].shape == (2, 512)
    finally:
        runner.close()


def test_facts_are_gathered_once_and_only_when_a_runner_is_made(model: tuple[ModelSpec, Path], tmp_path: Path) -> None:
    calls: list[Sequence[tuple[ModelSpec, Path]]] = []

    def gather(models: Sequence[tuple[ModelSpec, Path]], where: Path) -> RuntimeFacts:
        calls.append(models)
        return CPU_ONLY

    made = RunnerFactory(RunnerOptions(), tmp_path, gather=gather)
    assert calls == []
    for _ in range(2):
        made.open(*model).close()
    assert len(calls) == 1


def test_tensorrt_that_does_not_import_falls_back_to_onnxruntime(
    model: tuple[ModelSpec, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    save_engine_for(model[1], tmp_path)
    monkeypatch.setitem(sys.modules, "livefuse.runtime.trt", None)  # 'import livefuse.runtime.trt' fails
    with caplog.at_level(logging.INFO):
        runner = factory(TRT_GPU, tmp_path).open(*model)
    runner.close()
    assert isinstance(runner, OrtRunner)
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith(f"model {MODEL} runs on tensorrt") for m in messages)
    assert any(f"model {MODEL}: tensorrt cannot be used" in m and "trying the next backend" in m for m in messages)
    assert any(m.startswith(f"model {MODEL} runs on onnxruntime-cuda") for m in messages)


class _Recorded(Runner):
    """Stands in for a GPU runner: records how it was made, runs nothing."""

    made: list[_Recorded] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(str(kwargs.get("name")))
        self.args, self.kwargs = args, kwargs
        _Recorded.made.append(self)

    def activate_impl(self) -> None:
        pass

    def infer_impl(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError

    def close_impl(self) -> None:
        pass

    provider = "recorded"
    inputs: list[TensorSpec] = []
    outputs: list[TensorSpec] = []


class _NoGpuTorch(_Recorded):
    def activate_impl(self) -> None:
        raise ConfigError("this torch sees no CUDA GPU")


def test_tensorrt_runner_gets_the_engine_and_the_budget(
    model: tuple[ModelSpec, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    saved = save_engine_for(model[1], tmp_path)
    monkeypatch.setitem(sys.modules, "livefuse.runtime.trt", types.SimpleNamespace(TrtRunner=_Recorded))
    monkeypatch.setattr(_Recorded, "made", [])
    runner = factory(TRT_GPU, tmp_path, vram_budget=6 * GIB).open(*model)
    assert isinstance(runner, _Recorded) and runner.is_active
    assert runner.args == (model[0], tmp_path)
    # The hash the engine was matched by, so the runner loads the engine the choice saw.
    assert runner.kwargs == {
        "onnx_sha256": saved.record.onnx_sha256,
        "weight_budget": 6 * GIB,
        "device": 0,
        "name": MODEL,
    }


def test_torch_runner_is_cuda_fp16_with_the_budget_and_falls_back_when_it_cannot_start(
    model: tuple[ModelSpec, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("livefuse.runtime.backends.TorchRunner", _NoGpuTorch)
    monkeypatch.setattr(_Recorded, "made", [])
    with caplog.at_level(logging.WARNING):
        runner = factory(TORCH_GPU, tmp_path, vram_budget=GIB).open(*model)
    with runner:
        assert isinstance(runner, OrtRunner) and runner.provider == CPU
    (torch,) = _Recorded.made
    assert torch.args == (model[1],)
    assert torch.kwargs == {"name": MODEL, "device": "cuda:0", "fp16": True, "vram_budget": GIB}
    assert "torch-cuda cannot be used (this torch sees no CUDA GPU)" in caplog.text


def test_providers_setting_keeps_auto_on_onnxruntime(
    model: tuple[ModelSpec, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("livefuse.runtime.backends.TorchRunner", _Recorded)
    monkeypatch.setattr(_Recorded, "made", [])
    runner = factory(TORCH_GPU, tmp_path, providers=(CPU,)).open(*model)
    runner.close()
    assert isinstance(runner, OrtRunner) and _Recorded.made == []


def test_forced_cpu_ignores_the_gpu(model: tuple[ModelSpec, Path], tmp_path: Path) -> None:
    with factory(ORT_GPU, tmp_path, runtime=Backend.CPU).open(*model) as runner:
        assert isinstance(runner, OrtRunner) and runner.provider == CPU


NO_ORT_GPU = dataclasses.replace(ORT_GPU, ort_providers=(CPU,))

FORCED_MISSING = [
    ("no GPU", CPU_ONLY, Backend.TENSORRT, "no CUDA GPU", "'livefuse doctor' says why"),
    ("no TensorRT", ORT_GPU, Backend.TENSORRT, "TensorRT is not installed", "pip install 'livefuse[tensorrt]'"),
    ("no engine", TRT_GPU, Backend.TENSORRT, "there is no TensorRT engine", "scripts/build_engines.py --model"),
    ("CPU onnxruntime", NO_ORT_GPU, Backend.ORT_CUDA, "no CUDA provider", "pip install onnxruntime-gpu"),
    (
        "no torch",
        ORT_GPU,
        Backend.TORCH_CUDA,
        "torch and onnx2torch are not installed",
        "pip install 'livefuse[torch]'",
    ),
]


@pytest.mark.parametrize(
    ("known", "backend", "why", "fix"), [c[1:] for c in FORCED_MISSING], ids=[c[0] for c in FORCED_MISSING]
)
def test_forced_runtime_that_is_missing_says_what_and_how_to_get_it(
    model: tuple[ModelSpec, Path], tmp_path: Path, known: RuntimeFacts, backend: Backend, why: str, fix: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        factory(known, tmp_path / "engines", runtime=backend).open(*model)
    message = str(raised.value)
    assert f"({backend.value}) was asked for, but model '{MODEL}' cannot run on it" in message
    assert why in message and fix in message and "or use --runtime auto" in message


def test_forced_tensorrt_that_does_not_import_is_a_config_error(
    model: tuple[ModelSpec, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_engine_for(model[1], tmp_path)
    monkeypatch.setitem(sys.modules, "livefuse.runtime.trt", None)
    with pytest.raises(
        ConfigError,
        match=r"runtime 'tensorrt' \(tensorrt\) was asked for, but it does not import.*"
        r"livefuse\[tensorrt\]",
    ):
        factory(TRT_GPU, tmp_path, runtime=Backend.TENSORRT).open(*model)


# --------------------------------------------------------------------------- the engine


def test_engine_refuses_a_forced_runtime_this_machine_lacks(
    livefuse_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("livefuse.runtime.backends.gather_facts", lambda models, where: CPU_ONLY)
    with pytest.raises(ConfigError, match="runtime 'cuda' .*no CUDA GPU"):
        Engine(load_settings({"home": str(livefuse_home), "runtime": "cuda"}, env={}))


def test_engine_checks_the_budget_before_loading_any_model(livefuse_home: Path) -> None:
    with pytest.raises(ConfigError, match="--vram-budget 'six gigs': is not a memory size"):
        Engine(load_settings({"home": str(livefuse_home), "vram_budget": "six gigs"}, env={}))


def test_engine_with_forced_cpu_runs_like_auto_on_a_cpu_machine(livefuse_home: Path) -> None:
    with Engine(load_settings({"home": str(livefuse_home), "runtime": "cpu", "vram_budget": "2GiB"}, env={})) as engine:
        assert engine.runner("centerface").provider == CPU


def _ort_cuda_works() -> bool:
    import onnxruntime

    from livefuse.runtime.providers import driver_present

    return CUDA in onnxruntime.get_available_providers() and driver_present()


@pytest.mark.gpu
@pytest.mark.skipif(not _ort_cuda_works(), reason="needs onnxruntime-gpu and an NVIDIA GPU")
def test_engine_on_onnxruntime_cuda_uses_the_gpu(livefuse_home: Path) -> None:
    settings = load_settings({"home": str(livefuse_home), "runtime": "cuda", "vram_budget": "2GiB"}, env={})
    with Engine(settings) as engine:
        assert engine.runner("centerface").provider == CUDA


def test_a_hash_the_caller_verified_is_not_computed_again(
    model: tuple[ModelSpec, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Engine passes the store's verified sha256: matching the engine reads no file."""
    saved = save_engine_for(model[1], tmp_path)
    monkeypatch.setitem(sys.modules, "livefuse.runtime.trt", types.SimpleNamespace(TrtRunner=_Recorded))
    monkeypatch.setattr(_Recorded, "made", [])
    hashed: list[Path] = []
    monkeypatch.setattr("livefuse.runtime.backends.sha256_file", lambda path: hashed.append(path) or "")
    runner = factory(TRT_GPU, tmp_path).open(*model, onnx_sha256=saved.record.onnx_sha256)
    assert isinstance(runner, _Recorded) and runner.kwargs["onnx_sha256"] == saved.record.onnx_sha256
    assert hashed == []
