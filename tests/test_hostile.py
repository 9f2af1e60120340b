"""Hostile strings in the database and in the broker's answers (matrix D2).

Keys, account ids and broker order ids with quotes, SQL, path traversal, percent-escapes, NUL,
control characters, non-ASCII and 10 KB lengths go through a real run: every value is a bound
parameter, every account id is sent as an encoded query value, a non-numeric order id is never
put into a URL, nothing crashes, and the table stays intact.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from conftest import context, make_db
from ibkr_recover.simulator import Account, Order, Scenario, Trade, run_in_thread
from simtools import FAST, table

CLI = (sys.executable, "-m", "ibkr_recover")

#: An account id that injects a second ``accountId`` if the query is built by hand.
SNEAKY = "DU1'\"; DROP TABLE order_idempotency_records;--/../%2F&accountId=DU1000001#é"
UNICODE = "DUé✓日本1234"
PLAIN = "DU1000001"

SQL_KEY = "k'); DELETE FROM order_idempotency_records; --"
NUL_KEY = "k\x00nul"
LONG_KEY = "k" + "x" * 10_000
UNICODE_KEY = "ключ-日本-🙂-\u202e"
ESCAPE_KEY = "k\x1b[2J\r\nFAKE: line"


def hostile_scenario() -> Scenario:
    return Scenario(
        [
            Account(
                SNEAKY,
                orders=[Order(1001, SQL_KEY, "Filled'); DROP TABLE x; --", filled=1.0)],
            ),
            Account(
                PLAIN,
                orders=[
                    Order(2001, NUL_KEY, "Submitted"),
                    Order(2002, ESCAPE_KEY, "Cancelled"),
                    Order(2003, "k-plain", "Submitted"),
                ],
                trades=[Trade("e.1\x00'--", "k-traded'", 2004)],
            ),
            Account(UNICODE, orders=[Order(3001, UNICODE_KEY, "PreSubmitted")]),
        ],
        PLAIN,
    )


def hostile_db(path: Path) -> Path:
    rows: list[dict[str, Any]] = [
        # Found at the broker: completed with the broker's (hostile) account id.
        {"key": SQL_KEY, "payload": context("live", "submit", SNEAKY)},
        {"key": NUL_KEY, "payload": context("paper", "submit", PLAIN)},
        {"key": UNICODE_KEY, "payload": context("live", "submit", UNICODE)},
        {"key": ESCAPE_KEY, "payload": context("paper", "submit", PLAIN)},
        {"key": "k-traded'", "payload": context("paper", "submit", PLAIN)},
        # Absent beside a complete listing: cleared (the sneaky account's listing is complete
        # only if its id went out intact).
        {"key": LONG_KEY, "payload": context("live", "submit", SNEAKY)},
        {"key": "k-absent-%2F..", "payload": context("paper", "submit", UNICODE)},
        # Broker order ids that are not numbers: never sent.
        {"key": "../../iserver/reply/1", "payload": context("live", "cancel", PLAIN)},
        {"key": "c-1", "payload": context("live", "cancel", PLAIN, "1%2F..%2F..%2Freply")},
        {"key": "c-2", "payload": context("live", "modify", PLAIN, "12\x00")},
        {"key": "c-3", "payload": context("live", "cancel", PLAIN, "\uff11\uff12\uff13")},  # wide
        {"key": "c-4", "payload": context("live", "cancel", PLAIN, "2001 OR 1=1")},
        {"key": "c-5", "payload": context("live", "cancel", PLAIN, "9" * 40)},
        # An account the session does not have: never looked up.
        {"key": "k-long-account", "payload": context("live", "submit", "U" + "9" * 5000)},
        # Blank keys and broken contexts.
        {"key": " \t", "payload": context("live", "submit", PLAIN)},
        {"key": "k-bad-context", "payload": '{"workflow": "live\x00", "operation": "submit"'},
        {"key": "k-not-json", "payload": "\x00\x01' OR '1'='1"},
    ]
    return make_db(path, rows)


def test_hostile_strings_are_bound_encoded_and_harmless(tmp_path: Path) -> None:
    db = hostile_db(tmp_path / "gateway.db")
    before = table(db)
    outcomes = tmp_path / "outcomes.jsonl"
    debug = ["--outcomes", str(outcomes), "--log-level", "debug"]
    with run_in_thread(hostile_scenario(), warmup_empty=False, warmup_trades=False) as sim:
        done = subprocess.run(
            [*CLI, "recover", str(db), "--base-url", sim.base_url, *FAST, "--json", *debug],
            capture_output=True,
            text=True,
            timeout=60,
        )
        log = sim.requests()
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    report = json.loads(done.stdout)
    assert report["unresolved_reasons"] == {
        "bad_context": 2,
        "invalid_key": 1,
        "invalid_order_id": 6,
        "unknown_account": 1,
    }
    assert (report["completed"], report["cleared_missing"]) == (5, 2)

    # Every account id went out as one intact, encoded query value.
    asked = {parse_qs(r.query)["accountId"][0] for r in log if r.endpoint in ("listing", "trades")}
    assert asked == {SNEAKY, PLAIN, UNICODE}
    assert all(len(parse_qs(r.query)["accountId"]) == 1 for r in log if r.query)
    # No order id that is not a number was put into a path.
    assert [r.path for r in log if r.endpoint == "status"] == []
    assert {r.endpoint for r in log} <= {"auth", "accounts", "listing", "trades"}

    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
        assert {"order_idempotency_records", "live_orders_pending"} <= tables
    finally:
        conn.close()
    after = table(db)
    cleared = set(before) - set(after)
    assert cleared == {LONG_KEY, "k-absent-%2F.."}
    for key in (SQL_KEY, NUL_KEY, UNICODE_KEY, ESCAPE_KEY, "k-traded'"):
        assert after[key]["status"] == "submitted", key
    assert json.loads(after[SQL_KEY]["payload_json"])["account_id"] == SNEAKY
    assert json.loads(after[SQL_KEY]["payload_json"])["status"] == "submitted"  # unknown status
    assert json.loads(after["k-traded'"]["payload_json"])["broker_order_id"] == "2004"
    for key, row in before.items():
        if key not in cleared and after[key]["status"] == "pending_writer":
            assert after[key] == row, key
    lines = [json.loads(line) for line in outcomes.read_text().splitlines()]
    assert sorted(line["key"] for line in lines) == sorted(before)


def test_hostile_broker_text_becomes_one_clean_line(tmp_path: Path) -> None:
    # A broker error text that tries to clear the screen and forge a log line of its own.
    message = "\x1b[2J\x1b[31mno bridge\r\nibkr-recover: ERROR: FORGED " + "x" * 5000
    db = hostile_db(tmp_path / "gateway.db")
    fault = {"kind": "error_200", "endpoint": "listing", "message": message}
    with run_in_thread(hostile_scenario(), faults=[fault]) as sim:
        done = subprocess.run(
            [*CLI, "recover", str(db), "--base-url", sim.base_url, *FAST, "--log-level", "debug"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1, done.stderr
    assert "HTTP 200 with error" in done.stderr
    assert "\x1b" not in done.stderr + done.stdout
    assert "\r" not in done.stderr
    for line in done.stderr.splitlines():
        assert line.startswith("ibkr-recover: "), line
        assert "FORGED" not in line or "HTTP 200 with error" in line
        assert len(line) < 600, "broker text is capped"
