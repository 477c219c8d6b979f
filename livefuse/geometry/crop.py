"""What a model wants as its face crop, and what it gives back: pure data from the manifest."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from livefuse.geometry.align import similarity


@dataclass(frozen=True)
class CropSpec:
    """Alignment, layout and value range of one model's face input and image output."""

    size: int
    "Crop side in pixels."
    template: np.ndarray
    "(5, 2) keypoint template, normalised to 0..1 of the crop."
    mean: np.ndarray
    "(3,) per-channel mean, in the model's channel order: input = (pixel/255 − mean)/std."
    std: np.ndarray
    rgb: bool = True
    nchw: bool = True
    output_range: tuple[float, float] = (0.0, 1.0)

    def matrix(self, kps: np.ndarray) -> np.ndarray:
        """2×3 frame → crop transform for a face's five keypoints."""
        return similarity(kps, self.template * self.size)

    def normalisation(self) -> tuple[np.ndarray, np.ndarray]:
        """(scale, offset) per model channel: input = pixel·scale + offset."""
        return 1 / (255 * self.std), -self.mean / self.std

    def to_input(self, crop: np.ndarray, out: np.ndarray) -> None:
        """Write the BGR uint8 ``crop`` into ``out`` (one item: 3×S×S or S×S×3) normalised."""
        scale, offset = self.normalisation()
        if self.nchw:
            planes = cv2.split(crop)
            order = (2, 1, 0) if self.rgb else (0, 1, 2)
            for c, plane in enumerate(order):
                # out = pixel·scale + offset, one contiguous plane at a time.
                cv2.multiply(planes[plane], float(scale[c]), dst=out[c], dtype=cv2.CV_32F)
                out[c] += offset[c]
        else:
            pixels = crop[:, :, ::-1] if self.rgb else crop
            np.multiply(pixels, scale, out=out, casting="unsafe")
            out += offset

    def to_image(self, output: np.ndarray) -> np.ndarray:
        """One model output (3×S×S or S×S×3, in ``output_range``) → BGR uint8 crop.

        Values are truncated after clipping, as insightface's ``astype(np.uint8)`` does.
        """
        lo, hi = self.output_range
        pixels = np.clip((output - lo) * (255 / (hi - lo)), 0, 255).astype(np.uint8)
        if not self.nchw:
            return np.ascontiguousarray(pixels[:, :, ::-1] if self.rgb else pixels)
        planes = [pixels[2], pixels[1], pixels[0]] if self.rgb else list(pixels)
        return cv2.merge(planes)
