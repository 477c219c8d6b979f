"""What ``scripts/build_engines.py`` builds, decided without TensorRT: the options, which
models, each input's optimisation profile, which ONNX nodes stay FP32, the timing-cache file
and the record written next to each engine. :mod:`livefuse.engines.build` makes the
``tensorrt`` calls; everything here is pure and tested on machines without a GPU.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import MappingProxyType

import onnx
from google.protobuf.message import DecodeError

from livefuse.engines.precision import computes_in_fp16, fp32_nodes, node_names
from livefuse.errors import ConfigError, EngineError
from livefuse.models.manifest import ModelSpec
from livefuse.runtime.engine_files import (
    PRECISION,
    ComputeCapability,
    EngineRecord,
    EngineTensor,
    InputProfile,
    build_command,
    sm_tag,
)
from livefuse.runtime.trt_env import GpuInfo

#: Smallest image side an engine takes where a model leaves H and W free (detector backbones stride 32).
MIN_SIDE = 32


@dataclass(frozen=True, slots=True)
class BuildOptions:
    """The build script's options (see :func:`build_parser`)."""

    models: tuple[str, ...] = ()
    "Models to build; empty: every installed, verified model."
    max_batch: int = 8
    "Faces per call the engines accept, for inputs whose batch dim is dynamic."
    opt_batch: int = 1
    "The batch TensorRT tunes for (live video mostly has one face)."
    opt_level: int = 3
    "TensorRT builder optimisation level, 0..5."
    workspace_gib: float = 4.0
    "TensorRT's workspace memory pool limit (scratch memory for tactics while building)."
    image_size: int = 640
    "Largest (and tuned) side for free H and W dims, when the manifest gives the model no size."
    precision_constraints: str = "obey"
    "'obey': the FP32 layers must run in FP32 (the build fails otherwise); 'prefer': TensorRT may fall back."
    weight_streaming: bool = False
    "Build streamable weights (strongly typed: needs an FP16 ONNX file)."
    home: Path | None = None
    "livefuse's home (models and engines); None: $LIVEFUSE_HOME, the config file or the default."
    engines_dir: Path | None = None
    "Where engines go; None: ``home/engines``."
    device: int = 0
    "CUDA device to build on (engines are built on the GPU that will run them)."
    force: bool = False
    "Rebuild engines that already fit this machine."
    verbose: bool = False

    @property
    def workspace_bytes(self) -> int:
        return int(self.workspace_gib * (1 << 30))


@dataclass(frozen=True, slots=True)
class ModelPlan:
    """Everything one engine build needs to know about its model."""

    spec: ModelSpec
    onnx: Path
    onnx_sha256: str
    profiles: tuple[InputProfile, ...]
    "One per input, in the file's order; fixed inputs have ``min == opt == max``."
    dynamic: frozenset[str]
    "The inputs with a dynamic dim: only they go into TensorRT's optimisation profile (and the record)."
    fp32: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    "ONNX node (as TensorRT names it) → why it stays FP32. Empty for strongly typed builds."
    nodes: tuple[str, ...] = ()
    "Every ONNX node as TensorRT names it (to map layers back to nodes)."
    strongly_typed: bool = False
    "Weight streaming: types come from the ONNX file, no FP16 flag, no per-layer constraints."

    @property
    def trt_profiles(self) -> tuple[InputProfile, ...]:
        """The profiles of the inputs with a dynamic dim: TensorRT's optimisation profile."""
        return tuple(p for p in self.profiles if p.name in self.dynamic)

    @property
    def max_batch(self) -> int:
        """The most faces per call the engine will take (1 for fixed-shape models), as the record computes it."""
        return min((p.max[0] for p in self.trt_profiles), default=1)


# --------------------------------------------------------------------------- arguments


