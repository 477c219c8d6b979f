"""The neural swap stage: align, swap in one batch, mask, colour-match, enhance, paste back.

Everything outside the model calls works on the aligned crop (128–512 px) or on the face's
bounding box in the frame; nothing touches the whole frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from livefuse.face.topology import FACE_OVAL, MOUTH_INNER
from livefuse.faces import Faces
from livefuse.geometry import align
from livefuse.scratch import Scratch
from livefuse.swap.blend import colour_transfer
from livefuse.swap.neural.models import Enhancer, Occluder, Parser, SwapModel
from livefuse.swap.pastemask import covering_mask, insightface_mask
from livefuse.swap.relight import relight_channels
from livefuse.swap.visible import cut


@dataclass(frozen=True)
class NeuralConfig:
    """Knobs of the neural swap stage."""

    keep_mouth: bool = False
    "Keep the target's mouth interior (from the face mesh, or the face parser when loaded)."
    colour: bool = True
    "Match the swapped face's colour and lighting to the target's."
    sharpness: float = 0.0
    "Unsharp-mask amount applied to the swapped crop (0 = off, 0.5 = moderate)."
    opacity: float = 1.0
    enhance_every: int = 4
    "Run the enhancer on a track every N frames; in between its last detail is re-warped."
    enhance_strength: float = 0.8
    "0..1 blend of the enhanced face over the swapped one."
    colour_every: int = 8
    "Re-measure a face's colour transfer every N frames (skin colour changes slowly)."
    relight: bool = False
    "Put the target's low-frequency light on the swapped crop (with ``colour``; both frame paths)."
    mask_style: str = "face"
    "Paste mask: 'face' (the mesh's face outline, full opacity) or 'insightface' (its erode-and-blur mask)."


#: The face's width as a share of the aligned crop's side (the relighting grid's scale).
RELIGHT_FACE = 0.6


def box_mask(size: int, blur: float = 0.3) -> np.ndarray:
    """FaceFusion's default crop mask: ones, a zeroed border, Gaussian-feathered (float32)."""
    amount = int(size * 0.5 * blur)
    border = max(amount // 2, 1)
    square = np.zeros((size, size), np.float32)
    square[border:-border, border:-border] = 1
    mask = cv2.GaussianBlur(square, (0, 0), max(amount * 0.25, 0.5))
    mask[mask < 1 / 255] = 0  # exact zeros: those pixels are never blended
    return mask


def face_mask(
    box: np.ndarray,
    faces: Faces,
    i: int,
    matrix: np.ndarray,
    keep_mouth: bool,
    scratch: Scratch,
    out: np.ndarray | None = None,
    style: str = "face",
    frame_shape: tuple[int, ...] = (0, 0),
) -> np.ndarray:
    """Face ``i``'s blend mask in its crop, in ``out`` or a new array, with the mouth interior
    left out when asked. Style "face": the face outline from the mesh at full opacity, soft
    only at its border (the feathered ``box`` where there is no mesh); "insightface":
    insightface's own erode-and-blur paste mask (it needs the frame's ``frame_shape``)."""
    size = box.shape[0]
    if style == "insightface":
        mask = insightface_mask(size, matrix, frame_shape, out)
    elif faces.landmarks is None:
        if out is None:
            return box.copy()
        np.copyto(out, box)
        return out
    if faces.landmarks is None:
        return mask
    pts = faces.landmarks[i, :, :2] @ matrix[:, :2].T + matrix[:, 2]
    mouth = [pts[MOUTH_INNER]] if keep_mouth else []
    if style == "insightface":
        cut(mask, mouth)
        return mask
    # The outline keeps the paste to the face itself: no square edge across hair or background.
    return covering_mask(size, pts[FACE_OVAL], mouth, scratch, out=out)


def settle_mask(mask: np.ndarray, opacity: float) -> None:
    """Scale ``mask`` by ``opacity`` and zero what is below one grey level, in place: those
    pixels are then never touched by the paste."""
    if opacity < 1:
        mask *= opacity
    cv2.threshold(mask, 1 / 255, 0, cv2.THRESH_TOZERO, dst=mask)


def _compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """2×3 matrix of ``outer ∘ inner⁻¹`` (from ``inner``'s crop to ``outer``'s crop)."""
    a = np.vstack([outer, [0, 0, 1]])
    b = np.vstack([cv2.invertAffineTransform(inner), [0, 0, 1]])
    return (a @ b)[:2]


@dataclass
class NeuralPatch:
    """A swapped face crop, its blend mask and its frame → crop matrix, not yet pasted."""

    face: np.ndarray
    mask: np.ndarray
    matrix: np.ndarray


@dataclass
class NeuralSwapper:
    """Swaps faces with a neural model. ``latents[k]`` is the model input for source ``k``."""

    model: SwapModel
    latents: np.ndarray
    config: NeuralConfig = field(default_factory=NeuralConfig)
    enhancer: Enhancer | None = None
    occluder: Occluder | None = None
    parser: Parser | None = None
    faces_swapped: int = 0
    enhancer_calls: int = 0
    _residuals: dict[int, np.ndarray] = field(default_factory=dict)
    _ages: dict[int, int] = field(default_factory=dict)
    _colours: dict[int, tuple[np.ndarray | None, int]] = field(default_factory=dict)
    _scratch: Scratch = field(default_factory=Scratch)

    def __post_init__(self) -> None:
        self._box = box_mask(self.model.crop.size)
        self._skin = (self._box > 0.5).astype(np.float32)

    def swap(self, image: np.ndarray, faces: Faces) -> None:
        """Put source 0 onto every face of ``faces``; all or nothing."""
        self.commit(image, self.prepare(image, faces, [(i, 0) for i in range(len(faces))]))

    def prepare(self, image: np.ndarray, faces: Faces, pairs: Sequence[tuple[int, int]]) -> list[NeuralPatch]:
        """Compute, without writing, source ``k``'s face for each (face index, k) pair.
        All the faces go through the model as one batch where the model allows it."""
        if faces.track_ids is not None and (self._residuals or self._colours):
            self.forget(set(faces.track_ids.tolist()))
        if not pairs:
            return []
        spec = self.model.crop
        s = spec.size
        matrices = [spec.matrix(faces.kps[i]) for i, _ in pairs]
        targets = [align.crop(image, m, s) for m in matrices]
        blob = self._scratch.get("swap_in", (len(pairs), 3, s, s), np.float32)
        for crop, item in zip(targets, blob, strict=True):
            spec.to_input(crop, item)
        outputs = self.model.run(blob, self.latents[[k for _, k in pairs]])
        patches = []
        for (i, _), m, target, out in zip(pairs, matrices, targets, outputs, strict=True):
            face = self._finish(spec.to_image(out), target, track_key(faces, i))
            mask = self._mask(target, faces, i, m, image.shape)
            if self.enhancer is not None:
                patches.append(self._enhanced(image, faces, i, face, mask, m))
            else:
                patches.append(NeuralPatch(face, mask, m))
        return patches

    def commit(self, image: np.ndarray, patches: list[NeuralPatch]) -> None:
        """Paste prepared faces into ``image``, each only into its own bounding box."""
        for patch in patches:
            align.paste_back(image, patch.face, patch.mask, patch.matrix, self._scratch)
        self.faces_swapped += len(patches)

    def _finish(self, face: np.ndarray, target: np.ndarray, track: int) -> np.ndarray:
        """Colour match (the transfer re-measured every ``colour_every`` frames per face)
        and sharpen the swapped crop."""
        if self.config.colour:
            transfer, age = self._colours.get(track, (None, self.config.colour_every))
            if age >= self.config.colour_every:
                transfer, age = colour_transfer(face, target, self._box), 0
            self._colours[track] = (transfer, age + 1)
            if transfer is not None:
                face = cv2.transform(face, transfer)
            if self.config.relight:
                # The target's low-frequency light on top: no step where the paste meets the frame.
                face = relight_channels(face, target, self._skin, RELIGHT_FACE * face.shape[1], self._scratch)
        if self.config.sharpness > 0:
            blur = cv2.GaussianBlur(face, (0, 0), 1.0)
            face = cv2.addWeighted(face, 1 + self.config.sharpness, blur, -self.config.sharpness, 0)
        return face

    def _mask(
        self, target: np.ndarray, faces: Faces, i: int, matrix: np.ndarray, frame_shape: tuple[int, ...]
    ) -> np.ndarray:
        """The crop's blend mask: :func:`face_mask` ∧ visible (occluder) ∧ face parts (parser),
        with the mouth left out when asked."""
        keep_mouth = self.config.keep_mouth and self.parser is None
        style = self.config.mask_style
        mask = face_mask(self._box, faces, i, matrix, keep_mouth, self._scratch, style=style, frame_shape=frame_shape)
        if self.occluder is not None:
            np.minimum(mask, self.occluder.visible(target), out=mask)
        if self.parser is not None:
            np.minimum(mask, self.parser.region(target, self.config.keep_mouth), out=mask)
        settle_mask(mask, self.config.opacity)
        return mask

    def _enhanced(
        self, image: np.ndarray, faces: Faces, i: int, face: np.ndarray, mask: np.ndarray, m: np.ndarray
    ) -> NeuralPatch:
        """The swapped face carried into the enhancer's crop and restored there.

        The enhancer runs on a track every ``enhance_every`` frames; in between, the detail
        it added last time (kept in the face's aligned space, so it follows the face) is
        added to the fresh swap.
        """
        enhancer = self.enhancer
        assert enhancer is not None
        e = enhancer.crop.size
        me = enhancer.crop.matrix(faces.kps[i])
        to_e = _compose(me, m)
        base = align.crop(image, me, e)
        swapped = cv2.warpAffine(face, to_e, (e, e), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        alpha = cv2.warpAffine(mask, to_e, (e, e), flags=cv2.INTER_LINEAR)
        cv2.blendLinear(base, swapped, 1 - alpha, alpha, dst=base)
        track = track_key(faces, i)
        age = self._ages.get(track, self.config.enhance_every)
        if age >= self.config.enhance_every or track not in self._residuals:
            restored = enhancer.enhance(base)
            self.enhancer_calls += 1
            self._residuals[track] = restored.astype(np.float32) - base
            age = 0
        self._ages[track] = age + 1
        out = base + self.config.enhance_strength * self._residuals[track]
        return NeuralPatch(np.clip(out, 0, 255).astype(np.uint8), alpha, me)

    def forget(self, live_tracks: set[int]) -> None:
        """Drop the per-face state of tracks that ended."""
        for track in (set(self._residuals) | set(self._colours)) - live_tracks:
            self._residuals.pop(track, None)
            self._ages.pop(track, None)
            self._colours.pop(track, None)


def track_key(faces: Faces, i: int) -> int:
    """Face ``i``'s track id; untracked faces get a per-index stand-in id (< 0)."""
    return int(faces.track_ids[i]) if faces.track_ids is not None else -1 - i
