"""The TensorRT and CUDA environment of this machine, as the runner and the engine builder see it:
importing ``tensorrt`` with an install hint, its version as engine names write it, and the GPU.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from livefuse.errors import ConfigError, EngineError
from livefuse.runtime.engine_files import ComputeCapability

#: How users get TensorRT and cuda-python (the ``tensorrt`` extra).
INSTALL_HINT = "pip install 'livefuse[tensorrt]'"

#: The oldest TensorRT whose Python API this module speaks (named I/O tensors, execute_async_v3).
MIN_TRT_MAJOR = 10

_VERSION = re.compile(r"\d+(?:\.\d+)*")


@dataclass(frozen=True, slots=True)
class GpuInfo:
    """The GPU an engine is built on."""

    name: str
    cc: ComputeCapability


def trt_version(raw: str) -> str:
    """TensorRT's ``__version__`` as engine names write it: ``10.3.0.post1`` → ``10.3.0``.
    Raises :class:`ConfigError` for TensorRT older than 10 (other API, implicit batch)."""
    match = _VERSION.match(raw.strip())
    if match is None:
        raise EngineError(f"cannot read the TensorRT version {raw!r}; reinstall TensorRT: {INSTALL_HINT}")
    if int(match.group().split(".")[0]) < MIN_TRT_MAJOR:
        raise ConfigError(
            f"TensorRT {raw} is too old: livefuse's engines need TensorRT {MIN_TRT_MAJOR} or newer ({INSTALL_HINT})"
        )
    return match.group()


def import_tensorrt() -> Any:
    """The ``tensorrt`` module, or a :class:`ConfigError` that says how to install it."""
    try:
        import tensorrt
    except ImportError as exc:
        raise ConfigError(f"TensorRT is not installed ({exc}): {INSTALL_HINT}") from exc
    except OSError as exc:  # the wheel is there but libnvinfer or a CUDA library does not load
        raise ConfigError(
            f"TensorRT is installed but does not load ({exc}): reinstall it for this CUDA ({INSTALL_HINT}) "
            "and run 'livefuse doctor'"
        ) from exc
    return tensorrt


def cuda_module() -> ModuleType:
    """:mod:`livefuse.runtime.cuda`, which needs cuda-python."""
    try:
        from livefuse.runtime import cuda
    except ImportError as exc:
        raise ConfigError(f"cuda-python is not installed ({exc}): {INSTALL_HINT}") from exc
    return cuda


def local_gpu(device: int) -> GpuInfo:
    """GPU ``device``, made the current one (TensorRT builds and runs on the current device)."""
    cuda = cuda_module()
    found = cuda.probe()
    if device >= len(found.gpus):
        why = found.error or f"{len(found.gpus)} GPU(s) visible"
        raise EngineError(
            f"there is no CUDA GPU {device} ({why}); TensorRT engines are built on the NVIDIA GPU that will "
            "run them: check 'nvidia-smi' and run 'livefuse doctor'"
        )
    gpu = found.gpus[device]
    cuda.CudaDevice(device)
    return GpuInfo(gpu.name, gpu.cc)
