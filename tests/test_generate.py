"""The scenario generator: the database, the scenario, and the oracle, checked with plain SQL."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from ibkr_recover._schema import IDEMPOTENCY_COLUMNS
from ibkr_recover.simulator import Expected, Scenario, generate, load_scenario, run_in_thread
from ibkr_recover.simulator._gateway_db import GATEWAY_TABLES, GatewayWriter, PendingBatch
from ibkr_recover.simulator._generate import main
from ibkr_recover.simulator._oracle import lifecycle_status
from ibkr_recover.simulator._scenario import demo_scenario, dump_scenario, write_scenario

NOW = 1_765_000_000

SPEC_REASONS = {
    "no_context",
    "bad_context",
    "invalid_key",
    "empty_listing",
    "incomplete_listing",
    "beyond_horizon",
    "found_in_trades_only",
    "group_legs_found",
    "unknown_account",
}


def build(tmp_path: Path, rows: int, **kwargs: Any) -> tuple[Path, Scenario, Expected]:
    db, scenario = tmp_path / "gateway.db", tmp_path / "scenario.json"
    expected = generate(db, scenario, rows=rows, now=NOW, **kwargs)
    return db, load_scenario(scenario), expected


def query(db: Path, sql: str, *args: Any) -> list[Any]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Scenario, Expected]:
    return build(tmp_path_factory.mktemp("mixed"), 3000, seed=3)


# -- the database -----------------------------------------------------------------------


def test_row_counts_by_status(mixed: tuple[Path, Scenario, Expected]) -> None:
    db, _, expected = mixed
    counts = dict(query(db, "SELECT status, count(*) FROM order_idempotency_records GROUP BY 1"))
    assert counts == {"pending_writer": 3000, "submitted": 60, "failed_after_writer": 60}
    assert expected.pending == 3000
    assert expected.untouched == 120


def test_database_is_a_gateway_database_in_wal_mode(mixed: tuple[Path, Scenario, Expected]) -> None:
    db, _, _ = mixed
    assert query(db, "PRAGMA journal_mode") == [("wal",)]
    assert query(db, "PRAGMA integrity_check") == [("ok",)]
    columns = [row[1] for row in query(db, "PRAGMA table_info(order_idempotency_records)")]
    assert tuple(columns) == IDEMPOTENCY_COLUMNS
    tables = {row[0] for row in query(db, "SELECT name FROM sqlite_master WHERE type='table'")}
    assert set(GATEWAY_TABLES) <= tables
    assert query(db, "SELECT count(*) FROM audit_events")[0][0] > 0


def test_pending_rows_look_like_the_gateways(mixed: tuple[Path, Scenario, Expected]) -> None:
    db, _, _ = mixed
    rows = query(
        db,
        "SELECT request_hash, result_hash, created_at, updated_at, failure_json "
        "FROM order_idempotency_records WHERE status = 'pending_writer'",
    )
    assert all(len(h) == 64 and int(h, 16) >= 0 for h, *_ in rows)
    assert all(result is None and failure is None for _, result, _, _, failure in rows)
    assert all(created == updated for _, _, created, updated, _ in rows)
    submitted = query(
        db,
        "SELECT payload_json, result_hash FROM order_idempotency_records WHERE status='submitted'",
    )
    assert all(hashlib.sha256(p.encode()).hexdigest() == h for p, h in submitted)
    failed = query(
        db,
        "SELECT failure_json FROM order_idempotency_records WHERE status='failed_after_writer'",
    )
    assert all(json.loads(f)["code"] for (f,) in failed)


def test_every_row_has_a_decision(mixed: tuple[Path, Scenario, Expected]) -> None:
    db, _, expected = mixed
    keys = {k for (k,) in query(db, "SELECT idempotency_key FROM order_idempotency_records")}
    assert keys == set(expected.decisions)


def test_valid_contexts_have_exactly_the_spec_shape(mixed: tuple[Path, Scenario, Expected]) -> None:
    db, _, expected = mixed
    rows = query(
        db,
        "SELECT idempotency_key, payload_json FROM order_idempotency_records "
        "WHERE status = 'pending_writer'",
    )
    for key, payload in rows:
        decision = expected.decisions[key]
        if decision.reason in ("no_context", "bad_context"):
            continue
        context = json.loads(payload)
        assert list(context)[:3] == ["workflow", "operation", "account_id"]
        assert set(context) <= {"workflow", "operation", "account_id", "broker_order_id"}
        assert context["workflow"] == decision.workflow
        assert context["operation"] == decision.operation
        assert context["account_id"] == decision.account
        assert ("broker_order_id" in context) == (
            context["operation"] != "submit" and not key.isdigit()
        )
        if context["workflow"] == "paper":
            assert context["account_id"].startswith("DU")
        else:
            assert context["account_id"][0] == "U"


# -- the expected decisions -------------------------------------------------------------


def test_counts_add_up(mixed: tuple[Path, Scenario, Expected]) -> None:
    _, _, expected = mixed
    report = expected.report
    parts = (report.completed, report.cleared_missing, report.unresolved, report.conflicts)
    assert report.scanned == sum(parts) + report.skipped
    assert sum(report.unresolved_reasons.values()) == report.unresolved
    assert Counter(d.decision for d in expected.decisions.values()) == expected.counts


def test_mixed_covers_every_rule(mixed: tuple[Path, Scenario, Expected]) -> None:
    _, _, expected = mixed
    assert set(expected.report.unresolved_reasons) == SPEC_REASONS
    decisions = expected.decisions.values()
    combos = {(d.workflow, d.operation, d.decision) for d in decisions}
    for wf in ("paper", "live"):
        for op in ("submit", "cancel", "modify"):
            for decision in ("complete", "clear", "unresolved", "skipped"):
                assert (wf, op, decision) in combos
    live = {d.status for d in decisions if d.decision == "complete" and d.workflow == "live"}
    paper = {d.status for d in decisions if d.decision == "complete" and d.workflow == "paper"}
    assert live == {"submitted", "open", "pending_cancel", "filled", "cancelled", "refused"}
    assert paper == {"submitted", "open", "filled", "cancelled", "refused"}
    assert any(d.decision == "skipped" and d.reason == "too_recent" for d in decisions)


def test_status_mapping_is_the_spec_table() -> None:
    table = {
        ("PendingSubmit", "PreSubmitted", "Submitted", "WarnState"): ("open",) * 3,
        ("Filled",): ("filled",) * 3,
        ("Cancelled", "ApiCancelled"): ("cancelled",) * 3,
        ("Inactive",): ("refused",) * 3,
        ("ApiPending", "Whatever"): ("submitted", "cancelled", "open"),
    }
    for statuses, (submit, cancel, modify) in table.items():
        for status in statuses:
            for wf in ("paper", "live"):
                assert lifecycle_status(status, "submit", wf) == submit
                assert lifecycle_status(status, "cancel", wf) == cancel
                assert lifecycle_status(status, "modify", wf) == modify
    for status in ("PendingCancel", "PreCancelled"):
        for op in ("submit", "cancel", "modify"):
            assert lifecycle_status(status, op, "live") == "pending_cancel"
            assert lifecycle_status(status, op, "paper") == "open"


def test_ages_follow_the_horizons(mixed: tuple[Path, Scenario, Expected]) -> None:
    db, _, expected = mixed
    created = dict(query(db, "SELECT idempotency_key, created_at FROM order_idempotency_records"))
    for key, decision in expected.decisions.items():
        age = NOW - created[key]
        if decision.reason == "too_recent":
            assert expected.valid_until - created[key] < expected.min_age_s
        elif decision.reason == "beyond_horizon":
            assert age > expected.max_clear_age_s
        elif decision.decision != "untouched":
            assert expected.min_age_s < age
            assert age + (expected.valid_until - NOW) < expected.max_clear_age_s


def test_rows_lie_in_the_table_in_the_order_they_were_made(
    mixed: tuple[Path, Scenario, Expected],
) -> None:
    """As in a gateway's table: scanning by created_at reads the pages front to back (rows
    dated apart, too recent or beyond the horizon, aside)."""
    db, _, expected = mixed
    apart = {"too_recent", "beyond_horizon"}
    dated = [
        created
        for key, created in query(
            db,
            "SELECT idempotency_key, created_at FROM order_idempotency_records "
            "WHERE status = 'pending_writer' ORDER BY rowid",
        )
        if expected.decisions[key].reason not in apart
    ]
    assert len(dated) > 100
    assert dated == sorted(dated)


# -- the scenario agrees with the decisions ---------------------------------------------


def orders_by(scenario: Scenario) -> tuple[dict[tuple[str, str], Any], dict[int, Any]]:
    by_ref = {(a.id, o.order_ref): o for a in scenario.accounts for o in a.orders}
    by_id = {o.order_id: (a.id, o) for a in scenario.accounts for o in a.orders}
    return by_ref, by_id


def test_scenario_backs_every_decision(mixed: tuple[Path, Scenario, Expected]) -> None:
    _, scenario, expected = mixed
    by_ref, by_id = orders_by(scenario)
    trades = {(a.id, t.order_ref): t for a in scenario.accounts for t in a.trades}
    accounts = {a.id: a for a in scenario.accounts}
    for key, d in expected.decisions.items():
        if d.decision == "complete":
            assert d.broker_order_id is not None
            assert d.account is not None
            hit = by_id.get(int(d.broker_order_id))
            if hit is None:  # filled, known only from the trades
                assert trades[(d.account, key)].order_id == int(d.broker_order_id)
                assert d.status == "filled"
                continue
            account, order = hit
            assert account == d.account
            if d.operation == "submit":
                assert order.order_ref == key
                assert order.in_listing
            assert lifecycle_status(order.status, d.operation or "", d.workflow or "") == d.status
            assert d.updated_at is not None
            assert d.updated_at.endswith("Z")
        elif d.reason == "cleared_missing" and d.operation == "submit":
            assert (d.account, key) not in by_ref
            assert (d.account, key) not in trades
        elif d.reason == "unknown_account":
            assert d.account not in accounts
        elif d.reason == "empty_listing":
            assert accounts[d.account or ""].orders == []
        elif d.reason == "incomplete_listing":
            assert sum(o.in_listing for o in accounts[d.account or ""].orders) >= 1000
        elif d.reason == "group_legs_found":
            legs = {f"{key}-{leg}" for leg in ("parent", "take-profit", "stop-loss")}
            assert any((d.account, ref) in by_ref for ref in legs)
            assert (d.account, key) not in by_ref


def test_regular_listings_stay_complete(mixed: tuple[Path, Scenario, Expected]) -> None:
    _, scenario, expected = mixed
    reasons = ("empty_listing", "incomplete_listing")
    special = {d.account for d in expected.decisions.values() if d.reason in reasons}
    for account in scenario.accounts:
        if account.id not in special:
            assert 0 < sum(o.in_listing for o in account.orders) < 1000


def test_per_order_mix_costs_one_status_request_per_row(tmp_path: Path) -> None:
    _, scenario, expected = build(tmp_path, 1000, mix="per_order")
    _, by_id = orders_by(scenario)
    pending = [d for d in expected.decisions.values() if d.decision != "untouched"]
    assert {d.operation for d in pending} == {"cancel", "modify"}
    assert {d.decision for d in pending} == {"complete", "clear"}
    for d in pending:
        if d.decision == "complete":
            assert not by_id[int(d.broker_order_id or 0)][1].in_listing


def test_listing_mix_spreads_over_accounts_under_the_cap(tmp_path: Path) -> None:
    _, scenario, expected = build(tmp_path, 5000, mix="listing", accounts=2)
    pending = [d for d in expected.decisions.values() if d.decision != "untouched"]
    assert {d.operation for d in pending} == {"submit"}
    assert expected.accounts == len(scenario.accounts) > 2
    assert all(0 < sum(o.in_listing for o in a.orders) < 1000 for a in scenario.accounts)


def test_same_seed_same_files(tmp_path: Path) -> None:
    outputs = []
    for run in ("a", "b"):
        folder = tmp_path / run
        folder.mkdir()
        expected_path = folder / "e.json"
        generate(
            folder / "db", folder / "s.json", rows=500, seed=9, now=NOW, expected_path=expected_path
        )
        rows = query(folder / "db", "SELECT * FROM order_idempotency_records ORDER BY 1")
        outputs.append(((folder / "s.json").read_bytes(), (folder / "e.json").read_bytes(), rows))
    assert outputs[0] == outputs[1]
    other = generate(tmp_path / "c.db", tmp_path / "c.json", rows=500, seed=10, now=NOW)
    assert other.decisions != msgspec.json.decode(outputs[0][1], type=Expected).decisions


def test_written_scenario_is_the_dumped_one(tmp_path: Path) -> None:
    for scenario in (demo_scenario(), Scenario([]), Scenario([], selected_account="DU1")):
        write_scenario(scenario, tmp_path / "s.json")
        assert (tmp_path / "s.json").read_bytes() == dump_scenario(scenario)


def test_existing_database_is_replaced(tmp_path: Path) -> None:
    db = tmp_path / "gateway.db"
    generate(db, tmp_path / "s.json", rows=100, now=NOW)
    generate(db, tmp_path / "s.json", rows=10, now=NOW)
    assert query(db, "SELECT count(*) FROM order_idempotency_records")[0][0] == 10 + 2


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mix"):
        generate(tmp_path / "d", tmp_path / "s", rows=1, mix="huge")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rows"):
        generate(tmp_path / "d", tmp_path / "s", rows=-1)


def test_background_writer_matches_the_inline_one(tmp_path: Path) -> None:
    contents = []
    for background in (False, True):
        path = tmp_path / f"{background}.db"
        with GatewayWriter(path, background=background) as writer:
            batch = PendingBatch()
            batch.keys.extend(["", "b", "c"])
            batch.created.extend([1, 2, 3])
            batch.payloads.extend(["{}", "", '{"x":"é"}'])
            writer.pending(batch)
            writer.insert("order_groups", [("g", "DU1", "{}", 4)])
        contents.append(
            (
                query(path, "SELECT * FROM order_idempotency_records ORDER BY 1"),
                query(path, "SELECT * FROM order_groups"),
                query(path, "PRAGMA journal_mode"),
            )
        )
    assert contents[0] == contents[1]
    assert len(contents[0][0]) == 3


def write_duplicates(path: Path) -> None:
    with GatewayWriter(path, background=True) as writer:
        for _ in range(3):  # the same keys again: the second batch fails in the child
            batch = PendingBatch()
            batch.keys.extend(["a", "b"])
            batch.created.extend([1, 2])
            batch.payloads.extend(["{}", "{}"])
            writer.pending(batch)
        writer.insert("order_groups", [("g", "DU1", "{}", 4)])


def test_a_background_writer_whose_child_fails_raises_its_error(tmp_path: Path) -> None:
    """The frames after the failure are dropped, and closing reports the child's error."""
    with pytest.raises(OSError, match="IntegrityError"):
        write_duplicates(tmp_path / "dup.db")


