"""The bookkeeping of :class:`livefuse.runtime.trt.TrtRunner`: its tensors, the shapes, sizes
and host views of one set of input shapes, and what it holds in memory. No TensorRT here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from livefuse.runtime.base import TensorSpec

Key = tuple[tuple[int, ...], ...]
"The shapes of all inputs, in the engine's order."

_ORT_NAMES = {
    "float32": "float",
    "float16": "float16",
    "int32": "int32",
    "int64": "int64",
    "int8": "int8",
    "uint8": "uint8",
    "bool": "bool",
}


class GpuOps(Protocol):
    """What the runner needs from a GPU; :class:`livefuse.runtime.cuda.CudaDevice` is one.

    Streams have ``handle`` (``int()`` of it is the ``cudaStream_t``), ``synchronize()`` and
    ``close()``; device buffers ``ptr`` and ``close()``; host buffers ``array`` (pinned, 1-D
    uint8) and ``close()``.
    """

    def new_stream(self) -> Any: ...

    def host_buffer(self, nbytes: int) -> Any: ...

    def device_buffer(self, nbytes: int) -> Any: ...

    def copy_h2d(self, dst: Any, src: np.ndarray, nbytes: int, stream: Any) -> None: ...

    def copy_d2h(self, dst: np.ndarray, src: Any, nbytes: int, stream: Any) -> None: ...


@dataclass(eq=False)
class Io:
    """One engine input or output and its buffers (made once, at activate)."""

    name: str
    is_input: bool
    dtype: np.dtype
    engine_shape: tuple[int, ...]
    "-1 where the optimisation profile lets the dim vary."
    low: tuple[int, ...] = ()
    "Inputs with a dynamic dim: the profile's smallest shape."
    high: tuple[int, ...] = ()
    "Inputs with a dynamic dim: the profile's largest shape, its batch capped at the runner's."
    device: Any = None
    host: Any = None
    allocated: int = 0
    "Bytes of ``device`` and of ``host``: what the largest shapes need."

    @property
    def batched(self) -> bool:
        return bool(self.engine_shape) and self.engine_shape[0] == -1

    @property
    def dynamic(self) -> bool:
        return -1 in self.engine_shape

    def bounds(self, low: tuple[int, ...], high: tuple[int, ...], capacity: int) -> None:
        self.low = low
        self.high = (min(high[0], capacity), *high[1:]) if self.batched else high

    def batch_shape(self, batch: int) -> tuple[int, ...]:
        """This input's shape for ``batch`` faces, other dims at the profile's largest."""
        if not self.dynamic:
            return self.engine_shape
        return (batch, *self.high[1:]) if self.batched else self.high

    def shape_problem(self, shape: tuple[int, ...], capacity: int) -> str:
        """Why the engine cannot take ``shape`` for this input, in words ('' when it can)."""
        low, high = (self.low, self.high) if self.dynamic else (self.engine_shape, self.engine_shape)
        if len(shape) != len(low):
            return f"must have {len(low)} dims, got shape {shape}"
        if all(lo <= d <= hi for lo, d, hi in zip(low, shape, high)):
            return ""
        batch = f" (at most {capacity} faces per call)" if self.batched else ""
        return f"must have a shape between {low} and {high}{batch}, got {shape}"


class Shapes:
    """One set of input shapes: every tensor's shape, its bytes, and its view of the pinned buffer."""

    def __init__(self, key: Key, outputs: Key, ios: Sequence[Io]) -> None:
        self.key = key
        self.shapes = (*key, *outputs)
        self.sizes = tuple(int(np.prod(s, dtype=np.int64)) * io.dtype.itemsize for s, io in zip(self.shapes, ios))
        self.views: tuple[np.ndarray, ...] = ()
        "Inputs then outputs, each the start of its pinned host buffer seen as the tensor."
        self.results: list[np.ndarray] = []
        "The output views: what ``infer`` returns for these shapes."

    def make_views(self, ios: Sequence[Io]) -> None:
        self.views = tuple(
            io.host.array[:size].view(io.dtype).reshape(shape) for io, size, shape in zip(ios, self.sizes, self.shapes)
        )
        self.results = list(self.views[len(self.key) :])


@dataclass(frozen=True, slots=True)
class EngineMemory:
    """GPU and pinned memory one activated runner holds."""

    activation_bytes: int
    "Scratch memory of the execution context (``device_memory_size_v2``)."
    io_bytes: int
    "Device buffers of the inputs and outputs, sized for the largest shapes."
    pinned_bytes: int
    streamable_weights_bytes: int
    "0 unless the engine was built with ``--weight-streaming``."
    weight_budget_bytes: int | None
    max_batch: int

    def summary(self) -> str:
        mib = 1 << 20
        text = (
            f"batch up to {self.max_batch}, {self.activation_bytes / mib:.0f} MiB activations, "
            f"{self.io_bytes / mib:.1f} MiB I/O buffers"
        )
        if self.weight_budget_bytes is not None:
            kept, total = self.weight_budget_bytes / mib, self.streamable_weights_bytes / mib
            text += f", weights streamed ({kept:.0f} of {total:.0f} MiB kept on the GPU)"
        return text


def activation_bytes(engine: Any) -> int:
    """The execution context's scratch memory (``device_memory_size_v2`` from TensorRT 10.1)."""
    size = getattr(engine, "device_memory_size_v2", None)
    return int(size if size is not None else engine.device_memory_size)


def tensor_spec(io: Io) -> TensorSpec:
    """``io`` as the runners describe tensors (ONNX Runtime's type names, None for free dims)."""
    shape = tuple(None if d == -1 else d for d in io.engine_shape)
    return TensorSpec(io.name, shape, f"tensor({_ORT_NAMES.get(io.dtype.name, io.dtype.name)})")
