"""A direct re-implementation of insightface's documented procedures (python-package 0.7.3:
``utils/face_align.py``, ``model_zoo/inswapper.py``, ``model_zoo/arcface_onnx.py``), written
independently of livefuse so tests can hold livefuse's results against it."""

from __future__ import annotations

import cv2
import numpy as np
import onnxruntime as ort
from onnx import load, numpy_helper

ARCFACE_DST = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)


def umeyama(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """skimage ``SimilarityTransform.estimate``: Umeyama's least-squares similarity, 3×3."""
    num, dim = src.shape
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    src_d, dst_d = src - src_mean, dst - dst_mean
    a = dst_d.T @ src_d / num
    d = np.ones(dim)
    if np.linalg.det(a) < 0:
        d[dim - 1] = -1
    t = np.eye(dim + 1)
    u, s, v = np.linalg.svd(a)
    t[:dim, :dim] = u @ np.diag(d) @ v
    scale = 1.0 / src_d.var(axis=0).sum() * (s @ d)
    t[:dim, dim] = dst_mean - scale * (t[:dim, :dim] @ src_mean)
    t[:dim, :dim] *= scale
    return t


def estimate_norm(lmk: np.ndarray, image_size: int = 112) -> np.ndarray:
    if image_size % 112 == 0:
        ratio, diff_x = image_size / 112.0, 0.0
    else:
        ratio = image_size / 128.0
        diff_x = 8.0 * ratio
    dst = ARCFACE_DST * ratio
    dst[:, 0] += diff_x
    return umeyama(lmk.astype(np.float64), dst.astype(np.float64))[0:2, :]


def norm_crop2(img: np.ndarray, landmark: np.ndarray, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    m = estimate_norm(landmark, image_size)
    return cv2.warpAffine(img, m, (image_size, image_size), borderValue=0.0), m


def blob(img: np.ndarray, scale: float, mean: float) -> np.ndarray:
    """``cv2.dnn.blobFromImage(img, scale, size, (mean,)*3, swapRB=True)``."""
    rgb = img[:, :, ::-1].astype(np.float32)
    return ((rgb - mean) * scale).transpose(2, 0, 1)[None].copy()


class ArcFaceRef:
    def __init__(self, path: str) -> None:
        self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])

    def normed_embedding(self, img: np.ndarray, kps: np.ndarray) -> np.ndarray:
        aimg, _ = norm_crop2(img, kps, 112)
        inp = self.session.get_inputs()[0].name
        e = self.session.run(None, {inp: blob(aimg, 1.0 / 127.5, 127.5)})[0].ravel()
        return e / np.linalg.norm(e)


class INSwapperRef:
    def __init__(self, path: str) -> None:
        self.emap = numpy_helper.to_array(load(path).graph.initializer[-1])
        self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def get(self, img: np.ndarray, target_kps: np.ndarray, source_normed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``INSwapper.get(..., paste_back=False)``: the swapped 128×128 BGR crop and M."""
        aimg, m = norm_crop2(img, target_kps, 128)
        b = blob(aimg, 1.0 / 255.0, 0.0)
        latent = source_normed.reshape((1, -1))
        latent = np.dot(latent, self.emap)
        latent /= np.linalg.norm(latent)
        pred = self.session.run(None, {self.input_names[0]: b, self.input_names[1]: latent.astype(np.float32)})[0]
        img_fake = pred.transpose((0, 2, 3, 1))[0]
        return np.clip(255 * img_fake, 0, 255).astype(np.uint8)[:, :, ::-1], m

    def paste_back(self, img: np.ndarray, bgr_fake: np.ndarray, m: np.ndarray) -> np.ndarray:
        """insightface's full-frame paste-back (the benchmark's baseline), dead code included."""
        aimg = cv2.warpAffine(img, m, (128, 128), borderValue=0.0)
        target_img = img
        fake_diff = bgr_fake.astype(np.float32) - aimg.astype(np.float32)
        fake_diff = np.abs(fake_diff).mean(axis=2)
        fake_diff[:2, :] = 0
        fake_diff[-2:, :] = 0
        fake_diff[:, :2] = 0
        fake_diff[:, -2:] = 0
        im = cv2.invertAffineTransform(m)
        img_white = np.full((aimg.shape[0], aimg.shape[1]), 255, dtype=np.float32)
        bgr_fake = cv2.warpAffine(bgr_fake, im, (target_img.shape[1], target_img.shape[0]), borderValue=0.0)
        img_white = cv2.warpAffine(img_white, im, (target_img.shape[1], target_img.shape[0]), borderValue=0.0)
        fake_diff = cv2.warpAffine(fake_diff, im, (target_img.shape[1], target_img.shape[0]), borderValue=0.0)
        img_white[img_white > 20] = 255
        fthresh = 10
        fake_diff[fake_diff < fthresh] = 0
        fake_diff[fake_diff >= fthresh] = 255
        img_mask = img_white
        mask_h_inds, mask_w_inds = np.where(img_mask == 255)
        mask_h = np.max(mask_h_inds) - np.min(mask_h_inds)
        mask_w = np.max(mask_w_inds) - np.min(mask_w_inds)
        mask_size = int(np.sqrt(mask_h * mask_w))
        k = max(mask_size // 10, 10)
        kernel = np.ones((k, k), np.uint8)
        img_mask = cv2.erode(img_mask, kernel, iterations=1)
        kernel = np.ones((2, 2), np.uint8)
        fake_diff = cv2.dilate(fake_diff, kernel, iterations=1)
        k = max(mask_size // 20, 5)
        kernel_size = (k, k)
        blur_size = tuple(2 * i + 1 for i in kernel_size)
        img_mask = cv2.GaussianBlur(img_mask, blur_size, 0)
        k = 5
        kernel_size = (k, k)
        blur_size = tuple(2 * i + 1 for i in kernel_size)
        fake_diff = cv2.GaussianBlur(fake_diff, (11, 11), 0)
        img_mask /= 255
        fake_diff /= 255
        img_mask = np.reshape(img_mask, [img_mask.shape[0], img_mask.shape[1], 1])
        fake_merged = img_mask * bgr_fake + (1 - img_mask) * target_img.astype(np.float32)
        return fake_merged.astype(np.uint8)
