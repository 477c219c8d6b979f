"""CUDA streams, events and memory through NVIDIA's cuda-python (``cuda.bindings``).

This is the only module that imports ``cuda.bindings``; import it lazily, inside functions,
and catch ``ImportError`` (``pip install cuda-python``). cuda-python ships as
wheels; pycuda would have to be compiled against a local CUDA toolkit.

Every call goes through :func:`check`, the one place CUDA errors become :class:`CudaError`.
Every resource is an object with ``close()`` and a context manager. The classes implement the
:mod:`livefuse.runtime.device` protocols (``CudaDevice`` is a ``DeviceOps``).

Verification: ``check``, ``describe`` and ``probe`` were run against cuda-bindings 12.9 on a
machine without a driver (they report it). The stream/event/memory classes and
``pinned_bandwidth`` need a GPU; their tests are marked ``gpu``.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from types import MappingProxyType, TracebackType
from typing import Any, TypeVar

import numpy as np
from cuda.bindings import driver
from cuda.bindings import runtime as cudart

from livefuse.errors import LivefuseError
from livefuse.runtime import device

_OK = cudart.cudaError_t.cudaSuccess
_NOT_READY = cudart.cudaError_t.cudaErrorNotReady

#: What to do about the CUDA errors users actually meet.
_FIXES = MappingProxyType(
    {
        cudart.cudaError_t.cudaErrorInsufficientDriver: (
            "the NVIDIA driver is older than this CUDA runtime needs (or missing): update the driver, "
            "or install builds made for an older CUDA; run 'livefuse doctor'"
        ),
        cudart.cudaError_t.cudaErrorNoDevice: (
            "no GPU is visible: check 'nvidia-smi', CUDA_VISIBLE_DEVICES, and that a container was "
            "started with GPU access (docker --gpus all)"
        ),
        cudart.cudaError_t.cudaErrorMemoryAllocation: (
            "the GPU is out of memory: close other GPU programs or use fewer faces per call"
        ),
    }
)


class CudaError(LivefuseError):
    """A CUDA call failed. ``code`` is the ``cudaError_t`` value."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def describe(err: Any) -> str:
    """``cudaErrorNoDevice (no CUDA-capable device is detected)`` for a ``cudaError_t`` (runtime
    API) or a ``CUresult`` (driver API, used for loading and launching kernels)."""
    if isinstance(err, driver.CUresult):
        _, name = driver.cuGetErrorName(err)
        _, text = driver.cuGetErrorString(err)
    else:
        _, name = cudart.cudaGetErrorName(err)
        _, text = cudart.cudaGetErrorString(err)
    return f"{name.decode()} ({text.decode()})"


def check(result: Any, what: str) -> Any:
    """Unwrap a cuda-python result ``(err, *values)``: the value(s), or raise :class:`CudaError`.

    The one error-check point: every call in livefuse goes through here.
    """
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != _OK:  # both APIs' enums are IntEnums with success = 0
        fix = _FIXES.get(err, "run 'livefuse doctor' to check the driver and GPU")
        raise CudaError(f"CUDA: {what} failed: {describe(err)}; {fix}", int(err))
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


_T = TypeVar("_T", bound="_Owned")


class _Owned:
    """One CUDA handle with an explicit, idempotent ``close`` and a context manager."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    def _free(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Free the resource. Idempotent."""
        if self.handle is not None:
            try:
                self._free()
            finally:
                self.handle = None

    def __enter__(self: _T) -> _T:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class Stream(_Owned):
    """A non-blocking CUDA stream (it does not synchronise with the legacy default stream)."""

    def __init__(self) -> None:
        super().__init__(check(cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking), "cudaStreamCreate"))

    def wait(self, event: device.Event) -> None:
        """Work queued on this stream from now on waits for ``event``'s last record."""
        check(cudart.cudaStreamWaitEvent(self.handle, _handle(event, Event), 0), "cudaStreamWaitEvent")

    def synchronize(self) -> None:
        """Block until everything queued on this stream has run."""
        check(cudart.cudaStreamSynchronize(self.handle), "cudaStreamSynchronize")

    def _free(self) -> None:
        check(cudart.cudaStreamDestroy(self.handle), "cudaStreamDestroy")


