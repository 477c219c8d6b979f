"""What the GPU code asks of a device: streams, events, pinned host memory, async copies.

Small protocols, so that the code above them (the GPU frame path's ring, the runners) runs and is
tested with threads on machines without a GPU; :mod:`livefuse.runtime.cuda` implements them with
cuda-python.
"""

from __future__ import annotations

import ctypes
import math
from typing import Any, Protocol, TypeVar

import numpy as np


class Closeable(Protocol):
    """Anything that owns a GPU or pinned-memory resource."""

    def close(self) -> None:
        """Free the resource. Idempotent."""


class Stream(Closeable, Protocol):
    """An in-order queue of GPU work."""

    def wait(self, event: Event) -> None:
        """Make work queued on this stream from now on wait until ``event``'s last record completes."""


class Event(Closeable, Protocol):
    """A marker in a stream: complete once the work queued before it has run."""

    def record(self, stream: Stream) -> None:
        """Place the marker at the current end of ``stream`` (replacing an earlier record)."""

    def query(self) -> bool:
        """True when the last record has completed (or there was none)."""

    def synchronize(self) -> None:
        """Block the calling thread until the last record completes."""


class HostBuffer(Closeable, Protocol):
    """Page-locked host memory, seen as a 1-D uint8 array."""

    @property
    def array(self) -> np.ndarray:
        """The buffer as a writable 1-D uint8 array (no copy)."""


D = TypeVar("D", bound=Closeable)
C = TypeVar("C", bound=Closeable)


class DeviceOps(Protocol[D]):
    """What the ring needs from a GPU: streams, events, buffers and async copies."""

    def new_stream(self) -> Stream: ...

    def new_event(self) -> Event: ...

    def host_buffer(self, nbytes: int) -> HostBuffer: ...

    def device_buffer(self, nbytes: int) -> D: ...

    def copy_h2d(self, dst: D, src: np.ndarray, nbytes: int, stream: Stream) -> None:
        """Queue a copy of ``src[:nbytes]`` (pinned) into ``dst`` on ``stream``; returns at once."""

    def copy_d2h(self, dst: np.ndarray, src: D, nbytes: int, stream: Stream) -> None:
        """Queue a copy of ``nbytes`` of ``src`` into ``dst`` (pinned) on ``stream``; returns at once."""


def host_view(address: int, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """A numpy view of ``shape``×``dtype`` host memory at ``address`` (no copy): a caller's
    buffer handed over as a pointer, as device code does on a CPU device."""
    kind = np.dtype(dtype)
    count = math.prod(shape)
    raw = (ctypes.c_byte * (count * kind.itemsize)).from_address(address)
    return np.frombuffer(raw, dtype=kind, count=count).reshape(shape)
