"""The job table: SQLite in WAL mode, so a restart finds every job where it was.

One connection, serialised by a lock: callers are worker threads and the server's executor,
never the event loop itself. Writes are small (a row), so the lock is held briefly.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from livefuse.jobs.model import Job, JobState, Progress

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    state TEXT NOT NULL,
    source_name TEXT NOT NULL,
    target_name TEXT NOT NULL,
    options TEXT NOT NULL,
    done INTEGER NOT NULL DEFAULT 0,
    total INTEGER,
    fps REAL NOT NULL DEFAULT 0,
    first_frame REAL,
    error TEXT,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    result_name TEXT,
    download_name TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, seq);
"""

_COLUMNS = (
    "id, state, source_name, target_name, options, done, total, fps, first_frame, error, created, started, "
    "finished, result_name, download_name, attempts, cancel_requested, seq"
)


def _job(row: tuple[Any, ...]) -> Job:
    (
        id_,
        state,
        source,
        target,
        options,
        done,
        total,
        fps,
        first,
        error,
        created,
        started,
        finished,
        result,
        download,
        attempts,
        cancel,
        _seq,
    ) = row
    return Job(
        id=id_,
        state=JobState(state),
        source_name=source,
        target_name=target,
        options=json.loads(options),
        progress=Progress(done, total, fps, first),
        error=error,
        created=created,
        started=started,
        finished=finished,
        result_name=result,
        download_name=download,
        attempts=attempts,
        cancel_requested=bool(cancel),
    )


class JobStore:
    """Job records in the SQLite file ``path`` (created with its directory)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # Autocommit; multi-statement changes take BEGIN IMMEDIATE themselves.
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10)
        self._lock = threading.Lock()
        with self._locked() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)

    @contextmanager
    def _locked(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            yield self._db

    def close(self) -> None:
        with self._locked() as db:
            db.close()

    # -- reading --------------------------------------------------------------------------

    def get(self, job_id: str) -> Job | None:
        with self._locked() as db:
            row = db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row) if row else None

    def page(
        self, state: JobState | None = None, limit: int = 50, cursor: int | None = None
    ) -> tuple[list[Job], int | None]:
        """Newest first; returns the jobs and the cursor of the next page (None at the end)."""
        where: list[str] = ["1"]
        args: list[Any] = []
        if state is not None:
            where.append("state = ?")
            args.append(state.value)
        if cursor is not None:
            where.append("seq < ?")
            args.append(cursor)
        sql = f"SELECT {_COLUMNS} FROM jobs WHERE {' AND '.join(where)} ORDER BY seq DESC LIMIT ?"
        with self._locked() as db:
            rows = db.execute(sql, (*args, limit + 1)).fetchall()
        more = len(rows) > limit
        rows = rows[:limit]
        return [_job(r) for r in rows], (rows[-1][-1] if more else None)

    def active(self) -> list[Job]:
        """Queued and running jobs, oldest first."""
        with self._locked() as db:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM jobs WHERE state IN ('queued', 'running') ORDER BY seq"
            ).fetchall()
        return [_job(r) for r in rows]

    def expired(self, before: float) -> list[str]:
        """Ids of final jobs that finished before ``before`` (a time.time())."""
        with self._locked() as db:
            rows = db.execute(
                "SELECT id FROM jobs WHERE state IN ('succeeded', 'failed', 'cancelled') AND finished < ?",
                (before,),
            ).fetchall()
        return [r[0] for r in rows]

    # -- writing --------------------------------------------------------------------------

    def add(self, job: Job) -> None:
        with self._locked() as db:
            db.execute(
                "INSERT INTO jobs (id, state, source_name, target_name, options, created, download_name, total) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job.id,
                    job.state.value,
                    job.source_name,
                    job.target_name,
                    json.dumps(job.options),
                    job.created,
                    job.download_name,
                    job.progress.total,
                ),
            )

    def claim_next(self) -> Job | None:
        """Take the oldest queued job: it becomes running, one more attempt. None if none."""
        with self._locked() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute("SELECT id FROM jobs WHERE state = 'queued' ORDER BY seq LIMIT 1").fetchone()
                if row is not None:
                    db.execute(
                        "UPDATE jobs SET state = 'running', started = ?, attempts = attempts + 1, done = 0, "
                        "fps = 0, first_frame = NULL WHERE id = ?",
                        (time.time(), row[0]),
                    )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return self.get(row[0]) if row else None

    def mark_running(self, job_id: str, attempt: int) -> None:
        """A job another process took (Redis mode): running, as its ``attempt``-th try."""
        with self._locked() as db:
            db.execute(
                "UPDATE jobs SET state = 'running', started = COALESCE(started, ?), attempts = ? "
                "WHERE id = ? AND state IN ('queued', 'running')",
                (time.time(), attempt, job_id),
            )

    def requeue(self, job_id: str) -> None:
        """Back to queued (a retry elsewhere); its progress starts again."""
        with self._locked() as db:
            db.execute(
                "UPDATE jobs SET state = 'queued', done = 0, fps = 0, first_frame = NULL "
                "WHERE id = ? AND state = 'running'",
                (job_id,),
            )

    def set_progress(self, job_id: str, progress: Progress) -> None:
        with self._locked() as db:
            db.execute(
                "UPDATE jobs SET done = ?, total = ?, fps = ?, first_frame = ? WHERE id = ? AND state = 'running'",
                (progress.done, progress.total, progress.fps, progress.first_frame, job_id),
            )

    def finish(self, job_id: str, state: JobState, error: str | None = None, result_name: str | None = None) -> bool:
        """Make a job final unless it already is; False when it was (a cancel got there first)."""
        assert state.final
        with self._locked() as db:
            cur = db.execute(
                "UPDATE jobs SET state = ?, error = ?, result_name = ?, finished = ? "
                "WHERE id = ? AND state IN ('queued', 'running')",
                (state.value, error, result_name, time.time(), job_id),
            )
        return cur.rowcount == 1

    def request_cancel(self, job_id: str) -> None:
        """Flag a running job for its worker to stop (it checks every frame)."""
        with self._locked() as db:
            db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))

    def requeue_interrupted(self) -> list[str]:
        """At start-up: jobs left running by a process that died run again from the start."""
        with self._locked() as db:
            rows = db.execute("SELECT id FROM jobs WHERE state = 'running'").fetchall()
            db.execute(
                "UPDATE jobs SET state = 'queued', done = 0, fps = 0, first_frame = NULL WHERE state = 'running'"
            )
        return [r[0] for r in rows]

    def delete(self, job_id: str) -> None:
        with self._locked() as db:
            db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
