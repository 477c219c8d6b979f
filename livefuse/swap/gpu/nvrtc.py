"""Compiles ``kernels.cu`` for the GPU at run time with NVRTC (cuda-python's ``cuda.bindings.nvrtc``
and the ``nvidia-cuda-nvrtc`` wheel): no CUDA toolkit to install, and code made for the exact GPU.

NVRTC needs no GPU to compile, so the tests compile the kernels for every supported
architecture on any machine that has the wheels.
"""

from __future__ import annotations

from typing import Any

from livefuse.errors import KernelError
from livefuse.swap.gpu.kernels import source_text

#: --fmad=false: no contraction into fused multiply-adds, so the GPU rounds as the CPU
#: emulator does (these kernels are bound by memory traffic, not arithmetic).
OPTIONS = ("--fmad=false", "--std=c++17")

_INSTALL = "pip install 'livefuse[cuda]' (cuda-python and the NVRTC wheel)"


def _nvrtc() -> Any:
    try:
        from cuda.bindings import nvrtc
    except ImportError as exc:
        raise KernelError(f"compiling the GPU kernels needs cuda-python: {_INSTALL}") from exc
    return nvrtc


def _check(nvrtc: Any, result: Any, what: str) -> Any:
    err, *values = result
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        _, text = nvrtc.nvrtcGetErrorString(err)
        raise KernelError(f"NVRTC {what} failed: {text.decode()}; is libnvrtc installed? {_INSTALL}")
    return values[0] if len(values) == 1 else tuple(values)


def compile_kernels(arch: str, cubin: bool = True) -> bytes:
    """Machine code (``cubin``) for ``arch`` (``"sm_90"``), or PTX for ``compute_XX`` when
    ``cubin`` is false. Raises :class:`KernelError` with the compiler's log on errors."""
    nvrtc = _nvrtc()
    target = arch if cubin else arch.replace("sm_", "compute_")
    program = _check(nvrtc, nvrtc.nvrtcCreateProgram(source_text().encode(), b"kernels.cu", 0, [], []), "create")
    try:
        options = [o.encode() for o in (*OPTIONS, f"--gpu-architecture={target}")]
        (err,) = nvrtc.nvrtcCompileProgram(program, len(options), options)
        if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            raise KernelError(f"the GPU kernels do not compile for {target}:\n{_log(nvrtc, program)}")
        kind = "CUBIN" if cubin else "PTX"
        size_of, get = getattr(nvrtc, f"nvrtcGet{kind}Size"), getattr(nvrtc, f"nvrtcGet{kind}")
        code = b" " * _check(nvrtc, size_of(program), "size")
        _check(nvrtc, get(program, code), "output")
        return code
    finally:
        _check(nvrtc, nvrtc.nvrtcDestroyProgram(program), "destroy")


def _log(nvrtc: Any, program: Any) -> str:
    log = b" " * _check(nvrtc, nvrtc.nvrtcGetProgramLogSize(program), "log size")
    _check(nvrtc, nvrtc.nvrtcGetProgramLog(program, log), "log")
    return log.rstrip(b"\x00 ").decode(errors="replace")
