"""Dry runs and reruns (matrix D5, D6), and a randomized state machine over all of it (D7).

The state machine interleaves a gateway writing to the database (completing, deleting and
inserting rows, also while a run is in progress), a broker that is healthy or has one of a
range of faults for each run, runs of the real CLI that are killed at a checkpoint or at a
random time, and clean reruns. After every step it checks SPEC §9: the file is intact; no row
was cleared or completed other than as the oracle says (so never cleared while the broker has
the order); nothing the gateway wrote was overwritten; every printed report adds up and claims
only what is written; the broker never got a write. At the end of every sequence a clean rerun
converges and one more rerun writes nothing. ``derandomize=True``: the same sequences are
tried on every run, and a failing one is printed step by step (kills at random times make a
replay close to, not exactly, the original).
"""

from __future__ import annotations

import json
import random
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)

import rel_gateway
from rel_checks import changed_rows, integrity, logged_writes, stop, table
from rel_world import World, checkpoint_hit, world
from simtools import assert_matches_expected

# -- D5, D6 -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def state_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with world(tmp_path_factory.mktemp("state"), rows=60, seed=61, batch_size=5) as w:
        yield w


def decisions_by_key(outcomes: Path) -> dict[str, tuple[str, str]]:
    lines = [json.loads(line) for line in outcomes.read_bytes().splitlines()]
    return {line["key"]: (line["decision"], line["reason"]) for line in lines}


def test_dry_run_decides_every_row_as_the_real_run_does_and_writes_nothing(
    state_world: World, tmp_path: Path
) -> None:
    w = state_world
    db, dry_outcomes = w.copy(), w.outcomes_path()
    image = db.read_bytes()
    # The gateway holds the write lock throughout: a dry run never needs it.
    go, ready = tmp_path / "go", tmp_path / "ready"
    go.touch()
    gateway, _ = rel_gateway.start("hold", db, tmp_path, go=str(go), ready=str(ready), seconds=3)
    try:
        _wait_for(ready)
        dry = w.server.run(
            *w.args(db, "--dry-run", "--busy-timeout", "0.1", "--outcomes", str(dry_outcomes))
        )
    finally:
        stop(gateway)
    assert dry.returncode == 1, dry.stderr
    assert db.read_bytes() == image
    assert not Path(f"{db}-wal").exists() or Path(f"{db}-wal").stat().st_size == 0
    real_db, real_outcomes = w.copy("real.db"), w.outcomes_path()
    real = w.server.run(*w.args(real_db, "--outcomes", str(real_outcomes)))
    dry_report, real_report = json.loads(dry.stdout), json.loads(real.stdout)
    assert dry_report["dry_run"] is True
    for field in ("elapsed_s", "rows_per_s", "dry_run"):
        dry_report.pop(field), real_report.pop(field)
    assert dry_report == real_report
    assert decisions_by_key(dry_outcomes) == decisions_by_key(real_outcomes)


def test_rerun_after_a_complete_run_writes_nothing_and_reports_only_what_is_left(
    state_world: World,
) -> None:
    w = state_world
    db = w.copy()
    first = json.loads(w.server.run(*w.args(db)).stdout)
    assert_matches_expected(db, w.original, w.expected)
    image, outcomes = db.read_bytes(), w.outcomes_path()
    again = w.server.run(*w.args(db, "--outcomes", str(outcomes)))
    second = json.loads(again.stdout)
    assert db.read_bytes() == image, "the rerun changed the file"
    assert (second["completed"], second["cleared_missing"], second["conflicts"]) == (0, 0, 0)
    # What is left is exactly what the first run left: its unresolved and skipped rows.
    assert second["unresolved_reasons"] == first["unresolved_reasons"]
    assert second["skipped_reasons"] == first["skipped_reasons"]
    assert second["scanned"] == first["unresolved"] + first["skipped"]
    assert {d for d, _ in decisions_by_key(outcomes).values()} <= {"unresolved", "skipped"}
    # And a dry run after it agrees.
    dry = json.loads(w.server.run(*w.args(db, "--dry-run")).stdout)
    assert (dry["completed"], dry["cleared_missing"]) == (0, 0)
    assert db.read_bytes() == image


def _wait_for(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.005)


# -- D7: the state machine ---------------------------------------------------------------------

#: Broker faults the machine switches on (one at a time); each leaves some rows unresolved,
#: none may ever lead to a wrong write.
FAULTS: dict[str, dict[str, Any]] = {
    "status 5xx": {"faults": [{"kind": "error", "endpoint": "status", "probability": 0.5}]},
    "listing malformed": {"faults": [{"kind": "malformed", "endpoint": "listing"}]},
    "trades truncated": {"faults": [{"kind": "truncated", "endpoint": "trades"}]},
    "wrong order": {"faults": [{"kind": "wrong_order", "endpoint": "status", "probability": 0.5}]},
    "wrong account": {"faults": [{"kind": "wrong_account", "endpoint": "listing"}]},
    "error in a 200": {"faults": [{"kind": "error_200", "endpoint": "status", "probability": 0.5}]},
    "session lost": {"session_lost_after": 12},
    "not authenticated": {"unauthenticated": True},
}
NO_FAULTS: dict[str, Any] = {"faults": [], "session_lost_after": None, "unauthenticated": False}
BROKER = st.sampled_from(["healthy", *sorted(FAULTS)])

