"""Frame sinks: video files, a preview window, memory (tests and tools), nothing."""

from __future__ import annotations

import logging
import os
import secrets
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from livefuse.errors import OutputError
from livefuse.frame import Frame
from livefuse.pipeline.stages import SourceInfo

log = logging.getLogger(__name__)

#: Encoder options per codec: fast enough to record live, good enough to keep.
DEFAULT_CODEC_OPTIONS: dict[str, dict[str, str]] = {
    "libx264": {"preset": "veryfast", "crf": "18"},
}


def _exact_rate(info: SourceInfo) -> Fraction:
    """The source rate as an exact fraction.

    Files report ``time_base = 1/rate`` exactly (30000/1001 stays 30000/1001); live
    sources tick at 90 kHz, so their float fps is rounded to a sensible fraction.
    """
    from_time_base = 1 / info.time_base if info.time_base else Fraction(0)
    if info.fps > 0 and abs(float(from_time_base) - info.fps) < 0.01:
        return from_time_base
    return Fraction(info.fps or 30.0).limit_denominator(1001)


class VideoFileSink:
    """Writes frames to a video file with PyAV, atomically.

    Frames go to a hidden temporary file next to ``path``, renamed over ``path`` by
    ``close()``; ``abort()`` (called by the pipeline after a failed run) deletes it, so a
    failed run leaves no half-written output. When the source has audio
    (``SourceInfo.audio_path``), its audio stream is copied in, packet by packet (no
    re-encode when the container accepts the codec, else transcoded to AAC).

    :param fps: output rate; default is the source's exact rate.
    :param codec: video encoder; ``fallback_codec`` is used when it is unavailable.
    :param options: encoder options; default ``DEFAULT_CODEC_OPTIONS[codec]``.
    :param seal: called with the finished temporary file and ``path`` before the file is renamed into place
        (content credentials are embedded there, so only a signed file ever appears). If it
        raises, the file is still moved into place, unsealed, and the error goes on.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        fps: float | None = None,
        codec: str = "libx264",
        fallback_codec: str = "mpeg4",
        options: Mapping[str, str] | None = None,
        copy_audio: bool = True,
        seal: Callable[[Path, Path], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.seal = seal
        self.fps = fps
        self.codec = codec
        self.fallback_codec = fallback_codec
        self.options = options
        self.copy_audio = copy_audio
        self.frames_written = 0
        self._tmp: Path | None = None
        self._container: Any = None
        self._stream: Any = None
        self._audio: _AudioCopier | None = None
        self._rate = Fraction(0)
        self._first_s: Fraction | None = None
        self._last_pts = -1

    # -- Sink protocol ------------------------------------------------------------------

    def open(self, info: SourceInfo) -> None:
        """Create the temporary file and the video (and audio) streams."""
        import av  # heavy: only needed when writing files

        self._check_directory()
        self.frames_written, self._first_s, self._last_pts = 0, None, -1
        self._rate = Fraction(self.fps).limit_denominator(1001) if self.fps else _exact_rate(info)
        self._tmp = _create_temp_next_to(self.path)
        tmp = str(self._tmp)
        try:
            self._container = av.open(tmp, "w")
            self._stream = self._add_video_stream(info)
            if self.copy_audio and info.audio_path is not None:
                self._audio = _AudioCopier(info.audio_path, self._container)
        except (av.FFmpegError, ValueError, OSError) as exc:
            self.abort()
            raise OutputError(
                f"cannot write video file {self.path}: {exc}. Use a common extension "
                "(.mp4, .mkv, .mov) in a writable directory."
            ) from exc
        except BaseException:
            self.abort()
            raise

    def send(self, frame: Frame) -> None:
        """Encode one frame, at its own timestamp, and interleave the audio up to it."""
        import av

        if self._container is None:
            raise OutputError(f"{self.path}: send() called before open() or after close()")
        video_frame = av.VideoFrame.from_ndarray(frame.image, format="bgr24")
        video_frame.pts = self._pts(frame)
        video_frame.time_base = 1 / self._rate
        try:
            for packet in self._stream.encode(video_frame):
                self._container.mux(packet)
            if self._audio is not None:
                self._audio.pump(until_s=float((video_frame.pts + 1) / self._rate))
        except (av.FFmpegError, OSError) as exc:
            raise OutputError(f"writing {self.path} failed: {exc} (is the disk full?)") from exc
        self.frames_written += 1

    def close(self) -> None:
        """Flush the encoder, finish the file and move it into place. Idempotent.

        With no frames written there is nothing worth keeping: no file is created.
        """
        import av

        if self._container is None:
            return
        if self.frames_written == 0:
            # An empty container is not a video any player opens: leave nothing instead.
            log.warning("no frames reached %s: the file was not created", self.path)
            self.abort()
            return
        try:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
            if self._audio is not None:
                self._audio.pump(until_s=float((self._last_pts + 1) / self._rate))
                self._audio.close()
            self._container.close()
        except (av.FFmpegError, OSError) as exc:
            self.abort()
            raise OutputError(f"finishing {self.path} failed: {exc} (is the disk full?)") from exc
        self._container = None
        assert self._tmp is not None
        try:
            if self.seal is not None:
                self.seal(self._tmp, self.path)
        finally:  # a recording is never thrown away, sealed or not
            os.replace(self._tmp, self.path)
            self._tmp = None
        log.info("wrote %s (%d frames)", self.path, self.frames_written)

    def abort(self) -> None:
        """Discard everything written: no output file is left. Idempotent."""
        container, self._container = self._container, None
        audio, self._audio = self._audio, None
        if audio is not None:
            _close_logged(audio.close, f"audio source of aborted output {self.path}")
        if container is not None:
            _close_logged(container.close, f"aborted output {self.path}")
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
            self._tmp = None

    def __enter__(self) -> VideoFileSink:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # -- helpers ------------------------------------------------------------------------

    def _check_directory(self) -> None:
        parent = self.path.parent
        if not parent.is_dir():
            raise OutputError(f"cannot write {self.path}: directory {parent} does not exist; create it first")
        if not os.access(parent, os.W_OK):
            raise OutputError(f"cannot write {self.path}: directory {parent} is not writable")

    def _add_video_stream(self, info: SourceInfo) -> Any:
        supported = self._container.supported_codecs
        errors = []
        for name in dict.fromkeys((self.codec, self.fallback_codec)):
            if name not in supported:
                errors.append(f"{name}: the {self.path.suffix or 'output'} container does not take it")
                continue
            try:
                stream = self._container.add_stream(name, rate=self._rate)
            except (ValueError, LookupError) as exc:  # encoder missing from this FFmpeg build
                errors.append(f"{name}: {exc}")
                continue
            self._configure_stream(stream, name, info)
            if name != self.codec:
                log.warning("%s: encoder %s unavailable, using %s", self.path, self.codec, name)
            return stream
        raise OutputError(f"no usable video encoder for {self.path}: " + "; ".join(errors))

    def _configure_stream(self, stream: Any, name: str, info: SourceInfo) -> None:
        # The exact size is kept. H.264 in 4:2:0 cannot code an odd width or height (its
        # cropping works in steps of 2), so an odd H.264 video is written in 4:4:4.
        stream.width, stream.height = info.width, info.height
        odd = info.width % 2 or info.height % 2
        stream.pix_fmt = "yuv444p" if odd and name == "libx264" else "yuv420p"
        stream.options = dict(self.options if self.options is not None else DEFAULT_CODEC_OPTIONS.get(name, {}))
        if name == "mpeg4":
            # mpeg4's default 200 kbit/s is unwatchable; aim for ~0.15 bit per pixel.
            stream.bit_rate = max(2_000_000, int(info.width * info.height * float(self._rate) * 0.15))

    def _pts(self, frame: Frame) -> int:
        """``frame``'s time in output ticks, strictly increasing.

        Live clocks start wherever the source opened: the video then starts at 0. With
        copied audio, frames keep the source file's times so they stay in sync with it.
        """
        seconds = frame.pts * frame.time_base
        if self._first_s is None:
            self._first_s = Fraction(0) if self._audio is not None else seconds
        pts = max(round((seconds - self._first_s) * self._rate), self._last_pts + 1)
        self._last_pts = pts
        return pts


class _AudioCopier:
    """Copies the first audio stream of a file into an output container, bit-exact when it can."""

    def __init__(self, source: Path, container: Any) -> None:
        import av

        self._input: Any = av.open(str(source))
        self._container = container
        try:
            self._setup(container)
        except BaseException:
            self._input.close()
            raise

    def _setup(self, container: Any) -> None:
        audio_in = self._input.streams.audio[0]
        video = self._input.streams.video
        # Video pts start at 0 in the output: shift audio by the source video's start.
        start = video[0].start_time if video and video[0].start_time else 0
        self._offset_s = float(start * video[0].time_base) if start else 0.0
        codec = audio_in.codec_context.name
        self._transcode = codec not in container.supported_codecs
        if self._transcode:
            target = "aac" if "aac" in container.supported_codecs else container.default_audio_codec
            log.info("audio codec %s does not fit the output container: transcoding to %s", codec, target)
            self._out = container.add_stream(target, rate=audio_in.rate, layout=_encodable_layout(audio_in.layout))
        else:
            self._out = container.add_stream_from_template(audio_in)
        self._packets: Iterator[Any] = iter(self._input.demux(audio_in))
        self._held: Any = None

    def pump(self, until_s: float) -> None:
        """Write every audio packet that starts before ``until_s`` (output seconds)."""
        while True:
            packet: Any = self._held if self._held is not None else next(self._packets, None)
            self._held = None
            if packet is None:
                return
            if packet.pts is None or packet.time_base is None:
                continue  # the demuxer's empty end-of-stream packet
            start_s = float(packet.pts * packet.time_base) - self._offset_s
            if start_s >= until_s:
                self._held = packet
                return
            # Packets before 0 (AAC priming) are kept: the muxer turns them into an edit list.
            self._write(packet)

    def close(self) -> None:
        """Flush a transcoder and close the input. Idempotent."""
        if self._input is None:
            return
        try:
            if self._transcode:
                for out_packet in self._out.encode(None):
                    self._container.mux(out_packet)
        finally:
            self._input.close()
            self._input = None

    def _write(self, packet: Any) -> None:
        if self._transcode:
            for frame in packet.decode():
                frame.pts = None  # let the encoder count samples from 0
                for out_packet in self._out.encode(frame):
                    self._container.mux(out_packet)
            return
        if self._offset_s:
            shift = round(self._offset_s / packet.time_base)
            packet.pts -= shift
            packet.dts = None if packet.dts is None else packet.dts - shift
        packet.stream = self._out
        self._container.mux(packet)


#: Standard layouts by channel count, for sources whose layout has no channel order.
_DEFAULT_LAYOUTS = {
    1: "mono",
    2: "stereo",
    3: "2.1",
    4: "quad",
    5: "5.0",
    6: "5.1",
    7: "6.1",
    8: "7.1",
}


def _encodable_layout(layout: Any) -> str:
    """``layout``'s name, or a standard one: encoders reject "N channels" (unordered) layouts."""
    if layout.name.endswith("channels"):
        return _DEFAULT_LAYOUTS.get(layout.nb_channels, "stereo")
    return str(layout.name)


