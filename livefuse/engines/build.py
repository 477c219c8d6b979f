"""Builds FP16 TensorRT engines for installed models: the ``tensorrt`` calls behind
``scripts/build_engines.py``.

What to build is decided by :mod:`livefuse.engines.plan` (pure); this module parses the
ONNX file into a TensorRT network, keeps the planned layers in FP32, adds the optimisation
profile, loads and saves the timing cache, builds, and writes the engine and its record with
:func:`livefuse.runtime.engine_files.save_engine`. The TensorRT module is a parameter, so the
orchestration runs in tests against a fake; the real build needs a GPU (tests marked ``gpu``).

TensorRT 10 API used: ``Builder.create_network`` (explicit batch is the only mode; flag 0, or
``STRONGLY_TYPED`` for weight streaming), ``OnnxParser.parse_from_file``, ``ILayer.precision``
and ``set_output_type``, ``BuilderFlag.FP16``/``OBEY_PRECISION_CONSTRAINTS`` (or ``PREFER_…``)/``WEIGHT_STREAMING``,
``IBuilderConfig.set_memory_pool_limit(MemoryPoolType.WORKSPACE, …)``,
``builder_optimization_level``, ``create_timing_cache``/``set_timing_cache``/``get_timing_cache``,
``build_serialized_network``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from livefuse.engines.plan import (
    BuildOptions,
    ModelPlan,
    make_record,
    missing_fp32,
    plan_model,
    rebuild_hint,
    timing_cache_path,
)
from livefuse.engines.precision import layers_to_keep
from livefuse.errors import ConfigError, EngineError, EngineMismatch, LivefuseError
from livefuse.models.files import atomic_write, default_home, sha256_file
from livefuse.models.manifest import ModelSpec
from livefuse.models.store import ModelStore
from livefuse.runtime.engine_files import EngineMatch, EngineTensor, default_engines_dir, find_engine, save_engine
from livefuse.runtime.trt_env import GpuInfo, import_tensorrt, local_gpu, trt_version

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- the environment


def installed_models(store: ModelStore, names: Sequence[str]) -> list[tuple[ModelSpec, Path]]:
    """The named models (each must be installed and verified), or every verified one."""
    if names:
        return [(store.spec(name), store.path(name)) for name in names]
    return [(store.spec(s.name), s.path) for s in store.list() if s.verified]


# --------------------------------------------------------------------------- TensorRT calls


def _parse(trt: Any, builder: Any, logger: Any, plan: ModelPlan) -> tuple[Any, Any]:
    """The network of ``plan.onnx`` and its parser (which owns the weights: keep it alive)."""
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if plan.strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(plan.onnx)):
        errors = [parser.get_error(i) for i in range(parser.num_errors)]
        listed = "; ".join(f"{e.desc()} (node {e.node()})" for e in errors) or "no error was reported"
        raise EngineError(
            f"TensorRT cannot parse model {plan.spec.name!r} ({plan.onnx}): {listed}. A newer TensorRT may "
            f"support these nodes; otherwise this model runs on ONNX Runtime"
        )
    names = {network.get_input(i).name for i in range(network.num_inputs)}
    if names != {p.name for p in plan.profiles}:
        raise EngineError(
            f"model {plan.spec.name!r}: TensorRT sees inputs {sorted(names)}, the ONNX graph "
            f"{sorted(p.name for p in plan.profiles)}"
        )
    return network, parser


def _is_float(trt: Any, tensor: Any) -> bool:
    return tensor is None or tensor.dtype in (trt.float32, trt.float16)


def keep_fp32(trt: Any, network: Any, plan: ModelPlan) -> dict[str, str]:
    """Constrain the layers of the planned FP32 nodes to FP32 (inputs, math and outputs).

    Layers reading or making integer tensors (shape arithmetic) are left alone: a float
    precision constraint on them is meaningless and can fail the build. Returns the
    constrained layers (layer name → ONNX node).
    """
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    wanted = layers_to_keep(
        [(layer.name, getattr(layer, "metadata", "") or "") for layer in layers], plan.fp32, plan.nodes
    )
    kept: dict[str, str] = {}
    for layer in layers:
        if layer.name not in wanted:
            continue
        tensors = [layer.get_input(i) for i in range(layer.num_inputs)]
        tensors += [layer.get_output(i) for i in range(layer.num_outputs)]
        if not all(_is_float(trt, t) for t in tensors):
            continue
        layer.precision = trt.float32
        for i in range(layer.num_outputs):
            layer.set_output_type(i, trt.float32)
        kept[layer.name] = wanted[layer.name]
    return kept


def _config(trt: Any, builder: Any, plan: ModelPlan, options: BuildOptions, constrained: bool) -> Any:
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_bytes)
    config.builder_optimization_level = options.opt_level
    if plan.strongly_typed:
        # Types come from the ONNX file: TensorRT refuses the FP16 and precision-constraint flags here.
        config.set_flag(trt.BuilderFlag.WEIGHT_STREAMING)
    else:
        config.set_flag(trt.BuilderFlag.FP16)
        if constrained:  # without one of these flags TensorRT ignores the per-layer precisions
            obey = options.precision_constraints == "obey"
            config.set_flag(
                trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS if obey else trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS
            )
    return config


def _add_profile(builder: Any, config: Any, plan: ModelPlan) -> None:
    """One optimisation profile over the inputs with a dynamic dim (none for fixed-shape models)."""
    if not plan.trt_profiles:
        return
    profile = builder.create_optimization_profile()
    for p in plan.trt_profiles:
        profile.set_shape(p.name, p.min, p.opt, p.max)
    config.add_optimization_profile(profile)


def _use_cache(config: Any, data: bytes) -> bool:
    cache = config.create_timing_cache(data)
    return cache is not None and bool(config.set_timing_cache(cache, ignore_mismatch=False))


def load_timing_cache(config: Any, path: Path) -> None:
    """Reuse the timings of earlier builds (same TensorRT, same GPU architecture)."""
    data = path.read_bytes() if path.is_file() else b""
    if data and _use_cache(config, data):
        log.info("reusing the timing cache %s (%d kB)", path, len(data) // 1024)
        return
    if data:
        log.warning("timing cache %s does not fit this TensorRT and GPU; starting a new one", path)
    if not _use_cache(config, b""):
        raise EngineError("TensorRT could not create a timing cache (see its log above); run 'livefuse doctor'")


def save_timing_cache(config: Any, path: Path) -> None:
    """Write the config's timing cache (atomically: a concurrent build never reads half a file)."""
    atomic_write(path, bytes(memoryview(config.get_timing_cache().serialize())))


