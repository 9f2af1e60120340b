"""A live gateway writing to the same database during the run (matrix B1, B2, B3).

The gateway stand-in (``rel_gateway``) is a separate process with its own SQLite connection,
as the real gateway is: it inserts new pending rows, completes or deletes rows the tool is
resolving, and holds the write lock longer than the tool's busy timeout. Nothing the gateway
wrote is ever overwritten, its new rows are skipped as too recent, and a lock held too long
ends the run with exit 4 after a bounded wait, with every earlier batch intact.
"""

from __future__ import annotations

import inspect
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import rel_gateway
from conftest import make_db
from ibkr_recover import _store
from rel_checks import (
    GatewayLock,
    assert_batches_whole,
    changed_rows,
    integrity,
    logged_writes,
    stop,
    table,
    wait_until,
)
from rel_world import World, world
from simtools import assert_matches_expected


@pytest.fixture(scope="module")
def busy_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    # More rows than one page (1000), so that rows the gateway adds mid-run are read; slow
    # enough that the gateway's writes land while the tool is still resolving.
    with world(
        tmp_path_factory.mktemp("gateway"), rows=1100, seed=41, concurrency=8, latency_ms=4
    ) as w:
        yield w


def test_gateway_writes_during_the_run_are_never_overwritten(
    busy_world: World, tmp_path: Path
) -> None:
    w = busy_world
    db, outcomes = w.copy(), w.outcomes_path()
    # The gateway finishes, on its own, rows the tool will also decide: late ones of the first
    # page (1000 rows) in the tool's scan order, which the tool has read before its first
    # lookup but writes only later.
    scan_order = sorted(
        (row["created_at"], key)
        for key, row in w.original_rows.items()
        if row["status"] == "pending_writer"
    )
    targets = [key for _, key in scan_order[600:1000:5] if key.strip()]
    go = tmp_path / "go"
    gateway, report_path = rel_gateway.start(
        "race", db, tmp_path, go=str(go), inserts=25, keys=targets, pause=0.001
    )
    seen = w.sim.stats().requests
    child = w.start(db, outcomes)
    try:
        # The first page is read before the first lookup goes out; the gateway starts then.
        wait_until(lambda: w.sim.stats().requests > seen + 5, what="the first lookups")
        go.touch()
        result = child.wait(120)
    finally:
        child.finish()
        stop(gateway, 60)
    assert gateway.returncode == 0
    gw = json.loads(report_path.read_text())
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    rows = table(db)

    touched = set(gw["completed"]) | set(gw["deleted"])
    assert len(touched) >= 20, "the gateway's writes all lost the race: nothing was tested"
    for key in gw["completed"]:
        assert rows[key]["payload_json"] == rel_gateway.GATEWAY_PAYLOAD % key
        assert rows[key]["result_hash"] == "gateway"
    for key in gw["deleted"]:
        assert key not in rows
    # Every other row is untouched or exactly what the oracle says, and the gateway's new
    # rows are left alone: those the reader came to (it may have read past the end of the
    # table before they were inserted) were skipped, being younger than --min-age.
    foreign = frozenset(touched | set(gw["inserted"]))
    changed = changed_rows(w.original_rows, rows, w.decisions, foreign=foreign)
    for key in gw["inserted"]:
        assert rows[key]["status"] == "pending_writer"
    decided = {e["key"]: e for e in map(json.loads, outcomes.read_bytes().splitlines())}
    seen_new = [decided[key] for key in gw["inserted"] if key in decided]
    assert all(e["reason"] == "too_recent" for e in seen_new), seen_new
    assert report["skipped_reasons"]["too_recent"] == w.expected.report.skipped + len(seen_new)
    # A row the gateway changed after the tool read it is a conflict when the tool wanted to
    # write it, and is counted as nothing else.
    writes = {k for k in touched if w.decisions[k].decision in ("complete", "clear")}
    assert report["conflicts"] == len(writes)
    assert report["completed"] + report["cleared_missing"] == len(changed)
    assert report["scanned"] == len(scan_order) + len(seen_new)
    parts = ("completed", "cleared_missing", "unresolved", "conflicts", "skipped")
    assert report["scanned"] == sum(report[p] for p in parts)
    assert integrity(db) == "ok"


