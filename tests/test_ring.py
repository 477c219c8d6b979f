"""Pinned ring buffer slot logic, on the CPU with fake streams and events.

``FakeGpu`` behaves like CUDA where it matters: each stream is a thread running its queue in
order (with random delays, so streams interleave differently every run), an event completes
when its stream reaches it, and ``Stream.wait`` holds back later work on that stream until the
event's record at the time of the call completes. ``ManualEvent`` completes only when the
test says so, in any order.
"""

from __future__ import annotations

import queue
import random
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from livefuse.runtime.device import Event, Stream
from livefuse.swap.gpu.ring import PinnedRing, RingClosed, Slot, SlotState
from tests.helpers import cuda_gpus

# --------------------------------------------------------------------------- fakes


class FakeEvent:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.recorded = 0
        self.completed = 0

    def record(self, stream: Stream) -> None:
        assert isinstance(stream, FakeStream)
        with self._cond:
            self.recorded += 1
            generation = self.recorded
        stream.enqueue(lambda: self._complete(generation))

    def _complete(self, generation: int) -> None:
        with self._cond:
            self.completed = max(self.completed, generation)
            self._cond.notify_all()

    def wait_for(self, generation: int) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self.completed >= generation)

    def query(self) -> bool:
        with self._cond:
            return self.completed >= self.recorded

    def synchronize(self) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self.completed >= self.recorded)

    def close(self) -> None:
        pass


class FakeStream:
    """A worker thread running queued work in order, with a random delay before each item."""

    def __init__(self, seed: int, max_delay_s: float) -> None:
        self._work: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._rng = random.Random(seed)
        self._max_delay_s = max_delay_s
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def enqueue(self, work: Callable[[], None]) -> None:
        self._work.put(work)

    def wait(self, event: Event) -> None:
        assert isinstance(event, FakeEvent)
        generation = event.recorded  # CUDA semantics: the record current at the time of the call
        self.enqueue(lambda: event.wait_for(generation))

    def _run(self) -> None:
        while (work := self._work.get()) is not None:
            time.sleep(self._rng.uniform(0, self._max_delay_s))
            work()

    def close(self) -> None:
        self._work.put(None)
        self._thread.join()


class FakeBuffer:
    def __init__(self, nbytes: int) -> None:
        self.data = np.zeros(nbytes, np.uint8)
        self.closed = False

    @property
    def array(self) -> np.ndarray:
        return self.data

    def close(self) -> None:
        self.closed = True


class FakeGpu:
    """Also a hazard detector: work that runs on a stream checks that the buffer it reads still
    holds what the host queued it with. A slot reused too early fails that check."""

    def __init__(self, max_delay_s: float = 0.0003) -> None:
        self._seeds = iter(range(1000))
        self.max_delay_s = max_delay_s
        self.buffers: list[FakeBuffer] = []
        self.hazards: list[str] = []

    def new_stream(self) -> FakeStream:
        return FakeStream(next(self._seeds), self.max_delay_s)

    def new_event(self) -> FakeEvent:
        return FakeEvent()

    def host_buffer(self, nbytes: int) -> FakeBuffer:
        self.buffers.append(FakeBuffer(nbytes))
        return self.buffers[-1]

    device_buffer = host_buffer

    def copy_h2d(self, dst: FakeBuffer, src: np.ndarray, nbytes: int, stream: Stream) -> None:
        assert isinstance(stream, FakeStream)
        queued = src[:nbytes].copy()

        def run() -> None:
            if not np.array_equal(src[:nbytes], queued):
                self.hazards.append("host_in was overwritten before its upload ran")
            np.copyto(dst.data[:nbytes], src[:nbytes])

        stream.enqueue(run)

    def copy_d2h(self, dst: np.ndarray, src: FakeBuffer, nbytes: int, stream: Stream) -> None:
        assert isinstance(stream, FakeStream)
        stream.enqueue(lambda: np.copyto(dst[:nbytes], src.data[:nbytes]))

    def xor_kernel(self, slot: Slot[FakeBuffer], stream: Stream) -> None:
        """The 'model': dev_out = dev_in ^ 0x5A, run on the compute stream."""
        assert isinstance(stream, FakeStream)
        queued = slot.host_in.copy()  # what the upload queued just before carries

        def run() -> None:
            if not np.array_equal(slot.dev_in.data, queued):
                self.hazards.append(f"slot {slot.index}: dev_in was overwritten before the compute read it")
            np.bitwise_xor(slot.dev_in.data, 0x5A, out=slot.dev_out.data)

        stream.enqueue(run)


