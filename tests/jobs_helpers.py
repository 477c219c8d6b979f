"""Helpers for the job-service tests: real ``livefuse`` processes, short clips, checks."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np

from livefuse.jobs.client import JobsClient

REPO = Path(__file__).resolve().parents[1]
_URL = re.compile(r"open (http://127\.0\.0\.1:\d+)/")
_LOOPBACK_LAUNCH = (
    "import sys, aioice.ice; "
    "aioice.ice.get_host_addresses = lambda use_ipv4=True, use_ipv6=True: ['127.0.0.1']; "
    "from livefuse.cli import main; sys.exit(main(sys.argv[1:]))"
)


def make_clip(demo: Path, out: Path, frames: int, size: tuple[int, int] = (480, 270)) -> Path:
    """The first ``frames`` frames of the demo clip (one face), scaled down: a short job."""
    cap = cv2.VideoCapture(str(demo))
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), 30, size)
    for _ in range(frames):
        ok, frame = cap.read()
        assert ok
        writer.write(cv2.resize(frame, size, interpolation=cv2.INTER_AREA))
    writer.release()
    cap.release()
    return out


def read_video(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames


def livefuse_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEFUSE_")}
    env["LIVEFUSE_HOME"] = str(home)
    if "LIVEFUSE_STATE_DIR" in os.environ:  # each test's own audit log and certificate
        env["LIVEFUSE_STATE_DIR"] = os.environ["LIVEFUSE_STATE_DIR"]
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Proc:
    """A ``livefuse`` subprocess with its output in a log file."""

    def __init__(self, args: list[str], home: Path, log: Path, loopback_ice: bool = False) -> None:
        self.log = log
        self._fh = log.open("ab")
        # aioice leaves 127.0.0.1 out of its candidates; a live-session test's worker must offer it.
        launch = ["-c", _LOOPBACK_LAUNCH, *args] if loopback_ice else ["-m", "livefuse", *args]
        self.popen = subprocess.Popen(
            [sys.executable, *launch],
            env=livefuse_env(home),
            cwd=REPO,
            stdout=self._fh,
            stderr=subprocess.STDOUT,
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 60.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = list(re.finditer(pattern, self.text()))
            if found:
                return found[-1]
            if self.popen.poll() is not None:
                raise AssertionError(f"livefuse exited with {self.popen.returncode}:\n{self.text()[-3000:]}")
            time.sleep(0.1)
        raise AssertionError(f"no {pattern!r} within {timeout} s:\n{self.text()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self._fh.close()
        return self.popen.returncode


@contextmanager
def serving(
    home: Path, tmp: Path, *extra: str, name: str = "serve", loopback_ice: bool = False
) -> Iterator[tuple[Proc, JobsClient]]:
    """``livefuse serve`` on a free port with its job table and files under ``tmp``."""
    args = ["serve", "--port", "0", "--job-db", str(tmp / "jobs.sqlite3"), *extra]
    if "--storage" not in extra:
        args += ["--storage", str(tmp / "files")]
    proc = Proc(args, home, tmp / f"{name}.log", loopback_ice)
    try:
        url = proc.wait_for(_URL.pattern).group(1)
        yield proc, JobsClient(url)
    finally:
        proc.stop()


def wait_state(
    client: JobsClient, job_id: str, states: set[str], timeout: float = 120.0, done_at_least: int = 0
) -> dict:
    """Poll until the job is in one of ``states`` (with ``done_at_least`` frames written)."""
    deadline = time.monotonic() + timeout
    job = client.get(job_id)
    while time.monotonic() < deadline:
        job = client.get(job_id)
        if job["state"] in states and job["progress"]["done"] >= done_at_least:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {job['state']} ({job['progress']}) after {timeout} s")


def face_changed(original: np.ndarray, swapped: np.ndarray) -> float:
    """Mean absolute difference over the frames: a swapped face moves it well above codec noise."""
    return float(np.mean(cv2.absdiff(original, swapped)))


@contextmanager
def redis_server(tmp: Path) -> Iterator[str]:
    """A private redis-server on a unix socket in ``tmp``; yields its URL. In CI a missing
    server fails the test (.ci/run installs it); elsewhere the test is skipped."""
    import pytest

    server = shutil.which("redis-server")
    if server is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is missing: apt-get install redis-server (.ci/run does this)")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    sock = tmp / "redis.sock"
    proc = subprocess.Popen(
        [server, "--port", "0", "--unixsocket", str(sock), "--save", "", "--appendonly", "no", "--dir", str(tmp)],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():
            assert time.monotonic() < deadline and proc.poll() is None, "redis-server did not start"
            time.sleep(0.05)
        yield f"unix://{sock}"
    finally:
        proc.terminate()
        proc.wait(10)


@contextmanager
def queue_mode(home: Path, tmp: Path, url: str, workers: int) -> Iterator[tuple[list[Proc], JobsClient, Path]]:
    """``workers`` × ``livefuse worker`` and a ``livefuse serve --queue`` sharing ``tmp/shared``."""
    storage = tmp / "shared"
    storage.mkdir()
    procs: list[Proc] = []
    try:
        for i in range(workers):
            procs.append(Proc(["worker", "--queue", url, "--storage", str(storage)], home, tmp / f"worker{i}.log"))
        for proc in procs:
            proc.wait_for(r"livefuse worker \S+: ready")
        with serving(home, tmp, "--queue", url, "--storage", str(storage)) as (_server, client):
            yield procs, client, storage
    finally:
        for proc in procs:
            proc.stop()
