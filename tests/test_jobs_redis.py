"""Redis mode with a real ``redis-server`` (on a unix socket in a temp dir) and two
``livefuse worker`` processes: jobs spread over both, and a worker killed mid-job."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from jobs_helpers import make_clip, queue_mode, read_video, redis_server, wait_state

pytestmark = pytest.mark.slow
pytest.importorskip("rq")


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    with redis_server(tmp_path) as url:
        yield url


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory, livefuse_home: Path) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("clips")
    demo = livefuse_home / "samples" / "demo.mp4"
    return {"short": make_clip(demo, d / "short.mp4", 20), "long": make_clip(demo, d / "long.mp4", 240)}


def test_jobs_spread_over_two_workers_and_a_killed_workers_job_finishes_on_the_other(
    livefuse_home: Path, tmp_path: Path, redis_url: str, clips: dict[str, Path]
) -> None:
    face = livefuse_home / "samples" / "biden.jpg"
    with queue_mode(livefuse_home, tmp_path, redis_url, 2) as (workers, client, storage):
        ids = [client.submit(face, clips["short"], {"keep_mouth": True})["id"] for _ in range(10)]
        finals = [wait_state(client, i, {"succeeded", "failed", "cancelled"}, timeout=240) for i in ids]
        assert [f["state"] for f in finals] == ["succeeded"] * 10, finals
        ran = [{i for i in ids if i in w.text()} for w in workers]
        assert ran[0] and ran[1] and ran[0] | ran[1] == set(ids), ran
        for i in ids:
            assert len(read_video(storage / i / "result.mp4")) == 20

        # kill -9 the worker that runs a long job, mid-job: the other one finishes it.
        long_id = client.submit(face, clips["long"], {})["id"]
        wait_state(client, long_id, {"running"}, done_at_least=30, timeout=120)
        victim = next(w for w in workers if long_id in w.text())
        survivor = next(w for w in workers if w is not victim)
        victim.stop(signal.SIGKILL)
        final = wait_state(client, long_id, {"succeeded", "failed"}, timeout=240)
        assert final["state"] == "succeeded" and final["attempts"] == 2, final
        assert long_id in survivor.text()
        out = client.fetch(long_id, tmp_path / "long-out.mp4")
        assert len(read_video(out)) == 240
        assert sorted(p.name for p in (storage / long_id).iterdir()) == ["result.mp4", "source.jpg", "target.mp4"]


def test_cancel_reaches_a_running_job_on_a_worker_and_sigterm_drains(
    livefuse_home: Path, tmp_path: Path, redis_url: str, clips: dict[str, Path]
) -> None:
    face = livefuse_home / "samples" / "biden.jpg"
    with queue_mode(livefuse_home, tmp_path, redis_url, 1) as (workers, client, storage):
        job_id = client.submit(face, clips["long"], {})["id"]
        wait_state(client, job_id, {"running"}, done_at_least=10, timeout=120)
        t0 = time.monotonic()
        assert client.delete(job_id)["state"] == "cancelled"
        job_dir = storage / job_id
        while any(p.name not in ("source.jpg", "target.mp4") for p in job_dir.iterdir()):
            assert time.monotonic() - t0 < 1.5, list(job_dir.iterdir())
            time.sleep(0.02)
        # The worker is free for the next job.
        again = client.submit(face, clips["short"], {})["id"]
        assert wait_state(client, again, {"succeeded", "failed"}, timeout=120)["state"] == "succeeded"
        assert client.get(job_id)["state"] == "cancelled"

        # SIGTERM mid-job: the worker drains (finishes the job in hand), then exits cleanly.
        last = client.submit(face, clips["long"], {})["id"]
        wait_state(client, last, {"running"}, done_at_least=10, timeout=120)
        workers[0].popen.send_signal(signal.SIGTERM)
        final = wait_state(client, last, {"succeeded", "failed"}, timeout=120)
        assert final["state"] == "succeeded" and final["attempts"] == 1 and final["progress"]["done"] == 240
        assert workers[0].popen.wait(30) == 0
