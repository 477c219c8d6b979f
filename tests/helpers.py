"""Shared helpers for the face tests (not fixtures: plain functions)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from livefuse.face.topology import FACE_OVAL
from livefuse.faces import Faces
from livefuse.frame import Frame

#: insightface's 112×112 ArcFace template for the five keypoints.
TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    np.float32,
)


def frame_of(image: np.ndarray, index: int = 0, fps: int = 30) -> Frame:
    return Frame(index=index, pts=index, time_base=Fraction(1, fps), capture_ns=0, image=image)


def aligned(image: np.ndarray, kps: np.ndarray, size: int = 112) -> np.ndarray:
    """The face at ``kps`` aligned to the 112-px template, grey, float32."""
    m, _ = cv2.estimateAffinePartial2D(kps.astype(np.float32), TEMPLATE_112 * size / 112)
    crop = cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_AREA)
    return cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY).astype(np.float32)


def structure_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation of the two aligned faces' edge maps over the inner face (eyes, brows,
    nose, mouth): shapes of features, not colour or lighting."""

    def edges(x: np.ndarray) -> np.ndarray:
        gx = cv2.Sobel(x, cv2.CV_32F, 1, 0, ksize=3)
        gy = cv2.Sobel(x, cv2.CV_32F, 0, 1, ksize=3)
        return np.hypot(gx, gy)[24:104, 20:92].ravel()

    ea, eb = edges(a), edges(b)
    return float(np.corrcoef(ea, eb)[0, 1])


def oval_mask(shape: tuple[int, ...], faces: Faces, grow: int = 0) -> np.ndarray:
    """Boolean mask of the faces' mesh outlines, grown by ``grow`` px."""
    mask = np.zeros(shape[:2], np.uint8)
    assert faces.landmarks is not None
    for pts in faces.landmarks:
        cv2.fillPoly(mask, [np.round(pts[FACE_OVAL, :2]).astype(np.int32)], 255)
    if grow:
        mask = cv2.dilate(mask, np.ones((2 * grow + 1, 2 * grow + 1), np.uint8))
    return mask > 0


def hull_mask(shape: tuple[int, ...], faces: Faces, grow: int = 0) -> np.ndarray:
    """Boolean mask of the convex hulls of the faces' mesh points, grown by ``grow`` px."""
    mask = np.zeros(shape[:2], np.uint8)
    assert faces.landmarks is not None
    for pts in faces.landmarks:
        hull = cv2.convexHull(np.round(pts[:, :2]).astype(np.int32))
        cv2.fillConvexPoly(mask, hull, 255)
    if grow:
        mask = cv2.dilate(mask, np.ones((2 * grow + 1, 2 * grow + 1), np.uint8))
    return mask > 0


def unwrapped(image: np.ndarray, points: np.ndarray, canon: np.ndarray, size: int = 256) -> np.ndarray:
    """The face with mesh ``points`` in ``image``, warped onto the mesh layout ``canon``
    (a size×size canvas): its texture with pose and shape taken out, grey, float32."""
    from livefuse.swap.mesh import MeshSwapConfig, MeshSwapper
    from livefuse.swap.source import SourceFace

    warp = MeshSwapper(
        SourceFace(image, points, 1), MeshSwapConfig(colour=False, feather=0.02, open_mouth=np.inf, shape_transfer=0.0)
    )
    canvas = np.zeros((size, size, 3), np.uint8)
    warp.swap(
        canvas,
        Faces(
            np.zeros((1, 4), np.float32), np.ones(1, np.float32), np.zeros((1, 5, 2), np.float32), landmarks=canon[None]
        ),
    )
    return cv2.cvtColor(canvas, cv2.COLOR_BGR2GRAY).astype(np.float32)


def texture_similarity(a: np.ndarray, b: np.ndarray, exclude: np.ndarray | None = None) -> float:
    """Correlation of two unwrapped faces' details (a band-pass: the image minus its
    σ=4 px blur) over the face's interior, away from the blend's soft edge."""

    def detail(x: np.ndarray) -> np.ndarray:
        return x - cv2.GaussianBlur(x, (0, 0), 4)

    interior = ((a > 0) & (b > 0)).astype(np.uint8)
    interior = cv2.erode(interior, np.ones((45, 45), np.uint8)) > 0
    if exclude is not None:
        interior &= ~exclude
    return float(np.corrcoef(detail(a)[interior], detail(b)[interior])[0, 1])


class NoFaces:
    """An analyzer that finds nothing (for tests of sources and sinks)."""

    detector_calls = 0

    def analyze(self, frame: Frame) -> Faces:
        return Faces.empty()

    def reset(self) -> None:
        """Nothing to forget."""


class Untouched:
    """A swapper that leaves frames as they are."""

    def swap(self, image: np.ndarray, faces: Faces) -> None:
        """Write nothing."""


def cuda_gpus() -> int:
    """How many NVIDIA GPUs cuda-python sees here (0 without cuda-python or a driver)."""
    try:
        from livefuse.runtime import cuda
    except ImportError:
        return 0
    return len(cuda.probe().gpus)


def small_swap_model(path: Path, batch: int | str = "n", size: int = 128) -> Path:
    """A small model with inswapper's interface (target, source → output, and an emap
    initializer) whose output depends on both inputs; ``batch`` fixed or a free dim name."""
    rng = np.random.default_rng(3)
    w = numpy_helper.from_array(rng.normal(0, 0.3, (3, 3, 3, 3)).astype(np.float32), "w")
    g = numpy_helper.from_array(rng.normal(0, 0.5, (512, 3)).astype(np.float32), "g")
    axes = numpy_helper.from_array(np.array([2, 3], np.int64), "axes")
    emap = numpy_helper.from_array(rng.normal(0, 0.04, (512, 512)).astype(np.float32), "emap")
    nodes = [
        helper.make_node("Conv", ["target", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("MatMul", ["source", "g"], ["m"]),
        helper.make_node("Unsqueeze", ["m", "axes"], ["m4"]),
        helper.make_node("Add", ["c", "m4"], ["a"]),
        helper.make_node("Sigmoid", ["a"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "small_swap",
        [
            helper.make_tensor_value_info("target", TensorProto.FLOAT, [batch, 3, size, size]),
            helper.make_tensor_value_info("source", TensorProto.FLOAT, [batch, 512]),
        ],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, 3, size, size])],
        [w, g, axes, emap],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path
