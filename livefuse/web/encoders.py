"""The returned stream's video encoder: real-time settings, a hardware H.264 encoder first.

aiortc encodes every outgoing frame itself, with settings made for quality rather than
for a machine that also swaps faces: VP8 with its denoiser on (``noise-sensitivity 4``,
the camera-noise filter: 43 % of the encode here) and H.264 at libx264's default preset
(medium: 27 ms a 720p frame on one core of the 2-core development VM, against 5 ms
for the settings below). livefuse gives each outgoing track its own encoder instead,
made from an :class:`EncoderSpec`:

- hardware H.264 where PyAV opens one (NVENC, Quick Sync, AMF, VideoToolbox), tried in
  that order with a tiny test frame once per server; VA-API is not offered: its encoder
  takes only frames already uploaded to the GPU, which PyAV cannot make;
- else software: H.264 (libx264, ``superfast``, ``zerolatency``: no frame delay, no
  B-frames), or VP8 (libvpx) at aiortc's speed with the denoiser off.

H.264 is preferred even in software: side by side on the 2-core development VM with
Chromium on the same cores, Chromium spent 13-20 % less CPU on an H.264 call than on a
VP8 one, and the server no more (``benchmarks/bench_webrtc.py``, RESULTS §11). A browser
that offers no H.264 gets VP8.

The encoders keep aiortc's own bitrate control: the sender raises or lowers
``target_bitrate`` from the receiver's REMB estimates, and the codec reopens when it
moves by more than 10 %, as aiortc's does; a keyframe is made when the receiver asks
(PLI/FIR) and at least every :data:`KEYFRAME_EVERY` frames (the codec's GOP).

The codec both directions use is the answer's first: the server's preference
(:func:`codec_order`) decides among those the browser offers.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Literal

import av
from aiortc import RTCRtpCodecCapability, RTCRtpSender
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.vpx import Vp8Encoder, number_of_threads
from av.frame import Frame
from av.packet import Packet
from av.video.codeccontext import VideoCodecContext

from livefuse.config import VideoCodecChoice

log = logging.getLogger(__name__)

VideoCodec = Literal["vp8", "h264"]

#: A keyframe at least this often (10 s at 30 fps), besides the receiver's requests: a
#: viewer whose request was lost recovers without waiting for the next one.
KEYFRAME_EVERY = 300

#: The rate the encoders are told to expect; the real pacing is the frames' own pts.
FRAME_RATE = 30

#: The RTP video clock, the time base of the frames aiortc decodes (and livefuse returns).
VIDEO_TIME_BASE = Fraction(1, 90_000)


@dataclass(frozen=True, slots=True)
class EncoderSpec:
    """One FFmpeg encoder and the options it runs with."""

    codec: VideoCodec
    name: str
    "FFmpeg's encoder name (libvpx, libx264, h264_nvenc, ...)."
    options: Mapping[str, str] = field(default_factory=dict)
    pix_fmt: str = "yuv420p"
    "The frames it takes; others are converted first (NV12 for most hardware encoders)."
    hardware: bool = False

    def describe(self) -> str:
        """For logs and the session's stats: ``h264 (h264_nvenc, hardware)``."""
        return f"{self.codec} ({self.name}, {'hardware' if self.hardware else 'software'})"


#: libvpx as aiortc sets it, less the denoiser. Speed (cpu-used) stays at aiortc's 6:
#: the faster speeds saved under 10 % more here, at a visible cost in detail.
VP8_SOFTWARE = EncoderSpec(
    "vp8",
    "libvpx",
    {
        "deadline": "realtime",
        "cpu-used": "-6",
        "lag-in-frames": "0",
        "noise-sensitivity": "0",
        "overshoot-pct": "15",
        "undershoot-pct": "100",
        "partitions": "0",
        "static-thresh": "1",
    },
)

H264_SOFTWARE = EncoderSpec(
    "h264", "libx264", {"preset": "superfast", "tune": "zerolatency", "level": "31", "profile": "baseline"}
)

