"""Helpers for tests that run the real CLI against the real simulator over a socket."""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec

from ibkr_recover.simulator._generate import Expected, generate

FAST = ("--rate", "0", "--listing-interval", "0")


def generated(tmp_path: Path, rows: int, **kwargs: Any) -> tuple[Path, Path, Expected]:
    """Generate a database, its scenario and the expected decisions; keep a pristine copy."""
    db, scenario = tmp_path / "gateway.db", tmp_path / "scenario.json"
    expected = generate(db, scenario, rows=rows, **kwargs)
    shutil.copy(db, tmp_path / "original.db")
    return db, scenario, expected


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``ibkr-recover`` in a child process, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "ibkr_recover", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


def table(path: Path) -> dict[str, dict[str, Any]]:
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return {
            row["idempotency_key"]: dict(row)
            for row in conn.execute("SELECT * FROM order_idempotency_records")
        }
    finally:
        conn.close()


def lifecycle_json(decision: Any, workflow: str, updated_at: str) -> str:
    record: dict[str, Any] = {
        "account_id": decision.account,
        "broker_order_id": decision.broker_order_id,
        "status": decision.status,
        "updated_at": updated_at,
    }
    if workflow == "live":
        record["execution_correlation"] = None
    return msgspec.json.encode(dict(sorted(record.items()))).decode()


def assert_matches_expected(db: Path, original: Path, expected: Expected) -> None:
    """Every row of ``db`` is exactly what ``expected`` says, byte for byte in payload_json."""
    before, after = table(original), table(db)
    problems: list[str] = []
    for key, row in before.items():
        decision = expected.decisions.get(key)
        got = after.get(key)
        if decision is None or decision.decision in ("unresolved", "skipped", "untouched"):
            if got != row:
                problems.append(f"{key!r}: expected untouched ({decision}), got {got}")
        elif decision.decision == "clear":
            if got is not None:
                problems.append(f"{key!r}: expected cleared, still there")
        elif decision.decision == "complete":
            if got is None or got["status"] != "submitted":
                problems.append(f"{key!r}: expected completed, got {got}")
                continue
            updated_at = (
                decision.updated_at or msgspec.json.decode(got["payload_json"])["updated_at"]
            )
            want = lifecycle_json(decision, decision.workflow, updated_at)
            if got["payload_json"] != want:
                problems.append(f"{key!r}: payload {got['payload_json']} != {want}")
            if got["result_hash"] != hashlib.sha256(want.encode()).hexdigest():
                problems.append(f"{key!r}: result_hash mismatch")
            if got["request_hash"] != row["request_hash"] or got["failure_json"] is not None:
                problems.append(f"{key!r}: request_hash or failure_json changed")
    extra = set(after) - set(before)
    if extra:
        problems.append(f"rows appeared: {sorted(extra)[:5]}")
    assert not problems, "\n".join(problems[:20]) + f"\n({len(problems)} problems)"
