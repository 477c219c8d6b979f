"""PyTorch runner: the ONNX file converted to a torch module with onnx2torch.

For machines that have PyTorch with CUDA but no TensorRT (``pip install "livefuse[torch]"``).
On CUDA it runs in FP16 (``torch.autocast``, which keeps reductions, norms, pow/rsqrt and
softmax in FP32, where inswapper's instance-norm chain needs it) and replays a CUDA graph per
input shape, so one call is: copy the feeds into pinned buffers, one async upload, one graph
replay, one async download, one stream synchronize. On the CPU it runs in FP32, eagerly.

Inputs and outputs are preallocated per input shape (at most :data:`MAX_SHAPES` kept) and the
returned arrays are those buffers: copy them if they must outlive the next call.

Verified: the CPU path, against ONNX Runtime on the tiny stand-ins (tests/test_torch_runner.py).
Written but not run here (no GPU on the machine it was written on): the CUDA path (pinned
buffers, the runner's own stream, autocast FP16, CUDA graph capture and replay, the VRAM budget).
Its test is marked ``gpu``.

torch and onnx2torch are imported only inside this module, when a runner is activated.
"""

from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from livefuse.errors import ConfigError, ModelError
from livefuse.runtime.base import Runner, TensorSpec
from livefuse.runtime.device import host_view

log = logging.getLogger(__name__)

#: Buffer sets (and CUDA graphs) kept for this many distinct input shapes; the oldest goes first.
MAX_SHAPES = 4

#: Eager runs on a side stream before a graph is captured (lazy inits must not be captured).
WARMUP_RUNS = 3

#: ONNX Runtime's names for numpy dtypes, so ``inputs``/``outputs`` read like OrtRunner's.
_ORT_NAMES = {
    "float32": "float",
    "float64": "double",
    "float16": "float16",
    "int64": "int64",
    "int32": "int32",
    "int8": "int8",
    "uint8": "uint8",
    "bool": "bool",
}

INSTALL_HINT = 'pip install "livefuse[torch]" (torch with CUDA for the GPU path, and onnx2torch)'


def _import_torch() -> tuple[Any, Any]:
    """``(torch, onnx2torch.convert)``, or a ``ConfigError`` that says how to install them."""
    try:
        import torch
        from onnx2torch import convert
    except ImportError as exc:
        raise ConfigError(f"the torch backend needs torch and onnx2torch ({exc}): {INSTALL_HINT}") from exc
    except RuntimeError as exc:  # onnx2torch imports torchvision, whose ops fail on a mismatched torch
        raise ConfigError(
            f"onnx2torch cannot be imported ({exc}): torchvision was built for another torch build "
            "(e.g. a CUDA torchvision next to a CPU-only torch); install the torchvision made for "
            "your torch, from the same index"
        ) from exc
    return torch, convert


def memory_fraction(budget: int, total: int) -> float:
    """The share of a GPU's ``total`` bytes that ``budget`` bytes are, at most all of it
    (what ``torch.cuda.set_per_process_memory_fraction`` takes)."""
    if budget <= 0 or total <= 0:
        raise ValueError(f"memory budget {budget} and GPU memory {total} must both be positive")
    return min(1.0, budget / total)


def _np_dtype(elem_type: int) -> np.dtype:
    from onnx import helper

    return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))


def _spec(value: Any) -> TensorSpec:
    tensor = value.type.tensor_type
    shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim)
    return TensorSpec(value.name, shape, f"tensor({_ORT_NAMES.get(_np_dtype(tensor.elem_type).name, '?')})")


@dataclass
class _Buffers:
    """Everything one input shape needs, made once."""

    host_in: list[np.ndarray]
    "Where the feeds are copied (pinned on CUDA; on the CPU they back ``dev_in`` directly)."
    host_out: list[np.ndarray]
    "What ``infer`` returns."
    dev_in: list[Any] = field(default_factory=list)
    dev_out: list[Any] = field(default_factory=list)
    pinned_in: list[Any] = field(default_factory=list)
    pinned_out: list[Any] = field(default_factory=list)
    graph: Any = None


class _CudaArray:
    """Device memory described by ``__cuda_array_interface__``, for ``torch.as_tensor``."""

    def __init__(self, interface: dict[str, Any]) -> None:
        self.__cuda_array_interface__ = interface


