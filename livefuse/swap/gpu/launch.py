"""Loads the compiled kernels onto the GPU and launches them (cuda-python's driver API).

The one GPU-only module of the frame path: NVRTC makes the code (:mod:`livefuse.swap.gpu.nvrtc`),
this loads it once per process and launches from preallocated :class:`ArgPack` s. Errors go
through :func:`livefuse.runtime.cuda.check`, the one error-check point.
"""

from __future__ import annotations

from typing import Any

from cuda.bindings import driver

from livefuse.runtime.cuda import Stream, check
from livefuse.swap.gpu.kernels import SIGNATURES, ArgPack, Dim3
from livefuse.swap.gpu.nvrtc import compile_kernels


def arch(device: int = 0) -> str:
    """``sm_90`` for the GPU at ``device``."""
    major = check(driver.cuDeviceGetAttribute(_attr("MAJOR"), device), "compute capability")
    minor = check(driver.cuDeviceGetAttribute(_attr("MINOR"), device), "compute capability")
    return f"sm_{major}{minor}"


def _attr(which: str) -> Any:
    return getattr(driver.CUdevice_attribute, f"CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_{which}")


class CudaKernels:
    """:class:`livefuse.swap.gpu.kernels.Kernels` on the current GPU. Call after
    :class:`livefuse.runtime.cuda.CudaDevice` made the device (and its context) current."""

    def __init__(self, device: int = 0) -> None:
        image = compile_kernels(arch(device))
        self._module: Any = check(driver.cuModuleLoadData(image), "loading the GPU kernels")
        self._functions = {
            name: check(driver.cuModuleGetFunction(self._module, name.encode()), f"kernel {name}")
            for name in SIGNATURES
        }

    def launch(self, pack: ArgPack, grid: Dim3, block: Dim3, stream: object) -> None:
        if not isinstance(stream, Stream) or stream.handle is None:
            raise TypeError(f"expected an open livefuse.runtime.cuda.Stream, got {stream!r}")
        function = self._functions[pack.kernel]
        handle = driver.CUstream(int(stream.handle))
        check(driver.cuLaunchKernel(function, *grid, *block, 0, handle, pack.address, 0), pack.kernel)

    def close(self) -> None:
        if self._module is not None:
            module, self._module = self._module, None
            check(driver.cuModuleUnload(module), "unloading the GPU kernels")

    def __enter__(self) -> CudaKernels:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
