"""``livefuse doctor``: what this machine has for running livefuse, and what to fix.

:func:`gather` collects :class:`Facts` (OS, Python, NVIDIA driver, CUDA runtimes and the driver
each needs, GPUs, ONNX Runtime/TensorRT/torch and their providers, cuDNN, a pinned-memory
bandwidth probe, and whether each installed model has a matching TensorRT engine).
:func:`diagnose` is a pure function from facts to :class:`Problem` s, each with its fix, so it
is tested with recorded facts from machines we do not have. :func:`render` makes the report.
Longer than most modules because it is one table of facts and the problems they imply.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.metadata
import logging
import platform
import re
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from livefuse.models.manifest import ModelSpec
from livefuse.models.store import ModelStore
from livefuse.runtime.engine_files import build_command, cc_text, default_engines_dir
from livefuse.runtime.providers import NVIDIA_PROC, RuntimeFacts, choose, gather_facts

log = logging.getLogger(__name__)

Severity = Literal["error", "warning", "info"]

#: CUDA toolkit → the driver it ships with and needs for every feature, (Linux, Windows).
#: From the "CUDA Toolkit and Corresponding Driver Versions" table of NVIDIA's CUDA release notes.
TOOLKIT_DRIVER: Mapping[tuple[int, int], tuple[str, str | None]] = MappingProxyType(
    {
        (11, 8): ("520.61.05", "520.06"),
        (12, 0): ("525.60.13", "527.41"),
        (12, 1): ("530.30.02", "531.14"),
        (12, 2): ("535.54.03", "536.25"),
        (12, 3): ("545.23.06", "545.84"),
        (12, 4): ("550.54.14", "551.61"),
        (12, 5): ("555.42.02", "555.85"),
        (12, 6): ("560.28.03", "560.76"),
        (12, 8): ("570.26", "570.65"),
        (12, 9): ("575.51.03", "576.02"),
        (13, 0): ("580.65.06", None),
    }
)

#: CUDA major → the oldest driver that runs it at all (minor version compatibility: no PTX JIT).
MINOR_COMPAT_DRIVER: Mapping[int, tuple[str, str | None]] = MappingProxyType(
    {11: ("450.80.02", "452.39"), 12: ("525.60.13", "528.33"), 13: ("580.65.06", None)}
)

#: Distributions that all install the same ``onnxruntime`` package: only one may be installed.
ORT_DISTRIBUTIONS = (
    "onnxruntime",
    "onnxruntime-gpu",
    "onnxruntime-directml",
    "onnxruntime-openvino",
    "onnxruntime-silicon",
    "onnxruntime-qnn",
)

#: Distributions whose version the report shows.
PACKAGES = (
    *ORT_DISTRIBUTIONS,
    "tensorrt",
    "tensorrt-cu12",
    "tensorrt-cu13",
    "torch",
    "onnx2torch",
    "cuda-python",
    "cuda-bindings",
    "nvidia-cudnn-cu12",
    "nvidia-cudnn-cu13",
)


@dataclass(frozen=True, slots=True)
class GpuFacts:
    """One GPU."""

    name: str
    cc: tuple[int, int] | None
    memory_mib: int | None


@dataclass(frozen=True, slots=True)
class Facts:
    """Everything :func:`diagnose` looks at. Every field has a 'not known / not there' value."""

    os: str
    python: str
    wsl: bool = False
    "Running under WSL 2."
    wsl_gpu: bool = False
    "WSL's GPU passthrough device (/dev/dxg) is there."
    driver: str | None = None
    "NVIDIA driver version, e.g. ``550.54.14``."
    driver_cuda: str | None = None
    "The newest CUDA the driver supports, e.g. ``12.4``."
    cuda_runtimes: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    "What was built against which CUDA, e.g. ``{'torch': '12.4', 'onnxruntime-gpu': '12.2'}``."
    gpus: tuple[GpuFacts, ...] = ()
    packages: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    "Installed distributions of interest → version."
    cudnn: str | None = None
    "Where cuDNN was found; None when it was looked for and not found, or not looked for."
    pinned_gbs: tuple[float, float] | None = None
    "Measured pinned H2D and D2H bandwidth, GB/s (only when CUDA works)."
    models: tuple[str, ...] = ()
    "Installed (verified) models."
    runtime: RuntimeFacts = field(default_factory=RuntimeFacts)
    "What backend selection sees, engines included."


@dataclass(frozen=True, slots=True)
class Problem:
    """Something to fix (``error``: livefuse cannot run as installed), to improve (``warning``),
    or to know (``info``)."""

    code: str
    severity: Severity
    message: str
    fix: str

    @property
    def blocks(self) -> bool:
        """True for errors: ``livefuse doctor`` then exits 1."""
        return self.severity == "error"


# --------------------------------------------------------------------------- diagnosis


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text))


def _major_minor(text: str) -> tuple[int, int]:
    parts = version_tuple(text) + (0, 0)
    return parts[0], parts[1]


def needed_driver(cuda: str, windows: bool = False) -> str | None:
    """The driver CUDA ``cuda`` (e.g. "12.4") ships with: the newest listed at or below it."""
    want = _major_minor(cuda)
    known = [k for k in TOOLKIT_DRIVER if k[0] == want[0] and k <= want]
    if not known:
        return None
    linux, win = TOOLKIT_DRIVER[max(known)]
    return win if windows else linux


def _driver_problems(facts: Facts) -> list[Problem]:
    if not facts.cuda_runtimes or (facts.driver is None and facts.driver_cuda is None):
        return []
    windows = facts.os.lower().startswith("windows")
    out = []
    for who, cuda in sorted(facts.cuda_runtimes.items()):
        problem = _driver_vs_runtime(facts, who, cuda, windows)
        if problem is not None:
            out.append(problem)
    return out


def _driver_vs_runtime(facts: Facts, who: str, cuda: str, windows: bool) -> Problem | None:
    need = needed_driver(cuda, windows)
    ships = f" (CUDA {cuda} ships with driver {need})" if need else ""
    fix = f"update the NVIDIA driver to {need} or newer" if need else "update the NVIDIA driver"
    fix += f", or install a {who} built for the CUDA your driver supports"
    oldest = MINOR_COMPAT_DRIVER.get(_major_minor(cuda)[0])
    floor = oldest[1 if windows else 0] if oldest else None
    too_old = (facts.driver_cuda is not None and _major_minor(facts.driver_cuda)[0] < _major_minor(cuda)[0]) or (
        facts.driver is not None and floor is not None and version_tuple(facts.driver) < version_tuple(floor)
    )
    if too_old:
        return Problem(
            "driver-insufficient",
            "error",
            f"CUDA driver version is insufficient: {who} needs CUDA {cuda}, the driver "
            f"{facts.driver or ''} supports CUDA {facts.driver_cuda or 'older'}{ships}",
            fix,
        )
    if facts.driver_cuda is not None and _major_minor(facts.driver_cuda) < _major_minor(cuda):
        return Problem(
            "driver-old",
            "warning",
            f"{who} needs CUDA {cuda}, the driver supports {facts.driver_cuda}: it runs through "
            f"CUDA minor version compatibility, without PTX JIT{ships}",
            fix,
        )
    return None


def _ort_problems(facts: Facts) -> list[Problem]:
    present = [d for d in ORT_DISTRIBUTIONS if d in facts.packages]
    out = []
    if len(present) > 1:
        out.append(
            Problem(
                "ort-conflict",
                "error",
                f"{' and '.join(present)} are installed together: they overwrite each other's files in the "
                "same 'onnxruntime' package, so which one you get (and whether it imports at all) is luck",
                f"pip uninstall -y {' '.join(present)}, then install only one: onnxruntime-gpu for an NVIDIA "
                "GPU, onnxruntime otherwise",
            )
        )
    if "CUDAExecutionProvider" in facts.runtime.ort_providers and facts.cudnn is None:
        out.append(
            Problem(
                "cudnn-missing",
                "error",
                "onnxruntime-gpu is installed but cuDNN was not found: its CUDA provider fails to load and "
                "ONNX Runtime silently runs on the CPU",
                "pip install nvidia-cudnn-cu12 (cuDNN 9, for CUDA 12 builds of onnxruntime-gpu), or install "
                "cuDNN 9 from NVIDIA and put it on the library path",
            )
        )
    return out


def _gpu_packages(facts: Facts) -> list[str]:
    gpu = ("onnxruntime-gpu", "tensorrt", "tensorrt-cu12", "tensorrt-cu13", "cuda-python", "cuda-bindings")
    found = [p for p in gpu if p in facts.packages]
    if facts.cuda_runtimes.get("torch"):
        found.append("torch (CUDA build)")
    return found


def _gpu_problems(facts: Facts) -> list[Problem]:
    if facts.gpus or facts.runtime.gpus:
        return []
    if facts.wsl and not facts.wsl_gpu:
        return [
            Problem(
                "wsl-no-gpu",
                "warning",
                "this is WSL 2 without GPU passthrough (no /dev/dxg): the GPU is invisible, livefuse runs on the CPU",
                "install the current NVIDIA driver on Windows (it includes WSL support; install no Linux driver "
                "inside WSL), run 'wsl --update' and 'wsl --shutdown', then check 'nvidia-smi' inside WSL",
            )
        ]
    gpu_packages = _gpu_packages(facts)
    if gpu_packages and facts.driver is None:
        return [
            Problem(
                "no-driver",
                "warning",
                f"GPU packages are installed ({', '.join(gpu_packages)}) but no NVIDIA driver is loaded: "
                "livefuse runs on the CPU",
                "install the NVIDIA driver (check with 'nvidia-smi'); in a container, start it with GPU access "
                "(docker run --gpus all)",
            )
        ]
    return [
        Problem(
            "cpu-mode",
            "info",
            "no NVIDIA GPU: livefuse runs on the CPU. That is fine for the built-in mesh swapper and for "
            "trying things out; neural swapping at live frame rates needs an NVIDIA GPU",
            "nothing to do; with an NVIDIA GPU, install onnxruntime-gpu (in place of onnxruntime), or TensorRT "
            "(pip install tensorrt-cu12 cuda-python) and build engines",
        )
    ]


def _tensorrt_problems(facts: Facts) -> list[Problem]:
    rt = facts.runtime
    out = []
    if rt.tensorrt_error:
        out.append(
            Problem(
                "tensorrt-libs",
                "error",
                f"TensorRT libraries not found: {rt.tensorrt_error}",
                "pip install --force-reinstall tensorrt-cu12 (the wheels bring libnvinfer), or put TensorRT's "
                "lib directory on LD_LIBRARY_PATH (PATH on Windows)",
            )
        )
    if rt.tensorrt is not None and rt.cuda_python is None:
        out.append(
            Problem(
                "no-cuda-python",
                "warning",
                "TensorRT is installed but cuda-python is not: the TensorRT runner needs it for streams and memory",
                "pip install 'livefuse[cuda]' (cuda-python ships as wheels; no CUDA toolkit needed)",
            )
        )
    return out


def _engine_problems(facts: Facts) -> list[Problem]:
    rt = facts.runtime
    if rt.tensorrt is None or not rt.gpus:
        return []
    return [
        Problem(f"engine:{model}", "warning", why, build_command(model))
        for model, why in sorted(rt.engine_problems.items())
    ]


#: Every check, in the order the report lists their problems.
CHECKS: tuple[Callable[[Facts], list[Problem]], ...] = (
    _ort_problems,
    _driver_problems,
    _tensorrt_problems,
    _gpu_problems,
    _engine_problems,
)


def diagnose(facts: Facts) -> list[Problem]:
    """The problems ``facts`` show, each with its fix (errors first). Pure."""
    problems = [p for check in CHECKS for p in check(facts)]
    order = {"error": 0, "warning": 1, "info": 2}
    return sorted(problems, key=lambda p: order[p.severity])


# --------------------------------------------------------------------------- gathering


def _run(cmd: Sequence[str]) -> str | None:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def _nvidia_smi() -> tuple[str | None, str | None, tuple[GpuFacts, ...]]:
    """Driver version, the CUDA it supports, and the GPUs, from nvidia-smi (when it runs)."""
    query = _run(
        ["nvidia-smi", "--query-gpu=driver_version,name,compute_cap,memory.total", "--format=csv,noheader,nounits"]
    )
    if query is None:
        return None, None, ()
    gpus, driver = [], None
    for line in query.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 4:
            driver = parts[0]
            cc = _major_minor(parts[2]) if re.fullmatch(r"\d+\.\d+", parts[2]) else None
            gpus.append(GpuFacts(parts[1], cc, int(parts[3]) if parts[3].isdigit() else None))
    header = _run(["nvidia-smi"]) or ""
    cuda = re.search(r"CUDA Version:\s*(\d+\.\d+)", header)
    return driver, cuda[1] if cuda else None, tuple(gpus)


def _proc_driver() -> str | None:
    try:
        text = NVIDIA_PROC.read_text()
    except OSError:
        return None
    found = re.search(r"Kernel Module(?: for \S+)?\s+(\d+\.\d+(?:\.\d+)?)", text)
    return found[1] if found else None


def _packages() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def _cuda_python_facts(
    probe_bandwidth: bool,
) -> tuple[str | None, str | None, tuple[GpuFacts, ...], tuple[float, float] | None]:
    """Driver CUDA, runtime CUDA, GPUs and pinned bandwidth via cuda-python (when installed)."""
    try:
        from livefuse.runtime import cuda
    except ImportError:
        return None, None, (), None
    try:
        found = cuda.probe()
        gpus = tuple(GpuFacts(g.name, g.cc, g.total_bytes >> 20) for g in found.gpus)
        bandwidth = cuda.pinned_bandwidth() if gpus and probe_bandwidth else None
    except cuda.CudaError as exc:
        log.warning("CUDA probe failed: %s", exc)
        return None, None, (), None
    driver_cuda = cuda.version_text(found.driver_version) if found.driver_version else None
    return driver_cuda, cuda.version_text(found.runtime_version), gpus, bandwidth


def _ort_cuda_version() -> str | None:
    try:
        from onnxruntime.capi import build_and_package_info as info
    except ImportError:
        return None
    version = getattr(info, "cuda_version", None)
    return str(version) if version else None


def _torch_cuda_version(runtime: RuntimeFacts) -> str | None:
    if runtime.torch is None or "+cpu" in runtime.torch:
        return None
    try:
        import torch
    except Exception:  # a broken torch is reported by the provider facts, not here
        return None
    version = torch.version.cuda
    return str(version) if version else None


def _cudnn() -> str | None:
    """Where cuDNN is: a pip package, or a library the loader finds (9, or 8 for older builds)."""
    for dist in ("nvidia-cudnn-cu12", "nvidia-cudnn-cu13"):
        try:
            return f"{dist} {importlib.metadata.version(dist)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    for name in ("libcudnn.so.9", "cudnn64_9.dll", "libcudnn.so.8", "cudnn64_8.dll"):
        try:
            ctypes.CDLL(name)
        except OSError:
            continue
        return name
    found = ctypes.util.find_library("cudnn")
    return found or None


def _wsl() -> tuple[bool, bool]:
    release = platform.release().lower()
    return "microsoft" in release and "wsl2" in release, Path("/dev/dxg").exists()


def _installed_models(store: ModelStore) -> list[tuple[ModelSpec, Path]]:
    return [(store.spec(s.name), s.path) for s in store.list() if s.verified]


def gather(home: Path, engines_dir: Path | None = None, probe_bandwidth: bool = True) -> Facts:
    """The facts of this machine (a second or two; more with big models, which are hashed)."""
    store = ModelStore(home)
    models = _installed_models(store)
    runtime = gather_facts(models, engines_dir or default_engines_dir(home))
    driver, smi_cuda, smi_gpus = _nvidia_smi()
    driver_cuda, cudart, cuda_gpus, bandwidth = _cuda_python_facts(probe_bandwidth)
    runtimes = {"cuda-python": cudart, "onnxruntime-gpu": _ort_cuda_version(), "torch": _torch_cuda_version(runtime)}
    wsl, wsl_gpu = _wsl()
    packages = _packages()
    return Facts(
        os=platform.platform(),
        python=f"{platform.python_implementation()} {platform.python_version()} ({sys.executable})",
        wsl=wsl,
        wsl_gpu=wsl_gpu,
        driver=driver or _proc_driver(),
        driver_cuda=smi_cuda or driver_cuda,
        cuda_runtimes=MappingProxyType({k: v for k, v in runtimes.items() if v}),
        gpus=smi_gpus or cuda_gpus,
        packages=MappingProxyType(packages),
        cudnn=_cudnn() if "CUDAExecutionProvider" in runtime.ort_providers else None,
        pinned_gbs=bandwidth,
        models=tuple(spec.name for spec, _ in models),
        runtime=runtime,
    )


# --------------------------------------------------------------------------- report


def _line(label: str, value: str) -> str:
    return f"  {label:<14} {value}"


def _gpu_text(gpu: GpuFacts) -> str:
    cc = f", compute capability {cc_text(gpu.cc)}" if gpu.cc else ""
    memory = f", {gpu.memory_mib / 1024:.0f} GiB" if gpu.memory_mib else ""
    return f"{gpu.name}{cc}{memory}"


def _cuda_text(facts: Facts) -> str:
    parts = [f"driver supports {facts.driver_cuda or '-'}"]
    for who, cuda in sorted(facts.cuda_runtimes.items()):
        need = needed_driver(cuda, facts.os.lower().startswith("windows"))
        parts.append(f"{who} built for {cuda}" + (f" (driver >= {need})" if need else ""))
    return "; ".join(parts)


def _versions(facts: Facts, names: Sequence[str]) -> str:
    found = [f"{n} {facts.packages[n]}" for n in names if n in facts.packages]
    return ", ".join(found) or "not installed"


def _facts_lines(facts: Facts) -> list[str]:
    rt = facts.runtime
    gpus = [_gpu_text(g) for g in facts.gpus] or ["none"]
    bandwidth = f"H2D {facts.pinned_gbs[0]:.1f} GB/s, D2H {facts.pinned_gbs[1]:.1f} GB/s" if facts.pinned_gbs else "-"
    return [
        _line("OS", facts.os + (" (WSL 2)" if facts.wsl else "")),
        _line("Python", facts.python),
        _line("NVIDIA driver", facts.driver or "none"),
        _line("CUDA", _cuda_text(facts)),
        *[_line("GPU" if i == 0 else "", g) for i, g in enumerate(gpus)],
        _line("ONNX Runtime", f"{_versions(facts, ORT_DISTRIBUTIONS)}; providers {', '.join(rt.ort_providers) or '-'}"),
        _line("cuDNN", facts.cudnn or "-"),
        _line("TensorRT", rt.tensorrt or ("does not load" if rt.tensorrt_error else "not installed")),
        _line("cuda-python", rt.cuda_python or "not installed"),
        _line(
            "torch",
            (rt.torch or "not installed")
            + (" with CUDA" if rt.torch_cuda else "")
            + (f"; onnx2torch {rt.onnx2torch}" if rt.onnx2torch else ""),
        ),
        _line("pinned memory", bandwidth),
    ]


def _model_lines(facts: Facts) -> list[str]:
    """Per model: the backend ``--runtime auto`` picks and why, then why not each better one."""
    lines: list[str] = []
    for model in facts.models:
        choice = choose(model, facts.runtime)
        lines.append(_line("" if lines else "models", f"{model}: runs on {choice.backend.value} ({choice.reason})"))
        lines += [_line("", f"  {why}") for why in choice.why_not()]
    return lines or [_line("models", "none installed ('livefuse models pull')")]


def render(facts: Facts, problems: Sequence[Problem], extra: Sequence[str] = ()) -> str:
    """The doctor's report: the facts (``extra`` lines after them), each model's backend and why,
    then each problem and its fix, errors first."""
    problems = sorted(problems, key=lambda p: {"error": 0, "warning": 1, "info": 2}[p.severity])
    lines = ["livefuse doctor", *_facts_lines(facts), *extra, *_model_lines(facts), ""]
    if not problems:
        lines.append("No problems found.")
    for p in problems:
        lines += [f"[{p.severity}] {p.message}", f"    fix: {p.fix}"]
    return "\n".join(lines) + "\n"
