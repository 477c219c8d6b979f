"""The CLI under bad input, odd files and signals: exit code, message, no traceback, nothing left behind.

Each case is what a user would try; the table in the module's cases is the one the
docs quote (exit code, the words of the message).
"""

from __future__ import annotations

import http.server
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from livefuse.cli import main


@pytest.fixture
def home(cli_home):
    """The shared ``cli_home`` (LIVEFUSE_HOME set, no config file), by this module's name."""
    return cli_home


@pytest.fixture
def photo(home) -> str:
    return str(home / "samples" / "biden.jpg")


def write_clip(
    path: Path, frames: int, size: tuple[int, int], codec: str = "mpeg4", source: Path | None = None
) -> Path:
    """A clip of the demo video's frames resized to ``size`` (w, h)."""
    cap = cv2.VideoCapture(str(source)) if source else None
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=30)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(frames):
            if cap is not None:
                ok, image = cap.read()
                assert ok
                image = cv2.resize(image, size)
            else:
                image = np.full((size[1], size[0], 3), (i * 5) % 255, np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")))
        out.mux(stream.encode())
    if cap is not None:
        cap.release()
    return path


@pytest.fixture(scope="module")
def clip(livefuse_home, tmp_path_factory) -> Path:
    """30 frames of the demo clip at 320x180, MPEG-4."""
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    return write_clip(path, 30, (320, 180), source=livefuse_home / "samples" / "demo.mp4")


def frames_in(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]


def leftovers(directory: Path, keep: set[str]) -> list[str]:
    """Files in ``directory`` other than ``keep`` (temporary files included)."""
    return sorted(p.name for p in directory.iterdir() if p.name not in keep)


def no_traceback(capsys, caplog) -> None:
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out + caplog.text


# -- image in, image out ------------------------------------------------------------------------


@pytest.mark.parametrize("ext, magic", [(".png", b"\x89PNG"), (".jpg", b"\xff\xd8\xff"), (".webp", b"RIFF")])
def test_image_in_gives_a_real_image_of_the_same_size(photo, tmp_path, ext, magic, capsys, caplog):
    out = tmp_path / f"out{ext}"
    assert main(["run", "--source", photo, "--input", photo, "--output", str(out)]) == 0
    assert out.read_bytes()[: len(magic)] == magic
    original, swapped = cv2.imread(photo), cv2.imread(str(out))
    assert swapped is not None and swapped.shape == original.shape
    assert leftovers(tmp_path, {out.name}) == []
    no_traceback(capsys, caplog)


def with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """``jpeg`` with an EXIF APP1 segment holding only the orientation tag."""
    tiff = b"MM\x00*\x00\x00\x00\x08" + struct.pack(">H", 1) + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0)
    tiff += struct.pack(">I", 0)
    app1 = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpeg[2:]


