"""``livefuse doctor``: diagnosis from recorded facts (machines we do not have), and one real run."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import MappingProxyType

import pytest

from livefuse.cli import main
from livefuse.doctor import Facts, GpuFacts, diagnose, gather, needed_driver, render
from livefuse.runtime.providers import RuntimeFacts

H100 = (GpuFacts("NVIDIA H100 80GB HBM3", (9, 0), 81559),)
RTX3060 = (GpuFacts("NVIDIA GeForce RTX 3060", (8, 6), 12288),)
CPU_RT = RuntimeFacts(ort_providers=("CPUExecutionProvider",))
ORT_GPU_RT = RuntimeFacts(gpus=1, cc=(9, 0), ort_providers=("CUDAExecutionProvider", "CPUExecutionProvider"))
TRT_RT = dataclasses.replace(
    ORT_GPU_RT, tensorrt="10.3.0", cuda_python="12.6.0", engines=MappingProxyType({"inswapper_128": Path("e.engine")})
)


def facts(**changes: object) -> Facts:
    base = Facts(os="Linux-6.8.0-x86_64-with-glibc2.39", python="CPython 3.11.9", runtime=CPU_RT)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def mapping(**items: str) -> MappingProxyType[str, str]:
    return MappingProxyType({k.replace("_", "-"): v for k, v in items.items()})


#: Healthy H100 server: driver 550 (CUDA 12.4), TensorRT, an engine that fits.
HEALTHY = facts(
    driver="550.54.14",
    driver_cuda="12.4",
    gpus=H100,
    cudnn="nvidia-cudnn-cu12 9.1.0",
    cuda_runtimes=mapping(cuda_python="12.4", torch="12.4"),
    packages=mapping(onnxruntime_gpu="1.18.0"),
    runtime=TRT_RT,
    models=("inswapper_128",),
)

# (name, facts, expected (code, severity) pairs, words in the first problem's message or fix)
TABLE = [
    ("cpu laptop", facts(), [("cpu-mode", "info")], "runs on the CPU"),
    ("healthy H100", HEALTHY, [], None),
    (
        "driver from the CUDA 11 era, onnxruntime-gpu for CUDA 12",
        facts(
            driver="470.182.03",
            driver_cuda="11.4",
            gpus=RTX3060,
            cudnn="libcudnn.so.9",
            cuda_runtimes=mapping(onnxruntime_gpu="12.2"),
            packages=mapping(onnxruntime_gpu="1.18.0"),
            runtime=ORT_GPU_RT,
        ),
        [("driver-insufficient", "error")],
        "CUDA driver version is insufficient",
    ),
    (
        "driver 535 (CUDA 12.2), torch built for CUDA 12.4",
        facts(driver="535.104.05", driver_cuda="12.2", gpus=H100, cuda_runtimes=mapping(torch="12.4")),
        [("driver-old", "warning")],
        "550.54.14",
    ),
    (
        "windows driver below the CUDA 12 floor, version only",
        facts(os="Windows-10-10.0.19045-SP0", driver="526.98", gpus=RTX3060, cuda_runtimes=mapping(torch="12.1")),
        [("driver-insufficient", "error")],
        "531.14",
    ),
    (
        "onnxruntime and onnxruntime-gpu together",
        facts(packages=mapping(onnxruntime="1.17.0", onnxruntime_gpu="1.17.0")),
        [("ort-conflict", "error"), ("no-driver", "warning")],
        "pip uninstall -y onnxruntime onnxruntime-gpu",
    ),
    (
        "onnxruntime-gpu without cuDNN",
        facts(
            driver="550.54.14",
            driver_cuda="12.4",
            gpus=H100,
            packages=mapping(onnxruntime_gpu="1.18.0"),
            runtime=ORT_GPU_RT,
        ),
        [("cudnn-missing", "error")],
        "nvidia-cudnn-cu12",
    ),
    ("WSL 2 without GPU passthrough", facts(wsl=True, wsl_gpu=False), [("wsl-no-gpu", "warning")], "wsl --update"),
    (
        "WSL 2 with passthrough",
        facts(wsl=True, wsl_gpu=True, driver="552.22", driver_cuda="12.4", gpus=RTX3060),
        [],
        None,
    ),
    (
        "TensorRT wheel without its libraries",
        facts(
            driver="550.54.14",
            driver_cuda="12.4",
            gpus=H100,
            runtime=dataclasses.replace(
                CPU_RT,
                gpus=1,
                tensorrt_error="TensorRT is installed but does not load "
                "(OSError: libnvinfer.so.10: cannot open shared object file)",
            ),
        ),
        [("tensorrt-libs", "error")],
        "libnvinfer",
    ),
    (
        "TensorRT without cuda-python",
        dataclasses.replace(HEALTHY, runtime=dataclasses.replace(TRT_RT, cuda_python=None)),
        [("no-cuda-python", "warning")],
        "pip install 'livefuse[cuda]'",
    ),
    (
        "GPU packages, no driver (container started without --gpus)",
        facts(packages=mapping(onnxruntime_gpu="1.18.0"), cudnn="libcudnn.so.9"),
        [("no-driver", "warning")],
        "--gpus all",
    ),
    (
        "engine built by another TensorRT",
        dataclasses.replace(
            HEALTHY,
            runtime=dataclasses.replace(
                TRT_RT,
                engines=MappingProxyType({}),
                engine_problems=MappingProxyType({"inswapper_128": "other TensorRT: built with TensorRT 10.1.0"}),
            ),
        ),
        [("engine:inswapper_128", "warning")],
        "python scripts/build_engines.py --model inswapper_128",
    ),
]


@pytest.mark.parametrize(("known", "expected", "words"), [t[1:] for t in TABLE], ids=[t[0] for t in TABLE])
def test_diagnosis_from_recorded_facts(known: Facts, expected: list[tuple[str, str]], words: str | None) -> None:
    problems = diagnose(known)
    assert [(p.code, p.severity) for p in problems] == expected
    assert all(p.fix for p in problems)
    if words is not None:
        assert words in problems[0].message + problems[0].fix


def test_driver_table() -> None:
    assert needed_driver("12.4") == "550.54.14"
    assert needed_driver("12.7") == "560.28.03"  # no 12.7 release: the newest listed below it
    assert needed_driver("12.9", windows=True) == "576.02"
    assert needed_driver("10.2") is None


def test_report_lists_facts_problems_and_fixes() -> None:
    known = dataclasses.replace(TABLE[2][1], models=("inswapper_128",), pinned_gbs=(24.1, 25.3))  # type: ignore[arg-type]
    text = render(known, diagnose(known))
    assert "NVIDIA GeForce RTX 3060, compute capability 8.6, 12 GiB" in text
    assert "onnxruntime-gpu built for 12.2 (driver >= 535.54.03)" in text
    assert "H2D 24.1 GB/s, D2H 25.3 GB/s" in text
    assert "inswapper_128: runs on onnxruntime-cuda" in text
    assert "[error] CUDA driver version is insufficient" in text and "    fix: update the NVIDIA driver" in text


def test_gathering_on_this_machine_works(tmp_path: Path) -> None:
    found = gather(tmp_path, probe_bandwidth=False)
    assert found.python and found.os and found.models == ()
    if not found.gpus and not found.runtime.gpus:
        codes = [p.code for p in diagnose(found)]
        assert "cpu-mode" in codes or "wsl-no-gpu" in codes or "no-driver" in codes


def test_doctor_command_prints_the_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["doctor", "--home", str(tmp_path), "--no-probe"])
    out = capsys.readouterr().out
    assert out.startswith("livefuse doctor\n") and "NVIDIA driver" in out and "fix:" in out
    problems = diagnose(gather(tmp_path, probe_bandwidth=False))
    assert code == (1 if any(p.blocks for p in problems) else 0)


def test_report_says_why_each_model_runs_where_it_does() -> None:
    """Per model: the backend auto picks, its reason, and why each better one was passed over."""
    runtime = dataclasses.replace(
        TRT_RT, engine_problems=MappingProxyType({"w600k_r50": "other TensorRT: built with TensorRT 10.1.0"})
    )
    known = dataclasses.replace(HEALTHY, runtime=runtime, models=("inswapper_128", "w600k_r50"))
    lines = render(known, diagnose(known)).splitlines()
    at = lines.index(
        "  models         inswapper_128: runs on tensorrt (prebuilt engine fits TensorRT 10.3.0 and "
        "compute capability 9.0)"
    )
    assert lines[at + 1 : at + 3] == [
        "                 w600k_r50: runs on onnxruntime-cuda (CUDA provider)",
        "                   not tensorrt: other TensorRT: built with TensorRT 10.1.0",
    ]