def frame(i: int, nbytes: int) -> np.ndarray:
    return ((np.arange(nbytes) * 7 + i * 13) % 256).astype(np.uint8)


# --------------------------------------------------------------------------- data path under load


@pytest.mark.parametrize("slots", [1, 2, 4])
def test_frames_come_back_intact_and_in_order_under_load(slots: int) -> None:
    """Producer and consumer threads against three racing streams. The consumer drops every
    third frame (releases it unread, as a live output does with stale frames), so the producer
    gets slots whose trip is still running: reusing one before its done event would overwrite
    a buffer that a queued copy or compute has yet to read."""
    gpu, nbytes, frames = FakeGpu(), 4096, 150
    ring = PinnedRing(gpu, slots, nbytes, nbytes)
    in_flight: queue.Queue[tuple[int, Slot[FakeBuffer]] | None] = queue.Queue()
    errors: list[str] = []

    def produce() -> None:
        for i in range(frames):
            slot = ring.acquire(timeout=10)
            assert slot is not None
            if not slot.done.query():
                errors.append(f"frame {i}: slot {slot.index} handed out before its done event completed")
            np.copyto(slot.host_in, frame(i, nbytes))
            ring.submit(slot, gpu.xor_kernel)
            in_flight.put((i, slot))
        in_flight.put(None)

    producer = threading.Thread(target=produce)
    producer.start()
    seen = []
    while (item := in_flight.get(timeout=10)) is not None:
        i, slot = item
        if i % 3 != 2:
            out = ring.result(slot, timeout=10)
            assert out is not None
            if not np.array_equal(out, frame(i, nbytes) ^ 0x5A):
                errors.append(f"frame {i} came back corrupted from slot {slot.index}")
            seen.append(i)
        ring.release(slot)
    producer.join()
    ring.close()
    assert errors == [] and gpu.hazards == []
    assert seen == [i for i in range(frames) if i % 3 != 2]
    assert sum(s.uses for s in ring.slots) == frames
    assert all(b.closed for b in gpu.buffers)


def test_a_failed_allocation_frees_everything_allocated_before_it() -> None:
    class ShortGpu(FakeGpu):
        def device_buffer(self, nbytes: int) -> FakeBuffer:
            if len(self.buffers) == 11:  # 4 buffers a slot: fail on the 3rd slot's second device buffer
                raise MemoryError("out of GPU memory")
            return self.host_buffer(nbytes)

    gpu = ShortGpu(0)
    with pytest.raises(MemoryError):
        PinnedRing(gpu, 4, 8, 8)
    assert len(gpu.buffers) == 11 and all(b.closed for b in gpu.buffers)


def test_partial_frames_copy_only_their_bytes() -> None:
    gpu = FakeGpu(0)
    ring = PinnedRing(gpu, 2, 64, 64)
    slot = ring.acquire()
    assert slot is not None
    slot.host_in[:] = 1
    ring.submit(slot, gpu.xor_kernel, in_nbytes=16, out_nbytes=16)
    out = ring.result(slot)
    assert out is not None and (out[:16] == 1 ^ 0x5A).all() and (out[16:] == 0).all()
    ring.release(slot)
    ring.close()


# --------------------------------------------------------------------------- events completed by hand


class ManualEvent(FakeEvent):
    """Records never complete by themselves: ``finish`` completes the latest one."""

    def record(self, stream: object) -> None:
        with self._cond:
            self.recorded += 1

    def finish(self) -> None:
        self._complete(self.recorded)


class NullStream:
    def wait(self, event: object) -> None:
        pass

    def close(self) -> None:
        pass


