"""Typed errors. Library code raises these; only the CLI turns them into exit codes."""

from __future__ import annotations


class LivefuseError(Exception):
    """Base class of every error livefuse raises on purpose.

    The message always names the problem and, where there is one, the fix.
    """


class ConfigError(LivefuseError):
    """An option, config file or environment variable has a bad value."""


class ModelError(LivefuseError):
    """A model is missing, corrupt, tampered with or has the wrong contract."""


class SampleError(LivefuseError):
    """Sample media could not be fetched or verified."""


class SourceError(LivefuseError):
    """An input (camera, file, image, URL) cannot be opened or read."""


class SourceStalled(SourceError):
    """A live source stopped delivering frames mid-stream."""


class NoFaceError(LivefuseError):
    """The source photo holds no face the detector can find."""


class OutputError(LivefuseError):
    """An output (file, window, virtual camera) cannot be opened or written."""


class StreamEnded(LivefuseError):
    """End of stream: raised by ``Source.read`` when there are no more frames."""


class EngineMismatch(LivefuseError):
    """A prebuilt GPU engine is missing, stale or was built for another TensorRT or GPU.

    The live path never rebuilds engines: the message says what differs and the build command.
    """


class KernelError(LivefuseError):
    """The GPU frame path's kernels could not be compiled, loaded or launched."""


class EngineError(LivefuseError):
    """A TensorRT engine could not be built, loaded or run (a stale or foreign engine is an
    :class:`EngineMismatch`)."""
