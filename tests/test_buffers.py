"""FramePool and FrameQueue: bounds, policies, counters, close semantics."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from livefuse.buffers import FramePool, FrameQueue, QueueClosed

# -- FramePool ---------------------------------------------------------------------------


def test_pool_hands_out_distinct_preallocated_images() -> None:
    pool = FramePool(3, 4, 5)
    images = [pool.acquire(timeout=0) for _ in range(3)]
    assert all(img is not None and img.shape == (4, 5, 3) and img.dtype == np.uint8 for img in images)
    assert len({id(img) for img in images}) == 3
    assert pool.available == 0
    for img in images:
        assert img is not None
        pool.release(img)
    assert pool.available == 3
    # The same arrays come back: nothing is allocated per frame.
    again = {id(pool.acquire(timeout=0)) for _ in range(3)}
    assert again == {id(img) for img in images}


def test_pool_acquire_blocks_until_release() -> None:
    pool = FramePool(1, 2, 2)
    held = pool.acquire()
    assert held is not None
    threading.Timer(0.05, pool.release, args=(held,)).start()
    start = time.monotonic()
    got = pool.acquire(timeout=2)
    assert got is held
    assert 0.03 < time.monotonic() - start < 1.0


def test_pool_acquire_times_out_and_honours_stop() -> None:
    pool = FramePool(1, 2, 2)
    assert pool.acquire() is not None
    assert pool.acquire(timeout=0.02) is None
    stop = threading.Event()
    threading.Timer(0.05, stop.set).start()
    start = time.monotonic()
    assert pool.acquire(stop=stop) is None
    assert time.monotonic() - start < 1.0


def test_pool_rejects_foreign_and_double_release() -> None:
    pool = FramePool(2, 2, 2)
    with pytest.raises(ValueError, match="did not hand out"):
        pool.release(np.zeros((2, 2, 3), np.uint8))
    img = pool.acquire()
    assert img is not None
    pool.release(img)
    with pytest.raises(ValueError, match="released twice"):
        pool.release(img)


@pytest.mark.parametrize("args", [(0, 2, 2), (1, 0, 2), (1, 2, -1)])
def test_pool_rejects_bad_sizes(args: tuple[int, int, int]) -> None:
    with pytest.raises(ValueError):
        FramePool(*args)


# -- FrameQueue --------------------------------------------------------------------------


def test_latest_drops_oldest_and_counts() -> None:
    dropped: list[int] = []
    q: FrameQueue[int] = FrameQueue(2, "latest", on_drop=dropped.append)
    for i in range(5):
        assert q.put(i) is True  # never blocks
    assert dropped == [0, 1, 2]
    assert q.dropped == 3 and q.put_count == 5 and q.high_water == 2
    assert [q.get(timeout=0), q.get(timeout=0)] == [3, 4]
    assert q.get(timeout=0) is None


def test_block_applies_back_pressure_and_keeps_order() -> None:
    q: FrameQueue[int] = FrameQueue(2, "block")
    n = 500
    got: list[int] = []

    def consume() -> None:
        while True:
            try:
                item = q.get()
            except QueueClosed:
                return
            if item is not None:
                got.append(item)

    consumer = threading.Thread(target=consume)
    consumer.start()
    for i in range(n):
        q.put(i)
    q.close()
    consumer.join(5)
    assert got == list(range(n))
    assert q.dropped == 0 and q.high_water <= 2


def test_block_put_waits_and_times_out() -> None:
    q: FrameQueue[int] = FrameQueue(1, "block")
    q.put(1)
    assert q.put(2, timeout=0.02) is False
    threading.Timer(0.05, q.get).start()
    start = time.monotonic()
    assert q.put(3, timeout=2) is True
    assert time.monotonic() - start >= 0.03


def test_close_drains_then_signals_end() -> None:
    q: FrameQueue[str] = FrameQueue(3, "block")
    q.put("a")
    q.put("b")
    q.close()
    assert q.closed
    assert [q.get(), q.get()] == ["a", "b"]
    with pytest.raises(QueueClosed):
        q.get()
    with pytest.raises(QueueClosed):
        q.put("c")


@pytest.mark.parametrize("policy", ["latest", "block"])
def test_close_wakes_blocked_consumer(policy: str) -> None:
    q: FrameQueue[int] = FrameQueue(1, policy)  # type: ignore[arg-type]
    result: list[str] = []

    def consume() -> None:
        try:
            q.get()
        except QueueClosed:
            result.append("closed")

    t = threading.Thread(target=consume)
    t.start()
    time.sleep(0.02)
    q.close()
    t.join(1)
    assert result == ["closed"]


def test_close_wakes_blocked_producer() -> None:
    q: FrameQueue[int] = FrameQueue(1, "block")
    q.put(0)
    result: list[str] = []

    def produce() -> None:
        try:
            q.put(1)
        except QueueClosed:
            result.append("closed")

    t = threading.Thread(target=produce)
    t.start()
    time.sleep(0.02)
    q.close()
    t.join(1)
    assert result == ["closed"]


def test_drain_returns_everything() -> None:
    q: FrameQueue[int] = FrameQueue(3, "latest")
    for i in range(3):
        q.put(i)
    assert q.drain() == [0, 1, 2] and len(q) == 0


@pytest.mark.parametrize("maxsize, policy", [(0, "latest"), (2, "newest")])
def test_queue_rejects_bad_arguments(maxsize: int, policy: str) -> None:
    with pytest.raises(ValueError):
        FrameQueue(maxsize, policy)  # type: ignore[arg-type]
