"""Settings: defaults < config file < environment < command line.

The config file is TOML (``--config PATH``, else ``$LIVEFUSE_CONFIG``, else
``<user config dir>/livefuse/config.toml`` when it exists). Every key can also be set
as ``LIVEFUSE_<KEY>`` in the environment, e.g. ``LIVEFUSE_DETECT_EVERY=15``.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from livefuse._compat import tomllib
from livefuse.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Settings:
    """Every option a run takes. Built once at start-up; stages get their part of it."""

    source: str | None = None
    "Photo of the face to put onto people."
    camera: str = "0"
    "Camera index or device path (cam), or the input file/URL (run)."
    size: str | None = None
    "Requested capture size WIDTHxHEIGHT (cameras)."
    fps: float | None = None
    "Requested capture rate (cameras)."
    vcam: bool = False
    vcam_device: str | None = None
    vcam_backend: str | None = None
    "pyvirtualcam backend: v4l2loopback (Linux), obs, unitycapture (Windows)."
    preview: bool = False
    swapper: str = "mesh"
    "'mesh' (built in, no weights) or a swapper model: inswapper_128, inswapper_128_fp16, hyperswap_1a_256."
    enhancer: str | None = None
    "A face enhancer model (gfpgan_1.4, gpen_bfr_256, gpen_bfr_512) run on swapped faces."
    enhance_every: int = 4
    "Run the enhancer every N frames per face; in between its last detail is re-warped."
    enhance_strength: float = 0.8
    mask: str = ""
    "Comma-separated extra masks: occlusion (XSeg), parser (BiSeNet face parts), mouth."
    faces: str = "many"
    "Which faces to swap: one (the largest/most central), many (all), map (per identity)."
    map: str | None = None
    "map mode: comma-separated REF.jpg=SRC.jpg pairs (faces like REF get SRC's face)."
    map_threshold: float = 0.35
    "map mode: cosine similarity a face needs with a reference to be swapped."
    keep_mouth: bool = False
    opacity: float = 1.0
    sharpness: float = 0.0
    colour: bool = True
    detector: str = "centerface"
    "Face detector: centerface (built in), or scrfd_det_10g / yunet_2023mar if installed."
    detect_every: int = 10
    detect_size: int = 640
    detect_threshold: float = 0.5
    smooth: bool = True
    max_faces: int = 8
    threads: int = 1
    "ONNX Runtime threads per model (the pipeline's stages already run in parallel)."
    queue_size: int = 2
    providers: str | None = None
    "Comma-separated ONNX Runtime execution providers to try first."
    frame_path: str = "cpu"
    "Where a neural swap's crop, paste-back and colour work runs: cpu, or gpu (the frame stays on an NVIDIA GPU)."
    runtime: str = "auto"
    "What runs the models: auto (the best this machine has), cpu, cuda (ONNX Runtime), torch or tensorrt."
    vram_budget: str | None = None
    "GPU memory each model may use, e.g. 6GiB or 6000MB; 0 or unset: no limit."
    home: str | None = None
    "Where models and samples live (default: $LIVEFUSE_HOME or the user cache dir)."
    log_level: str = "WARNING"
    reconnect_for: float = 30.0
    "Seconds a dropped camera or stream is tried again before the run ends (0: end at once)."

    @property
    def masks(self) -> set[str]:
        """The extra masks asked for, validated."""
        names = {m.strip() for m in self.mask.split(",") if m.strip()}
        unknown = names - {"occlusion", "parser", "mouth"}
        if unknown:
            raise ConfigError(f"unknown mask(s) {', '.join(sorted(unknown))}: use occlusion, parser, mouth")
        return names

    @property
    def mapping(self) -> list[tuple[str, str]]:
        """``map`` as (reference photo, source photo) pairs."""
        pairs = []
        for item in (self.map or "").split(","):
            if not item.strip():
                continue
            ref, sep, src = item.partition("=")
            if not sep or not ref.strip() or not src.strip():
                raise ConfigError(f"map entry {item!r} is not REF.jpg=SRC.jpg")
            pairs.append((ref.strip(), src.strip()))
        return pairs

    @property
    def capture_size(self) -> tuple[int, int] | None:
        """``size`` as (width, height)."""
        return parse_size(self.size) if self.size else None

    @property
    def vram_budget_bytes(self) -> int:
        """``vram_budget`` in bytes; 0 means no limit."""
        return parse_bytes(self.vram_budget, "vram_budget") if self.vram_budget else 0


def parse_size(text: str) -> tuple[int, int]:
    """'1280x720' → (1280, 720), with an error that shows the expected form."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"size {text!r} is not WIDTHxHEIGHT, e.g. 1280x720") from None
    if w <= 0 or h <= 0 or w % 2 or h % 2:
        raise ConfigError(f"size {text!r} must be positive and even, e.g. 1280x720")
    return w, h


