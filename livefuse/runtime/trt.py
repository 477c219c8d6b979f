"""TensorRT runner: a prebuilt engine (``scripts/build_engines.py``) run through cuda-python.

``activate`` finds the engine that fits this machine (:func:`~livefuse.runtime.engine_files.find_engine`
refuses stale or foreign ones with the rebuild command), deserialises it, creates one execution
context and allocates everything once, for the largest shapes the engine takes: a device buffer
and a pinned host buffer per input and output, the runner's own CUDA stream, and the views of
those buffers for every batch size. A call then copies the feeds into the pinned buffers, queues
the uploads, sets the input shapes only if they changed and the tensor addresses only if one
changed, queues ``execute_async_v3`` and the downloads, and waits for the stream. The returned
arrays are views into the pinned output buffers, sliced to the batch: copy them if they must
outlive the next call. Detectors whose H and W vary get their views made on the first call of
each new shape (:data:`MAX_EXTRA_SHAPES` are kept); no GPU memory is ever allocated after activate.

:meth:`TrtRunner.infer_device` runs on the caller's device pointers and stream with no host copy
(the GPU-resident frame path). I/O tensors may be FP16 or FP32 (the engine says which). With
``weight_budget``, an engine built with ``--weight-streaming`` keeps at most that many bytes of
weights on the GPU (``weight_streaming_budget_v2``). CUDA errors surface through
:func:`livefuse.runtime.cuda.check` (inside ``CudaDevice``).

The ``tensorrt`` module and the GPU are parameters: the tests drive the shape, address and
buffer logic with fakes on any machine; a real round trip needs a GPU (tests marked ``gpu``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from livefuse.errors import ConfigError, EngineError, LivefuseError
from livefuse.models.manifest import ModelSpec
from livefuse.runtime.base import Runner, TensorSpec
from livefuse.runtime.engine_files import ComputeCapability, EngineRecord, build_command, find_engine, read_engine
from livefuse.runtime.trt_env import cuda_module, import_tensorrt, local_gpu, trt_version
from livefuse.runtime.trt_io import EngineMemory, GpuOps, Io, Shapes, activation_bytes, tensor_spec

log = logging.getLogger(__name__)

#: Input shapes other than the batch sizes (detectors' varying H and W) whose views are kept.
MAX_EXTRA_SHAPES = 8


class TrtRunner(Runner):
    """Runs the prebuilt TensorRT engine of ``spec`` from ``engines_dir`` (see the module docstring).

    ``max_batch``: the most faces per call (default: what the engine was built for; the engine
    must take at least that many). ``onnx_sha256``: the installed file's hash (default: the
    manifest's pin). ``trt``, ``gpu`` and ``cc`` replace the ``tensorrt`` module, the CUDA device
    and its compute capability (tests); by default they are imported and asked for.
    """

    def __init__(
        self,
        spec: ModelSpec,
        engines_dir: Path,
        *,
        onnx_sha256: str | None = None,
        max_batch: int | None = None,
        weight_budget: int | None = None,
        device: int = 0,
        name: str | None = None,
        trt: Any = None,
        gpu: GpuOps | None = None,
        cc: ComputeCapability | None = None,
    ) -> None:
        super().__init__(name or spec.name)
        if max_batch is not None and max_batch < 1:
            raise ConfigError(f"max_batch must be at least 1, got {max_batch}")
        if weight_budget is not None and weight_budget < 0:
            raise ConfigError(f"weight_budget is a number of bytes, got {weight_budget}")
        self.spec, self.engines_dir, self._sha = spec, Path(engines_dir), onnx_sha256
        self._want, self._budget, self._device = max_batch, weight_budget, device
        self._trt_arg, self._gpu_arg, self._cc = trt, gpu, cc
        self.engine_path: Path | None = None
        self.record: EngineRecord | None = None
        self._reset()

    def _reset(self) -> None:
        self._trt: Any = None
        self._gpu: Any = None
        self._logger: Any = None
        self._runtime: Any = None
        self._engine: Any = None
        self._context: Any = None
        self._stream: Any = None
        self._stream_handle = 0
        self._inputs: list[Io] = []
        self._outputs: list[Io] = []
        self._batches: list[Shapes] = []
        "``_batches[b - 1]``: the shapes, sizes and views for a batch of ``b`` (the engine's largest H, W)."
        self._extra: dict[tuple[tuple[int, ...], ...], Shapes] = {}
        self._own_in: list[int] = []
        self._own_out: list[int] = []
        self._bound: list[int | None] = []
        self._names: frozenset[str] = frozenset()
        self._current: tuple[tuple[int, ...], ...] = ()
        self._batched_at: int | None = None
        "Index of the first input with a dynamic batch dim: its feed says the batch."
        self.capacity = 0

    # ------------------------------------------------------------------ activate

    def activate_impl(self) -> None:
        try:
            self._load()
            self._describe()
            self._allocate()
        except BaseException:
            self._release()
            raise
        log.info("model %s runs on TensorRT engine %s: %s", self.name, self.engine_path, self.memory().summary())

    def _load(self) -> None:
        self._trt = trt = self._trt_arg if self._trt_arg is not None else import_tensorrt()
        cc = self._cc if self._cc is not None else local_gpu(self._device).cc
        self._gpu = self._gpu_arg if self._gpu_arg is not None else cuda_module().CudaDevice(self._device)
        match = find_engine(
            self.spec, trt_version(trt.__version__), cc, self.engines_dir, onnx_sha256=self._sha, batch=self._want or 1
        )
        self.engine_path, self.record = match.path, match.record
        self.capacity = self._want or match.record.max_batch
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(read_engine(match))
        if self._engine is None:
            raise EngineError(
                f"TensorRT could not load the engine {match.path} (its log above says why: a changed "
                f"TensorRT, driver or GPU); rebuild it: {build_command(self.spec.name)}"
            )
        self._set_weight_budget()
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise EngineError(
                f"TensorRT could not create an execution context for {match.path}: the GPU is "
                f"probably out of memory (it needs {activation_bytes(self._engine) >> 20} MiB); "
                "close other GPU programs or build with a smaller --max-batch"
            )

    def _set_weight_budget(self) -> None:
        if self._budget is None:
            return
        streamable = int(getattr(self._engine, "streamable_weights_size", 0))
        if streamable <= 0:
            raise ConfigError(
                f"a weight budget was given but {self.engine_path} has no streamable weights; rebuild it with "
                f"'{build_command(self.spec.name)} --weight-streaming' (needs the model's FP16 ONNX file)"
            )
        # Set before the execution context exists: it is what stays on the GPU, the rest streams.
        self._engine.weight_streaming_budget_v2 = min(self._budget, streamable)

    def _describe(self) -> None:
        """The engine's inputs and outputs, their profile bounds, and the shapes of every batch."""
        trt, engine = self._trt, self._engine
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            io = Io(
                name,
                engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
                np.dtype(trt.nptype(engine.get_tensor_dtype(name))),
                tuple(int(d) for d in engine.get_tensor_shape(name)),
            )
            if io.is_input and io.dynamic:
                low, _, high = engine.get_tensor_profile_shape(name, 0)
                io.bounds(tuple(int(d) for d in low), tuple(int(d) for d in high), self.capacity)
            (self._inputs if io.is_input else self._outputs).append(io)
        self._batched_at = next((k for k, io in enumerate(self._inputs) if io.batched), None)
        self._batches = [
            self._shapes(tuple(io.batch_shape(b) for io in self._inputs)) for b in range(1, self.capacity + 1)
        ]

    def _shapes(self, key: tuple[tuple[int, ...], ...]) -> Shapes:
        """The output shapes TensorRT infers for input shapes ``key`` (set on the context)."""
        self._set_shapes(key)
        outputs = tuple(tuple(int(d) for d in self._context.get_tensor_shape(io.name)) for io in self._outputs)
        for io, shape in zip(self._outputs, outputs):
            if -1 in shape:
                raise EngineError(
                    f"output {io.name!r} of {self.engine_path} has a data-dependent shape {shape}; "
                    "livefuse preallocates outputs and cannot run this engine"
                )
        return Shapes(key, outputs, [*self._inputs, *self._outputs])

    def _allocate(self) -> None:
        ios = [*self._inputs, *self._outputs]
        for k, io in enumerate(ios):
            io.allocated = max(1, max(shapes.sizes[k] for shapes in self._batches))
            io.device = self._gpu.device_buffer(io.allocated)
            io.host = self._gpu.host_buffer(io.allocated)
        for shapes in self._batches:
            shapes.make_views(ios)
        self._own_in = [io.device.ptr for io in self._inputs]
        self._own_out = [io.device.ptr for io in self._outputs]
        self._bound = [None] * len(ios)
        self._names = frozenset(io.name for io in ios)
        self._stream = self._gpu.new_stream()
        self._stream_handle = int(self._stream.handle)

    # ------------------------------------------------------------------ calls

    def infer_impl(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        shapes = self._lookup(feeds)
        for k, io in enumerate(self._inputs):
            np.copyto(shapes.views[k], feeds[io.name], casting="same_kind")  # to the engine's FP16/FP32, in place
            self._gpu.copy_h2d(io.device, io.host.array, shapes.sizes[k], self._stream)
        self._set_shapes(shapes.key)
        for k, io in enumerate(self._inputs):
            self._bind(k, io, self._own_in[k])
        first = len(self._inputs)
        for k, io in enumerate(self._outputs):
            self._bind(first + k, io, self._own_out[k])
        self._run(self._stream_handle)
        for k, io in enumerate(self._outputs, start=first):
            self._gpu.copy_d2h(io.host.array, io.device, shapes.sizes[k], self._stream)
        self._stream.synchronize()
        return shapes.results

    def infer_device(self, inputs: Mapping[str, int], outputs: Mapping[str, int], batch: int, stream: Any) -> None:
        """Queue one run of ``batch`` faces on ``stream`` (a :class:`~livefuse.runtime.cuda.Stream`
        or a ``cudaStream_t``) on device memory: tensor name → device address, no host copies,
        no waiting (:class:`livefuse.swap.gpu.path.DeviceModel`). Every input must be given; outputs
        not given go to the runner's own buffers. Each buffer must hold its tensor for ``batch``
        (:meth:`io_bytes`), at a 256-byte aligned address.

        One execution context runs one call at a time: order these calls and :meth:`infer`
        (same stream, or synchronise in between).
        """
        if not self.is_active:
            raise RuntimeError(f"runner {self.name!r} must be activated before infer_device()")
        missing = [io.name for io in self._inputs if io.name not in inputs]
        unknown = [name for name in (*inputs, *outputs) if name not in self._names]
        if missing or unknown:
            raise ValueError(
                f"model {self.name!r} takes inputs {[io.name for io in self._inputs]} and outputs "
                f"{[io.name for io in self._outputs]}; missing {missing}, unknown {unknown}"
            )
        self._set_shapes(self._batches[self._checked_batch(batch) - 1].key)
        for k, io in enumerate(self._inputs):
            self._bind(k, io, inputs[io.name])
        first = len(self._inputs)
        for k, io in enumerate(self._outputs):
            self._bind(first + k, io, outputs.get(io.name, self._own_out[k]))
        self._run(int(getattr(stream, "handle", stream)))

    def io_bytes(self, batch: int = 1) -> tuple[list[int], list[int]]:
        """Bytes of each input and each output for ``batch`` faces (for :meth:`infer_device`)."""
        sizes = self._batches[self._checked_batch(batch) - 1].sizes
        return list(sizes[: len(self._inputs)]), list(sizes[len(self._inputs) :])

    def _checked_batch(self, batch: int) -> int:
        if not 1 <= batch <= self.capacity:
            raise ValueError(
                f"model {self.name!r} takes 1..{self.capacity} faces per call, got {batch} "
                f"(engines are built for a batch range: {build_command(self.spec.name)} --max-batch N)"
            )
        return batch

    def _lookup(self, feeds: Mapping[str, np.ndarray]) -> Shapes:
        """The shapes entry of these feeds: a batch entry, a kept extra one, or a new extra one."""
        missing = [io.name for io in self._inputs if io.name not in feeds]
        if missing:
            raise ValueError(f"model {self.name!r} needs input {missing[0]!r}; got {sorted(feeds)}")
        batch = 1
        if self._batched_at is not None:
            shape = feeds[self._inputs[self._batched_at].name].shape
            batch = shape[0] if shape else 0
        if 1 <= batch <= self.capacity:
            shapes = self._batches[batch - 1]
            if all(feeds[io.name].shape == shape for io, shape in zip(self._inputs, shapes.key)):
                return shapes
        key = tuple(tuple(feeds[io.name].shape) for io in self._inputs)
        return self._extra.get(key) or self._add_extra(key)

    def _add_extra(self, key: tuple[tuple[int, ...], ...]) -> Shapes:
        for io, shape in zip(self._inputs, key):
            problem = io.shape_problem(shape, self.capacity)
            if problem:
                raise ValueError(f"input {io.name!r} of model {self.name!r} {problem}")
        shapes = self._shapes(key)
        ios = [*self._inputs, *self._outputs]
        too_big = [io.name for io, size in zip(ios, shapes.sizes) if size > io.allocated]
        if too_big:
            raise ValueError(
                f"model {self.name!r}: shapes {key} need more than the buffers made for the engine's "
                f"largest shapes ({', '.join(too_big)})"
            )
        shapes.make_views(ios)
        if len(self._extra) >= MAX_EXTRA_SHAPES:
            self._extra.pop(next(iter(self._extra)))  # the oldest
        self._extra[key] = shapes
        return shapes

    def _set_shapes(self, key: tuple[tuple[int, ...], ...]) -> None:
        """Set the dynamic input shapes, only when they change (each change costs a shape inference)."""
        if key == self._current:
            return
        for io, shape in zip(self._inputs, key):
            if io.dynamic and not self._context.set_input_shape(io.name, shape):
                raise EngineError(
                    f"TensorRT refused shape {shape} for input {io.name!r} of {self.engine_path}; "
                    f"rebuild it: {build_command(self.spec.name)}"
                )
        self._current = key

    def _bind(self, slot: int, io: Io, pointer: int) -> None:
        """Set a tensor's address, only when it changed since the last call."""
        if self._bound[slot] == pointer:
            return
        if not self._context.set_tensor_address(io.name, pointer):
            raise EngineError(
                f"TensorRT refused address {pointer:#x} for tensor {io.name!r} of "
                f"{self.engine_path} (TensorRT wants 256-byte aligned device memory)"
            )
        self._bound[slot] = pointer

    def _run(self, stream: int) -> None:
        if not self._context.execute_async_v3(stream):
            raise EngineError(
                f"TensorRT could not run {self.engine_path} (its log above says why); run 'livefuse doctor'"
            )

    # ------------------------------------------------------------------ memory and teardown

    def memory(self) -> EngineMemory:
        """What this runner holds on the GPU and in pinned memory (once activated)."""
        if self._engine is None:
            raise RuntimeError(f"runner {self.name!r} must be activated before memory()")
        allocated = sum(io.allocated for io in (*self._inputs, *self._outputs))
        return EngineMemory(
            activation_bytes(self._engine),
            allocated,
            allocated,
            int(getattr(self._engine, "streamable_weights_size", 0)),
            self._budget,
            self.capacity,
        )

    def close_impl(self) -> None:
        self._release()

    def _release(self) -> None:
        """Free everything; TensorRT objects go context, engine, runtime (each needs the next)."""
        owned = [b for io in (*self._inputs, *self._outputs) for b in (io.device, io.host) if b is not None]
        owned += [self._stream] if self._stream is not None else []
        self._context = None
        self._engine = None
        self._runtime = None
        self._reset()
        first: LivefuseError | None = None
        for item in owned:
            try:
                item.close()
            except LivefuseError as exc:  # free the rest, then report the first failure
                first = first or exc
        if first is not None:
            raise first

    # ------------------------------------------------------------------ Runner

    @property
    def provider(self) -> str:
        return "tensorrt" if self._engine is not None else "inactive"

    @property
    def inputs(self) -> list[TensorSpec]:
        return [tensor_spec(io) for io in self._inputs]

    @property
    def outputs(self) -> list[TensorSpec]:
        return [tensor_spec(io) for io in self._outputs]