def test_lock_held_past_the_busy_timeout_exits_4_with_earlier_batches_intact(
    busy_world: World, tmp_path: Path
) -> None:
    w = busy_world
    db, outcomes = w.copy(), w.outcomes_path()
    lock = GatewayLock(db, tmp_path, seconds=2.5)
    child = w.start(db, outcomes, "--busy-timeout", "0.3")
    try:
        lock.take(outcomes, rows=3 * w.batch_size)
        locked_at = time.monotonic()
        result = child.wait(60)
        waited = time.monotonic() - locked_at
    finally:
        child.finish()
        stop(lock.process, 60)
    assert result.returncode == 4, result.stderr
    assert "another process holds the write lock" in result.stderr
    assert "Traceback" not in result.stderr
    assert waited < 5, f"gave up only after {waited:.1f} s"
    assert not result.stdout.strip()
    # The batches committed before the lock are all there, whole; nothing after them.
    assert integrity(db) == "ok"
    changed = changed_rows(w.original_rows, table(db), w.decisions)
    assert_batches_whole(
        changed, logged_writes(outcomes), batch_size=w.batch_size, inside_transaction=True
    )
    assert len(changed) >= 3 * w.batch_size
    w.converge(db)


def test_lock_held_at_startup_exits_4_before_any_broker_call(
    busy_world: World, tmp_path: Path
) -> None:
    w = busy_world
    db = w.copy()
    lock = GatewayLock(db, tmp_path, seconds=2)
    try:
        lock.take()
        seen = w.sim.stats().requests
        # The busy timeout from the environment, as cron would set it (with the default 5 s
        # the 2 s lock would simply be waited out).
        result = w.server.run(*w.args(db), env={"IBKR_RECOVER_BUSY_TIMEOUT": "0.2"}, timeout=60)
        asked = w.sim.stats().requests - seen
    finally:
        stop(lock.process, 60)
    assert result.returncode == 4, result.stderr
    assert "another process holds the write lock" in result.stderr
    assert asked == 0
    assert table(db) == table(w.original)


def test_lock_held_shorter_than_the_retries_is_waited_out(
    busy_world: World, tmp_path: Path
) -> None:
    w = busy_world
    db, outcomes = w.copy(), w.outcomes_path()
    # Longer than one busy timeout, shorter than the few attempts the tool makes.
    lock = GatewayLock(db, tmp_path, seconds=0.5)
    child = w.start(db, outcomes, "--busy-timeout", "0.3")
    try:
        lock.take(outcomes, rows=2 * w.batch_size)
        at_lock = len(logged_writes(outcomes))
        time.sleep(0.4)
        # Longer than one busy timeout, and nothing was committed meanwhile: the tool waited.
        assert len(logged_writes(outcomes)) <= at_lock + w.batch_size
        result = child.wait(120)
    finally:
        child.finish()
        stop(lock.process, 60)
    assert result.returncode == 1, result.stderr
    assert "locked" not in result.stderr
    assert_matches_expected(db, w.original, w.expected)


def test_every_write_transaction_begins_immediate(tmp_path: Path) -> None:
    """B3: a deferred transaction that reads, then writes, fails at once with
    SQLITE_BUSY_SNAPSHOT when the gateway committed in between; the busy timeout does not help.
    The store never opens one: no implicit BEGIN (isolation_level None), and every BEGIN it
    issues is BEGIN IMMEDIATE."""
    source = inspect.getsource(_store)
    begins = re.findall(r"""execute\(\s*["'](BEGIN[^"']*)["']""", source)
    assert begins, "no BEGIN found: the check is looking in the wrong place"
    assert set(begins) == {"BEGIN IMMEDIATE"}
    db = make_db(tmp_path / "gateway.db")
    store = _store.Store(db)
    try:
        assert store._writer.isolation_level is None
        assert store._reader.isolation_level is None
    finally:
        store.close()
