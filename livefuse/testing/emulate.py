"""The CPU emulator of the GPU kernels, and a host-memory stand-in for the GPU.

``kernels.cu`` compiled by the C++ compiler with ``emulate.hpp`` runs every thread of a launch
in turn. It is the reference the GPU kernels are held to on machines without a GPU, and, with
:class:`HostDevice`, it runs the whole GPU frame path (ring, uploads, kernels, model, downloads)
on host memory, so that path's logic is tested everywhere. It is not a fast path.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from livefuse.errors import KernelError
from livefuse.models.files import atomic_path
from livefuse.runtime.base import Runner
from livefuse.runtime.device import host_view as view
from livefuse.swap.gpu.kernels import ArgPack, Dim3, source_text

#: -ffp-contract=off: no fused multiply-adds, as NVRTC is told (--fmad=false), so that both
#: round the same way.
CXXFLAGS = ("-O2", "-std=c++17", "-shared", "-fPIC", "-DLF_EMULATE", "-ffp-contract=off")


def compiler() -> str:
    """The C++ compiler to use: ``$CXX``, else g++ or clang++ on the PATH."""
    for name in (os.environ.get("CXX"), "g++", "clang++", "c++"):
        if name and shutil.which(name):
            return name
    raise KernelError(
        "no C++ compiler found to build the kernel emulator: install g++ "
        "(Debian/Ubuntu: apt-get install g++) or set CXX"
    )


#: The emulator's own files, beside this module: the thread loop and the CUDA built-ins it stands in for.
EMULATOR_SOURCES = ("emulate.hpp", "emulate.cpp")


def emulator_digest() -> str:
    """sha256 over the kernel source and the emulator's files: the key of the compiled library."""
    digest = hashlib.sha256(source_text().encode())
    for name in EMULATOR_SOURCES:
        digest.update(resources.files("livefuse.testing").joinpath(name).read_bytes())
    return digest.hexdigest()


def build(cache_dir: Path) -> Path:
    """The emulator library for the shipped sources, compiled once into ``cache_dir``."""
    target = cache_dir / f"lf-emulate-{emulator_digest()[:16]}.so"
    if target.exists():
        return target
    cxx = compiler()
    with tempfile.TemporaryDirectory() as tmp, atomic_path(target) as out:
        (Path(tmp) / "kernels.cu").write_text(source_text(), encoding="utf-8")
        for name in EMULATOR_SOURCES:
            (Path(tmp) / name).write_bytes(resources.files("livefuse.testing").joinpath(name).read_bytes())
        command = [cxx, *CXXFLAGS, "-o", str(out), str(Path(tmp) / "emulate.cpp")]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise KernelError(f"building the kernel emulator failed ({' '.join(command)}):\n{done.stderr[-4000:]}")
    return target


class EmulatedKernels:
    """:class:`livefuse.swap.gpu.kernels.Kernels` on the CPU; ``stream`` is ignored (runs at once)."""

    def __init__(self, library: Path) -> None:
        self._lib: ctypes.CDLL | None = ctypes.CDLL(str(library))
        self._run = self._lib.lf_emulate
        self._run.argtypes = (ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)
        self._run.restype = ctypes.c_int
        self._grid = (ctypes.c_uint * 3)()
        self._block = (ctypes.c_uint * 3)()

    def launch(self, pack: ArgPack, grid: Dim3, block: Dim3, stream: object) -> None:
        self._grid[:], self._block[:] = list(grid), list(block)
        if self._run(pack.kernel.encode(), self._grid, self._block, pack.address) != 0:
            raise KernelError(f"the kernel emulator has no kernel {pack.kernel!r}")

    def close(self) -> None:
        self._lib = None


class HostArray:
    """ "Device" memory of :class:`HostDevice`: host bytes with a stable address."""

    def __init__(self, nbytes: int) -> None:
        self.array = np.zeros(nbytes, np.uint8)

    @property
    def ptr(self) -> int:
        return int(self.array.ctypes.data)

    def close(self) -> None:
        """Nothing to free early: the array goes with the object."""


class HostStream:
    """Runs its work at once, in order; so every event is complete when recorded."""

    def wait(self, event: object) -> None:
        """Nothing to wait for: earlier work has already run."""

    def close(self) -> None:
        """Nothing to free."""


class HostEvent:
    """Always complete (:class:`HostStream` runs work as it is queued)."""

    def record(self, stream: object) -> None:
        """Nothing to mark: the stream's work has run."""

    def query(self) -> bool:
        return True

    def synchronize(self) -> None:
        """Never waits."""

    def close(self) -> None:
        """Nothing to free."""


class HostDevice:
    """:class:`livefuse.swap.gpu.ring.DeviceOps` on host memory, for the emulated frame path."""

    def new_stream(self) -> HostStream:
        return HostStream()

    def new_event(self) -> HostEvent:
        return HostEvent()

    def host_buffer(self, nbytes: int) -> HostArray:
        return HostArray(nbytes)

    def device_buffer(self, nbytes: int) -> HostArray:
        return HostArray(nbytes)

    def copy_h2d(self, dst: HostArray, src: np.ndarray, nbytes: int, stream: object) -> None:
        dst.array[:nbytes] = src[:nbytes]

    def copy_d2h(self, dst: np.ndarray, src: HostArray, nbytes: int, stream: object) -> None:
        dst[:nbytes] = src.array[:nbytes]

    def copy_d2d(self, dst: HostArray, src: HostArray, nbytes: int, stream: object) -> None:
        dst.array[:nbytes] = src.array[:nbytes]


class HostModel:
    """:class:`livefuse.swap.gpu.path.DeviceModel` over emulated device memory: a CPU runner reads
    its inputs from and writes its outputs to :class:`HostArray` addresses."""

    def __init__(self, runner: Runner, item_shapes: Mapping[str, tuple[int, ...]], dtype: Any = np.float32) -> None:
        self.runner = runner
        self.item_shapes = dict(item_shapes)
        self.dtype = np.dtype(dtype)
        self.calls = 0

    def infer_device(self, inputs: Mapping[str, int], outputs: Mapping[str, int], batch: int, stream: Any) -> None:
        feeds = {name: view(ptr, (batch, *self.item_shapes[name]), self.dtype) for name, ptr in inputs.items()}
        results = dict(zip((spec.name for spec in self.runner.outputs), self.runner.infer(feeds)))
        for name, ptr in outputs.items():
            view(ptr, (batch, *self.item_shapes[name]), self.dtype)[...] = results[name]
        self.calls += 1
