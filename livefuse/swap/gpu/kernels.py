"""The kernels of ``kernels.cu`` as Python launches them: argument structs mirrored with
ctypes, one preallocated argument pack per launch site, launch geometry, and the
:class:`Kernels` protocol that the GPU (:mod:`livefuse.swap.gpu.launch`) and the CPU emulator
(:mod:`livefuse.testing.emulate`) both implement.
"""

from __future__ import annotations

import ctypes
import hashlib
from collections.abc import Sequence
from importlib import resources
from typing import Any, Protocol

import numpy as np

from livefuse.geometry.crop import CropSpec
from livefuse.swap import relight

#: The kernel source, shipped inside the package (the CPU emulator's own two files live in
#: :mod:`livefuse.testing.emulate`, which compiles this source with them).
SOURCES = ("kernels.cu",)

#: Floats per crop row that ``lf_colour_moments`` writes.
MOMENTS = 13

#: Floats per light grid cell that ``lf_light_cells`` writes (face BGR, target BGR, skin) and
#: that ``lf_light_map`` writes (gain BGR, offset BGR).
LIGHT_CELL = 7
LIGHT_MAP = 6

#: ``LF_LIGHT_TAPS``: room for a Gaussian of radius 8.
LIGHT_TAPS = 17

#: Threads per block for the 2-D image kernels: 256 threads, rows of 32 for coalesced reads.
BLOCK = (32, 8, 1)

Dim3 = tuple[int, int, int]


class Affine(ctypes.Structure):
    """``LfAffine``: x' = a x + b y + c, y' = d x + e y + f."""

    _fields_ = [(name, ctypes.c_float) for name in "abcdef"]

    def set(self, matrix: np.ndarray) -> None:
        """Take the values of a 2×3 matrix."""
        self.a, self.b, self.c = (float(v) for v in matrix[0])
        self.d, self.e, self.f = (float(v) for v in matrix[1])


class InputFormat(ctypes.Structure):
    """``LfInput``: model input value = pixel·scale[c] + offset[c]; layout and precision."""

    _fields_ = [
        ("scale", ctypes.c_float * 3),
        ("offset", ctypes.c_float * 3),
        ("rgb", ctypes.c_int),
        ("nchw", ctypes.c_int),
        ("half", ctypes.c_int),
    ]

    def set(self, crop: CropSpec, half: bool) -> None:
        """The input of a model with ``crop``'s normalisation and layout, fp16 when ``half``."""
        scale, offset = crop.normalisation()
        self.scale[:] = [float(v) for v in scale]
        self.offset[:] = [float(v) for v in offset]
        self.rgb, self.nchw, self.half = int(crop.rgb), int(crop.nchw), int(half)


class OutputFormat(ctypes.Structure):
    """``LfOutput``: model output range, layout and precision."""

    _fields_ = [
        ("lo", ctypes.c_float),
        ("hi", ctypes.c_float),
        ("rgb", ctypes.c_int),
        ("nchw", ctypes.c_int),
        ("half", ctypes.c_int),
    ]

    def set(self, crop: CropSpec, half: bool) -> None:
        """The output of a model with ``crop``'s range and layout, fp16 when ``half``."""
        self.lo, self.hi = crop.output_range
        self.rgb, self.nchw, self.half = int(crop.rgb), int(crop.nchw), int(half)


class Colour(ctypes.Structure):
    """``LfColour``: a 3×4 BGR affine colour map, applied when ``on``."""

    _fields_ = [("m", ctypes.c_float * 12), ("on", ctypes.c_int)]

    def set(self, transfer: np.ndarray | None) -> None:
        """Take a 3×4 map, or switch the map off with None."""
        self.on = int(transfer is not None)
        if transfer is not None:
            for i, v in enumerate(np.asarray(transfer, np.float64).ravel()):
                self.m[i] = float(v)


