"""The returned stream's encoders: real-time settings that decode back to the picture sent,
keyframes on request, the bitrate the receiver allows, the codec agreed with the peer and
hardware encoders tried before software."""

from __future__ import annotations

import asyncio
import logging
from fractions import Fraction

import av
import cv2
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpCodecParameters, RTCRtpSender, VideoStreamTrack
from aiortc.codecs import depayload, get_decoder
from aiortc.jitterbuffer import JitterFrame

from livefuse.testing.fakecam import face_clip
from livefuse.web.encoders import (
    H264_HARDWARE,
    H264_SOFTWARE,
    SOFTWARE,
    VP8_SOFTWARE,
    EncoderSpec,
    RealtimeEncoder,
    RealtimeH264Encoder,
    RealtimeVp8Encoder,
    choose_encoder,
    codec_order,
    make_encoder,
    negotiated_codec,
    probe,
    use_encoder,
)
from livefuse.web.peers import answer_offer

RTP_CODECS = {
    "vp8": RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96),
    "h264": RTCRtpCodecParameters(
        mimeType="video/H264",
        clockRate=90000,
        payloadType=102,
        parameters={"packetization-mode": "1", "profile-level-id": "42e01f"},
    ),
}


@pytest.fixture(scope="module")
def pictures() -> list[np.ndarray]:
    """A moving face, 640x480: what a webcam sends."""
    portrait = np.full((400, 300, 3), 90, np.uint8)
    cv2.ellipse(portrait, (150, 200), (90, 120), 0, 0, 360, (120, 160, 210), -1)
    cv2.circle(portrait, (115, 170), 12, (40, 40, 40), -1)
    cv2.circle(portrait, (185, 170), 12, (40, 40, 40), -1)
    return face_clip(portrait, (640, 480), 12)


def frame_of(image: np.ndarray, index: int) -> av.VideoFrame:
    frame = av.VideoFrame.from_ndarray(cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420), format="yuv420p")
    frame.pts, frame.time_base = index * 3000, Fraction(1, 90_000)
    return frame


def received(spec: EncoderSpec, payloads: list[bytes], timestamp: int, decoder: object) -> list[np.ndarray]:
    """What a receiver decodes from one frame's RTP payloads."""
    data = b"".join(depayload(RTP_CODECS[spec.codec], p) for p in payloads)
    frames = decoder.decode(JitterFrame(data, timestamp))  # type: ignore[attr-defined]
    return [f.to_ndarray(format="bgr24") for f in frames]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255**2 / max(mse, 1e-9))


@pytest.mark.parametrize("spec", [VP8_SOFTWARE, H264_SOFTWARE], ids=lambda s: s.name)
def test_realtime_encoder_round_trips_every_frame_without_delay(spec: EncoderSpec, pictures: list[np.ndarray]) -> None:
    encoder = make_encoder(spec)
    decoder = get_decoder(RTP_CODECS[spec.codec])
    for index, image in enumerate(pictures):
        payloads, timestamp = encoder.encode(frame_of(image, index))
        # Real time: every frame comes out at once (no lookahead, no B-frames)...
        assert payloads, f"frame {index} was held back by the encoder"
        assert timestamp == index * 3000
        assert all(len(p) <= 1300 for p in payloads), "RTP payloads fit aiortc's packet size"
        # ...and decodes to the picture that went in.
        (back,) = received(spec, payloads, timestamp, decoder)
        assert psnr(back, image) > 30, f"frame {index}: {psnr(back, image):.1f} dB"


@pytest.mark.parametrize("spec", [VP8_SOFTWARE, H264_SOFTWARE], ids=lambda s: s.name)
def test_keyframe_on_request_and_codec_reopened_for_a_new_bitrate(
    spec: EncoderSpec, pictures: list[np.ndarray]
) -> None:
    encoder = make_encoder(spec)
    sizes = [sum(map(len, encoder.encode(frame_of(image, i))[0])) for i, image in enumerate(pictures[:4])]
    first = encoder._codec
    # A receiver that lost a frame asks for a keyframe (PLI): it is several times a delta frame.
    forced = sum(map(len, encoder.encode(frame_of(pictures[4], 4), force_keyframe=True)[0]))
    assert forced > 3 * max(sizes[1:]) and sizes[0] > 3 * max(sizes[1:])
    # The sender lowers the bitrate from the receiver's estimate: a small move keeps the
    # codec, a large one reopens it at the new rate (aiortc's own rule).
    encoder.target_bitrate = int(encoder.target_bitrate * 1.05)
    encoder.encode(frame_of(pictures[5], 5))
    assert encoder._codec is first
    encoder.target_bitrate = int(encoder.target_bitrate * 2)
    encoder.encode(frame_of(pictures[6], 6))
    assert encoder._codec is not first and encoder._codec is not None
    assert encoder._codec.bit_rate == encoder.target_bitrate


