"""Assembles the job service from its config: the one place that picks the backend."""

from __future__ import annotations

from collections.abc import Callable

from livefuse.app import Engine
from livefuse.config import Settings
from livefuse.jobs.api import JobsApi
from livefuse.jobs.files import JobFiles
from livefuse.jobs.pool import WorkerPool
from livefuse.jobs.service import Backend, JobsConfig, JobService
from livefuse.jobs.store import JobStore

#: How long each job frame waits while live sessions run (live first: they get the CPU/GPU).
LIVE_PAUSE_S = 0.02


def jobs_api(config: JobsConfig, settings: Settings, engine: Engine, live_sessions: Callable[[], int]) -> JobsApi:
    """The job routes for ``livefuse serve``, on the embedded pool or on Redis workers."""
    store = JobStore(config.db)
    files = JobFiles(config.storage, config.limits)
    backend: Backend
    if config.queue:
        from livefuse.jobs.rqueue import RedisBackend

        backend = RedisBackend(config.queue, store)
    else:
        backend = WorkerPool(
            store, files, engine, settings, config.workers,
            pause=lambda: LIVE_PAUSE_S if live_sessions() else 0.0,
        )
    return JobsApi(JobService(store, files, backend, engine, settings, config.retention_s))
