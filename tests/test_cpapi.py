"""The CP-API backend's lookup rules (SPEC §3, §4), against an in-process fake gateway."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest
import trio
import trio.testing

from ibkr_recover import Absent, BrokerOrder, Found, Unresolved
from ibkr_recover._pacing import PACING_MARGIN
from test_cpapi_fakes import (
    A1,
    A2,
    FakeGateway,
    cancel,
    not_found,
    open_backend,
    order,
    status_body,
    submit,
    trade,
)

LISTING = "/iserver/account/orders"
TRADES = "/iserver/account/trades"
MS = 1702317649000
AT_MS = datetime(2023, 12, 11, 18, 0, 49, tzinfo=UTC)


def with_orders(*rows: dict[str, object], account: str = A1) -> FakeGateway:
    gateway = FakeGateway()
    gateway.orders[account] = list(rows)
    return gateway


# -- submits -------------------------------------------------------------------------------------


async def test_submit_found_in_listing_is_found_with_the_brokers_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gateway = with_orders(order(7, "other"), order(42, "key-1", status="Filled", last_ms=MS))
    async with open_backend(gateway) as backend, backend.resolver() as resolver:
        answer = await resolver.lookup(submit("key-1"))
    assert answer == Found(BrokerOrder(A1, "42", "Filled", AT_MS))


async def test_submit_found_without_execution_time_has_no_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gateway = with_orders(order("42", "key-1", status="PreSubmitted"))
    async with open_backend(gateway) as backend, backend.resolver() as resolver:
        answer = await resolver.lookup(submit("key-1"))
    assert answer == Found(BrokerOrder(A1, "42", "PreSubmitted", None))


async def test_listing_and_trades_are_fetched_once_per_account_for_all_workers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gateway = with_orders(*(order(i, f"key-{i}") for i in range(50)))
    gateway.orders[A2] = [order(1000, "b-key", acct=A2)]
    gateway.trades[A1] = [trade("old-1", order_id=5)]
    gateway.trades[A2] = [trade("old-2", acct=A2)]
    answers: list[object] = []
    async with open_backend(gateway) as backend:

        async def worker(start: int) -> None:
            async with backend.resolver() as resolver:
                for i in range(start, 60, 4):
                    answers.append(await resolver.lookup(submit(f"key-{i}")))
                answers.append(await resolver.lookup(submit("b-key", A2)))

        async with trio.open_nursery() as nursery:
            for start in range(4):
                nursery.start_soon(worker, start)
    assert sum(isinstance(a, Found) for a in answers) == 50 + 4
    assert sum(isinstance(a, Absent) for a in answers) == 10
    listed = sorted(s.params["accountId"] for s in gateway.sent if s.path == LISTING)
    assert listed == [A1, A2]
    assert gateway.count(TRADES) == 2
    assert all(s.params["days"] == "7" for s in gateway.sent if s.path == TRADES)
    assert not any("filters" in s.params for s in gateway.sent)


async def test_submit_absent_from_complete_listing_and_trades_is_absent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gateway = with_orders(order(1, "someone-else"))
    gateway.trades[A1] = [trade("yet-another", order_id=3)]
    async with open_backend(gateway) as backend, backend.resolver() as resolver:
        assert await resolver.lookup(submit("key-1")) == Absent()


async def test_listing_row_of_another_account_is_never_ours(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The gateway ignored accountId and listed another account's order with our key.
    gateway = with_orders(order(1, "mine"), order(2, "key-1", acct=A2))
    async with open_backend(gateway) as backend, backend.resolver() as resolver:
        answer = await resolver.lookup(submit("key-1"))
    assert isinstance(answer, Unresolved)
    assert answer.reason == "mismatch"


async def test_two_listing_rows_with_one_order_ref_are_ambiguous(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gateway = with_orders(order(1, "key-1"), order(2, "key-1"))
    async with open_backend(gateway) as backend, backend.resolver() as resolver:
        answer = await resolver.lookup(submit("key-1"))
    assert isinstance(answer, Unresolved)
    assert answer.reason == "ambiguous"


async def test_submit_only_in_trades_with_order_id_is_filled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gateway = with_orders(order(1, "other"))
    gateway.trades[A1] = [
        trade("key-1", order_id=77, time_ms=MS - 1000),
        trade("key-1", order_id=77, time_ms=MS),
    ]
    async with open_backend(gateway) as backend, backend.resolver() as resolver:
        answer = await resolver.lookup(submit("key-1"))
    assert answer == Found(BrokerOrder(A1, "77", "Filled", AT_MS))


async def test_submit_only_in_trades_without_order_id_is_unresolved(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gateway = with_orders(order(1, "other"))
    gateway.trades[A1] = [trade("key-1")]
    async with open_backend(gateway) as backend, backend.resolver() as resolver:
        answer = await resolver.lookup(submit("key-1"))
    assert isinstance(answer, Unresolved)
    assert answer.reason == "found_in_trades_only"


async def test_trades_of_another_account_are_never_ours(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gateway = with_orders(order(1, "other"))
    gateway.trades[A1] = [trade("key-1", acct=A2, order_id=5)]
    async with open_backend(gateway) as backend, backend.resolver() as resolver:
        answer = await resolver.lookup(submit("key-1"))
    assert isinstance(answer, Unresolved)
    assert answer.reason == "mismatch"


@pytest.mark.parametrize("leg", ["parent", "take-profit", "stop-loss"])
@pytest.mark.parametrize("where", ["listing", "trades"])
async def test_bracket_legs_at_the_broker_are_never_cleared(
    autojump_clock: trio.testing.MockClock, leg: str, where: str
) -> None:
    gateway = with_orders(order(1, "other"))
    if where == "listing":
        gateway.orders[A1].append(order(2, f"key-1-{leg}"))
    else:
        gateway.trades[A1] = [trade(f"key-1-{leg}", order_id=2)]
    async with open_backend(gateway) as backend, backend.resolver() as resolver:
        answer = await resolver.lookup(submit("key-1"))
    assert isinstance(answer, Unresolved)
    assert answer.reason == "group_legs_found"


async def test_empty_listing_is_asked_again_after_the_interval_then_unresolved(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gateway = FakeGateway()
    async with open_backend(gateway, listing_interval=5) as backend, backend.resolver() as r:
        answer = await r.lookup(submit("key-1"))
        again = await r.lookup(submit("key-2"))
    assert isinstance(answer, Unresolved)
    assert answer.reason == "empty_listing"
    assert again == answer
    listings = [s.at for s in gateway.sent if s.path == LISTING]
    assert len(listings) == 2
    assert listings[1] - listings[0] == pytest.approx(5.0 * PACING_MARGIN)
    trades = [s.at for s in gateway.sent if s.path == TRADES]
    assert len(trades) == 2
    assert trades[1] - trades[0] == pytest.approx(5.0 * PACING_MARGIN)


async def test_trust_empty_listing_lets_an_empty_listing_prove_absence(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gateway = FakeGateway()
    async with open_backend(gateway, trust_empty_listing=True) as backend, backend.resolver() as r:
        assert await r.lookup(submit("key-1")) == Absent()
    assert gateway.count(LISTING) == 2


async def test_warm_up_empty_listing_then_rows_is_complete(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gateway = with_orders(order(1, "key-1"))
    gateway.script(LISTING, httpx.Response(200, json={"orders": [], "snapshot": False}))
    async with open_backend(gateway) as backend, backend.resolver() as resolver:
        assert isinstance(await resolver.lookup(submit("key-1")), Found)
        assert await resolver.lookup(submit("key-2")) == Absent()
    assert gateway.count(LISTING) == 2


async def test_listing_at_the_row_cap_is_incomplete_but_still_finds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gateway = with_orders(*(order(i, f"key-{i}") for i in range(1000)))
    async with open_backend(gateway) as backend, backend.resolver() as resolver:
        found = await resolver.lookup(submit("key-999"))
        missing = await resolver.lookup(submit("key-1000"))
    assert isinstance(found, Found)
    assert isinstance(missing, Unresolved)
    assert missing.reason == "incomplete_listing"


async def test_unknown_account_is_unresolved_without_a_request(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gateway = FakeGateway()
    async with open_backend(gateway) as backend, backend.resolver() as resolver:
        before = len(gateway.sent)
        answer = await resolver.lookup(submit("key-1", "U9999999"))
        cancelled = await resolver.lookup(cancel("5", "U9999999"))
    assert answer == cancelled
    assert isinstance(answer, Unresolved)
    assert answer.reason == "unknown_account"
    assert len(gateway.sent) == before


async def test_failed_listing_is_remembered_for_every_row_of_the_account(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gateway = with_orders(order(1, "key-1"))
    failure = httpx.Response(500, json={"error": "internal"})
    gateway.script(LISTING, *[failure] * 4)
    async with open_backend(gateway, retries=3) as backend, backend.resolver() as resolver:
        answers = [await resolver.lookup(submit(f"key-{i}")) for i in range(5)]
        missing = await resolver.lookup(cancel("1"))
        gateway.status["2"] = status_body(2)
        present = await resolver.lookup(cancel("2"))
    assert {a.reason for a in answers if isinstance(a, Unresolved)} == {"server_error"}
    assert len(answers) == 5
    assert gateway.count(LISTING) == 4
    assert isinstance(missing, Unresolved)
    assert missing.reason == "server_error"
    # The status endpoint still proves presence; only absence needs the listing.
    assert isinstance(present, Found)


async def test_failed_trades_leave_absent_submits_unresolved_but_listing_finds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gateway = with_orders(order(1, "key-1"))
    gateway.script(TRADES, httpx.Response(200, text="[{"))
    async with open_backend(gateway) as backend, backend.resolver() as resolver:
        found = await resolver.lookup(submit("key-1"))
        missing = await resolver.lookup(submit("key-2"))
    assert isinstance(found, Found)
    assert isinstance(missing, Unresolved)
    assert missing.reason == "bad_json"


# -- cancels and modifies ------------------------------------------------------------------------


async def test_cancel_found_in_listing_needs_no_status_request(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gateway = with_orders(order(42, "x", status="Cancelled", last_ms=MS))
    async with open_backend(gateway) as backend, backend.resolver() as resolver:
        answer = await resolver.lookup(cancel("42"))
    assert answer == Found(BrokerOrder(A1, "42", "Cancelled", AT_MS))
    assert not any(p.startswith("/iserver/account/order/status") for p in gateway.paths())
    assert gateway.count(TRADES) == 0


async def test_cancel_missing_from_listing_is_found_by_the_status_endpoint(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gateway = with_orders(order(1, "x"))
    gateway.status["42"] = status_body("42", status="PendingCancel")
    async with open_backend(gateway) as backend, backend.resolver() as resolver:
        answer = await resolver.lookup(cancel("42"))
    assert answer == Found(BrokerOrder(A1, "42", "PendingCancel", AT_MS))
    assert "/iserver/account/order/status/42" in gateway.paths()


@pytest.mark.parametrize(
    "body",
    [status_body(43), status_body(42, account=A2), {"error": "Order 42 is not found"}],
    ids=["another-order", "another-account", "200-with-error"],
)
async def test_status_answer_about_another_order_is_rejected(
    autojump_clock: trio.testing.MockClock, body: dict[str, object]
) -> None:
    gateway = with_orders(order(1, "x"))
    gateway.status["42"] = body
    async with open_backend(gateway) as backend, backend.resolver() as resolver:
        answer = await resolver.lookup(cancel("42"))
    assert isinstance(answer, Unresolved)
    assert answer.reason == ("broker_error" if "error" in body else "mismatch")


async def test_cancel_not_found_beside_a_complete_listing_is_absent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gateway = with_orders(order(1, "x"))
    async with open_backend(gateway) as backend, backend.resolver() as resolver:
        assert await resolver.lookup(cancel("42")) == Absent()


@pytest.mark.parametrize(
    ("rows", "trust", "expected"),
    [
        ([], False, "empty_listing"),
        ([order(i) for i in range(1000)], True, "incomplete_listing"),
    ],
    ids=["empty", "capped"],
)
async def test_cancel_not_found_beside_an_uncertain_listing_is_unresolved(
    autojump_clock: trio.testing.MockClock,
    rows: list[dict[str, object]],
    trust: bool,
    expected: str,
) -> None:
    gateway = with_orders(*rows)
    async with open_backend(gateway, trust_empty_listing=trust) as backend:
        async with backend.resolver() as resolver:
            answer = await resolver.lookup(cancel("4242"))
    assert isinstance(answer, Unresolved)
    assert answer.reason == expected


async def test_cancel_not_found_beside_a_trusted_empty_listing_is_absent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gateway = FakeGateway()
    async with open_backend(gateway, trust_empty_listing=True) as backend:
        async with backend.resolver() as resolver:
            assert await resolver.lookup(cancel("42")) == Absent()


async def test_not_found_naming_another_order_is_a_mismatch(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gateway = with_orders(order(1, "x"))
    gateway.script("/iserver/account/order/status/42", not_found(43))
    async with open_backend(gateway) as backend, backend.resolver() as resolver:
        answer = await resolver.lookup(cancel("42"))
    assert isinstance(answer, Unresolved)
    assert answer.reason == "mismatch"


@pytest.mark.parametrize("bad", ["../../iserver/reply/1", "key-7", "12a", "", "-5"])
async def test_non_numeric_order_id_is_never_sent(
    autojump_clock: trio.testing.MockClock, bad: str
) -> None:
    gateway = with_orders(order(1, "x"))
    async with open_backend(gateway) as backend, backend.resolver() as resolver:
        before = len(gateway.sent)
        answer = await resolver.lookup(cancel(bad))
    assert isinstance(answer, Unresolved)
    assert answer.reason == "invalid_order_id"
    assert len(gateway.sent) == before


async def test_modify_is_looked_up_like_a_cancel(autojump_clock: trio.testing.MockClock) -> None:
    from ibkr_recover import Query

    gateway = with_orders(order(9, "x", status="Submitted"))
    query = Query(key="k", workflow="paper", operation="modify", account_id=A1, lookup_id="9")
    async with open_backend(gateway) as backend, backend.resolver() as resolver:
        answer = await resolver.lookup(query)
    assert answer == Found(BrokerOrder(A1, "9", "Submitted", None))


# -- status answers asked ahead, in spare budget -----------------------------------------------

STATUS_42 = "/iserver/account/order/status/42"


async def test_a_prefetched_status_answers_a_cancel_missing_from_the_listing_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gateway = with_orders(order(1, "x"))
    gateway.status["42"] = status_body("42", status="PendingCancel")
    async with open_backend(gateway) as backend, backend.resolver() as resolver:
        assert backend.prefetchable(cancel("42"))
        await backend.prefetch(cancel("42"))
        assert gateway.count(LISTING) == 0
        answer = await resolver.lookup(cancel("42"))
    assert answer == Found(BrokerOrder(A1, "42", "PendingCancel", AT_MS))
    assert gateway.count(STATUS_42) == 1


async def test_a_prefetched_status_never_overrides_the_listing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gateway = with_orders(order(42, "x", status="Cancelled", last_ms=MS))
    gateway.status["42"] = status_body("42", status="PendingCancel")
    async with open_backend(gateway) as backend, backend.resolver() as resolver:
        await backend.prefetch(cancel("42"))
        answer = await resolver.lookup(cancel("42"))
        # Handed out once: a second lookup of the order asks nothing more either.
        again = await resolver.lookup(cancel("42"))
    assert answer == again == Found(BrokerOrder(A1, "42", "Cancelled", AT_MS))
    assert gateway.count(STATUS_42) == 1


async def test_a_prefetched_not_found_still_needs_a_complete_listing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gateway = with_orders()  # empty, even when asked again
    async with open_backend(gateway) as backend, backend.resolver() as resolver:
        await backend.prefetch(cancel("42"))
        answer = await resolver.lookup(cancel("42"))
    assert isinstance(answer, Unresolved)
    assert answer.reason == "empty_listing"
    assert gateway.count(STATUS_42) == 1


async def test_nothing_is_prefetched_once_the_listing_is_in_or_when_unpaced(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gateway = with_orders(order(1, "x"))
    async with open_backend(gateway) as backend, backend.resolver() as resolver:
        await resolver.lookup(cancel("7"))
        assert not backend.prefetchable(cancel("42"))
        assert not backend.prefetchable(submit("key-1", A2))
    async with open_backend(gateway, rate=0) as backend:
        assert not backend.prefetchable(cancel("42"))


def test_public_names_are_pinned() -> None:
    import ibkr_recover.cpapi

    assert sorted(ibkr_recover.cpapi.__all__) == [
        "CpapiBackend",
        "CpapiResolver",
        "CpapiSettings",
        "DEFAULT_BASE_URL",
    ]
