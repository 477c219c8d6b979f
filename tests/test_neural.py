"""Neural swapping with tiny stand-in models of the real interfaces: exactness against
insightface's documented procedure, both swapper families, multi-face modes, batching,
the enhancer cadence and the masks."""

from __future__ import annotations

import dataclasses
import functools
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from livefuse.app import Engine
from livefuse.cli import main
from livefuse.config import load_settings
from livefuse.errors import ConfigError, ModelError
from livefuse.face.topology import MOUTH_INNER, five_points
from livefuse.models.contracts import load_emap
from livefuse.models.files import sha256_file
from livefuse.models.install import ModelInstaller
from livefuse.models.manifest import load_manifest
from livefuse.models.store import ModelStore
from livefuse.runtime.ort import OrtRunner
from livefuse.swap.gpu.swapper import GpuPairSwapper
from livefuse.swap.neural.models import SwapModel
from livefuse.swap.neural.swapper import NeuralConfig, NeuralSwapper
from livefuse.swap.select import FaceSelector, Mapping, SelectingSwapper
from livefuse.testing.standins import make_tiny
from tests.helpers import frame_of, hull_mask, small_swap_model
from tests.insightface_ref import ArcFaceRef, INSwapperRef, blob, estimate_norm

NEURAL = (
    "w600k_r50",
    "inswapper_128",
    "inswapper_128_fp16",
    "hyperswap_1a_256",
    "gfpgan_1.4",
    "xseg_1",
    "scrfd_det_10g",
    "yunet_2023mar",
)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny")
    for name in NEURAL:
        make_tiny(name, out)
    return out


def standin_manifest(tiny_dir: Path) -> dict:
    """The real manifest with each neural record pinned to its stand-in's hash instead."""
    manifest = dict(load_manifest())
    for name in NEURAL:
        path = tiny_dir / f"{name}.onnx"
        digest = sha256_file(path)
        spec = manifest[name]
        source = dataclasses.replace(spec.source, sha256=digest, size=path.stat().st_size)
        manifest[name] = dataclasses.replace(spec, source=source, sha256=digest, also_sha256=())
    return manifest


@pytest.fixture(scope="module")
def manifest(tiny_dir) -> dict:
    return standin_manifest(tiny_dir)


@pytest.fixture(scope="module")
def home(livefuse_home, tiny_dir, manifest, tmp_path_factory) -> Path:
    """A home with the built-in models and the tiny neural stand-ins registered."""
    home = tmp_path_factory.mktemp("home")
    shutil.copytree(livefuse_home / "models", home / "models", ignore=shutil.ignore_patterns("local.toml"))
    (home / "samples").symlink_to(livefuse_home / "samples")
    store = ModelStore(home, manifest)
    for name in NEURAL:
        ModelInstaller(store).add(name, tiny_dir / f"{name}.onnx")
    return home


@pytest.fixture(autouse=True)
def standin_store(manifest, monkeypatch):
    """Every ModelStore the code under test builds reads the stand-in manifest."""
    monkeypatch.setattr("livefuse.app.ModelStore", functools.partial(ModelStore, manifest=manifest))
    monkeypatch.setattr("livefuse.commands.ModelStore", functools.partial(ModelStore, manifest=manifest))


def source_kps(engine: Engine, photo: Path) -> tuple[np.ndarray, np.ndarray]:
    """The source photo and the five keypoints livefuse takes its identity from."""
    image, face = engine.source_face(photo)
    points = face.points[None, :, :2] + np.asarray(face.origin, np.float32)
    return image, five_points(points)[0]


def engine_for(home: Path, **options) -> Engine:
    return Engine(load_settings({"home": str(home), "threads": 2, **options}, env={}))


def swapped(home: Path, image: np.ndarray, targets, **options) -> np.ndarray:
    """``image`` with biden.jpg's face swapped onto ``targets`` under ``options``."""
    out = image.copy()
    with engine_for(home, **options) as engine:
        engine.swapper(home / "samples" / "biden.jpg").swap(out, targets)
    return out


@pytest.fixture(scope="module")
def group(home):
    image = cv2.imread(str(home / "samples" / "t1.jpg"))
    with engine_for(home) as engine:
        return image, engine.tracker().analyze(frame_of(image))


def test_arcface_embedding_matches_insightface(home):
    image = cv2.imread(str(home / "samples" / "t1.jpg"))
    with engine_for(home) as engine:
        faces = engine.tracker().analyze(frame_of(image))
        ours = engine.recognizer().normed(image, faces.kps)
    ref = ArcFaceRef(str(home / "models" / "w600k_r50.onnx"))
    for i in range(len(faces)):
        assert float(ours[i] @ ref.normed_embedding(image, faces.kps[i])) > 0.99999


