"""Stand-ins for the ``tensorrt`` module and a GPU, for the TensorRT tests that run on any machine.

They record the calls livefuse makes (shapes set, addresses bound, flags, profiles, layer
precisions) and move real bytes: device memory is numpy arrays found by address, and copies and
kernels queued on a stream only run when the stream is synchronised, like CUDA's asynchronous
work. The fake engine computes ``y = x * s[0] + 1`` (``y`` FP16) and ``n = [batch]``.

Also :func:`adain_model`, a small inswapper-like ONNX graph (an ``InstanceNormalization`` block
and a decomposed instance norm, each with AdaIN style modulation), for the FP32 selection tests
and the GPU build test.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from livefuse.engines.precision import trt_node_name

FLOAT32, FLOAT16 = np.dtype("float32"), np.dtype("float16")

# --------------------------------------------------------------------------- a GPU


class FakeStream:
    def __init__(self, handle: int) -> None:
        self.handle = handle
        self.pending: list[Callable[[], None]] = []
        self.closed = False

    def synchronize(self) -> None:
        work, self.pending = self.pending, []
        for item in work:
            item()

    def close(self) -> None:
        self.closed = True


@dataclass(eq=False)
class FakeMemory:
    nbytes: int
    ptr: int = 0
    array: np.ndarray = field(init=False)
    closed: bool = False

    def __post_init__(self) -> None:
        self.array = np.zeros(self.nbytes, np.uint8)

    def close(self) -> None:
        self.closed = True


class FakeGpu:
    """Device buffers at fake addresses; copies and kernels run at ``synchronize``."""

    def __init__(self) -> None:
        self.memory: dict[int, FakeMemory] = {}
        self.streams: dict[int, FakeStream] = {}
        self.owned: list[FakeStream | FakeMemory] = []
        self.allocations = 0
        self._addresses = itertools.count(1 << 32, 1 << 24)
        self._handles = itertools.count(7)

    def new_stream(self) -> FakeStream:
        stream = FakeStream(next(self._handles))
        self.streams[stream.handle] = stream
        self.owned.append(stream)
        return stream

    def host_buffer(self, nbytes: int) -> FakeMemory:
        self.allocations += 1
        buffer = FakeMemory(nbytes)
        self.owned.append(buffer)
        return buffer

    def device_buffer(self, nbytes: int) -> FakeMemory:
        self.allocations += 1
        buffer = FakeMemory(nbytes, ptr=next(self._addresses))
        self.memory[buffer.ptr] = buffer
        self.owned.append(buffer)
        return buffer

    def copy_h2d(self, dst: FakeMemory, src: np.ndarray, nbytes: int, stream: FakeStream) -> None:
        stream.pending.append(lambda: dst.array.__setitem__(slice(0, nbytes), src[:nbytes]))

    def copy_d2h(self, dst: np.ndarray, src: FakeMemory, nbytes: int, stream: FakeStream) -> None:
        stream.pending.append(lambda: dst.__setitem__(slice(0, nbytes), src.array[:nbytes]))

    def open(self) -> list[FakeStream | FakeMemory]:
        return [item for item in self.owned if not item.closed]


# --------------------------------------------------------------------------- the runtime side


class TensorIOMode:
    INPUT = "input"
    OUTPUT = "output"


class Logger:
    WARNING = 2
    VERBOSE = 4

    def __init__(self, level: int) -> None:
        self.level = level


#: The fake engine's tensors: (name, mode, dtype, engine shape, profile min/max or None).
ENGINE_TENSORS = (
    ("x", TensorIOMode.INPUT, "float32", (-1, 4), ((1, 4), (8, 4))),
    ("s", TensorIOMode.INPUT, "float16", (1,), None),
    ("y", TensorIOMode.OUTPUT, "float16", (-1, 4), None),
    ("n", TensorIOMode.OUTPUT, "float32", (1,), None),
)


class FakeContext:
    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.shape_calls: list[tuple[str, tuple[int, ...]]] = []
        self.address_calls: list[tuple[str, int]] = []
        self.runs = 0

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        self.shape_calls.append((name, tuple(shape)))
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        batch = self.shapes.get("x", (-1,))[0]
        return {"y": (batch, 4), "n": (1,)}[name]

    def set_tensor_address(self, name: str, pointer: int) -> bool:
        self.address_calls.append((name, pointer))
        self.addresses[name] = pointer
        return pointer % 256 == 0

    def execute_async_v3(self, stream: int) -> bool:
        self.runs += 1
        gpu, batch = self.engine.gpu, self.shapes["x"][0]
        where = dict(self.addresses)  # the kernel reads the addresses bound when it was queued

        def kernel() -> None:
            x = gpu.memory[where["x"]].array[: batch * 16].view(np.float32).reshape(batch, 4)
            s = gpu.memory[where["s"]].array[:2].view(np.float16)
            gpu.memory[where["y"]].array[: batch * 8].view(np.float16)[:] = (x * np.float32(s[0]) + 1).ravel()
            gpu.memory[where["n"]].array[:4].view(np.float32)[:] = batch

        gpu.streams[stream].pending.append(kernel)
        return True


class FakeEngine:
    def __init__(self, gpu: FakeGpu, streamable: int = 0) -> None:
        self.gpu = gpu
        self.tensors = {t[0]: t for t in ENGINE_TENSORS}
        self.device_memory_size_v2 = 3 << 20
        self.streamable_weights_size = streamable
        self.weight_streaming_budget_v2: int | None = None
        self.contexts: list[FakeContext] = []

    @property
    def num_io_tensors(self) -> int:
        return len(self.tensors)

    def get_tensor_name(self, index: int) -> str:
        return list(self.tensors)[index]

    def get_tensor_mode(self, name: str) -> str:
        return self.tensors[name][1]

    def get_tensor_dtype(self, name: str) -> np.dtype:
        return np.dtype(self.tensors[name][2])

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.tensors[name][3]

    def get_tensor_profile_shape(self, name: str, profile: int) -> list[tuple[int, ...]]:
        bounds = self.tensors[name][4]
        assert bounds is not None, f"{name} has no profile"
        low, high = bounds
        return [low, low, high]

    def create_execution_context(self) -> FakeContext:
        self.contexts.append(FakeContext(self))
        return self.contexts[-1]


# --------------------------------------------------------------------------- the builder side


@dataclass(eq=False)
class FakeTensor:
    name: str
    dtype: Any
    shape: tuple[int, ...] = ()


@dataclass(eq=False)
class FakeLayer:
    name: str
    metadata: str
    inputs: list[FakeTensor]
    outputs: list[FakeTensor]
    precision: Any = None
    output_types: dict[int, Any] = field(default_factory=dict)

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    @property
    def num_outputs(self) -> int:
        return len(self.outputs)

    def get_input(self, index: int) -> FakeTensor:
        return self.inputs[index]

    def get_output(self, index: int) -> FakeTensor:
        return self.outputs[index]

    def set_output_type(self, index: int, dtype: Any) -> None:
        self.output_types[index] = dtype


class FakeNetwork:
    def __init__(self, flags: int) -> None:
        self.flags = flags
        self.layers: list[FakeLayer] = []
        self.ins: list[FakeTensor] = []
        self.outs: list[FakeTensor] = []

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def num_inputs(self) -> int:
        return len(self.ins)

    @property
    def num_outputs(self) -> int:
        return len(self.outs)

    def get_layer(self, i: int) -> FakeLayer:
        return self.layers[i]

    def get_input(self, i: int) -> FakeTensor:
        return self.ins[i]

    def get_output(self, i: int) -> FakeTensor:
        return self.outs[i]


@dataclass
class FakeParserError:
    text: str
    index: int

    def desc(self) -> str:
        return self.text

    def node(self) -> int:
        return self.index


_ONNX_TYPES = {
    TensorProto.FLOAT: np.dtype("float32"),
    TensorProto.FLOAT16: np.dtype("float16"),
    TensorProto.INT64: np.dtype("int64"),
}


class FakeParser:
    """Makes one layer per ONNX node (named as TensorRT's parser names them), a second
    ``<node>_<n>`` layer for Sub nodes (as the parser's broadcast helpers are), and one unnamed
    TensorRT helper layer. Reshape and Split read their int64 shape/split constants as tensors."""

    unsupported = frozenset({"NonMaxSuppression"})

    def __init__(self, network: FakeNetwork, logger: Any, metadata: bool) -> None:
        self.network, self.metadata = network, metadata
        self.errors: list[FakeParserError] = []
        self._suffix = itertools.count(100)

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_error(self, i: int) -> FakeParserError:
        return self.errors[i]

    def parse_from_file(self, path: str) -> bool:
        graph = onnx.load(path).graph
        bad = [(i, n) for i, n in enumerate(graph.node) if n.op_type in self.unsupported]
        if bad:
            self.errors = [FakeParserError(f"No importer registered for op: {n.op_type}", i) for i, n in bad]
            return False
        types = {v.name: _ONNX_TYPES[v.type.tensor_type.elem_type] for v in (*graph.input, *graph.output)}
        types.update({t.name: _ONNX_TYPES.get(t.data_type, np.dtype("float32")) for t in graph.initializer})
        weights = {t.name for t in graph.initializer}
        for v in graph.input:
            if v.name not in weights:
                dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim)
                self.network.ins.append(FakeTensor(v.name, types[v.name], dims))
        self.network.outs = [FakeTensor(v.name, types[v.name], (-1,)) for v in graph.output]
        self.network.layers.append(FakeLayer("(Unnamed Layer* 0) [Constant]", "", [], [FakeTensor("c", FLOAT32)]))
        for node in graph.node:
            self._layers(node, types)
        return True

    def _layers(self, node: onnx.NodeProto, types: dict[str, Any]) -> None:
        name = trt_node_name(node)
        inputs = [FakeTensor(i, types.get(i, FLOAT32)) for i in node.input if i]
        outputs = [FakeTensor(o, FLOAT32) for o in node.output]
        meta = f"[ONNX Layer: {name}]" if self.metadata else ""
        self.network.layers.append(FakeLayer(name, meta, inputs, outputs))
        if node.op_type == "Sub":
            helper_name = f"{name}_{next(self._suffix)}"
            self.network.layers.append(FakeLayer(helper_name, meta, inputs[1:], [FakeTensor(helper_name, FLOAT32)]))


class FakeProfile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple[tuple[int, ...], ...]] = {}

    def set_shape(self, name: str, low: Any, opt: Any, high: Any) -> None:
        self.shapes[name] = (tuple(low), tuple(opt), tuple(high))


class FakeCache:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def serialize(self) -> bytes:
        return self.data + b"+"  # every build adds timings


class FakeConfig:
    def __init__(self, builder: FakeBuilder) -> None:
        self.builder = builder
        self.flags: set[str] = set()
        self.pools: dict[str, int] = {}
        self.profiles: list[FakeProfile] = []
        self.builder_optimization_level = -1
        self.cache_loaded: list[bytes] = []
        self.cache: FakeCache | None = None

    def set_memory_pool_limit(self, pool: str, size: int) -> None:
        self.pools[pool] = size

    def set_flag(self, flag: str) -> None:
        self.flags.add(flag)

    def add_optimization_profile(self, profile: FakeProfile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, data: bytes) -> FakeCache | None:
        self.cache_loaded.append(bytes(data))
        return None if data == b"corrupt" else FakeCache(bytes(data))

    def set_timing_cache(self, cache: FakeCache, ignore_mismatch: bool) -> bool:
        self.cache = cache
        return True

    def get_timing_cache(self) -> FakeCache:
        assert self.cache is not None
        return self.cache


class FakeBuilder:
    def __init__(self, trt: FakeTrt, logger: Any) -> None:
        self.trt = trt
        trt.builders.append(self)
        self.networks: list[FakeNetwork] = []
        self.configs: list[FakeConfig] = []
        self.built = 0

    def create_network(self, flags: int) -> FakeNetwork:
        self.networks.append(FakeNetwork(flags))
        return self.networks[-1]

    def create_builder_config(self) -> FakeConfig:
        self.configs.append(FakeConfig(self))
        return self.configs[-1]

    def create_optimization_profile(self) -> FakeProfile:
        return FakeProfile()

    def build_serialized_network(self, network: FakeNetwork, config: FakeConfig) -> bytes | None:
        self.built += 1
        if self.trt.fail_build:
            return None
        return json.dumps({"flags": sorted(config.flags), "layers": len(network.layers)}).encode()


class _Flags:
    FP16 = "FP16"
    OBEY_PRECISION_CONSTRAINTS = "OBEY_PRECISION_CONSTRAINTS"
    PREFER_PRECISION_CONSTRAINTS = "PREFER_PRECISION_CONSTRAINTS"
    WEIGHT_STREAMING = "WEIGHT_STREAMING"


class _NetworkFlags:
    STRONGLY_TYPED = 5


class _Pools:
    WORKSPACE = "WORKSPACE"


# --------------------------------------------------------------------------- the module


class FakeTrt:
    """Enough of the ``tensorrt`` module for livefuse's builder and runner."""

    Logger = Logger
    TensorIOMode = TensorIOMode
    BuilderFlag = _Flags
    NetworkDefinitionCreationFlag = _NetworkFlags
    MemoryPoolType = _Pools
    float32, float16 = FLOAT32, FLOAT16

    def __init__(self, gpu: FakeGpu | None = None, version: str = "10.3.0.post1", metadata: bool = True) -> None:
        self.__version__ = version
        self.gpu = gpu or FakeGpu()
        self.metadata = metadata
        self.streamable = 0
        self.engines: list[FakeEngine] = []
        self.builders: list[FakeBuilder] = []
        self.parsers: list[FakeParser] = []
        self.fail_build = False
        self.loadable = True

    @staticmethod
    def nptype(dtype: Any) -> Any:
        return np.dtype(dtype).type

    def Runtime(self, logger: Any) -> Any:  # noqa: N802 - the tensorrt spelling
        trt = self

        class _Runtime:
            def deserialize_cuda_engine(self, data: bytes) -> FakeEngine | None:
                if not trt.loadable:
                    return None
                trt.engines.append(FakeEngine(trt.gpu, trt.streamable))
                return trt.engines[-1]

        return _Runtime()

    def Builder(self, logger: Any) -> FakeBuilder:  # noqa: N802
        return FakeBuilder(self, logger)

    def OnnxParser(self, network: FakeNetwork, logger: Any) -> FakeParser:  # noqa: N802
        self.parsers.append(FakeParser(network, logger, self.metadata))
        return self.parsers[-1]


# --------------------------------------------------------------------------- an inswapper-like graph

#: The nodes of :func:`adain_model` that must stay FP32, and why.
ADAIN_FP32 = {
    "/b0/InstanceNormalization": "instance-norm",
    **dict.fromkeys(
        ["/b0/style/Gemm", "/b0/style/Reshape", "/b0/style/Split", "/b0/style/Add", "/b0/Mul", "/b0/Add"],
        "adain style modulation",
    ),
    **dict.fromkeys(
        ["/b1/ReduceMean", "/b1/Sub", "/b1/Pow", "/b1/ReduceMean_1", "/b1/Add", "/b1/Sqrt", "/b1/Div"],
        "instance-norm (decomposed)",
    ),
    **dict.fromkeys(
        ["/b1/style/Gemm", "/b1/style/Reshape", "/b1/style/Split", "/b1/Mul", "/b1/Add_1"], "adain style modulation"
    ),
}


def adain_model(batch: int | str = "N", channels: int = 4, side: int = 8, latent: int = 16) -> onnx.ModelProto:
    """Conv → InstanceNormalization + AdaIN → ReLU → decomposed norm + AdaIN → residual → Sigmoid."""
    rng = np.random.default_rng(0)
    inits: list[onnx.TensorProto] = []

    def w(name: str, shape: list[int], scale: float = 0.3) -> str:
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name))
        return name

    def c(name: str, value: Any, dtype: Any = np.float32) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def node(op: str, inputs: list[str], outputs: list[str], name: str, **attrs: Any) -> onnx.NodeProto:
        return helper.make_node(op, inputs, outputs, name=name, **attrs)

    ch = channels
    style = [c("shape", [-1, 2 * ch, 1, 1], np.int64), c("halves", [ch, ch], np.int64)]
    nodes = [
        node("Conv", ["target", w("conv_w", [ch, 3, 3, 3]), w("conv_b", [ch])], ["feat"], "/enc/Conv", pads=[1] * 4),
        node(
            "InstanceNormalization",
            ["feat", c("in_s", np.ones(ch)), c("in_b", np.zeros(ch))],
            ["n0"],
            "/b0/InstanceNormalization",
            epsilon=1e-5,
        ),
        node("Gemm", ["source", w("g0", [2 * ch, latent]), w("g0b", [2 * ch])], ["s0"], "/b0/style/Gemm", transB=1),
        node("Reshape", ["s0", style[0]], ["s0r"], "/b0/style/Reshape"),
        node("Split", ["s0r", style[1]], ["scale0", "shift0"], "/b0/style/Split", axis=1),
        node("Add", ["scale0", c("one", 1.0)], ["scale0p"], "/b0/style/Add"),
        node("Mul", ["n0", "scale0p"], ["m0"], "/b0/Mul"),
        node("Add", ["m0", "shift0"], ["a0"], "/b0/Add"),
        node("Relu", ["a0"], ["r0"], "/b0/Relu"),
        node("ReduceMean", ["r0"], ["mu"], "/b1/ReduceMean", axes=[2, 3], keepdims=1),
        node("Sub", ["r0", "mu"], ["cen"], "/b1/Sub"),
        node("Pow", ["cen", c("two", 2.0)], ["sq"], "/b1/Pow"),
        node("ReduceMean", ["sq"], ["var"], "/b1/ReduceMean_1", axes=[2, 3], keepdims=1),
        node("Add", ["var", c("eps", 1e-5)], ["ve"], "/b1/Add"),
        node("Sqrt", ["ve"], ["std"], "/b1/Sqrt"),
        node("Div", ["cen", "std"], ["n1"], "/b1/Div"),
        node("Gemm", ["source", w("g1", [2 * ch, latent]), w("g1b", [2 * ch])], ["s1"], "/b1/style/Gemm", transB=1),
        node("Reshape", ["s1", style[0]], ["s1r"], "/b1/style/Reshape"),
        node("Split", ["s1r", style[1]], ["scale1", "shift1"], "/b1/style/Split", axis=1),
        node("Mul", ["n1", "scale1"], ["m1"], "/b1/Mul"),
        node("Add", ["m1", "shift1"], ["a1"], "/b1/Add_1"),
        node("Add", ["feat", "a1"], ["res"], "/Add"),
        node("Conv", ["res", w("out_w", [3, ch, 1, 1]), w("out_b", [3])], ["rgb"], "/dec/Conv"),
        node("Sigmoid", ["rgb"], ["output"], "/Sigmoid"),
    ]
    graph = helper.make_graph(
        nodes,
        "adain",
        [
            helper.make_tensor_value_info("target", TensorProto.FLOAT, [batch, 3, side, side]),
            helper.make_tensor_value_info("source", TensorProto.FLOAT, [batch, latent]),
        ],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, 3, side, side])],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def write_model(model: onnx.ModelProto, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path