class Event(_Owned):
    """A CUDA event. Timing is off unless asked for (cheaper); waits yield the CPU."""

    def __init__(self, timing: bool = False) -> None:
        flags = cudart.cudaEventBlockingSync | (0 if timing else cudart.cudaEventDisableTiming)
        super().__init__(check(cudart.cudaEventCreateWithFlags(flags), "cudaEventCreate"))

    def record(self, stream: device.Stream) -> None:
        """Mark the current end of ``stream``."""
        check(cudart.cudaEventRecord(self.handle, _handle(stream, Stream)), "cudaEventRecord")

    def query(self) -> bool:
        """True when the last record completed; any error other than 'not ready' raises."""
        err = cudart.cudaEventQuery(self.handle)
        err = err[0] if isinstance(err, tuple) else err
        if err == _NOT_READY:
            return False
        check(err, "cudaEventQuery")
        return True

    def synchronize(self) -> None:
        """Block until the last record completes."""
        check(cudart.cudaEventSynchronize(self.handle), "cudaEventSynchronize")

    def elapsed_ms(self, start: Event) -> float:
        """Milliseconds from ``start`` to this event (both made with ``timing=True``)."""
        return float(check(cudart.cudaEventElapsedTime(start.handle, self.handle), "cudaEventElapsedTime"))

    def _free(self) -> None:
        check(cudart.cudaEventDestroy(self.handle), "cudaEventDestroy")


class PinnedBuffer(_Owned):
    """Page-locked host memory (needed for truly asynchronous copies), seen as uint8 numpy."""

    def __init__(self, nbytes: int) -> None:
        super().__init__(check(cudart.cudaHostAlloc(nbytes, cudart.cudaHostAllocDefault), "cudaHostAlloc"))
        self.nbytes = nbytes
        raw = (ctypes.c_uint8 * nbytes).from_address(int(self.handle))
        self._array = np.ctypeslib.as_array(raw)

    @property
    def array(self) -> np.ndarray:
        """The memory as a writable 1-D uint8 array (no copy; invalid after ``close``)."""
        return self._array

    def _free(self) -> None:
        check(cudart.cudaFreeHost(self.handle), "cudaFreeHost")


class DeviceBuffer(_Owned):
    """GPU memory. ``ptr`` is the device address (what TensorRT's ``set_tensor_address`` takes)."""

    def __init__(self, nbytes: int) -> None:
        super().__init__(check(cudart.cudaMalloc(nbytes), "cudaMalloc"))
        self.nbytes = nbytes

    @property
    def ptr(self) -> int:
        """The device address."""
        return int(self.handle)

    def _free(self) -> None:
        check(cudart.cudaFree(self.handle), "cudaFree")


def _handle(obj: object, kind: type[_Owned]) -> Any:
    """The CUDA handle of ``obj``, which must be one of this module's ``kind`` (not a fake)."""
    if not isinstance(obj, kind) or obj.handle is None:
        raise TypeError(f"expected an open livefuse.runtime.cuda.{kind.__name__}, got {obj!r}")
    return obj.handle


def _host_ptr(array: np.ndarray, nbytes: int) -> int:
    if not array.flags.c_contiguous or array.nbytes < nbytes:
        raise ValueError(f"host buffer must be contiguous and hold {nbytes} bytes")
    return int(array.ctypes.data)


class CudaDevice:
    """One GPU, as :class:`livefuse.runtime.device.DeviceOps`: streams, events, buffers, copies."""

    def __init__(self, index: int = 0) -> None:
        self.index = index
        check(cudart.cudaSetDevice(index), f"cudaSetDevice({index})")

    def new_stream(self) -> Stream:
        return Stream()

    def new_event(self) -> Event:
        return Event()

    def host_buffer(self, nbytes: int) -> PinnedBuffer:
        return PinnedBuffer(nbytes)

    def device_buffer(self, nbytes: int) -> DeviceBuffer:
        return DeviceBuffer(nbytes)

    def copy_h2d(self, dst: DeviceBuffer, src: np.ndarray, nbytes: int, stream: device.Stream) -> None:
        """Queue ``src[:nbytes]`` (pinned) → ``dst`` on ``stream``."""
        kind = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        handle = _handle(stream, Stream)
        check(cudart.cudaMemcpyAsync(dst.ptr, _host_ptr(src, nbytes), nbytes, kind, handle), "H2D copy")

    def copy_d2h(self, dst: np.ndarray, src: DeviceBuffer, nbytes: int, stream: device.Stream) -> None:
        """Queue ``nbytes`` of ``src`` → ``dst`` (pinned) on ``stream``."""
        kind = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        handle = _handle(stream, Stream)
        check(cudart.cudaMemcpyAsync(_host_ptr(dst, nbytes), src.ptr, nbytes, kind, handle), "D2H copy")

    def copy_d2d(self, dst: DeviceBuffer, src: DeviceBuffer, nbytes: int, stream: device.Stream) -> None:
        """Queue ``nbytes`` of ``src`` → ``dst`` (both on the GPU) on ``stream``."""
        kind = cudart.cudaMemcpyKind.cudaMemcpyDeviceToDevice
        check(cudart.cudaMemcpyAsync(dst.ptr, src.ptr, nbytes, kind, _handle(stream, Stream)), "D2D copy")