#: Hardware H.264 encoders, tried in this order; each takes system-memory frames.
H264_HARDWARE = (
    EncoderSpec(
        "h264",
        "h264_nvenc",
        {"preset": "p1", "tune": "ull", "zerolatency": "1", "delay": "0", "rc": "cbr", "profile": "baseline"},
        hardware=True,
    ),
    EncoderSpec("h264", "h264_qsv", {"preset": "veryfast", "async_depth": "1"}, "nv12", hardware=True),
    EncoderSpec("h264", "h264_amf", {"usage": "ultralowlatency", "quality": "speed"}, "nv12", hardware=True),
    EncoderSpec("h264", "h264_videotoolbox", {"realtime": "1"}, "nv12", hardware=True),
)


def open_codec(
    spec: EncoderSpec, width: int, height: int, bitrate: int, time_base: Fraction = VIDEO_TIME_BASE
) -> VideoCodecContext:
    """An opened encoder for ``width`` x ``height`` frames at ``bitrate`` bits/s (CBR),
    whose pts count in ``time_base`` (rate control spreads the bits by them)."""
    codec = av.CodecContext.create(spec.name, "w")
    assert isinstance(codec, VideoCodecContext)
    codec.width, codec.height = width, height
    codec.pix_fmt = spec.pix_fmt
    codec.bit_rate = bitrate
    codec.time_base = time_base
    codec.framerate = Fraction(FRAME_RATE, 1)
    codec.gop_size = KEYFRAME_EVERY
    # Constant bitrate with a one-second buffer, as aiortc does: the sender's estimate is
    # what the path carries, and overshooting it queues packets (latency) or loses them.
    options = {"minrate": str(bitrate), "maxrate": str(bitrate), "bufsize": str(bitrate)}
    codec.options = {**options, **spec.options}
    codec.thread_count = number_of_threads(width * height, os.cpu_count() or 1)
    codec.open()
    return codec


def probe(spec: EncoderSpec) -> str | None:
    """None when ``spec`` opens and encodes a small frame here; else why not, in a few words."""
    try:
        codec = open_codec(spec, 256, 144, 500_000)
        codec.encode(av.VideoFrame(256, 144, "yuv420p").reformat(format=spec.pix_fmt))
    except (av.FFmpegError, ValueError, OSError) as exc:
        return f"{spec.name}: {type(exc).__name__}: {str(exc)[:120]}"
    return None


@dataclass(frozen=True, slots=True)
class EncoderChoice:
    """The codec the server prefers and the encoder for each codec, with the reasons."""

    codec: VideoCodec
    "Preferred in every answer; the other is used when a browser offers only that one."
    specs: Mapping[VideoCodec, EncoderSpec]
    passed_over: tuple[str, ...] = ()
    "Hardware encoders that did not open, and why."

    def spec(self, codec: VideoCodec) -> EncoderSpec:
        """The encoder for a negotiated ``codec``."""
        return self.specs[codec]


#: Software only, nothing probed: what sessions use unless the server chose otherwise.
SOFTWARE = EncoderChoice("h264", {"vp8": VP8_SOFTWARE, "h264": H264_SOFTWARE})


def choose_encoder(codec: VideoCodecChoice = "auto", hardware: bool = True) -> EncoderChoice:
    """What the server encodes with: H.264 preferred (``codec`` auto), by the first
    hardware encoder that opens (unless ``hardware`` is False), else by libx264."""
    failures: list[str] = []
    h264 = H264_SOFTWARE
    for spec in H264_HARDWARE if hardware else ():
        reason = probe(spec)
        if reason is None:
            h264 = spec
            break
        failures.append(reason)
    preferred: VideoCodec = "h264" if codec == "auto" else codec
    choice = EncoderChoice(preferred, {"vp8": VP8_SOFTWARE, "h264": h264}, tuple(failures))
    log.info(
        "WebRTC video: %s preferred; %s",
        preferred,
        "; ".join(s.describe() for s in choice.specs.values()),
    )
    if failures:
        log.info("hardware H.264 encoders passed over: %s", "; ".join(failures))
    return choice


