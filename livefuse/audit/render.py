"""How ``livefuse audit`` reads its options and prints records."""

from __future__ import annotations

import datetime as dt
import json

from livefuse.audit.log import AuditRow
from livefuse.errors import ConfigError


def parse_since(text: str) -> dt.datetime:
    """'2026-12-01' or '2026-12-01T08:30' (UTC unless it names a zone)."""
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"--since {text!r} is not a date: write e.g. 2026-12-01 or 2026-12-01T08:30") from None
    return when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)


def render_rows(rows: list[AuditRow], as_json: bool = False) -> str:
    """One line per record, or a JSON array of them."""
    if as_json:
        return json.dumps([row.public() for row in rows], indent=2)
    if not rows:
        return "no audit records"
    return "\n".join(_line(row) for row in rows)


def _line(row: AuditRow) -> str:
    r = row.record
    output = r.get("output") or {}
    target = r.get("target") or {}
    what = target.get("stream") or f"sha256:{str(target.get('sha256', ''))[:12]}" if target else ""
    parts = [
        f"{row.seq:>5}",
        row.time[:19].replace("T", " "),
        str(r.get("kind", "?")),
        str(r.get("who", "?")) + (f" token {r['token_id']}" if r.get("token_id") else ""),
        f"in {what}" if what else "",
        f"out {output['path']}" if output.get("path") else "",
        f"swapper {r['swapper']}" if r.get("swapper") else "",
        str(r.get("outcome", "")),
    ]
    return "  ".join(p for p in parts if p)
