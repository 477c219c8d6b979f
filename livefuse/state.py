"""Where livefuse keeps its own records (the audit log, its self-signed signing certificate)."""

from __future__ import annotations

from pathlib import Path

from livefuse.config import Settings
from livefuse.models.files import default_home


def state_dir(settings: Settings) -> Path:
    """The settings' ``state_dir``, else the models-and-samples home."""
    chosen = settings.safeguards.state_dir or settings.runtime.home
    return Path(chosen).expanduser() if chosen else default_home()
