"""Peer connections: creating them and answering offers, with errors a client can act on."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from aiortc import MediaStreamTrack, RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription

from livefuse.web.encoders import EncoderChoice, codec_order, make_encoder, negotiated_codec, use_encoder
from livefuse.web.errors import ApiError

log = logging.getLogger(__name__)

#: Largest SDP accepted (a browser's offer is 3–8 kB).
MAX_SDP_BYTES = 64 * 1024


def new_peer(ice_servers: Sequence[str]) -> RTCPeerConnection:
    """A peer connection using only ``ice_servers`` (none: host candidates only).

    aiortc's default configuration would add a public STUN server; livefuse never
    contacts a third party unless told to.
    """
    servers = [RTCIceServer(urls=url) for url in ice_servers]
    return RTCPeerConnection(RTCConfiguration(iceServers=servers))


def check_offer_sdp(sdp: object) -> str:
    """``sdp`` if it looks like an SDP offer; else ``ApiError`` 400 saying what is wrong."""
    if not isinstance(sdp, str) or not sdp.strip():
        raise ApiError(400, "the offer has no SDP text; send the browser's localDescription.sdp")
    if len(sdp.encode()) > MAX_SDP_BYTES:
        raise ApiError(413, f"the SDP offer is larger than {MAX_SDP_BYTES // 1024} kB")
    if not sdp.lstrip().startswith("v=0"):
        raise ApiError(400, "the offer is not SDP (it must start with 'v=0')")
    if "m=video" not in sdp:
        raise ApiError(400, "the SDP offer has no video (m=video) section; send a camera or scene")
    return sdp


async def answer_offer(
    pc: RTCPeerConnection,
    sdp: str,
    send: MediaStreamTrack | None = None,
    encoders: EncoderChoice | None = None,
) -> str:
    """Apply the remote offer ``sdp`` to ``pc`` and return the local answer's SDP.

    ``send``, when given, goes back on the offer's video section (the demo page's
    sendrecv, a WHEP viewer's recvonly). ``encoders``, when given, puts its preferred
    codec first and encodes ``send`` with its encoder for the codec agreed on; without
    it aiortc's own encoders run.

    The answer carries every ICE candidate (aiortc gathers before it returns), so no
    trickle ICE is needed. A malformed or unusable offer raises ``ApiError`` 400.
    """
    try:
        if encoders is not None:
            # The offer's video section takes this transceiver, and with it the preference.
            pc.addTransceiver("video", direction="recvonly").setCodecPreferences(codec_order(encoders.codec))
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
    except Exception as exc:  # noqa: BLE001 - aiortc's parser raises many kinds; all are the client's fault
        log.debug("bad offer", exc_info=True)
        raise ApiError(400, f"the SDP offer is malformed or unsupported: {_brief(exc)}") from None
    sender = pc.addTrack(send) if send is not None else None  # reuses the offer's video transceiver
    try:
        await pc.setLocalDescription(await pc.createAnswer())
    except Exception as exc:  # noqa: BLE001 - same: no common codec, bad transport parameters
        log.debug("cannot answer", exc_info=True)
        raise ApiError(400, f"cannot answer the offer ({_brief(exc)}); livefuse takes VP8 or H.264 video") from None
    answer = str(pc.localDescription.sdp)
    codec = negotiated_codec(answer)
    if sender is not None and encoders is not None and codec is not None:
        use_encoder(sender, make_encoder(encoders.spec(codec)))
    return answer


def _brief(exc: Exception) -> str:
    """The exception in one short line, for a client message (never a traceback)."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text[:160]}" if text else type(exc).__name__
