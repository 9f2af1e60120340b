"""``ibkr-recover recover`` end to end: a generated database, the simulator over a real socket."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ibkr_recover.simulator import Pacing, run_in_thread
from simtools import FAST, assert_matches_expected, cli, generated, table


def test_mixed_scenario_leaves_exactly_the_expected_database(tmp_path: Path) -> None:
    db, scenario, expected = generated(tmp_path, 600, accounts=6, mix="mixed", seed=3)
    with run_in_thread(scenario) as sim:
        result = cli("recover", str(db), "--base-url", sim.base_url, *FAST, "--json")
        stats = sim.stats()
    report = json.loads(result.stdout)
    assert result.returncode == 1, result.stderr  # the mix has unresolved rows by design
    assert_matches_expected(db, tmp_path / "original.db", expected)
    for field in ("scanned", "completed", "cleared_missing", "unresolved", "conflicts", "skipped"):
        assert report[field] == getattr(expected.report, field), field
    assert report["unresolved_reasons"] == expected.report.unresolved_reasons
    assert stats.writes == 0


def test_rerun_writes_nothing(tmp_path: Path) -> None:
    db, scenario, _ = generated(tmp_path, 300, accounts=3, mix="mixed", seed=5)
    with run_in_thread(scenario) as sim:
        first = cli("recover", str(db), "--base-url", sim.base_url, *FAST, "--json")
        after_first = table(db)
        second = cli("recover", str(db), "--base-url", sim.base_url, *FAST, "--json")
    assert first.returncode == second.returncode == 1
    assert table(db) == after_first
    report = json.loads(second.stdout)
    assert report["completed"] == report["cleared_missing"] == report["conflicts"] == 0


def test_recovery_over_tls_with_cacert(tmp_path: Path) -> None:
    db, scenario, expected = generated(tmp_path, 200, accounts=2, mix="mixed", seed=7)
    with run_in_thread(scenario, tls=True) as sim:
        assert sim.base_url.startswith("https://")
        result = cli(
            "recover", str(db), "--base-url", sim.base_url, "--cacert", str(sim.ca_path), *FAST
        )
    assert result.returncode == 1, result.stderr
    assert_matches_expected(db, tmp_path / "original.db", expected)


def test_tls_without_the_ca_fails_closed_before_any_lookup(tmp_path: Path) -> None:
    db, scenario, _ = generated(tmp_path, 50, accounts=1, mix="mixed", seed=1)
    with run_in_thread(scenario, tls=True) as sim:
        result = cli("recover", str(db), "--base-url", sim.base_url, *FAST)
        stats = sim.stats()
    assert result.returncode == 3
    assert "certificate verify failed" in result.stderr
    assert stats.by_endpoint.get("listing", 0) == stats.by_endpoint.get("status", 0) == 0
    assert table(db) == table(tmp_path / "original.db")


def test_dry_run_reports_the_same_and_writes_nothing(tmp_path: Path) -> None:
    db, scenario, expected = generated(tmp_path, 300, accounts=3, mix="mixed", seed=9)
    original = db.read_bytes()
    with run_in_thread(scenario) as sim:
        result = cli("recover", str(db), "--base-url", sim.base_url, *FAST, "--json", "--dry-run")
    report = json.loads(result.stdout)
    assert report["dry_run"] is True
    assert report["completed"] == expected.report.completed
    assert report["cleared_missing"] == expected.report.cleared_missing
    assert db.read_bytes() == original


@pytest.mark.parametrize("mix", ["per_order", "listing", "mixed"])
def test_scaled_pacing_is_never_exceeded(tmp_path: Path, mix: str) -> None:
    # IBKR's limits scaled 5x down in time, so the test is quick: 50 requests/s, 1 listing/s.
    # Paced, held-back cancels and modifies are prefetched: with "mixed", every case of the
    # rules (ambiguous and foreign listing rows among them) still gets the oracle's decision.
    db, scenario, expected = generated(tmp_path, 400, accounts=3, mix=mix, seed=11)
    pacing = Pacing(rate=50, listing_interval=1, trades_interval=1, penalty_s=60)
    with run_in_thread(scenario, pacing=pacing) as sim:
        result = cli(
            "recover",
            str(db),
            "--base-url",
            sim.base_url,
            "--rate",
            "50",
            "--listing-interval",
            "1",
            "--json",
        )
        stats = sim.stats()
    assert stats.rate_limited == 0, stats
    assert result.returncode in (0, 1), result.stderr
    assert_matches_expected(db, tmp_path / "original.db", expected)


def test_ibkr_pacing_2000_rows_records_zero_429s(tmp_path: Path) -> None:
    db, scenario, expected = generated(tmp_path, 2000, accounts=3, mix="listing", seed=13)
    with run_in_thread(scenario, pacing=Pacing()) as sim:
        result = cli("recover", str(db), "--base-url", sim.base_url, "--json", timeout=300)
        stats = sim.stats()
    assert stats.rate_limited == 0, stats
    assert result.returncode in (0, 1), result.stderr
    assert_matches_expected(db, tmp_path / "original.db", expected)


def test_paced_crash_backlog_fetches_account_by_account_and_fills_the_budget_meanwhile(
    tmp_path: Path,
) -> None:
    # IBKR's limits scaled 5x down in time: 50 requests/s, listing and trades 1 per second.
    db, scenario, expected = generated(tmp_path, 3000, accounts=5, mix="crash", seed=17)
    pacing = Pacing(rate=50, listing_interval=1, trades_interval=1, penalty_s=60)
    with run_in_thread(scenario, pacing=pacing) as sim:
        result = cli(
            "recover", str(db), "--base-url", sim.base_url, "--concurrency", "64",
            "--rate", "50", "--listing-interval", "1", "--json",
        )  # fmt: skip
        stats = sim.stats()
        log = sim.requests()
    assert stats.rate_limited == 0, stats
    assert result.returncode == 1, result.stderr  # the mix has rows without context
    assert_matches_expected(db, tmp_path / "original.db", expected)

    def accounts(endpoint: str) -> list[str]:
        return [r.query.rsplit("accountId=", 1)[1] for r in log if r.endpoint == endpoint]

    # One account's listing (first call and warm-up re-ask) before the next account's, and
    # the trades in the same account order.
    listing = accounts("listing")
    assert len(listing) == 2 * expected.accounts
    assert listing[0::2] == listing[1::2]
    assert accounts("trades")[0::2] == listing[0::2]
    # Before any listing is in (the first account's warm-up re-ask), budget nobody else
    # wants already goes to status lookups of cancels and modifies still held back.
    first_in = sorted(r.mono for r in log if r.endpoint == "listing")[1]
    assert sum(r.endpoint == "status" and r.mono < first_in for r in log) >= 10
    # Rows of accounts whose listing is in are looked up while later listings are pending.
    last_listing = max(r.mono for r in log if r.endpoint == "listing")
    early = sum(r.endpoint == "status" and r.mono < last_listing for r in log)
    assert early > 0.5 * sum(r.endpoint == "status" for r in log)
