"""The hash-chained audit log: appends, tamper detection, retention, and ``livefuse audit``."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import threading
from pathlib import Path

import pytest

from livefuse.audit import AuditLog
from livefuse.cli import main
from livefuse.models.files import sha256_file

DAY = dt.timedelta(days=1)
START = dt.datetime(2026, 11, 1, 12, tzinfo=dt.timezone.utc)


def _filled(path: Path, n: int = 4) -> AuditLog:
    audit = AuditLog(path)
    for i in range(n):
        audit.append({"kind": "run", "who": f"user {i}", "output": {"sha256": f"{i:064x}"}}, now=START + i * DAY)
    return audit


def _tamper(path: Path, sql: str) -> None:
    """What someone with the file and the sqlite3 shell could do: drop the guards, then change rows."""
    with sqlite3.connect(path) as db:
        db.execute("DROP TRIGGER audit_no_update")
        db.execute("DROP TRIGGER audit_no_delete")
        db.execute(sql)


def test_chain_verifies_and_rows_read_back(tmp_path):
    audit = _filled(tmp_path / "audit.sqlite3")
    report = audit.verify()
    assert report.ok and report.rows == 4 and not report.problems
    rows = audit.rows()
    assert [r.record["who"] for r in rows] == ["user 0", "user 1", "user 2", "user 3"]
    assert report.head == rows[-1].hash
    assert [r.seq for r in audit.rows(since=START + 2 * DAY)] == [3, 4]


def test_ordinary_updates_and_deletes_are_refused(tmp_path):
    path = tmp_path / "audit.sqlite3"
    _filled(path)
    with sqlite3.connect(path) as db, pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("UPDATE audit SET record = '{}' WHERE seq = 2")
    with sqlite3.connect(path) as db, pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("DELETE FROM audit WHERE seq = 2")


def test_an_edited_row_is_detected(tmp_path):
    path = tmp_path / "audit.sqlite3"
    audit = _filled(path)
    _tamper(path, """UPDATE audit SET record = replace(record, 'user 1', 'someone else') WHERE seq = 2""")
    report = audit.verify()
    assert not report.ok
    assert report.problems == ("row 2 was changed after it was written (its hash does not match)",)


def test_an_edited_row_with_a_recomputed_hash_breaks_the_next_link(tmp_path):
    path = tmp_path / "audit.sqlite3"
    audit = _filled(path)
    row = audit.rows()[1]
    from livefuse.audit.log import canonical, chain_hash

    forged = canonical({**row.record, "who": "someone else"})
    digest = chain_hash(row.previous, row.seq, row.time, forged)
    _tamper(path, f"UPDATE audit SET record = '{forged}', hash = '{digest}' WHERE seq = 2")
    assert audit.verify().problems == (
        "row 3 does not follow the row before it: a row before it was deleted or changed",
    )


@pytest.mark.parametrize(
    "seq, problem",
    [
        (2, "row 3 does not follow the row before it"),
        (1, "the log starts at row 2: earlier rows were deleted without a retention record"),
    ],
)
def test_a_deleted_row_is_detected(tmp_path, seq, problem):
    path = tmp_path / "audit.sqlite3"
    audit = _filled(path)
    _tamper(path, f"DELETE FROM audit WHERE seq = {seq}")
    report = audit.verify()
    assert not report.ok and report.rows == 3
    assert report.problems[0].startswith(problem)


def test_retention_removes_old_rows_and_the_chain_still_verifies(tmp_path):
    audit = _filled(tmp_path / "audit.sqlite3")
    assert audit.prune(START + 2 * DAY) == 2  # rows 1 and 2 are older than the cutoff
    rows = audit.rows()
    assert [r.seq for r in rows] == [3, 4, 5]
    assert rows[-1].record["kind"] == "retention" and rows[-1].record["removed_through"] == 2
    assert audit.verify().ok
    assert audit.prune(START) == 0


def test_appends_from_several_threads_keep_one_chain(tmp_path):
    audit = AuditLog(tmp_path / "audit.sqlite3")

    def append(who: str) -> None:
        for i in range(25):
            AuditLog(audit.path).append({"kind": "run", "who": who, "n": i})

    threads = [threading.Thread(target=append, args=(f"worker {k}",)) for k in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    report = audit.verify()
    assert report.ok and report.rows == 75


def test_run_is_recorded_with_hashes_and_livefuse_audit_shows_it(cli_home, tmp_path, private_state_dir, capsys):
    photo, target = cli_home / "samples" / "biden.jpg", cli_home / "samples" / "obama.jpg"
    out = tmp_path / "out.mp4"
    assert main(["run", "--source", str(photo), "--input", str(target), "--output", str(out), "--opacity", "0.9"]) == 0
    assert (
        main(
            [
                "run",
                "--source",
                str(photo),
                "--input",
                str(tmp_path / "missing.mp4"),
                "--output",
                str(tmp_path / "o2.mp4"),
            ]
        )
        == 1
    )
    capsys.readouterr()
    assert main(["audit", "--json"]) == 0
    ok, failed = json.loads(capsys.readouterr().out)
    assert ok["kind"] == "run" and ok["outcome"] == "ok" and ok["who"].startswith("local user")
    assert ok["source_sha256"] == sha256_file(photo) and ok["target"] == {"sha256": sha256_file(target)}
    assert ok["output"] == {"path": str(out.resolve()), "sha256": sha256_file(out)}  # the signed file's hash
    assert ok["swapper"] == "mesh" and ok["options"] == {"opacity": 0.9}
    assert failed["outcome"].startswith("failed:") and "missing.mp4" in failed["outcome"] and failed["output"] is None
    assert str(photo) not in json.dumps([ok, failed])  # hashes, not the photo's name or path

    assert main(["audit"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and "run" in lines[0] and str(out.resolve()) in lines[0]
    assert main(["audit", "--since", "2999-01-01"]) == 0
    assert capsys.readouterr().out.strip() == "no audit records"
    assert main(["audit", "--since", "last tuesday"]) == 2

    assert main(["audit", "--verify"]) == 0
    assert "2 records, chain intact" in capsys.readouterr().out
    _tamper(private_state_dir / "audit.sqlite3", "DELETE FROM audit WHERE seq = 1")
    assert main(["audit", "--verify"]) == 2
    assert "BROKEN" in capsys.readouterr().out


def test_the_retention_setting_expires_old_records_on_the_next_append(tmp_path):
    from livefuse.audit import audit_log, record
    from livefuse.config import load_settings

    settings = load_settings({"state_dir": str(tmp_path), "audit_retention_days": 30}, env={})
    old = dt.datetime.now(dt.timezone.utc) - 40 * DAY
    audit_log(settings).append({"kind": "run", "who": "long ago"}, now=old)
    record(settings, {"kind": "run", "who": "today"})
    rows = audit_log(settings).rows()
    assert [r.record["who"] for r in rows if r.record["kind"] == "run"] == ["today"]
    assert any(r.record["kind"] == "retention" for r in rows)
    assert audit_log(settings).verify().ok
