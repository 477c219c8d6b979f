"""Settings: defaults < config file < environment < command line.

The config file is TOML (``--config PATH``, else ``$LIVEFUSE_CONFIG``, else
``<user config dir>/livefuse/config.toml`` when it exists). Every key can also be set
as ``LIVEFUSE_<KEY>`` in the environment, e.g. ``LIVEFUSE_DETECT_EVERY=15``.

Users see one flat set of option names: ``--detect-every``, ``LIVEFUSE_DETECT_EVERY`` and
``detect_every = 15`` in the file are the same option. Inside, :class:`Settings` holds one
small frozen record per stage (``capture``, ``analysis``, ``swap``, ``output``, ``runtime``)
and each stage is handed only its own: ``--detect-every`` lands in
``settings.analysis.detect_every``. :data:`OPTIONS` is the one table from a flat name to its
record and its parser.

Typed once: every choice is a ``Literal`` declared here (the CLI offers
``typing.get_args(FaceMode)`` as argparse ``choices``), and every value, whatever its
origin, is parsed and range-checked once, in :func:`load_settings`. A bad one raises
:class:`ConfigError` naming where it came from, the value and what is allowed
(``--detect-every 0: must be an integer from 1 to 1000``); the CLI exits 2 with it. Values
are stored parsed: ``mask`` as a frozenset of mask names (``swap.masks``), ``map`` as
(reference, source) pairs (``swap.mapping``), ``size`` as (width, height), ``vram_budget``
in bytes, ``providers`` as a tuple, ``home`` as a path.

Settings are built with ``load_settings({"detect_every": 5, ...}, env={})`` (flat names, as
on the command line); a running session changes a few with :func:`with_options`. Longer than
most modules on purpose: every option's declaration, range and parser in one place.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, get_args

from livefuse._compat import tomllib
from livefuse.errors import ConfigError

FaceMode = Literal["one", "many", "map"]
"Which faces to swap: one (the largest/most central), many (all), map (per identity)."
FramePath = Literal["cpu", "gpu"]
"Where a neural swap's crop, paste-back and colour work runs."
RuntimeName = Literal["auto", "cpu", "cuda", "torch", "tensorrt"]
"What runs the models: auto (the best this machine has), cpu, cuda (ONNX Runtime), torch, tensorrt."
DetectorName = Literal["centerface", "scrfd_det_10g", "yunet_2023mar"]
"centerface is built in; the others once installed."
MaskName = Literal["occlusion", "parser", "mouth"]
"Extra masks: occlusion (XSeg), parser (BiSeNet face parts), mouth."
MaskStyle = Literal["face", "insightface"]
"The neural paste-back's mask: the face outline at full opacity, or insightface's own (parity)."
VideoCodecChoice = Literal["auto", "vp8", "h264"]
"The codec ``serve`` prefers with browsers: auto (H.264, by a hardware encoder where one opens), vp8, h264."
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]

#: The swapper built into livefuse (no weights); every other swapper is a model of the manifest.
MESH = "mesh"


@dataclass(frozen=True, slots=True)
class CaptureSettings:
    """Where frames come from and how many wait between the pipeline's threads."""

    camera: str = "0"
    "Camera index or device path (cam), or the input file/URL (run)."
    size: tuple[int, int] | None = None
    "Requested capture size (width, height) (cameras)."
    fps: float | None = None
    "Requested capture rate (cameras)."
    queue_size: int = 2
    "Capacity of each queue between the pipeline's threads."
    reconnect_for: float = 30.0
    "Seconds a dropped camera or stream is tried again before the run ends (0: end at once)."


@dataclass(frozen=True, slots=True)
class AnalysisSettings:
    """Finding and tracking faces."""

    detector: DetectorName = "centerface"
    detect_every: int = 10
    "Run the detector every N frames; in between faces are tracked."
    detect_size: int = 640
    "Detector input size, longest side (a multiple of 32, the detectors' stride)."
    detect_threshold: float = 0.5
    smooth: bool = True
    max_faces: int = 8