_GATEWAY_COMPLETE = (
    "UPDATE order_idempotency_records SET status = 'submitted', payload_json = ?,"
    " result_hash = 'gateway', updated_at = ? WHERE idempotency_key = ? AND status = 'pending_writer'"
)
_GATEWAY_DELETE = (
    "DELETE FROM order_idempotency_records WHERE idempotency_key = ? AND status = 'pending_writer'"
)


class Recovery(RuleBasedStateMachine):
    """One database, one gateway, one broker; the tool run against them again and again."""

    w: World  # set by the test below, once per module
    #: How often each kind of step ran, over all sequences (the test checks all of them did).
    steps: ClassVar[Counter[str]] = Counter()

    def __init__(self) -> None:
        super().__init__()
        self.w.sim.configure(NO_FAULTS)
        self.db = self.w.copy("machine.db")
        self.completed_by_gateway: dict[str, str] = {}
        self.deleted_by_gateway: set[str] = set()
        self.young: dict[str, dict[str, Any]] = {}
        self.inserted = 0

    # -- the gateway --------------------------------------------------------------------

    def _pending(self) -> list[str]:
        rows = table(self.db)
        return sorted(
            k
            for k, row in rows.items()
            if row["status"] == "pending_writer" and k in self.w.original_rows and k.strip()
        )

    def _gateway_write(self, conn: sqlite3.Connection, key: str, delete: bool) -> None:
        if delete:
            if conn.execute(_GATEWAY_DELETE, (key,)).rowcount:
                self.deleted_by_gateway.add(key)
        else:
            payload = rel_gateway.GATEWAY_PAYLOAD % key
            if conn.execute(_GATEWAY_COMPLETE, (payload, int(time.time()), key)).rowcount:
                self.completed_by_gateway[key] = payload

    @rule(pick=st.integers(0, 10_000), delete=st.booleans())
    def gateway_finishes_a_row(self, pick: int, delete: bool) -> None:
        self.steps["gateway_finishes_a_row"] += 1
        # An index, not a key: what is pending depends on where earlier kills landed, and a
        # draw that depends on it would not replay.
        pending = self._pending()
        if not pending:
            return
        key = pending[pick % len(pending)]
        conn = sqlite3.connect(self.db, timeout=30, isolation_level=None)
        try:
            self._gateway_write(conn, key, delete)
        finally:
            conn.close()

    @rule(count=st.integers(1, 3))
    def gateway_starts_new_calls(self, count: int) -> None:
        self.steps["gateway_starts_new_calls"] += 1
        conn = sqlite3.connect(self.db, timeout=30)
        now = int(time.time())
        for _ in range(count):
            self.inserted += 1
            key = f"young-{self.inserted}"
            conn.execute(
                "INSERT INTO order_idempotency_records (idempotency_key, request_hash,"
                " created_at, payload_json, status, updated_at)"
                " VALUES (?, 'h', ?, ?, 'pending_writer', ?)",
                (key, now, '{"workflow":"live","operation":"cancel","account_id":"U1"}', now),
            )
        conn.commit()
        conn.close()
        rows = table(self.db)
        self.young.update({k: rows[k] for k in rows if k.startswith("young-")})

    # -- the tool -----------------------------------------------------------------------

    def _run(
        self,
        fault: str,
        crash_at: int | None = None,
        kill_after: float | None = None,
        race: int = 0,
    ) -> None:
        # The broker as it is for this run: healthy, or with one kind of fault.
        self.w.sim.reset(switches=True)
        self.w.sim.configure({**NO_FAULTS, **FAULTS.get(fault, {})})
        before, outcomes = table(self.db), self.w.outcomes_path()
        child = self.w.start(self.db, outcomes, crash_at=crash_at)
        raced = 0
        if race:
            # The gateway finishes rows while the run is resolving them: once lookups go out,
            # the run has read its page, and will write rows the gateway is writing too.
            deadline = time.monotonic() + 10
            while self.w.sim.stats().requests < 3 and child.poll() is None:
                assert time.monotonic() < deadline, "the run never started its lookups"
                time.sleep(0.002)
            conn = sqlite3.connect(self.db, timeout=30, isolation_level=None)
            rng = random.Random(race)
            for key in rng.sample(self._pending(), min(race, len(self._pending()))):
                time.sleep(rng.uniform(0.0, 0.03))
                count = len(self.completed_by_gateway) + len(self.deleted_by_gateway)
                self._gateway_write(conn, key, delete=rng.random() < 0.3)
                raced += len(self.completed_by_gateway) + len(self.deleted_by_gateway) - count
            conn.close()
        if kill_after is not None:
            time.sleep(kill_after)
            child.kill()
        result = child.wait(60)
        assert result.killed or result.returncode in (0, 1, 3), result.stderr
        if crash_at is not None and result.killed:
            assert checkpoint_hit(result) is not None, result.stderr
        assert "Traceback" not in result.stderr, result.stderr
        now = table(self.db)
        foreign = self._foreign()
        changed = {k for k, row in before.items() if k not in foreign and now.get(k) != row}
        logged = logged_writes(outcomes)
        assert logged <= changed | set(self.completed_by_gateway) | self.deleted_by_gateway
        assert len(changed - logged) <= self.w.batch_size
        if result.stdout.strip():
            report = json.loads(result.stdout)
            parts = ("completed", "cleared_missing", "unresolved", "conflicts", "skipped")
            assert report["scanned"] == sum(report[p] for p in parts), report
            assert report["completed"] + report["cleared_missing"] == len(changed), report
            assert report["conflicts"] <= raced, report
            assert report["skipped_reasons"].get("too_recent", 0) >= len(self.young), report

    @rule(fault=BROKER)
    def run_to_the_end(self, fault: str) -> None:
        self.steps["run_to_the_end"] += 1
        self.steps[fault] += 1
        self._run(fault)

    @rule(fault=BROKER, k=st.integers(1, 120))
    def run_killed_at_a_checkpoint(self, fault: str, k: int) -> None:
        self.steps["run_killed_at_a_checkpoint"] += 1
        self.steps[fault] += 1
        self._run(fault, crash_at=k)

    @rule(fault=BROKER, after=st.floats(0.0, 0.4))
    def run_killed_at_a_random_time(self, fault: str, after: float) -> None:
        self.steps["run_killed_at_a_random_time"] += 1
        self.steps[fault] += 1
        self._run(fault, kill_after=after)

    @rule(fault=BROKER, race=st.integers(1, 6))
    def run_beside_the_gateway(self, fault: str, race: int) -> None:
        self.steps["run_beside_the_gateway"] += 1
        self.steps[fault] += 1
        self._run(fault, race=race)

    # -- SPEC §9 after every step -------------------------------------------------------

    def _foreign(self) -> frozenset[str]:
        return frozenset(self.completed_by_gateway) | self.deleted_by_gateway | set(self.young)

    @invariant()
    def file_is_intact(self) -> None:
        assert integrity(self.db) == "ok"

    @invariant()
    def every_row_is_untouched_or_as_the_oracle_says(self) -> None:
        # Cleared only when the broker authoritatively has no such order; completed only
        # with the broker's answer: never anything else.
        changed_rows(
            self.w.original_rows, table(self.db), self.w.decisions, foreign=self._foreign()
        )

    @invariant()
    def the_gateways_writes_stand(self) -> None:
        rows = table(self.db)
        for key, payload in self.completed_by_gateway.items():
            assert rows[key]["payload_json"] == payload
            assert rows[key]["result_hash"] == "gateway"
        assert self.deleted_by_gateway.isdisjoint(rows)
        for key, row in self.young.items():
            assert rows[key] == row, f"{key} is younger than --min-age, yet was touched"

    @invariant()
    def the_broker_never_got_a_write(self) -> None:
        assert self.w.sim.stats().writes == 0

    def teardown(self) -> None:
        # With the broker healthy again, a clean run finishes the job; then nothing is left.
        self.w.sim.reset(switches=True)
        self.w.sim.configure(NO_FAULTS)
        result = self.w.server.run(*self.w.args(self.db), timeout=60)
        assert result.returncode in (0, 1), result.stderr
        rows = table(self.db)
        changed_rows(self.w.original_rows, rows, self.w.decisions, foreign=self._foreign())
        for key, decision in self.w.decisions.items():
            if key in self._foreign() or decision.decision not in ("complete", "clear"):
                continue
            assert rows.get(key) != self.w.original_rows[key], f"{key} was never resolved"
        image = self.db.read_bytes()
        again = json.loads(self.w.server.run(*self.w.args(self.db), timeout=60).stdout)
        assert (again["completed"], again["cleared_missing"], again["conflicts"]) == (0, 0, 0)
        assert self.db.read_bytes() == image


def test_state_machine_keeps_spec_9_invariants(state_world: World) -> None:
    Recovery.w = state_world
    Recovery.steps.clear()
    run_state_machine_as_test(
        Recovery,
        settings=settings(
            max_examples=12,
            stateful_step_count=10,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
    assert set(Recovery.steps) >= {
        "gateway_finishes_a_row",
        "gateway_starts_new_calls",
        "run_to_the_end",
        "run_killed_at_a_checkpoint",
        "run_killed_at_a_random_time",
        "run_beside_the_gateway",
        "healthy",
    }, Recovery.steps
    faults_seen = set(Recovery.steps) & set(FAULTS)
    assert len(faults_seen) >= len(FAULTS) // 2, Recovery.steps
