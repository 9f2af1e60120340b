"""The batch writer against real SQLite files: rowid addressing never weakens the compare-and-set.

Pages carry each row's rowid so that a batch's statements skip the key's index; every statement
still checks key, request hash and ``status='pending_writer'``, and a row that moved or changed
since it was read is settled by key alone, exactly as without rowids.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from conftest import add_rows, context, dump, make_db, rows_by_key
from ibkr_recover._backend import Absent, BrokerOrder, Found
from ibkr_recover._decide import Outcome, PendingRow, decide, plan
from ibkr_recover._schema import IDEMPOTENCY_DDL
from ibkr_recover._store import WRITER_AUTOCHECKPOINT_PAGES, Store

RUN_TIME = datetime(2030, 1, 1, tzinfo=UTC)
NOW = 2_000_000_000


def rows(n: int) -> list[dict[str, object]]:
    return [{"key": f"k{i:03d}", "payload": context("paper", "submit", "DU1")} for i in range(n)]


def read_all(store: Store, size: int = 1000) -> list[PendingRow]:
    """Every pending row, page by page: each page at most ``size`` rows, each row once."""
    result: list[PendingRow] = []
    page = store.read_page(None, size)
    while page:
        assert len(page) <= size
        result += page
        page = store.read_page(page[-1], size)
    assert len({row.key for row in result}) == len(result)
    return result


def decided(row: PendingRow, *, clear: bool = False) -> Outcome:
    """The outcome the pipeline would write for ``row``: completed (found) or cleared (absent)."""
    query = plan(row, NOW, 0)
    assert not isinstance(query, Outcome)
    order = BrokerOrder(query.account_id, f"b-{row.key}", "Filled", RUN_TIME)
    answer = Absent() if clear else Found(order)
    return decide(row, query, answer, now=NOW, max_clear_age=1e12, run_time=RUN_TIME)


def gateway(db: Path, sql: str, *params: object) -> None:
    """One autocommitted write by another process (the gateway), between read and write."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute(sql, params)
    finally:
        conn.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    db = make_db(tmp_path / "gateway.db", rows(12))
    s = Store(db)
    s.ensure_scan_index()
    yield s
    s.close()


def test_pages_carry_each_rows_rowid(store: Store) -> None:
    conn = sqlite3.connect(store.path)
    expected = dict(conn.execute("SELECT idempotency_key, rowid FROM order_idempotency_records"))
    conn.close()
    page = read_all(store)
    assert {row.key: row.rowid for row in page} == expected
    assert all(decided(row).rowid == row.rowid for row in page)


def test_a_batch_completes_and_clears_every_row_it_decided(store: Store) -> None:
    page = read_all(store)
    outcomes = [decided(row, clear=i % 3 == 0) for i, row in enumerate(page)]
    assert store.apply(outcomes, NOW) == [True] * len(outcomes)
    table = rows_by_key(store.path)
    for outcome in outcomes:
        if outcome.decision == "clear":
            assert outcome.key not in table
        else:
            row = table[outcome.key]
            assert row["status"] == "submitted"
            assert row["payload_json"] == outcome.payload_json
            assert row["result_hash"] == outcome.result_hash
            assert row["updated_at"] == NOW
            assert row["failure_json"] is None


def test_answers_come_back_in_the_callers_order_whatever_the_rowid_order(store: Store) -> None:
    page = read_all(store)
    outcomes = [decided(row, clear=i % 2 == 0) for i, row in enumerate(page)][::-1]
    outcomes.insert(3, Outcome(page[0].key, page[0].request_hash, "unresolved", "timeout"))
    gateway(store.path, "DELETE FROM order_idempotency_records WHERE idempotency_key = 'k004'")
    applied = store.apply(outcomes, NOW)
    assert applied == [o.writes and o.key != "k004" for o in outcomes]


def test_a_row_the_gateway_completed_after_the_read_is_a_conflict(store: Store) -> None:
    page = read_all(store)
    gateway(
        store.path,
        "UPDATE order_idempotency_records SET status = 'submitted', payload_json = 'gw',"
        " result_hash = 'gateway' WHERE idempotency_key = ?",
        page[5].key,
    )
    applied = store.apply([decided(row) for row in page], NOW)
    assert applied == [row.key != page[5].key for row in page]
    kept = rows_by_key(store.path)[page[5].key]
    assert (kept["payload_json"], kept["result_hash"]) == ("gw", "gateway")