@dataclass(frozen=True, slots=True)
class SwapSettings:
    """Which face goes onto which people, and how."""

    source: str | None = None
    "Photo of the face to put onto people."
    swapper: str = MESH
    "'mesh' (built in, no weights) or a swapper model: inswapper_128, inswapper_128_fp16, hyperswap_1a_256."
    enhancer: str | None = None
    "A face enhancer model (gfpgan_1.4, gpen_bfr_256, gpen_bfr_512) run on swapped faces."
    enhance_every: int = 4
    "Run the enhancer every N frames per face; in between its last detail is re-warped."
    enhance_strength: float = 0.8
    masks: frozenset[MaskName] = frozenset()
    "Extra masks (option ``mask``)."
    mask_style: MaskStyle = "face"
    "Neural paste mask: face (the face outline at full opacity) or insightface (its own mask, for parity)."
    faces: FaceMode = "many"
    mapping: tuple[tuple[str, str], ...] = ()
    "map mode (option ``map``): (reference photo, source photo) pairs; faces like REF get SRC's face."
    map_threshold: float = 0.35
    "map mode: cosine similarity a face needs with a reference to be swapped."
    keep_mouth: bool = False
    opacity: float = 1.0
    shape_transfer: float | None = None
    "Mesh swapper: 0..1, how far the face's inner features take the source's proportions (unset: its default)."
    sharpness: float = 0.0
    colour: bool = True
    frame_path: FramePath = "cpu"
    "cpu, or gpu: the frame stays on an NVIDIA GPU for a neural swap."


@dataclass(frozen=True, slots=True)
class OutputSettings:
    """Where swapped frames go besides the command's own output."""

    vcam: bool = False
    vcam_device: str | None = None
    vcam_backend: str | None = None
    """pyvirtualcam backend: v4l2loopback (Linux), obs, unitycapture (Windows). Not a fixed list
    (pyvirtualcam takes registered backends): the sink checks the name when it opens."""
    preview: bool = False


@dataclass(frozen=True, slots=True)
class RuntimeSettings:
    """How models run and where they live."""

    runtime: RuntimeName = "auto"
    providers: tuple[str, ...] = ()
    "ONNX Runtime execution providers to try first."
    threads: int = 1
    "ONNX Runtime threads per model (the pipeline's stages already run in parallel); 0: ONNX Runtime's choice."
    vram_budget: int = 0
    "GPU memory each model may use, in bytes; 0: no limit."
    home: Path | None = None
    "Where models and samples live (default: $LIVEFUSE_HOME or the user cache dir)."


@dataclass(frozen=True, slots=True)
class SafeguardSettings:
    """Responsible use: content credentials on files, the live label, the audit log."""

    credentials: bool = True
    "Sign every output file with C2PA content credentials (needs the provenance extra)."
    sign_cert: Path | None = None
    "PEM certificate chain to sign with (default: a self-signed one made once in the state directory)."
    sign_key: Path | None = None
    "The private key of ``sign_cert`` (PEM, unencrypted)."
    label: str | None = None
    "Text of a visible label drawn on live output (cam, serve), e.g. AI-generated; None: no label."
    state_dir: Path | None = None
    "Where livefuse keeps its own records, the audit log and its self-signed certificate (default: the home)."
    audit_retention_days: int = 0
    "Audit records older than this many days are removed (0: kept for ever)."


@dataclass(frozen=True, slots=True)
class Settings:
    """Every option a run takes, parsed. Built once at start-up; stages get their part of it."""

    capture: CaptureSettings = field(default_factory=CaptureSettings)
    analysis: AnalysisSettings = field(default_factory=AnalysisSettings)
    swap: SwapSettings = field(default_factory=SwapSettings)
    output: OutputSettings = field(default_factory=OutputSettings)
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)
    safeguards: SafeguardSettings = field(default_factory=SafeguardSettings)
    log_level: LogLevel = "WARNING"
    "Quiet by default: warnings and errors (``-v`` for INFO; ``serve`` logs INFO, its record)."


# --------------------------------------------------------------------------- parsers
# Each parser turns a raw value (a string from the environment or the command line, or a
# TOML value) into the stored one, or raises ValueError saying what is allowed.

Parser = Callable[[Any], Any]

