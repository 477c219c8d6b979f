"""Neural face swap with the frame resident on the GPU: one upload and one download per frame.

    host      frame + per-face data (crop → frame affines, source latents, blend masks)
              written into a pinned ring slot
    upload    the slot, one copy
    GPU       lf_crop_input      every face → the model's input batch (normalised, fp16/fp32)
              model              one batched call, device memory to device memory
              lf_colour_moments  (every few frames) colour statistics, back with the download
              lf_light_cells     each face's and its target's light on a coarse grid
              lf_light_map       the grids blurred into a gain and an offset per cell
              lf_paste_output    each face, relit, into its own box of the frame, in place
              lf_bgr_to_yuv420   for NV12/I420 output (BGR output: the frame itself comes back)
    download  one copy

No face crop travels to the host and back. The host keeps the cheap per-face geometry: the
five-point similarity fit, the mesh outline mask and the paste box.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol

import cv2
import numpy as np

from livefuse.faces import Faces
from livefuse.geometry.align import paste_box
from livefuse.geometry.crop import CropSpec
from livefuse.runtime.device import D, DeviceOps, Stream
from livefuse.scratch import Scratch
from livefuse.swap.blend import transfer_from_sums
from livefuse.swap.gpu.kernels import BLOCK, LIGHT_CELL, LIGHT_MAP, MOMENTS, ArgPack, Kernels, grid_for
from livefuse.swap.gpu.ring import PinnedRing, Slot
from livefuse.swap.neural.swapper import (
    RELIGHT_FACE,
    NeuralConfig,
    box_mask,
    face_mask,
    settle_mask,
    track_key,
)
from livefuse.swap.relight import grid_size

log = logging.getLogger(__name__)

#: What comes back per frame: the swapped BGR frame, or it converted for a camera or encoder.
OUTPUTS = ("bgr", "nv12", "i420")

#: Threads per block for the one-thread-per-crop-row moments kernel.
ROW_BLOCK = (64, 1, 1)

#: Threads per block for the one-thread-per-cell light kernels: one block covers a face's grid.
LIGHT_BLOCK = (16, 16, 1)

#: Offsets inside a slot are multiples of this (aligned loads for the kernels and copies).
ALIGN = 256


class DeviceModel(Protocol):
    """A model that reads its inputs from and writes its outputs to device memory."""

    def infer_device(self, inputs: Mapping[str, int], outputs: Mapping[str, int], batch: int, stream: Any) -> None:
        """Queue one call on ``stream``: tensor name → device address, ``batch`` items."""


@dataclass(frozen=True)
class ModelIO:
    """The swap model's tensors as the frame path feeds them."""

    target: str
    source: str
    output: str
    latent_size: int
    half_input: bool = False
    half_output: bool = False
    max_batch: int | None = None
    "Faces per model call, for models made for a fixed batch (the real inswapper: 1); None: any."


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


