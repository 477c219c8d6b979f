"""Adapters from a manifest record to a runnable model: recognizer, swapper, enhancer, masks.

Each family differs only in data (crop spec, latent kind, value ranges), so one class per
role serves every family; adding a model of a known family is adding a manifest record.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

from livefuse.errors import ModelError
from livefuse.geometry import align
from livefuse.geometry.crop import CropSpec
from livefuse.runtime.base import Runner, TensorSpec, is_out_of_memory

log = logging.getLogger(__name__)


def _batch_dynamic(spec: TensorSpec) -> bool:
    return not isinstance(spec.shape[0], int)


def run_batched(runner: Runner, feeds: dict[str, np.ndarray], dynamic: bool) -> np.ndarray:
    """First output for a batch of N: one call when the batch dim is dynamic, else N calls.

    A call that runs out of (GPU) memory is retried in halves, and the runner keeps the size that
    fit (``runner.batch_limit``) for later calls, logged when it shrinks: a crowded frame slows
    down instead of failing. One item that still does not fit raises (the pipeline then passes
    that frame through unswapped).
    """
    n = len(next(iter(feeds.values())))
    if n == 0 and dynamic:
        return runner.infer(feeds)[0]
    step = min(n if dynamic else 1, runner.batch_limit or n)
    tried, before = step, runner.batch_limit
    outs: list[np.ndarray] = []
    start = 0
    try:
        while start < n:
            size = min(step, n - start)
            try:
                out = _call(runner, feeds, start, size, n)
            except Exception as exc:  # each runtime raises its own type: is_out_of_memory tells them apart
                if size == 1 or not is_out_of_memory(exc):
                    raise
                step = size // 2
                runner.batch_limit = min(step, runner.batch_limit or step)  # another thread may have gone lower
                continue
            # A runner may hand back the same buffer on its next call: keep a copy when there is one.
            outs.append(out if size == n else out.copy())
            start += size
    finally:
        if runner.batch_limit != before:
            log.warning(
                "model %s ran out of memory on a batch of %d; from now on it runs at most %d per call",
                runner.name,
                tried,
                runner.batch_limit,
            )
    if len(outs) == 1 and dynamic:
        return outs[0]
    return np.concatenate(outs, axis=0)


def _call(runner: Runner, feeds: dict[str, np.ndarray], start: int, size: int, n: int) -> np.ndarray:
    """The first output for items ``start:start+size`` of ``feeds`` (all ``n`` of them: no slicing)."""
    if size == n:
        return runner.infer(feeds)[0]
    return runner.infer({k: v[start : start + size] for k, v in feeds.items()})[0]


class Recognizer:
    """ArcFace identity embeddings (insightface's ``ArcFaceONNX``)."""

    def __init__(self, runner: Runner, crop: CropSpec) -> None:
        self.runner, self.crop = runner, crop
        self._input = runner.inputs[0].name
        self._dynamic = _batch_dynamic(runner.inputs[0])

    def embed(self, image: np.ndarray, kps: np.ndarray) -> np.ndarray:
        """(n, 512) raw embeddings of the faces at ``kps`` (n, 5, 2) in ``image``."""
        s = self.crop.size
        blob = np.empty((len(kps), 3, s, s), np.float32)
        for i, points in enumerate(kps):
            self.crop.to_input(align.crop(image, self.crop.matrix(points), s), blob[i])
        return run_batched(self.runner, {self._input: blob}, self._dynamic)

    def normed(self, image: np.ndarray, kps: np.ndarray) -> np.ndarray:
        """(n, 512) unit-length embeddings (cosine similarity is then a dot product)."""
        e = self.embed(image, kps)
        return e / np.linalg.norm(e, axis=1, keepdims=True)


@dataclass(frozen=True)
class SwapModel:
    """A face-swap model of any supported family."""

    runner: Runner
    crop: CropSpec
    latent_kind: str
    "'emap': insightface's normed embedding @ emap, renormalised; 'normed': the embedding itself."
    emap: np.ndarray | None = None
    target_name: str = "target"
    source_name: str = "source"

    def latent(self, normed: np.ndarray) -> np.ndarray:
        """The model's ``source`` input for a unit-length identity embedding (512,)."""
        if self.latent_kind == "emap":
            assert self.emap is not None
            v = normed.reshape(1, -1) @ self.emap
            return (v / np.linalg.norm(v)).ravel().astype(np.float32)
        if self.latent_kind == "normed":
            return normed.astype(np.float32)
        raise ModelError(f"unknown latent kind {self.latent_kind!r} in the manifest")

    @property
    def dynamic_batch(self) -> bool:
        spec = next(s for s in self.runner.inputs if s.name == self.target_name)
        return _batch_dynamic(spec)

    def run(self, targets: np.ndarray, latents: np.ndarray) -> np.ndarray:
        """Swapped crops (model layout and range) for ``targets`` blobs and ``latents``."""
        feeds = {self.target_name: targets, self.source_name: latents}
        return run_batched(self.runner, feeds, self.dynamic_batch)


class Enhancer:
    """Face restoration (GFPGAN, GPEN, …) on an aligned crop, blended by ``strength``."""

    def __init__(self, runner: Runner, crop: CropSpec) -> None:
        self.runner, self.crop = runner, crop
        image = next(s for s in runner.inputs if len(s.shape) == 4)
        self._image = image.name
        # CodeFormer-style models take a one-element fidelity weight, in its declared dtype.
        self._extra = {
            s.name: np.array([0.5], np.float64 if "double" in s.dtype else np.float32)
            for s in runner.inputs
            if s.name != image.name
        }
        self._blob = np.empty((1, 3, crop.size, crop.size), np.float32)

    def enhance(self, crop: np.ndarray) -> np.ndarray:
        """The restored BGR uint8 version of an aligned BGR uint8 crop of ``crop.size``."""
        self.crop.to_input(crop, self._blob[0])
        out = self.runner.infer({self._image: self._blob, **self._extra})[0]
        return self.crop.to_image(out[0])


class Occluder:
    """XSeg: which pixels of an aligned crop are visible face (not hands, hair, objects)."""

    def __init__(self, runner: Runner, crop: CropSpec) -> None:
        self.runner, self.crop = runner, crop
        self._input = runner.inputs[0].name
        s = crop.size
        self._blob = np.empty((1, s, s, 3) if not crop.nchw else (1, 3, s, s), np.float32)

    def visible(self, face: np.ndarray) -> np.ndarray:
        """float32 0..1 mask at ``face``'s size (1 = visible face)."""
        s = self.crop.size
        small = cv2.resize(face, (s, s), interpolation=cv2.INTER_AREA)
        self.crop.to_input(small, self._blob[0])
        out = self.runner.infer({self._input: self._blob})[0].reshape(s, s)
        mask = cv2.GaussianBlur(np.clip(out, 0, 1).astype(np.float32), (0, 0), 5)
        mask = (np.clip(mask, 0.5, 1) - 0.5) * 2
        return cv2.resize(mask, (face.shape[1], face.shape[0]), interpolation=cv2.INTER_LINEAR)


#: BiSeNet (CelebAMask-HQ) classes that are face: skin, brows, eyes, nose, lips, inner mouth.
PARSER_FACE = (1, 2, 3, 4, 5, 10, 11, 12, 13)
PARSER_MOUTH = 11


class Parser:
    """BiSeNet face parsing: which pixels of an aligned crop are which face part."""

    def __init__(self, runner: Runner, crop: CropSpec) -> None:
        self.runner, self.crop = runner, crop
        self._input = runner.inputs[0].name
        self._blob = np.empty((1, 3, crop.size, crop.size), np.float32)

    def region(self, face: np.ndarray, keep_mouth: bool) -> np.ndarray:
        """float32 0..1 mask at ``face``'s size: face parts (inner mouth left out if asked)."""
        s = self.crop.size
        self.crop.to_input(cv2.resize(face, (s, s), interpolation=cv2.INTER_AREA), self._blob[0])
        labels = self.runner.infer({self._input: self._blob})[0][0].argmax(0)
        classes = [c for c in PARSER_FACE if not (keep_mouth and c == PARSER_MOUTH)]
        soft = cv2.GaussianBlur(np.isin(labels, classes).astype(np.float32), (0, 0), 3)
        return cv2.resize(soft, (face.shape[1], face.shape[0]), interpolation=cv2.INTER_LINEAR)
