"""The GPU frame path's kernels (livefuse/swap/gpu/kernels.cu) against the CPU path.

On machines without a GPU the kernels run through the C++ emulator (the same source, every
thread in turn); where cuda-python's NVRTC is installed the source is also compiled for each
supported GPU architecture. On a GPU the same comparisons run on the device (test_gpu_path.py).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from livefuse.geometry import align
from livefuse.geometry.crop import CropSpec
from livefuse.scratch import Scratch
from livefuse.swap.blend import colour_transfer, transfer_from_sums
from livefuse.swap.gpu.kernels import (
    BLOCK,
    LIGHT_CELL,
    LIGHT_MAP,
    MOMENTS,
    SIGNATURES,
    ArgPack,
    Colour,
    InputFormat,
    Light,
    OutputFormat,
    grid_for,
)
from livefuse.swap.neural.swapper import RELIGHT_FACE, box_mask
from livefuse.swap.relight import grid_size, relight_channels
from livefuse.testing import emulate

TEMPLATE = np.array([[0.34, 0.46], [0.66, 0.46], [0.5, 0.64], [0.37, 0.82], [0.63, 0.82]], np.float32)


@pytest.fixture(scope="module")
def kernels(tmp_path_factory: pytest.TempPathFactory) -> Iterator[emulate.EmulatedKernels]:
    library = emulate.build(tmp_path_factory.mktemp("emulator"))
    yield emulate.EmulatedKernels(library)


def scene(h: int = 360, w: int = 480, seed: int = 0) -> np.ndarray:
    """Smooth gradients plus texture: bilinear sampling errors would show."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (w + h) + 64], -1)
    noise = cv2.GaussianBlur(rng.normal(0, 40, (h, w, 3)).astype(np.float32), (0, 0), 1.5)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def face_matrix(angle: float, scale: float, centre: tuple[float, float], size: int) -> np.ndarray:
    """Frame → crop matrix: a face of ``size/scale`` px around ``centre``, turned by ``angle``."""
    c, s = np.cos(angle) * scale, np.sin(angle) * scale
    rot = np.array([[c, -s], [s, c]])
    return np.hstack([rot, (np.array([size / 2, size / 2]) - rot @ np.array(centre))[:, None]])


MATRICES = [
    face_matrix(0.0, 1.0, (200, 150), 128),
    face_matrix(0.35, 0.7, (330, 220), 128),
    face_matrix(-0.5, 1.6, (20, 340), 128),  # partly off the frame: border texels read 0
]


def ptr(array: np.ndarray) -> int:
    assert array.flags.c_contiguous
    return int(array.ctypes.data)


def spec_for(rgb: bool, nchw: bool, lo: float = 0.0) -> CropSpec:
    mean = np.array([0.0, 0.0, 0.0]) if lo == 0 else np.array([0.5, 0.5, 0.5])
    std = np.array([1.0, 1.0, 1.0]) if lo == 0 else np.array([0.5, 0.5, 0.5])
    return CropSpec(128, TEMPLATE, mean, std, rgb=rgb, nchw=nchw, output_range=(lo, 1.0))


def input_format(spec: CropSpec, half: bool) -> InputFormat:
    fmt = InputFormat()
    fmt.set(spec, half)
    return fmt


def crop_on_gpu(kernels: emulate.EmulatedKernels, frame: np.ndarray, spec: CropSpec, half: bool) -> np.ndarray:
    s, n = spec.size, len(MATRICES)
    to_frame = np.stack([cv2.invertAffineTransform(m) for m in MATRICES]).astype(np.float32)
    shape = (n, 3, s, s) if spec.nchw else (n, s, s, 3)
    out = np.full(shape, np.nan, np.float16 if half else np.float32)
    pack = ArgPack("lf_crop_input")
    h, w = frame.shape[:2]
    pack.set(ptr(frame), frame.strides[0], w, h, ptr(to_frame), s, input_format(spec, half), ptr(out))
    kernels.launch(pack, grid_for(s, s, n), BLOCK, None)
    return out.astype(np.float32)


