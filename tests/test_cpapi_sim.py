"""The CP-API backend against the simulator, over a real socket (real clock, no autojump)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from ibkr_recover import Absent, BrokerFatal, Found, Query, Unresolved
from ibkr_recover.cpapi import CpapiBackend, CpapiResolver, CpapiSettings
from ibkr_recover.simulator import (
    Account,
    Order,
    Scenario,
    SimulatorHandle,
    Trade,
    run_in_thread,
)

PAPER = "DU1234567"
LIVE = "U7654321"
NOW_MS = 1_765_000_000_000


def scenario(**switches: Any) -> Scenario:
    paper = Account(
        id=PAPER,
        orders=[
            Order(1001, "k-open", "Submitted", time_ms=NOW_MS - 600_000),
            Order(1002, "k-filled", "Filled", filled=1.0, time_ms=NOW_MS - 500_000),
            Order(1003, "k-cancelled", "Cancelled", time_ms=NOW_MS - 400_000),
            Order(1004, "k-old", "Filled", in_listing=False, time_ms=NOW_MS - 90_000_000),
            Order(1005, "bracket-parent", "Submitted"),
        ],
        trades=[
            Trade("e.1", "k-filled", 1002, NOW_MS - 500_000),
            Trade("e.2", "k-gone", 1999, NOW_MS - 80_000_000),
            Trade("e.3", "k-anon", None, NOW_MS - 80_000_000),
        ],
    )
    live = Account(id=LIVE, orders=[Order(2001, "k-live", "PreSubmitted")])
    base = Scenario(accounts=[paper, live], selected_account=PAPER)
    if not switches:
        return base
    from ibkr_recover.simulator import merge_switches

    return Scenario(base.accounts, base.selected_account, merge_switches(base.switches, switches))


def submit(key: str, account: str = PAPER) -> Query:
    return Query(key=key, workflow="live", operation="submit", account_id=account, lookup_id=key)


def cancel(order_id: str, account: str = PAPER) -> Query:
    return Query(
        key=f"c-{order_id}",
        workflow="live",
        operation="cancel",
        account_id=account,
        lookup_id=order_id,
    )


@asynccontextmanager
async def resolver_for(
    sim: SimulatorHandle, **overrides: Any
) -> AsyncIterator[tuple[CpapiBackend, CpapiResolver]]:
    values: dict[str, Any] = {
        "base_url": sim.base_url,
        "listing_interval": 0.2,
        "rate": 0,
        "timeout": 5,
        "backoff_base": 0.01,
    }
    values.update(overrides)
    async with CpapiBackend(CpapiSettings(**values)) as backend:
        await backend.preflight()
        async with backend.resolver() as resolver:
            yield backend, resolver  # type: ignore[misc]


def paths(sim: SimulatorHandle) -> list[str]:
    return [r.path.removeprefix("/v1/api") for r in sim.requests()]


async def test_every_rule_against_the_simulator_over_http() -> None:
    with run_in_thread(scenario()) as sim:
        async with resolver_for(sim) as (_, resolver):
            open_ = await resolver.lookup(submit("k-open"))
            filled = await resolver.lookup(submit("k-filled"))
            gone = await resolver.lookup(submit("k-gone"))
            anon = await resolver.lookup(submit("k-anon"))
            bracket = await resolver.lookup(submit("bracket"))
            absent = await resolver.lookup(submit("k-never"))
            by_listing = await resolver.lookup(cancel("1003"))
            by_status = await resolver.lookup(cancel("1004"))
            not_found = await resolver.lookup(cancel("9999"))
            live = await resolver.lookup(submit("k-live", LIVE))
            unknown = await resolver.lookup(submit("k-open", "U0000000"))
        requests = paths(sim)
    assert isinstance(open_, Found)
    assert (open_.order.broker_order_id, open_.order.status) == ("1001", "Submitted")
    assert open_.order.account_id == PAPER
    assert isinstance(filled, Found)
    assert filled.order.status == "Filled"
    assert isinstance(gone, Found)
    assert (gone.order.broker_order_id, gone.order.status) == ("1999", "Filled")
    assert isinstance(anon, Unresolved)
    assert anon.reason == "found_in_trades_only"
    assert isinstance(bracket, Unresolved)
    assert bracket.reason == "group_legs_found"
    assert absent == Absent()
    assert isinstance(by_listing, Found)
    assert by_listing.order.status == "Cancelled"
    assert isinstance(by_status, Found)
    assert by_status.order.time is not None
    assert not_found == Absent()
    assert isinstance(live, Found)
    assert isinstance(unknown, Unresolved)
    assert unknown.reason == "unknown_account"
    # Warm-up: the first listing and trades of each account are empty, so each is asked twice.
    assert requests.count("/iserver/account/orders") == 4
    assert requests.count("/iserver/account/trades") == 4
    assert requests.count("/iserver/account/order/status/1004") == 1
    assert "/iserver/account/order/status/1003" not in requests


async def test_trust_empty_listing_is_needed_for_an_account_without_orders() -> None:
    empty = Scenario(accounts=[Account(id=PAPER)], selected_account=PAPER)
    with run_in_thread(empty) as sim:
        async with resolver_for(sim) as (_, resolver):
            answer = await resolver.lookup(submit("k"))
        async with resolver_for(sim, trust_empty_listing=True) as (_, resolver):
            trusted = await resolver.lookup(submit("k"))
    assert isinstance(answer, Unresolved)
    assert answer.reason == "empty_listing"
    assert trusted == Absent()


async def test_foreign_rows_in_the_listing_are_never_taken_for_ours() -> None:
    with run_in_thread(scenario(foreign_rows=5)) as sim:
        async with resolver_for(sim) as (_, resolver):
            ours = await resolver.lookup(submit("k-open"))
            theirs = await resolver.lookup(submit("k-live"))
    assert isinstance(ours, Found)
    assert isinstance(theirs, Unresolved)
    assert theirs.reason == "mismatch"


async def test_paced_at_the_gateways_limits_draws_no_429() -> None:
    # slack_s forgives scheduling jitter of a loaded test machine, not a pacing error.
    pacing = {
        "rate": 20,
        "listing_interval": 0.5,
        "trades_interval": 0.5,
        "penalty_s": 60,
        "slack_s": 0.05,
    }
    with run_in_thread(scenario(pacing=pacing)) as sim:
        async with CpapiBackend(
            CpapiSettings(base_url=sim.base_url, rate=20, listing_interval=0.5)
        ) as backend:
            await backend.preflight()

            async def worker(ids: range) -> None:
                async with backend.resolver() as resolver:
                    for i in ids:
                        await resolver.lookup(cancel(str(i)))
                        await resolver.lookup(submit(f"k-{i}"))

            async with trio.open_nursery() as nursery:
                for w in range(4):
                    nursery.start_soon(worker, range(5000 + w, 5024, 4))
        statuses = [r.status for r in sim.requests()]
    assert 429 not in statuses
    assert len(statuses) >= 24


async def test_a_429_from_the_gateway_stops_every_worker() -> None:
    pacing = {"rate": 5, "listing_interval": 0, "trades_interval": 0, "penalty_s": 60}
    with run_in_thread(scenario(pacing=pacing, warmup_empty=False, warmup_trades=False)) as sim:
        raised: list[BrokerFatal] = []
        async with CpapiBackend(CpapiSettings(base_url=sim.base_url, rate=0)) as backend:
            await backend.preflight()

            async def worker(ids: range) -> None:
                async with backend.resolver() as resolver:
                    try:
                        for i in ids:
                            await resolver.lookup(cancel(str(i)))
                    except BrokerFatal as exc:
                        raised.append(exc)

            async with trio.open_nursery() as nursery:
                for w in range(4):
                    nursery.start_soon(worker, range(6000 + w, 6100, 4))
        log = sim.requests()
    assert raised
    assert {exc.reason for exc in raised} == {"rate_limited"}
    first_429 = next(i for i, r in enumerate(log) if r.status == 429)
    # Requests already in flight when the first 429 arrived may follow it; nothing else does.
    assert len(log) - first_429 <= 4


async def test_session_lost_mid_run_is_fatal_auth() -> None:
    with run_in_thread(scenario(session_lost_after=8)) as sim:
        async with resolver_for(sim) as (_, resolver):
            answers = []
            with pytest.raises(BrokerFatal) as raised:  # noqa: PT012 -- the 9th request raises
                for i in range(50):
                    answers.append(await resolver.lookup(cancel(str(7000 + i))))
    assert raised.value.reason == "auth"
    assert answers
    assert all(a == Absent() for a in answers)


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ({"kind": "error_200", "endpoint": "status", "message": "no bridge"}, "broker_error"),
        ({"kind": "malformed", "endpoint": "status"}, "bad_json"),
        (
            {"kind": "oversized", "endpoint": "status", "size": 4 * 1024 * 1024},
            "response_too_large",
        ),
        ({"kind": "wrong_order", "endpoint": "status"}, "mismatch"),
        ({"kind": "wrong_account", "endpoint": "status"}, "mismatch"),
        ({"kind": "slow_body", "endpoint": "status", "bytes_per_s": 20}, "timeout"),
        ({"kind": "error", "endpoint": "status", "status": [500, 502, 503]}, "server_error"),
    ],
    ids=lambda v: v["kind"] if isinstance(v, dict) else v,
)
async def test_faults_leave_the_row_unresolved(fault: dict[str, Any], reason: str) -> None:
    with run_in_thread(scenario(faults=[fault])) as sim:
        async with resolver_for(sim, timeout=1, retries=1) as (_, resolver):
            answer = await resolver.lookup(cancel("1004"))
    assert isinstance(answer, Unresolved), answer
    assert answer.reason == reason


async def test_a_burst_of_5xx_is_retried_through() -> None:
    fault = {"kind": "error", "endpoint": "status", "status": [502, 503], "count": 2}
    with run_in_thread(scenario(faults=[fault])) as sim:
        async with resolver_for(sim, retries=3) as (_, resolver):
            answer = await resolver.lookup(cancel("1004"))
        requests = paths(sim)
    assert isinstance(answer, Found)
    assert requests.count("/iserver/account/order/status/1004") == 3


async def test_tls_with_the_simulators_ca() -> None:
    with run_in_thread(scenario(), tls=True) as sim:
        assert sim.ca_path is not None
        async with resolver_for(sim, cacert=Path(sim.ca_path)) as (_, resolver):
            assert isinstance(await resolver.lookup(submit("k-open")), Found)


async def test_tls_without_the_ca_fails_preflight_naming_the_cause() -> None:
    with run_in_thread(scenario(), tls=True) as sim:
        settings = CpapiSettings(base_url=sim.base_url, retries=0)
        async with CpapiBackend(settings) as backend:
            with pytest.raises(BrokerFatal) as raised:
                await backend.preflight()
    assert raised.value.reason == "tls"
    assert "certificate verify failed: unable to get local issuer certificate" in str(raised.value)


@pytest.mark.parametrize(("cert", "words"), [("expired", "expired"), ("wrong_host", "mismatch")])
async def test_tls_with_a_bad_certificate_is_refused(cert: str, words: str) -> None:
    with run_in_thread(scenario(), tls=True, cert=cert) as sim:  # type: ignore[arg-type]
        assert sim.ca_path is not None
        settings = CpapiSettings(base_url=sim.base_url, cacert=Path(sim.ca_path), retries=0)
        async with CpapiBackend(settings) as backend:
            with pytest.raises(BrokerFatal) as raised:
                await backend.preflight()
    assert raised.value.reason == "tls"
    assert words in str(raised.value).lower()


async def test_insecure_reaches_a_loopback_tls_simulator() -> None:
    with run_in_thread(scenario(), tls=True) as sim:
        async with resolver_for(sim, insecure=True) as (backend, _):
            assert backend.accounts == {PAPER, LIVE}
