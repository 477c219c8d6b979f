"""ONNX Runtime runner: CPU everywhere, CUDA/DirectML/CoreML where installed.

The GPU providers get their options from :func:`cuda_provider_options` and
:func:`tensorrt_provider_options` (the option names are ONNX Runtime's, as its CUDA and
TensorRT execution-provider pages list them). :meth:`OrtRunner.infer_bound` runs on tensors
that are already in place (GPU memory with the CUDA provider) through ONNX Runtime's IO binding.

Verified here (CPU-only onnxruntime): provider and option selection, and ``infer_bound`` on host
memory. Written but not run here: the CUDA and TensorRT providers with these options, and
``infer_bound`` on device memory (its test is marked ``gpu``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from livefuse.errors import ModelError
from livefuse.runtime.base import Runner, TensorSpec

log = logging.getLogger(__name__)

CUDA_EP = "CUDAExecutionProvider"
TENSORRT_EP = "TensorrtExecutionProvider"
CPU_EP = "CPUExecutionProvider"

#: Preferred order when none is asked for. TensorRT engines have their own runner; ORT's
#: TensorRT provider would build engines at session start, which the live path must never do,
#: so it is used only when asked for (with a prebuilt engine cache, see livefuse.runtime.providers).
PROVIDER_PREFERENCE = (
    CUDA_EP,
    "ROCMExecutionProvider",
    "DmlExecutionProvider",
    "CoreMLExecutionProvider",
    CPU_EP,
)

#: Providers whose tensors live in CUDA device memory (what ``infer_bound`` binds them as).
_CUDA_PROVIDERS = (CUDA_EP, TENSORRT_EP)


def available_providers() -> list[str]:
    """Execution providers this onnxruntime build offers, in livefuse's preference order."""
    import onnxruntime as ort

    installed = set(ort.get_available_providers())
    return [p for p in PROVIDER_PREFERENCE if p in installed]


def choose_providers(requested: Sequence[str] | None, installed: Sequence[str]) -> list[str]:
    """The providers to ask for: the requested ones that are installed, CPU always last.

    Nothing requested: the installed ones in :data:`PROVIDER_PREFERENCE` order.
    """
    wanted = list(requested) if requested else [p for p in PROVIDER_PREFERENCE if p in installed]
    chosen = [p for p in wanted if p in installed and p != CPU_EP]
    missing = [p for p in wanted if p not in installed]
    if missing:
        log.warning("execution providers %s are not installed; falling back", ", ".join(missing))
    return [*chosen, CPU_EP]


def cuda_provider_options(device_id: int = 0, vram_budget: int = 0) -> dict[str, str]:
    """Options of ONNX Runtime's CUDA provider. ``vram_budget``: bytes its arena may hold (0: no limit)."""
    options = {
        "device_id": str(device_id),
        # Grow the arena by what is asked for, not to the next power of two, which can overshoot a budget by half.
        "arena_extend_strategy": "kSameAsRequested",
        # EXHAUSTIVE (ORT's default) benchmarks every convolution algorithm on each new input shape: seconds of
        # frozen video at start and whenever the number of faces changes.
        "cudnn_conv_algo_search": "HEURISTIC",
        # Copies on the compute stream: ORT warns that separate copy streams can race for some models.
        "do_copy_in_default_stream": "1",
    }
    if vram_budget:
        options["gpu_mem_limit"] = str(vram_budget)
    return options


def tensorrt_provider_options(cache: Path, device_id: int = 0, vram_budget: int = 0) -> dict[str, str]:
    """Options of ONNX Runtime's TensorRT provider, reading its prebuilt engines from ``cache``.

    FP16 and the cache settings must be those the cache was built with, or ORT rebuilds the
    engines at session start (minutes) instead of loading them.
    """
    options = {
        "device_id": str(device_id),
        "trt_fp16_enable": "1",
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": "1",
        "trt_timing_cache_path": str(cache),
    }
    if vram_budget:
        options["trt_max_workspace_size"] = str(vram_budget)
    return options


@dataclass(frozen=True, slots=True)
class BoundTensor:
    """A tensor in memory the caller owns (device memory with the CUDA provider): where, shape, dtype."""

    ptr: int
    shape: tuple[int, ...]
    dtype: np.dtype[Any] | type[np.generic]


