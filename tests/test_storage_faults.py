"""Storage faults (matrix B4-B9, B12): a clear message, the documented exit code, no wrong write.

Every failure that can be found before the broker is asked anything is found then: the
simulator's request counter proves it. A failure in the middle of a run (a full disk) leaves
every committed batch whole and the rest untouched, and a rerun once the cause is gone
completes.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

import rel_gateway
from conftest import OLD, context, make_db, rows_by_key
from ibkr_recover import (
    BrokerOrder,
    Found,
    MemoryBackend,
    RunConfig,
    StorageError,
    _pipeline,
    recover,
)
from ibkr_recover._schema import PENDING_INDEX_DDL
from rel_checks import assert_batches_whole, changed_rows, integrity, logged_writes, table
from rel_files import file_size_limit, make_read_only, restore_mode, run_cli
from rel_world import World, world
from simtools import assert_matches_expected


@pytest.fixture(scope="module")
def disk_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with world(tmp_path_factory.mktemp("storage"), rows=200, seed=51) as w:
        yield w


def asked(w: World, before: int) -> int:
    """Broker requests since ``before`` (a value of ``w.sim.stats().requests``)."""
    return w.sim.stats().requests - before


# -- B4: disk full in the middle of a run -----------------------------------------------------


def test_disk_full_mid_run_exits_4_keeps_earlier_batches_and_a_rerun_completes(
    disk_world: World,
) -> None:
    w = disk_world
    db, outcomes = w.copy(), w.outcomes_path()
    # The database is 100 KiB; its WAL may grow to 256 KiB: a few batches fit, the rest do not.
    limit = db.stat().st_size + 156 * 1024
    result = run_cli(*w.args(db, "--outcomes", str(outcomes)), preexec=file_size_limit(limit))
    assert result.returncode == 4, result.stderr
    assert "disk I/O error" in result.stderr
    assert "check free space" in result.stderr
    assert "Traceback" not in result.stderr
    assert not result.stdout.strip(), "a report was printed for a run that failed"
    assert integrity(db) == "ok"
    changed = changed_rows(w.original_rows, table(db), w.decisions)
    assert_batches_whole(
        changed, logged_writes(outcomes), batch_size=w.batch_size, inside_transaction=True
    )
    writes = w.expected.report.completed + w.expected.report.cleared_missing
    assert w.batch_size <= len(changed) < writes, "the disk did not fill up mid-run"
    # Space is back: the rerun does the rest, and one more does nothing.
    w.converge(db)


async def test_outcomes_file_that_stops_taking_writes_ends_the_run_with_exit_4(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = make_db(
        tmp_path / "gateway.db",
        [{"key": f"k{i:03d}", "payload": context("paper", "submit", "DU1")} for i in range(40)],
    )

    class FillsUp:
        """A file on a disk that is full after the first two writes."""

        def __init__(self) -> None:
            self.writes = 0

        def write(self, data: bytes) -> int:
            self.writes += 1
            if self.writes > 2:
                raise OSError(28, "No space left on device")
            return len(data)

        def flush(self) -> None: ...

        def close(self) -> None: ...

    monkeypatch.setattr(_pipeline, "_open_private", lambda path: FillsUp())
    config = RunConfig(db=db, batch_size=7, concurrency=1, outcomes=tmp_path / "out.jsonl")
    full = pytest.RaisesExc(StorageError, match="cannot write the outcomes file.*No space left")
    with pytest.RaisesGroup(full):
        await recover(config, MemoryBackend())
    # Three batches were committed (the third could not be recorded); nothing else.
    assert len(rows_by_key(db)) == 40 - 3 * 7


def test_outcomes_path_that_cannot_be_created_exits_2_before_any_broker_call(
    disk_world: World,
) -> None:
    w = disk_world
    db = w.copy()
    seen = w.sim.stats().requests
    result = w.server.run(*w.args(db, "--outcomes", str(w.workdir / "no" / "such" / "x.jsonl")))
    assert result.returncode == 2, result.stderr
    assert "cannot create the outcomes file" in result.stderr
    assert "Traceback" not in result.stderr
    assert asked(w, seen) == 0
    assert table(db) == w.original_rows


# -- B5: a corrupt file -----------------------------------------------------------------------


def _corrupt_root_page(db: Path) -> None:
    conn = sqlite3.connect(db)
    (root,) = conn.execute(
        "SELECT rootpage FROM sqlite_master WHERE name = 'order_idempotency_records'"
    ).fetchone()
    (page_size,) = conn.execute("PRAGMA page_size").fetchone()
    conn.close()
    with db.open("r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(b"\xa5" * 200)


def _corrupt_leaf_pages(db: Path) -> None:
    conn = sqlite3.connect(db)
    (pages,) = conn.execute("PRAGMA page_count").fetchone()
    (page_size,) = conn.execute("PRAGMA page_size").fetchone()
    conn.close()
    with db.open("r+b") as f:
        for page in range(pages // 2, pages):
            f.seek(page * page_size + 8)
            f.write(bytes(range(256)) * 4)


def _truncate(db: Path) -> None:
    with db.open("r+b") as f:
        f.truncate(db.stat().st_size * 6 // 10)


@pytest.mark.parametrize(
    "damage", [_corrupt_root_page, _corrupt_leaf_pages, _truncate], ids=["root", "leaves", "cut"]
)
def test_corrupt_file_fails_the_preflight_check_before_any_broker_call(
    disk_world: World, damage: object
) -> None:
    w = disk_world
    db = w.copy()
    damage(db)  # type: ignore[operator]
    image = db.read_bytes()
    seen = w.sim.stats().requests
    result = w.server.run(*w.args(db))
    assert result.returncode == 4, result.stderr
    assert "corrupt" in result.stderr
    assert "restore it from a backup" in result.stderr
    assert "Traceback" not in result.stderr
    assert asked(w, seen) == 0
    assert db.read_bytes() == image, "the tool wrote to a corrupt file"


# -- B6, B7: no database, not the gateway's schema ---------------------------------------------


def test_missing_database_exits_2_before_any_broker_call_and_is_not_created(
    disk_world: World,
) -> None:
    w = disk_world
    missing = w.workdir / "typo.db"
    seen = w.sim.stats().requests
    result = w.server.run(*w.args(missing))
    assert result.returncode == 2, result.stderr
    assert "does not exist" in result.stderr
    assert not missing.exists()
    assert asked(w, seen) == 0


def _drop_column(db: Path) -> None:
    conn = sqlite3.connect(db)
    conn.execute("ALTER TABLE order_idempotency_records DROP COLUMN failure_json")
    conn.commit()
    conn.close()


def _rename_table(db: Path) -> None:
    conn = sqlite3.connect(db)
    conn.execute("ALTER TABLE order_idempotency_records RENAME TO idempotency_records")
    conn.commit()
    conn.close()


@pytest.mark.parametrize("change", [_drop_column, _rename_table], ids=["column", "table"])
def test_schema_mismatch_exits_2_before_any_broker_call(disk_world: World, change: object) -> None:
    w = disk_world
    db = w.copy()
    change(db)  # type: ignore[operator]
    image = db.read_bytes()
    seen = w.sim.stats().requests
    result = w.server.run(*w.args(db))
    assert result.returncode == 2, result.stderr
    assert "order_idempotency_records" in result.stderr
    assert asked(w, seen) == 0
    assert db.read_bytes() == image


def test_rows_with_an_unknown_status_are_never_touched(disk_world: World) -> None:
    w = disk_world
    db = w.copy()
    conn = sqlite3.connect(db)
    conn.execute(
        "INSERT INTO order_idempotency_records VALUES ('odd', 'h', NULL, ?, ?, 'archived', ?, NULL)",
        (OLD, context("paper", "submit", "DU1"), OLD),
    )
    conn.commit()
    conn.close()
    odd = table(db)["odd"]
    result = w.server.run(*w.args(db))
    assert result.returncode == 1, result.stderr
    rows = table(db)
    assert rows.pop("odd") == odd
    assert json.loads(result.stdout)["scanned"] == w.expected.report.scanned
    conn = sqlite3.connect(db)
    conn.execute("DELETE FROM order_idempotency_records WHERE idempotency_key = 'odd'")
    conn.commit()
    conn.close()
    assert_matches_expected(db, w.original, w.expected)


# -- B8: read-only file or folder -------------------------------------------------------------


def _read_only_file(db: Path) -> Path:
    make_read_only(db)
    return db


def _read_only_file_indexed(db: Path) -> Path:
    # The tool's own scan index is already there (an earlier run made it): opening, checking
    # and indexing all succeed on a read-only file, and only a write shows it.
    conn = sqlite3.connect(db)
    conn.execute(PENDING_INDEX_DDL)
    conn.commit()
    conn.close()
    make_read_only(db)
    return db


def _read_only_folder(db: Path) -> Path:
    make_read_only(db.parent)
    return db.parent


@pytest.mark.parametrize(
    "lock_down",
    [_read_only_file, _read_only_file_indexed, _read_only_folder],
    ids=["file", "file-indexed", "folder"],
)
def test_read_only_database_exits_4_before_any_broker_call(
    disk_world: World, tmp_path: Path, lock_down: object
) -> None:
    w = disk_world
    folder = tmp_path / "ro"
    folder.mkdir()
    db = folder / "gateway.db"
    shutil.copyfile(w.original, db)
    locked = lock_down(db)  # type: ignore[operator]
    mode = (locked.stat().st_mode & 0o7777) | 0o222
    try:
        seen = w.sim.stats().requests
        result = run_cli(*w.args(db))
        asked_real = asked(w, seen)
        seen = w.sim.stats().requests
        dry = run_cli(*w.args(db, "--dry-run"))
    finally:
        restore_mode(locked, mode)
    assert result.returncode == 4, result.stderr
    assert "read-only" in result.stderr
    assert "Traceback" not in result.stderr
    assert asked_real == 0
    assert table(db) == w.original_rows
    if locked == db:
        # A dry run only reads: on a read-only file it still classifies every row.
        assert dry.returncode == 1, dry.stderr
        report = json.loads(dry.stdout)
        assert report["completed"] == w.expected.report.completed
        assert report["cleared_missing"] == w.expected.report.cleared_missing
        assert asked(w, seen) > 0
    else:
        # In a read-only folder SQLite cannot create the WAL index (-shm) even to read.
        assert dry.returncode == 4, dry.stderr
        assert "read-only" in dry.stderr
        assert asked(w, seen) == 0


# -- B9: a hot WAL left by a writer that was killed --------------------------------------------


def test_hot_wal_of_a_killed_writer_is_recovered_and_processed(
    disk_world: World, tmp_path: Path
) -> None:
    w = disk_world
    db = w.copy()
    # A third of the pending rows exist only in the WAL of a gateway that was then killed in the
    # middle of a large transaction (deleting everything, never committed).
    moved = [row for key, row in w.original_rows.items() if row["status"] == "pending_writer"][::3]
    conn = sqlite3.connect(db)
    conn.executemany(
        "DELETE FROM order_idempotency_records WHERE idempotency_key = ?",
        [(row["idempotency_key"],) for row in moved],
    )
    conn.commit()
    conn.close()
    gateway, report = rel_gateway.start("hot-wal", db, tmp_path, rows=moved)
    assert gateway.wait(60) == -9
    assert json.loads(report.read_text())["inserted"] == len(moved)
    wal = Path(f"{db}-wal")
    assert wal.exists(), "no hot WAL was left behind"
    assert wal.stat().st_size > 0
    result = w.server.run(*w.args(db))
    assert result.returncode == 1, result.stderr
    assert json.loads(result.stdout)["scanned"] == w.expected.report.scanned
    assert integrity(db) == "ok"
    assert_matches_expected(db, w.original, w.expected)
    conn = sqlite3.connect(db)
    gone = conn.execute("SELECT count(*) FROM live_orders_pending WHERE last_status = 'gone'")
    assert gone.fetchone() == (0,), "an uncommitted transaction became visible"
    conn.close()


# -- B12: timestamps at and around the thresholds ------------------------------------------------


async def test_age_thresholds_are_exclusive_at_the_boundary(tmp_path: Path) -> None:
    now = 1_800_000_000.0
    min_age, max_clear_age = 60.0, 5 * 86400.0
    submit = context("paper", "submit", "DU1")
    db = make_db(
        tmp_path / "gateway.db",
        [
            {"key": "exactly-min-age", "payload": submit, "created_at": int(now - min_age)},
            {"key": "just-younger", "payload": submit, "created_at": now - min_age + 0.5},
            {"key": "from-the-future", "payload": submit, "created_at": int(now + 3600)},
            {"key": "exactly-max-clear", "payload": submit, "created_at": int(now - max_clear_age)},
            {"key": "just-older", "payload": submit, "created_at": now - max_clear_age - 0.5},
            {"key": "text-time", "payload": submit, "created_at": "yesterday"},
            {"key": "found-old", "payload": submit, "created_at": int(now - 9 * 86400)},
        ],
    )
    when = datetime(2027, 1, 15, 8, 0, tzinfo=UTC)
    backend = MemoryBackend({("DU1", "found-old"): Found(BrokerOrder("DU1", "9", "Filled", when))})
    config = RunConfig(db=db, min_age=min_age, max_clear_age=max_clear_age, clock=lambda: now)
    report = await recover(config, backend)
    rows = rows_by_key(db)
    assert set(rows) == {"just-younger", "from-the-future", "just-older", "text-time", "found-old"}
    assert report.skipped_reasons == {"too_recent": 2}
    assert report.unresolved_reasons == {"bad_timestamp": 1, "beyond_horizon": 1}
    assert (report.cleared_missing, report.completed) == (2, 1)
    assert rows["found-old"]["status"] == "submitted"
    assert sorted(q.key for q in backend.queries) == [
        "exactly-max-clear",
        "exactly-min-age",
        "found-old",
        "just-older",
    ]