#: Units of a memory size: decimal (MB = 10^6 bytes) and binary (MiB = 2^20 bytes).
BYTE_UNITS = MappingProxyType(
    {
        "b": 1,
        "kb": 10**3,
        "mb": 10**6,
        "gb": 10**9,
        "tb": 10**12,
        "kib": 2**10,
        "mib": 2**20,
        "gib": 2**30,
        "tib": 2**40,
    }
)

_BYTES = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]*)", re.IGNORECASE)


def _number(value: Any, kind: type) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError
    number = kind(value.strip() if isinstance(value, str) else value)
    if kind is int and isinstance(value, float) and number != value:
        raise TypeError
    if not math.isfinite(number):
        raise TypeError
    return number


def integer(low: int, high: int) -> Parser:
    """An integer from ``low`` to ``high``."""

    def parse(value: Any) -> int:
        try:
            number = int(_number(value, int))
        except (TypeError, ValueError):
            raise ValueError(f"must be an integer from {low} to {high}") from None
        if not low <= number <= high:
            raise ValueError(f"must be an integer from {low} to {high}")
        return number

    return parse


def number(low: float, high: float, above: bool = False) -> Parser:
    """A number from ``low`` (or, ``above``, over ``low``) to ``high``."""
    allowed = f"above {low:g} and at most {high:g}" if above else f"from {low:g} to {high:g}"

    def parse(value: Any) -> float:
        try:
            number = float(_number(value, float))
        except (TypeError, ValueError):
            raise ValueError(f"must be a number {allowed}") from None
        if number < low or number > high or (above and number == low):
            raise ValueError(f"must be a number {allowed}")
        return number

    return parse


def multiple(step: int, low: int, high: int) -> Parser:
    """An integer from ``low`` to ``high`` that is a multiple of ``step``."""
    within = integer(low, high)

    def parse(value: Any) -> int:
        message = f"must be a multiple of {step} from {low} to {high}"
        try:
            number = within(value)
        except ValueError:
            raise ValueError(message) from None
        if number % step:
            raise ValueError(message)
        return number

    return parse


def choice(kind: Any) -> Parser:
    """One of a ``Literal``'s values (any letter case)."""
    allowed = get_args(kind)
    by_key = {str(v).lower(): v for v in allowed}

    def parse(value: Any) -> Any:
        if not isinstance(value, str) or value.strip().lower() not in by_key:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return by_key[value.strip().lower()]

    return parse


def optional(parse: Parser) -> Parser:
    """``parse``, with None or an empty string meaning unset (None)."""

    def parse_optional(value: Any) -> Any:
        return None if value is None or (isinstance(value, str) and not value.strip()) else parse(value)

    return parse_optional


_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError("must be true or false (or 1/0, yes/no, on/off)")


