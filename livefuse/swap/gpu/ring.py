"""A ring of N pinned-memory slots for frames going to the GPU and back.

Each slot holds a page-locked host buffer in, one out, and their device twins. One frame's trip::

    host writes slot.host_in
    h2d stream:      copy host_in → dev_in,   record slot.uploaded
    compute stream:  wait uploaded, run the model(s) on dev_in → dev_out, record slot.computed
    d2h stream:      wait computed, copy dev_out → host_out, record slot.done
    host reads slot.host_out after ``result(slot)``

Three streams so that frame k+1's upload and frame k-1's download overlap frame k's compute.
Streams run their work in order and ``done`` is recorded after the download, which waited for
the compute, which waited for the upload: once ``done`` completes, nothing on the GPU touches the
slot any more. So the one rule is: **a slot is reused only after its ``done`` event completes**
(and after the host has released it).

The GPU is reached only through the small ``DeviceOps``/``Stream``/``Event`` protocols of
:mod:`livefuse.runtime.device`: :mod:`livefuse.runtime.cuda` implements them with cuda-python,
and the tests implement them with threads, so the slot logic runs and is tested on machines
without a GPU.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic

import numpy as np

from livefuse.runtime.device import C, Closeable, D, DeviceOps, Event, Stream

#: How often a wait with a timeout looks at an event again (an event has no timed wait).
POLL_S = 0.0002


class SlotState(enum.Enum):
    """Where a slot is in its trip."""

    FREE = "free"
    "Never used, or released; reusable once ``done`` completes."
    HELD = "held"
    "Handed out by ``acquire``: the host fills ``host_in``."
    SUBMITTED = "submitted"
    "Its copies and compute are queued; ``result`` waits for them."


@dataclass(eq=False)
class Slot(Generic[D]):
    """One frame's buffers and the events that order its trip."""

    index: int
    host_in: np.ndarray
    host_out: np.ndarray
    dev_in: D
    dev_out: D
    uploaded: Event
    computed: Event
    done: Event
    uses: int = 0
    "How many times ``acquire`` has handed this slot out."
    state: SlotState = SlotState.FREE
    _owned: list[Closeable] = field(default_factory=list, repr=False)


#: The work run on the compute stream for one slot: read ``slot.dev_in``, write ``slot.dev_out``.
Compute = Callable[[Slot[D], Stream], None]


class RingClosed(Exception):
    """Raised by ``acquire`` and ``submit`` once the ring is closed."""


