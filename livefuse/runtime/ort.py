"""ONNX Runtime runner: CPU everywhere, CUDA/DirectML/CoreML where installed."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from livefuse.errors import ModelError
from livefuse.runtime.base import Runner, TensorSpec

log = logging.getLogger(__name__)

#: Preferred order. TensorRT engines have their own runner; ORT's TensorRT provider
#: would build engines at session start, which the live path must never do.
PROVIDER_PREFERENCE = (
    "CUDAExecutionProvider",
    "ROCMExecutionProvider",
    "DmlExecutionProvider",
    "CoreMLExecutionProvider",
    "CPUExecutionProvider",
)


def available_providers() -> list[str]:
    """Execution providers this onnxruntime build offers, in livefuse's preference order."""
    import onnxruntime as ort

    installed = set(ort.get_available_providers())
    return [p for p in PROVIDER_PREFERENCE if p in installed]


def choose_providers(requested: Sequence[str] | None, installed: Sequence[str]) -> list[str]:
    """The providers to ask for: the requested ones that are installed, CPU always last."""
    wanted = list(requested) if requested else list(installed)
    chosen = [p for p in wanted if p in installed and p != "CPUExecutionProvider"]
    missing = [p for p in wanted if p not in installed]
    if missing:
        log.warning("execution providers %s are not installed; falling back", ", ".join(missing))
    return [*chosen, "CPUExecutionProvider"]


def _spec(arg: object) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) else None for d in arg.shape)  # type: ignore[attr-defined]
    return TensorSpec(arg.name, shape, arg.type)  # type: ignore[attr-defined]


class OrtRunner(Runner):
    """Runs an ONNX file with ONNX Runtime. The session is created once, in ``activate``."""

    def __init__(
        self,
        path: Path,
        name: str | None = None,
        providers: Sequence[str] | None = None,
        threads: int = 0,
    ) -> None:
        super().__init__(name or path.stem)
        self.path = path
        self._requested = providers
        self._threads = threads
        self._session: Any = None

    def activate_impl(self) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self._threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # warnings about unused initializers are noise
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = choose_providers(self._requested, available_providers())
        try:
            self._session = ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as exc:  # ORT raises its own untyped errors for bad files
            raise ModelError(
                f"model {self.name!r} at {self.path} cannot be loaded by ONNX Runtime ({exc}); "
                "run 'livefuse models pull' to reinstall it"
            ) from exc
        log.info("model %s runs on %s", self.name, self.provider)

    def infer_impl(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return self._session.run(None, dict(feeds))  # type: ignore[no-any-return]

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
