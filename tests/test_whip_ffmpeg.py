"""An independent WHIP client against ``/whip``: FFmpeg's own WHIP muxer, through PyAV.

What this shows (and the README's WHIP section says): FFmpeg's muxer as shipped in PyAV's
wheels (FFmpeg built with GnuTLS) makes its DTLS certificate on the P-224 curve. OpenSSL 4,
which aiortc uses through ``cryptography``, no longer negotiates P-224, so the handshake
ends with an ``illegal_parameter`` alert whichever side is the DTLS client. Given a P-256
certificate (FFmpeg's ``cert_file``/``key_file`` options, as FFmpeg's OpenSSL build makes by
itself), FFmpeg publishes and the session swaps its frames.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from livefuse.app import Engine
from livefuse.config import load_settings
from livefuse.testing.fakecam import face_clip
from livefuse.web import media
from tests.threaded_server import serving_in_thread

pytestmark = pytest.mark.skipif("whip" not in av.formats_available, reason="this FFmpeg has no WHIP muxer")


@pytest.fixture(autouse=True)
def loopback_ice(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let aioice gather 127.0.0.1 only: the test stays on this machine."""
    import aioice.ice

    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4=True, use_ipv6=True: ["127.0.0.1"])


@pytest.fixture(scope="module")
def engine(livefuse_home: Path):
    with Engine(load_settings({"home": str(livefuse_home)}, env={})) as engine:
        yield engine


def p256_certificate(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "whip-client")])
    now = time.time()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(__import__("datetime").datetime.fromtimestamp(now - 60))
        .not_valid_after(__import__("datetime").datetime.fromtimestamp(now + 86400))
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = directory / "key.pem", directory / "cert.pem"
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


#: The publisher, run in a process of its own: PyAV holds the GIL while FFmpeg's WHIP muxer
#: talks HTTP and ICE, which would stall a server in the same process.
PUBLISH = """
import sys, time
from fractions import Fraction
import logging
import av, cv2
logging.basicConfig(level=logging.ERROR)  # FFmpeg's own errors (libav.*) on stderr
av.logging.set_level(av.logging.ERROR)
url, image_path, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
options = dict(a.split("=", 1) for a in sys.argv[4:])
image = cv2.imread(image_path)
with av.open(url, mode="w", format="whip", options={"handshake_timeout": "10000", **options}) as out:
    stream = out.add_stream("libx264", rate=30)
    stream.width, stream.height, stream.pix_fmt = image.shape[1], image.shape[0], "yuv420p"
    stream.options = {"preset": "ultrafast", "tune": "zerolatency", "profile": "baseline", "g": "30"}
    start = time.monotonic()
    for i in range(count):
        frame = av.VideoFrame.from_ndarray(image, format="bgr24")
        frame.pts, frame.time_base = i, Fraction(1, 30)
        out.mux(stream.encode(frame))
        time.sleep(max(0.0, start + (i + 1) / 30 - time.monotonic()))
    out.mux(stream.encode())
"""


def publish(url: str, image: Path, count: int, options: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Push ``image`` ``count`` times at 30 fps with FFmpeg's WHIP muxer (H.264 baseline, as OBS sends)."""
    argv = [sys.executable, "-c", PUBLISH, url, str(image), str(count), *(f"{k}={v}" for k, v in options.items())]
    return subprocess.run(argv, capture_output=True, text=True, timeout=90)


class Returned:
    """Keeps the last processed frames the sessions' pipelines hand to their outputs."""

    def __init__(self) -> None:
        self.images: list[np.ndarray] = []
        self.lock = threading.Lock()

    def wrap(self, send):  # type: ignore[no-untyped-def]
        def keep(sink, frame):  # type: ignore[no-untyped-def]
            with self.lock:
                self.images = [*self.images[-9:], frame.image.copy()]
            return send(sink, frame)

        return keep


def blurred_diff(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    a, b = (cv2.GaussianBlur(x, (0, 0), 2).astype(np.int16) for x in (a, b))
    return float(np.abs(a - b)[mask].mean())


def test_ffmpeg_whip_muxer_publishes_and_is_swapped(engine, livefuse_home, tmp_path, monkeypatch):
    portrait = cv2.imread(str(livefuse_home / "samples" / "obama.jpg"))
    still = np.ascontiguousarray(face_clip(portrait, (640, 480), 1)[0])
    cv2.imwrite(str(tmp_path / "still.png"), still)
    box = engine.detector().detect(still).boxes[0].astype(int)
    returned = Returned()
    monkeypatch.setattr(media.HubSink, "send", returned.wrap(media.HubSink.send))
    key, cert = p256_certificate(tmp_path)
    with serving_in_thread(engine, load_settings({"home": str(livefuse_home)}, env={})) as server:
        result = publish(
            f"{server.url}/whip", tmp_path / "still.png", 90, {"cert_file": str(cert), "key_file": str(key)}
        )
    assert result.returncode == 0, result.stderr[-2000:]
    with returned.lock:
        images = list(returned.images)
    assert len(images) >= 5, "the session processed too few frames"
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    inner = np.zeros(still.shape[:2], bool)
    inner[y0 + h // 5 : y1 - h // 5, x0 + w // 5 : x1 - w // 5] = True
    outer = np.ones_like(inner)
    outer[max(y0 - h // 3, 0) : y1 + h // 3, max(x0 - w // 3, 0) : x1 + w // 3] = False
    cv2.imwrite(str(tmp_path / "returned.png"), images[-1])
    assert blurred_diff(images[-1], still, outer) < 8, "outside the face the frame must stay as sent"
    assert blurred_diff(images[-1], still, inner) > 10, "the face must be swapped"


def test_ffmpeg_whip_muxer_with_its_own_certificate_fails_in_dtls(engine, livefuse_home, tmp_path):
    """FFmpeg's GnuTLS build makes a P-224 DTLS certificate, which OpenSSL 4 refuses: when this
    starts to pass, FFmpeg (or PyAV's build of it) has changed and the README can drop the workaround."""
    portrait = cv2.imread(str(livefuse_home / "samples" / "obama.jpg"))
    cv2.imwrite(str(tmp_path / "still.png"), np.ascontiguousarray(face_clip(portrait, (640, 480), 1)[0]))
    with serving_in_thread(engine, load_settings({"home": str(livefuse_home)}, env={})) as server:
        result = publish(f"{server.url}/whip", tmp_path / "still.png", 15, {})
    assert result.returncode != 0 and "DTLS session failed" in result.stderr