class ManualGpu:
    """Streams and copies do nothing; only the ring's bookkeeping and the events matter."""

    def new_event(self) -> ManualEvent:
        return ManualEvent()

    def new_stream(self) -> NullStream:
        return NullStream()

    def host_buffer(self, nbytes: int) -> FakeBuffer:
        return FakeBuffer(nbytes)

    device_buffer = host_buffer

    def copy_h2d(self, dst: FakeBuffer, src: np.ndarray, nbytes: int, stream: Stream) -> None:
        pass

    def copy_d2h(self, dst: np.ndarray, src: FakeBuffer, nbytes: int, stream: Stream) -> None:
        pass


def no_kernel(slot: Slot[FakeBuffer], stream: Stream) -> None:
    pass


def done(slot: Slot[FakeBuffer] | None) -> ManualEvent:
    assert slot is not None and isinstance(slot.done, ManualEvent)
    return slot.done


def test_slot_waits_for_its_own_done_event_not_any_event() -> None:
    ring = PinnedRing(ManualGpu(), 3, 8, 8)
    taken = [ring.acquire(timeout=1) for _ in range(3)]
    for slot in taken:
        assert slot is not None
        ring.submit(slot, no_kernel)
        ring.release(slot)  # the host is done with it, the GPU is not
    got: list[Slot[FakeBuffer] | None] = []
    waiter = threading.Thread(target=lambda: got.append(ring.acquire(timeout=5)))
    waiter.start()
    done(taken[2]).finish()  # later slots complete first...
    done(taken[1]).finish()
    time.sleep(0.05)
    assert got == [] and waiter.is_alive()  # ...but slot 0 is next in the ring and still busy
    done(taken[0]).finish()
    waiter.join(5)
    assert got[0] is taken[0] and got[0] is not None and got[0].uses == 2


def test_acquire_times_out_while_done_is_pending_or_the_host_holds_the_slot() -> None:
    ring = PinnedRing(ManualGpu(), 1, 8, 8)
    slot = ring.acquire(timeout=1)
    assert slot is not None
    assert ring.acquire(timeout=0.02) is None  # held by the host
    ring.submit(slot, no_kernel)
    ring.release(slot)
    assert ring.acquire(timeout=0.02) is None  # released, but the GPU is not done
    done(slot).finish()
    assert ring.acquire(timeout=1) is slot


