"""Every queue in livefuse: bounded, with a declared policy, and thread-safe.

``FramePool`` hands out preallocated images so capture allocates nothing per frame.
``FrameQueue`` connects two pipeline threads. Its policy says what happens when it is
full: ``"latest"`` (live sources) drops the oldest item so the newest always gets
through, ``"block"`` (files) makes the producer wait so nothing is lost.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, Literal, TypeVar

import numpy as np

T = TypeVar("T")

#: What a full ``FrameQueue`` does on ``put``.
Policy = Literal["latest", "block"]
POLICIES: tuple[Policy, ...] = ("latest", "block")


class QueueClosed(Exception):
    """Raised by ``FrameQueue.get`` once the queue is closed and empty (end of stream),
    and by ``put`` once it is closed."""


class FramePool:
    """``slots`` preallocated H×W×3 uint8 images, handed out and returned.

    ``acquire`` blocks while every slot is in use: that is how a slow pipeline pushes
    back on capture without allocating. Slots are identified by identity, so return
    the exact array ``acquire`` gave you.
    """

    def __init__(self, slots: int, height: int, width: int, channels: int = 3) -> None:
        if slots < 1:
            raise ValueError(f"FramePool needs at least 1 slot, got {slots}")
        if height < 1 or width < 1:
            raise ValueError(f"FramePool image size must be positive, got {width}x{height}")
        self.shape = (height, width, channels)
        self._images = [np.zeros(self.shape, np.uint8) for _ in range(slots)]
        self._slot_of = {id(image): i for i, image in enumerate(self._images)}
        self._free: deque[int] = deque(range(slots))
        self._cond = threading.Condition()

    @property
    def size(self) -> int:
        """Number of slots."""
        return len(self._images)

    @property
    def available(self) -> int:
        """Number of slots free right now."""
        with self._cond:
            return len(self._free)

    def acquire(self, timeout: float | None = None, stop: threading.Event | None = None) -> np.ndarray | None:
        """A free image, or ``None`` if ``timeout`` seconds pass or ``stop`` is set first.

        With a ``stop`` event the wait wakes up regularly to check it, so a stopping
        pipeline never hangs here.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._free:
                if stop is not None and stop.is_set():
                    return None
                wait = _remaining(deadline)
                if wait is not None and wait <= 0:
                    return None
                if stop is not None:
                    # Nobody notifies the condition when ``stop`` is set: poll it every 50 ms.
                    wait = 0.05 if wait is None else min(wait, 0.05)
                self._cond.wait(wait)
            return self._images[self._free.popleft()]

    def release(self, image: np.ndarray) -> None:
        """Give ``image`` back. Raises ``ValueError`` for a foreign or already free image."""
        slot = self._slot_of.get(id(image))
        if slot is None or self._images[slot] is not image:
            raise ValueError("FramePool.release got an image this pool did not hand out")
        with self._cond:
            if slot in self._free:
                raise ValueError(f"FramePool slot {slot} released twice")
            self._free.append(slot)
            self._cond.notify()


class FrameQueue(Generic[T]):
    """A bounded FIFO between two threads with a declared policy for when it is full.

    - ``"latest"``: ``put`` never blocks. When full, the oldest item is dropped, passed
      to ``on_drop`` (so its pool slot goes back) and counted in ``dropped``.
    - ``"block"``: ``put`` waits for space (back-pressure). Nothing is dropped, order is kept.

    ``close()`` marks end of stream: consumers still get what is queued, then ``get``
    raises ``QueueClosed``. ``put`` on a closed queue raises ``QueueClosed`` too.
    """

    def __init__(
        self,
        maxsize: int,
        policy: Policy,
        on_drop: Callable[[T], None] | None = None,
        name: str = "",
    ) -> None:
        if maxsize < 1:
            raise ValueError(f"FrameQueue maxsize must be at least 1, got {maxsize}")
        if policy not in POLICIES:
            raise ValueError(f"FrameQueue policy must be one of {POLICIES}, got {policy!r}")
        self.maxsize = maxsize
        self.policy: Policy = policy
        self.name = name
        self._on_drop = on_drop
        self._items: deque[T] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self.put_count = 0
        "Items accepted by ``put``."
        self.dropped = 0
        "Items dropped because the queue was full (``latest`` policy only)."
        self.high_water = 0
        "Largest number of items the queue has held."

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    @property
    def closed(self) -> bool:
        """True once ``close`` was called."""
        return self._closed

    def put(self, item: T, timeout: float | None = None) -> bool:
        """Enqueue ``item`` following the policy.

        Returns False only for ``"block"`` when ``timeout`` passed without space.
        Raises ``QueueClosed`` when the queue is (or gets) closed.
        """
        dropped: T | None = None
        has_dropped = False
        with self._cond:
            if self.policy == "block":
                if not self._wait_for_space(timeout):
                    return False
            elif self._closed:
                raise QueueClosed(self._closed_message())
            elif len(self._items) >= self.maxsize:
                dropped, has_dropped = self._items.popleft(), True
                self.dropped += 1
            self._items.append(item)
            self.put_count += 1
            self.high_water = max(self.high_water, len(self._items))
            self._cond.notify_all()
        # Outside the lock: on_drop may take other locks (the pool's).
        if has_dropped and self._on_drop is not None:
            self._on_drop(dropped)  # type: ignore[arg-type]
        return True

    def get(self, timeout: float | None = None) -> T | None:
        """The oldest item, or ``None`` if ``timeout`` seconds pass first.

        Raises ``QueueClosed`` when the queue is closed and empty.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._items:
                if self._closed:
                    raise QueueClosed(self._closed_message())
                wait = _remaining(deadline)
                if wait is not None and wait <= 0:
                    return None
                self._cond.wait(wait)
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def close(self) -> None:
        """Mark end of stream and wake every waiting producer and consumer. Idempotent."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def drain(self) -> list[T]:
        """Remove and return everything queued (used at shutdown to give slots back)."""
        with self._cond:
            items = list(self._items)
            self._items.clear()
            self._cond.notify_all()
            return items

    def _wait_for_space(self, timeout: float | None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while len(self._items) >= self.maxsize and not self._closed:
            wait = _remaining(deadline)
            if wait is not None and wait <= 0:
                return False
            self._cond.wait(wait)
        if self._closed:
            raise QueueClosed(self._closed_message())
        return True

    def _closed_message(self) -> str:
        return f"queue {self.name or id(self)} is closed"


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else deadline - time.monotonic()