def _create_temp_next_to(path: Path) -> Path:
    """A new hidden file in ``path``'s directory, same extension (it picks the container).

    Same directory so the final rename is atomic; created with 0o666 so the umask
    applies as for any file (mkstemp would make it 0o600).
    """
    for _ in range(100):
        tmp = path.with_name(f".{path.stem}.{secrets.token_hex(4)}.partial{path.suffix}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise OutputError(f"cannot create a temporary file next to {path}: too many name clashes")


def _close_logged(close: Callable[[], None], what: str) -> None:
    try:
        close()
    except Exception as exc:  # noqa: BLE001 - already failing; do not mask the first error
        log.warning("closing %s failed: %s", what, exc)


class MemorySink:
    """Keeps copies of the last ``maxlen`` frames (images included) for tests and tools."""

    def __init__(self, maxlen: int = 1000) -> None:
        self.frames: deque[Frame] = deque(maxlen=maxlen)
        self.info: SourceInfo | None = None
        self.closed = False
        self.received = 0
        "Frames sent, including those no longer kept."

    def open(self, info: SourceInfo) -> None:
        """Remember ``info``."""
        self.info = info

    def send(self, frame: Frame) -> None:
        """Keep a copy of ``frame`` (its image returns to the pool after the output stage)."""
        self.frames.append(
            Frame(
                index=frame.index,
                pts=frame.pts,
                time_base=frame.time_base,
                capture_ns=frame.capture_ns,
                image=frame.image.copy(),
                faces=frame.faces,
                stamps=dict(frame.stamps),
                error=frame.error,
            )
        )
        self.received += 1

    def close(self) -> None:
        """Mark closed; the frames stay readable."""
        self.closed = True

    @property
    def images(self) -> list[np.ndarray]:
        """The kept images, oldest first."""
        return [f.image for f in self.frames]


class NullSink:
    """Discards frames (benchmarks); counts them."""

    def __init__(self) -> None:
        self.received = 0

    def open(self, info: SourceInfo) -> None:
        """Nothing to open."""

    def send(self, frame: Frame) -> None:
        """Count and discard."""
        self.received += 1

    def close(self) -> None:
        """Nothing to close."""