def test_exif_orientation_is_honoured(photo, tmp_path):
    stored = cv2.imread(photo)
    # Stored turned a quarter to the left, with the tag saying "turn right to view": upright on screen.
    turned = np.ascontiguousarray(np.rot90(stored))
    ok, jpeg = cv2.imencode(".jpg", turned, [cv2.IMWRITE_JPEG_QUALITY, 95])
    tagged = tmp_path / "phone.jpg"
    tagged.write_bytes(with_exif_orientation(jpeg.tobytes(), 6))
    out = tmp_path / "out.png"
    assert main(["run", "--source", photo, "--input", str(tagged), "--output", str(out)]) == 0
    result = cv2.imread(str(out), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    assert result.shape == stored.shape  # upright, as the viewer showed it
    # The face was found and swapped: the picture differs from the (upright) input.
    upright = cv2.imread(str(tagged))
    assert upright.shape == stored.shape
    changed = (np.abs(result.astype(int) - upright.astype(int)) > 8).any(axis=2)
    assert changed.mean() > 0.005  # the face is ~5 % of this tall photo


def test_odd_sized_video_keeps_its_exact_size(photo, home, tmp_path):
    odd = write_clip(tmp_path / "odd.mp4", 6, (321, 181), source=home / "samples" / "demo.mp4")
    out = tmp_path / "out.mp4"
    assert main(["run", "--source", photo, "--input", str(odd), "--output", str(out)]) == 0
    frames = frames_in(out)
    assert len(frames) == 6 and frames[0].shape == (181, 321, 3)


# -- outputs refused up front ----------------------------------------------------------------


def test_output_equal_to_input_is_refused_and_input_kept(photo, clip, tmp_path, caplog, capsys):
    video = tmp_path / "mine.mp4"
    video.write_bytes(clip.read_bytes())
    before = video.read_bytes()
    link = tmp_path / "link.mp4"
    link.symlink_to(video)
    for output in (video, link):
        assert main(["run", "--source", photo, "--input", str(video), "--output", str(output)]) == 1
        assert "would replace the original" in caplog.text
    assert video.read_bytes() == before
    assert leftovers(tmp_path, {"mine.mp4", "link.mp4"}) == []
    no_traceback(capsys, caplog)


@pytest.mark.parametrize(
    "output, message",
    [
        ("{tmp}", "is an existing directory"),
        ("{tmp}/missing/out.mp4", "does not exist"),
        ("/proc/livefuse-out.mp4", "no file can be created"),
    ],
)
def test_unwritable_outputs_are_refused_before_any_work(photo, clip, tmp_path, caplog, capsys, output, message):
    start = time.monotonic()
    code = main(["run", "--source", photo, "--input", str(clip), "--output", output.format(tmp=tmp_path)])
    assert code == 1 and message in caplog.text
    assert time.monotonic() - start < 10  # refused before the models load or a frame is decoded
    assert leftovers(tmp_path, set()) == []
    no_traceback(capsys, caplog)


def test_video_to_image_is_refused(photo, clip, tmp_path, caplog):
    assert main(["run", "--source", photo, "--input", str(clip), "--output", str(tmp_path / "o.png")]) == 1
    assert "use a video name" in caplog.text
    assert leftovers(tmp_path, set()) == []


# -- damaged and remote inputs ---------------------------------------------------------------


def test_damaged_packets_are_skipped_and_counted(photo, tmp_path, capsys):
    good = write_clip(tmp_path / "good.mp4", 90, (320, 240))
    data = bytearray(good.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 200] = np.random.default_rng(50).integers(0, 255, 200, dtype=np.uint8).tobytes()
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(bytes(data))
    out = tmp_path / "out.mp4"
    assert main(["run", "--source", photo, "--input", str(damaged), "--output", str(out)]) == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    written = len(frames_in(out))
    assert written >= 85  # FFmpeg itself decodes 89 of these 90
    assert "damaged frames skipped" in summary and f"{written} out" in summary


@pytest.fixture
def http_dir(tmp_path) -> Iterator[tuple[str, Path]]:
    """A plain HTTP server on 127.0.0.1 serving ``tmp_path/www``."""
    root = tmp_path / "www"
    root.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None  # type: ignore[method-assign]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_a_url_is_read_like_a_file(photo, clip, http_dir, tmp_path, capsys):
    base, root = http_dir
    (root / "clip.mp4").write_bytes(clip.read_bytes())
    out = tmp_path / "out.mp4"
    assert main(["run", "--source", photo, "--input", f"{base}/clip.mp4", "--output", str(out)]) == 0
    assert len(frames_in(out)) == 30
    assert "30 in / 30 out / 0 dropped" in capsys.readouterr().out


# -- signals -----------------------------------------------------------------------------------

#: The installed ``livefuse`` command, next to this Python.
LIVEFUSE = str(Path(sys.executable).parent / "livefuse")


def start_run(photo: str, clip: Path, out: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [LIVEFUSE, "run", "--source", photo, "--input", str(clip), "--output", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="module")
def long_clip(livefuse_home, tmp_path_factory) -> Path:
    """300 frames: long enough to still be running when the signal comes."""
    path = tmp_path_factory.mktemp("long") / "long.mp4"
    return write_clip(path, 300, (320, 180), source=livefuse_home / "samples" / "demo.mp4")


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_signal_during_run_leaves_nothing(home, photo, long_clip, tmp_path, signum, code):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = start_run(photo, long_clip, out_dir / "out.mp4")
    try:
        # Wait until frames are being written (the temporary output exists), then signal.
        deadline = time.monotonic() + 120
        while not any(out_dir.iterdir()) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be interrupted"
        time.sleep(0.3)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == code, err
    assert "nothing was written" in err and "Traceback" not in err
    assert leftovers(out_dir, set()) == []


def _stopped(self, *args, **kwargs):
    """A SIGTERM while the face photo is still being prepared (models loaded, no frame yet)."""
    from livefuse.signals import Interrupted

    raise Interrupted(signal.SIGTERM)


def _stopped_in_native_import(self, *args, **kwargs):
    """The same signal landing while a C extension initialises (ONNX Runtime on a cold start):
    it comes out of the import as an ImportError caused by the interrupt."""
    try:
        _stopped(self)
    except KeyboardInterrupt as exc:
        raise ImportError("initialization failed") from exc


@pytest.mark.parametrize("stop", [_stopped, _stopped_in_native_import], ids=["preparing", "native-import"])
def test_a_signal_before_the_first_frame_says_so_too(home, photo, long_clip, tmp_path, monkeypatch, caplog, stop):
    """Stopped before the first frame: the same one line as mid-file, exit 143, no
    traceback, and nothing at the output path."""
    from livefuse.app import Engine

    monkeypatch.setattr(Engine, "swapper", stop)
    out = tmp_path / "out.mp4"
    code = main(["run", "--source", photo, "--input", str(long_clip), "--output", str(out)])
    assert code == 143, caplog.text
    assert "SIGTERM: stopped; nothing was written to" in caplog.text and "Traceback" not in caplog.text
    assert not out.exists() and leftovers(tmp_path, set()) == []


def test_a_real_import_error_is_not_taken_for_a_stop(monkeypatch) -> None:
    from livefuse import commands

    def broken(args, settings):
        raise ImportError("No module named 'aiortc'")

    monkeypatch.setattr(commands, "doctor", broken)
    with pytest.raises(ImportError, match="aiortc"):
        main(["doctor"])


# -- empty and huge images ---------------------------------------------------------------------


def png_claiming(width: int, height: int, depth16: bool = False) -> bytes:
    """A small PNG whose header claims ``width`` x ``height`` (the pixels are never reached)."""
    image = np.zeros((8, 8, 3), np.uint16 if depth16 else np.uint8)
    data = bytearray(cv2.imencode(".png", image)[1].tobytes())
    data[16:24] = struct.pack(">II", width, height)
    return bytes(data)


@pytest.mark.parametrize(
    "role, name, content, message",
    [
        ("input", "empty.png", b"", "empty file (0 bytes)"),
        ("input", "empty.mp4", b"", "cannot read video file"),
        ("source", "empty.jpg", b"", "empty file (0 bytes)"),
        ("input", "huge.png", png_claiming(9000, 9000), "the limit is 64 MP"),
        ("source", "huge.png", png_claiming(20000, 20000), "the limit is 64 MP"),
    ],
)
def test_empty_and_huge_images_are_refused_before_decoding(
    photo, clip, tmp_path, caplog, capsys, role, name, content, message
):
    bad = tmp_path / name
    bad.write_bytes(content)
    source, given = (str(bad), str(clip)) if role == "source" else (photo, str(bad))
    out = tmp_path / "out" / "o.mp4"
    out.parent.mkdir()
    assert main(["run", "--source", source, "--input", given, "--output", str(out)]) == 1
    assert message in caplog.text
    assert leftovers(out.parent, set()) == []
    no_traceback(capsys, caplog)


def test_uploads_are_bounded_by_decoded_memory():
    from livefuse.web.errors import ApiError
    from livefuse.web.uploads import ImageLimits, check_image

    assert check_image(png_claiming(4096, 4096), ImageLimits()) == "png"  # 48 MB decoded: fine
    with pytest.raises(ApiError) as caught:
        check_image(png_claiming(4096, 4096, depth16=True), ImageLimits())  # 96 MB: refused
    assert caught.value.status == 422 and "8-bit" in str(caught.value)


# -- the remaining option and output cases ------------------------------------------------------


def test_a_closed_pipe_on_stdout_ends_quietly(home) -> None:
    """``livefuse models list | head -0``: the reader is gone; no traceback, exit 0."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "livefuse", "models", "list"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0 and "Traceback" not in err and "BrokenPipe" not in err, err


def test_a_model_path_that_is_a_directory_gets_one_line(livefuse_home, tmp_path, monkeypatch, capsys, caplog) -> None:
    home = tmp_path / "home"
    shutil.copytree(livefuse_home / "samples", home / "samples")
    (home / "models" / "centerface.onnx").mkdir(parents=True)  # where the model file should be
    monkeypatch.setenv("LIVEFUSE_HOME", str(home))
    code = main(
        [
            "run",
            "--source",
            str(home / "samples" / "biden.jpg"),
            "--input",
            str(home / "samples" / "obama.jpg"),
            "--output",
            str(tmp_path / "out.png"),
        ]
    )
    assert code == 1
    assert "centerface.onnx is a directory, not a model file" in caplog.text
    assert "livefuse models pull centerface" in caplog.text
    no_traceback(capsys, caplog)
    assert not (tmp_path / "out.png").exists()
