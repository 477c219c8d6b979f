"""livefuse: real-time face swap for live video.

The public API, for using livefuse as a library::

    import cv2
    from pathlib import Path
    from livefuse import Engine, Frame, load_settings

    with Engine(load_settings({})) as engine:
        tracker, swapper = engine.tracker(), engine.swapper(Path("face.jpg"))
        image = cv2.imread("people.jpg")
        swapper.swap(image, tracker.analyze(Frame.of(image)))  # in place, face regions only

Names are imported on first use, so ``import livefuse`` stays cheap and ``livefuse.errors``
and friends can be imported without loading the models' runtimes.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Each public name and the module that defines it.
_EXPORTS = {
    "Engine": "livefuse.app",
    "Settings": "livefuse.config",
    "load_settings": "livefuse.config",
    "Frame": "livefuse.frame",
    "Faces": "livefuse.faces",
    "Pipeline": "livefuse.pipeline.pipeline",
    "RunStats": "livefuse.pipeline.metrics",
    "Source": "livefuse.pipeline.stages",
    "SourceInfo": "livefuse.pipeline.stages",
    "Analyzer": "livefuse.pipeline.stages",
    "Swapper": "livefuse.pipeline.stages",
    "Sink": "livefuse.pipeline.stages",
    "open_source": "livefuse.io.sources",
    "VideoFileSink": "livefuse.io.sinks",
    "ModelStore": "livefuse.models.store",
    "ModelInstaller": "livefuse.models.install",
    "LivefuseError": "livefuse.errors",
    "ConfigError": "livefuse.errors",
    "ModelError": "livefuse.errors",
    "SourceError": "livefuse.errors",
    "NoFaceError": "livefuse.errors",
    "OutputError": "livefuse.errors",
    "StreamEnded": "livefuse.errors",
}

__all__ = [
    "Analyzer",
    "ConfigError",
    "Engine",
    "Faces",
    "Frame",
    "LivefuseError",
    "ModelError",
    "ModelInstaller",
    "ModelStore",
    "NoFaceError",
    "OutputError",
    "Pipeline",
    "RunStats",
    "Settings",
    "Sink",
    "Source",
    "SourceError",
    "SourceInfo",
    "StreamEnded",
    "Swapper",
    "VideoFileSink",
    "load_settings",
    "open_source",
]

if TYPE_CHECKING:
    from livefuse.app import Engine
    from livefuse.config import Settings, load_settings
    from livefuse.errors import (
        ConfigError,
        LivefuseError,
        ModelError,
        NoFaceError,
        OutputError,
        SourceError,
        StreamEnded,
    )
    from livefuse.faces import Faces
    from livefuse.frame import Frame
    from livefuse.io.sinks import VideoFileSink
    from livefuse.io.sources import open_source
    from livefuse.models.install import ModelInstaller
    from livefuse.models.store import ModelStore
    from livefuse.pipeline.metrics import RunStats
    from livefuse.pipeline.pipeline import Pipeline
    from livefuse.pipeline.stages import Analyzer, Sink, Source, SourceInfo, Swapper


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'livefuse' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return [*__all__, "__version__"]
