"""Converters that turn a model file taken out of a package into the ONNX file livefuse installs.

Every converter ends with :func:`canonicalize`, so that converting the same input with the same
pinned tools always gives the same bytes and the manifest can pin the sha256 of the result.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

from livefuse.errors import ModelError

if TYPE_CHECKING:
    import onnx

    from livefuse.models.manifest import ModelSpec, TensorContract

#: The producer written into every converted model, in place of the tool that made it.
PRODUCER_NAME = "livefuse"
PRODUCER_VERSION = "1"

#: Only ``livefuse models pull`` needs tflite2onnx (for the face mesh), so it is imported lazily.
TFLITE2ONNX_PIN = "tflite2onnx==0.4.1"
_TFLITE2ONNX_HINT = f"pip install {TFLITE2ONNX_PIN} (a livefuse dependency missing from this environment)"


def canonicalize(model: onnx.ModelProto) -> bytes:
    """Serialize ``model`` so that equal graphs give equal bytes.

    tflite2onnx emits initializers and value_info in an order that changes from run to run
    (it walks sets), so both are sorted by name; doc strings and the producer are fixed too.
    """
    graph = model.graph
    graph.initializer.sort(key=lambda t: t.name)
    graph.sparse_initializer.sort(key=lambda t: t.values.name)
    graph.value_info.sort(key=lambda v: v.name)
    model.producer_name = PRODUCER_NAME
    model.producer_version = PRODUCER_VERSION
    model.doc_string = ""
    graph.doc_string = ""
    for item in (*graph.node, *graph.initializer, *graph.input, *graph.output, *graph.value_info):
        item.doc_string = ""
    return model.SerializeToString(deterministic=True)


def _check(model: onnx.ModelProto, name: str) -> None:
    import onnx

    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise ModelError(
            f"the converted model {name!r} is not valid ONNX ({exc}); the converter's "
            f"dependencies differ from the tested ones ({tool_versions()})"
        ) from exc


def _set_dims(value: onnx.ValueInfoProto, contract: TensorContract, name: str) -> None:
    dims = value.type.tensor_type.shape.dim
    if len(dims) != len(contract.shape):
        raise ModelError(
            f"model {name!r}: tensor {value.name!r} has {len(dims)} dims but the manifest "
            f"says {list(contract.shape)}; the manifest does not match the packaged model"
        )
    for dim, want in zip(dims, contract.shape, strict=True):
        if isinstance(want, str):
            dim.dim_param = want  # setting dim_param clears dim_value (a protobuf oneof)


def _by_name(
    values: Sequence[onnx.ValueInfoProto], contracts: Sequence[TensorContract], name: str
) -> list[tuple[onnx.ValueInfoProto, TensorContract]]:
    found = {v.name: v for v in values}
    missing = [c.name for c in contracts if c.name not in found]
    if missing:
        raise ModelError(
            f"model {name!r} has no tensors named {missing} (it has {sorted(found)}); "
            "the manifest does not match the packaged model"
        )
    return [(found[c.name], c) for c in contracts]


def onnx_dynamic(data: bytes, spec: ModelSpec) -> bytes:
    """Tidy an exported ONNX model and make the dims the manifest names symbolic.

    CenterFace ships with a fixed ``[10,3,32,32]`` input; the detector needs any batch and
    size, so the dims the contract gives as strings become ``dim_param`` s.
    """
    import onnx

    model = onnx.load_from_string(data)
    graph = model.graph
    inits = {t.name for t in graph.initializer}
    # Old exporters list weights as graph inputs too; they would show up as model inputs.
    inputs = [v for v in graph.input if v.name not in inits]
    del graph.input[:]
    graph.input.extend(inputs)
    used = {i for node in graph.node for i in node.input} | {o.name for o in graph.output}
    # e.g. BatchNorm's *num_batches_tracked: dead weight that ONNX Runtime warns about.
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    # Intermediate shapes were inferred for the fixed size and would contradict the new dims.
    del graph.value_info[:]
    for value, contract in _by_name(graph.input, spec.inputs, spec.name):
        _set_dims(value, contract, spec.name)
    for value, contract in _by_name(graph.output, spec.outputs, spec.name):
        _set_dims(value, contract, spec.name)
    _check(model, spec.name)
    return canonicalize(model)


def _import_tflite2onnx() -> Callable[[str, str], None]:
    try:
        import tflite2onnx
    except ImportError as exc:
        raise ModelError(
            f"converting the face-mesh model needs tflite2onnx, which is not installed ({exc}); "
            f"run {_TFLITE2ONNX_HINT}, or install a converted model with "
            "'livefuse models pull --from DIR'"
        ) from exc
    return tflite2onnx.convert  # type: ignore[no-any-return]


def tflite_to_onnx(data: bytes, spec: ModelSpec) -> bytes:
    """Convert a TensorFlow Lite model with tflite2onnx, then canonicalize it."""
    import onnx

    convert = _import_tflite2onnx()
    # tflite2onnx's public API works on paths only.
    with tempfile.TemporaryDirectory(prefix="livefuse-convert-") as tmp:
        src, dst = Path(tmp, "model.tflite"), Path(tmp, "model.onnx")
        src.write_bytes(data)
        try:
            convert(str(src), str(dst))
        except Exception as exc:  # tflite2onnx raises bare asserts and ValueErrors
            raise ModelError(
                f"tflite2onnx could not convert model {spec.name!r} ({type(exc).__name__}: {exc}); "
                f"install the tested version: {_TFLITE2ONNX_HINT}"
            ) from exc
        model = onnx.load(str(dst))
    _check(model, spec.name)
    return canonicalize(model)


#: Converter id (the manifest's ``converter``) → function(member bytes, spec) → ONNX bytes.
CONVERTERS: Mapping[str, Callable[[bytes, ModelSpec], bytes]] = MappingProxyType(
    {"onnx-dynamic": onnx_dynamic, "tflite2onnx": tflite_to_onnx}
)


def convert(data: bytes, spec: ModelSpec) -> bytes:
    """Run the converter ``spec.converter`` names on the member bytes; return the ONNX bytes."""
    try:
        converter = CONVERTERS[spec.converter]
    except KeyError:
        raise ModelError(
            f"model {spec.name!r} names converter {spec.converter!r}, which this livefuse does "
            f"not have (it has {sorted(CONVERTERS)}); upgrade livefuse"
        ) from None
    return converter(data, spec)


def tool_versions() -> str:
    """Versions of the packages conversion results depend on, for error messages."""
    parts = []
    for dist in ("onnx", "protobuf", "numpy", "tflite2onnx", "tflite"):
        try:
            parts.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{dist} missing")
    return ", ".join(parts)
