"""Choosing and guarding a command's output file: checked up front, written whole or not at all.

``check_output`` refuses, before any frame is decoded, an output that would replace an
input, that is a directory, or that sits where nothing can be written. ``file_sink``
picks the sink by extension (an image for .jpg/.png/.webp/..., else a video).
``DiscardOnInterrupt`` and ``FinishOnFailure`` wrap a file sink so that the pipeline's
close/abort does what the command wants: an interrupted ``run`` leaves nothing, a
recording is finished whatever ended it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from urllib.parse import urlsplit

from livefuse.errors import OutputError
from livefuse.frame import Frame
from livefuse.io.images import IMAGE_OUTPUTS, ImageFileSink
from livefuse.io.sinks import VideoFileSink
from livefuse.io.sources import STREAM_SCHEMES
from livefuse.pipeline.stages import Sink, SourceInfo


def is_url(spec: str) -> bool:
    """True for ``rtsp://``, ``http(s)://`` and the other stream schemes."""
    return urlsplit(spec.strip()).scheme.lower() in STREAM_SCHEMES


def check_output(output: Path, inputs: Iterable[str | os.PathLike[str]] = ()) -> None:
    """Raise ``OutputError`` (with the fix) when ``output`` cannot or must not be written."""
    if output.is_dir():
        raise OutputError(f"output {output} is an existing directory: give a file name, e.g. {output / 'out.mp4'}")
    for spec in inputs:
        if not is_url(str(spec)) and _same_file(output, Path(spec)):
            raise OutputError(
                f"output {output} is the input {spec}: writing it would replace the original; "
                "choose another output name"
            )
    parent = output.parent
    if not parent.is_dir():
        raise OutputError(f"cannot write {output}: directory {parent} does not exist; create it first")
    try:
        # The only sure test of "can a file be created here" (read-only mounts, /proc, ACLs).
        with tempfile.TemporaryFile(dir=parent, prefix=".livefuse-probe-"):
            pass
    except OSError as exc:
        raise OutputError(
            f"cannot write {output}: no file can be created in {parent} ({exc.strerror or exc}); "
            "choose a directory you can write to"
        ) from None


def _same_file(output: Path, source: Path) -> bool:
    """True when both names lead to one file (links, ``..`` and case-folding filesystems included)."""
    if output.exists() and source.exists():
        return os.path.samefile(output, source)
    return os.path.realpath(output) == os.path.realpath(source)


def file_sink(output: Path, input_is_image: bool, seal: Callable[[Path, Path], None] | None = None) -> Sink:
    """The sink for ``output``: an image file by extension, else a video file.

    A video input cannot become one image: refused with the fix rather than keeping one frame.
    """
    if output.suffix.lower() in IMAGE_OUTPUTS:
        if not input_is_image:
            raise OutputError(
                f"output {output} is an image but the input is a video: use a video name "
                "(.mp4, .mkv, .mov) for the output"
            )
        return ImageFileSink(output, seal=seal)
    return VideoFileSink(output, seal=seal)


class DiscardOnInterrupt:
    """A file sink whose output is discarded, not finished, once ``discard`` is set.

    The pipeline closes its sinks when it is stopped; a ``run`` stopped by a signal must
    leave nothing, so the command sets ``discard`` before it stops the pipeline.
    """

    def __init__(self, inner: Sink) -> None:
        self.inner = inner
        self.discard = False
        self.finished = False
        "True once the output was complete and moved into place."

    def open(self, info: SourceInfo) -> None:
        self.inner.open(info)

    def send(self, frame: Frame) -> None:
        self.inner.send(frame)

    def close(self) -> None:
        if self.discard:
            self.abort()
            return
        self.inner.close()
        self.finished = True

    def abort(self) -> None:
        """Delete whatever was written (temporary file included). Idempotent."""
        abort = getattr(self.inner, "abort", None)
        if callable(abort):
            abort()
        else:
            self.inner.close()


class FinishOnFailure:
    """A recording sink that is finished, never thrown away, when the run fails.

    A live source that ends or drops for good is a failed run for the pipeline; what was
    recorded until then is still the user's recording.
    """

    def __init__(self, inner: Sink) -> None:
        self.inner = inner

    def open(self, info: SourceInfo) -> None:
        self.inner.open(info)

    def send(self, frame: Frame) -> None:
        self.inner.send(frame)

    def close(self) -> None:
        self.inner.close()

    def abort(self) -> None:
        """Finish the file with what it holds."""
        self.inner.close()
