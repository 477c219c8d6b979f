"""Content credentials (C2PA) on the files livefuse writes, ``livefuse verify``, and the live label."""

from __future__ import annotations

import datetime as dt
import sys
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from livefuse.cli import main
from livefuse.frame import Frame
from livefuse.io.sinks import VideoFileSink
from livefuse.pipeline.stages import SourceInfo
from livefuse.provenance import DEFAULT_LABEL
from livefuse.provenance.label import LabelSink, render_label

pytest.importorskip("c2pa", reason="the provenance extra is not installed")
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: E402

from livefuse.provenance.certs import self_signed_key  # noqa: E402
from livefuse.provenance.credentials import OutputFacts, SigningKey, sign_output, verify_file  # noqa: E402

FACTS = OutputFacts("inswapper_128", options={"faces": "many"})


def _name(common: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, common), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test Studio")]
    )


def _usage(sign: bool, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _certificate(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    ca: bool,
) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(_usage(sign=not ca, ca=ca), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    )
    if not ca:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def operator(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An operator's certificate chain (leaf, then a CA made here) and key, as PEM files."""
    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _certificate(_name("Test Root CA"), ca_key, _name("Test Root CA"), ca_key, ca=True)
    leaf = _certificate(_name("Test Operator"), leaf_key, ca.subject, ca_key, ca=False)
    directory = tmp_path_factory.mktemp("operator")
    cert, key = directory / "chain.pem", directory / "key.pem"
    cert.write_bytes(leaf.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert, key


def _picture() -> np.ndarray:
    y, x = np.mgrid[0:240, 0:320]
    return np.dstack([x % 256, y % 256, (x + y) % 256]).astype(np.uint8)


def _write_mp4(path: Path, frames: int = 12) -> None:
    info = SourceInfo(320, 240, 30.0, live=False, time_base=Fraction(1, 30))
    with VideoFileSink(path) as sink:
        sink.open(info)
        for i in range(frames):
            sink.send(Frame(index=i, pts=i, time_base=Fraction(1, 30), capture_ns=0, image=np.roll(_picture(), i, 1)))


def _unsigned(directory: Path, suffix: str) -> Path:
    path = directory / f"made{suffix}"
    if suffix == ".mp4":
        _write_mp4(path)
    else:
        assert cv2.imwrite(str(path), _picture())
    return path


def _picture_byte(data: bytes, suffix: str) -> int:
    """An offset inside the picture data itself (not the container's or the manifest's bytes)."""
    if suffix == ".jpg":
        at = data.rfind(b"\xff\xda") + 60  # the main image's scan comes after the manifest's thumbnail
    elif suffix == ".png":
        at = data.rfind(b"IDAT") + 40
    else:
        at = data.find(b"mdat") + 400
    while data[at] in (0xFE, 0xFF, 0x00):  # keep JPEG markers and byte stuffing intact: pixels change, not syntax
        at += 1
    return at


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".mp4"])
def test_signed_file_verifies_and_says_who_and_what(tmp_path, operator, suffix, capsys):
    path = _unsigned(tmp_path, suffix)
    sign_output(path, FACTS, SigningKey.load(*operator))
    verdict = verify_file(path)
    assert verdict.state == "valid" and verdict.by_livefuse and not verdict.trusted  # private CA: untrusted
    assert (verdict.signer, verdict.issuer) == ("Test Operator", "Test Studio")
    assert verdict.signed_at is not None and verdict.signed_at.startswith(str(dt.date.today().year))
    assert any("compositeWithTrainedAlgorithmicMedia" in a and "swapper=inswapper_128" in a for a in verdict.actions)
    assert main(["verify", str(path)]) == 0
    assert "VALID" in capsys.readouterr().out
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "a temporary file was left behind"
    if suffix == ".png":  # the pixels are untouched by signing
        assert np.array_equal(cv2.imread(str(path)), _picture())
    if suffix == ".mp4":
        with av.open(str(path)) as container:
            assert sum(1 for _ in container.decode(video=0)) == 12


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".mp4"])
def test_one_changed_picture_byte_makes_the_credentials_invalid(tmp_path, operator, suffix, capsys):
    path = _unsigned(tmp_path, suffix)
    sign_output(path, FACTS, SigningKey.load(*operator))
    data = bytearray(path.read_bytes())
    data[_picture_byte(data, suffix)] ^= 0x01
    path.write_bytes(bytes(data))
    verdict = verify_file(path)
    assert verdict.state == "invalid"
    assert any("mismatch" in p for p in verdict.problems)
    assert main(["verify", str(path)]) == 2
    assert "INVALID" in capsys.readouterr().out


def test_file_without_credentials_exits_1_and_unreadable_format_exits_3(tmp_path, capsys):
    assert main(["verify", str(_unsigned(tmp_path, ".png"))]) == 1
    assert "no content credentials" in capsys.readouterr().out
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    assert main(["verify", str(other)]) == 3
    assert main(["verify", str(tmp_path / "missing.mp4")]) == 3


def test_self_signed_certificate_is_made_once_and_kept_private(tmp_path):
    first = self_signed_key(tmp_path)
    assert self_signed_key(tmp_path) == first  # reused, not remade
    key_file = tmp_path / "credentials" / "livefuse-signer.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    path = _unsigned(tmp_path, ".jpg")
    sign_output(path, FACTS, first)
    assert verify_file(path).state == "valid"


