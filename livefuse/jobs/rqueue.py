"""Scale-out on Redis with rq: ``livefuse serve --queue`` enqueues, ``livefuse worker`` runs.

- The API keeps the job records in its SQLite table; ``RedisBackend.sync`` copies each rq
  job's state and progress (``job.meta``) into it.
- A worker is one process with one warm Engine running jobs in that process (rq's
  ``SimpleWorker``: no fork per job, which CUDA contexts would not survive).
- While a job runs, a thread keeps its rq heartbeat fresh with a short TTL. A worker killed
  mid-job stops beating; within seconds another worker's maintenance finds the job
  abandoned and, while it has retries left, queues it again (``Retry(max=MAX_RETRIES)``).
- Cancel: a Redis key the job checks every frame (and rq's cancel for a queued job).
- Jobs and results go through rq's JSON serializer: nothing is unpickled from Redis.
"""

from __future__ import annotations

import contextvars
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, Retry, SimpleWorker, get_current_job
from rq.job import Job as RqJob
from rq.job import JobStatus
from rq.serializers import JSONSerializer
from rq.worker import WorkerStatus

from livefuse.app import Engine
from livefuse.config import Settings
from livefuse.errors import ConfigError
from livefuse.jobs.files import JobFiles
from livefuse.jobs.model import Job, JobState, Progress
from livefuse.jobs.pool import execute
from livefuse.jobs.store import JobStore

log = logging.getLogger(__name__)

QUEUE_NAME = "livefuse-jobs"
MAX_RETRIES = 2
"A job whose worker died runs again this many times at most."
JOB_TIMEOUT_S = 6 * 3600
"The longest one job may run before rq stops it."
HEARTBEAT_S = 1.0
HEARTBEAT_TTL_S = 5
"A running job whose worker stopped beating this long is abandoned (and retried)."
MAINTENANCE_S = 2
LOST_AFTER_S = 60.0
"A job in the table but not on the queue this long after its submission was lost (Redis flushed)."
_CANCEL_KEY = "livefuse:cancel:{}"
_KEEP_S = 7 * 24 * 3600


def connect(url: str) -> Redis:
    """A Redis connection, checked with a PING: a ConfigError says what to fix."""
    try:
        redis = Redis.from_url(url)
        redis.ping()
    except (RedisError, ValueError) as exc:
        raise ConfigError(f"cannot reach Redis at {url} ({exc}); start redis-server or fix --queue") from None
    return redis


def _queue(redis: Redis) -> Queue:
    return Queue(QUEUE_NAME, connection=redis, serializer=JSONSerializer)


# -- the API side ---------------------------------------------------------------------------------


class RedisBackend:
    """Queues jobs on Redis; mirrors their state into the API's job table."""

    def __init__(self, url: str, store: JobStore) -> None:
        self.url, self.store = url, store
        self._redis: Redis | None = None

    @property
    def redis(self) -> Redis:
        if self._redis is None:
            self._redis = connect(self.url)
        return self._redis

    def start(self) -> None:
        self.redis  # noqa: B018 - connect now: a wrong URL fails at start, not at the first job

    def submit(self, job: Job) -> None:
        _queue(self.redis).enqueue(
            "livefuse.jobs.rqueue.perform",
            job.id,
            job.source_name,
            job.target_name,
            job.options,
            job_id=job.id,
            retry=Retry(max=MAX_RETRIES),
            job_timeout=JOB_TIMEOUT_S,
            result_ttl=_KEEP_S,
            failure_ttl=_KEEP_S,
        )

    def cancel(self, job_id: str) -> None:
        self.redis.set(_CANCEL_KEY.format(job_id), 1, ex=_KEEP_S)
        rq_job = RqJob.fetch_many([job_id], connection=self.redis, serializer=JSONSerializer)[0]
        if rq_job is not None and rq_job.get_status() in (JobStatus.QUEUED, JobStatus.SCHEDULED):
            rq_job.cancel()

    def sync(self) -> None:
        """Copy the rq jobs' states and progress into the table."""
        active = self.store.active()
        if not active:
            return
        found = RqJob.fetch_many([j.id for j in active], connection=self.redis, serializer=JSONSerializer)
        for job, rq_job in zip(active, found, strict=True):
            self._sync_one(job, rq_job)

    def _sync_one(self, job: Job, rq_job: RqJob | None) -> None:
        if rq_job is None:
            # A job is in the table a moment before it is on the queue: only an old one is lost.
            if time.time() - job.created > LOST_AFTER_S:
                self.store.finish(job.id, JobState.FAILED, "the job was lost from the Redis queue; submit it again")
            return
        status, meta = rq_job.get_status(refresh=False), rq_job.meta
        if status in (JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED):
            if job.state is JobState.RUNNING:
                self.store.requeue(job.id)  # its worker died: rq queued it again
        elif status is JobStatus.STARTED:
            self.store.mark_running(job.id, int(meta.get("attempt", 1)))
            if "done" in meta:
                self.store.set_progress(job.id, _progress(meta))
        elif status is JobStatus.FINISHED:
            outcome = rq_job.return_value() or {}
            state = JobState(outcome.get("state", "failed"))
            if "done" in meta:
                self.store.mark_running(job.id, int(meta.get("attempt", 1)))
                self.store.set_progress(job.id, _progress(meta))
            self.store.finish(job.id, state, outcome.get("error"), outcome.get("result"))
        elif status is JobStatus.FAILED:
            self.store.finish(job.id, JobState.FAILED, "the worker failed on it after every retry; see its log")
        elif status in (JobStatus.STOPPED, JobStatus.CANCELED):
            self.store.finish(job.id, JobState.CANCELLED, "cancelled")

    def close(self) -> None:
        if self._redis is not None:
            self._redis.close()


