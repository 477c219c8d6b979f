"""Stand-in ONNX models with the exact interface of the real ones, built from numpy alone.

The real neural models (inswapper, ArcFace, GFPGAN...) cannot ship with livefuse or its tests:
their licences forbid it. For every optional model of the manifest this module builds:

* a **tiny** stand-in (:func:`make_tiny`): identical inputs and outputs (names, order, ranks,
  dims, dtypes, dynamic dims as dim_params), the family's quirks (the inswapper emap as the
  last initializer, read by no node), output values in the family's range, and a small,
  seeded, input-dependent computation. Files are well under 1 MB (inswapper_128's is 1.05 MB:
  its float32 emap alone is 1 MiB) and run in milliseconds: the tests use them.
* an **architecture-faithful** stand-in (:func:`make_faithful`): random weights but the real
  layer structure, hence the real parameter count and compute (inswapper_128: 138.3 M
  parameters, 174.6 GMAC), for benchmarks. They are big (inswapper_128: 554 MB) and are
  generated on demand into a cache directory, never committed.

:func:`count_macs` counts multiply-accumulates of Conv/ConvTranspose/Gemm/MatMul nodes from
shape inference, without touching weight data, so it also works on graphs built with
``faithful_model(name, shapes_only=True)`` (weights declared, never drawn).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, BinaryIO

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from livefuse.models.files import atomic_path, atomic_write, sha256_bytes
from livefuse.models.manifest import (
    ModelSpec,
    TensorContract,
    UrlSource,
    load_manifest,
    load_templates,
    render_manifest,
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
        return self.op(
            "Conv", *inputs, kernel_shape=[k, k], strides=[s, s], pads=[pad] * 4, group=group
        )

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
        declared = [] if materialize else [
            helper.make_tensor_value_info(name, elem, list(shape)) for name, shape, _ in self.params
        ]
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


# --------------------------------------------------------------------------- tiny stand-ins


def _tiny_arcface(net: _Net, spec: ModelSpec) -> list[str]:
    # No Sub/Mul node near the top: insightface would take it for in-graph normalisation.
    x = net.leaky(net.conv(spec.inputs[0].name, 3, 8, 4, 4, 0))
    x = net.leaky(net.conv(x, 8, 8, 4, 4, 0))
    x = net.op("Flatten", net.conv(x, 8, 4, 1), axis=1)
    return [net.gemm(x, 4 * 7 * 7, 512, gain=4.0)]


def _tiny_inswapper(net: _Net, spec: ModelSpec) -> list[str]:
    target, source = net.image_input(spec.inputs[0]), net.image_input(spec.inputs[1])
    x = net.leaky(net.conv(target, 3, 8, 4, 4, 0))
    scale, shift = net.style(source, 512, 8, plus_one=True)
    x = net.leaky(net.add(net.mul(x, scale), shift))
    x = net.conv(net.resize(x, 4.0), 8, 3, 3, gain=0.5)
    # Keep the target visible (the swap of a stand-in should look like a face crop), with a
    # slope of at most 1 so that one grey level in moves the output by at most one level.
    x = net.add(x, net.mul(net.op("Sub", target, net.const(0.5)), net.const(2.0)))
    out = net.mul(net.add(net.op("Tanh", x), net.const(1.0)), net.const(0.5))
    out = net.float_output(out)
    _emap(net, spec.name + "/emap")
    return [out]


def _tiny_hyperswap(net: _Net, spec: ModelSpec) -> list[str]:
    inputs = {c.name: c for c in spec.inputs}
    source, target = inputs["source"].name, inputs["target"].name
    x = net.leaky(net.conv(target, 3, 8, 8, 8, 0))
    scale, shift = net.style(source, 512, 8, plus_one=True)
    x = net.resize(net.leaky(net.add(net.mul(x, scale), shift)), 8.0)
    image = net.op("Tanh", net.add(net.conv(x, 8, 3, 3, gain=0.5), target))  # slope <= 1, as above
    mask = net.op("Sigmoid", net.conv(x, 8, 1, 1))
    return [image, mask]


def _tiny_enhancer(net: _Net, spec: ModelSpec) -> list[str]:
    image = spec.inputs[0].name
    x = net.leaky(net.conv(image, 3, 8, 8, 8, 0))
    detail = net.op("Tanh", net.resize(net.conv(x, 8, 3, 1), 8.0))
    out = net.add(image, net.mul(detail, net.const(0.25)))
    return [net.op("Clip", out, net.const(-1.0), net.const(1.0))]


def _tiny_xseg(net: _Net, spec: ModelSpec) -> list[str]:
    x = net.op("Transpose", spec.inputs[0].name, perm=[0, 3, 1, 2])
    x = net.relu(net.conv(x, 3, 8, 8, 8, 0))
    x = net.op("Sigmoid", net.resize(net.conv(x, 8, 1, 1), 8.0))
    return [net.op("Transpose", x, perm=[0, 2, 3, 1])]


def _tiny_bisenet(net: _Net, spec: ModelSpec) -> list[str]:
    x = net.relu(net.conv(spec.inputs[0].name, 3, 8, 8, 8, 0))
    return [net.resize(net.conv(x, 8, 19, 1), 8.0, align=True) for _ in spec.outputs]


def _detector_levels(net: _Net, image: str, width: int) -> list[str]:
    f8 = net.relu(net.conv(image, 3, width, 8, 8, 0))
    f16 = net.relu(net.conv(f8, width, width, 2, 2, 0))
    f32 = net.relu(net.conv(f16, width, width, 2, 2, 0))
    return [f8, f16, f32]


def _head(net: _Net, x: str, cin: int, cols: int, anchors: int, *, score: bool, batch: bool) -> str:
    y = net.conv(x, cin, anchors * cols, 1)
    if score:
        # Mostly low scores, like a real detector on an empty image.
        y = net.op("Sigmoid", net.add(y, net.const(-4.0)))
    return net.to_nhwc_rows(y, cols, batch_dim=batch)


def _tiny_scrfd(net: _Net, spec: ModelSpec) -> list[str]:
    levels = _detector_levels(net, spec.inputs[0].name, 8)
    scores = [_head(net, f, 8, 1, 2, score=True, batch=False) for f in levels]
    boxes = [_head(net, f, 8, 4, 2, score=False, batch=False) for f in levels]
    kps = [_head(net, f, 8, 10, 2, score=False, batch=False) for f in levels]
    return scores + boxes + kps


def _tiny_yunet(net: _Net, spec: ModelSpec) -> list[str]:
    image = net.mul(spec.inputs[0].name, net.const(1.0 / 255.0))  # the input is raw 0..255
    levels = _detector_levels(net, image, 8)
    cls = [_head(net, f, 8, 1, 1, score=True, batch=True) for f in levels]
    obj = [_head(net, f, 8, 1, 1, score=True, batch=True) for f in levels]
    boxes = [_head(net, f, 8, 4, 1, score=False, batch=True) for f in levels]
    kps = [_head(net, f, 8, 10, 1, score=False, batch=True) for f in levels]
    return cls + obj + boxes + kps


Builder = Callable[[_Net, ModelSpec], list[str]]

_TINY: Mapping[str, Builder] = MappingProxyType(
    {
        "arcface": _tiny_arcface,
        "inswapper": _tiny_inswapper,
        "hyperswap": _tiny_hyperswap,
        "gfpgan": _tiny_enhancer,
        "gpen": _tiny_enhancer,
        "xseg": _tiny_xseg,
        "bisenet": _tiny_bisenet,
        "scrfd": _tiny_scrfd,
        "yunet": _tiny_yunet,
    }
)


# --------------------------------------------------------------------------- faithful: swappers


def _faithful_inswapper(net: _Net, spec: ModelSpec) -> list[str]:
    """inswapper_128 exactly as contracts §1.7/§1.8: 138,292,739 parameters, 174.58 GMAC."""
    target, source = net.image_input(spec.inputs[0]), net.image_input(spec.inputs[1])
    eps = 1e-7 if net.dtype == np.float16 else 1e-8  # fp16 clamps 1e-8 (contracts §1.2)
    x = net.leaky(net.conv(net.reflect_pad(target, 3), 3, 128, 7, p=0))
    x = net.leaky(net.conv(x, 128, 256, 3))
    x = net.leaky(net.conv(x, 256, 512, 3, 2))
    x = net.leaky(net.conv(x, 512, 1024, 3, 2))
    for _ in range(6):
        y = net.inorm(net.conv(net.reflect_pad(x, 1), 1024, 1024, 3, p=0), eps)
        scale, shift = net.style(source, 512, 1024)
        y = net.relu(net.add(net.mul(y, scale), shift))
        y = net.inorm(net.conv(net.reflect_pad(y, 1), 1024, 1024, 3, p=0), eps)
        scale, shift = net.style(source, 512, 1024)
        x = net.add(x, net.add(net.mul(y, scale), shift))
    x = net.leaky(net.conv(net.resize(x, 2.0), 1024, 512, 3))
    x = net.leaky(net.conv(net.resize(x, 2.0), 512, 256, 3))
    x = net.leaky(net.conv(x, 256, 128, 3))
    x = net.op("Tanh", net.conv(net.reflect_pad(x, 3), 128, 3, 7, p=0))
    out = net.float_output(net.op("Div", net.add(x, net.const(1.0)), net.const(2.0)))
    _emap(net, spec.name + "/emap")
    return [out]


def _faithful_simswap(net: _Net, spec: ModelSpec) -> list[str]:
    """SimSwap's Generator_Adain_Upsample at 256 (9 AdaIN blocks): ≈62.9 GMAC, ≈55 M params.

    HyperSwap's architecture is closed; this is the public model of the same class and size.
    """
    inputs = {c.name: c.name for c in spec.inputs}
    source, target = inputs["source"], inputs["target"]
    x = net.relu(net.conv(net.reflect_pad(target, 3), 3, 64, 7, p=0))  # BN folded into biases
    for cin, cout in ((64, 128), (128, 256), (256, 512)):
        x = net.relu(net.conv(x, cin, cout, 3, 2))
    for _ in range(9):
        y = net.inorm(net.conv(net.reflect_pad(x, 1), 512, 512, 3, p=0), 1e-8)
        scale, shift = net.style(source, 512, 512, plus_one=True)
        y = net.relu(net.add(net.mul(y, scale), shift))
        y = net.inorm(net.conv(net.reflect_pad(y, 1), 512, 512, 3, p=0), 1e-8)
        scale, shift = net.style(source, 512, 512, plus_one=True)
        x = net.add(x, net.add(net.mul(y, scale), shift))
    for cin, cout in ((512, 256), (256, 128), (128, 64)):
        x = net.relu(net.conv(net.resize(x, 2.0), cin, cout, 3))
    image = net.op("Tanh", net.conv(net.reflect_pad(x, 3), 64, 3, 7, p=0))
    mask = net.op("Sigmoid", net.conv(x, 64, 1, 3))
    return [image, mask]


# --------------------------------------------------------------------------- faithful: ArcFace


def _iresnet_block(net: _Net, x: str, cin: int, planes: int, stride: int) -> str:
    y = net.conv(net.bn(x, cin), cin, planes, 3)  # bn2 folded into this conv's bias
    y = net.conv(net.prelu(y, planes), planes, planes, 3, stride, gain=0.5)  # bn3 folded
    skip = x if stride == 1 and cin == planes else net.conv(x, cin, planes, 1, stride, 0)
    return net.add(y, skip)


def _faithful_arcface(net: _Net, spec: ModelSpec) -> list[str]:
    """IResNet-50 (layers 3/4/14/3): ≈6.31 GMAC and ≈43.6 M parameters at 112 px."""
    x = net.prelu(net.conv(spec.inputs[0].name, 3, 64, 3), 64)
    cin = 64
    for planes, blocks in ((64, 3), (128, 4), (256, 14), (512, 3)):
        for i in range(blocks):
            x = _iresnet_block(net, x, cin, planes, 2 if i == 0 else 1)
            cin = planes
    x = net.op("Flatten", net.bn(x, 512), axis=1)
    return [net.gemm(x, 512 * 7 * 7, 512)]  # the features BatchNorm1d is folded into the fc


# --------------------------------------------------------------------------- faithful: GFPGAN


def _res_block(net: _Net, x: str, cin: int, cout: int, factor: float) -> str:
    """GFPGANv1Clean's ResBlock: conv, resample, conv, plus a resampled 1x1 skip."""
    y = net.leaky(net.conv(x, cin, cin, 3))
    y = net.leaky(net.conv(net.resize(y, factor), cin, cout, 3))
    return net.add(y, net.conv(net.resize(x, factor), cin, cout, 1, bias=False))