def crop_on_cpu(frame: np.ndarray, spec: CropSpec) -> np.ndarray:
    s = spec.size
    items = []
    for m in MATRICES:
        item = np.empty((3, s, s) if spec.nchw else (s, s, 3), np.float32)
        spec.to_input(align.crop(frame, m, s), item)
        items.append(item)
    return np.stack(items)


@pytest.mark.parametrize(
    ("rgb", "nchw", "lo", "half"),
    [(True, True, 0.0, False), (False, False, -1.0, False), (True, True, -1.0, True)],
    ids=["rgb-nchw-fp32", "bgr-nhwc-fp32", "rgb-nchw-fp16"],
)
def test_crop_input_matches_the_cpu_crop_and_normalisation(
    kernels: emulate.EmulatedKernels, rgb: bool, nchw: bool, lo: float, half: bool
) -> None:
    frame = scene()
    spec = spec_for(rgb, nchw, lo)
    gpu, cpu = crop_on_gpu(kernels, frame, spec, half), crop_on_cpu(frame, spec)
    # In grey levels: the CPU path rounds its crop to uint8 and OpenCV's bilinear weights are
    # 5-bit fixed point; the kernel keeps fractions. One level, rarely two, never more.
    levels = np.abs(gpu - cpu) * 255 * float(spec.std[0])
    assert np.isfinite(gpu).all()
    assert levels.max() <= 2.0, levels.max()
    assert np.mean(levels > 1.0) < 0.01
    # The face off the frame's corner reads black there, as warpAffine's constant border does.
    corner = gpu[2, :, -1, -1] if nchw else gpu[2, -1, -1, :]
    assert np.allclose(corner, -spec.mean / spec.std, atol=1e-3)


def random_output(spec: CropSpec, seed: int) -> np.ndarray:
    """A smooth model output in the model's range and layout."""
    rng = np.random.default_rng(seed)
    lo, hi = spec.output_range
    planes = cv2.GaussianBlur(rng.uniform(0, 1, (spec.size, spec.size, 3)).astype(np.float32), (0, 0), 2)
    planes = (planes - planes.min()) / (planes.max() - planes.min()) * 1.1 - 0.05  # a little out of range
    image = lo + planes * (hi - lo)
    return np.ascontiguousarray(image.transpose(2, 0, 1) if spec.nchw else image).astype(np.float32)


