"""Sources and sinks on synthetic media: files, images, fake cameras, atomic output, audio."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import pytest

from livefuse.errors import OutputError, SourceError, SourceStalled, StreamEnded
from livefuse.faces import Faces
from livefuse.frame import Frame
from livefuse.io import (
    CameraSource,
    ImageSource,
    MemorySink,
    NullSink,
    PacedSource,
    StreamSource,
    VideoFileSink,
    VideoFileSource,
    open_source,
)
from livefuse.pipeline import Pipeline
from livefuse.pipeline.stages import SourceInfo
from tests.helpers import NoFaces, Untouched

W, H = 128, 96


# -- synthetic media ---------------------------------------------------------------------


def counter_image(n: int, width: int = W, height: int = H) -> np.ndarray:
    """16-bit counter as 8×16 black/white blocks: survives lossy encoding."""
    image = np.full((height, width, 3), 90, np.uint8)
    for bit in range(16):
        image[:16, bit * 8 : (bit + 1) * 8] = 255 if (n >> bit) & 1 else 0
    return image


def read_counter(image: np.ndarray) -> int:
    blocks = image[:16, :128].reshape(16, 16, 8, 3).mean(axis=(0, 2, 3))
    return int(sum(1 << bit for bit in range(16) if blocks[bit] > 128))


def write_video(
    path: Path,
    n: int = 20,
    rate: Fraction = Fraction(25),
    audio_codec: str | None = None,
    size: tuple[int, int] = (W, H),
) -> Path:
    """A video whose frame i shows counter i, with an optional 440 Hz sine audio track."""
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=rate)
        video.width, video.height, video.pix_fmt = size[0], size[1], "yuv420p"
        audio = out.add_stream(audio_codec, rate=48000, layout="mono") if audio_codec else None
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(counter_image(i, *size), format="bgr24")
            frame.pts, frame.time_base = i, 1 / rate
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        if audio is not None:
            _write_sine(out, audio, seconds=float(n / rate))
    return path


def _write_sine(out: av.container.OutputContainer, audio: Any, seconds: float) -> None:
    rate = 48000
    samples = (np.sin(2 * np.pi * 440 * np.arange(int(seconds * rate)) / rate) * 0.3).astype(np.float32)
    fmt = audio.codec_context.format.name
    for start in range(0, len(samples), 1024):
        chunk = samples[start : start + 1024][None, :]
        if fmt.startswith("u8"):
            chunk = (chunk * 127 + 128).astype(np.uint8)
        elif fmt.startswith("s16"):
            chunk = (chunk * 32767).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(chunk, format=fmt, layout="mono")
        frame.sample_rate, frame.pts = rate, start
        out.mux(audio.encode(frame))
    out.mux(audio.encode(None))


def decode_video(path: Path) -> tuple[list[np.ndarray], av.VideoStream, Fraction]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        images = [f.to_ndarray(format="bgr24") for f in container.decode(stream)]
        return images, stream, Fraction(stream.average_rate or 0)


def run_to(source: object, *sinks: object) -> None:
    Pipeline(source, NoFaces(), Untouched(), list(sinks)).run()  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(tmp_path_factory.mktemp("media") / "counter.mp4", n=20)


@pytest.fixture(scope="module")
def video_with_audio(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(tmp_path_factory.mktemp("media") / "audio.mp4", n=25, audio_codec="aac")


# -- VideoFileSource ---------------------------------------------------------------------


def test_video_file_source_reads_every_frame_in_place(video: Path) -> None:
    source = VideoFileSource(video)
    info = source.open()
    assert (info.width, info.height, info.fps, info.live) == (W, H, 25.0, False)
    assert info.time_base == Fraction(1, 25) and info.frame_count == 20 and info.audio_path is None
    slot = np.zeros((H, W, 3), np.uint8)
    counters, pts = [], []
    try:
        while True:
            pts.append(source.read(slot))
            counters.append(read_counter(slot))
    except StreamEnded:
        pass
    finally:
        source.close()
    assert counters == list(range(20)) and pts == list(range(20))


def test_video_file_source_resizes_into_a_smaller_slot(video: Path) -> None:
    source = VideoFileSource(video)
    source.open()
    slot = np.zeros((H // 2, W // 2, 3), np.uint8)
    source.read(slot)
    source.read(slot)
    source.close()
    big = cv2.resize(slot, (W, H), interpolation=cv2.INTER_NEAREST)
    assert read_counter(big) == 1


def test_missing_video_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="not found: .*nope.mp4"):
        VideoFileSource(tmp_path / "nope.mp4").open()


@pytest.mark.parametrize("content", [b"", b"not a video at all" * 100])
def test_corrupt_video_names_the_file(tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(content)
    with pytest.raises(SourceError, match="broken.mp4") as err:
        VideoFileSource(bad).open()
    assert "ffprobe" in str(err.value)


def test_directory_is_not_a_video(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="not a regular file"):
        VideoFileSource(tmp_path).open()


def test_truncated_video_ends_cleanly_with_what_it_has(tmp_path: Path) -> None:
    # mkv keeps its header at the start, so cutting the file in half leaves it readable.
    mkv = write_video(tmp_path / "cut.mkv", n=60)
    mkv.write_bytes(mkv.read_bytes()[: mkv.stat().st_size // 2])
    sink = MemorySink()
    run_to(VideoFileSource(mkv), sink)
    assert 0 < sink.received < 60
    assert [read_counter(f.image) for f in sink.frames] == list(range(sink.received))


# -- ImageSource and open_source ---------------------------------------------------------


def test_image_source_repeats_a_still(tmp_path: Path) -> None:
    path = tmp_path / "still.png"
    cv2.imwrite(str(path), counter_image(7))
    sink = MemorySink()
    run_to(ImageSource(path, repeat=3), sink)
    assert [read_counter(f.image) for f in sink.frames] == [7, 7, 7]


def test_bad_image_is_a_source_error(tmp_path: Path) -> None:
    path = tmp_path / "fake.jpg"
    path.write_bytes(b"nope")
    with pytest.raises(SourceError, match="fake.jpg"):
        ImageSource(path).open()


@pytest.mark.parametrize(
    "spec, kind",
    [
        ("0", CameraSource),
        ("12", CameraSource),
        ("/dev/video3", CameraSource),
        ("rtsp://user:pw@cam.local/live", StreamSource),
        ("http://example.com/stream.mjpg", StreamSource),
        ("HTTPS://example.com/x.m3u8", StreamSource),
        ("face.JPG", ImageSource),
        ("photo.png", ImageSource),
        ("clip.mp4", VideoFileSource),
        ("clip", VideoFileSource),
    ],
)
def test_open_source_picks_by_spec(spec: str, kind: type) -> None:
    assert isinstance(open_source(spec), kind)


def test_open_source_passes_camera_requests() -> None:
    source = open_source("1", size=(1280, 720), fps=60)
    assert isinstance(source, CameraSource)
    assert (source.device, source.size, source.fps) == (1, (1280, 720), 60)


def test_empty_spec_is_rejected() -> None:
    with pytest.raises(SourceError, match="empty source"):
        open_source("  ")


# -- cameras -----------------------------------------------------------------------------


@pytest.mark.parametrize("device", [99, "/dev/video99"])
def test_camera_that_cannot_be_opened_fails_fast(device: int | str) -> None:
    start = time.monotonic()
    with pytest.raises(SourceError) as err:
        CameraSource(device).open()
    assert time.monotonic() - start < 2.0
    message = str(err.value)
    assert str(device) in message
    assert "other app" in message
    if sys.platform == "linux":
        assert "v4l2-ctl --list-devices" in message and "usermod -aG video" in message


class FakeCapture:
    """A cv2.VideoCapture stand-in: ``frames`` frames, then it stalls (blocks) or fails."""

    def __init__(self, frames: int = 1000, then: str = "block", size: tuple[int, int] = (W, H)) -> None:
        self.frames, self.then = frames, then
        self.props: dict[int, float] = {
            cv2.CAP_PROP_FRAME_WIDTH: size[0],
            cv2.CAP_PROP_FRAME_HEIGHT: size[1],
            cv2.CAP_PROP_FPS: 30.0,
        }
        self.sent = 0
        self.unblock = threading.Event()
        self.released = threading.Event()
        self.size = size

    def isOpened(self) -> bool:  # noqa: N802
        return True

    def set(self, prop: int, value: float) -> bool:
        if prop in (cv2.CAP_PROP_FRAME_WIDTH, cv2.CAP_PROP_FRAME_HEIGHT):
            return False  # a camera with one fixed mode: it keeps reporting what it does
        self.props[prop] = value
        return True

    def get(self, prop: int) -> float:
        return self.props.get(prop, 0.0)

    def grab(self) -> bool:
        if self.sent >= self.frames:
            if self.then == "block":
                self.unblock.wait(30)  # a driver call that hangs
            return False
        self.sent += 1
        return True

    def retrieve(self, image: np.ndarray | None = None) -> tuple[bool, np.ndarray]:
        frame = counter_image(self.sent - 1, *self.size)
        if image is not None and image.shape == frame.shape:
            image[:] = frame
            return True, image
        return True, frame

    def read(self, image: np.ndarray | None = None) -> tuple[bool, np.ndarray]:
        return (self.grab() and self.retrieve(image)[0]), image if image is not None else np.empty(0)

    def release(self) -> None:
        self.released.set()


@pytest.fixture
def fake_capture() -> Iterator[FakeCapture]:
    cap = FakeCapture(frames=5)
    yield cap
    cap.unblock.set()  # let a stuck grab thread finish


def test_camera_reads_into_the_slot_and_reports_actual_settings(fake_capture: FakeCapture) -> None:
    fake_capture.frames = 3
    source = CameraSource(0, size=(1920, 1080), fps=30, capture_factory=lambda _: fake_capture)
    info = source.open()
    assert info.live and (info.width, info.height) == (W, H)  # not the 1920 it asked for
    assert fake_capture.props[cv2.CAP_PROP_BUFFERSIZE] == 1
    slot = np.zeros((H, W, 3), np.uint8)
    pts = [source.read(slot) for _ in range(3)]
    assert read_counter(slot) == 2 and pts == sorted(pts)
    source.close()
    assert fake_capture.released.wait(1)


def test_camera_that_hangs_mid_stream_raises_source_stalled(fake_capture: FakeCapture) -> None:
    source = CameraSource(0, stall_timeout_s=0.3, capture_factory=lambda _: fake_capture)
    sink = MemorySink()
    start = time.monotonic()
    with pytest.raises(SourceStalled, match="camera 0 delivered no frame for 0.3 s"):
        run_to(source, sink)
    assert time.monotonic() - start < 3.0  # no hang
    assert sink.received <= 5
    assert not [t for t in threading.enumerate() if t.name in {"livefuse-capture", "livefuse-output"}]


def test_camera_whose_grab_keeps_failing_raises_source_stalled() -> None:
    cap = FakeCapture(frames=2, then="fail")
    source = CameraSource("/dev/video0", stall_timeout_s=0.2, capture_factory=lambda _: cap)
    source.open()
    slot = np.zeros((H, W, 3), np.uint8)
    source.read(slot)
    source.read(slot)
    start = time.monotonic()
    with pytest.raises(SourceStalled, match="/dev/video0"):
        source.read(slot)
    assert 0.15 < time.monotonic() - start < 1.5
    source.close()


def test_stream_source_hides_credentials() -> None:
    class Closed(FakeCapture):
        def isOpened(self) -> bool:  # noqa: N802
            return False

    source = StreamSource("rtsp://admin:hunter2@10.0.0.5:554/live", capture_factory=lambda _: Closed())
    with pytest.raises(SourceError) as err:
        source.open()
    assert "hunter2" not in str(err.value) and "10.0.0.5:554/live" in str(err.value)


def test_paced_source_delivers_in_real_time(video: Path) -> None:
    source = PacedSource(VideoFileSource(video), fps=50)
    info = source.open()
    assert info.live and info.fps == 50
    slot = np.zeros((H, W, 3), np.uint8)
    start = time.monotonic()
    for _ in range(11):
        source.read(slot)
    elapsed = time.monotonic() - start
    source.close()
    assert 0.18 < elapsed < 0.5  # 10 periods of 20 ms


# -- VideoFileSink -----------------------------------------------------------------------


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".partial" in p.name)


def test_file_to_file_keeps_every_frame_in_order_and_fps(tmp_path: Path) -> None:
    src = write_video(tmp_path / "ntsc.mp4", n=30, rate=Fraction(30000, 1001))
    out = tmp_path / "out.mp4"
    run_to(VideoFileSource(src), VideoFileSink(out))
    images, stream, rate = decode_video(out)
    assert [read_counter(img) for img in images] == list(range(30))
    assert rate == Fraction(30000, 1001)
    assert stream.codec_context.name == "h264"
    assert _leftovers(tmp_path) == []


def test_audio_is_copied_bit_exact(video_with_audio: Path, tmp_path: Path) -> None:
    out = tmp_path / "with_audio.mp4"
    run_to(VideoFileSource(video_with_audio), VideoFileSink(out))
    with av.open(str(video_with_audio)) as a, av.open(str(out)) as b:
        src_packets = [bytes(p) for p in a.demux(a.streams.audio[0]) if p.size]
        out_audio = b.streams.audio[0]
        out_packets = [bytes(p) for p in b.demux(out_audio) if p.size]
        assert out_audio.codec_context.name == "aac" and b.streams.video[0].frames == 25
    # Copied, not re-encoded: the packets are the source's own (up to the video's end).
    assert len(out_packets) >= len(src_packets) - 2
    assert out_packets == src_packets[: len(out_packets)]


def test_audio_that_does_not_fit_is_transcoded_to_aac(tmp_path: Path) -> None:
    src = write_video(tmp_path / "pcm.mkv", n=25, audio_codec="pcm_u8")  # mp4 cannot hold pcm_u8
    out = tmp_path / "out.mp4"
    run_to(VideoFileSource(src), VideoFileSink(out))
    with av.open(str(out)) as container:
        audio = container.streams.audio[0]
        assert audio.codec_context.name == "aac"
        decoded = np.concatenate([f.to_ndarray().ravel() for f in container.decode(audio)])
    assert 0.8 * 48000 < decoded.size < 1.2 * 48000  # about the 1 s of the source
    assert np.abs(decoded).max() > 0.1  # the sine, not silence


class SlowFaces(NoFaces):
    def analyze(self, frame: Frame) -> Faces:
        time.sleep(0.06)
        return Faces.empty()


def test_paced_file_in_live_mode_drops_but_keeps_timing(video_with_audio: Path, tmp_path: Path) -> None:
    out = tmp_path / "live.mp4"
    source = PacedSource(VideoFileSource(video_with_audio))  # 25 fps, like a camera
    stats = Pipeline(source, SlowFaces(), Untouched(), [VideoFileSink(out)]).run()
    assert stats.dropped > 0 and stats.frames_out + stats.dropped == 25
    with av.open(str(out)) as container:
        video = container.streams.video[0]
        frames = list(container.decode(video))
        assert container.streams.audio  # in sync: the frames keep their file timestamps
    counters = [read_counter(f.to_ndarray(format="bgr24")) for f in frames]
    assert len(frames) == stats.frames_out and counters == sorted(set(counters))
    # Each kept frame sits at its original time: counter n at n/25 s.
    assert all(abs(float(f.time) - n / 25) < 1e-3 for f, n in zip(frames, counters, strict=True))


class FailingSource(VideoFileSource):
    def __init__(self, path: Path, fail_at: int) -> None:
        super().__init__(path)
        self.fail_at = fail_at

    def read(self, image: np.ndarray) -> int:
        pts = super().read(image)
        if pts == self.fail_at:
            raise SourceError("disk went away")
        return pts


def test_failed_run_leaves_no_output_file(video: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    with pytest.raises(SourceError, match="disk went away"):
        run_to(FailingSource(video, fail_at=10), VideoFileSink(out))
    assert not out.exists() and _leftovers(tmp_path) == []


def test_failed_run_keeps_an_older_output_intact(video: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    out.write_bytes(b"previous result")
    with pytest.raises(SourceError):
        run_to(FailingSource(video, fail_at=3), VideoFileSink(out))
    assert out.read_bytes() == b"previous result"


def test_sink_context_manager_commits_or_aborts(tmp_path: Path) -> None:
    info = SourceInfo(W, H, 25.0, False, Fraction(1, 25))
    frame = Frame(0, 0, Fraction(1, 25), 0, counter_image(3))
    with VideoFileSink(tmp_path / "ok.mkv") as sink:
        sink.open(info)
        sink.send(frame)
    with pytest.raises(RuntimeError), VideoFileSink(tmp_path / "bad.mkv") as sink:
        sink.open(info)
        sink.send(frame)
        raise RuntimeError("boom")
    assert (tmp_path / "ok.mkv").exists() and not (tmp_path / "bad.mkv").exists()
    assert _leftovers(tmp_path) == []
    images, _, _ = decode_video(tmp_path / "ok.mkv")
    assert [read_counter(i) for i in images] == [3]


def test_no_frames_means_no_file(tmp_path: Path) -> None:
    sink = VideoFileSink(tmp_path / "empty.mp4")
    sink.open(SourceInfo(W, H, 25.0, False, Fraction(1, 25)))
    sink.close()
    assert list(tmp_path.iterdir()) == []


def test_odd_sized_source_is_written(tmp_path: Path) -> None:
    info = SourceInfo(129, 97, 10.0, True, Fraction(1, 90_000))
    sink = VideoFileSink(tmp_path / "odd.mp4")
    sink.open(info)
    for i in range(3):
        sink.send(Frame(i, i * 9000, Fraction(1, 90_000), 0, counter_image(i, 129, 97)))
    sink.close()
    images, stream, rate = decode_video(tmp_path / "odd.mp4")
    # The exact size is kept (H.264 in 4:4:4: 4:2:0 cannot code odd sizes).
    assert len(images) == 3 and (stream.width, stream.height) == (129, 97) and rate == 10
    assert images[0].shape[:2] == (97, 129)


@pytest.mark.parametrize(
    "name, message",
    [("missing_dir/out.mp4", "does not exist"), ("out.notaformat", "common extension")],
)
def test_unwritable_output_is_an_output_error(tmp_path: Path, name: str, message: str) -> None:
    with pytest.raises(OutputError, match=message):
        VideoFileSink(tmp_path / name).open(SourceInfo(W, H, 25.0, False, Fraction(1, 25)))
    assert _leftovers(tmp_path) == []


def test_fallback_codec_is_used_when_the_first_is_unavailable(tmp_path: Path) -> None:
    out = tmp_path / "fallback.mp4"
    sink = VideoFileSink(out, codec="no-such-encoder")
    sink.open(SourceInfo(W, H, 25.0, False, Fraction(1, 25)))
    sink.send(Frame(0, 0, Fraction(1, 25), 0, counter_image(1)))
    sink.close()
    _, stream, _ = decode_video(out)
    assert stream.codec_context.name == "mpeg4"


# -- MemorySink, NullSink (the preview window is tests/test_preview.py) ---------------------------------


def test_memory_sink_is_bounded_and_null_sink_counts(video: Path) -> None:
    memory, null = MemorySink(maxlen=4), NullSink()
    run_to(VideoFileSource(video), memory, null)
    assert memory.received == null.received == 20
    assert [f.index for f in memory.frames] == [16, 17, 18, 19] and memory.closed
    assert [read_counter(img) for img in memory.images] == [16, 17, 18, 19]
