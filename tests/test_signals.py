"""SIGINT and SIGTERM in the middle of a run (matrix A3, A4).

The real CLI runs in its own process (``python -m ibkr_recover``) against a slow simulator,
so that lookups are in flight and batches are being filled when the signal arrives. The run
must stop promptly with 130 (SIGINT) or 143 (SIGTERM); every committed batch is whole and
recorded in the outcomes file, nothing of a batch not committed is in the database, and a
rerun converges to the oracle.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

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

SIGNALS = [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")]


@pytest.fixture(scope="module")
def slow_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with world(tmp_path_factory.mktemp("signals"), rows=200, seed=31, latency_ms=25) as w:
        yield w


def popen(w: World, db: Path, outcomes: Path, *extra: str) -> subprocess.Popen[str]:
    """The CLI exactly as an operator starts it, in a process of its own."""
    return subprocess.Popen(
        [sys.executable, "-m", "ibkr_recover", *w.args(db, "--outcomes", str(outcomes), *extra)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def check_stopped(w: World, db: Path, outcomes: Path, stdout: str) -> set[str]:
    """Integrity, rows old-or-final, and exactly the logged batches written."""
    assert integrity(db) == "ok"
    changed = changed_rows(w.original_rows, table(db), w.decisions)
    assert_batches_whole(
        changed, logged_writes(outcomes), batch_size=w.batch_size, inside_transaction=True
    )
    if stdout.strip():
        report = json.loads(stdout)
        assert report["completed"] + report["cleared_missing"] == len(changed), report
    return changed


@pytest.mark.parametrize(("signum", "code", "word"), SIGNALS, ids=["SIGINT", "SIGTERM"])
def test_signal_mid_run_stops_with_whole_batches(
    slow_world: World, signum: int, code: int, word: str
) -> None:
    w = slow_world
    db, outcomes = w.copy(), w.outcomes_path()
    proc = popen(w, db, outcomes)
    # A few batches are committed, lookups are in flight, the next batch is filling.
    wait_until(
        lambda: len(logged_writes(outcomes)) >= 3 * w.batch_size, what="3 batches", watch=[proc]
    )
    started = time.monotonic()
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=30)
    assert time.monotonic() - started < 5, "the run did not stop promptly"
    assert proc.returncode == code, stderr
    assert word in stderr
    assert "only committed batches were written" in stderr
    assert "Traceback" not in stderr
    changed = check_stopped(w, db, outcomes, stdout)
    assert 3 * w.batch_size <= len(changed) < len(w.reference) - 10, (
        "the run was not stopped midway"
    )
    w.converge(db)


@pytest.mark.parametrize(("signum", "code", "word"), SIGNALS, ids=["SIGINT", "SIGTERM"])
def test_signal_while_a_batch_waits_for_the_write_lock(
    slow_world: World, tmp_path: Path, signum: int, code: int, word: str
) -> None:
    # The gateway holds the write lock, so the batch is in flight inside BEGIN IMMEDIATE when the
    # signal arrives. When the lock frees, that batch commits whole (or not at all); then the
    # run stops.
    w = slow_world
    db, outcomes = w.copy(), w.outcomes_path()
    lock = GatewayLock(db, tmp_path, seconds=1.5)
    proc = popen(w, db, outcomes, "--busy-timeout", "10")
    try:
        lock.take(outcomes, rows=2 * w.batch_size, watch=[proc])
        time.sleep(0.4)  # the next batch is full and waiting for the lock
        logged_before = logged_writes(outcomes)
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        stop(lock.process)
    assert proc.returncode == code, stderr
    assert word in stderr
    assert "Traceback" not in stderr
    changed = check_stopped(w, db, outcomes, stdout)
    # The batch that waited was committed once the gateway let go, and logged.
    assert len(changed) > len(logged_before), "the batch waiting for the lock was dropped"
    w.converge(db)


def test_signal_during_the_preflight_writes_nothing(slow_world: World) -> None:
    w = slow_world
    db, outcomes = w.copy(), w.outcomes_path()
    seen = w.sim.stats().by_endpoint.get("auth", 0)
    proc = popen(w, db, outcomes)
    # The broker's auth status is being asked: the database is open, nothing is decided yet.
    wait_until(
        lambda: w.sim.stats().by_endpoint.get("auth", 0) > seen, what="the preflight", watch=[proc]
    )
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 143, stderr
    assert table(db) == table(w.original)
    assert integrity(db) == "ok"
    assert not logged_writes(outcomes)


@pytest.mark.parametrize(("signum", "code", "word"), SIGNALS, ids=["SIGINT", "SIGTERM"])
def test_signal_while_the_lock_outlasts_the_retries_still_exits_as_interrupted(
    slow_world: World, tmp_path: Path, signum: int, code: int, word: str
) -> None:
    w = slow_world
    db, outcomes = w.copy(), w.outcomes_path()
    lock = GatewayLock(db, tmp_path, seconds=2.2)
    proc = popen(w, db, outcomes, "--busy-timeout", "0.3")
    try:
        lock.take(outcomes, rows=2 * w.batch_size, watch=[proc])
        time.sleep(0.3)
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        stop(lock.process)
    # The signal decides the exit code; the lock that outlasted the retries is still told.
    assert proc.returncode == code, stderr
    assert word in stderr
    assert "Traceback" not in stderr
    assert "another process holds the write lock" in stderr
    check_stopped(w, db, outcomes, stdout)
    w.converge(db)


def test_hung_broker_is_cut_by_the_request_deadline(slow_world: World) -> None:
    """A4: the status endpoint never answers. The per-request deadline fires, a few retries
    later the run stops with exit 3, and nothing it could not confirm is written."""
    w = slow_world
    db = w.copy()
    w.sim.configure(faults=[{"kind": "hang", "endpoint": "status"}])
    try:
        started = time.monotonic()
        result = w.server.run(*w.args(db, "--timeout", "0.2"), timeout=60)
        elapsed = time.monotonic() - started
    finally:
        w.sim.configure(faults=[])
    assert result.returncode == 3, result.stderr
    assert elapsed < 15, f"a hung broker held the run for {elapsed:.1f} s"
    report = json.loads(result.stdout)
    assert report["fatal"] == "unavailable"
    assert report["unresolved_reasons"].get("timeout", 0) >= 1
    assert integrity(db) == "ok"
    changed = changed_rows(w.original_rows, table(db), w.decisions)
    assert report["completed"] + report["cleared_missing"] == len(changed)
    w.converge(db)
