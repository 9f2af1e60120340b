"""Secrets and files (matrix D3, D4): account ids never leave the tool unmasked; its files are 0600.

Sentinel account ids are planted in the database (recovery contexts) and in the broker's
answers (the accounts list, listing and trades rows, error texts); every byte the tool writes
to stdout, stderr (every log level and format) and the outcomes file is searched for them.
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import context, make_db
from ibkr_recover._mask import mask_account, mask_accounts_in
from ibkr_recover.simulator import Account, Order, Scenario, Trade, run_in_thread
from simtools import FAST, table

PAPER = "DU4829301"  # in the database and at the broker
LIVE = "U5930412"  # in the database and at the broker
FOREIGN = "DU6041523"  # at the broker only: its rows are mixed into the others' answers
UNKNOWN = "U7152634"  # in the database only: not among /iserver/accounts
SENTINELS = (PAPER, LIVE, FOREIGN, UNKNOWN)
CLI = (sys.executable, "-m", "ibkr_recover")


def scenario() -> Scenario:
    return Scenario(
        [
            Account(
                PAPER,
                orders=[Order(1001, "k-open", "Submitted"), Order(1003, "", "Filled", False)],
                trades=[Trade("e.1", "k-filled", 1002)],
            ),
            Account(LIVE, orders=[Order(2001, "k-live", "PreSubmitted")]),
            Account(FOREIGN, orders=[Order(3001, "k-foreign", "Submitted")]),
        ],
        PAPER,
    )


def planted_db(path: Path) -> Path:
    return make_db(
        path,
        [
            {"key": "k-open", "payload": context("paper", "submit", PAPER)},
            {"key": "k-filled", "payload": context("paper", "submit", PAPER)},
            {"key": "k-absent", "payload": context("paper", "submit", PAPER)},
            {"key": "c-1003", "payload": context("paper", "cancel", PAPER, "1003")},
            {"key": "c-1009", "payload": context("paper", "cancel", PAPER, "1009")},
            {"key": "k-live", "payload": context("live", "submit", LIVE)},
            {"key": "m-2001", "payload": context("live", "modify", LIVE, "2001")},
            {"key": "k-unknown", "payload": context("live", "submit", UNKNOWN)},
        ],
    )


def assert_no_sentinel(*texts: str) -> None:
    for text in texts:
        for sentinel in SENTINELS:
            # Neither the id nor its hidden middle (the mask keeps 2 + 3 characters).
            assert sentinel not in text, f"{sentinel} leaked in:\n{text}"
            assert sentinel[:-3] not in text, f"{sentinel[:-3]}... leaked in:\n{text}"


#: Error texts that name accounts, as IBKR's do ("... for account DU123...").
TALKATIVE = [
    {
        "kind": "error_200",
        "endpoint": "trades",
        "message": f"no trading permission for {PAPER}, {LIVE} or {FOREIGN}",
    },
    {
        "kind": "error",
        "endpoint": "status",
        "status": 500,
        "count": 2,
        "message": f"order lookup failed for account {PAPER} ({UNKNOWN})",
    },
]


@pytest.mark.parametrize(
    "args",
    [
        ["--json"],
        ["--log-level", "debug"],
        ["--log-level", "debug", "--log-format", "json", "--json"],
        ["--log-level", "info", "--dry-run"],
    ],
    ids=["json-report", "debug-text", "debug-json", "info-dry-run"],
)
def test_sentinel_accounts_never_appear_unmasked(tmp_path: Path, args: list[str]) -> None:
    db = planted_db(tmp_path / "gateway.db")
    outcomes = tmp_path / "outcomes.jsonl"
    to_file = ["--outcomes", str(outcomes)]
    with run_in_thread(scenario(), foreign_rows=2, faults=TALKATIVE) as sim:
        done = subprocess.run(
            [*CLI, "recover", str(db), "--base-url", sim.base_url, *FAST, *args, *to_file],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1, done.stderr
    written = outcomes.read_text()
    assert_no_sentinel(done.stdout, done.stderr, written)
    # The outputs were exercised: the accounts are there, masked.
    lines = [json.loads(line) for line in written.splitlines()]
    assert {line.get("account") for line in lines} == {
        mask_account(a) for a in (PAPER, LIVE, UNKNOWN)
    }
    assert mask_account(PAPER) in done.stderr  # "the trades of DU***301 failed: ..."
    if "debug" in args:
        assert "retry 1" in done.stderr


def test_fatal_broker_message_naming_an_account_is_masked(tmp_path: Path) -> None:
    # The 401's text goes into the error on stderr and into the human summary on stdout.
    fault = {
        "kind": "error",
        "endpoint": "status",
        "status": 401,
        "message": f"session of {LIVE} expired",
    }
    db = planted_db(tmp_path / "gateway.db")
    with run_in_thread(scenario(), faults=[fault]) as sim:
        done = subprocess.run(
            [*CLI, "recover", str(db), "--base-url", sim.base_url, *FAST],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 3, done.stderr
    assert "stopped early (auth)" in done.stdout
    assert f"session of {mask_account(LIVE)} expired" in done.stderr
    assert_no_sentinel(done.stdout, done.stderr)


def test_credentials_in_the_base_url_stay_out_of_messages(tmp_path: Path) -> None:
    db = planted_db(tmp_path / "gateway.db")
    with run_in_thread(scenario(), tls=True) as sim:
        url = f"https://operator:s3cr3t@127.0.0.1:{sim.port}/v1/api"
        done = subprocess.run(
            [*CLI, "recover", str(db), "--base-url", url, *FAST],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 3, done.stderr
    assert f"TLS failure talking to https://127.0.0.1:{sim.port}:" in done.stderr
    assert "s3cr3t" not in done.stderr + done.stdout


def test_account_ids_in_broker_text_are_masked_wherever_they_stand() -> None:
    text = "acct_DU4829301,U5930412;(F1234567) DU***301 order 1749088897 E11"
    assert mask_accounts_in(text) == (
        "acct_DU***301,U5***412;(F1***567) DU***301 order 1749088897 E11"
    )


def test_a_masked_account_shows_no_control_characters() -> None:
    assert mask_account("\x1b[31mDU4829301\n") == "?[***301"
    assert mask_account("DU48\r\nFAKE: 29301") == "DU***301"
    assert mask_account("U12") == "***"


@pytest.mark.parametrize("args", [[], ["--json"]], ids=["table", "json"])
def test_pending_masks_the_accounts(tmp_path: Path, args: list[str]) -> None:
    db = planted_db(tmp_path / "gateway.db")
    done = subprocess.run(
        [*CLI, "pending", str(db), *args], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert mask_account(PAPER) in done.stdout
    assert_no_sentinel(done.stdout, done.stderr)


# -- D4: files the tool creates ----------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_files_the_tool_creates_are_0600_even_with_umask_0(tmp_path: Path) -> None:
    folder = tmp_path / "work"
    folder.mkdir()
    db = planted_db(folder / "gateway.db")
    db.chmod(0o640)
    outcomes, backup = folder / "outcomes.jsonl", folder / "backup.db"
    stale = folder / "stale-outcomes.jsonl"
    stale.write_text("old\n")
    stale.chmod(0o666)
    before = set(folder.iterdir())

    runs: list[subprocess.CompletedProcess[str]] = []
    with run_in_thread(scenario()) as sim:
        for target in (outcomes, stale):
            argv: list[Any] = [*CLI, "recover", str(db), "--base-url", sim.base_url, *FAST]
            argv += ["--outcomes", str(target)]
            if target is outcomes:
                argv += ["--backup", str(backup)]
            runs.append(subprocess.run(argv, capture_output=True, text=True, timeout=60, umask=0))
    assert [r.returncode for r in runs] == [1, 1], [r.stderr for r in runs]
    assert mode(outcomes) == mode(backup) == 0o600
    assert mode(stale) == 0o600, "an existing outcomes file is rewritten private"
    assert stale.read_text().startswith("{")
    assert mode(db) == 0o640, "the database's own mode is never changed"
    for created in set(folder.iterdir()) - before - {outcomes, backup}:
        # SQLite's -wal and -shm files take the database's permissions, never looser.
        assert created.name.startswith(db.name), created
        assert mode(created) & ~mode(db) == 0, (created, oct(mode(created)))
    assert table(backup) == table(planted_db(tmp_path / "pristine.db"))