@pytest.mark.parametrize("name", ["inswapper_128", "inswapper_128_fp16"])
def test_inswapper_crop_matches_insightface(home, group, name):
    """Same stand-in, same keypoints, same source: livefuse's swapped crop equals the one
    insightface's INSwapper.get computes, to within one grey level."""
    image, faces = group
    path = home / "models" / f"{name}.onnx"
    with engine_for(home, swapper=name, colour=False) as engine:
        swapper = engine.swapper(home / "samples" / "biden.jpg")
        src, kps = source_kps(engine, home / "samples" / "biden.jpg")
        normed = ArcFaceRef(str(home / "models" / "w600k_r50.onnx")).normed_embedding(src, kps)
        patches = swapper.inner.prepare(image, faces, [(i, 0) for i in range(len(faces))])
    ref = INSwapperRef(str(path))
    for i, patch in enumerate(patches):
        fake, m = ref.get(image, faces.kps[i], normed)
        diff = np.abs(fake.astype(int) - patch.face.astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (i, diff.max(), (diff > 0).mean())
        assert np.abs(m - patch.matrix).max() < 1e-3


def test_second_family_hyperswap_follows_its_record(home, group):
    """A 256-px family with its own template scale, value range and latent: the crop equals
    the procedure its contract documents."""
    image, faces = group
    with engine_for(home, swapper="hyperswap_1a_256", colour=False) as engine:
        swapper = engine.swapper(home / "samples" / "biden.jpg")
        src, kps = source_kps(engine, home / "samples" / "biden.jpg")
        patch = swapper.inner.prepare(image, faces, [(0, 0)])[0]
    normed = ArcFaceRef(str(home / "models" / "w600k_r50.onnx")).normed_embedding(src, kps)
    import onnxruntime as ort

    session = ort.InferenceSession(str(home / "models" / "hyperswap_1a_256.onnx"), providers=["CPUExecutionProvider"])
    m = estimate_norm(faces.kps[0], 256)  # arcface_128 scaled to 256
    aimg = cv2.warpAffine(image, m, (256, 256), borderValue=0.0)
    target = blob(aimg, 1 / 127.5, 127.5)  # (x/255 - 0.5)/0.5
    out = session.run(None, {"target": target, "source": normed[None].astype(np.float32)})[0][0]
    expected = np.clip((out.transpose(1, 2, 0) + 1) / 2 * 255, 0, 255).astype(np.uint8)[:, :, ::-1]
    assert patch.face.shape == (256, 256, 3)
    assert np.abs(expected.astype(int) - patch.face.astype(int)).max() <= 1


def test_swap_changes_only_face_regions(home, group):
    image, faces = group
    out = swapped(home, image, faces, swapper="inswapper_128")
    changed = (out != image).any(axis=2)
    assert changed[hull_mask(image.shape, faces)].mean() > 0.5
    assert not (changed & ~hull_mask(image.shape, faces, grow=2)).any()


def test_one_mode_swaps_the_largest_face_not_the_leftmost(home, group):
    image, faces = group
    out = swapped(home, image, faces, swapper="inswapper_128", faces="one")
    changed = (out != image).any(axis=2)
    touched = [changed[hull_mask(image.shape, faces[[i]])].any() for i in range(len(faces))]
    assert touched == [i == int(np.argmax(faces.areas)) for i in range(len(faces))]
    assert int(np.argmax(faces.areas)) != int(np.argmin(faces.boxes[:, 0]))


def test_map_mode_changes_exactly_the_mapped_face(home, group, tmp_path):
    """Six people, one reference mapped: that face changes, the other five stay."""
    image, faces = group
    pick = 2
    x0, y0, x1, y1 = faces.boxes[pick].astype(int)
    pad = (x1 - x0) // 2
    ref = tmp_path / "ref.png"
    cv2.imwrite(str(ref), image[max(y0 - pad, 0) : y1 + pad, max(x0 - pad, 0) : x1 + pad])
    mapping = f"{ref}={home / 'samples' / 'biden.jpg'}"
    with engine_for(home, swapper="inswapper_128") as engine:
        ref_img, kps = source_kps(engine, ref)
        refs = engine.recognizer().normed(ref_img, kps[None])
        sims = engine.recognizer().normed(image, faces.kps) @ refs[0]
    # The same person's face from another photo (here: a re-cut) matches far better than the rest.
    assert sims[pick] > 0.9 and np.delete(sims, pick).max() < 0.7, sims
    out = swapped(home, image, faces, swapper="inswapper_128", faces="map", map=mapping, map_threshold=0.8)
    changed = (out != image).any(axis=2)
    touched = [changed[hull_mask(image.shape, faces[[i]])].any() for i in range(len(faces))]
    assert touched == [i == pick for i in range(len(faces))]


def test_identity_is_computed_when_a_track_starts_and_rarely_after(home, group):
    image, faces = group
    with engine_for(home, swapper="inswapper_128") as engine:
        recognizer = engine.recognizer()
        inner = engine.swapper(home / "samples" / "biden.jpg").inner
        calls = []
        original = recognizer.normed
        recognizer.normed = lambda img, kps: calls.append(len(kps)) or original(img, kps)  # type: ignore[method-assign]
        refs = original(image, faces.kps[:1])
        swapper = SelectingSwapper(inner, FaceSelector("map", Mapping(refs, 0.99), refresh_every=30), recognizer)
        for _ in range(60):
            swapper.swap(image.copy(), faces)
    assert calls == [6, 6], calls  # at the start, and once more after 30 frames


def test_batched_run_equals_one_face_at_a_time(home, group, tmp_path):
    """All faces of a frame go through a dynamic-batch model in one call, with the same
    result as one call per face."""
    image, faces = group
    pairs = [(i, 0) for i in range(len(faces))]
    fixed = small_swap_model(tmp_path / "fixed.onnx", 1)
    dynamic = small_swap_model(tmp_path / "dynamic.onnx", "batch")
    with engine_for(home, swapper="inswapper_128", colour=False) as engine:
        base = engine.swapper(home / "samples" / "biden.jpg").inner
        with OrtRunner(fixed) as one, OrtRunner(dynamic) as many:
            results = {}
            for name, runner in (("single", one), ("batched", many)):
                model = SwapModel(runner, base.model.crop, "emap", load_emap(fixed))
                calls = []
                original = runner.infer_impl
                runner.infer_impl = lambda f, o=original, c=calls: c.append(1) or o(f)  # type: ignore[method-assign]
                swapper = NeuralSwapper(model, base.latents, NeuralConfig(colour=False))
                results[name] = swapper.prepare(image, faces, pairs)
                results[name + "_calls"] = len(calls)
    assert results["batched_calls"] == 1 and results["single_calls"] == len(faces)
    for a, b in zip(results["batched"], results["single"], strict=True):
        assert np.abs(a.face.astype(int) - b.face.astype(int)).max() <= 1


def test_enhancer_runs_every_nth_frame_and_its_detail_follows_in_between(home, group):
    image, faces = group
    one = faces[[0]]
    base = swapped(home, image, one, swapper="inswapper_128")
    outs = []
    with engine_for(home, swapper="inswapper_128", enhancer="gfpgan_1.4", enhance_every=3) as engine:
        swapper = engine.swapper(home / "samples" / "biden.jpg")
        for _ in range(7):
            out = image.copy()
            swapper.swap(out, one)
            outs.append(out)
    assert swapper.inner.enhancer_calls == 3  # frames 0, 3 and 6
    for out in outs:
        assert np.abs(out.astype(int) - base.astype(int)).mean() > 0.01, "every frame carries the enhancement"
    assert np.array_equal(outs[1], outs[2]), "in-between frames re-use the last enhancement"


def test_mouth_mask_keeps_the_mouth_interior(home, group):
    image, faces = group
    out = swapped(home, image, faces, swapper="inswapper_128", keep_mouth=True)
    mouth = np.zeros(image.shape[:2], np.uint8)
    for pts in faces.landmarks:
        cv2.fillPoly(mouth, [np.round(pts[MOUTH_INNER, :2]).astype(np.int32)], 255)
    inside = cv2.erode(mouth, np.ones((3, 3), np.uint8)) > 0
    assert inside.sum() > 20
    assert (out[inside] == image[inside]).all()


def test_occlusion_mask_only_removes_swapped_pixels(home, group):
    """The occluder's mask can only take pixels out of the blend, never add any."""
    image, faces = group
    pairs = [(i, 0) for i in range(len(faces))]
    masks = {}
    for extra in ("", "occlusion"):
        with engine_for(home, swapper="inswapper_128", mask=extra) as engine:
            inner = engine.swapper(home / "samples" / "biden.jpg").inner
            masks[extra] = [p.mask for p in inner.prepare(image, faces, pairs)]
    for plain, occluded in zip(masks[""], masks["occlusion"], strict=True):
        assert (occluded <= plain + 1e-6).all()
    assert sum(float((p - o).sum()) for p, o in zip(masks[""], masks["occlusion"], strict=True)) > 1
    out = swapped(home, image, faces, swapper="inswapper_128", mask="occlusion")
    untouched = ~hull_mask(image.shape, faces, grow=2)
    assert (out[untouched] == image[untouched]).all()


def test_missing_neural_model_says_how_to_get_it(livefuse_home):
    with pytest.raises(ModelError) as err:
        with Engine(load_settings({"home": str(livefuse_home), "swapper": "inswapper_128"}, env={})) as engine:
            engine.swapper(livefuse_home / "samples" / "biden.jpg")
    text = str(err.value)
    assert "w600k_r50" in text or "inswapper_128" in text
    assert "livefuse models" in text and "mesh" in text


def test_wrong_role_is_a_clear_error(home):
    with pytest.raises(Exception, match="not a swapper"):
        with engine_for(home, swapper="gfpgan_1.4") as engine:
            engine.swapper(home / "samples" / "biden.jpg")


def test_cli_runs_neural_options_end_to_end(home, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LIVEFUSE_HOME", str(home))
    clip = tmp_path / "in.mp4"
    cap = cv2.VideoCapture(str(home / "samples" / "demo.mp4"))
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 30, (640, 360))
    for _ in range(10):
        ok, frame = cap.read()
        writer.write(cv2.resize(frame, (640, 360)))
    writer.release()
    cap.release()
    out = tmp_path / "out.mp4"
    code = main(
        [
            "run",
            "--source",
            str(home / "samples" / "biden.jpg"),
            "--input",
            str(clip),
            "--output",
            str(out),
            "--swapper",
            "inswapper_128",
            "--enhancer",
            "gfpgan_1.4",
            "--mask",
            "occlusion,mouth",
            "--faces",
            "one",
        ]
    )
    assert code == 0
    assert "10 in / 10 out" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["scrfd_det_10g", "yunet_2023mar"])
