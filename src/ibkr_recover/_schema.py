"""The gateway's table, as ibkr-agent-gateway creates it (SPEC §2)."""

from __future__ import annotations

__all__ = [
    "IDEMPOTENCY_COLUMNS",
    "IDEMPOTENCY_DDL",
    "IDEMPOTENCY_TABLE",
    "PENDING_INDEX_DDL",
    "PENDING_INDEX_NAME",
]

IDEMPOTENCY_TABLE = "order_idempotency_records"

#: The columns the tool reads or writes; a database missing any of them is refused.
IDEMPOTENCY_COLUMNS = (
    "idempotency_key",
    "request_hash",
    "result_hash",
    "created_at",
    "payload_json",
    "status",
    "updated_at",
    "failure_json",
)

IDEMPOTENCY_DDL = """\
CREATE TABLE IF NOT EXISTS order_idempotency_records (
    idempotency_key TEXT PRIMARY KEY,
    request_hash TEXT NOT NULL,
    result_hash TEXT,
    created_at INTEGER NOT NULL,
    payload_json TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'submitted',
    updated_at INTEGER,
    failure_json TEXT
)"""

PENDING_INDEX_NAME = "ibkr_recover_pending_scan"

#: A partial index over the pending rows in scan order. It only ever holds ``pending_writer``
#: rows, so it stays small, and it turns every keyset page into an index range scan instead of
#: a sort of the whole table. The gateway's own pending query benefits from it too.
PENDING_INDEX_DDL = f"""\
CREATE INDEX IF NOT EXISTS {PENDING_INDEX_NAME}
ON order_idempotency_records (created_at, idempotency_key)
WHERE status = 'pending_writer'"""
