"""What a command needs when it runs as a container's PID 1.

The kernel does not apply a signal's default action to PID 1 of a namespace: without a handler,
``docker stop`` (SIGTERM) is ignored and the container is killed after its grace period, cutting
a file short. :func:`stop_on_sigterm` turns SIGTERM into the same path as Ctrl-C, which every
command already handles (recordings are finished, sessions closed). ``livefuse serve`` installs
its own handler on the event loop, which takes over while it runs.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from types import FrameType

from livefuse.errors import ConfigError


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (``docker stop``, a Kubernetes pod ending): stop as on Ctrl-C."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


def stop_on_sigterm() -> None:
    """Handle SIGTERM like Ctrl-C in this (the main) thread; elsewhere it does nothing."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)


def writable_dir(path: Path, what: str) -> Path:
    """``path`` created if needed; a ``ConfigError`` naming it and the fix when it cannot be written.

    Checked before a long job starts, so the job does not fail at its end.
    """
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(_unwritable(path, what, exc.strerror or str(exc))) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(_unwritable(path, what, "permission denied"))
    return path


def _unwritable(path: Path, what: str, why: str) -> str:
    where = path.resolve() if not path.is_absolute() else path
    return (
        f"cannot write {what} to {where} ({why}); pass a directory you can write, e.g. --output "
        "/data/livefuse-demo in a container (where the working directory may be read-only), or fix "
        f"its permissions (this process runs as UID {os.getuid()})"
    )
