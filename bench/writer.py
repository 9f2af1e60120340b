"""The writer alone: the tool's batch commits against one autocommitted write per row.

On copies of one database, the same decided rows (every pending row completed, about one in
six cleared) are written twice: by ``Store.apply`` in batches (the tool's writer: one
``BEGIN IMMEDIATE`` transaction per batch, ``executemany`` of compare-and-set statements), and
by one autocommitted ``UPDATE``/``DELETE`` per row (what the gateway's own recovery does), at
``synchronous=NORMAL`` as the gateway runs and, for fewer rows, at ``FULL``::

    python bench/writer.py DB [--batch 1000] [--per-row-rows 20000] [--per-row-full-rows 5000]
                              [--gateway-order]

The batched figure times the ``apply`` calls; ``close_s`` is the closing of the store after
them (the final checkpoint of the WAL into the database), ``rows_per_s_with_close`` counts it.

``--gateway-order`` first rewrites the table in ``created_at`` order, the order a live gateway
inserts its rows in, for a database that is not (the generator's backlogs are, and are
measured as they are).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ibkr_recover._backend import Absent, BrokerOrder, Found
from ibkr_recover._decide import Outcome, decide, plan
from ibkr_recover._store import Store


def copy_db(source: Path, target: Path) -> Path:
    for suffix in ("-wal", "-shm"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(source, target)
    return target


def gateway_order(db: Path) -> None:
    """Rewrite the idempotency table in ``created_at`` order (as a gateway appends its rows)."""
    conn = sqlite3.connect(db, isolation_level=None)
    (ddl,) = conn.execute(
        "SELECT sql FROM sqlite_master WHERE name = 'order_idempotency_records'"
    ).fetchone()
    conn.execute("BEGIN")
    conn.execute("ALTER TABLE order_idempotency_records RENAME TO bench_unordered")
    conn.execute(ddl)
    conn.execute(
        "INSERT INTO order_idempotency_records SELECT * FROM bench_unordered "
        "ORDER BY created_at, idempotency_key"
    )
    conn.execute("DROP TABLE bench_unordered")
    conn.execute("COMMIT")
    conn.execute("VACUUM")
    conn.close()


def decided(store: Store) -> list[Outcome]:
    """Every pending row in scan order, decided as if the broker had answered (one in six
    absent)."""
    rows = []
    after = None
    while page := store.read_page(after, 5000):
        rows += page
        after = page[-1]
    # A store without the scan index reads in key order: both contenders write in scan order.
    rows.sort(key=lambda row: (row.created_at, row.key))
    now = time.time()
    run_time = datetime.now(UTC)
    outcomes = []
    for index, row in enumerate(rows):
        query = plan(row, now + 86400, 0)
        if isinstance(query, Outcome):
            continue
        answer = (
            Absent()
            if index % 6 == 5
            else Found(BrokerOrder(query.account_id, query.lookup_id, "Submitted", run_time))
        )
        outcome = decide(row, query, answer, now=now, max_clear_age=1e12, run_time=run_time)
        if outcome.writes:
            outcomes.append(outcome)
    return outcomes


def batched(db: Path, batch: int) -> dict[str, float]:
    store = Store(db)
    try:
        store.ensure_scan_index()
        outcomes = decided(store)
        started, cpu = time.perf_counter(), time.process_time()
        applied = 0
        for start in range(0, len(outcomes), batch):
            applied += sum(store.apply(outcomes[start : start + batch], int(time.time())))
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        # The last connection to close checkpoints what is left in the WAL into the database:
        # timed apart, so that a checkpoint policy cannot pass its cost off out of the figure.
        closing = time.perf_counter()
        store.close()
        close_s = time.perf_counter() - closing
    finally:
        store.close()
    assert applied == len(outcomes), (applied, len(outcomes))
    return {
        "rows": applied,
        "elapsed_s": elapsed,
        "rows_per_s": applied / elapsed,
        "cpu_s": cpu,
        "close_s": close_s,
        "rows_per_s_with_close": applied / (elapsed + close_s),
    }


def per_row(db: Path, limit: int, synchronous: str = "NORMAL") -> dict[str, float]:
    store = Store(db)
    try:
        outcomes = decided(store)[:limit]
    finally:
        store.close()
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    started, cpu = time.perf_counter(), time.process_time()
    now = int(time.time())
    for o in outcomes:
        if o.decision == "complete":
            conn.execute(
                "UPDATE order_idempotency_records SET status = 'submitted', payload_json = ?, "
                "result_hash = ?, updated_at = ?, failure_json = NULL "
                "WHERE idempotency_key = ? AND request_hash = ? AND status = 'pending_writer'",
                (o.payload_json, o.result_hash, now, o.key, o.request_hash),
            )
        else:
            conn.execute(
                "DELETE FROM order_idempotency_records WHERE idempotency_key = ? "
                "AND request_hash = ? AND status = 'pending_writer'",
                (o.key, o.request_hash),
            )
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    conn.close()
    n = len(outcomes)
    return {"rows": n, "elapsed_s": elapsed, "rows_per_s": n / elapsed, "cpu_s": cpu}


def run(
    db: Path, *, batch: int, per_row_rows: int, per_row_full_rows: int, ordered: bool
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-writer-") as tmp:
        pristine = copy_db(db, Path(tmp) / "pristine.db")
        if ordered:
            gateway_order(pristine)
        result_batched = batched(copy_db(pristine, Path(tmp) / "a.db"), batch)
        result_per_row = per_row(copy_db(pristine, Path(tmp) / "b.db"), per_row_rows)
        result_full = None
        if per_row_full_rows:
            full_db = copy_db(pristine, Path(tmp) / "c.db")
            result_full = per_row(full_db, per_row_full_rows, "FULL")
    return {
        "order": "rewritten in created_at order" if ordered else "as generated",
        "batch": batch,
        "batched": result_batched,
        "per_row": result_per_row,
        "speedup": result_batched["rows_per_s"] / result_per_row["rows_per_s"],
        "per_row_full": result_full,
        "speedup_full": result_full and result_batched["rows_per_s"] / result_full["rows_per_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("db", type=Path)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--per-row-rows", type=int, default=20000)
    parser.add_argument("--per-row-full-rows", type=int, default=5000, help="0: skip")
    parser.add_argument("--gateway-order", action="store_true")
    args = parser.parse_args()
    result = run(
        args.db,
        batch=args.batch,
        per_row_rows=args.per_row_rows,
        per_row_full_rows=args.per_row_full_rows,
        ordered=args.gateway_order,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