class Light(ctypes.Structure):
    """``LfLight``: the relighting's constants (:mod:`livefuse.swap.relight`) for a grid of
    ``cells``×``cells``."""

    _fields_ = [
        ("taps", ctypes.c_float * LIGHT_TAPS),
        ("radius", ctypes.c_int),
        ("cells", ctypes.c_int),
        ("gamma", ctypes.c_float),
        ("offset", ctypes.c_float),
        ("floor", ctypes.c_float),
        ("eps", ctypes.c_float),
        ("min_skin", ctypes.c_float),
    ]

    def set(self, cells: int) -> None:
        """The CPU relighting's blur, gamma and limits, on a ``cells``-wide grid."""
        taps = relight.blur_taps()
        radius = len(taps) // 2
        if len(taps) > LIGHT_TAPS or radius >= cells:
            raise ValueError(f"a {len(taps)}-tap blur does not fit a {cells}-cell light grid")
        self.taps[: len(taps)] = [float(v) for v in taps]
        self.radius, self.cells = radius, cells
        self.gamma, self.offset = relight.GAMMA, float(np.float32(1 - relight.GAMMA))
        self.floor, self.eps, self.min_skin = relight.FLOOR, relight.EPS, relight.MIN_SKIN


_p, _i = ctypes.c_void_p, ctypes.c_int

#: Each kernel's parameters, in order, as declared in kernels.cu.
SIGNATURES: dict[str, tuple[type[Any], ...]] = {
    "lf_crop_input": (_p, _i, _i, _i, _p, _i, InputFormat, _p),
    "lf_paste_output": (_p, _i, _i, _i, _i, _i, _p, OutputFormat, _i, _p, Affine, Colour, _p, _i),
    "lf_colour_moments": (_p, _i, _i, _i, _p, _p, OutputFormat, _i, _p, _p),
    "lf_light_cells": (_p, _i, _i, _i, _p, _p, OutputFormat, _i, _p, Colour, _i, _p),
    "lf_light_map": (_p, Light, _p),
    "lf_bgr_to_yuv420": (_p, _i, _i, _i, _p, _i, _p, _p, _i, _i),
}


class ArgPack:
    """One launch site's arguments, kept in place: a ctypes value per parameter and the array
    of pointers to them (cuLaunchKernel's ``kernelParams``). Built once; :meth:`set` rewrites
    the values for the next launch, so launching allocates no buffers."""

    def __init__(self, kernel: str) -> None:
        self.kernel = kernel
        self.values = [kind() for kind in SIGNATURES[kernel]]
        self.params = (ctypes.c_void_p * len(self.values))(*(ctypes.addressof(v) for v in self.values))

    def set(self, *args: int | float | ctypes.Structure | None) -> None:
        """New values for every parameter; ``None`` leaves a struct as it is (edit it in place
        through ``values[i]`` instead of building a new one per frame)."""
        if len(args) != len(self.values):
            raise TypeError(f"{self.kernel} takes {len(self.values)} arguments, got {len(args)}")
        for slot, value in zip(self.values, args):
            if isinstance(slot, ctypes.Structure):
                if value is not None:
                    ctypes.pointer(slot)[0] = value
            else:
                slot.value = value

    @property
    def address(self) -> int:
        """Address of the ``void*[]`` of parameter pointers."""
        return ctypes.addressof(self.params)


class Kernels(Protocol):
    """Runs the kernels of kernels.cu (on a GPU, or emulated on the CPU)."""

    def launch(self, pack: ArgPack, grid: Dim3, block: Dim3, stream: object) -> None:
        """Queue kernel ``pack.kernel`` with ``pack``'s arguments on ``stream``."""

    def close(self) -> None:
        """Free the loaded code."""


def grid_for(width: int, height: int, depth: int = 1, block: Dim3 = BLOCK) -> Dim3:
    """The grid covering ``width``×``height``(×``depth``) threads with ``block``."""
    return (-(-width // block[0]), -(-height // block[1]), depth)


def source_text(name: str = "kernels.cu") -> str:
    """One of the shipped :data:`SOURCES`."""
    return resources.files("livefuse.swap.gpu").joinpath(name).read_text(encoding="utf-8")


def source_digest(names: Sequence[str] = SOURCES) -> str:
    """sha256 over the sources: the key of compiled code caches."""
    digest = hashlib.sha256()
    for name in names:
        digest.update(source_text(name).encode())
    return digest.hexdigest()
