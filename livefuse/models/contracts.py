"""Does a file fit its record? Inputs, outputs and the family checks (the inswapper's emap)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from livefuse.errors import ModelError
from livefuse.models.manifest import ModelSpec, TensorContract

if sys.version_info >= (3, 11):
    pass
else:  # pragma: no cover - exercised on 3.10 only
    pass


# --------------------------------------------------------------------------- contracts


@dataclass(frozen=True, slots=True)
class SeenTensor:
    """An input or output as ONNX Runtime reports it (a non-int dim is dynamic)."""

    name: str
    shape: tuple[object, ...]
    type: str

    def text(self) -> str:
        """``name [dims] type``, for messages."""
        return f"{self.name} {_shape_text(self.shape)} {self.type}"


@dataclass(frozen=True, slots=True)
class Signature:
    """The inputs and outputs of an ONNX file."""

    inputs: tuple[SeenTensor, ...]
    outputs: tuple[SeenTensor, ...]


def _shape_text(shape: Sequence[object]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def _want_text(contracts: Sequence[TensorContract]) -> list[str]:
    return [f"{c.name} {_shape_text(c.shape)} {c.ort_type}" for c in contracts if c.required]


def read_signature(data: bytes | Path, what: str) -> Signature:
    """Load ``data`` (bytes or a path) with ONNX Runtime and return its inputs and outputs.

    Raises ``ModelError`` naming ``what`` when ONNX Runtime cannot load it.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    # Only the declared signature is read; optimizing the graph would be wasted time.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    model = str(data) if isinstance(data, Path) else data
    try:
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own untyped errors for bad models
        raise ModelError(
            f"{what} cannot be loaded by ONNX Runtime ({exc}); it is not an ONNX model, is "
            "truncated, or needs a newer onnxruntime (pip install -U onnxruntime)"
        ) from exc

    def seen(args: Sequence[Any]) -> tuple[SeenTensor, ...]:
        return tuple(SeenTensor(a.name, tuple(a.shape), a.type) for a in args)

    return Signature(seen(session.get_inputs()), seen(session.get_outputs()))


def _dim_fits(want: int | str, got: object) -> bool:
    dynamic = not isinstance(got, int)  # ORT reports dim_params as str, unknown dims as None
    return dynamic if isinstance(want, str) else dynamic or got == want


def _tensor_fits(want: TensorContract, got: SeenTensor) -> bool:
    if (want.match_name and want.name != got.name) or want.ort_type != got.type:
        return False
    return len(want.shape) == len(got.shape) and all(
        _dim_fits(w, g) for w, g in zip(want.shape, got.shape, strict=True)
    )


def _inputs_fit(spec: ModelSpec, got: Sequence[SeenTensor]) -> bool:
    if len(got) != len(spec.inputs):
        return False
    if spec.inputs_by_name:
        by_name = {g.name: g for g in got}
        return all(c.name in by_name and _tensor_fits(c, by_name[c.name]) for c in spec.inputs)
    return all(_tensor_fits(c, g) for c, g in zip(spec.inputs, got, strict=True))


def _outputs_fit(spec: ModelSpec, got: Sequence[SeenTensor]) -> bool:
    needed = [c for c in spec.outputs if c.required]  # they come first (checked at load)
    most = len(got) if spec.extra_outputs else len(spec.outputs)
    if not len(needed) <= len(got) <= most:
        return False
    return all(_tensor_fits(c, g) for c, g in zip(needed, got))


def contract_problem(spec: ModelSpec, signature: Signature) -> str | None:
    """Why a file with ``signature`` cannot serve as ``spec``, or None when it can."""
    for kind, fits, got, want in (
        ("inputs", _inputs_fit(spec, signature.inputs), signature.inputs, spec.inputs),
        ("outputs", _outputs_fit(spec, signature.outputs), signature.outputs, spec.outputs),
    ):
        if not fits:
            return f"its {kind} are {[g.text() for g in got]} but the manifest says {_want_text(want)}"
    return None


def check_contract(spec: ModelSpec, data: bytes | Path) -> None:
    """Check the ONNX model ``data`` (bytes or a path) against ``spec``.

    The inputs and outputs must fit the manifest (names, order, ranks, fixed dims, dtypes) and
    the family's own rules must hold (an inswapper carries its emap). Raises ``ModelError``.
    """
    what = f"model {spec.name!r}"
    problem = contract_problem(spec, read_signature(data, what)) or family_problem(spec, data)
    if problem:
        raise ModelError(
            f"{what}: {problem}; the model does not fit this livefuse: reinstall it with "
            f"'livefuse models pull {spec.name}'"
        )


def family_problem(spec: ModelSpec, data: bytes | Path) -> str | None:
    """What breaks the rules of ``spec.family`` in the model ``data``, or None."""
    check = _FAMILY_CHECKS.get(spec.family)
    return check(data) if check is not None else None


def _load_graph(data: bytes | Path) -> Any:
    import onnx

    return onnx.load(str(data)) if isinstance(data, Path) else onnx.load_from_string(data)


def _emap_problem(data: bytes | Path) -> str | None:
    return _graph_emap_problem(_load_graph(data).graph)


def _graph_emap_problem(graph: Any) -> str | None:
    """inswapper keeps its emap as the graph's last initializer, [512,512], read by no node."""
    import onnx

    if not graph.initializer:
        return "it has no initializers, so no emap (the inswapper identity map)"
    last = graph.initializer[-1]
    dims = list(last.dims)
    types = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    if dims != [512, 512] or last.data_type not in types:
        kind = onnx.helper.tensor_dtype_to_np_dtype(last.data_type)
        return (
            f"its last initializer {last.name!r} is {kind} {dims}, not the float [512,512] emap "
            "inswapper models carry there (insightface reads graph.initializer[-1])"
        )
    if any(last.name in node.input for node in graph.node):
        return f"its last initializer {last.name!r} feeds a node, so it is a weight, not the emap"
    return None


_FAMILY_CHECKS: Mapping[str, Callable[[bytes | Path], str | None]] = MappingProxyType({"inswapper": _emap_problem})


def load_emap(path: Path) -> Any:
    """The emap (float32 [512,512]) of the inswapper-family model at ``path``.

    Raises ``ModelError`` when the file has none.
    """
    import numpy as np
    from onnx import numpy_helper

    graph = _load_graph(path).graph
    problem = _graph_emap_problem(graph)
    if problem:
        raise ModelError(
            f"{path} has no usable emap: {problem}; give livefuse an inswapper_128 file "
            "('livefuse models pull inswapper_128')"
        )
    return numpy_helper.to_array(graph.initializer[-1]).astype(np.float32)


def looks_like(manifest: Mapping[str, ModelSpec], signature: Signature) -> str:
    """A phrase saying which known models a file with ``signature`` could be."""
    matches = [s for s in manifest.values() if contract_problem(s, signature) is None]
    if matches:
        names = " or ".join(f"'{s.name}'" for s in matches)
        return f"the file looks like a {matches[0].role} ({names})"
    ins = [t.text() for t in signature.inputs]
    outs = [t.text() for t in signature.outputs]
    return f"the file has inputs {ins} and outputs {outs}, which fit no model livefuse knows"