def text(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError("must be text")
    return str(value).strip()


def _items(value: Any) -> list[str]:
    """A comma-separated string or a list of strings, as its non-empty items."""
    parts = value.split(",") if isinstance(value, str) else value
    if not isinstance(parts, (list, tuple)) or not all(isinstance(p, str) for p in parts):
        raise ValueError("must be a comma-separated list")
    return [item.strip() for part in parts for item in part.split(",") if item.strip()]


def masks(value: Any) -> frozenset[MaskName]:
    names = set(_items(value))
    unknown = names - set(get_args(MaskName))
    if unknown:
        raise ValueError(f"unknown mask(s) {', '.join(sorted(unknown))}: use {', '.join(get_args(MaskName))}")
    return frozenset(names)  # type: ignore[arg-type]


def mapping(value: Any) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in _items(value):
        ref, sep, src = item.partition("=")
        if not sep or not ref.strip() or not src.strip():
            raise ValueError(f"map entry {item!r} is not REF.jpg=SRC.jpg")
        pairs.append((ref.strip(), src.strip()))
    return tuple(pairs)


def providers(value: Any) -> tuple[str, ...]:
    return tuple(_items(value))


def size(value: Any) -> tuple[int, int]:
    """'1280x720' → (1280, 720)."""
    message = "must be WIDTHxHEIGHT, both positive and even, e.g. 1280x720"
    try:
        w, h = (int(v) for v in text(value).lower().split("x"))
    except ValueError:
        raise ValueError(message) from None
    if w <= 0 or h <= 0 or w % 2 or h % 2:
        raise ValueError(message)
    return w, h


def memory(value: Any) -> int:
    """'6GiB' → 6442450944, '6000MB' → 6000000000, '0' → 0. A unit is required except for 0."""
    found = _BYTES.fullmatch(text(value))
    unit = found[2].lower() if found else ""
    zero = found is not None and float(found[1]) == 0
    if found is None or not (unit in BYTE_UNITS or (unit == "" and zero)):
        raise ValueError("is not a memory size: write a number and a unit, e.g. 6GiB or 6000MB (0: no limit)")
    size = int(float(found[1]) * BYTE_UNITS.get(unit, 1))
    if size == 0 and not zero:
        raise ValueError("rounds to 0 bytes, which means no limit; write e.g. 6GiB, or 0 for none")
    return size


def directory(value: Any) -> Path:
    return Path(text(value)).expanduser()


# --------------------------------------------------------------------------- the options


@dataclass(frozen=True, slots=True)
class Option:
    """Where a flat option lives in :class:`Settings` and how its value is parsed."""

    section: str
    "The sub-record (``analysis``, …); empty for a field of ``Settings`` itself."
    attribute: str
    parse: Parser


def _options(section: str, **parsers: Parser | tuple[str, Parser]) -> dict[str, Option]:
    return {
        name: Option(section, *p) if isinstance(p, tuple) else Option(section, name, p) for name, p in parsers.items()
    }


#: Every option by its flat name (CLI ``--detect-every``, ``LIVEFUSE_DETECT_EVERY``, ``detect_every``).
OPTIONS: Mapping[str, Option] = MappingProxyType(
    {
        **_options(
            "capture",
            camera=text,
            size=("size", optional(size)),
            fps=number(0, 1000, above=True),
            queue_size=integer(1, 64),
            reconnect_for=number(0, 86400),
        ),
        **_options(
            "analysis",
            detector=choice(DetectorName),
            detect_every=integer(1, 1000),
            detect_size=multiple(32, 32, 4096),
            detect_threshold=number(0, 1, above=True),
            smooth=boolean,
            max_faces=integer(1, 64),
        ),
        **_options(
            "swap",
            source=optional(text),
            swapper=text,
            enhancer=optional(text),
            enhance_every=integer(1, 1000),
            enhance_strength=number(0, 1),
            mask=("masks", masks),
            mask_style=choice(MaskStyle),
            faces=choice(FaceMode),
            map=("mapping", mapping),
            map_threshold=number(-1, 1),
            keep_mouth=boolean,
            opacity=number(0, 1),
            shape_transfer=optional(number(0, 1)),
            sharpness=number(0, 4),
            colour=boolean,
            frame_path=choice(FramePath),
        ),
        **_options(
            "output",
            vcam=boolean,
            vcam_device=optional(text),
            vcam_backend=optional(text),
            preview=boolean,
        ),
        **_options(
            "runtime",
            runtime=choice(RuntimeName),
            providers=providers,
            threads=integer(0, 256),
            vram_budget=memory,
            home=optional(directory),
        ),
        **_options(
            "safeguards",
            credentials=boolean,
            sign_cert=optional(directory),
            sign_key=optional(directory),
            label=optional(text),
            state_dir=optional(directory),
            audit_retention_days=integer(0, 100_000),
        ),
        **_options("", log_level=choice(LogLevel)),
    }
)


# --------------------------------------------------------------------------- loading

#: How an origin names one of its values in an error: (option, raw value) → words.
Where = Callable[[str, Any], str]


def _shown(value: Any) -> str:
    """A value as typed on a command line (quoted when it is empty or has spaces)."""
    if isinstance(value, (list, tuple)):
        value = ",".join(map(str, value))
    if isinstance(value, str):
        return value if value and not any(c.isspace() for c in value) else repr(value)
    return repr(value)


def on_command_line(name: str, value: Any) -> str:
    return f"--{name.replace('_', '-')} {_shown(value)}"


def in_environment(name: str, value: Any) -> str:
    return f"LIVEFUSE_{name.upper()}={_shown(value)}"


def in_file(path: Path) -> Where:
    """As the TOML file has it: ``detect_every = "often"``."""
    return lambda name, value: f"config file {path}: {name} = {json.dumps(value, default=str)}"


def in_request(name: str, value: Any) -> str:
    return f"{name} {_shown(value)}"


def _parse(name: str, value: Any, where: Where) -> Any:
    try:
        return OPTIONS[name].parse(value)
    except ValueError as exc:
        raise ConfigError(f"{where(name, value)}: {exc}") from None


def _build(settings: Settings, parsed: Mapping[str, Any]) -> Settings:
    """``settings`` with the parsed option values put into their records."""
    sections: dict[str, dict[str, Any]] = {}
    for name, value in parsed.items():
        option = OPTIONS[name]
        sections.setdefault(option.section, {})[option.attribute] = value
    top = sections.pop("", {})
    records = {s: replace(getattr(settings, s), **values) for s, values in sections.items()}
    return replace(settings, **records, **top)


def with_options(settings: Settings, values: Mapping[str, Any], where: Where = in_request) -> Settings:
    """``settings`` with some options (flat names) changed, each parsed and checked."""
    _known(values, "options")
    return _build(settings, {name: _parse(name, value, where) for name, value in values.items()})


def _known(values: Mapping[str, Any], origin: str) -> None:
    unknown = sorted(set(values) - set(OPTIONS))
    if unknown:
        raise ConfigError(f"{origin}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(OPTIONS))}")


def default_config_path(env: Mapping[str, str]) -> Path:
    """Where the config file is looked for when none is named."""
    if "LIVEFUSE_CONFIG" in env:
        return Path(env["LIVEFUSE_CONFIG"])
    if sys.platform == "win32":
        base = Path(env.get("APPDATA", Path.home() / "AppData" / "Roaming"))
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(env.get("XDG_CONFIG_HOME", Path.home() / ".config"))
    return base / "livefuse" / "config.toml"


def load_settings(cli: Mapping[str, Any], env: Mapping[str, str] | None = None, config: Path | None = None) -> Settings:
    """Merge the layers and parse each value once. ``cli`` holds only options given on the
    command line (flat names). A bad value raises :class:`ConfigError` naming its origin."""
    env = os.environ if env is None else env
    given: dict[str, tuple[Any, Where]] = {}
    path = config or default_config_path(env)
    if config is not None or path.is_file():
        values = _read_toml(path)
        _known(values, f"config file {path}")
        given.update((k, (v, in_file(path))) for k, v in values.items())
    prefixed = {k[9:].lower(): v for k, v in env.items() if k.startswith("LIVEFUSE_")}
    given.update((k, (v, in_environment)) for k, v in prefixed.items() if k in OPTIONS)
    line = {k: v for k, v in cli.items() if v is not None}
    _known(line, "command line")
    given.update((k, (v, on_command_line)) for k, v in line.items())
    settings = _build(Settings(), {name: _parse(name, value, where) for name, (value, where) in given.items()})
    check_swap(settings.swap)
    return settings


def check_swap(swap: SwapSettings) -> None:
    """Refuse options the chosen swapper cannot use (rather than ignore them silently)."""
    if swap.swapper != MESH:
        if swap.shape_transfer is not None:
            raise ConfigError(
                f"--shape-transfer applies to the mesh swapper only, not {swap.swapper}: "
                "leave it out or use --swapper mesh"
            )
        return
    unused = [
        name
        for name, on in (
            ("--enhancer", swap.enhancer),
            ("--mask " + ",".join(sorted(swap.masks - {"mouth"})), swap.masks - {"mouth"}),
            ("--sharpness", swap.sharpness > 0),
            ("--frame-path gpu", swap.frame_path == "gpu"),
        )
        if on
    ]
    if unused:
        raise ConfigError(
            f"the mesh swapper cannot use {', '.join(unused)}: choose a neural swapper "
            "(e.g. --swapper inswapper_128) or leave them out"
        )


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory: name a TOML file") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not a TOML file (not UTF-8 text)") from None
    return {k.replace("-", "_"): v for k, v in data.items()}