def _io_tensors(trt: Any, network: Any) -> list[EngineTensor]:
    def tensor(t: Any, is_input: bool) -> EngineTensor:
        return EngineTensor(t.name, is_input, np.dtype(trt.nptype(t.dtype)).name, tuple(int(d) for d in t.shape))

    return [tensor(network.get_input(i), True) for i in range(network.num_inputs)] + [
        tensor(network.get_output(i), False) for i in range(network.num_outputs)
    ]


def build_engine(trt: Any, plan: ModelPlan, options: BuildOptions, gpu: GpuInfo, engines_dir: Path) -> EngineMatch:
    """Build the engine of ``plan`` and save it with its record."""
    version = trt_version(trt.__version__)
    logger = trt.Logger(trt.Logger.VERBOSE if options.verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, parser = _parse(trt, builder, logger, plan)
    kept = {} if plan.strongly_typed else keep_fp32(trt, network, plan)
    for node in missing_fp32(plan, kept):
        log.warning(
            "model %s: no FP32 constraint could be set for ONNX node %s (%s)", plan.spec.name, node, plan.fp32[node]
        )
    config = _config(trt, builder, plan, options, constrained=bool(kept))
    _add_profile(builder, config, plan)
    cache = timing_cache_path(engines_dir, version, gpu.cc)
    load_timing_cache(config, cache)
    log.info(
        "building %s on %s: %d FP32 layers, batch up to %d (minutes; the timing cache makes rebuilds faster)",
        plan.spec.name,
        gpu.name,
        len(kept),
        plan.max_batch,
    )
    start = time.perf_counter()
    blob = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if blob is None:
        raise EngineError(
            f"TensorRT could not build model {plan.spec.name!r} (its log above says why; if it ran out of memory, "
            f"raise --workspace-gib or lower --max-batch); {rebuild_hint(plan.spec.name)}"
        )
    save_timing_cache(config, cache)
    del parser  # the weights it owns were needed until the build
    record = make_record(
        plan,
        version=version,
        gpu=gpu,
        options=options,
        tensors=_io_tensors(trt, network),
        fp32_layers=list(kept),
        build_seconds=seconds,
    )
    return save_engine(engines_dir, memoryview(blob), record)


# --------------------------------------------------------------------------- orchestration


@dataclass(frozen=True, slots=True)
class BuildResult:
    """What happened to one model."""

    model: str
    status: Literal["built", "up to date", "failed"]
    engine: Path | None = None
    message: str = ""


def _up_to_date(plan: ModelPlan, version: str, gpu: GpuInfo, engines_dir: Path) -> EngineMatch | None:
    try:
        match = find_engine(plan.spec, version, gpu.cc, engines_dir, onnx_sha256=plan.onnx_sha256, batch=plan.max_batch)
    except EngineMismatch:
        return None
    return match if match.record.weight_streaming == plan.strongly_typed else None


def _build_one(
    trt: Any, spec: ModelSpec, onnx: Path, options: BuildOptions, gpu: GpuInfo, engines_dir: Path
) -> BuildResult:
    try:
        plan = plan_model(spec, onnx, sha256_file(onnx), options)
        fresh = None if options.force else _up_to_date(plan, trt_version(trt.__version__), gpu, engines_dir)
        if fresh is not None:
            return BuildResult(spec.name, "up to date", fresh.path, "already fits this machine (--force rebuilds)")
        match = build_engine(trt, plan, options, gpu, engines_dir)
    except LivefuseError as exc:  # one model's failure must not stop the others
        log.error("%s", exc)
        return BuildResult(spec.name, "failed", message=str(exc))
    record = match.record
    message = (
        f"{record.engine_bytes / 1e6:.1f} MB in {record.build_seconds:.0f} s, batch up to {record.max_batch}, "
        f"{len(record.layer_precisions)} FP32 layers"
    )
    return BuildResult(spec.name, "built", match.path, message)


def build_engines(
    options: BuildOptions,
    *,
    trt: Any = None,
    gpu: GpuInfo | None = None,
    store: ModelStore | None = None,
) -> list[BuildResult]:
    """Build an engine per model (see :class:`BuildOptions`); a model that fails is reported
    in its result and the others still build. Raises :class:`ConfigError` (TensorRT or
    cuda-python missing, nothing installed), :class:`EngineError` (no GPU) or
    :class:`~livefuse.errors.ModelError` (a named model is not installed) before building anything.
    """
    trt = trt if trt is not None else import_tensorrt()
    gpu = gpu if gpu is not None else local_gpu(options.device)
    home = (options.home or default_home()) if store is None else store.home
    store = store if store is not None else ModelStore(home)
    engines_dir = options.engines_dir or default_engines_dir(home)
    models = installed_models(store, options.models)
    if not models:
        raise ConfigError(
            f"no verified models are installed in {store.models_dir}: install them with "
            "'livefuse models pull [NAME]' or 'livefuse models add NAME PATH' first"
        )
    return [_build_one(trt, spec, onnx, options, gpu, engines_dir) for spec, onnx in models]
