"""Job options: JSON with the CLI's option names, checked through the settings loader.

``job_settings`` is the one place that turns a job's options into ``Settings``.
"""

from __future__ import annotations

from typing import Any

from livefuse.config import Settings, check_swap, with_options
from livefuse.errors import ConfigError

#: What a job may change: how the swap looks and how often faces are looked for. Paths on the
#: server (source, map, home), the detector, devices and runtimes stay the operator's: the
#: warm models are shared by every job.
JOB_OPTIONS = frozenset(
    {
        "swapper",
        "enhancer",
        "enhance_every",
        "enhance_strength",
        "mask",
        "faces",
        "map_threshold",
        "sharpness",
        "keep_mouth",
        "opacity",
        "shape_transfer",
        "colour",
        "detect_every",
        "max_faces",
        "smooth",
    }
)
#: The CLI's negative flags, as options: {"no_colour": true} is {"colour": false}.
_NEGATED = {"no_colour": "colour", "no_smooth": "smooth"}


def normalise_options(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with CLI spellings (``keep-mouth``, ``no-colour``) turned into settings keys;
    a ``ConfigError`` names an option a job cannot set."""
    out: dict[str, Any] = {}
    for raw, value in options.items():
        key = str(raw).strip().lstrip("-").replace("-", "_")
        if key in _NEGATED:
            key, value = _NEGATED[key], not _truthy(value)
        if key not in JOB_OPTIONS:
            raise ConfigError(f"job option {raw!r} is not one a job can set; use {', '.join(sorted(JOB_OPTIONS))}")
        if key == "faces" and value == "map":
            raise ConfigError("job option faces=map needs reference photos on the server; use one or many")
        out[key] = value
    return out


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes", "on"}
    return bool(value)


def job_settings(base: Settings, options: dict[str, Any]) -> Settings:
    """The settings a job runs with: the server's, with the job's options on top, checked by
    the settings loader (types, names) and the checks the values carry (masks)."""
    settings = with_options(base, normalise_options(options))
    check_swap(settings.swap)
    return settings
