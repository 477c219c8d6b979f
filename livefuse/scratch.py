"""Reusable work arrays, so per-frame code does not allocate new buffers each call."""

from __future__ import annotations

import math

import numpy as np


class Scratch:
    """Named work arrays that grow when a larger size is asked for and are reused otherwise.

    ``get`` returns a view of the requested shape into the named buffer. A view is valid
    until the next ``get`` of the same name. Not thread-safe: one ``Scratch`` per thread.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: type = np.float32) -> np.ndarray:
        """A C-contiguous array of ``shape`` and ``dtype`` (contents undefined)."""
        size = math.prod(shape)
        buf = self._buffers.get(name)
        if buf is None or buf.size < size or buf.dtype != np.dtype(dtype):
            # Grow with headroom so a face that slowly gets bigger does not re-allocate often.
            buf = np.empty(int(size * 1.25) + 64, dtype)
            self._buffers[name] = buf
        return buf[:size].reshape(shape)
