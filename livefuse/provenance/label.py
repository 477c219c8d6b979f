"""A visible label ("AI-generated") in a corner of every outgoing live frame.

The label is rendered once, when the output's size is known, into a small patch; each
frame then only gets that patch copied into its corner (a few kilobytes, no drawing, no
allocation). Put ``LabelSink`` first in a pipeline's sinks: the pipeline hands each
frame to its sinks in order, so the virtual camera, WebRTC and a recording after it all
get the labelled frame.
"""

from __future__ import annotations

import cv2
import numpy as np

from livefuse.frame import Frame
from livefuse.pipeline.stages import SourceInfo
from livefuse.provenance import DEFAULT_LABEL

#: Text height as a share of the frame height, and the smallest that stays legible.
TEXT_SHARE = 0.03
MIN_TEXT_PX = 11
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def render_label(text: str, frame_height: int) -> np.ndarray:
    """The label as a BGR patch: white text on a dark box, sized for ``frame_height``."""
    if not text.strip():
        raise ValueError("the label text is empty")
    px = max(MIN_TEXT_PX, round(frame_height * TEXT_SHARE))
    scale = cv2.getFontScaleFromHeight(_FONT, px, 1)
    thickness = max(1, round(px / 12))
    (width, height), baseline = cv2.getTextSize(text, _FONT, scale, thickness)
    pad = max(3, px // 3)
    patch = np.full((height + baseline + 2 * pad, width + 2 * pad, 3), 24, np.uint8)
    cv2.putText(patch, text, (pad, pad + height), _FONT, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    return patch


class LabelSink:
    """Draws a label into each frame, in place, in its bottom-left corner.

    Not an output itself: list it before the sinks whose frames should carry the label.
    """

    def __init__(self, text: str = DEFAULT_LABEL) -> None:
        self.text = text
        self._patch: np.ndarray | None = None
        self._at: tuple[slice, slice] = (slice(0), slice(0))

    def open(self, info: SourceInfo) -> None:
        """Render the patch for this output size."""
        patch = render_label(self.text, info.height)
        margin = max(4, info.height // 60)
        # A frame narrower than the label gets as much of it as fits (still from the left).
        h, w = min(patch.shape[0], info.height), min(patch.shape[1], max(0, info.width - margin))
        self._patch = np.ascontiguousarray(patch[:h, :w])
        top = max(0, info.height - margin - h)
        self._at = (slice(top, top + h), slice(margin, margin + w))

    def send(self, frame: Frame) -> None:
        """Copy the label into ``frame.image``'s corner."""
        if self._patch is not None:
            frame.image[self._at] = self._patch

    def close(self) -> None:
        """Nothing to release."""