def test_optional_detectors_plug_into_the_tracker(home, group, name):
    """The stand-ins' outputs are random, so only the plumbing is checked here; decoding
    is checked against the contracts in test_detectors.py."""
    image, _ = group
    with engine_for(home, detector=name) as engine:
        tracker = engine.tracker()
        tracker.analyze(frame_of(image))
        assert tracker.detector_calls == 1
        assert type(tracker.detector).__name__.lower().startswith(name.split("_")[0])


def test_models_add_refuses_a_file_of_another_role(home, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("LIVEFUSE_HOME", str(tmp_path))
    code = main(["models", "add", "inswapper_128", str(home / "models" / "gfpgan_1.4.onnx")])
    assert code == 1
    assert "inswapper_128" in caplog.text


def test_the_gpu_frame_path_is_asked_to_relight_as_the_cpu_one(home, monkeypatch):
    """Both frame paths get the same neural config, relighting included (issue 10); the GPU
    path's kernels are checked against the CPU swapper in test_gpu_path.py."""
    configs = {}

    def fake_open(runner, crop, latents, config, target, source, max_faces):
        configs["gpu"] = config
        return GpuPairSwapper(lambda width, height: None)  # type: ignore[arg-type,return-value]

    monkeypatch.setattr("livefuse.app.open_cuda_swapper", fake_open)
    with engine_for(home, swapper="inswapper_128", frame_path="gpu") as engine:
        engine.swapper(home / "samples" / "biden.jpg")
    with engine_for(home, swapper="inswapper_128") as engine:
        cpu = engine.swapper(home / "samples" / "biden.jpg")
    neural = cpu.inner if isinstance(cpu, SelectingSwapper) else cpu
    assert configs["gpu"].relight and configs["gpu"].colour
    assert configs["gpu"] == neural.config


def test_gpu_frame_path_without_a_tensorrt_engine_says_how_to_get_one(home):
    with engine_for(home, swapper="inswapper_128", frame_path="gpu") as engine:
        with pytest.raises(ConfigError, match=r"build_engines.py --model inswapper_128.*--frame-path cpu"):
            engine.swapper(home / "samples" / "biden.jpg")
    with engine_for(home, swapper="inswapper_128", frame_path="gpu", enhancer="gfpgan_1.4") as engine:
        with pytest.raises(ConfigError, match="not on the GPU frame path yet: --enhancer; use --frame-path cpu"):
            engine.swapper(home / "samples" / "biden.jpg")