def build_parser() -> argparse.ArgumentParser:
    """The arguments of ``scripts/build_engines.py`` (parsing them is the script's job)."""
    parser = argparse.ArgumentParser(
        description="Build FP16 TensorRT engines for the installed models, on the GPU that will run them.",
    )
    add = parser.add_argument
    add(
        "--model",
        dest="models",
        action="append",
        default=[],
        metavar="NAME",
        help="model to build (repeatable; default: every installed model)",
    )
    add("--max-batch", type=int, default=8, help="most faces per call, for models with a dynamic batch (8)")
    add("--opt-batch", type=int, default=1, help="batch size TensorRT tunes for (1)")
    add("--opt-level", type=int, default=3, help="TensorRT builder optimisation level 0..5 (3)")
    add("--workspace-gib", type=float, default=4.0, help="TensorRT workspace memory limit in GiB (4)")
    add(
        "--image-size",
        type=int,
        default=640,
        help="largest image side for detectors with free H and W and no size in the manifest (640)",
    )
    add(
        "--precision-constraints",
        choices=("obey", "prefer"),
        default="obey",
        help="whether the layers kept in FP32 must run in FP32 (obey, default) or TensorRT may fall back (prefer)",
    )
    add(
        "--weight-streaming",
        action="store_true",
        help="build streamable weights (strongly typed: only for FP16 ONNX files such as inswapper_128_fp16)",
    )
    add("--home", type=Path, default=None, help="livefuse home with the models ($LIVEFUSE_HOME or the default)")
    add("--engines", type=Path, default=None, metavar="DIR", help="where engines go (HOME/engines)")
    add("--device", type=int, default=0, help="CUDA device index (0)")
    add("--force", action="store_true", help="rebuild engines that already fit this machine")
    add("-v", "--verbose", action="store_true", help="TensorRT's verbose build log")
    return parser


def options_from_args(args: argparse.Namespace) -> BuildOptions:
    """Check the parsed arguments. Raises :class:`ConfigError` naming the bad value."""
    if args.max_batch < 1 or not 1 <= args.opt_batch <= args.max_batch:
        raise ConfigError(f"need 1 <= --opt-batch <= --max-batch, got {args.opt_batch} and {args.max_batch}")
    if not 0 <= args.opt_level <= 5:
        raise ConfigError(f"--opt-level must be 0..5 (TensorRT's builder optimisation levels), got {args.opt_level}")
    if not (math.isfinite(args.workspace_gib) and args.workspace_gib > 0):
        raise ConfigError(f"--workspace-gib must be a positive number of GiB, got {args.workspace_gib}")
    if args.image_size < MIN_SIDE:
        raise ConfigError(f"--image-size must be at least {MIN_SIDE} pixels, got {args.image_size}")
    if args.device < 0:
        raise ConfigError(f"--device must be a CUDA device index (0, 1, ...), got {args.device}")
    return BuildOptions(
        models=tuple(dict.fromkeys(args.models)),
        max_batch=args.max_batch,
        opt_batch=args.opt_batch,
        opt_level=args.opt_level,
        workspace_gib=args.workspace_gib,
        image_size=args.image_size,
        precision_constraints=args.precision_constraints,
        weight_streaming=args.weight_streaming,
        home=args.home,
        engines_dir=args.engines,
        device=args.device,
        force=args.force,
        verbose=args.verbose,
    )


# --------------------------------------------------------------------------- plans


def timing_cache_path(engines_dir: Path, version: str, cc: ComputeCapability) -> Path:
    """``engines/timing-<trt version>-sm<cc>.cache``: timings are only valid for one TensorRT
    version on one GPU architecture, so each pair has its own file."""
    return Path(engines_dir) / f"timing-{version}-{sm_tag(cc)}.cache"


def _dims(value: onnx.ValueInfoProto) -> tuple[int | None, ...]:
    """A tensor's shape; None for dynamic (named or unknown) dims."""
    dims = value.type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims)


def graph_inputs(graph: onnx.GraphProto) -> list[tuple[str, tuple[int | None, ...]]]:
    """The real inputs (old exports also list their initializers as inputs)."""
    weights = {t.name for t in graph.initializer}
    return [(v.name, _dims(v)) for v in graph.input if v.name not in weights]


def _dim_range(dim: int | None, side: int) -> tuple[int, int, int]:
    """(min, opt, max) of one non-batch dim: fixed, or an image side from :data:`MIN_SIDE` up to ``side``."""
    if dim is not None:
        return dim, dim, dim
    return min(MIN_SIDE, side), side, side


