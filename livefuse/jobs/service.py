"""The job service the API calls: submit, look up, cancel, delete and expire jobs, over a
backend that runs them (the embedded worker pool, or rq workers through Redis).

Every method here blocks (SQLite, files, decoding): the API calls them in an executor.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from livefuse.app import Engine
from livefuse.config import Settings
from livefuse.errors import ConfigError
from livefuse.jobs.files import (
    JobFiles,
    StorageLimits,
    check_source_photo,
    check_target,
    is_video,
    result_extension,
)
from livefuse.jobs.model import Job, JobState, Progress
from livefuse.jobs.options import job_settings
from livefuse.jobs.store import JobStore
from livefuse.web.errors import ApiError
from livefuse.web.uploads import ImageLimits

log = logging.getLogger(__name__)

#: How long finished jobs and their files are kept, by default.
RETENTION_S = 24 * 3600.0


class Backend(Protocol):
    """Who runs the jobs."""

    def start(self) -> None: ...
    def submit(self, job: Job) -> None: ...
    def cancel(self, job_id: str) -> None: ...
    def sync(self) -> None: ...
    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class JobsConfig:
    """How ``livefuse serve`` runs jobs."""

    db: Path
    "The SQLite job table."
    storage: Path
    "The job directories (a shared volume in Redis mode)."
    workers: int = 1
    "Embedded worker threads (ignored with a queue)."
    queue: str | None = None
    "A redis:// URL: jobs go to ``livefuse worker`` processes instead of the embedded pool."
    limits: StorageLimits = field(default_factory=StorageLimits)
    retention_s: float = RETENTION_S
    advertise: str | None = None
    "With a queue: the URL 'livefuse gateway' reaches this server at (default: its own host:port)."


@dataclass(frozen=True, slots=True)
class Upload:
    """One received file: where it is, what it is, what the client called it."""

    path: Path
    kind: str
    filename: str


class JobService:
    """Submitting and managing jobs; ``backend`` runs them."""

    def __init__(
        self,
        store: JobStore,
        files: JobFiles,
        backend: Backend,
        engine: Engine,
        settings: Settings,
        retention_s: float = RETENTION_S,
    ) -> None:
        self.store, self.files, self.backend = store, files, backend
        self.engine, self.settings = engine, settings
        self.retention_s = retention_s

    def add(self, job_id: str, incoming: Path, source: Upload, target: Upload, options_text: str | None) -> Job:
        """Check the received files and options, then queue the job. Raises ``ApiError``."""
        options = parse_options(options_text)
        try:
            job_settings(self.settings, options)
        except ConfigError as exc:
            raise ApiError(400, f"options: {exc}") from None
        if source.kind not in ("jpeg", "png", "webp"):
            raise ApiError(415, "the source must be a face photo (JPEG, PNG or WebP)")
        check_source_photo(source.path, ImageLimits(self.files.limits.max_source_bytes, 4096))
        self.engine.source_face(source.path)  # NoFaceError: 422 with the detector's message
        total = check_target(target.path, target.kind)
        stem = "".join(c for c in Path(target.filename).stem if c.isalnum() or c in "-_.")[:60] or "result"
        job = Job(
            id=job_id,
            state=JobState.QUEUED,
            source_name=source.path.name,
            target_name=target.path.name,
            options=options,
            progress=Progress(0, total),
            download_name=f"{stem}-swapped{result_extension(target.kind)}",
        )
        self.files.commit(job_id, incoming)
        self.store.add(job)
        self.backend.submit(job)
        log.info("job %s: queued (%s, %s)", job_id, target.kind, "video" if is_video(target.kind) else "still")
        return job  # as queued: a worker may already have taken it

    def get(self, job_id: str) -> Job:
        job = self.store.get(job_id)
        if job is None:
            raise ApiError(404, f"no job {job_id!r}: it never existed, was deleted or expired")
        return job

    def delete(self, job_id: str) -> tuple[Job, bool]:
        """Cancel a queued or running job (its partial output is removed), or delete a finished
        one with its files. Returns the job as it was and whether it was deleted."""
        job = self.get(job_id)
        if job.state.final:
            self.store.delete(job_id)
            self.files.remove(job_id)
            return job, True
        self.store.request_cancel(job_id)
        self.store.finish(job_id, JobState.CANCELLED, "cancelled by the client")
        self.backend.cancel(job_id)
        return self.get(job_id), False

    def sweep(self, now: float | None = None) -> list[str]:
        """Delete the jobs (and files) that finished longer than the retention time ago."""
        expired = self.store.expired((now or time.time()) - self.retention_s)
        for job_id in expired:
            self.store.delete(job_id)
            self.files.remove(job_id)
        if expired:
            log.info("deleted %d expired job(s)", len(expired))
        return expired


def parse_options(text: str | None) -> dict[str, Any]:
    """The ``options`` field: a JSON object, or a 400 that shows the expected form."""
    if not text or not text.strip():
        return {}
    try:
        options = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ApiError(400, f'options is not valid JSON ({exc}); send e.g. {{"keep_mouth": true}}') from None
    if not isinstance(options, dict):
        raise ApiError(400, 'options must be a JSON object, e.g. {"keep_mouth": true}')
    return options
