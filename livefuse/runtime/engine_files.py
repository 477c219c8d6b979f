"""Prebuilt TensorRT engines: their file names, their JSON records, and the rules that refuse
an engine that does not fit this machine.

A TensorRT engine is only valid for the exact ONNX file, TensorRT version and GPU architecture
(compute capability) it was built for, so all three are in its name::

    engines/<model>-<onnx sha256[:12]>-trt<version>-sm<major><minor>-fp16.engine

and, next to it, ``<same stem>.json`` records what was built (see :class:`EngineRecord`).
:func:`find_engine` returns the engine that fits or raises :class:`EngineMismatch` naming what
differs and the build command. Building takes minutes, so the live path never rebuilds: only
``scripts/build_engines.py`` writes engines (through :func:`save_engine`).

Nothing here imports TensorRT: the rules run, and are tested, on machines without a GPU.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from livefuse.errors import EngineMismatch
from livefuse.models.files import atomic_write, short
from livefuse.models.manifest import ModelSpec

#: Engine files end with this; their records with :data:`RECORD_SUFFIX`.
ENGINE_SUFFIX = ".engine"
RECORD_SUFFIX = ".json"

#: Version of the JSON record layout; records of another schema are refused (rebuild them).
RECORD_SCHEMA = 1

#: The only precision engines are built in today (layers listed in the record may stay FP32).
PRECISION = "fp16"

#: The command that (re)builds the engine of one model, on the machine that will run it.
BUILD_COMMAND = "python scripts/build_engines.py --model {model}"

#: Major and minor compute capability, e.g. ``(9, 0)`` for an H100.
ComputeCapability = tuple[int, int]

_VERSION = re.compile(r"\d+(\.\d+)*")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def default_engines_dir(home: Path) -> Path:
    """Where engines live by default: ``home/engines`` (next to ``home/models``)."""
    return Path(home) / "engines"


def build_command(model: str) -> str:
    """The shell command that builds the engine of ``model``."""
    return BUILD_COMMAND.format(model=model)


def sm_tag(cc: ComputeCapability) -> str:
    """``(8, 9)`` → ``"sm89"``: the GPU architecture part of an engine name."""
    major, minor = cc
    if major < 1 or not 0 <= minor <= 9:
        raise ValueError(f"compute capability must be (major >= 1, minor 0..9), got {cc!r}")
    return f"sm{major}{minor}"


def parse_cc(text: str) -> ComputeCapability:
    """``"8.9"`` → ``(8, 9)``, as nvidia-smi and the JSON records write it."""
    match = re.fullmatch(r"(\d+)\.(\d)", text.strip())
    if match is None:
        raise ValueError(f"compute capability must look like '8.9', got {text!r}")
    return int(match[1]), int(match[2])


def cc_text(cc: ComputeCapability) -> str:
    """``(8, 9)`` → ``"8.9"``."""
    return f"{cc[0]}.{cc[1]}"


def _check_version(trt_version: str) -> str:
    if not _VERSION.fullmatch(trt_version):
        raise ValueError(f"TensorRT version must be dotted digits like '10.3.0', got {trt_version!r}")
    return trt_version


@dataclass(frozen=True, slots=True)
class EngineKey:
    """What an engine must have been built for to run here."""

    model: str
    onnx_sha256: str
    trt_version: str
    cc: ComputeCapability
    precision: str = PRECISION

    @property
    def stem(self) -> str:
        """The engine's file name without suffix."""
        if not _SHA256.fullmatch(self.onnx_sha256):
            raise ValueError(f"onnx_sha256 must be 64 lowercase hex digits, got {self.onnx_sha256!r}")
        version = _check_version(self.trt_version)
        return f"{self.model}-{self.onnx_sha256[:12]}-trt{version}-{sm_tag(self.cc)}-{self.precision}"

    def engine_path(self, engines_dir: Path) -> Path:
        """``engines_dir/<stem>.engine``."""
        return Path(engines_dir) / (self.stem + ENGINE_SUFFIX)


def record_path(engine: Path) -> Path:
    """The JSON record that sits next to ``engine``."""
    return engine.with_suffix(RECORD_SUFFIX)


