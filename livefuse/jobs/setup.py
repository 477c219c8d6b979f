"""Assembles the job service from its config: the one place that picks the backend."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from aiohttp import web

from livefuse.app import Engine, home_of
from livefuse.config import Settings, memory
from livefuse.errors import ConfigError
from livefuse.jobs.api import JobsApi
from livefuse.jobs.files import JobFiles, StorageLimits
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
            store,
            files,
            engine,
            settings,
            config.workers,
            pause=lambda: LIVE_PAUSE_S if live_sessions() else 0.0,
        )
    return JobsApi(JobService(store, files, backend, engine, settings, config.retention_s))


def jobs_routes(config: JobsConfig, settings: Settings) -> Callable[[web.Application, Engine, Callable[[], int]], None]:
    """What ``livefuse serve`` calls to add the job routes to its app (``web.server.Extension``)."""

    def add(app: web.Application, engine: Engine, live_sessions: Callable[[], int]) -> None:
        jobs_api(config, settings, engine, live_sessions).add_routes(app)

    return add


def jobs_config(args: argparse.Namespace, settings: Settings) -> JobsConfig:
    """The job service's config from ``livefuse serve``'s options."""
    home = home_of(settings)
    if args.job_workers < 1:
        raise ConfigError(f"--job-workers must be at least 1, got {args.job_workers}")
    if args.queue and not args.storage:
        raise ConfigError("--queue needs --storage DIR: a directory the workers share (NFS, a volume)")
    if args.queue and not args.queue.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"--queue {args.queue!r} is not a redis:// (or rediss://, unix://) URL")
    if args.queue:
        need_redis()
    limits = StorageLimits(
        max_target_bytes=_size(args.max_job_upload, "--max-job-upload"),
        quota_bytes=_size(args.job_quota, "--job-quota") if args.job_quota else None,
    )
    return JobsConfig(
        db=args.job_db or home / "jobs" / "jobs.sqlite3",
        storage=args.storage or home / "jobs" / "files",
        workers=args.job_workers,
        queue=args.queue,
        limits=limits,
        retention_s=args.job_retention * 3600.0,
        advertise=args.advertise,
    )


def need_redis() -> None:
    try:
        import redis  # noqa: F401
        import rq  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f'Redis mode needs redis and rq ({exc.name} is missing): pip install "livefuse[jobs]"'
        ) from None


def _size(value: str, flag: str) -> int:
    try:
        return memory(value)
    except ValueError as exc:
        raise ConfigError(f"{flag} {value!r} {exc}") from None
