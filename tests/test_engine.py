"""The engine end to end on real SQLite files, against the in-memory broker."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trio

from conftest import NOW, OLD, add_rows, context, dump, make_db, rows_by_key
from ibkr_recover import (
    Absent,
    Answer,
    BrokerFatal,
    BrokerOrder,
    ConfigError,
    Found,
    MemoryBackend,
    Query,
    Report,
    RunConfig,
    SchemaError,
    StorageError,
    Unresolved,
    recover,
)
from ibkr_recover._store import Store

WHEN = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)


def config(db: Path, **kwargs: object) -> RunConfig:
    return RunConfig(db=db, **kwargs)  # type: ignore[arg-type]


def assert_adds_up(report: Report) -> None:
    assert report.adds_up(), report


async def test_live_submit_with_context_is_completed_from_order_found_by_coid(
    db_path: Path,
) -> None:
    make_db(db_path, [{"key": "live-key-1", "payload": context("live", "submit", "U1234567")}])
    order = BrokerOrder("U1234567", "broker-123", "Submitted", WHEN)
    backend = MemoryBackend({("U1234567", "live-key-1"): Found(order)})

    report = await recover(config(db_path), backend)

    assert (report.scanned, report.completed) == (1, 1)
    row = rows_by_key(db_path)["live-key-1"]
    assert row["status"] == "submitted"
    payload = json.loads(row["payload_json"])
    assert payload["broker_order_id"] == "broker-123"
    assert payload["status"] == "open"
    assert row["payload_json"] == (
        '{"account_id":"U1234567","broker_order_id":"broker-123","execution_correlation":null,'
        '"status":"open","updated_at":"2026-11-30T12:00:00Z"}'
    )
    assert row["result_hash"] == hashlib.sha256(row["payload_json"].encode()).hexdigest()
    assert row["failure_json"] is None
    assert row["updated_at"] >= int(NOW)
    assert backend.queries[0].lookup_id == "live-key-1"


async def test_paper_submit_absent_at_broker_is_cleared(db_path: Path) -> None:
    make_db(db_path, [{"key": "paper-key-1", "payload": context("paper", "submit", "DU1234567")}])
    report = await recover(config(db_path), MemoryBackend(default=Absent()))
    assert (report.scanned, report.cleared_missing) == (1, 1)
    assert "paper-key-1" not in rows_by_key(db_path)


async def test_cancel_looks_up_broker_order_id_and_modify_falls_back_to_key(
    db_path: Path,
) -> None:
    make_db(
        db_path,
        [
            {"key": "c1", "payload": context("live", "cancel", "U1", "555")},
            {"key": "m1", "payload": context("paper", "modify", "DU1")},
        ],
    )
    backend = MemoryBackend(
        {
            ("U1", "555"): Found(BrokerOrder("U1", "555", "Cancelled")),
            ("DU1", "m1"): Found(BrokerOrder("DU1", "m1", "Weird")),
        }
    )
    report = await recover(config(db_path, clock=lambda: NOW), backend)
    assert report.completed == 2
    rows = rows_by_key(db_path)
    assert json.loads(rows["c1"]["payload_json"])["status"] == "cancelled"
    assert json.loads(rows["m1"]["payload_json"])["status"] == "open"
    assert sorted(q.lookup_id for q in backend.queries) == ["555", "m1"]


async def test_malformed_rows_never_abort_the_run(db_path: Path) -> None:
    make_db(
        db_path,
        [
            {"key": "no-ctx", "payload": "{}"},
            {"key": "empty-ctx", "payload": ""},
            {"key": "bad-json", "payload": "{not json"},
            {"key": "bad-schema", "payload": '{"workflow":"x"}'},
            {"key": "   ", "payload": context("paper", "submit", "DU1")},
            {"key": "bad-time", "payload": context("paper", "submit", "DU1"), "created_at": "x"},
            {"key": "good", "payload": context("paper", "submit", "DU1")},
        ],
    )
    report = await recover(config(db_path), MemoryBackend())
    assert report.scanned == 7
    assert report.unresolved_reasons == {
        "bad_context": 2,
        "bad_timestamp": 1,
        "invalid_key": 1,
        "no_context": 2,
    }
    assert report.cleared_missing == 1
    assert_adds_up(report)
    assert set(rows_by_key(db_path)) == {
        "no-ctx",
        "empty-ctx",
        "bad-json",
        "bad-schema",
        "   ",
        "bad-time",
    }


async def test_rows_younger_than_min_age_are_skipped_untouched(db_path: Path) -> None:
    make_db(
        db_path,
        [
            {
                "key": "young",
                "payload": context("paper", "submit", "DU1"),
                "created_at": int(NOW) - 10,
            },
            {
                "key": "future",
                "payload": context("paper", "submit", "DU1"),
                "created_at": int(NOW) + 999,
            },
            {"key": "old", "payload": context("paper", "submit", "DU1")},
        ],
    )
    backend = MemoryBackend()
    report = await recover(config(db_path, min_age=60.0, clock=lambda: NOW), backend)
    assert report.skipped_reasons == {"too_recent": 2}
    assert report.cleared_missing == 1
    assert [q.key for q in backend.queries] == ["old"]
    assert set(rows_by_key(db_path)) == {"young", "future"}


async def test_old_absent_submit_is_beyond_horizon_but_old_cancel_is_cleared(
    db_path: Path,
) -> None:
    ancient = int(NOW) - 6 * 86400
    make_db(
        db_path,
        [
            {
                "key": "old-submit",
                "payload": context("paper", "submit", "DU1"),
                "created_at": ancient,
            },
            {
                "key": "old-cancel",
                "payload": context("paper", "cancel", "DU1", "9"),
                "created_at": ancient,
            },
        ],
    )
    report = await recover(config(db_path), MemoryBackend())
    assert report.unresolved_reasons == {"beyond_horizon": 1}
    assert report.cleared_missing == 1
    assert set(rows_by_key(db_path)) == {"old-submit"}


async def test_unresolved_answers_leave_rows_untouched_with_reason(db_path: Path) -> None:
    make_db(
        db_path, [{"key": f"k{i}", "payload": context("live", "submit", "U1")} for i in range(3)]
    )
    backend = MemoryBackend(default=Unresolved("empty_listing"))
    before = dump(db_path)
    report = await recover(config(db_path), backend)
    assert report.unresolved_reasons == {"empty_listing": 3}
    assert dump(db_path) == before


async def test_submitted_and_failed_rows_are_never_touched(db_path: Path) -> None:
    make_db(
        db_path,
        [
            {"key": "done", "payload": '{"account_id":"U1"}', "status": "submitted"},
            {
                "key": "failed",
                "payload": context("live", "submit", "U1"),
                "status": "failed_after_writer",
                "failure": "{}",
            },
        ],
    )
    backend = MemoryBackend()
    before = dump(db_path)
    report = await recover(config(db_path), backend)
    assert report.scanned == 0
    assert backend.queries == []
    assert [line for line in dump(db_path) if "INSERT" in line] == [
        line for line in before if "INSERT" in line
    ]


async def test_gateway_completing_a_row_during_the_run_is_a_conflict(db_path: Path) -> None:
    make_db(
        db_path,
        [{"key": f"k{i:03d}", "payload": context("paper", "submit", "DU1")} for i in range(50)],
    )
    gateway_payload = '{"account_id":"DU1","broker_order_id":"gw","status":"open","updated_at":"x"}'

    class RacingBackend(MemoryBackend):
        async def lookup(self, query):  # type: ignore[no-untyped-def]
            if query.key == "k007":
                # The gateway finishes its own call for this key while we are asking the broker.
                conn = sqlite3.connect(db_path)
                conn.execute(
                    "UPDATE order_idempotency_records SET status='submitted', payload_json=?"
                    " WHERE idempotency_key='k007'",
                    (gateway_payload,),
                )
                conn.commit()
                conn.close()
            return Found(BrokerOrder("DU1", "b-" + query.key, "Filled"))

    report = await recover(config(db_path, batch_size=10), RacingBackend())
    assert report.conflicts == 1
    assert report.completed == 49
    assert_adds_up(report)
    assert rows_by_key(db_path)["k007"]["payload_json"] == gateway_payload


async def test_request_hash_mismatch_is_a_conflict(db_path: Path) -> None:
    make_db(db_path, [{"key": "k", "payload": context("paper", "submit", "DU1")}])

    class ReplacingBackend(MemoryBackend):
        async def lookup(self, query):  # type: ignore[no-untyped-def]
            conn = sqlite3.connect(db_path)
            conn.execute("UPDATE order_idempotency_records SET request_hash='other'")
            conn.commit()
            conn.close()
            return Absent()

    report = await recover(config(db_path), ReplacingBackend())
    assert (report.conflicts, report.cleared_missing) == (1, 0)
    assert "k" in rows_by_key(db_path)


async def test_dry_run_leaves_the_database_byte_identical(db_path: Path) -> None:
    make_db(
        db_path,
        [
            {"key": "a", "payload": context("paper", "submit", "DU1")},
            {"key": "b", "payload": context("live", "cancel", "U1", "1")},
            {"key": "c", "payload": "{}"},
        ],
    )
    before_dump, before_bytes = dump(db_path), db_path.read_bytes()
    backend = MemoryBackend({("U1", "1"): Found(BrokerOrder("U1", "1", "Filled"))})
    report = await recover(config(db_path, dry_run=True), backend)
    assert (report.completed, report.cleared_missing, report.unresolved) == (1, 1, 1)
    assert report.dry_run
    assert dump(db_path) == before_dump
    assert db_path.read_bytes() == before_bytes


async def test_rerun_after_complete_run_writes_nothing(db_path: Path) -> None:
    make_db(
        db_path,
        [{"key": f"k{i}", "payload": context("live", "submit", "U1")} for i in range(20)]
        + [{"key": "unknown", "payload": "{}"}],
    )
    answers = {("U1", f"k{i}"): Found(BrokerOrder("U1", str(i), "Filled")) for i in range(0, 20, 2)}
    first = await recover(config(db_path), MemoryBackend(answers))
    assert (first.completed, first.cleared_missing) == (10, 10)
    after_first = dump(db_path)
    second = await recover(config(db_path), MemoryBackend(answers))
    assert (second.scanned, second.completed, second.cleared_missing) == (1, 0, 0)
    assert dump(db_path) == after_first


async def test_fatal_broker_condition_stops_lookups_and_commits_decided_rows(
    db_path: Path,
) -> None:
    make_db(
        db_path,
        [
            {
                "key": f"k{i:03d}",
                "payload": context("paper", "submit", "DU1"),
                "created_at": OLD + i,
            }
            for i in range(200)
        ],
    )
    backend = MemoryBackend(
        default=Found(BrokerOrder("DU1", "1", "Filled")),
        fatal={"k050": BrokerFatal("rate_limited", "429 Too Many Requests")},
    )
    report = await recover(config(db_path, concurrency=4), backend)
    assert report.fatal == "rate_limited"
    assert report.completed >= 40
    assert report.unresolved_reasons.get("rate_limited", 0) >= 1
    assert_adds_up(report)
    # No lookup started after the fatal answer, beyond those already in flight.
    assert len(backend.queries) <= 50 + 1 + 4
    rows = rows_by_key(db_path)
    done = sum(1 for r in rows.values() if r["status"] == "submitted")
    assert done == report.completed
    assert all(r["status"] in ("pending_writer", "submitted") for r in rows.values())


class _Stalling(MemoryBackend):
    """``hang`` never answers; ``fatal``, once ``hang`` is asked (or after ``fatal_after`` s), is a 429."""

    def __init__(self, fatal_after: float | None = None) -> None:
        super().__init__(default=Found(BrokerOrder("DU1", "1", "Filled")))
        self.hanging = trio.Event()
        self.fatal_after = fatal_after

    async def lookup(self, query: Query) -> Answer:
        self.queries.append(query)
        if query.lookup_id == "hang":
            self.hanging.set()
            await trio.sleep_forever()
        if query.lookup_id == "fatal":
            if self.fatal_after is None:
                await self.hanging.wait()
            else:
                await trio.sleep(self.fatal_after)
            raise BrokerFatal("rate_limited", "429 Too Many Requests")
        return await super().lookup(query)


async def test_a_lookup_in_flight_is_cancelled_when_the_switch_trips(db_path: Path) -> None:
    keys = ["hang", "fatal", *(f"k{i:03d}" for i in range(20))]
    make_db(
        db_path,
        [
            {"key": key, "payload": context("paper", "submit", "DU1"), "created_at": OLD + i}
            for i, key in enumerate(keys)
        ],
    )
    with trio.fail_after(10):
        report = await recover(config(db_path, concurrency=2), _Stalling())
    assert report.fatal == "rate_limited"
    # The hanging lookup, the fatal one and every row after them: none answered.
    assert report.unresolved_reasons == {"rate_limited": 22}
    assert_adds_up(report)
    assert all(r["status"] == "pending_writer" for r in rows_by_key(db_path).values())


async def test_outcomes_being_handed_over_when_the_switch_trips_are_kept(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first commit takes a second: the results channel fills and the workers wait to hand
    # over their outcomes when the 429 arrives. Those decided rows must still be written.
    apply = Store.apply
    calls = []

    def slow_apply(store: Store, *args: object) -> list[bool]:
        calls.append(len(args[0]))  # type: ignore[arg-type]
        if len(calls) == 1:
            time.sleep(1.0)
        return apply(store, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(Store, "apply", slow_apply)
    keys = [f"k{i:03d}" for i in range(300)]
    keys[5] = "fatal"
    make_db(
        db_path,
        [
            {"key": key, "payload": context("paper", "submit", "DU1"), "created_at": OLD + i}
            for i, key in enumerate(keys)
        ],
    )
    with trio.fail_after(30):
        report = await recover(
            config(db_path, concurrency=4, batch_size=10), _Stalling(fatal_after=0.5)
        )
    assert report.fatal == "rate_limited"
    assert_adds_up(report)
    # The batch in flight, the channel's 64 and the three outcomes in the workers' hands.
    assert report.completed >= 10 + 64 + 3
    assert report.completed == sum(calls)
    rows = rows_by_key(db_path)
    assert sum(r["status"] == "submitted" for r in rows.values()) == report.completed


async def test_missing_database_is_refused_and_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    with pytest.raises(ConfigError, match="does not exist"):
        await recover(config(missing), MemoryBackend())
    assert not missing.exists()


async def test_database_without_table_is_refused_naming_it(db_path: Path) -> None:
    sqlite3.connect(db_path).execute("CREATE TABLE other (x)").connection.commit()
    backend = MemoryBackend()
    with pytest.raises(SchemaError, match="order_idempotency_records"):
        await recover(config(db_path), backend)
    assert backend.preflights == 0


async def test_database_missing_a_column_is_refused_naming_it(db_path: Path) -> None:
    conn = sqlite3.connect(db_path)
    conn.execute(
        "CREATE TABLE order_idempotency_records (idempotency_key TEXT PRIMARY KEY,"
        " request_hash TEXT NOT NULL, result_hash TEXT, created_at INTEGER NOT NULL,"
        " payload_json TEXT NOT NULL)"
    )
    conn.commit()
    with pytest.raises(SchemaError, match="status, updated_at, failure_json"):
        await recover(config(db_path), MemoryBackend())


async def test_hostile_keys_and_accounts_are_bound_not_interpolated(db_path: Path) -> None:
    hostile = [
        "'; DROP TABLE order_idempotency_records; --",
        "../../etc",
        "%2F",
        "a\x00b",
        "ключ",
        "x" * 10_000,
    ]
    make_db(db_path, [{"key": k, "payload": context("paper", "submit", k[:50])} for k in hostile])
    report = await recover(config(db_path), MemoryBackend())
    assert report.cleared_missing == len(hostile)
    assert rows_by_key(db_path) == {}
    conn = sqlite3.connect(db_path)
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


async def test_rows_are_scanned_in_created_at_then_key_order(db_path: Path) -> None:
    make_db(
        db_path,
        [
            {"key": "b", "payload": context("paper", "submit", "DU1"), "created_at": OLD},
            {"key": "a", "payload": context("paper", "submit", "DU1"), "created_at": OLD},
            {"key": "z", "payload": context("paper", "submit", "DU1"), "created_at": OLD - 5},
        ],
    )
    backend = MemoryBackend(default=Unresolved("empty_listing"))
    await recover(config(db_path, concurrency=1, page_size=2), backend)
    assert [q.key for q in backend.queries] == ["z", "a", "b"]


async def test_outcomes_file_has_one_masked_line_per_row(db_path: Path, tmp_path: Path) -> None:
    make_db(
        db_path,
        [
            {"key": "a", "payload": context("live", "submit", "U7654321")},
            {"key": "b", "payload": "{}"},
        ],
    )
    out = tmp_path / "outcomes.jsonl"
    backend = MemoryBackend({("U7654321", "a"): Found(BrokerOrder("U7654321", "9", "Filled"))})
    await recover(config(db_path, outcomes=out), backend)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert {line["key"]: line["decision"] for line in lines} == {"a": "complete", "b": "unresolved"}
    assert "U7654321" not in out.read_text()
    assert lines[[x["key"] for x in lines].index("a")]["account"] == "U7***321"
    assert out.stat().st_mode & 0o777 == 0o600


async def test_new_rows_inserted_by_gateway_during_the_run_are_skipped(db_path: Path) -> None:
    make_db(
        db_path, [{"key": f"k{i}", "payload": context("paper", "submit", "DU1")} for i in range(5)]
    )

    class InsertingBackend(MemoryBackend):
        async def lookup(self, query):  # type: ignore[no-untyped-def]
            if query.key == "k0":
                conn = sqlite3.connect(db_path)
                add_rows(
                    conn,
                    [
                        {
                            "key": "fresh",
                            "payload": context("paper", "submit", "DU1"),
                            "created_at": int(NOW),
                        }
                    ],
                )
                conn.commit()
                conn.close()
            return Absent()

    # The clock is pinned: the ages are relative to NOW, however late in the suite this runs.
    report = await recover(
        config(db_path, concurrency=1, page_size=2, clock=lambda: NOW), InsertingBackend()
    )
    assert report.cleared_missing == 5
    assert report.skipped_reasons == {"too_recent": 1}
    assert set(rows_by_key(db_path)) == {"fresh"}


_CHILD = """
import resource, sys, trio
from pathlib import Path
from ibkr_recover import MemoryBackend, RunConfig, recover
from ibkr_recover import _store