# --------------------------------------------------------------------------- the record


@dataclass(frozen=True, slots=True)
class InputProfile:
    """One input's optimisation profile: the smallest, tuned-for and largest shape.

    Dim 0 is the batch (faces per call): ``min[0]..max[0]`` is the range the engine accepts.
    """

    name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def check(self) -> None:
        """Raise ``ValueError`` unless ``1 <= min <= opt <= max`` dim by dim, with equal ranks."""
        if not (len(self.min) == len(self.opt) == len(self.max)) or not self.min:
            raise ValueError(f"profile of {self.name!r}: min/opt/max must have the same, non-zero rank")
        for lo, mid, hi in zip(self.min, self.opt, self.max, strict=True):
            if not 1 <= lo <= mid <= hi:
                raise ValueError(f"profile of {self.name!r}: need 1 <= min <= opt <= max, got {self}")


@dataclass(frozen=True, slots=True)
class EngineTensor:
    """One input or output of the built engine; -1 marks a dim the profile varies."""

    name: str
    is_input: bool
    dtype: str
    "numpy dtype name, e.g. ``float32`` (engines keep float32 I/O; FP16 is inside)."
    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class EngineRecord:
    """What was built: written as JSON next to the engine by the build script."""

    model: str
    onnx_sha256: str
    trt_version: str
    cc: ComputeCapability
    precision: str
    profiles: tuple[InputProfile, ...]
    tensors: tuple[EngineTensor, ...]
    layer_precisions: tuple[tuple[str, str], ...]
    "(layer name, precision) overrides, e.g. the inswapper instance-norm chain kept in fp32."
    optimization_level: int
    "TensorRT builder optimisation level (0..5)."
    workspace_bytes: int
    build_seconds: float
    built_at: str
    "ISO 8601 time of the build, UTC."
    gpu_name: str = ""
    engine_bytes: int = 0
    "Size of the engine file; :func:`save_engine` fills it in."
    engine_sha256: str = ""
    "sha256 of the engine file; :func:`save_engine` fills it in, :func:`read_engine` checks it."
    weight_streaming: bool = False
    "Built with streamable weights (a strongly typed network: its types are the ONNX file's)."

    @property
    def key(self) -> EngineKey:
        """The ONNX file, TensorRT version, GPU and precision this engine was built for."""
        return EngineKey(self.model, self.onnx_sha256, self.trt_version, self.cc, self.precision)

    @property
    def max_batch(self) -> int:
        """The most faces one call may carry (the smallest ``max[0]`` over the profiles)."""
        return min((p.max[0] for p in self.profiles), default=1)

    def to_json(self) -> str:
        """The record as JSON text (what :meth:`from_json` reads back to an equal record)."""
        data = dataclasses.asdict(self)
        data["cc"] = cc_text(self.cc)
        data["layer_precisions"] = dict(self.layer_precisions)
        return json.dumps({"schema": RECORD_SCHEMA, **data}, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> EngineRecord:
        """Parse and check a record. Raises ``ValueError`` (or ``KeyError``/``TypeError``) when
        it is malformed or of another schema."""
        data = json.loads(text)
        if not isinstance(data, dict) or data.pop("schema", None) != RECORD_SCHEMA:
            raise ValueError(f"not a schema-{RECORD_SCHEMA} engine record")
        record = cls(
            model=str(data["model"]),
            onnx_sha256=str(data["onnx_sha256"]),
            trt_version=_check_version(str(data["trt_version"])),
            cc=parse_cc(str(data["cc"])),
            precision=str(data["precision"]),
            profiles=tuple(_profile(p) for p in data["profiles"]),
            tensors=tuple(_tensor(t) for t in data["tensors"]),
            layer_precisions=tuple((str(k), str(v)) for k, v in dict(data["layer_precisions"]).items()),
            optimization_level=int(data["optimization_level"]),
            workspace_bytes=int(data["workspace_bytes"]),
            build_seconds=float(data["build_seconds"]),
            built_at=str(data["built_at"]),
            gpu_name=str(data.get("gpu_name", "")),
            engine_bytes=int(data.get("engine_bytes", 0)),
            engine_sha256=str(data.get("engine_sha256", "")),
            weight_streaming=bool(data.get("weight_streaming", False)),
        )
        record.check()
        return record

    def check(self) -> None:
        """Raise ``ValueError`` when a field is out of range."""
        self.key.stem  # noqa: B018 - validates the sha256, version and compute capability
        for profile in self.profiles:
            profile.check()
        if not 0 <= self.optimization_level <= 5 or self.workspace_bytes < 0 or self.engine_bytes < 0:
            raise ValueError("optimization_level must be 0..5 and sizes must not be negative")
        if self.engine_sha256 and not _SHA256.fullmatch(self.engine_sha256):
            raise ValueError("engine_sha256 must be 64 lowercase hex digits")


def _ints(raw: Sequence[Any]) -> tuple[int, ...]:
    return tuple(int(v) for v in raw)


def _profile(raw: Mapping[str, Any]) -> InputProfile:
    return InputProfile(str(raw["name"]), _ints(raw["min"]), _ints(raw["opt"]), _ints(raw["max"]))


def _tensor(raw: Mapping[str, Any]) -> EngineTensor:
    return EngineTensor(str(raw["name"]), bool(raw["is_input"]), str(raw["dtype"]), _ints(raw["shape"]))


def batch_profiles(
    inputs: Sequence[tuple[str, Sequence[int]]], max_batch: int, opt_batch: int = 1
) -> tuple[InputProfile, ...]:
    """Profiles for a batch of ``1..max_batch`` faces: dim 0 varies, the other dims are fixed.

    ``inputs`` are ``(name, shape)`` with the shape of one face (its batch dim is replaced).
    """
    if not 1 <= opt_batch <= max_batch:
        raise ValueError(f"need 1 <= opt_batch <= max_batch, got {opt_batch} and {max_batch}")
    return tuple(
        InputProfile(name, (1, *shape[1:]), (opt_batch, *shape[1:]), (max_batch, *shape[1:])) for name, shape in inputs
    )


# --------------------------------------------------------------------------- saving and finding


@dataclass(frozen=True, slots=True)
class EngineMatch:
    """An engine that fits this machine: its file and its record."""

    path: Path
    record: EngineRecord


def save_engine(engines_dir: Path, data: bytes | memoryview, record: EngineRecord) -> EngineMatch:
    """Write an engine and its record (engine first, each atomically) and return them.

    The record gets the engine's size and sha256. It is written last, so a crash mid-way
    leaves no record and :func:`find_engine` refuses the orphan engine.
    """
    blob = bytes(data)
    record = dataclasses.replace(record, engine_bytes=len(blob), engine_sha256=hashlib.sha256(blob).hexdigest())
    record.check()
    path = record.key.engine_path(engines_dir)
    atomic_write(path, blob)
    atomic_write(record_path(path), record.to_json().encode("utf-8"))
    return EngineMatch(path, record)


def read_record(engine: Path) -> EngineRecord:
    """The record next to ``engine``. Raises :class:`EngineMismatch` when it is missing or bad."""
    path = record_path(engine)
    try:
        return EngineRecord.from_json(path.read_text("utf-8"))
    except FileNotFoundError:
        problem = f"{path.name} (the record of what was built) is missing"
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        problem = f"its record {path.name} is unreadable ({type(exc).__name__}: {exc})"
    model = engine.name.split("-", 1)[0]
    raise EngineMismatch(f"engine {engine} cannot be trusted: {problem}; rebuild it: {build_command(model)}")


def differences(record: EngineRecord, want: EngineKey) -> list[str]:
    """What makes ``record``'s engine unusable for ``want``, in words (empty when it fits)."""
    out = []
    if record.model != want.model:
        out.append(f"it was built for model {record.model!r}, not {want.model!r}")
    if record.onnx_sha256 != want.onnx_sha256:
        out.append(
            f"the ONNX file changed: the engine was built from sha256 {short(record.onnx_sha256)}, "
            f"the installed file is {short(want.onnx_sha256)}"
        )
    if record.trt_version != want.trt_version:
        out.append(
            f"other TensorRT: built with TensorRT {record.trt_version}, this machine has {want.trt_version} "
            "(engines only load in the TensorRT version that built them)"
        )
    if record.cc != want.cc:
        gpu = f" ({record.gpu_name})" if record.gpu_name else ""
        out.append(
            f"other GPU: built for compute capability {cc_text(record.cc)}{gpu}, this GPU is "
            f"{cc_text(want.cc)} (engines only run on the GPU architecture that built them)"
        )
    if record.precision != want.precision:
        out.append(f"built in {record.precision}, {want.precision} is wanted")
    return out


def _file_problems(match: EngineMatch, batch: int) -> list[str]:
    size = match.path.stat().st_size
    out = []
    if match.record.engine_bytes and size != match.record.engine_bytes:
        out.append(
            f"the engine file is truncated or was modified ({size} bytes, its record says {match.record.engine_bytes})"
        )
    if batch > match.record.max_batch:
        out.append(
            f"it takes at most {match.record.max_batch} faces per call, {batch} are needed "
            f"(build it with a larger --max-batch)"
        )
    return out


def _mismatch(want: EngineKey, engine: Path, problems: Sequence[str]) -> EngineMismatch:
    return EngineMismatch(
        f"the TensorRT engine {engine.name} of model {want.model!r} does not fit this machine: "
        f"{'; '.join(problems)}. The live path never rebuilds engines: run "
        f"'{build_command(want.model)}' on this machine"
    )


def _others(engines_dir: Path, want: EngineKey) -> list[EngineMatch]:
    """Readable engines of ``want.model`` in ``engines_dir`` (unreadable records are skipped)."""
    found = []
    for engine in sorted(Path(engines_dir).glob(f"{want.model}-*{ENGINE_SUFFIX}")):
        try:
            record = read_record(engine)
        except EngineMismatch:
            continue
        if record.model == want.model:
            found.append(EngineMatch(engine, record))
    return sorted(found, key=lambda m: m.record.built_at, reverse=True)


def _no_exact_match(engines_dir: Path, want: EngineKey) -> EngineMismatch:
    others = _others(engines_dir, want)
    if not others:
        return EngineMismatch(
            f"there is no TensorRT engine for model {want.model!r} in {engines_dir} (looked for "
            f"{want.stem}{ENGINE_SUFFIX}); build it once on this machine: {build_command(want.model)}"
        )
    newest = others[0]  # the one the user most likely meant
    return _mismatch(want, newest.path, differences(newest.record, want) or ["its name does not match"])


def find_engine(
    model_spec: ModelSpec,
    trt_version: str,
    cc: ComputeCapability,
    engines_dir: Path,
    *,
    onnx_sha256: str | None = None,
    batch: int = 1,
) -> EngineMatch:
    """The engine of ``model_spec`` built for this TensorRT version and GPU.

    ``onnx_sha256`` is the installed ONNX file's hash (default: the manifest's pin). Raises
    :class:`EngineMismatch` saying what differs (ONNX changed, other TensorRT, other GPU, too
    small a batch profile, truncated file, missing record) and how to rebuild. Cheap: the
    engine's sha256 is checked by :func:`read_engine`, which reads the file anyway.
    """
    sha = onnx_sha256 or model_spec.sha256
    if not sha:
        raise EngineMismatch(
            f"model {model_spec.name!r} pins no sha256 in the manifest, so its engine cannot be matched; "
            "pass the installed file's sha256 (livefuse.models.store.sha256_file)"
        )
    want = EngineKey(model_spec.name, sha, trt_version, cc)
    path = want.engine_path(engines_dir)
    if not path.is_file():
        raise _no_exact_match(Path(engines_dir), want)
    match = EngineMatch(path, read_record(path))
    problems = differences(match.record, want) + _file_problems(match, batch)
    if problems:
        raise _mismatch(want, path, problems)
    return match


def read_engine(match: EngineMatch) -> bytes:
    """The engine's bytes, checked against the sha256 in its record."""
    data = match.path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if match.record.engine_sha256 and digest != match.record.engine_sha256:
        raise _mismatch(
            match.record.key,
            match.path,
            [
                f"the engine file is corrupt or was modified (sha256 {short(digest)}, its record says "
                f"{short(match.record.engine_sha256)})"
            ],
        )
    return data