def input_profiles(
    model: str,
    inputs: Sequence[tuple[str, Sequence[int | None]]],
    max_batch: int,
    opt_batch: int,
    side: int,
) -> tuple[InputProfile, ...]:
    """A profile per input: batch ``1..max_batch`` (tuned for ``opt_batch``) where dim 0 is
    dynamic, the fixed batch where it is not; other dynamic dims (detectors' H and W) range
    from :data:`MIN_SIDE` to ``side``, tuned for ``side``."""
    if not 1 <= opt_batch <= max_batch:
        raise ConfigError(f"need 1 <= opt_batch <= max_batch, got {opt_batch} and {max_batch}")
    out: list[InputProfile] = []
    for name, shape in inputs:
        if not shape:
            raise EngineError(f"model {model!r}: input {name!r} is a scalar or has no shape; it cannot be profiled")
        batch = (1, opt_batch, max_batch) if shape[0] is None else (shape[0],) * 3
        low, opt, high = zip(batch, *(_dim_range(d, side) for d in shape[1:]))
        out.append(InputProfile(name, tuple(low), tuple(opt), tuple(high)))
    return tuple(out)


def plan_model(spec: ModelSpec, onnx_path: Path, onnx_sha256: str, options: BuildOptions) -> ModelPlan:
    """Read the ONNX graph (weights left on disk) and decide the profiles and FP32 nodes."""
    try:
        graph = onnx.load(str(onnx_path), load_external_data=False).graph
    except (OSError, DecodeError, ValueError) as exc:
        raise EngineError(f"model {spec.name!r}: {onnx_path} is not a readable ONNX file ({exc})") from exc
    inputs = graph_inputs(graph)
    side = spec.io.size if spec.io is not None else options.image_size
    profiles = input_profiles(spec.name, inputs, options.max_batch, options.opt_batch, side)
    dynamic = frozenset(name for name, shape in inputs if any(d is None for d in shape))
    if options.weight_streaming and not computes_in_fp16(graph):
        raise EngineError(
            f"model {spec.name!r}: --weight-streaming builds a strongly typed network, which computes in the "
            "ONNX file's own types, and this file's weights are float32, so the engine would be FP32; use the "
            "model's FP16 export (e.g. inswapper_128_fp16) or build without --weight-streaming"
        )
    fp32 = {} if options.weight_streaming else fp32_nodes(graph)
    return ModelPlan(
        spec,
        Path(onnx_path),
        onnx_sha256,
        profiles,
        dynamic,
        MappingProxyType(fp32),
        tuple(node_names(graph)),
        strongly_typed=options.weight_streaming,
    )


def make_record(
    plan: ModelPlan,
    *,
    version: str,
    gpu: GpuInfo,
    options: BuildOptions,
    tensors: Sequence[EngineTensor],
    fp32_layers: Sequence[str],
    build_seconds: float,
    built_at: datetime | None = None,
) -> EngineRecord:
    """The record written next to the engine: what was built, for what, how and how long."""
    when = (built_at or datetime.now(timezone.utc)).astimezone(timezone.utc)
    return EngineRecord(
        model=plan.spec.name,
        onnx_sha256=plan.onnx_sha256,
        trt_version=version,
        cc=gpu.cc,
        precision=PRECISION,
        profiles=plan.trt_profiles,
        tensors=tuple(tensors),
        layer_precisions=tuple((layer, "fp32") for layer in fp32_layers),
        optimization_level=options.opt_level,
        workspace_bytes=options.workspace_bytes,
        build_seconds=round(build_seconds, 3),
        built_at=when.isoformat(timespec="seconds"),
        gpu_name=gpu.name,
        weight_streaming=plan.strongly_typed,
    )


def missing_fp32(plan: ModelPlan, kept: Mapping[str, str]) -> list[str]:
    """The planned FP32 nodes no layer was constrained for (TensorRT folded them away, or
    their layers take integer tensors): worth a warning, not an error."""
    covered = set(kept.values())
    return [node for node in plan.fp32 if node not in covered]


def rebuild_hint(model: str) -> str:
    return f"fix the cause above and run '{build_command(model)}' again"
