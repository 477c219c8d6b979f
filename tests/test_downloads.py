"""Downloads of optional models: resumable, size- and sha256-checked, contract-checked, atomic.

Every test runs against a local HTTP server on 127.0.0.1 that serves tiny stand-in models, with
a test manifest whose URLs point at it and whose pins are the stand-ins' real hashes.
"""

from __future__ import annotations

import dataclasses
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from livefuse.errors import ModelError
from livefuse.models.download import HttpOptions
from livefuse.models.files import sha256_bytes
from livefuse.models.install import ModelInstaller
from livefuse.models.manifest import ModelSpec, UrlSource, load_manifest
from livefuse.models.store import PARTIAL_DIR, ModelStore
from livefuse.testing import standins

MANIFEST = load_manifest()
FAST = HttpOptions(timeout_s=5.0, retries=2, backoff_s=0.0, chunk_bytes=64 * 1024)


@dataclass
class Site:
    """What the local server serves, how it misbehaves, and what it was asked."""

    files: dict[str, bytes] = field(default_factory=dict)
    behaviour: dict[str, str] = field(default_factory=dict)
    "path → ok | cut-once | cut-always | ignore-range | status:NNN"
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    base: str = ""


def _handler(site: Site) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            rng = self.headers.get("Range")
            site.requests.append((self.path, rng))
            behaviour = site.behaviour.get(self.path, "ok")
            body = site.files.get(self.path)
            if behaviour.startswith("status:") or body is None:
                code = int(behaviour.split(":")[1]) if behaviour.startswith("status:") else 404
                self.send_error(code)
                return
            start = 0
            match = re.fullmatch(r"bytes=(\d+)-", rng or "")
            if match and behaviour != "ignore-range":
                start = int(match.group(1))
                if start >= len(body):
                    self.send_error(416)
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(body) - start))
            self.end_headers()
            self.wfile.write(self._payload(body, start, behaviour))

        def _payload(self, body: bytes, start: int, behaviour: str) -> bytes:
            if behaviour == "cut-once" and sum(p == self.path for p, _ in site.requests) == 1:
                return body[start : start + (len(body) - start) // 2]  # then the socket closes
            if behaviour == "cut-always":
                return body[start : max(start, len(body) // 2)]  # never past the middle
            return body[start:]

        def log_message(self, format: str, *args: object) -> None:
            return  # keep pytest's output clean

    return Handler


@contextmanager
def _serve(site: Site) -> Iterator[Site]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(site))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    site.base = f"http://127.0.0.1:{server.server_port}"
    try:
        yield site
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(scope="module")
def payloads() -> dict[str, bytes]:
    """The tiny stand-ins of two models, as served."""
    return {n: standins.tiny_model(n).SerializeToString() for n in ("inswapper_128", "w600k_r50")}


@pytest.fixture
def site() -> Iterator[Site]:
    with _serve(Site()) as running:
        yield running


def _served(spec: ModelSpec, site: Site, data: bytes, sha256: str | None = None) -> ModelSpec:
    """``spec`` pointing at ``site``, pinned to ``data`` (or to ``sha256``)."""
    assert isinstance(spec.source, UrlSource)
    path = f"/models/{spec.source.file}"
    site.files[path] = data
    digest = sha256_bytes(data) if sha256 is None else sha256
    source = dataclasses.replace(spec.source, url=site.base + path, size=len(data), sha256=digest)
    return dataclasses.replace(spec, source=source, sha256=digest, also_sha256=())


def _store(tmp_path: Path, *specs: ModelSpec) -> ModelStore:
    manifest = {**MANIFEST, **{s.name: s for s in specs}}
    return ModelStore(tmp_path / "home", manifest)


def _installer(store: ModelStore) -> ModelInstaller:
    return ModelInstaller(store, http=FAST)


def _partial(store: ModelStore) -> list[str]:
    directory = store.models_dir / PARTIAL_DIR
    return sorted(os.listdir(directory)) if directory.exists() else []


def _installed(store: ModelStore) -> list[str]:
    directory = store.models_dir
    return sorted(p.name for p in directory.iterdir() if p.is_file()) if directory.exists() else []


# --------------------------------------------------------------------------- good downloads


def test_download_installs_the_verified_file(tmp_path: Path, site: Site, payloads: dict[str, bytes]) -> None:
    spec = _served(MANIFEST["inswapper_128"], site, payloads["inswapper_128"])
    store = _store(tmp_path, spec)
    messages: list[str] = []
    seen: list[tuple[int, int | None]] = []
    paths = _installer(store).pull(["inswapper_128"], log=messages.append, progress=lambda d, t: seen.append((d, t)))
    assert paths == [store.path("inswapper_128")]
    assert paths[0].read_bytes() == payloads["inswapper_128"]
    assert _installed(store) == ["inswapper_128.onnx"] and _partial(store) == []
    size = len(payloads["inswapper_128"])
    assert seen[-1] == (size, size) and len(seen) > 1
    assert any("downloading" in m for m in messages) and any("installed" in m for m in messages)
    assert site.requests == [("/models/inswapper_128.onnx", None)]
    assert _installer(store).pull(["inswapper_128"]) == paths and len(site.requests) == 1  # nothing to do


def test_a_cut_transfer_resumes_with_a_range_request(tmp_path: Path, site: Site, payloads: dict[str, bytes]) -> None:
    spec = _served(MANIFEST["inswapper_128"], site, payloads["inswapper_128"])
    site.behaviour["/models/inswapper_128.onnx"] = "cut-once"
    store = _store(tmp_path, spec)
    messages: list[str] = []
    _installer(store).pull(["inswapper_128"], log=messages.append)
    half = len(payloads["inswapper_128"]) // 2
    assert [r for _, r in site.requests] == [None, f"bytes={half}-"]
    assert store.path("inswapper_128").read_bytes() == payloads["inswapper_128"]
    assert any("resuming" in m for m in messages)
    assert _partial(store) == []


def test_a_part_left_by_an_interrupted_run_is_continued(tmp_path: Path, site: Site, payloads: dict[str, bytes]) -> None:
    data = payloads["w600k_r50"]
    spec = _served(MANIFEST["w600k_r50"], site, data)
    store = _store(tmp_path, spec)
    part = store.models_dir / PARTIAL_DIR / "w600k_r50.onnx.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:1000])
    _installer(store).pull(["w600k_r50"])
    assert site.requests == [("/models/w600k_r50.onnx", "bytes=1000-")]
    assert store.path("w600k_r50").read_bytes() == data
    assert not part.exists()


def test_a_server_that_ignores_range_restarts_cleanly(tmp_path: Path, site: Site, payloads: dict[str, bytes]) -> None:
    data = payloads["w600k_r50"]
    spec = _served(MANIFEST["w600k_r50"], site, data)
    site.behaviour["/models/w600k_r50.onnx"] = "ignore-range"
    store = _store(tmp_path, spec)
    part = store.models_dir / PARTIAL_DIR / "w600k_r50.onnx.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"garbage that must not stay in front of the file")
    messages: list[str] = []
    _installer(store).pull(["w600k_r50"], log=messages.append)
    assert store.path("w600k_r50").read_bytes() == data  # appended garbage would break the hash
    assert any("does not resume" in m for m in messages)


def test_pull_from_dir_takes_a_url_model_from_files(tmp_path: Path, site: Site, payloads: dict[str, bytes]) -> None:
    spec = _served(MANIFEST["w600k_r50"], site, payloads["w600k_r50"])
    offline = tmp_path / "offline"
    offline.mkdir()
    (offline / "w600k_r50.onnx").write_bytes(payloads["w600k_r50"])
    store = _store(tmp_path, spec)
    assert _installer(store).pull(["w600k_r50"], from_dir=offline) == [store.path("w600k_r50")]
    assert site.requests == []


# --------------------------------------------------------------------------- bad downloads


def test_a_download_that_keeps_stopping_short_is_reported_and_kept(
    tmp_path: Path, site: Site, payloads: dict[str, bytes]
) -> None:
    data = payloads["inswapper_128"]
    spec = _served(MANIFEST["inswapper_128"], site, data)
    site.behaviour["/models/inswapper_128.onnx"] = "cut-always"
    store = _store(tmp_path, spec)
    with pytest.raises(ModelError) as err:
        _installer(store).pull(["inswapper_128"])
    message = str(err.value)
    assert "'inswapper_128'" in message and "stopped at" in message
    assert f"{len(data) / 1e6:.1f} MB" in message  # how far it should have gone
    assert "run the same command again to resume" in message.lower()
    assert "livefuse models add inswapper_128 PATH" in message
    assert _installed(store) == []
    part = store.models_dir / PARTIAL_DIR / "inswapper_128.onnx.part"
    assert part.read_bytes() == data[: len(data) // 2]  # kept for the next run
    assert len(site.requests) == 2  # the retry made no progress, so it stopped


def test_a_wrong_hash_deletes_the_download(tmp_path: Path, site: Site, payloads: dict[str, bytes]) -> None:
    pinned = sha256_bytes(b"the published file")
    spec = _served(MANIFEST["w600k_r50"], site, payloads["w600k_r50"], sha256=pinned)
    store = _store(tmp_path, spec)
    with pytest.raises(ModelError) as err:
        _installer(store).pull(["w600k_r50"])
    message = str(err.value)
    got = sha256_bytes(payloads["w600k_r50"])
    assert f"sha256 {got[:12]}... but {pinned[:12]}... is pinned" in message
    assert "deleted" in message and "livefuse models add w600k_r50 PATH" in message
    assert _installed(store) == [] and _partial(store) == []


@pytest.mark.parametrize("status", [404, 500])
def test_http_errors_name_the_status_url_and_the_manual_route(
    tmp_path: Path, site: Site, payloads: dict[str, bytes], status: int
) -> None:
    spec = _served(MANIFEST["w600k_r50"], site, payloads["w600k_r50"])
    site.behaviour["/models/w600k_r50.onnx"] = f"status:{status}"
    store = _store(tmp_path, spec)
    with pytest.raises(ModelError) as err:
        _installer(store).pull(["w600k_r50"])
    message = str(err.value)
    assert f"HTTP {status}" in message and f"{site.base}/models/w600k_r50.onnx" in message
    assert "livefuse models add w600k_r50 PATH" in message
    assert _installed(store) == []


def test_an_unreachable_server_is_a_clear_error(tmp_path: Path, payloads: dict[str, bytes]) -> None:
    with _serve(Site()) as gone:
        spec = _served(MANIFEST["w600k_r50"], gone, payloads["w600k_r50"])
    store = _store(tmp_path, spec)  # the server is shut down now
    with pytest.raises(ModelError, match=r"cannot reach http://127\.0\.0\.1.*models add"):
        _installer(store).pull(["w600k_r50"])


def test_a_published_file_that_breaks_the_contract_is_not_installed(
    tmp_path: Path, site: Site, payloads: dict[str, bytes]
) -> None:
    # The server holds an ArcFace file under the swapper's name, and the pin matches it.
    spec = _served(MANIFEST["inswapper_128"], site, payloads["w600k_r50"])
    store = _store(tmp_path, spec)
    with pytest.raises(ModelError) as err:
        _installer(store).pull(["inswapper_128"])
    message = str(err.value)
    assert "its inputs are" in message and "report this bug" in message
    assert _installed(store) == [] and _partial(store) == []


def test_an_unpinned_model_is_never_downloaded(tmp_path: Path, site: Site) -> None:
    spec = _served(MANIFEST["w600k_r50"], site, b"whatever", sha256="")
    store = _store(tmp_path, spec)
    with pytest.raises(ModelError) as err:
        _installer(store).pull(["w600k_r50"])
    message = str(err.value)
    assert "no trustworthy sha256" in message and "livefuse models add w600k_r50 PATH" in message
    assert site.requests == []