def _spec(arg: object) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) else None for d in arg.shape)  # type: ignore[attr-defined]
    return TensorSpec(arg.name, shape, arg.type)  # type: ignore[attr-defined]


class OrtRunner(Runner):
    """Runs an ONNX file with ONNX Runtime. The session is created once, in ``activate``.

    ``providers``: the execution providers to try, in order (default: :data:`PROVIDER_PREFERENCE`);
    ``provider_options``: each one's options, in the same order.
    """

    def __init__(
        self,
        path: Path,
        name: str | None = None,
        providers: Sequence[str] | None = None,
        threads: int = 0,
        provider_options: Sequence[Mapping[str, str]] | None = None,
    ) -> None:
        super().__init__(name or path.stem)
        self.path = path
        self._requested = providers
        self._threads = threads
        if provider_options is not None and len(provider_options) != len(providers or ()):
            raise ValueError(f"model {self.name!r}: provider_options needs one mapping per provider")
        self._options = dict(zip(providers or (), provider_options, strict=True)) if provider_options else {}
        self._session: Any = None

    def activate_impl(self) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self._threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # warnings about unused initializers are noise
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = choose_providers(self._requested, ort.get_available_providers())
        extra: dict[str, Any] = {}
        if any(self._options.values()):
            extra["provider_options"] = [dict(self._options.get(p, {})) for p in providers]
        try:
            self._session = ort.InferenceSession(str(self.path), options, providers=providers, **extra)
        except Exception as exc:  # ORT raises its own untyped errors for bad files
            raise ModelError(
                f"model {self.name!r} at {self.path} cannot be loaded by ONNX Runtime ({exc}); "
                "run 'livefuse models pull' to reinstall it"
            ) from exc
        log.info("model %s runs on %s", self.name, self.provider)

    def infer_impl(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return self._session.run(None, dict(feeds))  # type: ignore[no-any-return]

    def infer_bound(self, inputs: Mapping[str, BoundTensor], outputs: Mapping[str, BoundTensor]) -> None:
        """Run the model reading ``inputs`` and writing ``outputs`` where they are: no host copies.

        With the CUDA (or TensorRT) provider the tensors are device memory on the provider's GPU,
        otherwise host memory. Every input and output is bound, with its exact shape. The inputs
        must be fully written first (the stream that wrote them synchronized): ONNX Runtime reads
        them on its own stream. The outputs are complete when this returns.
        """
        if not self.is_active:
            raise RuntimeError(f"runner {self.name!r} must be activated before infer_bound()")
        self._check_bound("input", inputs, self.inputs)
        self._check_bound("output", outputs, self.outputs)
        device = "cuda" if self.provider in _CUDA_PROVIDERS else "cpu"
        device_id = int(self._options.get(self.provider, {}).get("device_id", 0))
        # A binding per call: runners are shared between threads and a binding is not thread-safe.
        binding = self._session.io_binding()
        for name, t in inputs.items():
            binding.bind_input(name, device, device_id, np.dtype(t.dtype), list(t.shape), t.ptr)
        for name, t in outputs.items():
            binding.bind_output(name, device, device_id, np.dtype(t.dtype), list(t.shape), t.ptr)
        self._session.run_with_iobinding(binding)

    def _check_bound(self, kind: str, given: Mapping[str, BoundTensor], specs: Sequence[TensorSpec]) -> None:
        names = [s.name for s in specs]
        if sorted(given) != sorted(names):
            raise ValueError(
                f"model {self.name!r}: infer_bound needs exactly the {kind}s {', '.join(names)}; "
                f"got {', '.join(given) or 'none'}"
            )

    def close_impl(self) -> None:
        self._session = None

    @property
    def provider(self) -> str:
        if self._session is None:
            return "inactive"
        return str(self._session.get_providers()[0])

    @property
    def inputs(self) -> list[TensorSpec]:
        return [_spec(a) for a in self._session.get_inputs()]

    @property
    def outputs(self) -> list[TensorSpec]:
        return [_spec(a) for a in self._session.get_outputs()]
