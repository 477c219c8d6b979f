"""A tamper-evident, append-only audit log in SQLite.

Each row holds one record (canonical JSON) and two hashes: the previous row's and its
own, ``sha256(previous hash + record)``. Editing a row breaks its own hash; deleting one
breaks the next row's link; both show up in ``verify``. Triggers refuse UPDATE and DELETE
so that ordinary tools cannot change history by accident; someone who drops them can
still rewrite the file, but not without the chain showing it, unless they rewrite every
later row too — which ``verify`` catches against a head hash kept elsewhere
(``ChainReport.head``).

Retention removes the oldest rows, and first appends a ``retention`` record naming the
hash of the last row removed, so the shortened chain still verifies from its new start.
Several processes may append at once: each append is one ``BEGIN IMMEDIATE`` transaction.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from livefuse.errors import LivefuseError

#: The ``previous`` hash of the very first row.
GENESIS = "0" * 64

#: Dropped and re-made inside retention's own transaction, so only retention deletes.
_NO_DELETE = """
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""

_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY,
    time TEXT NOT NULL,
    record TEXT NOT NULL,
    previous TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_time ON audit (time);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""
    + _NO_DELETE
)


class AuditError(LivefuseError):
    """The audit log cannot be opened or written."""


@dataclass(frozen=True, slots=True)
class AuditRow:
    """One stored record and its place in the chain."""

    seq: int
    time: str
    record: dict[str, Any]
    previous: str
    hash: str

    def public(self) -> dict[str, Any]:
        """The row as ``livefuse audit --json`` prints it."""
        return {"seq": self.seq, "time": self.time, **self.record, "hash": self.hash}


@dataclass(frozen=True, slots=True)
class ChainReport:
    """What ``verify`` found."""

    ok: bool
    rows: int
    head: str
    "The last row's hash: note it elsewhere to detect later rewriting of the whole tail."
    problems: tuple[str, ...] = ()


def chain_hash(previous: str, seq: int, time: str, record_json: str) -> str:
    """A row's hash: it covers the previous hash, its position, its time and its record."""
    return hashlib.sha256(f"{previous}\n{seq}\n{time}\n{record_json}".encode()).hexdigest()


def canonical(record: Mapping[str, Any]) -> str:
    """``record`` as the one JSON text its hash is taken over."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


class AuditLog:
    """The audit log in the SQLite file ``path`` (created on first use)."""

    def __init__(self, path: Path, timeout_s: float = 10.0) -> None:
        self.path = Path(path)
        self.timeout_s = timeout_s

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with closing(sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None)) as db:
                db.executescript(_SCHEMA)
                yield db
        except sqlite3.Error as exc:
            raise AuditError(
                f"audit log {self.path}: {exc}; check that the file is a livefuse audit log "
                "and its directory is writable"
            ) from exc
        except OSError as exc:
            raise AuditError(f"cannot open the audit log {self.path}: {exc}") from exc

    def append(self, record: Mapping[str, Any], now: dt.datetime | None = None) -> AuditRow:
        """Add ``record`` (JSON-able, no photos: hashes only) at the end of the chain."""
        time = (now or dt.datetime.now(dt.timezone.utc)).isoformat(timespec="microseconds")
        text = canonical(record)
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                last = db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
                seq, previous = (last[0] + 1, last[1]) if last else (1, GENESIS)
                digest = chain_hash(previous, seq, time, text)
                db.execute("INSERT INTO audit VALUES (?, ?, ?, ?, ?)", (seq, time, text, previous, digest))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return AuditRow(seq, time, json.loads(text), previous, digest)

    def rows(self, since: dt.datetime | None = None) -> list[AuditRow]:
        """The stored rows, oldest first; with ``since``, those at or after it."""
        query = "SELECT seq, time, record, previous, hash FROM audit"
        args: tuple[str, ...] = ()
        if since is not None:
            query, args = query + " WHERE time >= ?", (_utc(since).isoformat(timespec="microseconds"),)
        with self._connect() as db:
            found = db.execute(query + " ORDER BY seq", args).fetchall()
        return [_row(*values) for values in found]

    def verify(self) -> ChainReport:
        """Recompute every hash and link; list each row that was edited, and each gap."""
        problems: list[str] = []
        with self._connect() as db:
            stored = db.execute("SELECT seq, time, record, previous, hash FROM audit ORDER BY seq").fetchall()
        expected: str | None = None
        anchors = _retention_anchors(stored)
        for seq, time, text, previous, digest in stored:
            if chain_hash(previous, seq, time, text) != digest:
                problems.append(f"row {seq} was changed after it was written (its hash does not match)")
            if expected is None:
                if not (seq == 1 and previous == GENESIS) and anchors.get(seq - 1) != previous:
                    problems.append(
                        f"the log starts at row {seq}: earlier rows were deleted without a retention record"
                    )
            elif previous != expected:
                problems.append(f"row {seq} does not follow the row before it: a row before it was deleted or changed")
            expected = digest
        return ChainReport(not problems, len(stored), expected or GENESIS, tuple(problems))

    def prune(self, older_than: dt.datetime) -> int:
        """Remove rows older than ``older_than``; returns how many. Logged in the chain itself."""
        cutoff = _utc(older_than).isoformat(timespec="microseconds")
        with self._connect() as db:
            last = db.execute(
                "SELECT seq, hash FROM audit WHERE time < ? ORDER BY seq DESC LIMIT 1", (cutoff,)
            ).fetchone()
        if last is None:
            return 0
        self.append({"kind": "retention", "removed_through": last[0], "removed_hash": last[1], "before": cutoff})
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("DROP TRIGGER audit_no_delete")
                removed = db.execute("DELETE FROM audit WHERE seq <= ?", (last[0],)).rowcount
                db.execute(_NO_DELETE)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return int(removed)


def _retention_anchors(stored: list[tuple[Any, ...]]) -> dict[int, str]:
    """Last removed row → its hash, from the retention records still in the log."""
    anchors: dict[int, str] = {}
    for _seq, _time, text, _previous, _digest in stored:
        record = json.loads(text)
        if record.get("kind") == "retention":
            anchors[int(record["removed_through"])] = str(record["removed_hash"])
    return anchors


def _row(seq: int, time: str, text: str, previous: str, digest: str) -> AuditRow:
    return AuditRow(seq, time, json.loads(text), previous, digest)


def _utc(when: dt.datetime) -> dt.datetime:
    return when.astimezone(dt.timezone.utc) if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)