def test_a_row_the_gateway_deleted_after_the_read_is_a_conflict(store: Store) -> None:
    page = read_all(store)
    gateway(store.path, "DELETE FROM order_idempotency_records WHERE idempotency_key = ?", "k002")
    outcomes = [decided(row, clear=row.key == "k007") for row in page]
    assert store.apply(outcomes, NOW) == [row.key != "k002" for row in page]
    assert "k002" not in rows_by_key(store.path)


def test_a_row_reinserted_with_another_request_hash_is_a_conflict(store: Store) -> None:
    page = read_all(store)
    gateway(store.path, "DELETE FROM order_idempotency_records WHERE idempotency_key = 'k003'")
    gateway(
        store.path,
        "INSERT INTO order_idempotency_records (idempotency_key, request_hash, created_at,"
        " payload_json, status) VALUES ('k003', 'another', 1, '{}', 'pending_writer')",
    )
    applied = store.apply([decided(row, clear=row.key == "k003") for row in page], NOW)
    assert applied == [row.key != "k003" for row in page]
    assert rows_by_key(store.path)["k003"]["request_hash"] == "another"


def test_a_row_reinserted_unchanged_elsewhere_is_still_written_by_key(store: Store) -> None:
    # Same key, hash and status: the compare-and-set holds, whatever rowid the row has now.
    page = read_all(store)
    original = next(row for row in page if row.key == "k001")
    conn = sqlite3.connect(store.path, isolation_level=None)
    conn.execute("BEGIN")
    conn.execute(
        "CREATE TEMP TABLE moved AS SELECT * FROM order_idempotency_records WHERE rowid = ?",
        (original.rowid,),
    )
    conn.execute("DELETE FROM order_idempotency_records WHERE rowid = ?", (original.rowid,))
    add_rows(conn, [{"key": "filler", "created_at": 5}])
    conn.execute("INSERT INTO order_idempotency_records SELECT * FROM moved")
    conn.execute("COMMIT")
    (moved_to,) = conn.execute(
        "SELECT rowid FROM order_idempotency_records WHERE idempotency_key = 'k001'"
    ).fetchone()
    conn.close()
    assert moved_to != original.rowid
    outcomes = [decided(row, clear=row.key == "k001") for row in page]
    assert store.apply(outcomes, NOW) == [True] * len(page)
    table = rows_by_key(store.path)
    assert "k001" not in table
    assert table["filler"]["status"] == "pending_writer"


def test_a_rowid_that_now_holds_another_row_never_writes_that_row(store: Store) -> None:
    # VACUUM may renumber rowids: a stale rowid may point at another pending row.
    page = read_all(store)
    stale = decided(page[0])
    stale.rowid = page[1].rowid
    stale_clear = decided(page[2], clear=True)
    stale_clear.rowid = page[3].rowid
    before = rows_by_key(store.path)
    assert store.apply([stale, stale_clear], NOW) == [True, True]
    table = rows_by_key(store.path)
    assert table[page[0].key]["status"] == "submitted"
    assert page[2].key not in table
    assert table[page[1].key] == before[page[1].key]
    assert table[page[3].key] == before[page[3].key]


def test_outcomes_without_a_rowid_are_written_by_key(store: Store) -> None:
    page = read_all(store)
    outcomes = [decided(row, clear=i % 2 == 1) for i, row in enumerate(page)]
    for outcome in outcomes[::3]:
        outcome.rowid = None
    gateway(store.path, "DELETE FROM order_idempotency_records WHERE idempotency_key = 'k006'")
    assert store.apply(outcomes, NOW) == [o.key != "k006" for o in outcomes]
    table = rows_by_key(store.path)
    assert [k for k, row in table.items() if row["status"] == "pending_writer"] == []


def test_a_conflict_rolls_back_nothing_else_and_other_tables_stay_as_they_were(
    store: Store,
) -> None:
    gateway(
        store.path,
        "INSERT INTO live_orders_pending VALUES ('DU1', 'b1', 'Submitted', 1, 2)",
    )
    before = [line for line in dump(store.path) if "order_idempotency_records" not in line]
    page = read_all(store)
    gateway(
        store.path,
        "UPDATE order_idempotency_records SET request_hash = 'changed' WHERE idempotency_key = ?",
        page[-1].key,
    )
    assert sum(store.apply([decided(row) for row in page], NOW)) == len(page) - 1
    after = [line for line in dump(store.path) if "order_idempotency_records" not in line]
    assert after == before