def _mod_conv(net: _Net, x: str, w: str, cin: int, cout: int, k: int, *, act: bool = True) -> str:
    """StyleGAN2's modulated conv, approximated as scale-by-style, conv, demodulation scale."""
    scale = net.reshape(net.gemm(w, 512, cin, bias_mean=1.0, gain=0.1), [1, cin, 1, 1])
    y = net.conv(net.mul(x, scale), cin, cout, k, bias=False)
    y = net.add(net.mul(y, net.param([1, cout, 1, 1], 0.01, 1.0)), net.param([1, cout, 1, 1], 0.01))
    return net.leaky(y) if act else y


def _latent(net: _Net, latents: str, i: int) -> str:
    return net.op("Gather", latents, net.const(i, np.int64), axis=1)


# Channels per resolution: GFPGANv1Clean's U-Net (narrow 0.5) and StyleGAN2 decoder (x2).
_GFPGAN_UNET = MappingProxyType({4: 256, 8: 256, 16: 256, 32: 256, 64: 256, 128: 128, 256: 64, 512: 32})
_STYLEGAN = MappingProxyType({4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256, 256: 128, 512: 64})


def _gfpgan_encoder(net: _Net, image: str) -> tuple[str, list[str]]:
    feat = net.leaky(net.conv(image, 3, _GFPGAN_UNET[512], 1))
    skips: list[str] = []
    for res in (512, 256, 128, 64, 32, 16, 8):
        feat = _res_block(net, feat, _GFPGAN_UNET[res], _GFPGAN_UNET[res // 2], 0.5)
        skips.insert(0, feat)
    return net.leaky(net.conv(feat, 256, 256, 3)), skips


def _gfpgan_conditions(net: _Net, feat: str, skips: list[str]) -> list[tuple[str, str]]:
    conditions = []
    for i, res in enumerate((8, 16, 32, 64, 128, 256, 512)):
        cin, c = _GFPGAN_UNET[res // 2], _GFPGAN_UNET[res]
        feat = _res_block(net, net.add(feat, skips[i]), cin, c, 2.0)
        scale = net.conv(net.leaky(net.conv(feat, c, c, 3)), c, c, 3)
        shift = net.conv(net.leaky(net.conv(feat, c, c, 3)), c, c, 3)
        conditions.append((scale, shift))
    return conditions


def _faithful_gfpgan(net: _Net, spec: ModelSpec) -> list[str]:
    """GFPGANv1Clean as v1.4 configures it (512 px, channel multiplier 2, SFT on half the
    channels, 16 latents): U-Net encoder, SFT conditions and a StyleGAN2 decoder whose
    modulated convs are approximated by conv + scales. ≈198 GMAC."""
    feat, skips = _gfpgan_encoder(net, spec.inputs[0].name)
    latents = net.reshape(net.gemm(net.op("Flatten", feat, axis=1), 256 * 16, 16 * 512), [1, 16, 512])
    conditions = _gfpgan_conditions(net, feat, skips)
    out = _mod_conv(net, net.param([1, 512, 4, 4], 1.0), _latent(net, latents, 0), 512, 512, 3)
    rgb = _mod_conv(net, out, _latent(net, latents, 1), 512, 3, 1, act=False)
    for level, res in enumerate((8, 16, 32, 64, 128, 256, 512)):
        cin, c, i = _STYLEGAN[res // 2], _STYLEGAN[res], 1 + 2 * level
        out = _mod_conv(net, net.resize(out, 2.0), _latent(net, latents, i), cin, c, 3)
        same, sft = net.ops("Split", [out, net.const([c // 2, c // 2], np.int64)], 2, axis=1)
        scale, shift = conditions[level]
        out = net.op("Concat", same, net.add(net.mul(sft, scale), shift), axis=1)
        out = _mod_conv(net, out, _latent(net, latents, i + 1), c, c, 3)
        rgb = net.add(
            net.resize(rgb, 2.0), _mod_conv(net, out, _latent(net, latents, i + 2), c, 3, 1, act=False)
        )
    return [net.op("Clip", rgb, net.const(-1.0), net.const(1.0))]


def _gpen(net: _Net, spec: ModelSpec, size: int, channels: Mapping[int, int]) -> list[str]:
    """GPEN's FullGenerator shape: a strided-conv encoder whose features are concatenated into
    a StyleGAN2 decoder (so decoder convs read twice the channels)."""
    feats = [net.leaky(net.conv(spec.inputs[0].name, 3, channels[size], 1))]
    res = size
    while res > 4:
        feats.append(net.leaky(net.conv(feats[-1], channels[res], channels[res // 2], 3, 2)))
        res //= 2
    flat = net.op("Flatten", feats[-1], axis=1)
    latent = net.gemm(flat, channels[4] * 16, 512)
    out = _mod_conv(net, net.op("Concat", net.param([1, channels[4], 4, 4], 1.0), feats[-1], axis=1),
                    latent, 2 * channels[4], channels[4], 3)
    rgb = _mod_conv(net, out, latent, channels[4], 3, 1, act=False)
    res, skip = 8, len(feats) - 2
    while res <= size:
        cin, c = channels[res // 2], channels[res]
        out = _mod_conv(net, net.resize(out, 2.0), latent, cin, c, 3)
        out = _mod_conv(net, net.op("Concat", out, feats[skip], axis=1), latent, c + channels[res], c, 3)
        rgb = net.add(net.resize(rgb, 2.0), _mod_conv(net, out, latent, c, 3, 1, act=False))
        res, skip = res * 2, skip - 1
    return [net.op("Clip", rgb, net.const(-1.0), net.const(1.0))]


def _faithful_gpen(net: _Net, spec: ModelSpec) -> list[str]:
    size = int(spec.inputs[0].shape[-1])
    if size == 512:  # channel multiplier 2
        channels = {4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256, 256: 128, 512: 64}
    else:  # GPEN-BFR-256: channel multiplier 1, narrow 0.5
        channels = {4: 256, 8: 256, 16: 256, 32: 256, 64: 128, 128: 64, 256: 32}
    return _gpen(net, spec, size, channels)


# --------------------------------------------------------------------------- faithful: masks


def _frn_tlu(net: _Net, x: str, c: int) -> str:
    """DeepFaceLab's FRN + TLU, with the ops of the XSeg export."""
    nu2 = net.op("GlobalAveragePool", net.mul(x, x))
    x = net.mul(x, net.op("Reciprocal", net.op("Sqrt", net.add(nu2, net.const(1e-6)))))
    x = net.add(net.mul(x, net.param([1, c, 1, 1], 0.01, 1.0)), net.param([1, c, 1, 1], 0.01))
    return net.op("Max", x, net.param([1, c, 1, 1], 0.01, -1.0))


def _xseg_conv(net: _Net, x: str, cin: int, cout: int) -> str:
    return _frn_tlu(net, net.conv(x, cin, cout, 3), cout)


def _blur_pool(net: _Net, x: str, c: int) -> str:
    kernel = np.outer([1.0, 3.0, 3.0, 1.0], [1.0, 3.0, 3.0, 1.0]) / 64.0
    weight = net.const(np.broadcast_to(kernel, (c, 1, 4, 4)).copy())
    padded = net.op("Pad", x, net.const([0, 0, 1, 1, 0, 0, 2, 2], np.int64), mode="reflect")
    return net.op("Conv", padded, weight, kernel_shape=[4, 4], strides=[2, 2], group=c)


def _faithful_xseg(net: _Net, spec: ModelSpec) -> list[str]:
    """DeepFaceLab's XSegNet (base 32 channels, 256 px): blur-pool U-Net with a dense bottleneck."""
    x = net.op("Transpose", spec.inputs[0].name, perm=[0, 3, 1, 2])
    plan = ((3, 32, 2), (32, 64, 2), (64, 128, 2), (128, 256, 3), (256, 256, 3), (256, 256, 3))
    skips: list[str] = []
    for cin, cout, convs in plan:
        x = _xseg_conv(net, x, cin, cout)
        for _ in range(convs - 1):
            x = _xseg_conv(net, x, cout, cout)
        skips.append(x)
        x = _blur_pool(net, x, cout)
    x = net.op("MatMul", net.op("Flatten", x, axis=1), net.param([4096, 512], 1 / 64))
    x = net.op("MatMul", x, net.param([512, 4096], 1 / math.sqrt(512)))
    x = net.reshape(x, [1, 256, 4, 4])
    cin = 256
    for (_, cout, convs), skip in zip(reversed(plan), reversed(skips), strict=True):
        up = min(cout, 128)
        x = _frn_tlu(net, net.deconv(x, cin, up, 3, 2, 1, 1), up)
        x = _xseg_conv(net, net.op("Concat", x, skip, axis=1), up + cout, cout)
        for _ in range(convs - 1):
            x = _xseg_conv(net, x, cout, cout)
        cin = cout
    x = net.op("Sigmoid", net.conv(x, 32, 1, 3))
    return [net.op("Transpose", x, perm=[0, 2, 3, 1])]


def _basic_block(net: _Net, x: str, cin: int, cout: int, stride: int) -> str:
    y = net.conv(net.relu(net.conv(x, cin, cout, 3, stride)), cout, cout, 3)
    skip = x if stride == 1 and cin == cout else net.conv(x, cin, cout, 1, stride, 0)
    return net.relu(net.add(y, skip))


def _resnet34(net: _Net, image: str) -> tuple[str, str, str]:
    x = net.relu(net.conv(image, 3, 64, 7, 2))
    x = net.op("MaxPool", x, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    feats, cin = [], 64
    for cout, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for i in range(blocks):
            x = _basic_block(net, x, cin, cout, 2 if i == 0 and cout != 64 else 1)
            cin = cout
        feats.append(x)
    return feats[1], feats[2], feats[3]


def _arm(net: _Net, x: str, cin: int) -> str:
    feat = net.relu(net.conv(x, cin, 128, 3))
    attention = net.op("Sigmoid", net.conv(net.op("GlobalAveragePool", feat), 128, 128, 1))
    return net.mul(feat, attention)


def _faithful_bisenet(net: _Net, spec: ModelSpec) -> list[str]:
    """BiSeNet with a ResNet-34 backbone as yakhyo/face-parsing builds it (BN folded)."""
    feat8, feat16, feat32 = _resnet34(net, spec.inputs[0].name)
    avg = net.relu(net.conv(net.op("GlobalAveragePool", feat32), 512, 128, 1))
    up32 = net.add(_arm(net, feat32, 512), net.resize(avg, 16.0, mode="nearest"))
    cp16 = net.relu(net.conv(net.resize(up32, 2.0, mode="nearest"), 128, 128, 3))
    up16 = net.add(_arm(net, feat16, 256), cp16)
    cp8 = net.relu(net.conv(net.resize(up16, 2.0, mode="nearest"), 128, 128, 3))
    fused = net.relu(net.conv(net.op("Concat", feat8, cp8, axis=1), 256, 256, 1))
    gate = net.relu(net.conv(net.op("GlobalAveragePool", fused), 256, 64, 1, bias=False))
    gate = net.op("Sigmoid", net.conv(gate, 64, 256, 1, bias=False))
    fused = net.add(net.mul(fused, gate), fused)
    heads = ((fused, 256, 256, 8.0), (cp8, 128, 64, 8.0), (cp16, 128, 64, 16.0))
    outs = []
    for x, cin, mid, factor in heads:
        y = net.conv(net.relu(net.conv(x, cin, mid, 3)), mid, 19, 1, bias=False)
        outs.append(net.resize(y, factor, align=True))
    return outs


# --------------------------------------------------------------------------- faithful: detectors


def _faithful_scrfd(net: _Net, spec: ModelSpec) -> list[str]:
    """SCRFD-10G-KPS: ResNet-v1e basic blocks (3,4,2,3) with planes 56/88/88/224, a 56-channel
    PAFPN and a head of 3 stacked 80-channel convs per stride (BN folded)."""
    x = net.relu(net.conv(spec.inputs[0].name, 3, 28, 3, 2))
    x = net.relu(net.conv(net.relu(net.conv(x, 28, 28, 3)), 28, 56, 3))
    x = net.op("MaxPool", x, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    feats, cin = [], 56
    for i, (cout, blocks) in enumerate(((56, 3), (88, 4), (88, 2), (224, 3))):
        for b in range(blocks):
            x = _basic_block(net, x, cin, cout, 2 if b == 0 and i > 0 else 1)
            cin = cout
        feats.append(x)
    lat = [net.conv(f, c, 56, 1) for f, c in zip(feats[1:], (88, 88, 224), strict=True)]
    lat[1] = net.add(lat[1], net.resize(lat[2], 2.0, mode="nearest"))
    lat[0] = net.add(lat[0], net.resize(lat[1], 2.0, mode="nearest"))
    outs = [net.conv(t, 56, 56, 3) for t in lat]
    outs[1] = net.add(outs[1], net.conv(outs[0], 56, 56, 3, 2))
    outs[2] = net.add(outs[2], net.conv(outs[1], 56, 56, 3, 2))
    levels = [net.conv(t, 56, 56, 3) for t in outs]
    heads = []
    for f in levels:
        for cin in (56, 80, 80):
            f = net.relu(net.conv(f, cin, 80, 3))
        heads.append(f)
    scores = [_head(net, f, 80, 1, 2, score=True, batch=False) for f in heads]
    boxes = [_head(net, f, 80, 4, 2, score=False, batch=False) for f in heads]
    kps = [_head(net, f, 80, 10, 2, score=False, batch=False) for f in heads]
    return scores + boxes + kps


def _dp_unit(net: _Net, x: str, cin: int, cout: int) -> str:
    """YuNet's ConvDPUnit: a 1x1 conv then a depthwise 3x3 conv."""
    return net.relu(net.conv(net.conv(x, cin, cout, 1), cout, cout, 3, group=cout))


def _faithful_yunet(net: _Net, spec: ModelSpec) -> list[str]:
    """YuNet-n (2023mar): depthwise-separable backbone 16/64 channels, tiny FPN, shared heads."""
    x = net.relu(net.conv(spec.inputs[0].name, 3, 16, 3, 2))
    x = _dp_unit(net, x, 16, 16)
    x = net.op("MaxPool", x, kernel_shape=[2, 2], strides=[2, 2])
    x = _dp_unit(net, _dp_unit(net, x, 16, 64), 64, 64)
    feats = []
    for _ in range(3):
        x = net.op("MaxPool", x, kernel_shape=[2, 2], strides=[2, 2])
        x = _dp_unit(net, _dp_unit(net, x, 64, 64), 64, 64)
        feats.append(x)
    feats[1] = _dp_unit(net, net.add(feats[1], net.resize(feats[2], 2.0, mode="nearest")), 64, 64)
    feats[0] = _dp_unit(net, net.add(feats[0], net.resize(feats[1], 2.0, mode="nearest")), 64, 64)
    heads = [_dp_unit(net, f, 64, 64) for f in feats]
    cls = [_head(net, f, 64, 1, 1, score=True, batch=True) for f in heads]
    obj = [_head(net, f, 64, 1, 1, score=True, batch=True) for f in heads]
    boxes = [_head(net, f, 64, 4, 1, score=False, batch=True) for f in heads]
    kps = [_head(net, f, 64, 10, 1, score=False, batch=True) for f in heads]
    return cls + obj + boxes + kps


_FAITHFUL: Mapping[str, Builder] = MappingProxyType(
    {
        "arcface": _faithful_arcface,
        "inswapper": _faithful_inswapper,
        "hyperswap": _faithful_simswap,
        "gfpgan": _faithful_gfpgan,
        "gpen": _faithful_gpen,
        "xseg": _faithful_xseg,
        "bisenet": _faithful_bisenet,
        "scrfd": _faithful_scrfd,
        "yunet": _faithful_yunet,
    }
)


# --------------------------------------------------------------------------- public API


def _specs() -> Mapping[str, ModelSpec]:
    return MappingProxyType({s.name: s for s in load_manifest().values() if s.family in _TINY})


#: Every model that has stand-ins: the manifest's optional neural models.
STANDIN_NAMES: tuple[str, ...] = tuple(_specs())


def _spec(name: str) -> ModelSpec:
    specs = _specs()
    if name not in specs:
        raise ValueError(f"no stand-in for {name!r}; the stand-ins are: {', '.join(specs)}")
    return specs[name]


def _net(name: str, builders: Mapping[str, Builder], kind: str) -> _Net:
    spec = _spec(name)
    net = _Net(f"{kind}/{name}", fp16=spec.name.endswith("_fp16"))
    net.finish(spec, builders[spec.family](net, spec))
    return net


def tiny_model(name: str) -> onnx.ModelProto:
    """The tiny stand-in of model ``name`` (see the module docstring)."""
    return _net(name, _TINY, "tiny").model()


def faithful_model(name: str, *, shapes_only: bool = False) -> onnx.ModelProto:
    """The architecture-faithful stand-in of ``name``.

    ``shapes_only`` declares the weights as shaped graph inputs instead of drawing them: the
    graph then builds in milliseconds and :func:`count_macs`/:func:`count_params` work on it.
    """
    return _net(name, _FAITHFUL, "faithful").model(materialize=not shapes_only)


def make_tiny(name: str, out_dir: Path) -> Path:
    """Write the tiny stand-in of ``name`` to ``out_dir/<name>.onnx`` (atomically); return it."""
    target = Path(out_dir) / f"{name}.onnx"
    with atomic_path(target) as tmp:
        tmp.write_bytes(tiny_model(name).SerializeToString())
    return target


def make_faithful(name: str, out_dir: Path) -> Path:
    """Write the architecture-faithful stand-in of ``name`` to ``out_dir/<name>.onnx``.

    Big files (inswapper_128: 554 MB, about 10 s): build them once into a cache directory.
    The weights are streamed to disk one at a time, so memory stays near the biggest weight.
    """
    net = _net(name, _FAITHFUL, "faithful")
    target = Path(out_dir) / f"{name}.onnx"
    with atomic_path(target) as tmp, open(tmp, "wb") as out:
        net.write(out)
    return target


def pinned_manifest(
    files: Mapping[str, Path], base: Mapping[str, ModelSpec] | None = None
) -> Mapping[str, ModelSpec]:
    """``base`` (default: the built-in manifest) with each record named in ``files`` pinned to
    that file instead of the published one (its sha256 and size; nothing else changes).

    A :class:`ModelStore` given this manifest accepts the stand-ins in ``add``, ``path`` and
    ``pull --from``, exactly as it accepts the published files with the real manifest.
    """
    specs = dict(load_manifest() if base is None else base)
    for name, path in files.items():
        spec = specs[name]
        data = Path(path).read_bytes()
        digest = sha256_bytes(data)
        source = spec.source
        if isinstance(source, UrlSource):
            source = dataclasses.replace(source, sha256=digest, size=len(data))
        specs[name] = dataclasses.replace(spec, source=source, sha256=digest, also_sha256=())
    return MappingProxyType(specs)


def write_pinned_manifest(files: Mapping[str, Path], target: Path) -> Path:
    """Write :func:`pinned_manifest` as TOML to ``target``, e.g. for ``$LIVEFUSE_MANIFEST``."""
    text = render_manifest(pinned_manifest(files), load_templates())
    atomic_write(Path(target), text.encode("utf-8"))
    return Path(target)


# --------------------------------------------------------------------------- analysis


def _is_weight(tensor: onnx.TensorProto) -> bool:
    floats = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE)
    return tensor.data_type in floats and math.prod(tensor.dims) > 16


def count_params(model: onnx.ModelProto, *, exclude: Sequence[str] = ()) -> int:
    """Number of weights (float initializers, or declared weights of a shapes-only graph)."""
    graph = model.graph
    total = sum(math.prod(t.dims) for t in graph.initializer if t.name not in exclude and _is_weight(t))
    declared = [v for v in graph.input if v.name.startswith("w_") or v.name == "emap"]
    for value in declared:
        if value.name not in exclude:
            total += math.prod(d.dim_value for d in value.type.tensor_type.shape.dim)
    return total


def _without_weights(model: onnx.ModelProto, dims: Mapping[str, int]) -> onnx.ModelProto:
    """A light copy: big initializers become declared inputs, dynamic input dims get values."""
    graph = model.graph
    inputs = []
    for value in graph.input:
        value = onnx.ValueInfoProto.FromString(value.SerializeToString())
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param"):
                if dim.dim_param not in dims:
                    raise ValueError(f"input {value.name!r} has dynamic dim {dim.dim_param!r}: pass dims")
                dim.dim_value = dims[dim.dim_param]
        inputs.append(value)
    kept = [t for t in graph.initializer if not _is_weight(t)]
    inputs += [
        helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
        for t in graph.initializer
        if _is_weight(t)
    ]
    light = helper.make_graph(list(graph.node), graph.name, inputs, list(graph.output), kept)
    return helper.make_model(light, opset_imports=list(model.opset_import), ir_version=model.ir_version)


def _shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    graph = inferred.graph
    out = {}
    for value in (*graph.input, *graph.value_info, *graph.output):
        out[value.name] = [d.dim_value for d in value.type.tensor_type.shape.dim]
    for tensor in graph.initializer:
        out[tensor.name] = list(tensor.dims)
    return out


def _node_macs(node: onnx.NodeProto, shapes: Mapping[str, list[int]]) -> int:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Conv":
        weight = shapes[node.input[1]]
        return math.prod(shapes[node.output[0]]) * math.prod(weight[1:])
    if node.op_type == "ConvTranspose":
        weight = shapes[node.input[1]]
        return math.prod(shapes[node.input[0]]) * math.prod(weight[1:])
    if node.op_type == "Gemm":
        a = shapes[node.input[0]]
        k = a[0] if attrs.get("transA", 0) else a[-1]
        return math.prod(shapes[node.output[0]]) * k
    if node.op_type == "MatMul":
        return math.prod(shapes[node.output[0]]) * shapes[node.input[0]][-1]
    return 0


def count_macs(model: onnx.ModelProto, dims: Mapping[str, int] | None = None) -> int:
    """Multiply-accumulates of one run: Conv, ConvTranspose, Gemm and MatMul, via shape inference.

    ``dims`` gives values to dynamic input dims (default :data:`NOMINAL_DIMS`). Weight data is
    never read, so this works on ``shapes_only`` graphs and on models of any size.
    """
    light = _without_weights(model, NOMINAL_DIMS if dims is None else dims)
    shapes = _shapes(light)
    return sum(_node_macs(node, shapes) for node in light.graph.node)
