"""A real MJPEG-over-HTTP camera on 127.0.0.1 (as IP cameras serve it), that can be killed and restarted.

Serves ``multipart/x-mixed-replace`` JPEG frames at a steady rate to every client. ``kill()``
drops the listening socket and every open connection at once (a camera losing power);
``start()`` brings it back on the same port. Tests and the soak benchmark use it.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Sequence

import cv2
import numpy as np

_BOUNDARY = b"livefuseframe"


class MjpegCamera:
    """An MJPEG stream at ``http://127.0.0.1:PORT/stream.mjpg`` cycling through ``frames``."""

    def __init__(self, frames: Sequence[np.ndarray], fps: float = 30.0, port: int = 0) -> None:
        if not frames:
            raise ValueError("MjpegCamera needs at least one frame")
        self._jpegs = [cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes() for f in frames]
        self.fps = fps
        self.port = port
        self.served = 0
        "Frames sent, to all clients together."
        self._listener: socket.socket | None = None
        self._clients: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/stream.mjpg"

    def start(self) -> MjpegCamera:
        """Listen (again) on the port, serving each client from its own thread."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(8)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._stop = threading.Event()
        accept = threading.Thread(target=self._accept, args=(listener, self._stop), name="mjpeg-accept", daemon=True)
        self._threads = [accept]
        accept.start()
        return self

    def kill(self) -> None:
        """Drop everything at once: the listening socket and every client connection."""
        self._stop.set()
        with self._lock:
            socks = ([self._listener] if self._listener else []) + self._clients
            self._listener, self._clients = None, []
        for sock in socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # not connected (the listener) or already reset by the client
            sock.close()
        for thread in self._threads:
            thread.join(5)

    def __enter__(self) -> MjpegCamera:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()

    def _accept(self, listener: socket.socket, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return  # listener closed by kill()
            with self._lock:
                self._clients.append(client)
            thread = threading.Thread(target=self._serve, args=(client, stop), name="mjpeg-client", daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, client: socket.socket, stop: threading.Event) -> None:
        try:
            client.settimeout(5)
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = client.recv(4096)
                if not chunk:
                    return
                request += chunk
            client.sendall(
                b"HTTP/1.0 200 OK\r\nCache-Control: no-cache\r\n"
                b"Content-Type: multipart/x-mixed-replace; boundary=" + _BOUNDARY + b"\r\n\r\n"
            )
            period, next_t, index = 1.0 / self.fps, time.monotonic(), 0
            while not stop.is_set():
                jpeg = self._jpegs[index % len(self._jpegs)]
                client.sendall(
                    b"--"
                    + _BOUNDARY
                    + b"\r\nContent-Type: image/jpeg\r\nContent-Length: "
                    + str(len(jpeg)).encode()
                    + b"\r\n\r\n"
                    + jpeg
                    + b"\r\n"
                )
                self.served += 1
                index += 1
                next_t += period
                stop.wait(max(next_t - time.monotonic(), 0))
        except OSError:
            return  # the client went away, or kill() reset the connection
        finally:
            with self._lock:
                if client in self._clients:
                    self._clients.remove(client)
            client.close()