@dataclass(frozen=True)
class SlotLayout:
    """Where the frame and the per-face data sit in a slot's upload, and the download's size."""

    width: int
    height: int
    size: int
    max_faces: int
    latent_size: int
    output: str

    @property
    def frame_nbytes(self) -> int:
        return self.width * self.height * 3

    @property
    def image_nbytes(self) -> int:
        """The downloaded picture: the BGR frame, or its YUV 4:2:0 planes."""
        return self.frame_nbytes if self.output == "bgr" else self.width * self.height * 3 // 2

    @property
    def moments_at(self) -> int:
        """Where ``lf_colour_moments`` rows sit in the downloaded buffer, after the picture."""
        return _aligned(self.image_nbytes)

    @property
    def moments_nbytes(self) -> int:
        return self.max_faces * self.size * MOMENTS * 4

    @property
    def out_nbytes(self) -> int:
        """Size of the downloaded buffer: the picture and room for the colour moments."""
        return self.moments_at + self.moments_nbytes

    def download_nbytes(self, measured: bool) -> int:
        """Bytes to download for a frame; the moments only when colours were measured."""
        return self.out_nbytes if measured else self.image_nbytes

    @property
    def affines_at(self) -> int:
        # BGR frames come back from the upload buffer itself, moments and all: skip them.
        return _aligned(self.out_nbytes if self.output == "bgr" else self.frame_nbytes)

    @property
    def latents_at(self) -> int:
        return _aligned(self.affines_at + self.max_faces * 6 * 4)

    @property
    def masks_at(self) -> int:
        return _aligned(self.latents_at + self.max_faces * self.latent_size * 4)

    @property
    def mask_nbytes(self) -> int:
        return self.size * self.size * 4

    def in_nbytes(self, faces: int) -> int:
        """Bytes to upload for a frame with ``faces`` faces."""
        return self.masks_at + faces * self.mask_nbytes

    def moments(self, buffer: np.ndarray) -> np.ndarray:
        """The (F, S, 13) float32 moment rows in a downloaded buffer."""
        raw = buffer[self.moments_at : self.moments_at + self.moments_nbytes]
        return raw.view(np.float32).reshape(self.max_faces, self.size, MOMENTS)

    def host_views(self, buffer: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Frame (H, W, 3) uint8, affines (F, 2, 3), latents (F, L) and masks (F, S, S) float32."""
        f, s = self.max_faces, self.size
        frame = buffer[: self.frame_nbytes].reshape(self.height, self.width, 3)
        affines = buffer[self.affines_at : self.affines_at + f * 24].view(np.float32).reshape(f, 2, 3)
        latents = buffer[self.latents_at : self.latents_at + f * self.latent_size * 4].view(np.float32)
        masks = buffer[self.masks_at : self.masks_at + f * self.mask_nbytes].view(np.float32).reshape(f, s, s)
        return frame, affines, latents.reshape(f, self.latent_size), masks


@dataclass(frozen=True)
class _Paste:
    """One face's paste: its index in the batch, frame box and frame → crop matrix."""

    index: int
    box: tuple[int, int, int, int]
    matrix: np.ndarray
    transfer: np.ndarray | None


@dataclass
class GpuSwapPath(Generic[D]):
    """Swaps faces with the frame on the GPU. ``latents[k]`` is the model's source input for
    source ``k``. ``submit``/``result``/``release`` keep up to ``slots`` frames in flight;
    :class:`livefuse.swap.gpu.swapper.GpuPairSwapper` makes it the pipeline's swap stage.

    Colour matching follows the CPU swapper's (:func:`livefuse.swap.blend.colour_transfer`,
    re-measured every ``colour_every`` frames per track), except that a measurement applies
    from the track's next frame: its moments come back with the frame's download. Relighting
    (``config.relight``, with ``config.colour``) is the CPU swapper's
    :func:`livefuse.swap.relight.relight`, computed on the GPU in the frame's own compute (see
    :meth:`_relight`). Sharpening, the enhancer and the occluder/parser masks are not done on
    this path yet (the CPU :class:`livefuse.swap.neural.swapper.NeuralSwapper` does them).
    """

    device: DeviceOps[D]
    kernels: Kernels
    model: DeviceModel
    io: ModelIO
    crop: CropSpec
    latents: np.ndarray
    width: int
    height: int
    max_faces: int = 8
    slots: int = 3
    output: str = "bgr"
    config: NeuralConfig = field(default_factory=NeuralConfig)
    faces_swapped: int = 0
    faces_skipped: int = 0

    def __post_init__(self) -> None:
        self._check()
        s = self.crop.size
        self.layout = SlotLayout(self.width, self.height, s, self.max_faces, self.io.latent_size, self.output)
        self.latents = np.ascontiguousarray(self.latents, np.float32)
        self.ring = PinnedRing(self.device, self.slots, self.layout.in_nbytes(self.max_faces), self.layout.out_nbytes)
        self._box = box_mask(s)
        self._box_dev = self._upload_once(self._box)
        self._item = 3 * s * s * (2 if self.io.half_output else 4)
        self._blob_item = 3 * s * s * (2 if self.io.half_input else 4)
        self._blob = self.device.device_buffer(self.max_faces * self._blob_item)
        self._out = self.device.device_buffer(self.max_faces * self._item)
        self._crop_args, self._paste_args = self._packs()
        self._yuv_args = ArgPack("lf_bgr_to_yuv420")
        self._moments_args = ArgPack("lf_colour_moments")
        ctypes.pointer(self._moments_args.values[6])[0] = self._paste_args.values[7]  # same output format
        self._cells = grid_size((s, s), RELIGHT_FACE * s)[0]  # the CPU swapper's grid for this crop
        self._cells_args = ArgPack("lf_light_cells")
        ctypes.pointer(self._cells_args.values[6])[0] = self._paste_args.values[7]
        self._map_args = ArgPack("lf_light_map")
        self._map_args.values[1].set(self._cells)
        self._cell_nbytes = self._cells * self._cells * LIGHT_CELL * 4
        self._map_nbytes = self._cells * self._cells * LIGHT_MAP * 4
        self._light_cells = self.device.device_buffer(self.max_faces * self._cell_nbytes)
        self._light_map = self.device.device_buffer(self.max_faces * self._map_nbytes)
        self._scratch = Scratch()
        self._changed: dict[int, list[tuple[int, int, int, int]]] = {}
        self._measured: dict[int, list[tuple[int, int]]] = {}
        self._colours: dict[int, tuple[np.ndarray | None, int]] = {}
        if self.config.sharpness > 0:
            log.info("the GPU frame path does not sharpen yet; sharpness is ignored")

    def _upload_once(self, array: np.ndarray) -> D:
        """A device copy of ``array``, made at start-up through a pinned staging buffer."""
        data = np.ascontiguousarray(array).view(np.uint8).ravel()
        target = self.device.device_buffer(data.nbytes)
        with contextlib.ExitStack() as stack:
            staging = self.device.host_buffer(data.nbytes)
            stack.callback(staging.close)
            done = self.device.new_event()
            stack.callback(done.close)
            staging.array[:] = data
            self.device.copy_h2d(target, staging.array, data.nbytes, self.ring.h2d)
            done.record(self.ring.h2d)
            done.synchronize()  # the staging buffer must outlive the copy
        return target

    def _check(self) -> None:
        if self.output not in OUTPUTS:
            raise ValueError(f"output must be one of {', '.join(OUTPUTS)}, not {self.output!r}")
        if self.output != "bgr" and (self.width % 2 or self.height % 2):
            raise ValueError(f"{self.output} needs an even frame size, not {self.width}x{self.height}")
        if self.max_faces < 1 or self.latents.ndim != 2 or self.latents.shape[1] != self.io.latent_size:
            raise ValueError(f"need max_faces >= 1 and latents of shape (k, {self.io.latent_size})")

    def _packs(self) -> tuple[ArgPack, ArgPack]:
        """The crop and paste launches' argument packs, with their fixed formats filled in."""
        crop = ArgPack("lf_crop_input")
        crop.values[6].set(self.crop, self.io.half_input)
        paste = ArgPack("lf_paste_output")
        paste.values[7].set(self.crop, self.io.half_output)
        paste.values[11].set(None)
        return crop, paste

    def submit(self, image: np.ndarray, faces: Faces, pairs: Sequence[tuple[int, int]]) -> Slot[D]:
        """Queue ``image`` with source ``k`` onto face ``i`` for each (i, k); returns its slot
        (blocks while every slot is in flight)."""
        if image.shape != (self.height, self.width, 3):
            raise ValueError(f"frame is {image.shape}, this path was made for {(self.height, self.width, 3)}")
        if len(pairs) > self.max_faces:
            self.faces_skipped += len(pairs) - self.max_faces
            pairs = pairs[: self.max_faces]
        if faces.track_ids is not None and self._colours:
            live = set(faces.track_ids.tolist())
            for track in set(self._colours) - live:
                del self._colours[track]  # the track ended
        slot = self.ring.acquire()
        assert slot is not None  # no timeout: acquire waits
        try:
            pastes, measured = self._fill(slot.host_in, image, faces, pairs)
            compute = functools.partial(self._compute, faces=len(pairs), pastes=pastes, measure=bool(measured))
            download = slot.dev_in if self.output == "bgr" else None
            n_in, n_out = self.layout.in_nbytes(len(pairs)), self.layout.download_nbytes(bool(measured))
            self.ring.submit(slot, compute, in_nbytes=n_in, out_nbytes=n_out, download=download)
        except BaseException:
            self.ring.release(slot)
            raise
        self._changed[slot.index] = [paste.box for paste in pastes]
        self._measured[slot.index] = measured
        self.faces_swapped += len(pastes)
        return slot

    def _fill(
        self, buffer: np.ndarray, image: np.ndarray, faces: Faces, pairs: Sequence[tuple[int, int]]
    ) -> tuple[list[_Paste], list[tuple[int, int]]]:
        """Write the frame and each face's affine, latent and mask into a slot's upload; the
        pastes to make, and the (batch index, track) of faces whose colours to measure."""
        frame, affines, latents, masks = self.layout.host_views(buffer)
        np.copyto(frame, image)  # the frame's one host copy: into pinned memory for the upload
        pastes: list[_Paste] = []
        measured: list[tuple[int, int]] = []
        for j, (i, k) in enumerate(pairs):
            matrix = self.crop.matrix(faces.kps[i])
            # Straight into the slot's upload: no per-face mask array.
            mask = face_mask(self._box, faces, i, matrix, self.config.keep_mouth, self._scratch, out=masks[j])
            settle_mask(mask, self.config.opacity)
            affines[j] = cv2.invertAffineTransform(matrix)
            latents[j] = self.latents[k]
            transfer = self._colour(track_key(faces, i), j, measured)
            box = paste_box(mask, matrix, image.shape)
            if box is not None:
                pastes.append(_Paste(j, box, matrix, transfer))
        return pastes, measured

    def _colour(self, track: int, index: int, measured: list[tuple[int, int]]) -> np.ndarray | None:
        """The track's current colour map; asks for a new measurement every ``colour_every`` frames."""
        if not self.config.colour:
            return None
        transfer, age = self._colours.get(track, (None, self.config.colour_every))
        if age >= self.config.colour_every:
            measured.append((index, track))
            age = 0
        self._colours[track] = (transfer, age + 1)
        return transfer

    def _compute(self, slot: Slot[D], stream: Stream, faces: int, pastes: Sequence[_Paste], measure: bool) -> None:
        """The GPU part of one frame, queued on ``stream``."""
        frame, layout, s = _ptr(slot.dev_in), self.layout, self.crop.size
        pitch, w, h = self.width * 3, self.width, self.height
        if faces:
            self._crop_args.set(frame, pitch, w, h, frame + layout.affines_at, s, None, _ptr(self._blob))
            self.kernels.launch(self._crop_args, grid_for(s, s, faces), BLOCK, stream)
            self._infer(faces, frame + layout.latents_at, stream)
        if measure:  # before the paste changes the frame: the target's colours are measured
            rows = _ptr(slot.dev_in if self.output == "bgr" else slot.dev_out) + layout.moments_at
            args = (frame, pitch, w, h, frame + layout.affines_at, _ptr(self._out), None, s, _ptr(self._box_dev), rows)
            self._moments_args.set(*args)
            self.kernels.launch(self._moments_args, grid_for(s, 1, faces, ROW_BLOCK), ROW_BLOCK, stream)
        relight = self.config.colour and self.config.relight and bool(pastes)
        if relight:  # before the paste too: the light is the target's own
            self._relight(frame, faces, pastes, stream)
        for paste in pastes:
            x0, y0, x1, y1 = paste.box
            self._paste_args.values[10].set(paste.matrix)
            self._paste_args.values[11].set(paste.transfer)
            mask = frame + layout.masks_at + paste.index * layout.mask_nbytes
            output = _ptr(self._out) + paste.index * self._item
            light = _ptr(self._light_map) + paste.index * self._map_nbytes if relight else None
            self._paste_args.set(
                frame, pitch, x0, y0, x1 - x0, y1 - y0, output, None, s, mask, None, None, light, self._cells
            )
            self.kernels.launch(self._paste_args, grid_for(x1 - x0, y1 - y0), BLOCK, stream)
        if self.output != "bgr":
            self._convert(frame, _ptr(slot.dev_out), stream)

    def _relight(self, frame: int, faces: int, pastes: Sequence[_Paste], stream: Stream) -> None:
        """Each pasted face's light map (gain and offset per grid cell), for the paste to apply.

        Computed on the GPU within the frame, not on the host from a download: the grids are
        tiny (~11×11 cells) but measuring them reads the whole crop and the target under it,
        which are on the GPU; and the light is then this very frame's, as on the CPU path
        (colour maps may lag a frame because they are re-measured only every few frames, but
        light changes from frame to frame as the face turns). Nothing extra crosses the bus.
        """
        pitch, w, h, s, cells = self.width * 3, self.width, self.height, self.crop.size, self._cells
        affines = frame + self.layout.affines_at
        for paste in pastes:
            j = paste.index
            self._cells_args.values[9].set(paste.transfer)  # the face as the paste shows it
            output = _ptr(self._out) + j * self._item
            light = _ptr(self._light_cells) + j * self._cell_nbytes
            args = (frame, pitch, w, h, affines + j * 24, output, None, s, _ptr(self._box_dev), None, cells, light)
            self._cells_args.set(*args)
            self.kernels.launch(self._cells_args, grid_for(cells, cells, 1, LIGHT_BLOCK), LIGHT_BLOCK, stream)
        # Faces without a paste (off the frame) get a map from stale cells that nothing reads.
        self._map_args.set(_ptr(self._light_cells), None, _ptr(self._light_map))
        self.kernels.launch(self._map_args, grid_for(cells, cells, faces, LIGHT_BLOCK), LIGHT_BLOCK, stream)

    def _infer(self, faces: int, latents: int, stream: Stream) -> None:
        """The model on the batch: one call, or calls of ``io.max_batch`` for fixed-batch models."""
        step = self.io.max_batch or faces
        blob_item = self._blob_item
        for start in range(0, faces, step):
            n = min(step, faces - start)
            feeds = {
                self.io.target: _ptr(self._blob) + start * blob_item,
                self.io.source: latents + start * self.io.latent_size * 4,
            }
            self.model.infer_device(feeds, {self.io.output: _ptr(self._out) + start * self._item}, n, stream)

    def _convert(self, frame: int, out: int, stream: Stream) -> None:
        w, h = self.width, self.height
        chroma = out + w * h
        if self.output == "nv12":
            self._yuv_args.set(frame, w * 3, w, h, out, w, chroma, 0, w, 1)
        else:
            self._yuv_args.set(frame, w * 3, w, h, out, w, chroma, chroma + w * h // 4, w // 2, 0)
        self.kernels.launch(self._yuv_args, grid_for(w // 2, h // 2), BLOCK, stream)

    def result(self, slot: Slot[D], timeout: float | None = None) -> np.ndarray | None:
        """The slot's output once downloaded: (H, W, 3) BGR, or (H·3/2, W) NV12/I420; a view
        into pinned memory, valid until ``release``. None if ``timeout`` passes first."""
        out = self.ring.result(slot, timeout)
        if out is None:
            return None
        measured = self._measured.pop(slot.index, [])
        if measured:
            rows = self.layout.moments(out)
            for index, track in measured:
                age = self._colours.get(track, (None, 0))[1]
                self._colours[track] = (transfer_from_sums(rows[index].sum(0, dtype=np.float64)), age)
        picture = out[: self.layout.image_nbytes]
        if self.output == "bgr":
            return picture.reshape(self.height, self.width, 3)
        return picture.reshape(self.height * 3 // 2, self.width)

    def release(self, slot: Slot[D]) -> None:
        self.ring.release(slot)

    def boxes(self, slot: Slot[D]) -> list[tuple[int, int, int, int]]:
        """The frame boxes (x0, y0, x1, y1) the slot's frame was changed in."""
        return self._changed[slot.index]

    def close(self) -> None:
        """Wait for frames in flight, then free the ring, the model buffers and the kernels."""
        self.ring.close()
        for buffer in (self._blob, self._out, self._box_dev, self._light_cells, self._light_map):
            buffer.close()

    def __enter__(self) -> GpuSwapPath[D]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ptr(buffer: object) -> int:
    return int(buffer.ptr)  # type: ignore[attr-defined]
