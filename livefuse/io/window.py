"""The ``--preview`` window, drawn with Tk (Python's own tkinter): no OpenCV GUI build needed.

livefuse installs the headless OpenCV so servers and containers stay free of X11/Qt
libraries; the GUI build of OpenCV cannot sit beside it (both own the ``cv2`` module). Tk
comes with Python on Windows and macOS and is one system package on Linux (``python3-tk``),
so a desktop gets a window after the plain install and a server never loads a GUI library.

Tk objects must be used from the thread that made them: the window lives in a thread of its
own. ``send`` copies the frame into a one-slot mailbox (newest wins, so a slow window never
holds the pipeline up) and the window thread shows it. 'q', Esc or closing the window calls
``on_quit``.
"""

from __future__ import annotations

import logging
import os
import platform
import threading
from collections.abc import Callable, Mapping

import numpy as np

from livefuse.errors import OutputError
from livefuse.frame import Frame
from livefuse.pipeline.stages import SourceInfo

log = logging.getLogger(__name__)

#: How often the window looks for a new frame and handles keys, in milliseconds.
_POLL_MS = 10


def window_problem(system: str, environ: Mapping[str, str]) -> str | None:
    """Why no preview window can be shown here, with the fix; None when one can."""
    try:
        import tkinter  # noqa: F401 - only probing
    except ImportError:
        return (
            "cannot show a preview: this Python has no Tk (tkinter). On Debian/Ubuntu "
            "`sudo apt install python3-tk`, on Fedora `sudo dnf install python3-tkinter`; "
            "or run without --preview."
        )
    if system not in ("Windows", "Darwin") and not (environ.get("DISPLAY") or environ.get("WAYLAND_DISPLAY")):
        return (
            "cannot show a preview: no display (DISPLAY and WAYLAND_DISPLAY are unset, as over "
            "SSH or in a container). Run from a desktop session or with `ssh -X`, or drop the "
            "preview and write to a file or virtual camera instead."
        )
    return None


class WindowPreviewSink:
    """Shows the processed frames in a window of their own."""

    def __init__(self, title: str = "livefuse", on_quit: Callable[[], None] | None = None) -> None:
        self.title = title
        self.on_quit = on_quit
        self.shown = 0
        "Frames the window has drawn."
        self._lock = threading.Lock()
        self._latest: np.ndarray | None = None
        self._fresh = False
        self._closing = threading.Event()
        self._ready = threading.Event()
        self._error: str | None = None
        self._thread: threading.Thread | None = None

    def open(self, info: SourceInfo) -> None:
        """Open the window (sized for the source) or raise ``OutputError`` saying why not."""
        problem = window_problem(platform.system(), os.environ)
        if problem:
            raise OutputError(problem)
        self._latest = np.zeros((info.height, info.width, 3), np.uint8)
        self._closing.clear()
        self._ready.clear()
        self._thread = threading.Thread(target=self._run, name="livefuse-preview", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            self.close()
            raise OutputError(f"cannot show a preview: {self._error}")

    def send(self, frame: Frame) -> None:
        """Hand ``frame`` to the window (copied: its buffer goes back to the pool)."""
        with self._lock:
            if self._latest is None or self._latest.shape != frame.image.shape:
                self._latest = np.empty_like(frame.image)
            np.copyto(self._latest, frame.image)
            self._fresh = True

    def close(self) -> None:
        """Close the window. Idempotent."""
        self._closing.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(5)

    # -- the window thread ------------------------------------------------------------------

    def _run(self) -> None:
        import tkinter

        try:
            root = tkinter.Tk()
        except tkinter.TclError as exc:
            self._error = str(exc)
            self._ready.set()
            return
        try:
            root.title(self.title)
            label = tkinter.Label(root)
            label.pack()
            root.bind("<Key>", lambda event: self._key(event.keysym))
            root.protocol("WM_DELETE_WINDOW", self._quit)
            self._ready.set()
            self._pump(root, label)
            root.mainloop()
        finally:
            root.destroy()

    def _pump(self, root: object, label: object) -> None:
        import tkinter

        assert isinstance(root, tkinter.Tk) and isinstance(label, tkinter.Label)
        if self._closing.is_set():
            root.quit()
            return
        with self._lock:
            image = ppm(self._latest) if self._fresh and self._latest is not None else None
            self._fresh = False
        if image is not None:
            photo = tkinter.PhotoImage(data=image, format="PPM")
            label.configure(image=photo)
            label.image = photo  # type: ignore[attr-defined]  # Tk drops an image nobody references
            self.shown += 1
        root.after(_POLL_MS, self._pump, root, label)

    def _key(self, keysym: str) -> None:
        if keysym in ("q", "Q", "Escape"):
            self._quit()

    def _quit(self) -> None:
        if self.on_quit is not None:
            self.on_quit()


def ppm(bgr: np.ndarray) -> bytes:
    """``bgr`` as a binary PPM (what Tk's PhotoImage reads without any imaging library)."""
    h, w = bgr.shape[:2]
    return b"P6 %d %d 255 " % (w, h) + bgr[:, :, ::-1].tobytes()
