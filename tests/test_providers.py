"""Backend selection from recorded facts: TensorRT → ORT CUDA (+ its TensorRT EP) → torch CUDA → CPU."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from types import MappingProxyType

import pytest

from livefuse.models.manifest import load_manifest
from livefuse.runtime.engine_files import EngineRecord, batch_profiles, save_engine
from livefuse.runtime.providers import (
    Backend,
    RuntimeFacts,
    choose,
    choose_all,
    gather_facts,
    ort_trt_cache_dir,
)
from livefuse.testing.standins import make_tiny

ENGINE = Path("engines/inswapper_128-a290273ed497-trt10.3.0-sm90-fp16.engine")

#: An H100 box with everything installed and an engine for inswapper_128 only.
FULL = RuntimeFacts(
    gpus=1,
    cc=(9, 0),
    tensorrt="10.3.0",
    cuda_python="12.6.0",
    ort_providers=("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
    torch="2.5.1+cu124",
    torch_cuda=True,
    onnx2torch="1.5.15",
    engines=MappingProxyType({"inswapper_128": ENGINE}),
    engine_problems=MappingProxyType({"gfpgan_1.4": "the ONNX file changed: ..."}),
)
CPU_ONLY = RuntimeFacts(ort_providers=("CPUExecutionProvider",))
OLD_DRIVER = dataclasses.replace(FULL, gpus=0, cc=None, cuda_error="CUDA 12.9 needs a newer driver")


def facts(**changes: object) -> RuntimeFacts:
    return dataclasses.replace(FULL, **changes)  # type: ignore[arg-type]


# (facts, model) → (backend, words in the reason of the first passed-over backend)
TABLE = [
    (FULL, "inswapper_128", Backend.TENSORRT, None),
    (FULL, "gfpgan_1.4", Backend.ORT_CUDA, "the ONNX file changed"),
    (FULL, "w600k_r50", Backend.ORT_CUDA, "no engine was checked"),
    (facts(tensorrt=None), "inswapper_128", Backend.ORT_CUDA, "TensorRT is not installed"),
    (
        facts(tensorrt=None, tensorrt_error="TensorRT is installed but does not load (libnvinfer.so.10)"),
        "inswapper_128",
        Backend.ORT_CUDA,
        "libnvinfer",
    ),
    (facts(cuda_python=None), "inswapper_128", Backend.ORT_CUDA, "cuda-python is not installed"),
    (facts(ort_providers=("CPUExecutionProvider",)), "gfpgan_1.4", Backend.TORCH_CUDA, "the ONNX file changed"),
    (facts(ort_providers=("CPUExecutionProvider",), torch_cuda=False), "gfpgan_1.4", Backend.CPU, None),
    (facts(ort_providers=("CPUExecutionProvider",), onnx2torch=None), "gfpgan_1.4", Backend.CPU, None),
    (OLD_DRIVER, "inswapper_128", Backend.CPU, "needs a newer driver"),
    (CPU_ONLY, "inswapper_128", Backend.CPU, "no CUDA GPU"),
]


@pytest.mark.parametrize(("known", "model", "backend", "words"), TABLE)
def test_choice_follows_the_order(known: RuntimeFacts, model: str, backend: Backend, words: str | None) -> None:
    choice = choose(model, known)
    assert choice.backend is backend
    assert [b for b, _ in choice.passed_over] == list(Backend)[: list(Backend).index(backend)]
    if words is not None:
        assert words in choice.passed_over[0][1]


def test_tensorrt_choice_carries_the_engine() -> None:
    choice = choose("inswapper_128", FULL)
    assert choice.engine == ENGINE and "TensorRT 10.3.0" in choice.reason and choice.passed_over == ()


def test_ort_tensorrt_provider_only_with_a_prebuilt_cache() -> None:
    """Without a cache ORT's TensorRT provider would build engines at session start."""
    plain = choose("gfpgan_1.4", FULL)
    assert plain.ort_providers == ("CUDAExecutionProvider", "CPUExecutionProvider")
    cached = choose("gfpgan_1.4", facts(ort_trt_caches=frozenset({"gfpgan_1.4"})), engines_dir=Path("eng"))
    assert cached.ort_providers[0] == "TensorrtExecutionProvider"
    assert cached.ort_trt_cache == Path("eng/ort-trt/gfpgan_1.4")


