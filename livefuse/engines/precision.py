"""Which ONNX nodes an FP16 TensorRT build keeps in FP32, decided from the ONNX graph alone.

FP16 has 10 mantissa bits and overflows at 65504. In inswapper-like swappers two places break:

* the **instance-norm chain**: the variance is a mean of squares over every pixel of a
  1024-channel feature map, which overflows or loses the small differences that matter. Graphs
  hold either ONNX ``InstanceNormalization`` or its decomposition, as inswapper's export spells it::

      m = ReduceMean(x); c = Sub(x, m); v = ReduceMean(Mul(c, c) | Pow(c, 2))
      y = Div(c, Sqrt(Add(v, eps)))        (or Mul(c, Reciprocal(...)), eps after the Sqrt)

* the **AdaIN style modulation** right after it, ``y * scale + shift``, with ``scale, shift``
  projected from the identity latent (``Gemm`` → ``Reshape``/``Split``/``Slice`` …): the
  modulated activations are what the residual stream adds up block after block.

:func:`fp32_nodes` finds both and names the nodes as TensorRT's ONNX parser names its layers
(:func:`trt_node_name`); :func:`layers_to_keep` maps the parsed network's layers back to them.
Everything here is pure and runs without TensorRT or a GPU.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

#: Why a node stays in FP32 (the values of :func:`fp32_nodes`).
INSTANCE_NORM = "instance-norm"
INSTANCE_NORM_DECOMPOSED = "instance-norm (decomposed)"
ADAIN = "adain style modulation"

#: Ops that move or reshape the style vector without computing on it.
_MOVES = frozenset(
    {"Reshape", "Split", "Slice", "Gather", "Squeeze", "Unsqueeze", "Flatten", "Transpose", "Identity", "Cast"}
)
#: Elementwise ops with one constant operand allowed on the style branch (``scale + 1``).
_AFFINE = frozenset({"Add", "Sub", "Mul"})
#: Where a style branch starts: the projection of the identity latent.
_PROJECTIONS = frozenset({"Gemm", "MatMul"})
#: Between the variance and the final division: eps, the square root, or a reciprocal.
_STD_OPS = frozenset({"Add", "Sqrt", "Reciprocal"})
#: Longest style branch followed back from the modulation to its projection.
_MAX_BRANCH = 8

#: What TensorRT's ONNX parser writes into a layer's metadata (TensorRT 10).
_METADATA = re.compile(r"\[ONNX Layer: ([^\]\x1e\x1f]+)\]")


def trt_node_name(node: onnx.NodeProto) -> str:
    """The name TensorRT's ONNX parser gives the layers of ``node``: its name, or, for an
    unnamed node, ``node_of_<first output>`` (onnx-tensorrt's ``getNodeName``)."""
    if node.name or not node.output:
        return node.name
    return f"node_of_{node.output[0]}"


@dataclass(frozen=True, slots=True)
class _Graph:
    """The graph indexed for walking it: who makes and who reads each tensor."""

    nodes: tuple[onnx.NodeProto, ...]
    producer: Mapping[str, onnx.NodeProto]
    consumers: Mapping[str, tuple[onnx.NodeProto, ...]]
    constants: Mapping[str, onnx.TensorProto]
    "Initializers and the values of ``Constant`` nodes, by tensor name."

    def users(self, tensor: str) -> tuple[onnx.NodeProto, ...]:
        return self.consumers.get(tensor, ())

    def is_constant(self, tensor: str) -> bool:
        return tensor in self.constants

    def scalar(self, tensor: str) -> float | None:
        """The value of a one-element constant, else None."""
        value = self.constants.get(tensor)
        if value is None:
            return None
        array = numpy_helper.to_array(value)
        return float(array.reshape(-1)[0]) if array.size == 1 else None


def _index(graph: onnx.GraphProto) -> _Graph:
    producer: dict[str, onnx.NodeProto] = {}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    constants: dict[str, onnx.TensorProto] = {t.name: t for t in graph.initializer}
    for node in graph.node:
        for out in node.output:
            producer[out] = node
        for name in node.input:
            if name:
                consumers.setdefault(name, []).append(node)
        if node.op_type == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value" and a.HasField("t")), None)
            if value is not None:
                constants[node.output[0]] = value
    return _Graph(tuple(graph.node), producer, {k: tuple(v) for k, v in consumers.items()}, constants)


# --------------------------------------------------------------------------- instance norm


def _is_square(g: _Graph, node: onnx.NodeProto, centred: str) -> bool:
    if node.op_type == "Mul":
        return list(node.input) == [centred, centred]
    return node.op_type == "Pow" and node.input[0] == centred and g.scalar(node.input[1]) == 2.0


def _divides(node: onnx.NodeProto, centred: str, std: str) -> bool:
    """``centred / std`` (or ``centred * reciprocal``, where ``std`` is that reciprocal)."""
    if node.op_type == "Div":
        return list(node.input) == [centred, std]
    return node.op_type == "Mul" and sorted(node.input) == sorted([centred, std])


def _std_step(g: _Graph, node: onnx.NodeProto, tensor: str) -> bool:
    others = [i for i in node.input if i != tensor]
    return node.op_type in _STD_OPS and all(g.is_constant(i) for i in others)


def _normalise_tail(g: _Graph, variance: onnx.NodeProto, centred: str) -> tuple[list[onnx.NodeProto], str | None]:
    """The nodes from the variance to the normalised output, and that output (None if not found)."""
    nodes: list[onnx.NodeProto] = []
    tensor = variance.output[0]
    while len(nodes) <= len(_STD_OPS):
        users = g.users(tensor)
        final = next((u for u in users if _divides(u, centred, tensor)), None)
        if final is not None:
            return [*nodes, final], final.output[0]
        step = next((u for u in users if _std_step(g, u, tensor)), None)
        if step is None:
            break
        nodes.append(step)
        tensor = step.output[0]
    return nodes, None


def _decomposed_norm(g: _Graph, sub: onnx.NodeProto) -> tuple[list[onnx.NodeProto], str | None] | None:
    """The chain around ``sub`` when it is the ``x - mean(x)`` of a decomposed norm."""
    if sub.op_type != "Sub" or len(sub.input) != 2:
        return None
    x, mean_out = sub.input
    mean = g.producer.get(mean_out)
    if mean is None or mean.op_type != "ReduceMean" or mean.input[0] != x:
        return None
    centred = sub.output[0]
    for square in g.users(centred):
        if not _is_square(g, square, centred):
            continue
        for variance in g.users(square.output[0]):
            if variance.op_type == "ReduceMean":
                tail, out = _normalise_tail(g, variance, centred)
                return [mean, sub, square, variance, *tail], out
    return None


def _norms(g: _Graph) -> tuple[dict[str, str], set[str]]:
    """(node name → reason) for every norm chain, and the tensors the chains output."""
    keep: dict[str, str] = {}
    outputs: set[str] = set()
    for node in g.nodes:
        if node.op_type == "InstanceNormalization":
            keep[trt_node_name(node)] = INSTANCE_NORM
            outputs.add(node.output[0])
            continue
        chain = _decomposed_norm(g, node)
        if chain is None:
            continue
        nodes, out = chain
        keep.update((trt_node_name(n), INSTANCE_NORM_DECOMPOSED) for n in nodes)
        if out is not None:
            outputs.add(out)
    return keep, outputs


# --------------------------------------------------------------------------- AdaIN


def _style_branch(g: _Graph, tensor: str) -> list[onnx.NodeProto] | None:
    """The nodes from ``tensor`` back to the latent projection that makes it, or None when
    ``tensor`` is not (a reshaped, split or offset piece of) such a projection."""
    nodes: list[onnx.NodeProto] = []
    for _ in range(_MAX_BRANCH):
        node = g.producer.get(tensor)
        if node is None or g.is_constant(tensor):
            return None
        nodes.append(node)
        if node.op_type in _PROJECTIONS:
            return nodes
        if node.op_type in _MOVES:
            tensor = node.input[0]
            continue
        computed = [i for i in node.input if not g.is_constant(i)]
        if node.op_type not in _AFFINE or len(computed) != 1:
            return None
        tensor = computed[0]
    return None


def _modulation(g: _Graph, mul: onnx.NodeProto, norms: set[str]) -> list[onnx.NodeProto]:
    """``norm * scale`` and the ``+ shift`` after it, with their style branches (or nothing)."""
    if mul.op_type != "Mul" or len(mul.input) != 2:
        return []
    a, b = mul.input
    norm, style = (a, b) if a in norms else (b, a)
    scale = _style_branch(g, style) if norm in norms else None
    if scale is None:
        return []
    found = [mul, *scale]
    for add in g.users(mul.output[0]):
        if add.op_type != "Add":
            continue
        other = next((i for i in add.input if i != mul.output[0]), "")
        shift = _style_branch(g, other)
        if shift is not None:
            found += [add, *shift]
    return found


def fp32_nodes(graph: onnx.GraphProto) -> dict[str, str]:
    """The nodes of ``graph`` to keep in FP32, as TensorRT names their layers, each with why,
    in graph order. Empty for graphs without instance norms (most models)."""
    g = _index(graph)
    keep, norm_outputs = _norms(g)
    for node in g.nodes:
        for found in _modulation(g, node, norm_outputs):
            keep.setdefault(trt_node_name(found), ADAIN)
    order = [trt_node_name(n) for n in g.nodes]
    return {name: keep[name] for name in order if name in keep}


def computes_in_fp16(graph: onnx.GraphProto) -> bool:
    """True when most of the graph's float weights (by bytes) are float16: the file was
    converted to FP16, so a strongly typed build of it runs in FP16."""
    sizes = {onnx.TensorProto.FLOAT: 0, onnx.TensorProto.FLOAT16: 0}
    for tensor in graph.initializer:
        if tensor.data_type in sizes:
            itemsize = 2 if tensor.data_type == onnx.TensorProto.FLOAT16 else 4
            sizes[tensor.data_type] += itemsize * int(np.prod(tensor.dims, dtype=np.int64))
    return sizes[onnx.TensorProto.FLOAT16] > sizes[onnx.TensorProto.FLOAT]


# --------------------------------------------------------------------------- TensorRT layers


def owner_node(layer: str, metadata: str, nodes: frozenset[str]) -> str | None:
    """The ONNX node (of all the graph's ``nodes``) a TensorRT network layer came from, or None
    (TensorRT's own helper layers).

    TensorRT 10's parser writes ``[ONNX Layer: <node>]`` into the layer's metadata: that wins.
    Otherwise the layer name decides: the parser names a node's first layer after the node and
    the others ``<node>_<n>``, so the owner is the longest node name that is the whole layer
    name or a prefix of it ending before a non-alphanumeric character. ``nodes`` must hold every
    node, not only the interesting ones: ``Div_1`` belongs to ``Div_1``, not to ``Div``.
    """
    for name in _METADATA.findall(metadata):
        if name in nodes:
            return name
    if layer in nodes:
        return layer
    cuts = [i for i in range(len(layer) - 1, 0, -1) if not layer[i].isalnum()]
    return next((layer[:i] for i in cuts if layer[:i] in nodes), None)


def layers_to_keep(layers: Sequence[tuple[str, str]], fp32: Mapping[str, str], nodes: Iterable[str]) -> dict[str, str]:
    """Layer name → ONNX node for the network ``layers`` (``(name, metadata)``, in order)
    whose node (one of the graph's ``nodes``, see :func:`owner_node`) is in ``fp32``."""
    known = frozenset(nodes) | frozenset(fp32)
    out: dict[str, str] = {}
    for name, metadata in layers:
        node = owner_node(name, metadata, known)
        if node is not None and node in fp32:
            out[name] = node
    return out


def node_names(graph: onnx.GraphProto) -> list[str]:
    """Every node of ``graph`` as TensorRT names it."""
    return [trt_node_name(n) for n in graph.node]
