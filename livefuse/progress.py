"""One progress line for every command that waits (``run``, ``models pull``, ...), drawn by tqdm.

Shown only on a terminal: piped or redirected output gets no bar, just the summary line.
The rate is smoothed over recent updates and stays blank until there is something to
measure, so the first reading is never a division by a microsecond.
"""

from __future__ import annotations

import shutil
import sys
from types import TracebackType
from typing import TextIO

from tqdm import tqdm


class ProgressLine:
    """A progress line for ``total`` items of ``unit`` (``total`` None: a counter with a rate).

    :param enabled: None shows the line only when ``stream`` is a terminal.
    :param scale_bytes: for downloads: 1.2 MB, 3.4 MB/s instead of raw counts.
    """

    def __init__(
        self,
        what: str,
        total: int | None = None,
        unit: str = "frames",
        stream: TextIO | None = None,
        enabled: bool | None = None,
        scale_bytes: bool = False,
    ) -> None:
        stream = stream or sys.stderr
        show = stream.isatty() if enabled is None else enabled
        self._bar = tqdm(
            total=total,
            desc=what,
            unit=" " + unit if not scale_bytes else "B",
            unit_scale=scale_bytes,
            unit_divisor=1024 if scale_bytes else 1000,
            file=stream,
            disable=not show,
            leave=True,
            ncols=None if shutil.get_terminal_size((0, 0)).columns else 100,
            mininterval=0.25,
            smoothing=0.1,
        )

    @property
    def shown(self) -> bool:
        """True when the line is drawn."""
        return not self._bar.disable

    def advance(self, n: int = 1) -> None:
        """``n`` more items are done."""
        self._bar.update(n)

    def set(self, done: int, total: int | None = None) -> None:
        """``done`` items of ``total`` (for callbacks that report totals, like downloads)."""
        if total != self._bar.total or done < self._bar.n:
            self._bar.reset(total=total)  # the next file of a series
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        """End the line (it stays on screen). Idempotent."""
        self._bar.close()

    def __enter__(self) -> ProgressLine:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