#: Units of a memory size: decimal (MB = 10^6 bytes) and binary (MiB = 2^20 bytes).
BYTE_UNITS = MappingProxyType({
    "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
})

_BYTES = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]*)", re.IGNORECASE)


def parse_bytes(text: str, what: str = "size") -> int:
    """'6GiB' → 6442450944, '6000MB' → 6000000000, '0' → 0. A unit is required except for 0."""
    found = _BYTES.fullmatch(text.strip())
    unit = found[2].lower() if found else ""
    zero = found is not None and float(found[1]) == 0
    if found is None or not (unit in BYTE_UNITS or (unit == "" and zero)):
        raise ConfigError(
            f"{what} {text!r} is not a memory size: write a number and a unit, e.g. 6GiB or 6000MB (0: no limit)"
        )
    size = int(float(found[1]) * BYTE_UNITS.get(unit, 1))
    if size == 0 and not zero:
        raise ConfigError(f"{what} {text!r} rounds to 0 bytes, which means no limit; write e.g. 6GiB, or 0 for none")
    return size


def _coerce(name: str, kind: str, value: Any, origin: str) -> Any:
    """Convert ``value`` to the type a field declares (env vars arrive as strings)."""
    if value is None:
        return None
    try:
        if "bool" in kind:
            if isinstance(value, str):
                if value.lower() not in {"1", "0", "true", "false", "yes", "no", "on", "off"}:
                    raise ValueError(value)
                return value.lower() in {"1", "true", "yes", "on"}
            return bool(value)
        if "int" in kind:
            return int(value)
        if "float" in kind:
            return float(value)
        return str(value)
    except ValueError:
        raise ConfigError(f"{origin}: {name} = {value!r} is not a valid {kind.split(' ')[0]}") from None


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


def load_settings(
    cli: Mapping[str, Any], env: Mapping[str, str] | None = None, config: Path | None = None
) -> Settings:
    """Merge the layers. ``cli`` holds only options given on the command line."""
    env = os.environ if env is None else env
    kinds = {f.name: str(f.type) for f in fields(Settings)}
    settings = Settings()
    path = config or default_config_path(env)
    if config is not None or path.is_file():
        settings = _apply(settings, kinds, _read_toml(path), str(path))
    prefixed = {k[9:].lower(): v for k, v in env.items() if k.startswith("LIVEFUSE_")}
    env_values = {k: v for k, v in prefixed.items() if k in kinds}
    settings = _apply(settings, kinds, env_values, "environment")
    return _apply(settings, kinds, {k: v for k, v in cli.items() if v is not None}, "command line")


def _apply(settings: Settings, kinds: Mapping[str, str], values: Mapping[str, Any], origin: str) -> Settings:
    unknown = sorted(set(values) - set(kinds))
    if unknown:
        raise ConfigError(f"{origin}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(kinds))}")
    return replace(settings, **{k: _coerce(k, kinds[k], v, origin) for k, v in values.items()})


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    return {k.replace("-", "_"): v for k, v in data.items()}
