"""What livefuse records about each run, job and live session, and where the log lives.

A record names who asked (a local user, or a client address and token id), what went
in (the source photo's sha256, the target's sha256 or the camera), what came out (the
output's sha256 and path), the options and the swapper, and how it ended. Photos and
frames are never stored: only their hashes.
"""

from __future__ import annotations

import datetime as dt
import getpass
import hashlib
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from livefuse.audit.log import AuditError, AuditLog, AuditRow
from livefuse.config import OPTIONS, Settings
from livefuse.models.files import sha256_file
from livefuse.state import state_dir

log = logging.getLogger(__name__)

#: The audit log's file name in LIVEFUSE_HOME.
AUDIT_FILE = "audit.sqlite3"
#: Settings never copied into a record: they name photos or key files, not choices.
PRIVATE_SETTINGS = frozenset({"source", "map", "home", "state_dir", "sign_key", "sign_cert", "camera"})


def audit_log(settings: Settings) -> AuditLog:
    """The audit log in the settings' state directory (the home unless set)."""
    return AuditLog(state_dir(settings) / AUDIT_FILE)


def local_user() -> str:
    """Who runs this process, as a record names them."""
    try:
        return f"local user {getpass.getuser()}"
    except (KeyError, OSError):  # no passwd entry (containers with an arbitrary UID)
        return "local user (unknown)"


def token_id(token: str | None) -> str | None:
    """A token's id for the log: a short hash, never the token itself."""
    return hashlib.sha256(token.encode()).hexdigest()[:12] if token else None


def file_digest(path: str | Path | None) -> str | None:
    """sha256 of a file, or None when there is no such (local) file."""
    if path is None or not Path(path).is_file():
        return None
    return sha256_file(Path(path))


def chosen_options(settings: Settings) -> dict[str, Any]:
    """The options (flat names) that differ from the defaults, without paths to photos or keys."""
    chosen = {}
    for name, option in OPTIONS.items():
        value, default = (_value(s, option.section, option.attribute) for s in (settings, Settings()))
        if name not in PRIVATE_SETTINGS and value != default:
            chosen[name] = sorted(value) if isinstance(value, frozenset) else value
    return chosen


def _value(settings: Settings, section: str, attribute: str) -> Any:
    return getattr(getattr(settings, section) if section else settings, attribute)


def make_record(
    kind: str,
    settings: Settings,
    *,
    photo: Path | None,
    target: str,
    output: Path | None,
    outcome: str,
    who: str | None = None,
    token: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One record. ``target``: a file (hashed), or a camera/stream name (kept as is)."""
    target_sha = file_digest(target)
    return {
        "kind": kind,
        "who": who or local_user(),
        "token_id": token_id(token),
        "source_sha256": file_digest(photo),
        "target": {"sha256": target_sha} if target_sha else {"stream": target},
        "output": {"path": str(output.resolve()), "sha256": file_digest(output)} if output is not None else None,
        "swapper": settings.swap.swapper,
        "options": chosen_options(settings),
        "outcome": outcome,
        **(extra or {}),
    }


def record(settings: Settings, entry: Mapping[str, Any]) -> AuditRow:
    """Append ``entry`` to the log, after removing what the retention setting expires."""
    audit = audit_log(settings)
    days = settings.safeguards.audit_retention_days
    if days > 0:
        removed = audit.prune(dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=days))
        if removed:
            log.info("audit log: removed %d records older than %d days", removed, days)
    return audit.append(entry)


@contextmanager
def audited(
    settings: Settings, kind: str, *, photo: Path | None, target: str, output: Path | None, **more: Any
) -> Iterator[None]:
    """Record the block's outcome (ok, failed with why, or interrupted) once it ends.

    A failure to write the record is raised when the block succeeded, and only logged
    when the block failed (its own error is the one to report).
    """
    try:
        yield
    except BaseException as exc:
        outcome = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"failed: {exc}"
        try:
            record(
                settings, make_record(kind, settings, photo=photo, target=target, output=None, outcome=outcome, **more)
            )
        except AuditError as audit_exc:
            log.error("%s", audit_exc)
        raise
    record(settings, make_record(kind, settings, photo=photo, target=target, output=output, outcome="ok", **more))


def session_record(
    settings: Settings, *, client: str | None, token: str | None, photo: Path | None, session_id: str, kind: str
) -> dict[str, Any]:
    """The record of a live session opened by ``client`` (a web page or a WHIP client)."""
    return make_record(
        "session",
        settings,
        photo=photo,
        target=f"webrtc {kind}",
        output=None,
        outcome="opened",
        who=f"client {client or 'unknown'}",
        token=token,
        extra={"session": session_id},
    )