# -- the command, and the simulator serving what was generated --------------------------


def test_command_writes_the_three_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main(["--rows", "300", "--out", str(out), "--mix", "listing", "--seed", "2"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["expected.json", "gateway.db", "scenario.json"]
    expected = json.loads((out / "expected.json").read_text())
    assert expected["mix"] == "listing"
    assert len(expected["decisions"]) == 300 + 2 * 6
    assert "rows/s" in capsys.readouterr().out


def test_simulator_serves_the_generated_orders(mixed: tuple[Path, Scenario, Expected]) -> None:
    _, scenario, expected = mixed
    with (
        run_in_thread(scenario, warmup_empty=False) as sim,
        httpx.Client(base_url=sim.base_url) as c,
    ):
        listed = set(c.get("/iserver/accounts").json()["accounts"])
        for key, d in list(expected.decisions.items())[:400]:
            if d.decision == "complete" and d.operation != "submit" and d.broker_order_id:
                body = c.get(f"/iserver/account/order/status/{d.broker_order_id}").json()
                assert body["account"] == d.account
                assert body["order_time"] == (d.updated_at or "")[2:19].translate(
                    str.maketrans("", "", "-T:")
                )
            elif d.decision == "complete" and d.updated_at is not None:
                rows = c.get("/iserver/account/orders", params={"accountId": d.account}).json()
                (row,) = [r for r in rows["orders"] if r["order_ref"] == key]
                assert str(row["orderId"]) == d.broker_order_id
            elif d.decision == "clear" and d.operation != "submit":
                context_id = key if key.isdigit() else None
                if context_id:
                    assert c.get(f"/iserver/account/order/status/{key}").status_code == 503
            elif d.reason == "unknown_account":
                assert d.account not in listed


def test_public_names() -> None:
    import ibkr_recover.simulator as simulator

    wanted = "generate Expected Decision Report MIXES run_in_thread simulate Scenario Switches"
    wanted += " Fault Pacing load_scenario SimulatorHandle start_simulator"
    assert set(simulator.__all__) >= set(wanted.split())
    for name in simulator.__all__:
        assert hasattr(simulator, name), name


def test_generate_stays_callable_after_the_command_module_is_imported(tmp_path: Path) -> None:
    import ibkr_recover.simulator
    import ibkr_recover.simulator.generate  # rebinds the package attribute to the module

    expected = ibkr_recover.simulator.generate(tmp_path / "d.db", tmp_path / "s.json", rows=5)
    assert expected.pending == 5