def scrambled(n: int) -> list[dict[str, object]]:
    """Pending rows whose age order is not their key order, and a few rows of other states."""
    payload = context("paper", "submit", "DU1")
    made: list[dict[str, object]] = [
        {"key": f"k{i:03d}", "payload": payload, "created_at": 1000 + (i * 7) % n} for i in range(n)
    ]
    made += [
        {"key": f"k{i:03d}x", "payload": payload, "status": "submitted"} for i in range(0, n, 4)
    ]
    return made


def page_plans(store: Store, params: tuple[object, ...]) -> list[str]:
    conn = sqlite3.connect(store.path)
    try:
        pages = store._pages
        assert pages is not None
        rows = conn.execute(f"EXPLAIN QUERY PLAN {pages.following}", params).fetchall()
    finally:
        conn.close()
    return [row[-1] for row in rows]


def is_range_search(plans: list[str], index: str) -> bool:
    """One range search of ``index``: no scan of the table, no sort (``USE TEMP B-TREE``)."""
    prefix = f"SEARCH order_idempotency_records USING INDEX {index} "
    return len(plans) == 1 and plans[0].startswith(prefix)


def test_with_the_scan_index_pages_go_oldest_first_through_it(tmp_path: Path) -> None:
    db = make_db(tmp_path / "gateway.db", scrambled(40))
    store = Store(db)
    try:
        store.ensure_scan_index()
        page = read_all(store, 7)
        plans = page_plans(store, (0, "", 7))
    finally:
        store.close()
    assert [(row.created_at, row.key) for row in page] == sorted(
        (row.created_at, row.key) for row in page
    )
    assert len(page) == 40
    assert is_range_search(plans, "ibkr_recover_pending_scan"), plans


def test_without_the_scan_index_pages_go_in_key_order_through_the_keys_index(
    tmp_path: Path,
) -> None:
    """A dry run never adds the scan index; its pages must not each sort the whole table."""
    db = make_db(tmp_path / "gateway.db", scrambled(40))
    before = dump(db)
    store = Store(db)
    try:
        page = read_all(store, 7)
        plans = page_plans(store, ("", 7))
    finally:
        store.close()
    assert [row.key for row in page] == [f"k{i:03d}" for i in range(40)]
    assert is_range_search(plans, "sqlite_autoindex_order_idempotency_records_1"), plans
    assert dump(db) == before


def test_a_without_rowid_table_is_read_and_written_by_key(tmp_path: Path) -> None:
    db = tmp_path / "gateway.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(IDEMPOTENCY_DDL.replace("IF NOT EXISTS ", "") + " WITHOUT ROWID")
    add_rows(conn, rows(6))
    conn.commit()
    conn.close()
    store = Store(db)
    try:
        store.check()
        store.ensure_scan_index()
        page = read_all(store)
        assert [row.rowid for row in page] == [None] * 6
        gateway(db, "DELETE FROM order_idempotency_records WHERE idempotency_key = 'k002'")
        outcomes = [decided(row, clear=row.key == "k004") for row in page]
        assert store.apply(outcomes, NOW) == [row.key != "k002" for row in page]
    finally:
        store.close()
    table = rows_by_key(db)
    assert sorted(table) == ["k000", "k001", "k003", "k005"]
    assert {row["status"] for row in table.values()} == {"submitted"}


def test_a_column_named_rowid_is_not_taken_for_the_rowid(tmp_path: Path) -> None:
    db = make_db(tmp_path / "gateway.db", rows(4))
    gateway(db, "ALTER TABLE order_idempotency_records ADD COLUMN rowid INTEGER")
    gateway(db, "UPDATE order_idempotency_records SET rowid = 1")
    store = Store(db)
    try:
        page = read_all(store)
        assert [row.rowid for row in page] == [None] * 4
        assert store.apply([decided(row) for row in page], NOW) == [True] * 4
    finally:
        store.close()
    assert {row["status"] for row in rows_by_key(db).values()} == {"submitted"}


def test_the_writer_connection_has_a_long_checkpoint_interval(store: Store) -> None:
    writer = store._writer
    assert writer.execute("PRAGMA wal_autocheckpoint").fetchone() == (WRITER_AUTOCHECKPOINT_PAGES,)
    assert store._reader.execute("PRAGMA wal_autocheckpoint").fetchone() == (1000,)
    assert writer.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert store._reader.execute("PRAGMA cache_size").fetchone() == (-2000,)


def applied_with_transactions(
    store: Store, outcomes: list[Outcome]
) -> tuple[list[bool], list[str]]:
    """``store.apply(outcomes)``, and the transaction statements the writer issued for it."""
    statements: list[str] = []
    store._writer.set_trace_callback(statements.append)
    try:
        applied = store.apply(outcomes, NOW)
    finally:
        store._writer.set_trace_callback(None)
    control = {"BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE"}
    return applied, [s for s in statements if s.split()[0] in control]


