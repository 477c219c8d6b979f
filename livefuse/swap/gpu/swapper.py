"""The GPU frame path as the swap stage: :class:`GpuPairSwapper` gives
:class:`livefuse.swap.gpu.path.GpuSwapPath` the ``prepare``/``commit`` shape the face selection
(:class:`livefuse.swap.select.SelectingSwapper`) drives, and :func:`open_cuda_swapper`
assembles it on a CUDA GPU from a TensorRT runner.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from livefuse.errors import ConfigError
from livefuse.faces import Faces
from livefuse.geometry.crop import CropSpec
from livefuse.runtime.base import Runner
from livefuse.runtime.device import Closeable
from livefuse.swap.gpu.path import GpuSwapPath, ModelIO
from livefuse.swap.neural.swapper import NeuralConfig

#: Makes the path for frames of a width and height.
PathFactory = Callable[[int, int], GpuSwapPath]


@dataclass(frozen=True)
class BoxPatch:
    """Swapped pixels of one frame box (x0, y0, x1, y1), not yet written."""

    box: tuple[int, int, int, int]
    pixels: np.ndarray


@dataclass
class GpuPairSwapper:
    """``prepare`` runs the frame through the GPU path and keeps only the changed boxes;
    ``commit`` writes them. The path is made for the first frame's size, and again if the
    size changes (a camera switching modes)."""

    make_path: PathFactory
    owned: list[Closeable] = field(default_factory=list)
    "Resources the paths share (the loaded kernels), closed with the swapper."
    _path: GpuSwapPath | None = field(default=None, repr=False)

    def prepare(self, image: np.ndarray, faces: Faces, pairs: Sequence[tuple[int, int]]) -> list[BoxPatch]:
        if not pairs:
            return []
        path = self._path_for(image)
        slot = path.submit(image, faces, pairs)
        try:
            out = path.result(slot)
            assert out is not None  # no timeout: result waits
            return [BoxPatch(box, out[box[1] : box[3], box[0] : box[2]].copy()) for box in path.boxes(slot)]
        finally:
            path.release(slot)

    def commit(self, image: np.ndarray, patches: list[BoxPatch]) -> None:
        for patch in patches:
            x0, y0, x1, y1 = patch.box
            image[y0:y1, x0:x1] = patch.pixels

    @property
    def faces_swapped(self) -> int:
        return 0 if self._path is None else self._path.faces_swapped

    def _path_for(self, image: np.ndarray) -> GpuSwapPath:
        h, w = image.shape[:2]
        if self._path is not None and (self._path.width, self._path.height) != (w, h):
            self._drop_path()
        if self._path is None:
            self._path = self.make_path(w, h)
        return self._path

    def _drop_path(self) -> None:
        if self._path is not None:
            path, self._path = self._path, None
            path.close()

    def close(self) -> None:
        """Wait for the frames in flight and free the path, then the shared resources."""
        self._drop_path()
        while self.owned:
            self.owned.pop().close()


def model_io(runner: Runner, target: str, source: str) -> ModelIO:
    """The swap model's tensors and precisions, as the runner reports them."""
    specs = {spec.name: spec for spec in (*runner.inputs, *runner.outputs)}
    output = runner.outputs[0]
    latent = specs[source].shape[-1]
    if not isinstance(latent, int):
        raise ConfigError(f"model {runner.name!r}: the source input {source!r} has no fixed size")
    batch = specs[target].shape[0]
    return ModelIO(
        target,
        source,
        output.name,
        latent,
        half_input=specs[target].dtype == "tensor(float16)",
        half_output=output.dtype == "tensor(float16)",
        max_batch=batch if isinstance(batch, int) else getattr(runner, "capacity", None),
    )


def open_cuda_swapper(
    runner: Runner, crop: CropSpec, latents: np.ndarray, config: NeuralConfig, target: str, source: str, max_faces: int
) -> GpuPairSwapper:
    """The GPU frame path on CUDA device 0 for a runner that runs on device memory."""
    if not hasattr(runner, "infer_device"):
        raise ConfigError(
            f"--frame-path gpu needs the swap model on TensorRT (or torch on CUDA), but {runner.name!r} runs on "
            f"{runner.provider}: build its engine (python scripts/build_engines.py --model {runner.name}) and use "
            "--runtime tensorrt (or --runtime torch), or use --frame-path cpu"
        )
    from livefuse.runtime.cuda import CudaDevice
    from livefuse.swap.gpu.launch import CudaKernels

    io = model_io(runner, target, source)
    device = CudaDevice(0)
    kernels = CudaKernels(0)

    def make(width: int, height: int) -> GpuSwapPath:
        model = runner  # has infer_device: a DeviceModel
        return GpuSwapPath(
            device,
            kernels,
            model,
            io,
            crop,
            latents,
            width,
            height,  # type: ignore[arg-type]
            max_faces=max_faces,
            config=config,
        )

    return GpuPairSwapper(make, owned=[kernels])
