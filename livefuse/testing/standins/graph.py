"""The ONNX graph builder the stand-ins are made with: a small net of named nodes, seeded weights,
and the family quirks (the inswapper emap) written into the finished model."""

from __future__ import annotations

import itertools
import math
import zlib
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, BinaryIO

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from livefuse.models.manifest import (
    ModelSpec,
    TensorContract,
)

#: Opset and IR version of every stand-in: old enough for onnxruntime 1.17 (livefuse's floor).
OPSET = 17
IR_VERSION = 8

#: Values used for dynamic input dims when counting MACs (the models' nominal sizes).
NOMINAL_DIMS: Mapping[str, int] = MappingProxyType({"None": 1, "batch_size": 1, "?": 640})

_ELEM = MappingProxyType({"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16})


# --------------------------------------------------------------------------- graph builder


class _Net:
    """Accumulates nodes and seeded weights; names nodes ``<Op>_<n>`` like old exporters.

    Weights are declared first and drawn later, in declaration order (so the same seed always
    gives the same weights): :meth:`model` stores them in the graph or, with
    ``materialize=False``, declares them as graph inputs with their shapes only, so huge
    graphs can be analysed (MACs, parameters) in milliseconds; :meth:`write` streams them to a
    file one at a time, so even inswapper's 554 MB never sit in memory twice.
    """

    def __init__(self, seed_name: str, *, fp16: bool = False) -> None:
        self.rng = np.random.default_rng(zlib.crc32(seed_name.encode()))
        self.dtype = np.dtype(np.float16 if fp16 else np.float32)
        self.nodes: list[onnx.NodeProto] = []
        self.consts: list[onnx.TensorProto] = []
        self.params: list[tuple[str, tuple[int, ...], Callable[[], np.ndarray]]] = []
        self.outputs: list[str] = []
        self._ids = itertools.count()

    def _name(self, prefix: str) -> str:
        return f"{prefix}_{next(self._ids)}"

    def param(self, shape: Sequence[int], std: float, mean: float = 0.0) -> str:
        """A weight of ``shape``, to be drawn from N(mean, std²)."""
        name = self._name("w")
        self.params.append((name, tuple(shape), lambda: self._draw(shape, std, mean)))
        return name

    def _draw(self, shape: Sequence[int], std: float, mean: float) -> np.ndarray:
        data = self.rng.standard_normal(tuple(shape), dtype=np.float32)
        data *= np.float32(std)
        data += np.float32(mean)
        return data.astype(self.dtype, copy=False)

    def const(self, value: Any, dtype: Any = None) -> str:
        """A small constant, always stored (shape inference needs its value)."""
        name = self._name("c")
        array = np.asarray(value, dtype=self.dtype if dtype is None else dtype)
        self.consts.append(numpy_helper.from_array(array, name))
        return name

    def op(self, op_type: str, *inputs: str, **attrs: Any) -> str:
        """Append one single-output node; return its output's name."""
        name = self._name(op_type)
        self.nodes.append(helper.make_node(op_type, list(inputs), [name], name=name, **attrs))
        return name

    def ops(self, op_type: str, inputs: Sequence[str], count: int, **attrs: Any) -> list[str]:
        """Append one node with ``count`` outputs."""
        name = self._name(op_type)
        outs = [f"{name}:{i}" for i in range(count)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=name, **attrs))
        return outs

    def named(self, x: str, name: str) -> str:
        """Give tensor ``x`` the graph-output name ``name``."""
        self.nodes.append(helper.make_node("Identity", [x], [name], name=self._name("Identity")))
        return name

    # ------------------------------------------------------------------ layers

    def conv(
        self,
        x: str,
        cin: int,
        cout: int,
        k: int,
        s: int = 1,
        p: int | None = None,
        *,
        group: int = 1,
        bias: bool = True,
        gain: float = 1.0,
    ) -> str:
        pad = k // 2 if p is None else p
        fan_in = cin // group * k * k
        w = self.param([cout, cin // group, k, k], gain / math.sqrt(fan_in))
        inputs = [x, w, self.param([cout], 0.01)] if bias else [x, w]
        return self.op("Conv", *inputs, kernel_shape=[k, k], strides=[s, s], pads=[pad] * 4, group=group)

    def deconv(self, x: str, cin: int, cout: int, k: int, s: int, p: int, out_pad: int = 0) -> str:
        w = self.param([cin, cout, k, k], 1.0 / math.sqrt(cin * k * k / (s * s)))
        return self.op(
            "ConvTranspose",
            x,
            w,
            self.param([cout], 0.01),
            kernel_shape=[k, k],
            strides=[s, s],
            pads=[p] * 4,
            output_padding=[out_pad, out_pad],
        )

    def gemm(self, x: str, nin: int, nout: int, *, bias_mean: float = 0.0, gain: float = 1.0) -> str:
        w = self.param([nout, nin], gain / math.sqrt(nin))
        return self.op("Gemm", x, w, self.param([nout], 0.01, bias_mean), transB=1)

    def leaky(self, x: str, alpha: float = 0.2) -> str:
        return self.op("LeakyRelu", x, alpha=alpha)

    def relu(self, x: str) -> str:
        return self.op("Relu", x)

    def prelu(self, x: str, c: int) -> str:
        return self.op("PRelu", x, self.param([c, 1, 1], 0.01, 0.25))

    def bn(self, x: str, c: int) -> str:
        scale, shift = self.param([c], 0.02, 1.0), self.param([c], 0.02)
        mean, var = self.param([c], 0.02), self.param([c], 0.02, 1.0)
        return self.op("BatchNormalization", x, scale, shift, mean, var, epsilon=1e-5)

    def add(self, a: str, b: str) -> str:
        return self.op("Add", a, b)

    def mul(self, a: str, b: str) -> str:
        return self.op("Mul", a, b)

    def resize(self, x: str, scale: float, *, mode: str = "linear", align: bool = False) -> str:
        scales = self.const([1.0, 1.0, scale, scale], np.float32)
        if mode == "nearest":
            kw = {"coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}
        else:
            kw = {"coordinate_transformation_mode": "align_corners" if align else "half_pixel"}
        return self.op("Resize", x, "", scales, mode=mode, **kw)

    def reflect_pad(self, x: str, p: int) -> str:
        return self.op("Pad", x, self.const([0, 0, p, p, 0, 0, p, p], np.int64), mode="reflect")

    def inorm(self, x: str, eps: float) -> str:
        """Instance norm without affine, spelled out as the inswapper export does."""
        centred = self.op("Sub", x, self.op("ReduceMean", x, axes=[2, 3], keepdims=1))
        var = self.op("ReduceMean", self.mul(centred, centred), axes=[2, 3], keepdims=1)
        return self.op("Div", centred, self.op("Sqrt", self.add(var, self.const(eps))))

    def reshape(self, x: str, shape: Sequence[int]) -> str:
        return self.op("Reshape", x, self.const(list(shape), np.int64))

    def style(self, latent: str, nin: int, c: int, *, plus_one: bool = False) -> tuple[str, str]:
        """(scale, shift), each [1,c,1,1], from ``Gemm(latent)`` (AdaIN-style modulation)."""
        s = self.reshape(self.gemm(latent, nin, 2 * c, gain=0.2), [1, 2 * c, 1, 1])
        scale, shift = self.ops("Split", [s, self.const([c, c], np.int64)], 2, axis=1)
        if plus_one:
            scale = self.add(scale, self.const(1.0))
        return scale, shift

    def to_nhwc_rows(self, x: str, cols: int, *, batch_dim: bool) -> str:
        """[1,C,H,W] → [H*W*C/cols, cols] (or [1, ..., cols]): the detectors' output layout."""
        flat = self.op("Transpose", x, perm=[0, 2, 3, 1])
        return self.reshape(flat, [1, -1, cols] if batch_dim else [-1, cols])

    # ------------------------------------------------------------------ model

    def finish(self, spec: ModelSpec, outputs: Sequence[str]) -> None:
        """Name the results as the contract's outputs; the graph is complete after this."""
        self.spec = spec
        for tensor, contract in zip(outputs, spec.outputs, strict=True):
            self.named(tensor, contract.name)

    def model(self, *, materialize: bool = True) -> onnx.ModelProto:
        """The model: weights stored, or (``materialize=False``) declared as shaped inputs."""
        elem = TensorProto.FLOAT16 if self.dtype == np.float16 else TensorProto.FLOAT
        declared = (
            []
            if materialize
            else [helper.make_tensor_value_info(name, elem, list(shape)) for name, shape, _ in self.params]
        )
        model = self._skeleton(declared)
        if materialize:
            for name, _, draw in self.params:
                model.graph.initializer.append(numpy_helper.from_array(draw(), name))
        return model

    def _skeleton(self, declared: Sequence[onnx.ValueInfoProto]) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            f"livefuse-standin-{self.spec.name}",
            [_value_info(c) for c in self.spec.inputs] + list(declared),
            [_value_info(c) for c in self.spec.outputs],
            initializer=self.consts,
        )
        return helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            ir_version=IR_VERSION,
            producer_name="livefuse-standins",
            producer_version="1",
        )

    def write(self, out: BinaryIO) -> None:
        """Serialize the materialised model to ``out``, drawing one weight at a time.

        Protobuf lets a message's fields come in any order and concatenates repeated ones, so
        the model is written as its weightless skeleton followed by each weight as one more
        ``GraphProto.initializer`` field (in declaration order: the emap stays last).
        """
        skeleton = self._skeleton(())
        graph_bytes = skeleton.graph.SerializeToString()
        skeleton.ClearField("graph")
        metas = [self._tensor_meta(name, shape) for name, shape, _ in self.params]
        fields = [_field_size(_GRAPH_INITIALIZER, size) for _, size in metas]
        out.write(skeleton.SerializeToString())
        out.write(_key(_MODEL_GRAPH) + _varint(len(graph_bytes) + sum(fields)))
        out.write(graph_bytes)
        for (meta, size), (_, _, draw) in zip(metas, self.params, strict=True):
            data = draw().tobytes()
            out.write(_key(_GRAPH_INITIALIZER) + _varint(size) + meta)
            out.write(_key(_TENSOR_RAW_DATA) + _varint(len(data)))
            out.write(data)

    def _tensor_meta(self, name: str, shape: Sequence[int]) -> tuple[bytes, int]:
        """(the TensorProto's fields but raw_data, the full TensorProto's size)."""
        elem = TensorProto.FLOAT16 if self.dtype == np.float16 else TensorProto.FLOAT
        meta = TensorProto(name=name, data_type=elem, dims=list(shape))
        data = self.dtype.itemsize * math.prod(shape)
        encoded = meta.SerializeToString()
        return encoded, len(encoded) + _field_size(_TENSOR_RAW_DATA, data)

    def image_input(self, contract: TensorContract) -> str:
        """The graph input, cast to the compute dtype when that is float16."""
        if self.dtype == np.float16:
            return self.op("Cast", contract.name, to=TensorProto.FLOAT16)
        return contract.name

    def float_output(self, x: str) -> str:
        """Cast a float16 result back to the float32 the contract declares."""
        return self.op("Cast", x, to=TensorProto.FLOAT) if self.dtype == np.float16 else x


def _value_info(contract: TensorContract) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(contract.name, _ELEM[contract.dtype], list(contract.shape))


# Protobuf field numbers the streaming writer needs (from onnx.proto).
_MODEL_GRAPH = 7
_GRAPH_INITIALIZER = 5
_TENSOR_RAW_DATA = 9


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _key(field_number: int) -> bytes:
    return _varint(field_number << 3 | 2)  # wire type 2: length-delimited


def _field_size(field_number: int, payload: int) -> int:
    return len(_key(field_number)) + len(_varint(payload)) + payload


def _emap(net: _Net, rng_name: str) -> None:
    """Declare the identity map last: a random orthogonal [512,512] matrix read by no node."""

    def draw() -> np.ndarray:
        rng = np.random.default_rng(zlib.crc32(rng_name.encode()))
        q, _ = np.linalg.qr(rng.standard_normal((512, 512)))
        return q.astype(net.dtype)

    net.params.append(("emap", (512, 512), draw))


#: Builds a stand-in's graph on a net; returns its output names.
Builder = Callable[[_Net, ModelSpec], list[str]]
