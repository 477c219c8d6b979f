"""Each model's runner, on the backend :func:`livefuse.runtime.providers.choose` picks or the
``runtime`` setting forces, built with the settings' providers, threads and VRAM budget.

``runtime = "auto"`` tries the chosen backend and, when it cannot be used (its package does not
import, or its runner refuses to start), logs why and takes the next one down the order; the
CPU is the last resort. A forced runtime never falls back: when it is not available the error
says what is missing and how to get it.

Verified here (CPU only): the choice, forced-runtime errors, the fallbacks and the ONNX Runtime
providers and options, with recorded facts (tests/test_backends.py). Not run here: the GPU
runners themselves (ONNX Runtime CUDA/TensorRT providers, torch on CUDA, TensorRT).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from livefuse.errors import ConfigError, LivefuseError
from livefuse.models.files import sha256_file
from livefuse.models.manifest import ModelSpec
from livefuse.runtime.base import Runner
from livefuse.runtime.engine_files import build_command
from livefuse.runtime.ort import (
    CPU_EP,
    CUDA_EP,
    TENSORRT_EP,
    OrtRunner,
    cuda_provider_options,
    tensorrt_provider_options,
)
from livefuse.runtime.providers import ORDER, Backend, Choice, RuntimeFacts, add_models, choose, gather_facts
from livefuse.runtime.torch_runner import TorchRunner

log = logging.getLogger(__name__)

#: The ``runtime`` setting's values → the backend they force (None: the best available).
RUNTIMES: Mapping[str, Backend | None] = MappingProxyType(
    {
        "auto": None,
        "cpu": Backend.CPU,
        "cuda": Backend.ORT_CUDA,
        "torch": Backend.TORCH_CUDA,
        "tensorrt": Backend.TENSORRT,
    }
)

_SETTING = MappingProxyType({backend: name for name, backend in RUNTIMES.items() if backend is not None})

#: How to get each GPU backend.
INSTALL = MappingProxyType(
    {
        Backend.TENSORRT: "pip install 'livefuse[tensorrt]' (TensorRT and cuda-python)",
        Backend.ORT_CUDA: "pip uninstall -y onnxruntime, then pip install onnxruntime-gpu",
        Backend.TORCH_CUDA: "pip install 'livefuse[torch]' (with a CUDA build of torch)",
    }
)

#: ``--providers`` names ONNX Runtime providers: only its backends are then candidates.
_ORT_BACKENDS = frozenset({Backend.ORT_CUDA, Backend.CPU})

#: Gathers the facts of this machine (and of the models given): :func:`gather_facts`'s shape.
Gather = Callable[[Sequence[tuple[ModelSpec, Path]], Path], RuntimeFacts]


def parse_runtime(text: str) -> Backend | None:
    """The backend the ``runtime`` setting forces; None for ``auto``."""
    try:
        return RUNTIMES[text.strip().lower()]
    except KeyError:
        raise ConfigError(f"runtime {text!r} is unknown: use one of {', '.join(RUNTIMES)}") from None


@dataclass(frozen=True, slots=True)
class RunnerOptions:
    """How to run models: plain values (the composition root turns settings into these)."""

    runtime: Backend | None = None
    "The forced backend; None: the best available (``auto``)."
    providers: tuple[str, ...] = ()
    "ONNX Runtime providers asked for (``--providers``); empty: livefuse chooses."
    threads: int = 0
    "ONNX Runtime threads per model."
    vram_budget: int = 0
    "Bytes of GPU memory a model may use; 0: no limit."
    device_id: int = 0
    "The GPU."


def ort_config(choice: Choice, options: RunnerOptions) -> tuple[list[str], list[dict[str, str]]]:
    """The providers, in order, and each one's options for the ONNX Runtime runner of ``choice``.

    ``--providers`` wins when given; a forced ``cpu`` runtime is the CPU provider alone; otherwise
    the choice's providers. Empty lists (the automatic CPU choice): OrtRunner's own preference,
    exactly as before backends were chosen.
    """
    if options.providers:
        names = list(options.providers)
    elif options.runtime is Backend.CPU:
        names = [CPU_EP]  # forced: no GPU provider even where one is installed
    else:
        names = list(choice.ort_providers)
    return names, [_provider_options(name, choice, options) for name in names]


def _provider_options(name: str, choice: Choice, options: RunnerOptions) -> dict[str, str]:
    if name == CUDA_EP:
        return cuda_provider_options(options.device_id, options.vram_budget)
    if name == TENSORRT_EP and choice.ort_trt_cache is not None:
        return tensorrt_provider_options(choice.ort_trt_cache, options.device_id, options.vram_budget)
    return {}


def _tensorrt_runner(spec: ModelSpec, onnx_sha256: str, engines_dir: Path, options: RunnerOptions) -> Runner:
    # Imported only when chosen: the module needs TensorRT and cuda-python, which only GPU installs have.
    from livefuse.runtime.trt import TrtRunner

    # The runner finds the engine itself, as the choice did: by the installed file's hash.
    return TrtRunner(
        spec,
        engines_dir,
        onnx_sha256=onnx_sha256,
        weight_budget=options.vram_budget or None,
        device=options.device_id,
        name=spec.name,
    )


def _fix(backend: Backend, model: str, facts: RuntimeFacts) -> str:
    """What to do so that ``backend`` can run ``model`` on this machine."""
    if facts.gpus == 0:
        return "this machine shows no usable NVIDIA GPU ('livefuse doctor' says why)"
    if backend is not Backend.TENSORRT:
        return INSTALL[backend]
    build = f"build its engine on this machine: {build_command(model)}"
    if facts.tensorrt is None or facts.cuda_python is None:
        return f"{INSTALL[backend]}, then {build}"
    return build


class RunnerFactory:
    """Makes activated runners, each on the backend chosen for its model.

    The machine's facts are gathered once, at the first runner (``gather``, default
    :func:`gather_facts`); each model's engines are matched when its runner is made. Not
    thread-safe: the caller serialises (the Engine holds a lock).
    """

    def __init__(self, options: RunnerOptions, engines_dir: Path, gather: Gather | None = None) -> None:
        self.options = options
        self.engines_dir = engines_dir
        self._gather = gather
        self._facts: RuntimeFacts | None = None
        self._hashes: dict[Path, str] = {}

    def facts(self, spec: ModelSpec, onnx: Path) -> RuntimeFacts:
        """The machine's facts with ``spec``'s engines and caches (its ONNX file ``onnx``) added."""
        if self._facts is None:
            self._facts = (self._gather or gather_facts)([], self.engines_dir)
        self._facts = add_models(self._facts, [(spec, onnx)], self.engines_dir, self._sha256)
        return self._facts

    def _sha256(self, onnx: Path) -> str:
        # Matching an engine and loading it both need the hash: a big model is read once.
        if onnx not in self._hashes:
            self._hashes[onnx] = sha256_file(onnx)
        return self._hashes[onnx]

    def open(self, spec: ModelSpec, onnx: Path, onnx_sha256: str | None = None) -> Runner:
        """The activated runner of ``spec`` (ONNX file ``onnx``). Close it when done.

        ``onnx_sha256``: the file's hash where the caller already knows it (the model store
        verified it), so that matching engines does not read the file again."""
        if onnx_sha256 is not None:
            self._hashes[onnx] = onnx_sha256
        facts = self.facts(spec, onnx)
        if self.options.runtime is not None:
            return self._forced(spec, onnx, facts, self.options.runtime)
        allowed = set(_ORT_BACKENDS if self.options.providers else ORDER)
        while True:
            choice = choose(spec.name, facts, allowed, self.engines_dir)  # logs the choice and its reasons
            try:
                return self._activated(choice, spec, onnx)
            # Not importing, refusing to start (LivefuseError), or failing inside torch/TensorRT/CUDA (RuntimeError,
            # OSError for a missing library): the next backend down still runs the model.
            except (ImportError, LivefuseError, RuntimeError, OSError) as exc:
                if choice.backend is Backend.CPU:
                    raise
                log.warning(
                    "model %s: %s cannot be used (%s); trying the next backend", spec.name, choice.backend.value, exc
                )
                allowed.discard(choice.backend)

    def _forced(self, spec: ModelSpec, onnx: Path, facts: RuntimeFacts, backend: Backend) -> Runner:
        model, setting = spec.name, f"runtime {_SETTING[backend]!r} ({backend.value})"
        choice = choose(model, facts, {backend}, self.engines_dir)
        if choice.backend is not backend:
            why = dict(choice.passed_over)[backend]
            raise ConfigError(
                f"{setting} was asked for, but model {model!r} cannot run on it: {why}. "
                f"Fix: {_fix(backend, model, facts)}; or use --runtime auto"
            )
        try:
            return self._activated(choice, spec, onnx)
        except ImportError as exc:
            raise ConfigError(
                f"{setting} was asked for, but it does not import ({exc}): {INSTALL.get(backend, 'reinstall livefuse')}"
            ) from exc

    def _activated(self, choice: Choice, spec: ModelSpec, onnx: Path) -> Runner:
        runner = self._make(choice, spec, onnx)
        runner.activate()
        return runner

    def _make(self, choice: Choice, spec: ModelSpec, onnx: Path) -> Runner:
        o = self.options
        if choice.backend is Backend.TENSORRT:
            return _tensorrt_runner(spec, self._sha256(onnx), self.engines_dir, o)
        if choice.backend is Backend.TORCH_CUDA:
            return TorchRunner(
                onnx, name=choice.model, device=f"cuda:{o.device_id}", fp16=True, vram_budget=o.vram_budget
            )
        providers, provider_options = ort_config(choice, o)
        return OrtRunner(
            onnx,
            name=choice.model,
            providers=providers or None,
            threads=o.threads,
            provider_options=provider_options or None,
        )