def test_codec_order_puts_the_preferred_codec_first_and_keeps_the_rest() -> None:
    everything = RTCRtpSender.getCapabilities("video").codecs
    for codec in ("vp8", "h264"):
        order = codec_order(codec)
        assert order[0].mimeType.lower() == f"video/{codec}"
        assert sorted(map(repr, order)) == sorted(map(repr, everything))


async def offer_from(codecs: list[str]) -> str:
    """An aiortc client's offer sending and receiving video in ``codecs`` only."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    transceiver = pc.addTransceiver(VideoStreamTrack(), direction="sendrecv")
    caps = RTCRtpSender.getCapabilities("video").codecs
    transceiver.setCodecPreferences([c for c in caps if c.mimeType.lower() in {f"video/{n}" for n in codecs}])
    await pc.setLocalDescription(await pc.createOffer())
    sdp = str(pc.localDescription.sdp)
    await pc.close()
    return sdp


@pytest.mark.parametrize(
    ("offered", "preferred", "agreed"),
    [(["vp8", "h264"], "h264", "h264"), (["vp8", "h264"], "vp8", "vp8"), (["vp8"], "h264", "vp8")],
)
def test_answer_agrees_on_the_servers_codec_when_offered_and_encodes_with_it(
    offered: list[str], preferred: str, agreed: str
) -> None:
    async def scenario() -> None:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        choice = choose_encoder(preferred, hardware=False)  # type: ignore[arg-type]
        answer = await answer_offer(pc, await offer_from(offered), VideoStreamTrack(), choice)
        assert negotiated_codec(answer) == agreed
        (transceiver,) = pc.getTransceivers()  # the offer's section took the server's transceiver
        assert transceiver.direction == "sendrecv"
        encoder = transceiver.sender._RTCRtpSender__encoder  # type: ignore[attr-defined]
        assert isinstance(encoder, RealtimeVp8Encoder if agreed == "vp8" else RealtimeH264Encoder)
        await pc.close()

    asyncio.run(scenario())


def test_an_encoder_is_not_replaced_once_aiortc_made_its_own(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        sender = pc.addTransceiver(VideoStreamTrack(), direction="sendonly").sender
        assert use_encoder(sender, make_encoder(VP8_SOFTWARE))
        with caplog.at_level(logging.WARNING):
            assert not use_encoder(sender, make_encoder(H264_SOFTWARE))
        assert "aiortc's own settings stay in use" in caplog.text
        assert isinstance(sender._RTCRtpSender__encoder, RealtimeVp8Encoder)  # type: ignore[attr-defined]
        await pc.close()

    asyncio.run(scenario())


def test_hardware_encoders_are_tried_first_and_software_takes_over_with_reasons() -> None:
    choice = choose_encoder("auto")
    h264 = choice.spec("h264")
    assert choice.codec == "h264" and choice.spec("vp8") == VP8_SOFTWARE
    if h264.hardware:  # a machine with NVENC, Quick Sync, AMF or VideoToolbox
        assert probe(h264) is None
        assert len(choice.passed_over) == [s.name for s in H264_HARDWARE].index(h264.name)
    else:
        assert h264 == H264_SOFTWARE
        assert [r.split(":")[0] for r in choice.passed_over] == [s.name for s in H264_HARDWARE]
    off = choose_encoder("vp8", hardware=False)
    assert off.codec == "vp8" and off.spec("h264") == H264_SOFTWARE and off.passed_over == ()
    assert SOFTWARE.spec("h264").describe() == "h264 (libx264, software)"


def test_a_missing_encoder_is_a_reason_not_a_crash() -> None:
    missing = EncoderSpec("h264", "h264_no_such_encoder", hardware=True)
    reason = probe(missing)
    assert reason is not None and reason.startswith("h264_no_such_encoder:")
    assert isinstance(make_encoder(VP8_SOFTWARE), RealtimeEncoder)