def face_mask(size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mask = np.zeros((size, size), np.float32)
    axes = (int(size * rng.uniform(0.3, 0.42)), int(size * rng.uniform(0.35, 0.45)))
    cv2.ellipse(mask, (size // 2, size // 2 + 4), axes, 0, 0, 360, 1.0, -1)
    mask = np.minimum(cv2.GaussianBlur(mask, (0, 0), 4), box_mask(size))
    mask[mask < 1 / 255] = 0
    return mask


TRANSFER = np.array([[1.05, 0.02, 0.0, -6.0], [0.01, 0.97, 0.03, 4.0], [0.0, -0.02, 1.1, -12.0]])


def paste_on_gpu(
    kernels: emulate.EmulatedKernels,
    frame: np.ndarray,
    output: np.ndarray,
    spec: CropSpec,
    mask: np.ndarray,
    m: np.ndarray,
    transfer: np.ndarray | None,
    half: bool,
    light: np.ndarray | None = None,
) -> None:
    """Face ``output`` pasted through ``m``, relit by the (cells, cells, 6) ``light`` map if given."""
    box = align.paste_box(mask, m, frame.shape)
    assert box is not None
    x0, y0, x1, y1 = box
    fmt = OutputFormat()
    fmt.set(spec, half)
    out = np.ascontiguousarray(output.astype(np.float16) if half else output)
    pack = ArgPack("lf_paste_output")
    pack.values[10].set(m)
    pack.values[11].set(transfer)
    args = (ptr(frame), frame.strides[0], x0, y0, x1 - x0, y1 - y0, ptr(out), fmt, spec.size, ptr(mask), None, None)
    pack.set(*args, None if light is None else ptr(light), 0 if light is None else light.shape[0])
    kernels.launch(pack, grid_for(x1 - x0, y1 - y0), BLOCK, None)


@pytest.mark.parametrize(
    ("rgb", "nchw", "lo", "half", "colour"),
    [
        (True, True, 0.0, False, False),
        (True, True, 0.0, False, True),
        (False, False, -1.0, False, True),
        (True, True, -1.0, True, False),
    ],
    ids=["inswapper-like", "with-colour-map", "bgr-nhwc-signed", "fp16"],
)
def test_paste_output_matches_the_cpu_paste_back(
    kernels: emulate.EmulatedKernels, rgb: bool, nchw: bool, lo: float, half: bool, colour: bool
) -> None:
    spec = spec_for(rgb, nchw, lo)
    transfer = TRANSFER if colour else None
    frame = scene(seed=1)
    gpu, cpu = frame.copy(), frame.copy()
    for k, m in enumerate(MATRICES):
        output = random_output(spec, k)
        if half:
            output = output.astype(np.float16).astype(np.float32)  # what the fp16 model hands back
        mask = face_mask(spec.size, k)
        face = spec.to_image(output)
        if transfer is not None:
            face = cv2.transform(face, transfer)
        align.paste_back(cpu, face, mask, m, Scratch())
        paste_on_gpu(kernels, gpu, output, spec, mask, m, transfer, half)
    diff = np.abs(gpu.astype(int) - cpu.astype(int))
    changed = np.any(cpu != frame, -1)
    assert changed.mean() > 0.1  # the faces were really pasted
    assert diff.max() <= 3, diff.max()
    assert np.mean(diff > 1) < 0.005
    # Outside the faces the kernel writes nothing: byte-identical to the input frame.
    untouched = ~np.any(gpu != frame, -1)
    assert untouched[~changed].mean() > 0.99
    assert not np.any(gpu[:, :60][~changed[:, :60]] != frame[:, :60][~changed[:, :60]])


def yuv_reference(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """BT.601 limited range, chroma from each 2×2 block's mean."""
    b, g, r = (frame[..., i].astype(np.float64) for i in range(3))
    y = np.rint(16 + 0.256788 * r + 0.504129 * g + 0.097906 * b)

    def mean(a: np.ndarray) -> np.ndarray:
        return a.reshape(a.shape[0] // 2, 2, a.shape[1] // 2, 2).mean((1, 3))

    rm, gm, bm = mean(r), mean(g), mean(b)
    u = np.rint(128 - 0.148223 * rm - 0.290993 * gm + 0.439216 * bm)
    v = np.rint(128 + 0.439216 * rm - 0.367788 * gm - 0.071427 * bm)
    return y, u, v


def test_yuv420_planes_match_bt601_and_opencv(kernels: emulate.EmulatedKernels) -> None:
    frame = scene(240, 320, seed=2)
    h, w = frame.shape[:2]
    i420 = np.zeros((h * 3 // 2, w), np.uint8)
    nv12 = np.zeros((h * 3 // 2, w), np.uint8)
    pack = ArgPack("lf_bgr_to_yuv420")
    y, u, v = i420[:h], i420[h:].reshape(-1)[: h * w // 4], i420[h:].reshape(-1)[h * w // 4 :]
    pack.set(ptr(frame), frame.strides[0], w, h, ptr(y), w, ptr(u), ptr(v), w // 2, 0)
    kernels.launch(pack, grid_for(w // 2, h // 2), BLOCK, None)
    pack.set(ptr(frame), frame.strides[0], w, h, ptr(nv12), w, ptr(nv12[h:]), 0, w, 1)
    kernels.launch(pack, grid_for(w // 2, h // 2), BLOCK, None)

    ry, ru, rv = yuv_reference(frame)
    assert np.abs(y - ry).max() <= 1
    assert np.abs(u.reshape(h // 2, w // 2) - ru).max() <= 1
    assert np.abs(v.reshape(h // 2, w // 2) - rv).max() <= 1
    # NV12 carries the same samples, U and V interleaved.
    assert np.array_equal(nv12[:h], y)
    assert np.array_equal(nv12[h:, 0::2], u.reshape(h // 2, w // 2))
    assert np.array_equal(nv12[h:, 1::2], v.reshape(h // 2, w // 2))
    # OpenCV's I420 agrees on luma; its chroma takes one pixel per block, so compare on a
    # smooth picture only.
    assert np.abs(y.astype(int) - cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420)[:h]).max() <= 1
    smooth = cv2.GaussianBlur(frame, (0, 0), 6)
    pack.set(ptr(smooth), smooth.strides[0], w, h, ptr(y), w, ptr(u), ptr(v), w // 2, 0)
    kernels.launch(pack, grid_for(w // 2, h // 2), BLOCK, None)
    assert np.abs(i420.astype(int) - cv2.cvtColor(smooth, cv2.COLOR_BGR2YUV_I420)).max() <= 3


def test_an_unknown_kernel_is_refused(kernels: emulate.EmulatedKernels) -> None:
    pack = ArgPack("lf_crop_input")
    pack.kernel = "lf_nothing"
    with pytest.raises(Exception, match="no kernel 'lf_nothing'"):
        kernels.launch(pack, (1, 1, 1), (1, 1, 1), None)


def test_the_emulator_is_built_once_per_source(tmp_path: Path) -> None:
    first = emulate.build(tmp_path)
    stamp = first.stat().st_mtime_ns
    assert emulate.build(tmp_path) == first and first.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary files left


HAS_NVRTC = importlib.util.find_spec("cuda") is not None and importlib.util.find_spec("cuda.bindings") is not None


@pytest.mark.skipif(not HAS_NVRTC, reason="cuda-python is not installed (pip install 'livefuse[cuda]')")
@pytest.mark.parametrize("arch", ["sm_75", "sm_80", "sm_86", "sm_89", "sm_90"])
def test_nvrtc_compiles_the_kernels_for_each_gpu_generation(arch: str) -> None:
    from livefuse.swap.gpu.nvrtc import compile_kernels

    cubin = compile_kernels(arch)
    assert cubin[:4] == b"\x7fELF"  # device code, not an error text
    ptx = compile_kernels(arch, cubin=False).decode()
    for name in SIGNATURES:
        assert f".entry {name}(" in ptx


def test_colour_moments_give_the_cpu_colour_transfer(kernels: emulate.EmulatedKernels) -> None:
    spec = spec_for(rgb=True, nchw=True)
    frame = scene(seed=3)
    s, n = spec.size, len(MATRICES)
    outputs = np.stack([random_output(spec, k) for k in range(n)])
    to_frame = np.stack([cv2.invertAffineTransform(m) for m in MATRICES]).astype(np.float32)
    box = box_mask(s)
    rows = np.full((n, s, MOMENTS), np.nan, np.float32)
    pack = ArgPack("lf_colour_moments")
    fmt = OutputFormat(0.0, 1.0, 1, 1, 0)
    h, w = frame.shape[:2]
    pack.set(ptr(frame), frame.strides[0], w, h, ptr(to_frame), ptr(outputs), fmt, s, ptr(box), ptr(rows))
    kernels.launch(pack, grid_for(s, 1, n, (64, 1, 1)), (64, 1, 1), None)

    inside = (box > 0.5).view(np.uint8)
    for k, m in enumerate(MATRICES):
        sums = rows[k].sum(0, dtype=np.float64)
        face = spec.to_image(outputs[k])
        target = align.crop(frame, m, s)
        assert sums[12] == cv2.countNonZero(inside)
        ycc = cv2.cvtColor(face, cv2.COLOR_BGR2YCrCb)[inside > 0].astype(np.float64)
        assert np.array_equal(sums[:3], ycc.sum(0)) and np.array_equal(sums[3:6], (ycc**2).sum(0))
        gpu_map, cpu_map = transfer_from_sums(sums), colour_transfer(face, target, box)
        assert gpu_map is not None and cpu_map is not None
        # Mapped colours agree within half a grey level over the whole 0..255 cube.
        corners = np.array([[b, g, r, 1.0] for b in (0, 255) for g in (0, 255) for r in (0, 255)])
        assert np.abs(corners @ gpu_map.T - corners @ cpu_map.T).max() < 0.5


def light_maps(
    kernels: emulate.EmulatedKernels,
    frame: np.ndarray,
    outputs: np.ndarray,
    spec: CropSpec,
    transfer: np.ndarray | None,
    skin: np.ndarray | None = None,
) -> np.ndarray:
    """Every face's (cells, cells, 6) light map from lf_light_cells (one launch per face, as
    the path does) and lf_light_map (one launch for all)."""
    s, n = spec.size, len(MATRICES)
    cells = grid_size((s, s), RELIGHT_FACE * s)[0]
    to_frame = np.stack([cv2.invertAffineTransform(m) for m in MATRICES]).astype(np.float32)
    box = box_mask(s) if skin is None else skin
    grid = np.full((n, cells, cells, LIGHT_CELL), np.nan, np.float32)
    fmt = OutputFormat()
    fmt.set(spec, False)
    colour = Colour()
    colour.set(transfer)
    h, w = frame.shape[:2]
    pack = ArgPack("lf_light_cells")
    for k in range(n):
        face = ptr(outputs) + k * outputs[0].nbytes
        args = (ptr(frame), frame.strides[0], w, h, ptr(to_frame) + k * 24, face, fmt, s, ptr(box), colour, cells)
        pack.set(*args, ptr(grid) + k * grid[0].nbytes)
        kernels.launch(pack, grid_for(cells, cells, 1, (16, 16, 1)), (16, 16, 1), None)
    maps = np.full((n, cells, cells, LIGHT_MAP), np.nan, np.float32)
    light = Light()
    light.set(cells)
    pack = ArgPack("lf_light_map")
    pack.set(ptr(grid), light, ptr(maps))
    kernels.launch(pack, grid_for(cells, cells, n, (16, 16, 1)), (16, 16, 1), None)
    return maps


@pytest.mark.parametrize("colour", [False, True], ids=["plain", "with-colour-map"])
def test_relit_paste_matches_the_cpu_relighting(kernels: emulate.EmulatedKernels, colour: bool) -> None:
    """lf_light_cells + lf_light_map + lf_paste_output give the CPU swapper's
    relight_channels() then paste_back(), on faces lit unlike their targets."""
    spec = spec_for(rgb=True, nchw=True)
    transfer = TRANSFER if colour else None
    frame = scene(seed=15)
    s = spec.size
    skin = (box_mask(s) > 0.5).astype(np.float32)
    outputs = np.stack([random_output(spec, 20 + k) for k in range(len(MATRICES))])
    maps = light_maps(kernels, frame, outputs, spec, transfer)
    assert np.isfinite(maps).all()
    gpu, cpu, unlit = frame.copy(), frame.copy(), frame.copy()
    for k, m in enumerate(MATRICES):
        mask = face_mask(s, k)
        face = spec.to_image(outputs[k])
        if transfer is not None:
            face = cv2.transform(face, transfer)
        target = align.crop(frame, m, s)
        align.paste_back(unlit, face, mask, m, Scratch())
        align.paste_back(cpu, relight_channels(face, target, skin, RELIGHT_FACE * s, Scratch()), mask, m, Scratch())
        paste_on_gpu(kernels, gpu, outputs[k], spec, mask, m, transfer, False, maps[k])
    assert np.abs(cpu.astype(int) - unlit.astype(int)).max() > 40  # relighting changes these faces a lot
    diff = np.abs(gpu.astype(int) - cpu.astype(int))
    # Measured: plain, within 1 level (0.002 % of pixels differ at all); with the colour map,
    # within 2 levels, > 1 on 0.009 % (the map's own rounding, as in the unlit paste above).
    # The cell averages are OpenCV's to the bit except where the target crop's bilinear weights
    # (OpenCV: 5-bit fixed point; the kernel: float) move a rounded average by a level.
    assert diff.max() <= (2 if colour else 1), diff.max()
    assert np.mean(diff > 1) < 0.0005, np.mean(diff > 1)


def test_too_little_skin_leaves_the_face_as_it_is(kernels: emulate.EmulatedKernels) -> None:
    """As relight_channels() does when the skin covers under MIN_SKIN cells: gain 1, offset 0."""
    spec = spec_for(rgb=True, nchw=True)
    s = spec.size
    skin = np.zeros((s, s), np.float32)
    skin[60:70, 60:70] = 1  # under one cell
    outputs = np.stack([random_output(spec, 30 + k) for k in range(len(MATRICES))])
    maps = light_maps(kernels, scene(seed=16), outputs, spec, None, skin)
    assert np.array_equal(maps[..., :3], np.ones_like(maps[..., :3]))
    assert np.array_equal(maps[..., 3:], np.zeros_like(maps[..., 3:]))