class TorchRunner(Runner):
    """Runs an ONNX file as a torch module (see the module docstring).

    ``device``: ``"auto"`` (CUDA when torch sees a GPU, else CPU), ``"cpu"`` or ``"cuda[:N]"``.
    ``fp16`` and ``cuda_graphs`` default to on with CUDA and must stay off on the CPU.
    ``vram_budget``: bytes of GPU memory torch's allocator may hold (0: no limit). It caps the
    whole process's torch allocations on that GPU, not this model alone: torch has no per-model cap.
    """

    def __init__(
        self,
        path: Path,
        name: str | None = None,
        device: str = "auto",
        fp16: bool | None = None,
        cuda_graphs: bool | None = None,
        vram_budget: int = 0,
    ) -> None:
        super().__init__(name or Path(path).stem)
        self.path = Path(path)
        self._device_arg = device
        self._vram_budget = vram_budget
        self._fp16_arg = fp16
        self._graphs_arg = cuda_graphs
        self._torch: Any = None
        self._module: Any = None
        self._device: Any = None
        self._stream: Any = None
        self.fp16 = False
        self.cuda_graphs = False
        self._inputs: list[TensorSpec] = []
        self._outputs: list[TensorSpec] = []
        self._in_dtypes: list[np.dtype] = []
        self._out_dtypes: list[np.dtype] = []
        self._buffers: OrderedDict[tuple[tuple[int, ...], ...], _Buffers] = OrderedDict()
        self._shapes_of: dict[int, list[np.ndarray]] = {}
        self._wrapped: dict[tuple[int, tuple[int, ...], str], Any] = {}

    # ------------------------------------------------------------------ lifecycle

    def activate_impl(self) -> None:
        torch, convert = _import_torch()
        self._torch = torch
        self._device = self._pick_device(torch)
        on_cuda = self._device.type == "cuda"
        self.fp16 = self._flag(self._fp16_arg, on_cuda, "fp16")
        self.cuda_graphs = self._flag(self._graphs_arg, on_cuda, "cuda_graphs")
        model = self._load_onnx()
        try:
            module = convert(model)
        except Exception as exc:  # onnx2torch raises bare NotImplementedError/KeyError for unsupported ops
            raise ModelError(
                f"model {self.name!r} cannot be converted to torch by onnx2torch ({type(exc).__name__}: {exc}); "
                "run it with ONNX Runtime instead (the default backend)"
            ) from exc
        if on_cuda and self._vram_budget:
            total = torch.cuda.get_device_properties(self._device).total_memory
            torch.cuda.set_per_process_memory_fraction(memory_fraction(self._vram_budget, total), self._device)
        self._module = module.eval().to(self._device)
        if on_cuda:
            self._stream = torch.cuda.Stream(device=self._device)
        log.info("model %s runs on %s", self.name, self.provider)

    def _pick_device(self, torch: Any) -> Any:
        wanted = self._device_arg
        if wanted == "auto":
            wanted = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(wanted)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(
                f"model {self.name!r}: device {wanted!r} asked for, but this torch ({torch.__version__}) sees "
                "no CUDA GPU; install a CUDA build of torch or use device='cpu'"
            )
        if device.type not in ("cpu", "cuda"):
            raise ConfigError(f"model {self.name!r}: device must be 'auto', 'cpu' or 'cuda[:N]', got {wanted!r}")
        return device

    def _flag(self, value: bool | None, on_cuda: bool, what: str) -> bool:
        if value and not on_cuda:
            raise ConfigError(f"model {self.name!r}: {what} needs a CUDA device; leave it unset on the CPU")
        return on_cuda if value is None else value

    def _load_onnx(self) -> Any:
        import onnx

        try:
            model = onnx.load(str(self.path))
        except Exception as exc:  # onnx raises DecodeError/OSError variants
            raise ModelError(
                f"model {self.name!r} at {self.path} cannot be read ({exc}); run 'livefuse models pull' to reinstall it"
            ) from exc
        weights = {t.name for t in model.graph.initializer}
        inputs = [v for v in model.graph.input if v.name not in weights]
        self._inputs = [_spec(v) for v in inputs]
        self._outputs = [_spec(v) for v in model.graph.output]
        self._in_dtypes = [_np_dtype(v.type.tensor_type.elem_type) for v in inputs]
        self._out_dtypes = [_np_dtype(v.type.tensor_type.elem_type) for v in model.graph.output]
        return model

    def close_impl(self) -> None:
        if self._stream is not None:
            self._stream.synchronize()  # no queued copy may land in freed memory
        self._buffers.clear()
        self._wrapped.clear()
        self._module = None
        self._stream = None

    # ------------------------------------------------------------------ inference

    def infer_impl(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        arrays = [self._feed(feeds, spec.name) for spec in self._inputs]
        buffers = self._buffers_for(arrays)
        for host, array in zip(buffers.host_in, arrays, strict=True):
            np.copyto(host, array, casting="same_kind")
        if self._device.type == "cuda":
            self._run_cuda(buffers)
        else:
            self._run_cpu(buffers)
        return buffers.host_out

    def _feed(self, feeds: Mapping[str, np.ndarray], name: str) -> np.ndarray:
        try:
            return np.asarray(feeds[name])
        except KeyError:
            raise ValueError(f"model {self.name!r} needs input {name!r}; got {', '.join(feeds) or 'none'}") from None

    def _buffers_for(self, arrays: Sequence[np.ndarray]) -> _Buffers:
        key = tuple(a.shape for a in arrays)
        buffers = self._buffers.get(key)
        if buffers is None:
            if len(self._buffers) >= MAX_SHAPES:
                self._drop_oldest()
            buffers = self._prepare_cuda(arrays) if self._device.type == "cuda" else self._prepare_cpu(arrays)
            self._buffers[key] = buffers
        self._buffers.move_to_end(key)
        return buffers

    def _drop_oldest(self) -> None:
        if self._stream is not None:
            self._stream.synchronize()
        self._buffers.popitem(last=False)

    def _outputs_of(self, result: Any) -> list[Any]:
        outs = list(result) if isinstance(result, (tuple, list)) else [result]
        if len(outs) != len(self._outputs):
            raise ModelError(
                f"model {self.name!r}: torch module gave {len(outs)} outputs, the ONNX file declares "
                f"{len(self._outputs)}"
            )
        return outs

    # ------------------------------------------------------------------ device memory

    def infer_device(self, inputs: Mapping[str, int], outputs: Mapping[str, int], batch: int, stream: Any) -> None:
        """One run of ``batch`` items on memory the caller owns (:class:`livefuse.swap.gpu.path.DeviceModel`):
        tensor name → address. On CUDA the addresses are device memory and the run is queued on
        ``stream`` (a :class:`~livefuse.runtime.cuda.Stream` or ``cudaStream_t``); on the CPU they are
        host memory (the GPU frame path's emulator) and the run happens now. Outputs not named are
        dropped. The caller's buffers are wrapped once per address, not per call.
        """
        buffers = self._buffers_for(self._shapes_for(batch))
        torch = self._torch
        cuda = self._device.type == "cuda"
        context = (
            torch.cuda.stream(torch.cuda.ExternalStream(int(getattr(stream, "handle", stream))))
            if cuda
            else (contextlib.nullcontext())
        )
        with context, torch.no_grad():
            for dev, spec, dtype in zip(buffers.dev_in, self._inputs, self._in_dtypes, strict=True):
                dev.copy_(self._wrap(inputs[spec.name], tuple(dev.shape), dtype))
            if buffers.graph is not None:
                buffers.graph.replay()
                outs = buffers.dev_out
            else:
                with self._autocast() if cuda else contextlib.nullcontext():
                    outs = self._outputs_of(self._module(*buffers.dev_in))
            for out, spec, dtype in zip(outs, self._outputs, self._out_dtypes, strict=True):
                if spec.name in outputs:
                    self._wrap(outputs[spec.name], tuple(out.shape), dtype).copy_(out)

    def _shapes_for(self, batch: int) -> list[np.ndarray]:
        """Zero-size stand-ins carrying each input's shape for ``batch`` (made once per batch)."""
        if batch not in self._shapes_of:
            shapes: list[tuple[int, ...]] = []
            for spec in self._inputs:
                rest = [d for d in spec.shape[1:] if isinstance(d, int)]
                if len(rest) != len(spec.shape) - 1:
                    raise ModelError(
                        f"model {self.name!r}: input {spec.name!r} {spec.shape} has free dims "
                        "past the batch; it cannot run on caller-owned buffers"
                    )
                shapes.append((batch, *rest))
            self._shapes_of[batch] = [
                np.lib.stride_tricks.as_strided(np.zeros(1, dt), shape, [0] * len(shape))
                for shape, dt in zip(shapes, self._in_dtypes, strict=True)
            ]
        return self._shapes_of[batch]

    def _wrap(self, address: int, shape: tuple[int, ...], dtype: np.dtype) -> Any:
        """A tensor over the caller's memory at ``address`` (no copy)."""
        key = (address, shape, dtype.str)
        if key not in self._wrapped:
            if self._device.type == "cuda":
                interface = {"shape": shape, "typestr": dtype.str, "data": (address, False), "version": 3}
                self._wrapped[key] = self._torch.as_tensor(_CudaArray(interface), device=self._device)
            else:  # a CPU device: the caller's address is host memory
                self._wrapped[key] = self._torch.from_numpy(host_view(address, shape, dtype))
        return self._wrapped[key]

    # ------------------------------------------------------------------ CPU

    def _prepare_cpu(self, arrays: Sequence[np.ndarray]) -> _Buffers:
        # One run to learn the output shapes (a shape's first call runs the model twice).
        torch = self._torch
        host_in = [np.empty(a.shape, dt) for a, dt in zip(arrays, self._in_dtypes, strict=True)]
        dev_in = [torch.from_numpy(h) for h in host_in]  # shares the memory: no copy per call
        for host, array in zip(host_in, arrays, strict=True):
            np.copyto(host, array, casting="same_kind")
        with torch.no_grad():
            outs = self._outputs_of(self._module(*dev_in))
        host_out = [np.empty(tuple(o.shape), dt) for o, dt in zip(outs, self._out_dtypes, strict=True)]
        return _Buffers(host_in, host_out, dev_in=dev_in)

    def _run_cpu(self, buffers: _Buffers) -> None:
        torch = self._torch
        with torch.no_grad():
            outs = self._outputs_of(self._module(*buffers.dev_in))
            for host, out in zip(buffers.host_out, outs, strict=True):
                torch.from_numpy(host).copy_(out)

    # ------------------------------------------------------------------ CUDA (not run here: no GPU)

    def _autocast(self, cache: bool = True) -> Any:
        # cache_enabled=False while capturing: the weight-cast cache must not outlive the capture.
        return self._torch.autocast("cuda", dtype=self._torch.float16, enabled=self.fp16, cache_enabled=cache)

    def _prepare_cuda(self, arrays: Sequence[np.ndarray]) -> _Buffers:
        torch = self._torch
        tdt = [torch.from_numpy(np.empty(0, dt)).dtype for dt in self._in_dtypes]
        pinned_in = [torch.empty(a.shape, dtype=t, pin_memory=True) for a, t in zip(arrays, tdt, strict=True)]
        dev_in = [torch.empty(a.shape, dtype=t, device=self._device) for a, t in zip(arrays, tdt, strict=True)]
        buffers = _Buffers([p.numpy() for p in pinned_in], [], dev_in=dev_in, pinned_in=pinned_in)
        for host, array in zip(buffers.host_in, arrays, strict=True):
            np.copyto(host, array, casting="same_kind")
        with torch.cuda.stream(self._stream), torch.no_grad():
            for dev, pinned in zip(dev_in, pinned_in, strict=True):
                dev.copy_(pinned, non_blocking=True)
            with self._autocast():
                for _ in range(WARMUP_RUNS):
                    outs = self._outputs_of(self._module(*dev_in))
            if self.cuda_graphs:
                outs, buffers.graph = self._capture(dev_in, outs)
        self._stream.synchronize()
        buffers.dev_out = outs  # a graph's outputs live at fixed addresses, rewritten by each replay
        odt = [torch.from_numpy(np.empty(0, dt)).dtype for dt in self._out_dtypes]
        pinned_out = [torch.empty(tuple(o.shape), dtype=t, pin_memory=True) for o, t in zip(outs, odt, strict=True)]
        buffers.pinned_out = pinned_out
        buffers.host_out = [p.numpy() for p in buffers.pinned_out]
        return buffers

    def _capture(self, dev_in: Sequence[Any], eager_outs: list[Any]) -> tuple[list[Any], Any]:
        """Capture one run as a CUDA graph; ``(eager_outs, None)`` when the module cannot be captured
        (an op that syncs with the host, e.g. a shape read back with ``.tolist()``): run eagerly."""
        torch = self._torch
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=self._stream), self._autocast(cache=False):
                outs = self._outputs_of(self._module(*dev_in))
        except RuntimeError as exc:
            log.warning("model %s cannot be captured as a CUDA graph (%s); it runs eagerly", self.name, exc)
            return eager_outs, None
        return outs, graph

    def _run_cuda(self, buffers: _Buffers) -> None:
        torch = self._torch
        with torch.cuda.stream(self._stream), torch.no_grad():
            for dev, pinned in zip(buffers.dev_in, buffers.pinned_in, strict=True):
                dev.copy_(pinned, non_blocking=True)
            if buffers.graph is not None:
                buffers.graph.replay()  # replays on the current stream: ours
                outs = buffers.dev_out
            else:
                with self._autocast():
                    outs = self._outputs_of(self._module(*buffers.dev_in))
            for pinned, out in zip(buffers.pinned_out, outs, strict=True):
                pinned.copy_(out, non_blocking=True)  # also casts fp16 results to the declared dtype
        self._stream.synchronize()

    # ------------------------------------------------------------------ description

    @property
    def provider(self) -> str:
        if self._module is None:
            return "inactive"
        extras = [x for x, on in (("fp16", self.fp16), ("cuda-graphs", self.cuda_graphs)) if on]
        return " ".join([f"torch:{self._device}", *extras])

    @property
    def inputs(self) -> list[TensorSpec]:
        return list(self._inputs)

    @property
    def outputs(self) -> list[TensorSpec]:
        return list(self._outputs)
