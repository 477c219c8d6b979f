"""The audit log: who made what, when and how, in a hash-chained SQLite table."""

from livefuse.audit.log import AuditError, AuditLog, AuditRow, ChainReport
from livefuse.audit.records import audit_log, audited, make_record, record, token_id

__all__ = [
    "AuditError",
    "AuditLog",
    "AuditRow",
    "ChainReport",
    "audit_log",
    "audited",
    "make_record",
    "record",
    "token_id",
]