class RealtimeEncoder:
    """Encodes a track's frames with one :class:`EncoderSpec`; aiortc's packetiser and
    bitrate bounds come from the aiortc encoder it extends (see the subclasses)."""

    _spec: EncoderSpec
    _codec: VideoCodecContext | None = None

    # From the aiortc encoder each subclass extends: the bitrate the sender's REMB estimate
    # sets (clamped to the codec's range), and the packetiser.
    target_bitrate: int
    pack: Callable[[Packet], tuple[list[bytes], int]]

    def encode(self, frame: Frame, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        """``frame`` as RTP payloads and its 90 kHz timestamp (aiortc's ``Encoder`` contract)."""
        assert isinstance(frame, av.VideoFrame)  # the track is video
        codec = self._codec_for(frame)
        if frame.format.name != self._spec.pix_fmt:
            frame = frame.reformat(format=self._spec.pix_fmt)
        # NONE lets the codec decide (its gop_size makes the periodic keyframes).
        frame.pict_type = av.video.frame.PictureType.I if force_keyframe else av.video.frame.PictureType.NONE
        data = b"".join(bytes(p) for p in codec.encode(frame))
        if not data:
            return [], 0
        packet = Packet(data)
        packet.pts = frame.pts
        if frame.time_base is not None:
            packet.time_base = frame.time_base
        return self.pack(packet)

    def _codec_for(self, frame: av.VideoFrame) -> VideoCodecContext:
        """The open codec, reopened when the size or time base changes or the bitrate moves
        by > 10 %."""
        codec = self._codec
        time_base = frame.time_base or VIDEO_TIME_BASE
        if codec is not None and (
            (codec.width, codec.height) != (frame.width, frame.height)
            or codec.time_base != time_base
            or abs(self.target_bitrate - (codec.bit_rate or 0)) > 0.1 * (codec.bit_rate or 0)
        ):
            codec = None
        if codec is None:
            codec = open_codec(self._spec, frame.width, frame.height, self.target_bitrate, time_base)
            self._codec = codec
        return codec


class RealtimeVp8Encoder(RealtimeEncoder, Vp8Encoder):
    """VP8 RTP payloads (aiortc's packetiser and picture ids) from ``spec``'s encoder."""

    def __init__(self, spec: EncoderSpec) -> None:
        Vp8Encoder.__init__(self)
        self._spec = spec


class RealtimeH264Encoder(RealtimeEncoder, H264Encoder):
    """H.264 RTP payloads (aiortc's NAL packetiser) from ``spec``'s encoder."""

    def __init__(self, spec: EncoderSpec) -> None:
        H264Encoder.__init__(self)
        self._spec = spec


def make_encoder(spec: EncoderSpec) -> RealtimeEncoder:
    """A fresh encoder for one outgoing track."""
    return RealtimeVp8Encoder(spec) if spec.codec == "vp8" else RealtimeH264Encoder(spec)


#: Where aiortc's sender keeps its encoder (made on the first frame when still None).
_SENDER_ENCODER = "_RTCRtpSender__encoder"


def use_encoder(sender: RTCRtpSender, encoder: RealtimeEncoder) -> bool:
    """Make ``sender`` encode with ``encoder``; False (aiortc's own stays) if this aiortc
    keeps its encoder elsewhere or has already made one. Call after the answer, before the
    first frame is sent."""
    if getattr(sender, _SENDER_ENCODER, False) is not None:
        log.warning("cannot set the WebRTC encoder on this aiortc version; aiortc's own settings stay in use")
        return False
    setattr(sender, _SENDER_ENCODER, encoder)
    return True


def codec_order(codec: VideoCodec) -> list[RTCRtpCodecCapability]:
    """aiortc's video codecs with ``codec`` (and its retransmission) first: the order for
    ``RTCRtpTransceiver.setCodecPreferences``. Only the order changes, so a browser that
    does not offer ``codec`` agrees on another."""
    codecs = RTCRtpSender.getCapabilities("video").codecs
    first = [c for c in codecs if c.mimeType.lower() == f"video/{codec}"]
    return first + [c for c in codecs if c not in first]


_RTPMAP = re.compile(r"a=rtpmap:(\d+) ([\w-]+)/", re.IGNORECASE)


def negotiated_codec(sdp: str) -> VideoCodec | None:
    """The codec an answer's first video section sends with (its first payload type)."""
    section: list[str] = []
    for line in sdp.splitlines():
        if line.startswith("m="):
            if section:
                break
            if line.startswith("m=video"):
                section = [line]
        elif section:
            section.append(line)
    if not section or len(section[0].split(" ")) < 4:
        return None
    first = section[0].split(" ")[3]
    names = {m.group(1): m.group(2).lower() for m in map(_RTPMAP.match, section) if m}
    return _CODECS.get(names.get(first, ""))


_CODECS: dict[str, VideoCodec] = {"vp8": "vp8", "h264": "h264"}
