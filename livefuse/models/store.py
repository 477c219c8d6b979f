"""The model store: verified paths of the models installed in a cache dir (read-only).

A model's file is handed out only when its sha256 is the pinned one (or, for a file given to
``livefuse models add``, the one recorded in ``home/models/local.toml``). Installing is
:mod:`livefuse.models.install`.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from livefuse._compat import tomllib
from livefuse.errors import ModelError
from livefuse.models.files import (
    DigestCache,
    short,
)
from livefuse.models.manifest import (
    ModelSpec,
    ModelStatus,
    UrlSource,
    is_sha256,
    load_manifest,
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
        record = LocalRecord(sha256=raw["sha256"], size=int(raw["size"]), source=raw["source"], added=raw["added"])
        if not is_sha256(record.sha256):
            raise ValueError(f"bad sha256 for {name!r}")
        out[name] = record
    return out


# --------------------------------------------------------------------------- store


def say_to(log: Log | None) -> Log:
    """``log``, or a log that drops messages."""
    return log or (lambda _msg: None)


class ModelStore:
    """Installed models under ``home/models``, read-only: look up, verify, hand out paths.
    Installing is :class:`livefuse.models.install.ModelInstaller`'s.

    Hashes are cached per instance, keyed by the file's mtime, size and inode, so a file is
    hashed once unless it changes.
    """

    def __init__(self, home: Path, manifest: Mapping[str, ModelSpec] | None = None) -> None:
        self.home = Path(home)
        self.models_dir = self.home / "models"
        self.manifest = load_manifest() if manifest is None else manifest
        self._digests = DigestCache()

    @property
    def local_records_path(self) -> Path:
        """``home/models/local.toml``: the sha256 of every file given to :meth:`add`."""
        return self.models_dir / LOCAL_RECORDS

    def spec(self, name: str) -> ModelSpec:
        """The manifest entry of ``name``. Raises ``ModelError`` for unknown names."""
        try:
            return self.manifest[name]
        except KeyError:
            raise ModelError(f"there is no model named {name!r}; the models are: {', '.join(self.manifest)}") from None

    def file(self, spec: ModelSpec) -> Path:
        """Where ``spec``'s file is (or would be) installed."""
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
        path = self.file(spec)
        if path.is_dir():
            raise ModelError(
                f"model {spec.name!r}: {path} is a directory, not a model file; remove it and run "
                f"'livefuse models pull {spec.name}' (or 'livefuse models add {spec.name} FILE')"
            )
        try:
            digest = self._digests.sha256(path)
        except FileNotFoundError:
            raise ModelError(self._missing_message(spec)) from None
        accepted = self._accepted(spec)
        if digest not in accepted:
            raise ModelError(self._bad_file_message(spec, path, digest, accepted))
        return path

    def _missing_message(self, spec: ModelSpec) -> str:
        path = self.file(spec)
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
        mesh = "; until then the built-in '--swapper mesh' needs no neural model" if spec.role == "swapper" else ""
        return (
            f"model {spec.name!r} ({spec.role}, {spec.license}) is not installed (no {path}); it "
            f"is optional: {get}, or register a copy you already have with 'livefuse models add "
            f"{spec.name} PATH'{mesh}"
        )

    def _bad_file_message(self, spec: ModelSpec, path: Path, digest: str, accepted: tuple[str, ...]) -> str:
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
        return self._digests.sha256(self.path(name))

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
            path = self.file(spec)
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
