"""Which runtime runs each model, and why.

Order of preference: a prebuilt **TensorRT** engine → **ONNX Runtime CUDA** (with its TensorRT
provider first where a prebuilt ORT-TensorRT engine cache exists) → **torch on CUDA** (onnx2torch)
→ **CPU** (ONNX Runtime exactly as :class:`livefuse.runtime.ort.OrtRunner` runs it today).

The decision is a pure function of :class:`RuntimeFacts` (:func:`choose`), so it is tested with
recorded facts; :func:`gather_facts` collects them on this machine without importing anything
heavy that is not installed. Every decision is logged with the reasons the better backends were
passed over.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib.metadata
import importlib.util
import logging
import shutil
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from livefuse.errors import EngineMismatch, LivefuseError
from livefuse.models.files import sha256_file
from livefuse.models.manifest import ModelSpec
from livefuse.runtime.engine_files import ComputeCapability, cc_text, find_engine

log = logging.getLogger(__name__)

#: Under the engines directory: ONNX Runtime TensorRT-provider caches, one folder per model.
ORT_TRT_CACHE = "ort-trt"

#: Where the NVIDIA kernel driver says its version (Linux); its presence means a driver is loaded.
NVIDIA_PROC = Path("/proc/driver/nvidia/version")


class Backend(enum.Enum):
    """A way to run a model, best first."""

    TENSORRT = "tensorrt"
    ORT_CUDA = "onnxruntime-cuda"
    TORCH_CUDA = "torch-cuda"
    CPU = "cpu"


ORDER: tuple[Backend, ...] = tuple(Backend)


def _no_engines() -> Mapping[str, Path]:
    return MappingProxyType({})


def _no_problems() -> Mapping[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class RuntimeFacts:
    """What this machine offers, as far as choosing a backend goes."""

    gpus: int = 0
    "CUDA GPUs visible."
    cc: ComputeCapability | None = None
    "Compute capability of GPU 0."
    cuda_error: str = ""
    "Why no GPU is usable, when CUDA said so (e.g. the driver is too old)."
    tensorrt: str | None = None
    "TensorRT version, when ``import tensorrt`` works."
    tensorrt_error: str = ""
    "Why ``import tensorrt`` failed, when it is installed but does not load."
    cuda_python: str | None = None
    "cuda-python version (the TensorRT runner's streams and memory), when installed."
    ort_providers: tuple[str, ...] = ()
    "ONNX Runtime's available execution providers."
    torch: str | None = None
    torch_cuda: bool = False
    "torch is a CUDA build and sees a GPU."
    onnx2torch: str | None = None
    engines: Mapping[str, Path] = field(default_factory=_no_engines)
    "Model → its TensorRT engine that fits this machine."
    engine_problems: Mapping[str, str] = field(default_factory=_no_problems)
    "Model → why it has no usable engine (the :class:`EngineMismatch` message)."
    ort_trt_caches: frozenset[str] = frozenset()
    "Models with a prebuilt ONNX Runtime TensorRT-provider engine cache."


@dataclass(frozen=True, slots=True)
class Choice:
    """The backend for one model and why."""

    model: str
    backend: Backend
    reason: str
    passed_over: tuple[tuple[Backend, str], ...] = ()
    "The better backends, each with why it was not used."
    ort_providers: tuple[str, ...] = ()
    "ONNX Runtime backends: the providers to ask for. Empty: OrtRunner's own preference."
    engine: Path | None = None
    "TensorRT: the engine file."
    ort_trt_cache: Path | None = None
    "ONNX Runtime with its TensorRT provider: the prebuilt engine cache."

    def why_not(self) -> list[str]:
        """``"not a, b: why"`` for the better backends, one item per reason."""
        groups: list[tuple[list[str], str]] = []  # backends passed over for the same reason share it
        for backend, why in self.passed_over:
            if groups and groups[-1][1] == why:
                groups[-1][0].append(backend.value)
            else:
                groups.append(([backend.value], why))
        return [f"not {', '.join(names)}: {why}" for names, why in groups]

    def summary(self) -> str:
        """One line: what runs the model, why, and why not the better ones."""
        return "; ".join([f"model {self.model} runs on {self.backend.value} ({self.reason})", *self.why_not()])


def ort_trt_cache_dir(engines_dir: Path, model: str) -> Path:
    """The ONNX Runtime TensorRT-provider engine cache of ``model``."""
    return Path(engines_dir) / ORT_TRT_CACHE / model


# --------------------------------------------------------------------------- the decision


def _no_gpu(facts: RuntimeFacts) -> str:
    return f"no CUDA GPU ({facts.cuda_error})" if facts.cuda_error else "no CUDA GPU"


def _why_not_tensorrt(model: str, facts: RuntimeFacts) -> str | None:
    if facts.gpus == 0:
        return _no_gpu(facts)
    if facts.tensorrt is None:
        return facts.tensorrt_error or "TensorRT is not installed (pip install tensorrt-cu12)"
    if facts.cuda_python is None:
        return "cuda-python is not installed (pip install 'livefuse[cuda]')"
    if model not in facts.engines:
        return facts.engine_problems.get(model, f"no engine was checked for {model}")
    return None


def _why_not_ort_cuda(facts: RuntimeFacts) -> str | None:
    if facts.gpus == 0:
        return _no_gpu(facts)
    if "CUDAExecutionProvider" not in facts.ort_providers:
        return (
            "this onnxruntime has no CUDA provider (install onnxruntime-gpu instead of onnxruntime: "
            "uninstall both, then install only onnxruntime-gpu)"
        )
    return None


def _why_not_torch(facts: RuntimeFacts) -> str | None:
    if facts.torch is None or facts.onnx2torch is None:
        return "torch and onnx2torch are not installed (pip install 'livefuse[torch]')"
    if facts.gpus == 0:
        return _no_gpu(facts)
    if not facts.torch_cuda:
        return f"torch {facts.torch} is a CPU-only build or sees no GPU"
    return None


def _ort_cuda_choice(model: str, facts: RuntimeFacts, engines_dir: Path | None) -> Choice:
    trt_ep = "TensorrtExecutionProvider" in facts.ort_providers and model in facts.ort_trt_caches
    providers: tuple[str, ...] = ("TensorrtExecutionProvider",) if trt_ep else ()
    providers += ("CUDAExecutionProvider", "CPUExecutionProvider")
    if trt_ep:
        cache = ort_trt_cache_dir(engines_dir, model) if engines_dir is not None else None
        return Choice(
            model,
            Backend.ORT_CUDA,
            "TensorRT provider with its prebuilt engine cache, CUDA behind it",
            ort_providers=providers,
            ort_trt_cache=cache,
        )
    # ORT's TensorRT provider without a cache would build engines at session start: never live.
    return Choice(model, Backend.ORT_CUDA, "CUDA provider", ort_providers=providers)


def choose(
    model: str,
    facts: RuntimeFacts,
    allowed: Collection[Backend] | None = None,
    engines_dir: Path | None = None,
) -> Choice:
    """The best backend for ``model`` given ``facts`` (``allowed`` narrows the candidates)."""
    passed: list[tuple[Backend, str]] = []

    def why_not(backend: Backend, reason: str | None) -> bool:
        if allowed is not None and backend not in allowed:
            reason = "not among the allowed backends"
        if reason is not None:
            passed.append((backend, reason))
        return reason is None

    if why_not(Backend.TENSORRT, _why_not_tensorrt(model, facts)):
        gpu = f"compute capability {cc_text(facts.cc)}" if facts.cc else "this GPU"
        reason = f"prebuilt engine fits TensorRT {facts.tensorrt} and {gpu}"
        choice = Choice(model, Backend.TENSORRT, reason, engine=facts.engines[model])
    elif why_not(Backend.ORT_CUDA, _why_not_ort_cuda(facts)):
        choice = _ort_cuda_choice(model, facts, engines_dir)
    elif why_not(Backend.TORCH_CUDA, _why_not_torch(facts)):
        choice = Choice(model, Backend.TORCH_CUDA, f"torch {facts.torch} on CUDA, FP16 with CUDA graphs")
    else:
        # The fallback is never refused, even when not "allowed": something has to run the model.
        choice = Choice(model, Backend.CPU, "ONNX Runtime with its default providers")
    choice = dataclasses.replace(choice, passed_over=tuple(passed))
    log.info("%s", choice.summary())
    return choice


def choose_all(
    models: Sequence[str],
    facts: RuntimeFacts,
    allowed: Collection[Backend] | None = None,
    engines_dir: Path | None = None,
) -> dict[str, Choice]:
    """:func:`choose` for each model."""
    return {m: choose(m, facts, allowed, engines_dir) for m in models}


# --------------------------------------------------------------------------- gathering the facts


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def installed(module: str) -> bool:
    """True when ``module`` can be found (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package is broken, or the module is half-imported
        return False


@dataclass(frozen=True, slots=True)
class _Gpu:
    count: int = 0
    cc: ComputeCapability | None = None
    error: str = ""


def _gpu_from_cuda_python() -> _Gpu | None:
    try:
        from livefuse.runtime import cuda
    except ImportError:
        return None
    try:
        found = cuda.probe()
    except LivefuseError as exc:  # CudaError: a CUDA call other than 'how many GPUs' failed
        return _Gpu(error=str(exc))
    cc = found.gpus[0].cc if found.gpus else None
    return _Gpu(len(found.gpus), cc, found.error)


def driver_present() -> bool:
    """True when an NVIDIA driver seems installed (its /proc file or nvidia-smi)."""
    return NVIDIA_PROC.exists() or shutil.which("nvidia-smi") is not None


def _torch_cuda() -> tuple[bool, _Gpu]:
    """Whether torch sees a GPU; imports torch, so only called when a driver is present."""
    try:
        import torch
    except Exception as exc:  # a broken torch install raises more than ImportError
        return False, _Gpu(error=f"torch does not import ({type(exc).__name__}: {exc})")
    if not torch.cuda.is_available():
        return False, _Gpu()
    major, minor = torch.cuda.get_device_capability(0)
    return True, _Gpu(torch.cuda.device_count(), (int(major), int(minor)))


def _tensorrt() -> tuple[str | None, str]:
    if not installed("tensorrt"):
        return None, ""
    try:
        import tensorrt
    except Exception as exc:  # missing libnvinfer raises ImportError or OSError
        return None, f"TensorRT is installed but does not load ({type(exc).__name__}: {exc})"
    return str(tensorrt.__version__), ""


def _engines(
    models: Sequence[tuple[ModelSpec, Path]],
    trt: str | None,
    cc: ComputeCapability | None,
    engines_dir: Path,
    sha256: Callable[[Path], str],
) -> tuple[dict[str, Path], dict[str, str]]:
    found: dict[str, Path] = {}
    problems: dict[str, str] = {}
    if trt is None or cc is None:
        return found, problems
    for spec, onnx in models:
        try:
            found[spec.name] = find_engine(spec, trt, cc, engines_dir, onnx_sha256=sha256(onnx)).path
        except EngineMismatch as exc:
            problems[spec.name] = str(exc)
    return found, problems


def _ort_providers() -> tuple[str, ...]:
    import onnxruntime

    return tuple(onnxruntime.get_available_providers())


def add_models(
    facts: RuntimeFacts,
    models: Sequence[tuple[ModelSpec, Path]],
    engines_dir: Path,
    sha256: Callable[[Path], str] = sha256_file,
) -> RuntimeFacts:
    """``facts`` with the TensorRT engines and ORT-TensorRT caches of ``models`` (spec, ONNX file) added.

    The ONNX files are hashed (with ``sha256``) only when TensorRT and a GPU are there to match
    engines against.
    """
    engines, problems = _engines(models, facts.tensorrt, facts.cc, engines_dir, sha256)
    caches = {spec.name for spec, _ in models if any(ort_trt_cache_dir(engines_dir, spec.name).glob("*"))}
    return dataclasses.replace(
        facts,
        engines=MappingProxyType({**facts.engines, **engines}),
        engine_problems=MappingProxyType({**facts.engine_problems, **problems}),
        ort_trt_caches=facts.ort_trt_caches | caches,
    )


def gather_facts(models: Sequence[tuple[ModelSpec, Path]], engines_dir: Path) -> RuntimeFacts:
    """The facts of this machine. ``models`` are the installed models and their ONNX files
    (none: the machine alone; :func:`add_models` adds models later).

    Cheap where nothing GPU-related is installed: torch is imported only when an NVIDIA driver
    is present, TensorRT only when installed, and the ONNX files are hashed only when TensorRT
    and a GPU are there to match engines against.
    """
    gpu = _gpu_from_cuda_python() or _Gpu()
    torch_version = _version("torch")
    torch_cuda = False
    if torch_version is not None and driver_present():
        torch_cuda, seen = _torch_cuda()
        if gpu.count == 0 and seen.count:
            gpu = seen  # no cuda-python: torch is the next witness
    trt, trt_error = _tensorrt()
    machine = RuntimeFacts(
        gpus=gpu.count,
        cc=gpu.cc,
        cuda_error=gpu.error,
        tensorrt=trt,
        tensorrt_error=trt_error,
        cuda_python=_version("cuda-bindings") or _version("cuda-python"),
        ort_providers=_ort_providers(),
        torch=torch_version,
        torch_cuda=torch_cuda,
        onnx2torch=_version("onnx2torch"),
    )
    return add_models(machine, models, engines_dir)