def test_cpu_keeps_ort_runners_own_provider_order() -> None:
    choice = choose("inswapper_128", CPU_ONLY)
    assert choice.backend is Backend.CPU and choice.ort_providers == ()  # OrtRunner decides, as today


def test_summary_states_a_shared_reason_once() -> None:
    line = choose("inswapper_128", OLD_DRIVER).summary()
    assert line.count("needs a newer driver") == 1
    assert "not tensorrt, onnxruntime-cuda, torch-cuda: no CUDA GPU (CUDA 12.9 needs a newer driver)" in line


def test_allowed_narrows_but_the_cpu_fallback_always_remains() -> None:
    choice = choose("inswapper_128", FULL, allowed={Backend.TORCH_CUDA})
    assert choice.backend is Backend.TORCH_CUDA
    assert choice.passed_over[0] == (Backend.TENSORRT, "not among the allowed backends")
    assert choose("inswapper_128", FULL, allowed=set()).backend is Backend.CPU


def test_every_decision_is_logged_with_its_reasons(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="livefuse.runtime.providers"):
        choices = choose_all(["inswapper_128", "gfpgan_1.4"], FULL)
    assert [r.getMessage() for r in caplog.records] == [c.summary() for c in choices.values()]
    assert (
        caplog.records[1]
        .getMessage()
        .startswith("model gfpgan_1.4 runs on onnxruntime-cuda (CUDA provider); not tensorrt: the ONNX file changed")
    )


def test_gathered_facts_on_this_machine_choose_a_backend_that_works_here(tmp_path: Path) -> None:
    """On a CPU-only machine this is the CPU; on a GPU machine something above it."""
    spec = load_manifest()["inswapper_128"]
    onnx = make_tiny("inswapper_128", tmp_path)
    found = gather_facts([(spec, onnx)], tmp_path / "engines")
    assert "CPUExecutionProvider" in found.ort_providers
    choice = choose("inswapper_128", found)
    if found.gpus == 0:
        assert choice.backend is Backend.CPU and found.engines == {} and found.torch_cuda is False


def test_gather_matches_engines_against_the_installed_files_hash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With TensorRT and a GPU reported (faked: this is about the matching), the installed ONNX
    file's own hash picks the engine, and an engine of another file is explained."""
    import livefuse.runtime.providers as providers

    manifest = load_manifest()
    swap, face = manifest["inswapper_128"], manifest["w600k_r50"]
    onnx_swap, onnx_face = make_tiny("inswapper_128", tmp_path), make_tiny("w600k_r50", tmp_path)
    from livefuse.models.files import sha256_file

    engines = tmp_path / "engines"
    base = EngineRecord(
        model="inswapper_128",
        onnx_sha256=sha256_file(onnx_swap),
        trt_version="10.3.0",
        cc=(9, 0),
        precision="fp16",
        profiles=batch_profiles([("target", (1, 3, 128, 128))], 8),
        tensors=(),
        layer_precisions=(),
        optimization_level=3,
        workspace_bytes=1 << 30,
        build_seconds=1.0,
        built_at="2026-11-20T00:00:00+00:00",
    )
    saved = save_engine(engines, b"swap", base)
    save_engine(engines, b"face", dataclasses.replace(base, model="w600k_r50", onnx_sha256="1" * 64))
    ort_trt_cache_dir(engines, "w600k_r50").mkdir(parents=True)
    (ort_trt_cache_dir(engines, "w600k_r50") / "x.engine").write_bytes(b"")
    monkeypatch.setattr(providers, "_gpu_from_cuda_python", lambda: providers._Gpu(1, (9, 0)))
    monkeypatch.setattr(providers, "_tensorrt", lambda: ("10.3.0", ""))
    found = gather_facts([(swap, onnx_swap), (face, onnx_face)], engines)
    assert found.gpus == 1 and found.engines == {"inswapper_128": saved.path}
    assert "the ONNX file changed" in found.engine_problems["w600k_r50"]
    assert found.ort_trt_caches == {"w600k_r50"}
