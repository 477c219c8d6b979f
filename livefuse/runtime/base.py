"""The runner interface every inference backend implements (Polygraphy's BaseRunner shape)."""

from __future__ import annotations

import logging
import sys
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TypeVar

import numpy as np

log = logging.getLogger(__name__)

_R = TypeVar("_R", bound="Runner")


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """Name, shape and dtype of one model input or output. ``None`` or a str marks a dynamic dim."""

    name: str
    shape: tuple[int | str | None, ...]
    dtype: str


#: ``cudaErrorMemoryAllocation``: the same value in every CUDA version.
CUDA_ERROR_MEMORY_ALLOCATION = 2

#: How the runtimes word running out of memory (lower case): ONNX Runtime's arena ("Failed to
#: allocate memory for requested buffer of size ...") and CUDA ("CUDA failure 2: out of memory"),
#: cuDNN/cuBLAS (``*_STATUS_ALLOC_FAILED``), torch ("CUDA out of memory"), CUDA's error name.
OUT_OF_MEMORY_WORDS = (
    "out of memory",
    "failed to allocate memory",
    "status_alloc_failed",
    "cudaerrormemoryallocation",
)


def is_out_of_memory(exc: BaseException) -> bool:
    """True when ``exc`` says a runtime ran out of (GPU) memory: torch's ``OutOfMemoryError``,
    livefuse's ``CudaError`` for ``cudaErrorMemoryAllocation``, or an error worded that way.

    Imports nothing: an error of torch or of livefuse.runtime.cuda means that module is loaded.
    """
    torch = sys.modules.get("torch")
    torch_oom = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
    if isinstance(torch_oom, type) and isinstance(exc, torch_oom):
        return True
    cuda = sys.modules.get("livefuse.runtime.cuda")
    cuda_error = getattr(cuda, "CudaError", None)
    if isinstance(cuda_error, type) and isinstance(exc, cuda_error):
        return getattr(exc, "code", None) == CUDA_ERROR_MEMORY_ALLOCATION
    text = str(exc).lower()
    return any(words in text for words in OUT_OF_MEMORY_WORDS)


class Runner(ABC):
    """Runs one model. Lifecycle: ``activate()`` once, ``infer()`` per call, ``close()`` once.

    Usable as a context manager. Sessions and buffers are created in ``activate`` and
    never per call. Outputs may be buffers the runner reuses on the next call: copy them
    if they must outlive it.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.is_active = False
        self.batch_limit: int | None = None
        "Most items one call may take, learnt when a larger batch ran out of GPU memory; None: no limit seen."

    def activate(self) -> None:
        """Create the session and everything ``infer`` needs. Idempotent."""
        if not self.is_active:
            self.activate_impl()
            self.is_active = True

    def infer(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run the model on ``feeds`` (input name → array) and return its outputs in order."""
        if not self.is_active:
            raise RuntimeError(f"runner {self.name!r} must be activated before infer()")
        return self.infer_impl(feeds)

    def close(self) -> None:
        """Free the session. Idempotent."""
        if self.is_active:
            self.is_active = False
            self.close_impl()

    @property
    @abstractmethod
    def provider(self) -> str:
        """The execution provider the model actually runs on."""

    @property
    @abstractmethod
    def inputs(self) -> list[TensorSpec]:
        """The model's inputs."""

    @property
    @abstractmethod
    def outputs(self) -> list[TensorSpec]:
        """The model's outputs."""

    @abstractmethod
    def activate_impl(self) -> None: ...

    @abstractmethod
    def infer_impl(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]: ...

    @abstractmethod
    def close_impl(self) -> None: ...

    def __enter__(self: _R) -> _R:
        self.activate()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "is_active", False):
            log.warning("runner %r was activated but never closed", self.name)
