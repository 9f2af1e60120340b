"""Shared fixtures: real gateway-schema SQLite files in tmp_path; the no-order-write guard."""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ibkr_recover._schema import IDEMPOTENCY_DDL
from ibkr_recover.simulator._broker import Broker, Reply, _classify
from ibkr_recover.simulator._http import Request

# Started as a shell script's background job, the test process ignores SIGINT, and so would
# every process it starts (an ignored signal stays ignored across exec; the tool, rightly,
# leaves it so). Caught instead, it is back to the default in those processes, as when the
# tests run from a terminal: the tests that interrupt the CLI need that.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

NOW = time.time()
OLD = int(NOW) - 3600  # an hour old: past --min-age, inside --max-clear-age


def context(workflow: str, operation: str, account: str, broker_order_id: str | None = None) -> str:
    ctx: dict[str, Any] = {"workflow": workflow, "operation": operation, "account_id": account}
    if broker_order_id is not None:
        ctx["broker_order_id"] = broker_order_id
    return json.dumps(ctx, separators=(",", ":"))


def make_db(path: Path, rows: Iterable[dict[str, Any]] = ()) -> Path:
    """A gateway database in WAL mode with the idempotency table and one other gateway table."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(IDEMPOTENCY_DDL)
    conn.execute(
        "CREATE TABLE IF NOT EXISTS live_orders_pending (account_id TEXT, broker_order_id TEXT,"
        " last_status TEXT, created_at INTEGER, last_polled_at INTEGER,"
        " PRIMARY KEY (account_id, broker_order_id))"
    )
    add_rows(conn, rows)
    conn.commit()
    conn.close()
    return path


def add_rows(conn: sqlite3.Connection, rows: Iterable[dict[str, Any]]) -> None:
    conn.executemany(
        "INSERT INTO order_idempotency_records (idempotency_key, request_hash, result_hash,"
        " created_at, payload_json, status, updated_at, failure_json)"
        " VALUES (:key, :hash, :result_hash, :created_at, :payload, :status, :updated_at,"
        " :failure)",
        [pending_row(**row) for row in rows],
    )


def pending_row(
    key: str,
    payload: str = "{}",
    *,
    hash: str | None = None,
    created_at: Any = OLD,
    status: str = "pending_writer",
    result_hash: str | None = None,
    updated_at: Any = None,
    failure: str | None = None,
) -> dict[str, Any]:
    return {
        "key": key,
        "hash": hash or f"h-{key}",
        "result_hash": result_hash,
        "created_at": created_at,
        "payload": payload,
        "status": status,
        "updated_at": updated_at if updated_at is not None else created_at,
        "failure": failure,
    }


def dump(path: Path, *, with_scan_index: bool = False) -> list[str]:
    """A logical dump of the whole database, for byte-for-byte comparisons.

    The partial index the tool adds over pending rows is left out unless asked for.
    """
    conn = sqlite3.connect(path)
    try:
        lines = list(conn.iterdump())
    finally:
        conn.close()
    if with_scan_index:
        return lines
    return [line for line in lines if "ibkr_recover_pending_scan" not in line]


def rows_by_key(path: Path) -> dict[str, dict[str, Any]]:
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return {
            r["idempotency_key"]: dict(r)
            for r in conn.execute("SELECT * FROM order_idempotency_records")
        }
    finally:
        conn.close()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "gateway.db"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "order_writes: the test sends order writes to a simulator on purpose"
    )


class WriteGuard:
    """Records every order write (POST/PUT/DELETE to an order endpoint) any simulator receives.

    It wraps ``Broker.handle``, so it sees the requests of every in-process simulator, whoever
    sends them, before the simulator's own counters (which ``reset()`` zeroes) are involved.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.seen: list[str] = []
        handle = Broker.handle

        def guarded(broker: Broker, request: Request, arrival: float | None = None) -> Reply:
            if _classify(request.method, request.path) == "write":
                self.seen.append(f"{request.method} {request.path}")
            return handle(broker, request, arrival)

        monkeypatch.setattr(Broker, "handle", guarded)


@pytest.fixture(autouse=True)
def no_order_writes(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """The tool only reads: no test may get an order write to a simulator (matrix C18)."""
    if request.node.get_closest_marker("order_writes") is not None:
        yield
        return
    guard = WriteGuard(monkeypatch)
    yield
    assert not guard.seen, f"order writes reached the simulator: {guard.seen[:5]}"
