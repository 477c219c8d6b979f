"""Ctrl-C, SIGTERM and SIGHUP as one exception, so every command stops the same clean way.

Python turns only SIGINT into ``KeyboardInterrupt``; SIGTERM (``kill``, systemd, container
stop) and SIGHUP (closed terminal) would end the process at once and leave temporary files.
``interrupts_raise()`` makes all three raise :class:`Interrupted` in the main thread, so the
``finally`` blocks and the pipeline's shutdown run. ``exit_code`` gives the shell's
convention, 128 + signal number.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

#: The signals that stop a command: Ctrl-C, polite termination, hang-up (not on Windows).
STOP_SIGNALS: tuple[signal.Signals, ...] = tuple(
    s for s in (getattr(signal, n, None) for n in ("SIGINT", "SIGTERM", "SIGHUP")) if s is not None
)


class Interrupted(KeyboardInterrupt):
    """A stop signal arrived. A ``KeyboardInterrupt`` so code that handles Ctrl-C handles it too."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        """``SIGTERM``, ``SIGINT`` (Ctrl-C), ..."""
        return signal.Signals(self.signum).name


def exit_code(exc: KeyboardInterrupt) -> int:
    """128 + the signal's number (130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP)."""
    return 128 + getattr(exc, "signum", signal.SIGINT)


def interrupt_behind(exc: BaseException) -> KeyboardInterrupt | None:
    """The stop signal ``exc`` stands for, if any. A signal that lands while a C extension
    initialises (``import onnxruntime`` on a cold start) comes out of the import as an
    ``ImportError`` whose cause is the :class:`Interrupted` the handler raised."""
    seen: BaseException | None = exc
    for _ in range(8):  # a cause chain is short; this bounds a cyclic one
        if seen is None or isinstance(seen, KeyboardInterrupt):
            return seen
        seen = seen.__cause__
    return None


def _raise(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


@contextmanager
def interrupts_raise() -> Iterator[None]:
    """Within the block, the stop signals raise :class:`Interrupted` in the main thread.

    Outside the main thread (where Python cannot install handlers) it changes nothing.
    The previous handlers are restored on exit.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _raise) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
