"""The embedded backend: worker threads inside ``livefuse serve`` sharing one warm Engine."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from livefuse.app import Engine
from livefuse.config import Settings
from livefuse.errors import LivefuseError
from livefuse.jobs.files import JobFiles
from livefuse.jobs.model import Job, JobState, Progress
from livefuse.jobs.options import job_settings
from livefuse.jobs.runner import JobCancelled, JobPaths, run_job
from livefuse.jobs.store import JobStore

log = logging.getLogger(__name__)

#: How long an idle worker sleeps before looking at the table again (a submit wakes it at once).
IDLE_POLL_S = 1.0


def execute(
    engine: Engine,
    base: Settings,
    files: JobFiles,
    job: Job,
    report: Callable[[Progress], None],
    cancelled: Callable[[], bool],
    pause: Callable[[], float] = lambda: 0.0,
) -> tuple[JobState, str | None, str | None]:
    """Run ``job``; its final (state, error, result file name). Shared by both backends."""
    paths = JobPaths.in_dir(files.dir(job.id), job.source_name, job.target_name)
    try:
        files.clear_outputs(job.id, keep=(job.source_name, job.target_name))
        result = run_job(engine, job_settings(base, job.options), paths, report, cancelled, pause)
    except JobCancelled:
        return JobState.CANCELLED, "cancelled", None
    except LivefuseError as exc:
        return JobState.FAILED, str(exc), None
    except Exception as exc:  # noqa: BLE001 - a bug: logged in full, the job fails with a short message
        log.exception("job %s failed", job.id)
        return JobState.FAILED, f"internal error ({type(exc).__name__}); the server log has the details", None
    return JobState.SUCCEEDED, None, result.name


class WorkerPool:
    """``workers`` threads, each running one job at a time from the store, oldest first.

    :param pause: seconds a job's frame should wait (live sessions first); called per frame.
    """

    def __init__(
        self,
        store: JobStore,
        files: JobFiles,
        engine: Engine,
        settings: Settings,
        workers: int = 1,
        pause: Callable[[], float] = lambda: 0.0,
    ) -> None:
        if workers < 1:
            raise ValueError(f"job workers must be at least 1, got {workers}")
        self.store, self.files, self.engine, self.settings = store, files, engine, settings
        self.pause = pause
        self._wake = threading.Condition()
        self._stop = threading.Event()
        self._cancels: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._loop, name=f"livefuse-job-{i}", daemon=True) for i in range(workers)
        ]

    def start(self) -> None:
        """Requeue what a previous process left running, then start the workers."""
        for job_id in self.store.requeue_interrupted():
            log.info("job %s was running when the server stopped: it runs again from the start", job_id)
        for thread in self._threads:
            thread.start()

    def submit(self, job: Job) -> None:
        with self._wake:
            self._wake.notify()

    def cancel(self, job_id: str) -> None:
        with self._lock:
            event = self._cancels.get(job_id)
        if event is not None:
            event.set()

    def sync(self) -> None:
        """Nothing to pull: the workers write the store themselves."""

    def close(self, timeout: float = 10.0) -> None:
        """Stop the workers: running jobs are cancelled and will run again at the next start."""
        self._stop.set()
        with self._lock:
            for event in self._cancels.values():
                event.set()
        with self._wake:
            self._wake.notify_all()
        for thread in self._threads:
            thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            job = self.store.claim_next()
            if job is None:
                with self._wake:
                    self._wake.wait(IDLE_POLL_S)
                continue
            self._run(job)

    def _run(self, job: Job) -> None:
        cancel = threading.Event()
        with self._lock:
            self._cancels[job.id] = cancel
        log.info("job %s: started (attempt %d)", job.id, job.attempts)
        try:
            state, error, result = execute(
                self.engine,
                self.settings,
                self.files,
                job,
                lambda p: self.store.set_progress(job.id, p),
                lambda: cancel.is_set() or self._stop.is_set(),
                self.pause,
            )
        finally:
            with self._lock:
                self._cancels.pop(job.id, None)
        if self._stop.is_set() and state is JobState.CANCELLED:
            self.store.requeue(job.id)  # shutting down: it runs again at the next start
            return
        self.store.finish(job.id, state, error, result)
        log.info("job %s: %s%s", job.id, state.value, f" ({error})" if error and state is JobState.FAILED else "")
