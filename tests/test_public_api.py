"""The public API: what ``import livefuse`` offers a library user, and the README's few lines."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

import livefuse


def test_every_public_name_resolves_to_its_definition() -> None:
    assert sorted(livefuse._EXPORTS) == livefuse.__all__
    for name in livefuse.__all__:
        value = getattr(livefuse, name)
        assert value.__module__ == livefuse._EXPORTS[name], name


def test_importing_livefuse_loads_no_model_runtime() -> None:
    code = "import sys, livefuse, livefuse.errors; print('onnxruntime' in sys.modules, 'cv2' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_swapping_a_numpy_frame_in_a_few_lines(livefuse_home: Path) -> None:
    """The README's library example, on the sample portraits: Biden's face onto Obama's."""
    from livefuse import Engine, Frame, load_settings

    samples = livefuse_home / "samples"
    image = cv2.imread(str(samples / "obama.jpg"))
    before = image.copy()
    with Engine(load_settings({"home": str(livefuse_home)}, env={})) as engine:
        tracker, swapper = engine.tracker(), engine.swapper(samples / "biden.jpg")
        faces = tracker.analyze(Frame.of(image))
        swapper.swap(image, faces)
    assert len(faces) == 1
    changed = np.any(image != before, axis=2)
    x0, y0, x1, y1 = faces.boxes[0]
    w, h = x1 - x0, y1 - y0
    inside = changed[max(0, int(y0 - h / 2)) : int(y1 + h / 2), max(0, int(x0 - w / 2)) : int(x1 + w / 2)]
    assert changed.sum() > 0.25 * w * h  # the face was swapped
    assert inside.sum() == changed.sum()  # and nothing outside the face's region was touched