pages = []
original = _store.Store.read_page
def spy(self, after, limit):
    page = original(self, after, limit)
    pages.append(len(page))
    return page
_store.Store.read_page = spy
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
config = RunConfig(db=Path(sys.argv[1]), page_size=1000, batch_size=2000)
report = trio.run(recover, config, MemoryBackend(record=False))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(report.cleared_missing, max(pages), len(pages), (after - before) // 1024)
"""


def test_200k_rows_go_through_with_one_page_in_memory(db_path: Path) -> None:
    make_db(db_path)
    conn = sqlite3.connect(db_path)
    payload = context("paper", "submit", "DU1234567")
    conn.executemany(
        "INSERT INTO order_idempotency_records"
        " VALUES (?, ?, NULL, ?, ?, 'pending_writer', ?, NULL)",
        ((f"key-{i:07d}", f"hash-{i}", OLD, payload, OLD) for i in range(200_000)),
    )
    conn.commit()
    conn.close()
    # A child process, so that the peak RSS measured is this run's alone.
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, str(db_path)], capture_output=True, text=True, check=True
    )
    cleared, largest_page, pages, grown_mib = map(int, child.stdout.split())
    assert cleared == 200_000
    assert largest_page == 1000
    assert pages == 201
    # All 200k rows held at once would take well over 100 MiB; one page and the channels a few.
    assert grown_mib < 40, grown_mib
    assert rows_by_key(db_path) == {}


async def test_flush_interval_commits_a_partial_batch(db_path: Path) -> None:
    make_db(
        db_path, [{"key": f"k{i}", "payload": context("paper", "submit", "DU1")} for i in range(3)]
    )
    seen: list[int] = []

    class SlowTail(MemoryBackend):
        async def lookup(self, query):  # type: ignore[no-untyped-def]
            if query.key == "k2":
                await trio.sleep(0.5)
                # The first two were decided long enough ago to be committed by now.
                seen.append(len(rows_by_key(db_path)))
            return Absent()

    report = await recover(config(db_path, concurrency=1, flush_interval=0.05), SlowTail())
    assert report.cleared_missing == 3
    assert seen == [1]


async def test_backup_is_a_consistent_copy_from_before_the_first_write(
    db_path: Path, tmp_path: Path
) -> None:
    make_db(
        db_path, [{"key": f"k{i}", "payload": context("paper", "submit", "DU1")} for i in range(10)]
    )
    before = dump(db_path)
    backup = tmp_path / "backup.db"
    report = await recover(config(db_path, backup=backup), MemoryBackend())
    assert report.cleared_missing == 10
    assert rows_by_key(db_path) == {}
    assert dump(backup, with_scan_index=True) == before
    conn = sqlite3.connect(backup)
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    conn.close()
    assert backup.stat().st_mode & 0o777 == 0o600


async def test_backup_never_overwrites_an_existing_file(db_path: Path, tmp_path: Path) -> None:
    make_db(db_path, [{"key": "k", "payload": context("paper", "submit", "DU1")}])
    backup = tmp_path / "backup.db"
    backup.write_text("precious")
    backend = MemoryBackend()
    with pytest.raises(ConfigError, match="already exists"):
        await recover(config(db_path, backup=backup), backend)
    assert backup.read_text() == "precious"
    assert backend.preflights == 0
    assert "k" in rows_by_key(db_path)


async def test_two_concurrent_runs_cannot_both_write(db_path: Path) -> None:
    make_db(
        db_path, [{"key": f"k{i}", "payload": context("paper", "submit", "DU1")} for i in range(20)]
    )
    second_error: list[BaseException] = []

    class SecondRunInside(MemoryBackend):
        async def lookup(self, query):  # type: ignore[no-untyped-def]
            if query.key == "k0":
                try:
                    await recover(config(db_path), MemoryBackend())
                except StorageError as exc:
                    second_error.append(exc)
            return Absent()

    report = await recover(config(db_path, concurrency=1), SecondRunInside())
    assert report.cleared_missing == 20
    assert len(second_error) == 1
    assert "another ibkr-recover run" in str(second_error[0])


class _Listings(MemoryBackend):
    """A broker whose lookups need a per-account answer that comes in when its gate opens."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(default=Found(BrokerOrder("DU1", "1", "Filled")), **kwargs)  # type: ignore[arg-type]
        self.gates: dict[str, trio.Event] = {}
        self.fetches: list[str] = []
        self.fetch_error: BrokerFatal | None = None
        self.prefetching = False
        self.prefetched: list[str] = []
        self.prefetch_error: BrokerFatal | None = None

    def gate(self, account: str) -> trio.Event:
        return self.gates.setdefault(account, trio.Event())

    def waits_for(self, query: Query) -> str | None:
        return None if self.gate(query.account_id).is_set() else query.account_id

    async def fetch(self, shared: object) -> None:
        assert isinstance(shared, str)
        self.fetches.append(shared)
        if self.fetch_error is not None:
            raise self.fetch_error
        await self.gate(shared).wait()

    def prefetchable(self, query: Query) -> bool:
        return self.prefetching and not self.gate(query.account_id).is_set()

    async def prefetch(self, query: Query) -> None:
        await trio.lowlevel.checkpoint()
        if self.prefetch_error is not None:
            raise self.prefetch_error
        self.prefetched.append(query.key)

    async def lookup(self, query: Query) -> Answer:
        await self.gate(query.account_id).wait()
        return await super().lookup(query)


def _two_accounts(db_path: Path, slow: int, fast: int) -> None:
    rows = [
        {"key": f"s{i:04d}", "payload": context("paper", "submit", "DU-SLOW"), "created_at": OLD}
        for i in range(slow)
    ]
    rows += [
        {
            "key": f"f{i:04d}",
            "payload": context("paper", "submit", "DU-FAST"),
            "created_at": OLD + 1,
        }
        for i in range(fast)
    ]
    make_db(db_path, rows)


async def test_rows_waiting_for_a_shared_answer_do_not_hold_up_other_accounts(
    db_path: Path,
) -> None:
    # The slow account's rows come first in scan order; two workers would both wait on them.
    _two_accounts(db_path, slow=100, fast=100)
    backend = _Listings()
    backend.gate("DU-FAST").set()
    report: list[Report] = []

    async def run() -> None:
        report.append(await recover(config(db_path, concurrency=2), backend))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            while sum(q.account_id == "DU-FAST" for q in backend.queries) < 100:
                await trio.sleep(0.01)
            # Every row of the fast account is answered while the slow one is still fetching.
            assert not any(q.account_id == "DU-SLOW" for q in backend.queries)
            backend.gate("DU-SLOW").set()
    assert (report[0].scanned, report[0].completed) == (200, 200)
    assert backend.fetches == ["DU-SLOW"]
    assert_adds_up(report[0])


async def test_held_rows_beyond_the_bound_go_to_the_workers(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("ibkr_recover._pipeline.MAX_HELD", 10)
    _two_accounts(db_path, slow=50, fast=50)
    backend = _Listings()
    backend.gate("DU-FAST").set()

    async def open_gate_later() -> None:
        await trio.sleep(0.3)
        backend.gate("DU-SLOW").set()

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(open_gate_later)
            report = await recover(config(db_path, concurrency=2), backend)
    assert (report.scanned, report.completed) == (100, 100)
    assert_adds_up(report)


async def test_a_fatal_answer_while_fetching_leaves_held_rows_unresolved(db_path: Path) -> None:
    _two_accounts(db_path, slow=30, fast=0)
    backend = _Listings()
    backend.fetch_error = BrokerFatal("rate_limited", "429 Too Many Requests")
    with trio.fail_after(30):
        report = await recover(config(db_path, concurrency=2), backend)
    assert report.fatal == "rate_limited"
    assert_adds_up(report)
    assert report.unresolved_reasons == {"rate_limited": 30}
    assert backend.queries == []
    assert all(r["status"] == "pending_writer" for r in rows_by_key(db_path).values())


async def test_held_rows_are_prefetched_oldest_first_while_their_shared_answer_is_fetched(
    db_path: Path,
) -> None:
    _two_accounts(db_path, slow=40, fast=0)
    backend = _Listings()
    backend.prefetching = True

    async def open_gate_when_prefetched() -> None:
        while len(backend.prefetched) < 40:
            await trio.sleep(0.01)
        backend.gate("DU-SLOW").set()

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(open_gate_when_prefetched)
            report = await recover(config(db_path, concurrency=2), backend)
    assert backend.prefetched == [f"s{i:04d}" for i in range(40)]
    assert (report.scanned, report.completed) == (40, 40)
    assert_adds_up(report)


async def test_a_fatal_answer_to_a_prefetch_stops_the_run(db_path: Path) -> None:
    _two_accounts(db_path, slow=30, fast=0)
    backend = _Listings()
    backend.prefetching = True
    backend.prefetch_error = BrokerFatal("rate_limited", "429 Too Many Requests")
    with trio.fail_after(30):
        report = await recover(config(db_path, concurrency=2), backend)
    assert report.fatal == "rate_limited"
    assert report.unresolved_reasons == {"rate_limited": 30}
    assert backend.queries == []
    assert_adds_up(report)