def _progress(meta: dict[str, Any]) -> Progress:
    return Progress(meta["done"], meta.get("total"), meta.get("fps", 0.0), meta.get("first_frame"))


# -- the worker side ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkerContext:
    """What a job needs from the worker process it runs in: the warm models and the files."""

    engine: Engine
    settings: Settings
    files: JobFiles
    redis: Redis


#: The worker's context while one of its jobs runs (rq calls ``perform`` by name).
_CONTEXT: contextvars.ContextVar[WorkerContext] = contextvars.ContextVar("livefuse_worker")


def perform(job_id: str, source_name: str, target_name: str, options: dict[str, Any]) -> dict[str, Any]:
    """The rq job: run one job in this worker. Returns its outcome (a failed swap is an
    outcome, not an exception: rq retries only what a dead or broken worker left)."""
    ctx = _CONTEXT.get()
    rq_job = get_current_job()
    assert rq_job is not None
    rq_job.meta.update(attempt=int(rq_job.meta.get("attempt", 0)) + 1, done=0, total=None, fps=0.0, worker=os.getpid())
    rq_job.save_meta()

    def report(p: Progress) -> None:
        rq_job.meta.update(done=p.done, total=p.total, fps=p.fps, first_frame=p.first_frame)
        rq_job.save_meta()

    cancel_key = _CANCEL_KEY.format(job_id)
    job = Job(job_id, JobState.RUNNING, source_name, target_name, options)
    state, error, result = execute(
        ctx.engine, ctx.settings, ctx.files, job, report, lambda: bool(ctx.redis.exists(cancel_key))
    )
    return {"state": state.value, "error": error, "result": result}


class LivefuseWorker(SimpleWorker):
    """rq's in-process worker, with a heartbeat thread while a job runs (a SimpleWorker
    otherwise beats only between jobs) and the job's context set."""

    def __init__(self, queues: list[Queue], context: WorkerContext, **kwargs: Any) -> None:
        super().__init__(
            queues,
            connection=context.redis,
            serializer=JSONSerializer,
            maintenance_interval=MAINTENANCE_S,
            worker_ttl=16,
            **kwargs,
        )
        self.context = context

    def subscribe(self) -> None:
        """rq's, polling every second: with its 60 s poll the exit after a drain waited up to a minute."""
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
        self.pubsub_thread = self.pubsub.run_in_thread(  # type: ignore[assignment]
            sleep_time=1, daemon=True, exception_handler=self._pubsub_exception_handler
        )

    def get_heartbeat_ttl(self, job: RqJob, working_time: float = 0.0) -> int:
        return HEARTBEAT_TTL_S

    def execute_job(self, job: RqJob, queue: Queue) -> None:
        execution = self.prepare_execution(job)
        stop = threading.Event()
        beat = threading.Thread(target=self._beat, args=(job, execution, stop), name="livefuse-heartbeat", daemon=True)
        beat.start()
        token = _CONTEXT.set(self.context)
        try:
            self.perform_job(job, queue, execution)
        finally:
            _CONTEXT.reset(token)
            stop.set()
            beat.join()
        self.set_state(WorkerStatus.IDLE)

    def _beat(self, job: RqJob, execution: Any, stop: threading.Event) -> None:
        while not stop.wait(HEARTBEAT_S):
            try:
                self.maintain_heartbeats(job, execution)
            except RedisError as exc:
                log.warning("heartbeat for job %s failed: %s", job.id, exc)


def run_worker(url: str, storage: JobFiles, settings: Settings, burst: bool = False) -> int:
    """``livefuse worker``: load the models once, then run jobs until SIGTERM (the job in
    hand is finished first; a second SIGTERM stops at once and the job is retried elsewhere)."""
    redis = connect(url)
    with Engine(settings) as engine:
        worker = LivefuseWorker([_queue(redis)], WorkerContext(engine, settings, storage, redis))
        log.info("livefuse worker %s: waiting for jobs on %s", worker.name, url)
        print(f"livefuse worker {worker.name}: ready", flush=True)
        worker.work(burst=burst, logging_level=logging.getLevelName(logging.getLogger().level))
    return 0
