"""A job's record: small typed values, and its public JSON form."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class JobState(str, Enum):
    """Where a job is in its life. The last three are final."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


def new_job_id() -> str:
    """A random, URL-safe job id (also the job's directory name)."""
    return "j" + secrets.token_hex(8)


def is_job_id(text: str) -> bool:
    """True for ids ``new_job_id`` makes: nothing else may name a directory."""
    return len(text) == 17 and text[0] == "j" and all(c in "0123456789abcdef" for c in text[1:])


@dataclass(frozen=True, slots=True)
class Progress:
    """Frames written so far and the total (None while unknown)."""

    done: int = 0
    total: int | None = None
    fps: float = 0.0
    first_frame: float | None = None
    "When the first output frame was written (a time.time()): queued → first frame is the overhead."

    @property
    def eta_s(self) -> float | None:
        if self.total is None or self.fps <= 0:
            return None
        return max(self.total - self.done, 0) / self.fps


@dataclass(frozen=True, slots=True)
class Job:
    """One job as the store keeps it. Files live in the job's directory (``files.JobFiles``)."""

    id: str
    state: JobState
    source_name: str
    "The face photo's file name inside the job directory."
    target_name: str
    "The video or image's file name inside the job directory."
    options: dict[str, Any] = field(default_factory=dict)
    progress: Progress = Progress()
    error: str | None = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    result_name: str | None = None
    "The output's file name inside the job directory, once it succeeded."
    download_name: str = "result.mp4"
    "The file name offered to whoever downloads the result."
    attempts: int = 0
    cancel_requested: bool = False

    def public(self) -> dict[str, Any]:
        """The JSON the API answers with."""
        p = self.progress
        return {
            "id": self.id,
            "state": self.state.value,
            "progress": {"done": p.done, "total": p.total},
            "fps": round(p.fps, 2),
            "eta_s": None if p.eta_s is None else round(p.eta_s, 1),
            "first_frame": p.first_frame,
            "error": self.error,
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
            "result": f"/api/jobs/{self.id}/result" if self.state is JobState.SUCCEEDED else None,
            "options": self.options,
            "attempts": self.attempts,
        }