# --------------------------------------------------------------------------- facts


@dataclass(frozen=True, slots=True)
class Gpu:
    """One GPU as the CUDA runtime sees it."""

    index: int
    name: str
    cc: tuple[int, int]
    total_bytes: int


@dataclass(frozen=True, slots=True)
class CudaProbe:
    """What the CUDA runtime says about this machine. Versions are CUDA's ints (12040 = 12.4)."""

    driver_version: int
    "The newest CUDA version the installed driver supports; 0 when there is no driver."
    runtime_version: int
    "The CUDA runtime cuda-python was built with."
    gpus: tuple[Gpu, ...]
    error: str = ""
    "Why no GPU is usable (e.g. cudaErrorInsufficientDriver ...); empty when CUDA works."


def _gpu(index: int) -> Gpu:
    props = check(cudart.cudaGetDeviceProperties(index), "cudaGetDeviceProperties")
    name = props.name.split(b"\0", 1)[0].decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    return Gpu(index, name, (int(props.major), int(props.minor)), int(props.totalGlobalMem))


def probe() -> CudaProbe:
    """Driver and runtime versions and the visible GPUs. Never raises for 'no GPU'/'no driver'."""
    driver = check(cudart.cudaDriverGetVersion(), "cudaDriverGetVersion")
    runtime = check(cudart.cudaRuntimeGetVersion(), "cudaRuntimeGetVersion")
    err, count = cudart.cudaGetDeviceCount()
    if err != _OK:
        # The runtime says "driver insufficient" also when there is no driver at all.
        why = "no NVIDIA driver is loaded" if driver == 0 else f"CUDA {version_text(runtime)} needs a newer driver"
        error = f"{why}: {describe(err)}" if err == cudart.cudaError_t.cudaErrorInsufficientDriver else describe(err)
        return CudaProbe(int(driver), int(runtime), (), error)
    return CudaProbe(int(driver), int(runtime), tuple(_gpu(i) for i in range(int(count))))


def pinned_bandwidth(nbytes: int = 64 << 20, repeats: int = 5, device: int = 0) -> tuple[float, float]:
    """Measured pinned host↔device bandwidth in GB/s, ``(h2d, d2h)``: the best of ``repeats``."""
    gpu = CudaDevice(device)
    with PinnedBuffer(nbytes) as host, DeviceBuffer(nbytes) as dev, Stream() as stream:
        host.array[:] = 1  # touch every page once so the copy measures the bus, not page faults
        h2d = _best_ms(lambda: gpu.copy_h2d(dev, host.array, nbytes, stream), stream, repeats)
        d2h = _best_ms(lambda: gpu.copy_d2h(host.array, dev, nbytes, stream), stream, repeats)
    return nbytes / h2d / 1e6, nbytes / d2h / 1e6


def _best_ms(copy: Any, stream: Stream, repeats: int) -> float:
    best = float("inf")
    with Event(timing=True) as start, Event(timing=True) as end:
        for _ in range(repeats):
            start.record(stream)
            copy()
            end.record(stream)
            end.synchronize()
            best = min(best, end.elapsed_ms(start))
    return max(best, 1e-6)


def version_text(version: int) -> str:
    """CUDA's int version as text: 12040 → ``"12.4"``."""
    return f"{version // 1000}.{version % 1000 // 10}"
