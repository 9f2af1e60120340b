"""The command line as a user runs it: a real process, real files."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import context, make_db

OPTIONS = [
    "base-url",
    "concurrency",
    "rate",
    "listing-interval",
    "batch-size",
    "min-age",
    "max-clear-age",
    "trust-empty-listing",
    "dry-run",
    "json",
    "outcomes",
    "cacert",
    "insecure",
    "timeout",
]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "ibkr_recover", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=60,
    )


def test_top_level_help_lists_commands() -> None:
    result = run("--help")
    assert result.returncode == 0
    for command in ("recover", "pending"):
        assert command in result.stdout


def test_recover_help_lists_every_option_with_its_environment_variable() -> None:
    result = run("recover", "--help")
    assert result.returncode == 0
    text = re.sub(r"\s+", " ", result.stdout)
    for option in OPTIONS:
        assert f"--{option}" in text
        assert f"IBKR_RECOVER_{option.upper().replace('-', '_')}" in text


def test_missing_database_exits_2_and_creates_no_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    result = run("recover", str(missing))
    assert result.returncode == 2
    assert "does not exist" in result.stderr
    assert not missing.exists()
    assert list(tmp_path.iterdir()) == []


def test_database_without_the_table_exits_2_naming_it(tmp_path: Path) -> None:
    db = tmp_path / "other.db"
    sqlite3.connect(db).execute("CREATE TABLE t (x)").connection.commit()
    result = run("recover", str(db))
    assert result.returncode == 2
    assert "order_idempotency_records" in result.stderr


def test_not_a_database_exits_4(tmp_path: Path) -> None:
    db = tmp_path / "garbage.db"
    db.write_bytes(b"this is not sqlite" * 100)
    result = run("recover", str(db))
    assert result.returncode == 4
    assert "not a database" in result.stderr


def test_bad_option_value_exits_2(db_path: Path) -> None:
    make_db(db_path)
    result = run("recover", str(db_path), "--concurrency", "0")
    assert result.returncode == 2


def test_environment_variable_sets_an_option(db_path: Path) -> None:
    make_db(db_path)
    result = run("recover", str(db_path), env={"IBKR_RECOVER_CONCURRENCY": "-3"})
    assert result.returncode == 2
    assert "concurrency" in (result.stderr + result.stdout).lower()


def test_pending_json_agrees_with_sql_counts(db_path: Path) -> None:
    rows = []
    for i in range(30):
        workflow = ("paper", "live")[i % 2]
        operation = ("submit", "cancel", "modify")[i % 3]
        status = ("pending_writer", "pending_writer", "submitted", "failed_after_writer")[i % 4]
        payload = context(workflow, operation, f"DU{1000000 + i % 3}", str(i))
        rows.append({"key": f"k{i}", "payload": payload, "status": status})
    rows.append({"key": "noctx", "payload": "{}"})
    rows.append({"key": "badctx", "payload": "{oops"})
    rows.append(
        {
            "key": "young",
            "payload": context("paper", "submit", "DU1"),
            "created_at": int(time.time()),
        }
    )
    make_db(db_path, rows)

    result = run("pending", str(db_path), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)

    conn = sqlite3.connect(db_path)
    by_status = dict(
        conn.execute("SELECT status, count(*) FROM order_idempotency_records GROUP BY status")
    )
    assert summary["by_status"] == by_status
    assert summary["pending"] == by_status["pending_writer"]
    expected_groups = {
        (status, workflow, operation): count
        for status, workflow, operation, count in conn.execute(
            "SELECT status, CASE WHEN json_valid(payload_json) THEN"
            " json_extract(payload_json, '$.workflow') END, CASE WHEN json_valid(payload_json)"
            " THEN json_extract(payload_json, '$.operation') END, count(*)"
            " FROM order_idempotency_records GROUP BY 1, 2, 3"
        )
    }
    got_groups = {
        (g["status"], g["workflow"], g["operation"]): g["count"] for g in summary["groups"]
    }
    assert got_groups == expected_groups
    assert sum(summary["pending_by_age"].values()) == summary["pending"]
    assert summary["pending_by_age"]["lt_min_age"] == 1
    assert "DU1000000" not in result.stdout
    assert sum(summary["pending_by_account"].values()) == summary["pending"]


def test_pending_table_on_a_terminal_is_readable(db_path: Path) -> None:
    make_db(db_path, [{"key": "a", "payload": context("live", "submit", "U7654321")}])
    result = run("pending", str(db_path))
    assert result.returncode == 0
    assert "1 pending_writer row(s) of 1" in result.stdout
    assert "U7***321" in result.stdout
    assert "U7654321" not in result.stdout


@pytest.mark.parametrize("command", ["recover", "pending"])
def test_directory_instead_of_database_exits_2(tmp_path: Path, command: str) -> None:
    result = run(command, str(tmp_path))
    assert result.returncode == 2
    assert "not a file" in result.stderr