def test_a_conflicting_batch_is_rolled_back_whole_and_settled_in_a_second_transaction(
    store: Store,
) -> None:
    # No savepoint: it would make SQLite copy every page the batch touches to a sub-journal.
    page = read_all(store)
    gateway(store.path, "DELETE FROM order_idempotency_records WHERE idempotency_key = 'k005'")
    outcomes = [decided(row, clear=row.key == "k009") for row in page]
    applied, control = applied_with_transactions(store, outcomes)
    assert applied == [row.key != "k005" for row in page]
    assert control == ["BEGIN IMMEDIATE", "ROLLBACK", "BEGIN IMMEDIATE", "COMMIT"]
    table = rows_by_key(store.path)
    assert "k009" not in table
    assert {row["status"] for row in table.values()} == {"submitted"}


def test_a_batch_without_conflicts_is_one_transaction(store: Store) -> None:
    page = read_all(store)
    applied, control = applied_with_transactions(store, [decided(row) for row in page])
    assert applied == [True] * len(page)
    assert control == ["BEGIN IMMEDIATE", "COMMIT"]


def database_file_alone(db: Path, tmp_path: Path) -> dict[str, dict[str, object]]:
    """The rows the database file itself holds, without its WAL: what checkpoints moved there."""
    copy = tmp_path / "file-alone.db"
    copy.write_bytes(db.read_bytes())
    return rows_by_key(copy)


def test_closing_after_a_run_checkpoints_the_wal_while_the_gateway_keeps_it_open(
    store: Store, tmp_path: Path
) -> None:
    # Alone, closing the last connection would checkpoint anyway; beside a gateway it would
    # not, and the gateway's next commit would have to do it.
    gw = sqlite3.connect(store.path, isolation_level=None)
    try:
        gw.execute("SELECT count(*) FROM order_idempotency_records").fetchone()
        page = read_all(store)
        assert store.apply([decided(row) for row in page], NOW) == [True] * len(page)
        assert {r["status"] for r in database_file_alone(store.path, tmp_path).values()} == {
            "pending_writer"
        }
        store.close()
        on_file = database_file_alone(store.path, tmp_path)
        assert {r["status"] for r in on_file.values()} == {"submitted"}
        # The gateway goes on writing and reading as before.
        gw.execute(
            "UPDATE order_idempotency_records SET updated_at = 7 WHERE idempotency_key = 'k000'"
        )
        assert gw.execute(
            "SELECT count(*) FROM order_idempotency_records WHERE status = 'submitted'"
        ).fetchone() == (len(page),)
    finally:
        gw.close()


def test_closing_never_waits_for_a_gateway_reader_and_leaves_it_its_snapshot(
    store: Store, tmp_path: Path
) -> None:
    reader = sqlite3.connect(store.path, isolation_level=None, timeout=30)
    try:
        page = read_all(store)
        store.apply([decided(row) for row in page[:6]], NOW)
        reader.execute("BEGIN")
        before = reader.execute(
            "SELECT count(*) FROM order_idempotency_records WHERE status = 'pending_writer'"
        ).fetchone()
        store.apply([decided(row) for row in page[6:]], NOW)
        store.close()  # PASSIVE: what the reader's snapshot still needs stays in the WAL
        again = reader.execute(
            "SELECT count(*) FROM order_idempotency_records WHERE status = 'pending_writer'"
        ).fetchone()
        assert before == again == (len(page) - 6,)
        reader.execute("COMMIT")
        assert reader.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[0] == 0
    finally:
        reader.close()
    assert {r["status"] for r in database_file_alone(store.path, tmp_path).values()} == {
        "submitted"
    }


def test_a_store_that_wrote_nothing_does_not_checkpoint_at_close(tmp_path: Path) -> None:
    # Read-only commands (``pending``) leave the gateway's WAL to the gateway.
    db = make_db(tmp_path / "gateway.db", rows(3))
    gw = sqlite3.connect(db, isolation_level=None)
    try:
        gw.execute("PRAGMA wal_autocheckpoint = 0")
        gw.execute("UPDATE order_idempotency_records SET updated_at = 9")
        store = Store(db)
        store.count_pending()
        store.close()
        assert {r["updated_at"] for r in database_file_alone(db, tmp_path).values()} != {9}
    finally:
        gw.close()