def test_sink_signs_before_the_file_appears(tmp_path, operator):
    key = SigningKey.load(*operator)
    seen: list[tuple[bool, bool]] = []

    def seal(tmp: Path, final: Path) -> None:
        sign_output(tmp, FACTS, key, title=final.name)
        seen.append((tmp.exists(), final.exists()))

    path = tmp_path / "recording.mp4"
    info = SourceInfo(320, 240, 30.0, live=False, time_base=Fraction(1, 30))
    with VideoFileSink(path, seal=seal) as sink:
        sink.open(info)
        sink.send(Frame(index=0, pts=0, time_base=Fraction(1, 30), capture_ns=0, image=_picture()))
    assert seen == [(True, False)]  # signed under its temporary name; the output did not exist yet
    assert verify_file(path).state == "valid"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recording.mp4"]


def _run(home: Path, out: Path, *extra: str) -> int:
    photo = str(home / "samples" / "biden.jpg")
    return main(
        ["run", "--source", photo, "--input", str(home / "samples" / "obama.jpg"), "--output", str(out), *extra]
    )


def test_run_signs_its_output_with_the_operators_certificate(cli_home, tmp_path, operator, capsys):
    out = tmp_path / "swapped.mp4"
    assert _run(cli_home, out, "--sign-cert", str(operator[0]), "--sign-key", str(operator[1])) == 0
    capsys.readouterr()
    assert main(["verify", str(out)]) == 0
    assert "signed by: Test Operator" in capsys.readouterr().out


def test_run_signs_with_a_self_signed_certificate_by_default(cli_home, tmp_path, private_state_dir):
    out = tmp_path / "swapped.mp4"
    assert _run(cli_home, out) == 0
    assert (private_state_dir / "credentials" / "livefuse-signer.pem").is_file()
    verdict = verify_file(out)
    assert verdict.state == "valid" and verdict.issuer == "livefuse (self-signed)"


def test_no_credentials_writes_an_unsigned_file_with_a_warning(cli_home, tmp_path, caplog):
    out = tmp_path / "plain.mp4"
    assert _run(cli_home, out, "--no-credentials") == 0
    assert "content credentials are off" in caplog.text
    assert main(["verify", str(out)]) == 1


def test_a_bad_signing_key_stops_the_run_before_any_work(cli_home, tmp_path, operator, caplog):
    bad = tmp_path / "key.pem"
    bad.write_text("not a key")
    out = tmp_path / "o.mp4"
    assert _run(cli_home, out, "--sign-cert", str(operator[0]), "--sign-key", str(bad)) == 1
    assert "not an unencrypted PEM private key" in caplog.text
    assert not out.exists()
    assert _run(cli_home, out, "--sign-cert", str(operator[0])) == 2  # a certificate without its key
    assert "--sign-key" in caplog.text


def test_label_patch_goes_into_the_corner_only():
    image = np.full((720, 1280, 3), 128, np.uint8)
    sink = LabelSink()
    sink.open(SourceInfo(1280, 720, 30.0, live=True, time_base=Fraction(1, 90000)))
    sink.send(Frame(index=0, pts=0, time_base=Fraction(1, 30), capture_ns=0, image=image))
    changed = np.argwhere((image != 128).any(axis=2))
    (top, left), (bottom, right) = changed.min(axis=0), changed.max(axis=0)
    assert left < 40 and bottom > 680  # bottom-left corner
    assert (bottom - top) * (right - left) < 0.02 * 1280 * 720  # a small label, under 2% of the frame
    assert (image[top:bottom, left:right] > 240).all(axis=2).sum() > 50  # white text is there
    assert render_label(DEFAULT_LABEL, 720).shape[0] == bottom - top + 1


def test_cam_records_the_label_on_its_output(cli_home, tmp_path):
    """A live run with --label: the recording carries the label's pixels (and credentials)."""
    clip = tmp_path / "camera.mp4"
    _write_mp4(clip, frames=15)
    out = tmp_path / "recorded.mp4"
    code = main(
        [
            "cam",
            "--source",
            str(cli_home / "samples" / "biden.jpg"),
            "--camera",
            str(clip),
            "--record",
            str(out),
            "--label",
            "--seconds",
            "20",
        ]
    )
    assert code == 0
    with av.open(str(out)) as container:
        frame = next(container.decode(video=0)).to_ndarray(format="bgr24")
    patch = render_label(DEFAULT_LABEL, 240)
    margin = 4  # the label sits 4 px from the left and bottom edges of a 240-line frame
    corner = frame[240 - margin - patch.shape[0] : 240 - margin, margin : margin + patch.shape[1]].astype(int)
    assert np.abs(corner - patch).mean() < 12  # the label, through H.264
    above = frame[: 240 - margin - patch.shape[0] - 8].astype(int)  # the rest: the camera's picture
    assert np.abs(above - _picture()[: above.shape[0]]).mean() < 12
    cv2.imwrite(str(tmp_path / "labelled.png"), frame)
    assert verify_file(out).state == "valid"


def test_without_the_extra_run_says_how_to_turn_credentials_on(cli_home, tmp_path, monkeypatch, caplog):
    out = tmp_path / "plain.mp4"
    with monkeypatch.context() as patched:
        patched.setitem(sys.modules, "c2pa", None)  # as if the provenance extra were not installed
        assert _run(cli_home, out) == 0
    assert 'pip install "livefuse[provenance]"' in caplog.text
    assert verify_file(out).state == "none"
