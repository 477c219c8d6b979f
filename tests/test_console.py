"""What `livefuse run` prints: quiet by default, INFO with -v, one progress line on a terminal."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import av
import numpy as np
import pytest

LIVEFUSE = str(Path(sys.executable).parent / "livefuse")


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("console") / "clip.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=30)
        stream.width, stream.height, stream.pix_fmt = 320, 180, "yuv420p"
        for i in range(60):
            image = np.full((180, 320, 3), i * 4, np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")))
        out.mux(stream.encode())
    return path


def command(home: Path, clip: Path, out: Path, *extra: str) -> list[str]:
    return [
        LIVEFUSE,
        *extra,
        "run",
        "--source",
        str(home / "samples" / "biden.jpg"),
        "--input",
        str(clip),
        "--output",
        str(out),
    ]


def test_quiet_by_default_and_info_with_v(livefuse_home, clip, tmp_path):
    env = {**os.environ, "LIVEFUSE_HOME": str(livefuse_home)}
    env.pop("LIVEFUSE_LOG_LEVEL", None)
    quiet = subprocess.run(
        command(livefuse_home, clip, tmp_path / "a.mp4"), capture_output=True, text=True, env=env, timeout=300
    )
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == ""  # no log lines and, off a terminal, no progress line
    assert len(quiet.stdout.splitlines()) == 1 and "60 in / 60 out" in quiet.stdout
    loud = subprocess.run(
        command(livefuse_home, clip, tmp_path / "b.mp4", "-v"), capture_output=True, text=True, env=env, timeout=300
    )
    assert loud.returncode == 0 and "INFO" in loud.stderr and "DEBUG" not in loud.stderr


def run_on_terminal(argv: list[str], env: dict[str, str], timeout: float = 300) -> tuple[int, str, str]:
    """Run with stderr on a pseudo-terminal (120 columns); (exit code, terminal text, stdout)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=slave, stdin=slave, env=env)
    os.close(slave)
    seen, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        elif proc.poll() is not None:
            break
    os.close(master)
    out = proc.stdout.read().decode() if proc.stdout else ""
    return proc.wait(timeout=30), seen.decode(errors="replace"), out


def test_one_progress_line_with_sane_rates_on_a_terminal(livefuse_home, clip, tmp_path):
    env = {**os.environ, "LIVEFUSE_HOME": str(livefuse_home)}
    code, terminal, out = run_on_terminal(command(livefuse_home, clip, tmp_path / "c.mp4"), env)
    assert code == 0, terminal
    readings = [r for r in terminal.replace("\n", "\r").split("\r") if r.strip()]
    assert readings and all(r.startswith("swapping:") for r in readings), readings
    assert "60/60" in readings[-1]
    rates = [float(m) for m in re.findall(r"([\d.]+) frames/s", terminal)]
    assert rates and max(rates) < 5000, f"implausible rate in {rates}"  # no division by a microsecond
    assert len(out.splitlines()) == 1
