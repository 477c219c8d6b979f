"""The job service in its embedded mode: real ``livefuse serve`` processes, real uploads over
HTTP and through ``livefuse jobs``, events, Range downloads, cancel, restart, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import cv2
import numpy as np
import pytest
from jobs_helpers import REPO, livefuse_env, make_clip, read_video, serving, wait_state

from livefuse.config import RuntimeSettings, Settings, SwapSettings
from livefuse.errors import ConfigError
from livefuse.jobs.client import JobApiError, JobsClient
from livefuse.jobs.files import JobFiles
from livefuse.jobs.model import Job, JobState, Progress, new_job_id
from livefuse.jobs.options import job_settings
from livefuse.jobs.store import JobStore
from livefuse.samples import DemoClip

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory, livefuse_home: Path) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("clips")
    demo = livefuse_home / "samples" / "demo.mp4"
    return {
        "short": make_clip(demo, d / "short.mp4", 30),
        "long": make_clip(demo, d / "long.mp4", 240),
    }


@pytest.fixture(scope="module")
def face(livefuse_home: Path) -> Path:
    return livefuse_home / "samples" / "biden.jpg"


def face_box(demo_clip: DemoClip, index: int, scale: float) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = demo_clip.faces[index][0].box
    return int(x0 * scale), int(y0 * scale), int(x1 * scale), int(y1 * scale)


def assert_swapped(original: Path, result: Path, demo_clip: DemoClip, frames: int) -> None:
    """Every frame is there, the face changed and the background did not."""
    before, after = read_video(original), read_video(result)
    assert len(after) == frames == len(before)
    for i in (0, frames // 2, frames - 1):
        x0, y0, x1, y1 = face_box(demo_clip, i, before[i].shape[1] / 1280)
        diff = cv2.absdiff(before[i], after[i]).astype(np.float32)
        inside = float(diff[y0:y1, x0:x1].mean())
        outside = float(np.delete(diff, np.s_[y0:y1], axis=0).mean())
        assert inside > 5 and inside > 3 * outside, (i, inside, outside)


def leftovers(storage: Path) -> list[str]:
    return sorted(str(p.relative_to(storage)) for p in storage.rglob("*"))


# -- over HTTP -----------------------------------------------------------------------------------


async def post_job(url: str, fields: dict[str, tuple[str, bytes]], options: str | None = None) -> tuple[int, dict]:
    form = aiohttp.FormData()
    for name, (filename, data) in fields.items():
        form.add_field(name, data, filename=filename, content_type="application/octet-stream")
    if options is not None:
        form.add_field("options", options)
    async with aiohttp.ClientSession() as http, http.post(f"{url}/api/jobs", data=form) as r:
        return r.status, {**await r.json(), "_location": r.headers.get("Location")}


async def follow_events(url: str, job_id: str) -> list[tuple[str, dict]]:
    events, kind = [], "message"
    async with aiohttp.ClientSession() as http, http.get(f"{url}/api/jobs/{job_id}/events") as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        async for raw in r.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event:"):
                kind = line[6:].strip()
            elif line.startswith("data:"):
                events.append((kind, json.loads(line[5:])))
    return events


async def get_range(url: str, job_id: str, first: int, last: int) -> tuple[int, dict, bytes]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{url}/api/jobs/{job_id}/result", headers={"Range": f"bytes={first}-{last}"}) as r,
    ):
        return r.status, dict(r.headers), await r.read()


def test_http_job_runs_with_events_and_range_download(
    livefuse_home: Path, tmp_path: Path, clips: dict[str, Path], face: Path, demo_clip: DemoClip
) -> None:
    import asyncio

    with serving(livefuse_home, tmp_path) as (proc, client):
        url = client.server
        status, job = asyncio.run(
            post_job(
                url,
                {"source": ("me.jpg", face.read_bytes()), "target": ("clip.mp4", clips["short"].read_bytes())},
                json.dumps({"keep_mouth": True}),
            )
        )
        assert status == 202, job
        assert job["state"] == "queued" and job["_location"] == f"/api/jobs/{job['id']}"
        assert job["options"] == {"keep_mouth": True} and job["progress"]["total"] == 30
        events = asyncio.run(follow_events(url, job["id"]))
        states = [e[1]["state"] for e in events if e[0] == "state"]
        assert states[-1] == "succeeded" and "running" in states, events
        done = [e[1]["progress"]["done"] for e in events]
        assert done == sorted(done) and done[-1] == 30
        final = client.get(job["id"])
        assert final["result"] == f"/api/jobs/{job['id']}/result"
        assert final["started"] >= final["created"] and final["finished"] >= final["started"]
        out = client.fetch(job["id"], tmp_path / "out.mp4")
        assert_swapped(clips["short"], out, demo_clip, 30)
        whole = out.read_bytes()
        status, headers, part = asyncio.run(get_range(url, job["id"], 100, 1099))
        assert status == 206 and part == whole[100:1100]
        assert headers["Content-Range"] == f"bytes 100-1099/{len(whole)}"
        assert 'filename="clip-swapped.mp4"' in headers["Content-Disposition"]
        # Like every file livefuse writes, the result carries livefuse's content credentials,
        # and the job is in the audit log with the result's hash.
        from livefuse.audit.log import AuditLog
        from livefuse.audit.records import AUDIT_FILE
        from livefuse.models.files import sha256_file
        from livefuse.provenance.credentials import verify_file

        verdict = verify_file(out)
        assert verdict.state == "valid" and verdict.by_livefuse, verdict
        log = AuditLog(Path(os.environ["LIVEFUSE_STATE_DIR"]) / AUDIT_FILE)
        jobs = [row.record for row in log.rows() if row.record["kind"] == "job"]
        assert jobs and jobs[-1]["outcome"] == "ok", jobs
        assert jobs[-1]["output"]["sha256"] == sha256_file(out), jobs


def test_cli_submit_wait_download_list_and_delete(
    livefuse_home: Path, tmp_path: Path, clips: dict[str, Path], face: Path, demo_clip: DemoClip
) -> None:
    with serving(livefuse_home, tmp_path) as (proc, client):
        out = tmp_path / "cli-out.mp4"
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "livefuse",
                "jobs",
                "submit",
                "--server",
                client.server,
                "--source",
                str(face),
                "--input",
                str(clips["short"]),
                "--option",
                "keep_mouth=true",
                "--output",
                str(out),
            ],
            env=livefuse_env(livefuse_home),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert run.returncode == 0, run.stderr
        job_id = run.stdout.split()[0]
        assert run.stdout.strip().endswith(str(out))
        assert_swapped(clips["short"], out, demo_clip, 30)
        listing = subprocess.run(
            [sys.executable, "-m", "livefuse", "jobs", "list", "--server", client.server, "--state", "succeeded"],
            env=livefuse_env(livefuse_home),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert listing.returncode == 0 and job_id in listing.stdout and "30/30" in listing.stdout
        assert (tmp_path / "files" / job_id).is_dir()
        assert client.delete(job_id) == {"deleted": job_id}
        assert not (tmp_path / "files" / job_id).exists()
        with pytest.raises(JobApiError, match="404"):
            client.get(job_id)


def test_cancel_stops_a_running_job_within_a_second_and_leaves_no_output(
    livefuse_home: Path, tmp_path: Path, clips: dict[str, Path], face: Path
) -> None:
    with serving(livefuse_home, tmp_path) as (proc, client):
        running = client.submit(face, clips["long"], {})
        queued = client.submit(face, clips["short"], {})
        wait_state(client, running["id"], {"running"}, done_at_least=5)
        assert client.delete(queued["id"])["state"] == "cancelled"
        t0 = time.monotonic()
        assert client.delete(running["id"])["state"] == "cancelled"
        job_dir = tmp_path / "files" / running["id"]
        while any(p.name not in ("source.jpg", "target.mp4") for p in job_dir.iterdir()):
            assert time.monotonic() - t0 < 1.0, list(job_dir.iterdir())
            time.sleep(0.02)
        proc.wait_for(rf"job {running['id']}: cancelled", timeout=1.0)
        # The queued one never ran; the worker is free again for new work.
        assert client.get(queued["id"])["attempts"] == 0
        again = client.submit(face, clips["short"], {})
        assert wait_state(client, again["id"], {"succeeded", "failed"})["state"] == "succeeded"


def test_restart_requeues_running_and_queued_jobs_and_never_leaves_half_outputs(
    livefuse_home: Path, tmp_path: Path, clips: dict[str, Path], face: Path
) -> None:
    storage = tmp_path / "files"
    with serving(livefuse_home, tmp_path, name="first") as (proc, client):
        ids = [client.submit(face, clips["long"], {})["id"] for _ in range(3)]
        wait_state(client, ids[0], {"running"}, done_at_least=20)
        proc.stop(signal.SIGKILL)
    assert not list(storage.glob("*/result.mp4"))  # the killed run left no result
    with serving(livefuse_home, tmp_path, name="second") as (proc, client):
        states = {i: client.get(i)["state"] for i in ids}
        assert set(states.values()) <= {"queued", "running"}
        finals = [wait_state(client, i, {"succeeded", "failed"}, timeout=240) for i in ids]
        assert [f["state"] for f in finals] == ["succeeded"] * 3
        assert finals[0]["attempts"] == 2 and finals[2]["attempts"] == 1
        for i in ids:
            assert len(read_video(storage / i / "result.mp4")) == 240
            assert sorted(p.name for p in (storage / i).iterdir()) == ["result.mp4", "source.jpg", "target.mp4"]
        assert f"job {ids[0]} was running when the server stopped" in proc.text()


def test_bad_uploads_get_a_4xx_with_a_message_and_leave_nothing(
    livefuse_home: Path, tmp_path: Path, clips: dict[str, Path], face: Path
) -> None:
    import asyncio

    storage = tmp_path / "files"
    no_face = cv2.imencode(".png", np.full((200, 200, 3), 128, np.uint8))[1].tobytes()
    video = clips["short"].read_bytes()
    cases = [
        ({"source": ("a.mp4", video), "target": ("b.mp4", video)}, None, 415, "face photo"),
        ({"source": ("a.jpg", face.read_bytes()), "target": ("b.txt", b"hello world" * 10)}, None, 415, "video"),
        ({"source": ("a.png", no_face), "target": ("b.mp4", video)}, None, 422, "face"),
        ({"source": ("a.jpg", face.read_bytes()), "target": ("b.mp4", video[:5000])}, None, 422, "decoded"),
        ({"source": ("a.jpg", face.read_bytes())}, None, 400, "target"),
        ({"source": ("a.jpg", face.read_bytes()), "target": ("b.mp4", video)}, "{not json", 400, "JSON"),
        ({"source": ("a.jpg", face.read_bytes()), "target": ("b.mp4", video)}, '{"home": "/"}', 400, "home"),
        ({"source": ("a.jpg", face.read_bytes()), "target": ("b.mp4", video)}, '{"mask": "nose"}', 400, "mask"),
        ({"source": ("a.jpg", face.read_bytes()), "target": ("b.mp4", video + b"\0" * 400_000)}, None, 413, "limit"),
    ]
    with serving(livefuse_home, tmp_path, "--max-job-upload", "300kB") as (proc, client):
        for fields, options, status, words in cases:
            got, body = asyncio.run(post_job(client.server, fields, options))
            assert got == status and words in body["error"], (fields.keys(), options, got, body)
        assert leftovers(storage) == []
        assert client.list()["jobs"] == []


def test_a_full_quota_answers_507(livefuse_home: Path, tmp_path: Path, clips: dict[str, Path], face: Path) -> None:
    with serving(livefuse_home, tmp_path, "--job-quota", "200kB") as (proc, client):
        with pytest.raises(JobApiError, match="507.*full"):
            client.submit(face, clips["long"], {})
        assert leftovers(tmp_path / "files") == []


# -- the parts, without a server ------------------------------------------------------------------


def test_store_lists_pages_claims_and_expires(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    ids = []
    for i in range(5):
        job = Job(new_job_id(), JobState.QUEUED, "source.jpg", "target.mp4", created=1000.0 + i)
        store.add(job)
        ids.append(job.id)
    page, cursor = store.page(limit=2)
    assert [j.id for j in page] == ids[:-3:-1] and cursor is not None
    page2, _ = store.page(limit=2, cursor=cursor)
    assert [j.id for j in page2] == [ids[2], ids[1]]
    claimed = store.claim_next()
    assert claimed is not None and claimed.id == ids[0] and claimed.state is JobState.RUNNING and claimed.attempts == 1
    store.set_progress(ids[0], Progress(3, 10, 2.0))
    assert store.get(ids[0]).progress == Progress(3, 10, 2.0)
    assert store.finish(ids[0], JobState.SUCCEEDED, result_name="result.mp4")
    assert not store.finish(ids[0], JobState.FAILED, "late")  # final stays final
    assert [j.id for j in store.page(JobState.SUCCEEDED)[0]] == [ids[0]]
    assert store.expired(time.time() + 1) == [ids[0]] and store.expired(time.time() - 60) == []
    store.close()
    # WAL: a second connection (a restarted server) sees it all.
    again = JobStore(tmp_path / "jobs.sqlite3")
    assert again.get(ids[0]).state is JobState.SUCCEEDED
    assert (tmp_path / "jobs.sqlite3-wal").exists()


def test_job_options_go_through_the_settings_loader() -> None:
    base = Settings(swap=SwapSettings(keep_mouth=False))
    assert job_settings(base, {"keep-mouth": True}).swap.keep_mouth is True
    assert job_settings(base, {"no_colour": True}).swap.colour is False
    assert job_settings(base, {"opacity": "0.5"}).swap.opacity == 0.5
    for bad, words in (
        ({"opacity": "lots"}, "must be a number from 0 to 1"),
        ({"source": "x.jpg"}, "not one a job"),
        ({"faces": "map"}, "reference photos"),
        ({"mask": "nose"}, "unknown mask"),
    ):
        with pytest.raises(ConfigError, match=words):
            job_settings(base, bad)


def test_every_sniffed_kind_has_a_file_extension() -> None:
    """The shared image sniffer also names BMP: a BMP upload must get a file name, not a 500."""
    from livefuse.jobs.files import extension, sniff_media

    heads = {
        b"\xff\xd8\xff\xe0" + bytes(12): ".jpg",
        b"\x89PNG\r\n\x1a\n" + bytes(8): ".png",
        b"RIFF\x00\x00\x00\x00WEBPVP8 ": ".webp",
        b"BM" + bytes(14): ".bmp",
        bytes(4) + b"ftypisom" + bytes(4): ".mp4",
        b"\x1a\x45\xdf\xa3" + bytes(12): ".mkv",
        b"RIFF\x00\x00\x00\x00AVI LIST": ".avi",
    }
    for head, ext in heads.items():
        kind = sniff_media(head)
        assert kind is not None and extension(kind) == ext, (head, kind)


def test_files_refuse_paths_that_are_not_job_ids(tmp_path: Path) -> None:
    files = JobFiles(tmp_path)
    for bad in ("../etc", "j123", "J0123456789abcdef", "j0123456789abcdeg"):
        with pytest.raises(ValueError):
            files.dir(bad)


def test_runner_cancels_within_a_frame_and_yields_to_live_work(
    livefuse_home: Path, tmp_path: Path, clips: dict[str, Path], face: Path
) -> None:
    import shutil

    from livefuse.app import Engine
    from livefuse.jobs.runner import JobCancelled, JobPaths, run_job

    shutil.copy(face, tmp_path / "source.jpg")
    shutil.copy(clips["short"], tmp_path / "target.mp4")
    paths = JobPaths.in_dir(tmp_path, "source.jpg", "target.mp4")
    reports: list[Progress] = []
    with Engine(Settings(runtime=RuntimeSettings(home=livefuse_home))) as engine:
        with pytest.raises(JobCancelled):
            run_job(engine, engine.settings, paths, reports.append, lambda: len(reports) > 0)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["source.jpg", "target.mp4"]
        assert reports[0].done == 1 and reports[0].first_frame is not None
        t0 = time.monotonic()
        result = run_job(engine, engine.settings, paths, reports.append, lambda: False, pause=lambda: 0.05)
        assert time.monotonic() - t0 >= 30 * 0.05  # each frame waited while "live sessions" ran
    assert result == tmp_path / "result.mp4" and len(read_video(result)) == 30
    assert reports[-1].done == reports[-1].total == 30


def test_the_token_guards_the_job_routes(
    livefuse_home: Path, tmp_path: Path, face: Path, clips: dict[str, Path]
) -> None:
    token = "job-token-123456"
    with serving(livefuse_home, tmp_path, "--token", token) as (proc, client):
        with pytest.raises(JobApiError, match="401"):
            client.list()
        authorised = JobsClient(client.server, token)
        job = authorised.submit(face, clips["short"], {})
        assert wait_state(authorised, job["id"], {"succeeded", "failed"})["state"] == "succeeded"
        with pytest.raises(JobApiError, match="401"):
            client.fetch(job["id"], tmp_path / "x.mp4")
        assert not (tmp_path / "x.mp4").exists()


def test_finished_jobs_expire_with_their_files(tmp_path: Path) -> None:
    from livefuse.jobs.service import JobService

    store, files = JobStore(tmp_path / "db.sqlite3"), JobFiles(tmp_path / "files")
    jobs = [Job(new_job_id(), JobState.QUEUED, "s.jpg", "t.mp4") for _ in range(2)]
    for job in jobs:
        store.add(job)
        files.dir(job.id).mkdir()
        (files.dir(job.id) / "result.mp4").write_bytes(b"x")
        store.finish(job.id, JobState.SUCCEEDED, result_name="result.mp4")
    service = JobService(store, files, backend=None, engine=None, settings=Settings(), retention_s=3600)  # type: ignore[arg-type]
    assert service.sweep(now=time.time() + 60) == []
    assert sorted(service.sweep(now=time.time() + 3601)) == sorted(j.id for j in jobs)
    assert store.get(jobs[0].id) is None and not files.dir(jobs[0].id).exists()
