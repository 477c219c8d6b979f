"""Inputs and outputs: cameras, streams, files, windows and virtual cameras."""

from livefuse.io.sinks import MemorySink, NullSink, VideoFileSink
from livefuse.io.sources import (
    CameraSource,
    ImageSource,
    PacedSource,
    StreamSource,
    VideoFileSource,
    open_source,
)
from livefuse.io.vcam import VirtualCameraSink

__all__ = [
    "CameraSource",
    "ImageSource",
    "MemorySink",
    "NullSink",
    "PacedSource",
    "StreamSource",
    "VideoFileSink",
    "VideoFileSource",
    "VirtualCameraSink",
    "open_source",
]
