"""Post-conditions of SPEC §9 shared by the crash, signal, gateway and storage tests.

The oracle is the generator's: every pending row ends either untouched or in the exact state
SPEC §3 prescribes for it (``simtools.assert_matches_expected`` for a finished run). After a
kill the rule is weaker but just as exact per row: each row is in its original state or in its
end state, nothing in between and nothing else; and the batches are all-or-nothing, which the
outcomes file lets us check (it records a batch right after its COMMIT).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec

import rel_gateway
from ibkr_recover.simulator import Decision
from simtools import lifecycle_json, table

Rows = dict[str, dict[str, Any]]


def integrity(db: Path) -> str:
    conn = sqlite3.connect(db)
    try:
        return "; ".join(row[0] for row in conn.execute("PRAGMA integrity_check"))
    finally:
        conn.close()


def is_final(decision: Decision, before: dict[str, Any], after: dict[str, Any] | None) -> bool:
    """Whether ``after`` is the end state the oracle prescribes for a row that was ``before``."""
    if decision.decision == "clear":
        return after is None
    if decision.decision != "complete" or after is None or after["status"] != "submitted":
        return False
    payload = msgspec.json.decode(after["payload_json"])
    # Without a broker time the payload carries the run's own time; the rest is exact.
    updated_at = decision.updated_at or payload.get("updated_at")
    if not isinstance(updated_at, str):
        return False
    want = lifecycle_json(decision, decision.workflow or "", updated_at)
    return (
        after["payload_json"] == want
        and after["result_hash"] == hashlib.sha256(want.encode()).hexdigest()
        and after["request_hash"] == before["request_hash"]
        and after["created_at"] == before["created_at"]
        and after["failure_json"] is None
        and isinstance(after["updated_at"], int)
    )


def changed_rows(
    original: Rows,
    now: Rows,
    decisions: dict[str, Decision],
    *,
    foreign: frozenset[str] = frozenset(),
) -> set[str]:
    """Keys of ``original`` the tool changed; fails on any row in neither its old nor its end state.

    ``foreign`` keys were changed by the gateway stand-in and are left to the caller.
    """
    problems: list[str] = []
    changed: set[str] = set()
    for key, before in original.items():
        if key in foreign:
            continue
        after = now.get(key)
        if after == before:
            continue
        decision = decisions.get(key)
        if decision is not None and is_final(decision, before, after):
            changed.add(key)
        else:
            problems.append(f"{key!r}: {before} -> {after} (oracle {decision})")
    appeared = set(now) - set(original) - foreign
    if appeared:
        problems.append(f"rows appeared: {sorted(appeared)[:5]}")
    assert not problems, "\n".join(problems[:10]) + f"\n({len(problems)} rows off)"
    return changed


def logged_writes(outcomes: Path) -> set[str]:
    """Keys the outcomes file says were completed or cleared (written right after each COMMIT)."""
    if not outcomes.exists():
        return set()
    keys: set[str] = set()
    for line in outcomes.read_bytes().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a line cut short by the kill
        if entry["decision"] in ("complete", "clear"):
            keys.add(entry["key"])
    return keys


def assert_batches_whole(
    changed: set[str], logged: set[str], *, batch_size: int, inside_transaction: bool
) -> None:
    """The rows a killed run changed are its logged batches, plus at most one batch not yet logged.

    Killed inside a transaction (after ``BEGIN IMMEDIATE`` or between its statements), the open
    batch must have left no trace at all: the changed rows are exactly the logged ones.
    """
    assert logged <= changed, (
        f"logged as written but not in the database: {sorted(logged - changed)[:5]}"
    )
    unlogged = changed - logged
    if inside_transaction:
        assert not unlogged, f"part of an open batch survived the kill: {sorted(unlogged)[:5]}"
    else:
        assert len(unlogged) <= batch_size, f"{len(unlogged)} rows written but never logged"


def normalised(rows: Rows, decisions: dict[str, Decision]) -> Rows:
    """``rows`` with the run's own clock taken out, to compare two runs made at different times."""
    out: Rows = {}
    for key, row in rows.items():
        row = dict(row)
        decision = decisions.get(key)
        if (
            decision is not None
            and decision.decision == "complete"
            and row["status"] == "submitted"
        ):
            row["updated_at"] = "<run time>"
            if decision.updated_at is None:
                payload = msgspec.json.decode(row["payload_json"])
                payload["updated_at"] = "<run time>"
                row["payload_json"] = json.dumps(payload, sort_keys=True)
                row["result_hash"] = "<hash of payload>"
        out[key] = row
    return out


def report_matches_database(
    report: dict[str, Any], changed: set[str], decisions: dict[str, Decision]
) -> None:
    """A printed report claims exactly the rows that are written, no more."""
    completed = sum(1 for k in changed if decisions[k].decision == "complete")
    cleared = len(changed) - completed
    assert (report["completed"], report["cleared_missing"]) == (completed, cleared), report
    parts = ("completed", "cleared_missing", "unresolved", "conflicts", "skipped")
    assert report["scanned"] == sum(report[p] for p in parts), report
    assert report["unresolved"] == sum(report["unresolved_reasons"].values()), report


__all__ = [
    "Rows",
    "assert_batches_whole",
    "changed_rows",
    "integrity",
    "is_final",
    "logged_writes",
    "normalised",
    "report_matches_database",
    "GatewayLock",
    "stop",
    "table",
    "wait_until",
]


def wait_until(
    predicate: Callable[[], object],
    *,
    what: str,
    timeout: float = 20.0,
    watch: Sequence[subprocess.Popen[Any]] = (),
) -> None:
    """Poll ``predicate``; fail naming ``what``, or the watched process that ended meanwhile."""
    deadline = time.monotonic() + timeout
    while not predicate():
        for proc in watch:
            if proc.poll() is not None:
                _, err = proc.communicate() if proc.stderr is not None else (None, "")
                raise AssertionError(
                    f"waiting for {what}: {proc.args!r} ended first with {proc.returncode}: {err}"
                )
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


def stop(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """Let a helper process end on its own, or kill it: a failed test must not hang on it."""
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class GatewayLock:
    """The gateway stand-in (another process) holding the write lock for ``seconds`` (B2)."""

    def __init__(self, db: Path, workdir: Path, *, seconds: float) -> None:
        self._go, self._ready = workdir / "go", workdir / "ready"
        self.process, _ = rel_gateway.start(
            "hold", db, workdir, go=str(self._go), ready=str(self._ready), seconds=seconds
        )

    def take(
        self,
        outcomes: Path | None = None,
        *,
        rows: int = 0,
        watch: Sequence[subprocess.Popen[Any]] = (),
    ) -> None:
        """Take the lock once ``rows`` rows are logged written; return when it is held."""
        if outcomes is not None and rows:
            wait_until(
                lambda: len(logged_writes(outcomes)) >= rows,
                what=f"{rows} rows written",
                watch=watch,
            )
        self._go.touch()
        wait_until(self._ready.exists, what="the gateway's lock", watch=[self.process])
