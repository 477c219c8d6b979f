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
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType

import onnx
from onnx import TensorProto, helper

from livefuse.models.files import atomic_path, atomic_write, sha256_bytes
from livefuse.models.manifest import (
    ModelSpec,
    UrlSource,
    load_manifest,
    load_templates,
    render_manifest,
)
from livefuse.testing.standins.faithful import _FAITHFUL
from livefuse.testing.standins.graph import NOMINAL_DIMS, Builder, _Net
from livefuse.testing.standins.tiny import _TINY

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


def pinned_manifest(files: Mapping[str, Path], base: Mapping[str, ModelSpec] | None = None) -> Mapping[str, ModelSpec]:
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
        helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in graph.initializer if _is_weight(t)
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