def test_done_events_completed_out_of_order_by_threads_never_free_a_slot_early() -> None:
    """Completer threads finish pending done events in random order while a producer cycles
    through the ring; every handed-out slot must have its done event complete."""
    ring = PinnedRing(ManualGpu(), 4, 8, 8)
    pending: list[Slot[FakeBuffer]] = []
    lock, stop = threading.Lock(), threading.Event()
    completion_order: list[int] = []
    early: list[str] = []

    def complete(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            with lock:
                slot = pending.pop(rng.randrange(len(pending))) if pending else None
            if slot is None:
                time.sleep(0.0002)
                continue
            time.sleep(rng.uniform(0, 0.0005))
            completion_order.append(slot.index)
            done(slot).finish()

    completers = [threading.Thread(target=complete, args=(seed,)) for seed in range(3)]
    for t in completers:
        t.start()
    submit_order = []
    for i in range(400):
        slot = ring.acquire(timeout=10)
        assert slot is not None
        if not slot.done.query():
            early.append(f"use {i}: slot {slot.index} reused before its done event completed")
        ring.submit(slot, no_kernel)
        ring.release(slot)
        submit_order.append(slot.index)
        with lock:
            pending.append(slot)
    stop.set()
    for t in completers:
        t.join()
    assert early == []
    assert submit_order == [i % 4 for i in range(400)]  # strict ring order
    assert completion_order != submit_order[: len(completion_order)]  # completions really were out of order


def test_misuse_is_refused() -> None:
    ring = PinnedRing(ManualGpu(), 2, 8, 8)
    slot = ring.acquire()
    assert slot is not None and slot.state is SlotState.HELD
    with pytest.raises(ValueError, match="only a submitted slot"):
        ring.result(slot)
    ring.submit(slot, no_kernel)
    with pytest.raises(ValueError, match="submit it once"):
        ring.submit(slot, no_kernel)
    ring.release(slot)
    with pytest.raises(ValueError, match="released twice"):
        ring.release(slot)
    with pytest.raises(ValueError):
        PinnedRing(ManualGpu(), 0, 8, 8)
    done(slot).finish()
    ring.close()
    with pytest.raises(RingClosed):
        ring.acquire()


def test_a_failing_compute_leaves_the_slot_releasable() -> None:
    ring = PinnedRing(FakeGpu(0), 1, 8, 8)
    slot = ring.acquire()
    assert slot is not None

    def broken(slot: Slot[FakeBuffer], stream: Stream) -> None:
        raise RuntimeError("kernel launch failed")

    with pytest.raises(RuntimeError):
        ring.submit(slot, broken)
    assert slot.state is SlotState.HELD
    ring.release(slot)
    assert ring.acquire(timeout=2) is slot  # done covered the queued upload, then completed
    ring.close()


# --------------------------------------------------------------------------- the CUDA implementation


def test_check_is_the_one_cuda_error_point() -> None:
    """Runs wherever cuda-python is installed, GPU or not."""
    pytest.importorskip("cuda.bindings", reason="cuda-python is not installed (pip install cuda-python)")
    from cuda.bindings import runtime as cudart

    from livefuse.runtime import cuda

    ok, no_device = cudart.cudaError_t.cudaSuccess, cudart.cudaError_t.cudaErrorNoDevice
    assert cuda.check((ok,), "x") is None
    assert cuda.check((ok, 7), "x") == 7
    assert cuda.check((ok, 1, 2), "x") == (1, 2)
    with pytest.raises(cuda.CudaError, match="cudaMalloc failed: cudaErrorNoDevice.*nvidia-smi"):
        cuda.check((no_device, None), "cudaMalloc")
    found = cuda.probe()
    assert found.runtime_version > 0 and (found.gpus or found.error)
    if not found.gpus:
        with pytest.raises(cuda.CudaError):  # no GPU: resources fail through check(), they never crash
            cuda.Stream()


@pytest.mark.gpu
@pytest.mark.skipif(cuda_gpus() == 0, reason="needs cuda-python and an NVIDIA GPU")
def test_ring_on_a_real_gpu_under_load() -> None:
    """The same trip as above on real streams: the 'model' is a device-to-device copy."""
    from livefuse.runtime.cuda import CudaDevice, DeviceBuffer

    gpu, nbytes, frames = CudaDevice(0), 1 << 20, 300
    ring: PinnedRing[DeviceBuffer] = PinnedRing(gpu, 3, nbytes, nbytes)

    def copy(slot: Slot[DeviceBuffer], stream: Stream) -> None:
        gpu.copy_d2d(slot.dev_out, slot.dev_in, nbytes, stream)

    in_flight: list[tuple[int, Slot[DeviceBuffer]]] = []
    for i in range(frames):
        slot = ring.acquire(timeout=10)
        assert slot is not None and slot.done.query()
        np.copyto(slot.host_in, frame(i, nbytes))
        ring.submit(slot, copy)
        in_flight.append((i, slot))
        if len(in_flight) == 2:  # the consumer lags two frames, and drops every third
            j, old = in_flight.pop(0)
            if j % 3 != 2:
                out = ring.result(old, timeout=10)
                assert out is not None and np.array_equal(out, frame(j, nbytes))
            ring.release(old)
    for _, slot in in_flight:
        ring.release(slot)
    ring.close()


@pytest.mark.gpu
@pytest.mark.skipif(cuda_gpus() == 0, reason="needs cuda-python and an NVIDIA GPU")
def test_pinned_bandwidth_probe() -> None:
    from livefuse.runtime.cuda import pinned_bandwidth

    h2d, d2h = pinned_bandwidth(16 << 20, repeats=3)
    assert h2d > 1.0 and d2h > 1.0  # GB/s: any PCIe link does far better; pageable memory would not matter
