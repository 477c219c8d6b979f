"""The model manifest: typed records of every model livefuse knows, loaded from manifest.toml."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import urlsplit

from livefuse._compat import tomllib
from livefuse.errors import ModelError

#: Environment variable naming another manifest file to use instead of the built-in one (tests
#: with stand-in models, private mirrors). Whoever sets it chooses which files livefuse trusts.
MANIFEST_ENV = "LIVEFUSE_MANIFEST"


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


def is_sha256(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


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
    if source.kind not in ("wheel", "sdist") or not is_sha256(source.sha256):
        raise ValueError(f"bad source {dict(raw)}")
    return source


def url_source(raw: Mapping[str, Any]) -> UrlSource:
    """Parse a ``kind = "url"`` source table. Raises ``KeyError``/``ValueError`` when malformed."""
    source = UrlSource(url=str(raw["url"]), file=str(raw["file"]), size=int(raw["size"]), sha256=raw["sha256"])
    if urlsplit(source.url).scheme not in ("http", "https") or "/" in source.file or source.size <= 0:
        raise ValueError(f"bad url source {dict(raw)}")
    if source.sha256 and not is_sha256(source.sha256):
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
    if not all(is_sha256(p) for p in pins) or (spec.also_sha256 and not spec.sha256):
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
        raise ModelError(f"the model manifest is malformed (TOMLDecodeError: {exc}); reinstall livefuse") from exc


def load_templates(text: str | None = None) -> Templates:
    """The 5-point alignment templates of the manifest (``[templates]``), by name."""
    try:
        return _templates(_parse(text).get("templates", {}))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"the model manifest is malformed ({type(exc).__name__}: {exc}); reinstall livefuse") from exc


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
        raise ModelError(f"the model manifest is malformed ({type(exc).__name__}: {exc}); reinstall livefuse") from exc


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} to TOML")


def _toml_table(header: str, values: Mapping[str, object]) -> list[str]:
    lines = ["", header]
    lines += [f"{key} = {_toml(value)}" for key, value in values.items() if value is not None]
    return lines


def _spec_tables(spec: ModelSpec) -> list[str]:
    key = f"models.{toml_string(spec.name)}"
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


def toml_string(value: str) -> str:
    # JSON string escapes are valid TOML basic-string escapes; non-ASCII stays UTF-8 (TOML
    # forbids the surrogate pairs ensure_ascii would write).
    return json.dumps(value, ensure_ascii=False)
