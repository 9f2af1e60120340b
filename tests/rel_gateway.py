"""A stand-in for the live gateway: a separate process writing to the same database.

Run as ``python tests/rel_gateway.py MODE DB ARGS.json``; it writes what it did to
``ARGS["report"]`` (JSON) when it ends. Modes:

``race``
    After ``go`` exists: insert ``inserts`` new pending rows dated now (the gateway starting
    new calls), then complete or delete the rows ``keys`` one by one, each in its own short
    ``BEGIN IMMEDIATE`` transaction, guarded by ``status='pending_writer'`` as the gateway
    guards its own writes. Reports the keys it changed (rowcount 1) and the keys it inserted.
``hold``
    After ``go`` exists: take the write lock (``BEGIN IMMEDIATE``), create ``ready``, hold the
    lock ``seconds``, roll back.
``hot-wal``
    Insert the rows of ``rows`` in one committed transaction, then start a large transaction
    (deleting every row, spilled into the WAL by a tiny page cache) and SIGKILL itself in the
    middle of it: a committed but never checkpointed WAL plus uncommitted frames.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

GATEWAY_PAYLOAD = '{"account_id":"GW","broker_order_id":"gw-%s","status":"open","updated_at":"2030-01-01T00:00:00Z"}'


def _connect(db: str) -> sqlite3.Connection:
    conn = sqlite3.connect(db, timeout=30, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    return conn


def _wait_for(path: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise SystemExit(f"gateway: {path} never appeared")
        time.sleep(0.002)


def race(db: str, args: dict[str, Any]) -> dict[str, Any]:
    conn = _connect(db)
    _wait_for(args["go"])
    now = int(time.time())
    inserted = [f"gw-new-{i:04d}" for i in range(args["inserts"])]
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(
        "INSERT INTO order_idempotency_records (idempotency_key, request_hash, created_at,"
        " payload_json, status, updated_at) VALUES (?, ?, ?, ?, 'pending_writer', ?)",
        [
            (
                key,
                f"h-{key}",
                now - 5,
                '{"workflow":"paper","operation":"submit","account_id":"DU0000001"}',
                now - 5,
            )
            for key in inserted
        ],
    )
    conn.execute("COMMIT")
    completed: list[str] = []
    deleted: list[str] = []
    for index, key in enumerate(args["keys"]):
        conn.execute("BEGIN IMMEDIATE")
        if index % 5 == 4:
            cursor = conn.execute(
                "DELETE FROM order_idempotency_records"
                " WHERE idempotency_key = ? AND status = 'pending_writer'",
                (key,),
            )
            changed = deleted
        else:
            cursor = conn.execute(
                "UPDATE order_idempotency_records SET status = 'submitted', payload_json = ?,"
                " result_hash = 'gateway', updated_at = ?, failure_json = NULL"
                " WHERE idempotency_key = ? AND status = 'pending_writer'",
                (GATEWAY_PAYLOAD % key, int(time.time()), key),
            )
            changed = completed
        conn.execute("COMMIT")
        if cursor.rowcount == 1:
            changed.append(key)
        time.sleep(args.get("pause", 0.0))
    conn.close()
    return {"completed": completed, "deleted": deleted, "inserted": inserted}


def hold(db: str, args: dict[str, Any]) -> dict[str, Any]:
    conn = _connect(db)
    _wait_for(args["go"])
    conn.execute("BEGIN IMMEDIATE")
    started = time.monotonic()
    Path(args["ready"]).touch()
    time.sleep(args["seconds"])
    conn.execute("ROLLBACK")
    conn.close()
    return {"held_s": time.monotonic() - started}


def hot_wal(db: str, args: dict[str, Any]) -> dict[str, Any]:
    conn = _connect(db)
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    conn.execute("PRAGMA cache_size = 1")
    rows = args["rows"]
    conn.execute("BEGIN IMMEDIATE")
    columns = list(rows[0])
    conn.executemany(
        f"INSERT INTO order_idempotency_records ({', '.join(columns)})"
        f" VALUES ({', '.join('?' for _ in columns)})",
        [tuple(row[c] for c in columns) for row in rows],
    )
    conn.execute("COMMIT")
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("DELETE FROM order_idempotency_records")
    conn.execute("UPDATE live_orders_pending SET last_status = 'gone'")
    Path(args["report"]).write_text(json.dumps({"inserted": len(rows)}))
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("unreachable")


MODES = {"race": race, "hold": hold, "hot-wal": hot_wal}


def main() -> None:
    mode, db, args_path = sys.argv[1:4]
    args = json.loads(Path(args_path).read_text())
    report = MODES[mode](db, args)
    Path(args["report"]).write_text(json.dumps(report))


def start(mode: str, db: Path, workdir: Path, **args: Any) -> tuple[subprocess.Popen[bytes], Path]:
    """Start the gateway stand-in in its own process; returns it and its report path."""
    report = workdir / f"gateway-{mode}.json"
    args_path = workdir / f"gateway-{mode}-args.json"
    args_path.write_text(json.dumps({**args, "report": str(report)}))
    proc = subprocess.Popen([sys.executable, __file__, mode, str(db), str(args_path)])
    return proc, report


if __name__ == "__main__":
    main()