class PinnedRing(Generic[D]):
    """N slots handed out in ring order; see the module docstring for the one rule.

    ``acquire`` blocks until the next slot is released by the host *and* its ``done`` event has
    completed. ``submit`` queues the slot's trip and returns at once; ``result`` waits for it;
    ``release`` hands the slot back. Thread-safe: a capture thread may acquire and submit while
    an output thread calls ``result`` and ``release``.
    """

    def __init__(self, device: DeviceOps[D], slots: int, in_nbytes: int, out_nbytes: int) -> None:
        if slots < 1 or in_nbytes < 1 or out_nbytes < 1:
            raise ValueError(f"PinnedRing needs slots and sizes >= 1, got {slots}, {in_nbytes}, {out_nbytes}")
        self.device = device
        self.h2d = device.new_stream()
        self.compute = device.new_stream()
        self.d2h = device.new_stream()
        self.slots: list[Slot[D]] = []
        try:
            for i in range(slots):
                self.slots.append(self._new_slot(i, in_nbytes, out_nbytes))
        except BaseException:  # e.g. out of pinned or GPU memory: give back what was allocated
            self._free()
            raise
        self._cursor = 0
        self._cond = threading.Condition()
        self._acquiring = threading.Lock()  # acquirers take slots strictly in ring order
        self._closed = False

    def _new_slot(self, index: int, in_nbytes: int, out_nbytes: int) -> Slot[D]:
        owned: list[Closeable] = []

        def keep(resource: C) -> C:
            owned.append(resource)
            return resource

        try:
            host_in, host_out = keep(self.device.host_buffer(in_nbytes)), keep(self.device.host_buffer(out_nbytes))
            dev_in, dev_out = keep(self.device.device_buffer(in_nbytes)), keep(self.device.device_buffer(out_nbytes))
            events = keep(self.device.new_event()), keep(self.device.new_event()), keep(self.device.new_event())
        except BaseException:
            for resource in owned:
                resource.close()
            raise
        return Slot(index, host_in.array, host_out.array, dev_in, dev_out, *events, _owned=owned)

    def acquire(self, timeout: float | None = None) -> Slot[D] | None:
        """The next slot, for the host to fill; ``None`` if ``timeout`` seconds pass first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._acquiring.acquire(timeout=-1 if timeout is None else max(timeout, 0.0)):
            return None
        try:
            slot = self.slots[self._cursor]
            if not self._wait_released(slot, deadline) or not _wait_event(slot.done, deadline):
                return None
            with self._cond:
                self._check_open()
                slot.state = SlotState.HELD
                slot.uses += 1
                self._cursor = (self._cursor + 1) % len(self.slots)
            return slot
        finally:
            self._acquiring.release()

    def _wait_released(self, slot: Slot[D], deadline: float | None) -> bool:
        with self._cond:
            while slot.state is not SlotState.FREE:
                self._check_open()
                wait = None if deadline is None else deadline - time.monotonic()
                if wait is not None and wait <= 0:
                    return False
                self._cond.wait(wait)
            self._check_open()
            return True

    def submit(
        self,
        slot: Slot[D],
        compute: Compute[D],
        in_nbytes: int | None = None,
        out_nbytes: int | None = None,
        download: D | None = None,
    ) -> None:
        """Queue ``slot``'s upload, ``compute`` and download; returns without waiting.

        ``in_nbytes``/``out_nbytes`` copy only that much (frames smaller than the slot).
        ``download`` names the device buffer to bring back instead of ``slot.dev_out`` (e.g.
        ``slot.dev_in`` when the compute edits the frame in place: no device-side copy).
        """
        with self._cond:
            self._check_open()
            if slot.state is not SlotState.HELD:
                raise ValueError(f"slot {slot.index} is {slot.state.value}: submit it once, after acquire")
            slot.state = SlotState.SUBMITTED
        n_in = slot.host_in.nbytes if in_nbytes is None else in_nbytes
        n_out = slot.host_out.nbytes if out_nbytes is None else out_nbytes
        self.device.copy_h2d(slot.dev_in, slot.host_in, n_in, self.h2d)
        slot.uploaded.record(self.h2d)
        self.compute.wait(slot.uploaded)
        try:
            compute(slot, self.compute)
        except BaseException:
            # ``done`` must still cover what was queued (the upload, part of the compute) before
            # the slot can be reused; the caller releases it.
            slot.done.record(self.compute)
            with self._cond:
                slot.state = SlotState.HELD
            raise
        slot.computed.record(self.compute)
        self.d2h.wait(slot.computed)
        self.device.copy_d2h(slot.host_out, slot.dev_out if download is None else download, n_out, self.d2h)
        slot.done.record(self.d2h)

    def result(self, slot: Slot[D], timeout: float | None = None) -> np.ndarray | None:
        """``slot.host_out`` once its download completed; ``None`` if ``timeout`` passes first."""
        if slot.state is not SlotState.SUBMITTED:
            raise ValueError(f"slot {slot.index} is {slot.state.value}: only a submitted slot has a result")
        deadline = None if timeout is None else time.monotonic() + timeout
        return slot.host_out if _wait_event(slot.done, deadline) else None

    def release(self, slot: Slot[D]) -> None:
        """Give ``slot`` back (submitted or not). It is reused once its ``done`` event completes."""
        with self._cond:
            if slot.state is SlotState.FREE:
                raise ValueError(f"slot {slot.index} released twice")
            slot.state = SlotState.FREE
            self._cond.notify_all()

    def close(self) -> None:
        """Wait for every queued trip, then free the buffers, events and streams. Idempotent.

        Call it once the threads using the ring have stopped.
        """
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        for slot in self.slots:
            slot.done.synchronize()  # never free memory the GPU may still copy into
        self._free()

    def _free(self) -> None:
        for slot in self.slots:
            for resource in slot._owned:
                resource.close()
            slot._owned.clear()
        for stream in (self.h2d, self.compute, self.d2h):
            stream.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RingClosed("the ring is closed")

    def __enter__(self) -> PinnedRing[D]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _wait_event(event: Event, deadline: float | None) -> bool:
    """Wait for ``event``: blocking when there is no deadline, else by polling until it."""
    if deadline is None:
        event.synchronize()
        return True
    while not event.query():
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_S)
    return True
