"""The CP-API backend's error paths: fatal answers, retries, bounds, malformed answers."""

from __future__ import annotations

import itertools
import ssl
import unicodedata

import httpcore
import httpx
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from ibkr_recover import Absent, BrokerError, BrokerFatal, Found, Unresolved
from ibkr_recover._mask import mask_accounts_in
from ibkr_recover.cpapi._translate import RequestFailed, clip, translate_error
from test_cpapi_fakes import (
    A1,
    FakeGateway,
    cancel,
    open_backend,
    order,
    settings,
    status_body,
    submit,
    trade,
)

LISTING = "/iserver/account/orders"
STATUS_42 = "/iserver/account/order/status/42"


def gateway_with_order() -> FakeGateway:
    gateway = FakeGateway()
    gateway.orders[A1] = [order(1, "key-1")]
    gateway.trades[A1] = [trade("old", order_id=9)]
    return gateway


def status_paths(gateway: FakeGateway) -> list[str]:
    return [p for p in gateway.paths() if p.startswith("/iserver/account/order/status/")]


# -- fatal: 429 and 401 --------------------------------------------------------------------------


async def test_429_is_fatal_and_no_worker_sends_after_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gateway = gateway_with_order()
    gateway.script("/iserver/account/order/status/100", httpx.Response(429, text="Too Many"))
    raised: list[BrokerFatal] = []
    async with open_backend(gateway, retries=5) as backend:

        async def worker(ids: range) -> None:
            async with backend.resolver() as resolver:
                for i in ids:
                    try:
                        await resolver.lookup(cancel(str(i)))
                    except BrokerFatal as exc:
                        raised.append(exc)
                        return

        async with trio.open_nursery() as nursery:
            for w in range(4):
                nursery.start_soon(worker, range(100 + w, 140, 4))
    assert raised
    assert {exc.reason for exc in raised} == {"rate_limited"}
    sent = status_paths(gateway)
    assert sent[-1] == "/iserver/account/order/status/100"
    assert sent.count("/iserver/account/order/status/100") == 1
    assert "penalty box" in str(raised[0])


async def test_429_on_the_listing_stops_the_run(autojump_clock: trio.testing.MockClock) -> None:
    gateway = gateway_with_order()
    gateway.script(LISTING, httpx.Response(429))
    async with open_backend(gateway) as backend, backend.resolver() as resolver:
        with pytest.raises(BrokerFatal) as first:
            await resolver.lookup(submit("key-1"))
        count = len(gateway.sent)
        with pytest.raises(BrokerFatal) as later:
            await resolver.lookup(submit("key-2"))
    assert first.value.reason == later.value.reason == "rate_limited"
    assert len(gateway.sent) == count


@pytest.mark.parametrize("status", [401, 403])
async def test_401_mid_run_is_fatal_auth(
    autojump_clock: trio.testing.MockClock, status: int
) -> None:
    gateway = gateway_with_order()
    gateway.script(
        STATUS_42, httpx.Response(status, json={"error": "not authenticated", "statusCode": 401})
    )
    async with open_backend(gateway) as backend, backend.resolver() as resolver:
        with pytest.raises(BrokerFatal) as raised:
            await resolver.lookup(cancel("42"))
        with pytest.raises(BrokerFatal):
            await resolver.lookup(cancel("43"))
    assert raised.value.reason == "auth"
    assert "log in" in str(raised.value)
    assert status_paths(gateway) == [STATUS_42]


# -- errors that leave the row unresolved --------------------------------------------------------


async def test_200_with_error_is_an_error_not_an_empty_listing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gateway = gateway_with_order()
    gateway.script(LISTING, httpx.Response(200, json={"orders": [], "error": "no bridge"}))
    async with open_backend(gateway) as backend, backend.resolver() as resolver:
        answer = await resolver.lookup(submit("key-2"))
    assert isinstance(answer, Unresolved)
    assert answer.reason == "broker_error"
    assert "no bridge" in answer.detail


async def test_200_with_error_on_trades_is_an_error(autojump_clock: trio.testing.MockClock) -> None:
    gateway = gateway_with_order()
    gateway.script("/iserver/account/trades", httpx.Response(200, json={"error": "boom"}))
    async with open_backend(gateway) as backend, backend.resolver() as resolver:
        answer = await resolver.lookup(submit("key-2"))
    assert isinstance(answer, Unresolved)
    assert answer.reason == "broker_error"


async def test_5xx_is_retried_then_succeeds(autojump_clock: trio.testing.MockClock) -> None:
    gateway = gateway_with_order()
    gateway.status["42"] = status_body(42)
    busy = httpx.Response(503, json={"error": "Service Unavailable", "statusCode": 503})
    gateway.script(STATUS_42, busy, httpx.Response(502, text="<html>bad gateway</html>"))
    async with open_backend(gateway, retries=3, backoff_base=0.5, backoff_cap=8) as backend:
        async with backend.resolver() as resolver:
            answer = await resolver.lookup(cancel("42"))
    assert isinstance(answer, Found)
    times = [s.at for s in gateway.sent if s.path == STATUS_42]
    assert len(times) == 3
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # Full jitter: retry n waits below min(cap, base * 2**n), plus the pacer's 0.1 s slot.
    assert gaps[0] <= 0.5 + 0.1 + 1e-9
    assert gaps[1] <= 1.0 + 0.1 + 1e-9


async def test_5xx_retried_a_bounded_number_of_times_is_server_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gateway = gateway_with_order()
    gateway.script(STATUS_42, *[httpx.Response(500, json={"error": "oops"})] * 10)
    async with open_backend(gateway, retries=2) as backend, backend.resolver() as resolver:
        answer = await resolver.lookup(cancel("42"))
    assert isinstance(answer, Unresolved)
    assert answer.reason == "server_error"
    assert status_paths(gateway) == [STATUS_42] * 3


async def test_a_request_that_never_answers_times_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gateway = gateway_with_order()

    async def hang(request: httpx.Request) -> httpx.Response:
        await trio.sleep(3600)
        raise AssertionError("unreachable")

    gateway.script(STATUS_42, hang, hang)
    async with open_backend(gateway, timeout=2, retries=1) as backend:
        async with backend.resolver() as resolver:
            t0 = trio.current_time()
            answer = await resolver.lookup(cancel("42"))
            elapsed = trio.current_time() - t0
    assert isinstance(answer, Unresolved)
    assert answer.reason == "timeout"
    assert 4.0 <= elapsed <= 4.0 + 0.5 + 0.2


async def test_a_timeout_then_an_answer_is_resolved(autojump_clock: trio.testing.MockClock) -> None:
    gateway = gateway_with_order()
    gateway.status["42"] = status_body(42)

    async def hang(request: httpx.Request) -> httpx.Response:
        await trio.sleep(3600)
        raise AssertionError("unreachable")

    gateway.script(STATUS_42, hang)
    async with open_backend(gateway, timeout=1) as backend, backend.resolver() as resolver:
        assert isinstance(await resolver.lookup(cancel("42")), Found)


@pytest.mark.parametrize(
    "error",
    [
        httpx.ConnectError("connection refused"),
        httpx.ReadError("connection reset"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
    ],
    ids=["connect", "read", "protocol"],
)
async def test_connection_failures_are_retried_then_unavailable(
    autojump_clock: trio.testing.MockClock, error: httpx.HTTPError
) -> None:
    gateway = gateway_with_order()

    async def fail(request: httpx.Request) -> httpx.Response:
        raise error

    gateway.script(STATUS_42, fail, fail, fail)
    async with open_backend(gateway, retries=2) as backend, backend.resolver() as resolver:
        answer = await resolver.lookup(cancel("42"))
    assert isinstance(answer, Unresolved)
    assert answer.reason == "unavailable"
    assert len(status_paths(gateway)) == 3


async def test_gateway_down_mid_run_stops_the_run_after_a_few_rows(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gateway = gateway_with_order()
    gateway.status["60"] = status_body(60)

    async def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    for i in range(50, 60):
        gateway.script(f"/iserver/account/order/status/{i}", refuse, refuse)
    async with open_backend(gateway, retries=1, breaker_threshold=3) as backend:
        async with backend.resolver() as resolver:
            first = [await resolver.lookup(cancel(str(i))) for i in (50, 51)]
            assert isinstance(await resolver.lookup(cancel("60")), Found)  # resets the count
            more = [await resolver.lookup(cancel(str(i))) for i in (52, 53)]
            with pytest.raises(BrokerFatal) as raised:
                await resolver.lookup(cancel("54"))
            sent = len(gateway.sent)
            with pytest.raises(BrokerFatal):
                await resolver.lookup(cancel("55"))
    assert {a.reason for a in first + more if isinstance(a, Unresolved)} == {"unavailable"}
    assert raised.value.reason == "unavailable"
    assert "3 requests in a row" in str(raised.value)
    assert len(gateway.sent) == sent


async def test_breaker_threshold_zero_never_stops(autojump_clock: trio.testing.MockClock) -> None:
    gateway = gateway_with_order()
    gateway.script(STATUS_42, *[httpx.Response(500, json={"error": "down"})] * 20)
    async with open_backend(gateway, retries=0, breaker_threshold=0) as backend:
        async with backend.resolver() as resolver:
            for _ in range(20):
                answer = await resolver.lookup(cancel("42"))
                assert isinstance(answer, Unresolved)
                assert answer.reason == "server_error"


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "streamed"])
async def test_oversized_body_is_abandoned(
    autojump_clock: trio.testing.MockClock, declared: bool
) -> None:
    gateway = gateway_with_order()
    body = b'{"orders": [' + b'{"orderId": 1, "status": "x", "acct": "DU1"},' * 5000 + b"]}"

    async def chunks() -> object:
        for start in range(0, len(body), 4096):
            yield body[start : start + 4096]

    response = (
        httpx.Response(200, content=body) if declared else httpx.Response(200, content=chunks())  # type: ignore[arg-type]
    )
    gateway.script(LISTING, response)
    async with open_backend(gateway, max_body_bytes=64 * 1024) as backend:
        async with backend.resolver() as resolver:
            answer = await resolver.lookup(submit("key-2"))
    assert isinstance(answer, Unresolved)
    assert answer.reason == "response_too_large"
    assert gateway.count(LISTING) == 1


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"orders": [', "bad_json"),
        (b"<html>gateway</html>", "bad_json"),
        (b'{"orders": "none"}', "bad_schema"),
        (b'{"orders": [{"orderId": 1}]}', "bad_schema"),
        (b'{"orders": [{"orderId": true, "status": "Filled", "acct": "DU1111111"}]}', "bad_schema"),
        (b'{"orders": [{"orderId": 1, "status": "Filled"}]}', "bad_schema"),
        (b'{"snapshot": true}', "bad_schema"),
        (b"[]", "bad_schema"),
    ],
    ids=[
        "truncated",
        "html",
        "orders-not-a-list",
        "row-without-status",
        "bool-id",
        "row-without-account",
        "no-orders",
        "array",
    ],
)
async def test_malformed_listing_is_never_absence(
    autojump_clock: trio.testing.MockClock, body: bytes, reason: str
) -> None:
    gateway = gateway_with_order()
    gateway.script(LISTING, httpx.Response(200, content=body))
    async with open_backend(gateway) as backend, backend.resolver() as resolver:
        answer = await resolver.lookup(submit("key-2"))
    assert isinstance(answer, Unresolved)
    assert answer.reason == reason
    assert gateway.count(LISTING) == 1


async def test_schema_error_names_the_json_path(autojump_clock: trio.testing.MockClock) -> None:
    gateway = gateway_with_order()
    gateway.script(
        STATUS_42, httpx.Response(200, json={"order_id": 42, "order_status": 7, "account": A1})
    )
    async with open_backend(gateway) as backend, backend.resolver() as resolver:
        answer = await resolver.lookup(cancel("42"))
    assert isinstance(answer, Unresolved)
    assert answer.reason == "bad_schema"
    assert "$.order_status" in answer.detail


async def test_ibkr_string_and_number_quirks_are_tolerated(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gateway = FakeGateway()
    gateway.orders[A1] = [order("42", "key-1", last_ms=1702317649000)]
    gateway.orders[A1][0]["lastExecutionTime_r"] = "1702317649000"
    gateway.status["43"] = status_body("43")
    async with open_backend(gateway) as backend, backend.resolver() as resolver:
        found = await resolver.lookup(submit("key-1"))
        by_status = await resolver.lookup(cancel("43"))
    assert isinstance(found, Found)
    assert found.order.broker_order_id == "42"
    assert found.order.time is not None
    assert isinstance(by_status, Found)
    assert by_status.order.broker_order_id == "43"


async def test_redirect_is_an_error(autojump_clock: trio.testing.MockClock) -> None:
    gateway = gateway_with_order()
    gateway.script(
        STATUS_42, httpx.Response(302, headers={"location": "https://evil.example/login"})
    )
    async with open_backend(gateway) as backend, backend.resolver() as resolver:
        answer = await resolver.lookup(cancel("42"))
    assert isinstance(answer, Unresolved)
    assert answer.reason == "redirect"
    assert status_paths(gateway) == [STATUS_42]


async def test_other_4xx_is_a_broker_error(autojump_clock: trio.testing.MockClock) -> None:
    gateway = gateway_with_order()
    gateway.script(
        STATUS_42, httpx.Response(400, json={"error": "Bad Request: no bridge", "statusCode": 400})
    )
    async with open_backend(gateway) as backend, backend.resolver() as resolver:
        answer = await resolver.lookup(cancel("42"))
    assert isinstance(answer, Unresolved)
    assert answer.reason == "broker_error"
    assert "no bridge" in answer.detail


async def test_query_accounts_first_requeries_accounts_once_then_retries(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gateway = gateway_with_order()
    gateway.status["42"] = status_body(42)
    gateway.script(STATUS_42, httpx.Response(500, json={"error": "Please query /accounts first"}))
    async with open_backend(gateway) as backend, backend.resolver() as resolver:
        before = gateway.count("/iserver/accounts")
        answer = await resolver.lookup(cancel("42"))
    assert isinstance(answer, Found)
    assert gateway.count("/iserver/accounts") == before + 1
    assert status_paths(gateway) == [STATUS_42, STATUS_42]


async def test_query_accounts_first_again_after_requery_is_unresolved(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gateway = gateway_with_order()
    first = httpx.Response(500, json={"error": "Please query /accounts first"})
    gateway.script(STATUS_42, first, first, first)
    async with open_backend(gateway) as backend, backend.resolver() as resolver:
        answer = await resolver.lookup(cancel("42"))
    assert isinstance(answer, Unresolved)
    assert answer.reason == "broker_error"
    assert len(status_paths(gateway)) == 2


async def test_many_workers_asked_to_query_accounts_requery_it_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gateway = gateway_with_order()
    first = httpx.Response(500, json={"error": "Please query /accounts first"})
    for i in range(4):
        gateway.status[str(50 + i)] = status_body(50 + i)
        gateway.script(f"/iserver/account/order/status/{50 + i}", first)
    async with open_backend(gateway) as backend:
        before = gateway.count("/iserver/accounts")
        await backend.listing(A1)

        async def worker(order_id: int) -> None:
            async with backend.resolver() as resolver:
                assert isinstance(await resolver.lookup(cancel(str(order_id))), Found)

        async with trio.open_nursery() as nursery:
            for i in range(4):
                nursery.start_soon(worker, 50 + i)
    assert gateway.count("/iserver/accounts") == before + 1


# -- pacing --------------------------------------------------------------------------------------


async def test_every_request_is_paced_by_the_global_rate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gateway = FakeGateway()
    gateway.orders[A1] = [order(1, "key-1")]
    for i in range(100, 130):
        gateway.status[str(i)] = status_body(i)
    async with open_backend(gateway, rate=10) as backend:

        async def worker(ids: range) -> None:
            async with backend.resolver() as resolver:
                for i in ids:
                    assert isinstance(await resolver.lookup(cancel(str(i))), Found)

        async with trio.open_nursery() as nursery:
            for w in range(6):
                nursery.start_soon(worker, range(100 + w, 130, 6))
    times = sorted(s.at for s in gateway.sent)
    for i in range(len(times) - 10):
        assert times[i + 10] - times[i] >= 1.0 - 1e-9


async def test_rate_zero_does_not_wait(autojump_clock: trio.testing.MockClock) -> None:
    gateway = FakeGateway()
    gateway.orders[A1] = [order(1, "key-1")]
    for i in range(100, 150):
        gateway.status[str(i)] = status_body(i)
    async with open_backend(gateway, rate=0, listing_interval=0) as backend:
        t0 = trio.current_time()
        async with backend.resolver() as resolver:
            for i in range(100, 150):
                await resolver.lookup(cancel(str(i)))
    assert trio.current_time() == t0


# -- preflight -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("auth", "words"),
    [
        ({"authenticated": False, "connected": True, "competing": False}, "log in"),
        ({"authenticated": True, "connected": True, "competing": True}, "competes"),
        ({"authenticated": True, "connected": False, "competing": False}, "not connected"),
        ({"connected": True}, "log in"),
    ],
    ids=["unauthenticated", "competing", "disconnected", "missing-flags"],
)
async def test_preflight_refuses_an_unusable_session(
    autojump_clock: trio.testing.MockClock, auth: dict[str, bool], words: str
) -> None:
    gateway = FakeGateway(auth=auth)
    async with open_backend(gateway, preflight=False) as backend:
        with pytest.raises(BrokerError, match=words):
            await backend.preflight()
    assert gateway.paths() == ["/iserver/auth/status"]


async def test_preflight_401_says_to_log_in(autojump_clock: trio.testing.MockClock) -> None:
    gateway = FakeGateway()
    gateway.script("/iserver/auth/status", httpx.Response(401, text="not authenticated"))
    async with open_backend(gateway, preflight=False) as backend:
        with pytest.raises(BrokerError, match="log in to the Client Portal Gateway") as raised:
            await backend.preflight()
    assert raised.value.exit_code == 3


async def test_preflight_unreachable_gateway_names_the_cause(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gateway = FakeGateway()

    async def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused")

    gateway.script("/iserver/auth/status", refuse, refuse)
    async with open_backend(gateway, preflight=False, retries=1) as backend:
        with pytest.raises(BrokerError, match=r"cannot connect to the gateway at https://gw\.test"):
            await backend.preflight()


async def test_preflight_remembers_the_accounts(autojump_clock: trio.testing.MockClock) -> None:
    gateway = FakeGateway(accounts=["U1", "U2"])
    async with open_backend(gateway) as backend:
        assert backend.accounts == frozenset({"U1", "U2"})
    assert gateway.paths() == ["/iserver/auth/status", "/iserver/accounts"]


@pytest.mark.parametrize(
    "body", [{"accounts": []}, {"error": "no accounts"}, {"selectedAccount": "x"}]
)
async def test_preflight_without_accounts_is_refused(
    autojump_clock: trio.testing.MockClock, body: dict[str, object]
) -> None:
    gateway = FakeGateway()
    gateway.script("/iserver/accounts", httpx.Response(200, json=body))
    async with open_backend(gateway, preflight=False) as backend:
        with pytest.raises(BrokerError, match="accounts"):
            await backend.preflight()


async def test_resolver_before_preflight_is_a_programming_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_backend(FakeGateway(), preflight=False) as backend:
        with pytest.raises(RuntimeError, match="preflight"):
            async with backend.resolver():
                pass


async def test_backend_used_outside_async_with_is_a_programming_error() -> None:
    from ibkr_recover.cpapi import CpapiBackend

    backend = CpapiBackend(settings(), _transport=httpx.MockTransport(FakeGateway()))
    with pytest.raises(RuntimeError, match="async with"):
        await backend.preflight()


# -- the one translation of lower-layer errors ---------------------------------------------------


def test_tls_cause_two_levels_down_is_surfaced() -> None:
    # The shape httpx gives on trio: ConnectError('') <- httpcore.ConnectError(Broken(...))
    # whose argument was caused by the SSLCertVerificationError.
    verify = ssl.SSLCertVerificationError(
        1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"
    )
    verify.verify_message = "unable to get local issuer certificate"
    broken = trio.BrokenResourceError()
    broken.__cause__ = verify
    inner = httpcore.ConnectError(broken)
    outer = httpx.ConnectError("")
    outer.__cause__ = inner
    error = translate_error(outer, "GET /iserver/auth/status", settings())
    assert isinstance(error, BrokerFatal)
    assert error.reason == "tls"
    assert "certificate verify failed: unable to get local issuer certificate" in str(error)
    assert "--cacert" in str(error)


def test_tls_cause_under_httpcore_connect_error_is_surfaced() -> None:
    # The shape the tool's own connections give: httpcore.ConnectError(Broken(...)) <- verify.
    verify = ssl.SSLCertVerificationError(1, "certificate verify failed")
    verify.verify_message = "self-signed certificate"
    broken = trio.BrokenResourceError()
    broken.__cause__ = verify
    error = translate_error(httpcore.ConnectError(broken), "GET /x", settings())
    assert isinstance(error, BrokerFatal)
    assert (error.reason, "self-signed certificate" in str(error)) == ("tls", True)


@pytest.mark.parametrize(
    ("exc", "reason", "retryable", "says"),
    [
        (httpcore.ConnectError(OSError(111, "Connection refused")), "unavailable", True,
         "cannot connect to the gateway"),
        (httpcore.ReadTimeout("timed out"), "timeout", True, "no complete answer"),
        (httpcore.RemoteProtocolError("Server disconnected without sending a response."),
         "unavailable", True, "the connection failed"),
        (httpcore.ReadError(OSError(104, "Connection reset by peer")), "unavailable", True,
         "the connection failed"),
    ],
)  # fmt: skip
def test_httpcore_errors_are_translated(
    exc: Exception, reason: str, retryable: bool, says: str
) -> None:
    error = translate_error(exc, "GET /x", settings())
    assert isinstance(error, RequestFailed)
    assert (error.reason, error.retryable) == (reason, retryable)
    assert says in str(error)


def _clip_char_by_char(text: str, limit: int = 200) -> str:
    cleaned = "".join(
        " " if unicodedata.category(ch).startswith("C") else ch for ch in text[: limit * 2]
    )
    cleaned = mask_accounts_in(" ".join(cleaned.split()))
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"


@given(
    st.text(max_size=500) | st.text(st.sampled_from("DU12345 67\t\n\x1b\u2028\xa0é"), max_size=500)
)
def test_clip_is_one_clean_line_whatever_the_text(text: str) -> None:
    clipped = clip(text)
    assert clipped == _clip_char_by_char(text)
    assert len(clipped) <= 200
    assert not any(unicodedata.category(ch).startswith("C") for ch in clipped)


def test_tls_eof_mid_stream_is_a_connection_failure_not_a_tls_policy_error() -> None:
    outer = httpx.ReadError("")
    outer.__cause__ = ssl.SSLEOFError(8, "EOF occurred in violation of protocol")
    error = translate_error(outer, "GET /x", settings())
    assert not isinstance(error, BrokerFatal)
    assert getattr(error, "reason", None) == "unavailable"


async def test_an_absent_submit_costs_one_listing_and_one_trades(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gateway = gateway_with_order()
    async with open_backend(gateway) as backend, backend.resolver() as resolver:
        for i in range(20):
            assert await resolver.lookup(submit(f"nope-{i}")) == Absent()
    assert gateway.paths()[:2] == ["/iserver/auth/status", "/iserver/accounts"]
    assert sorted(gateway.paths()[2:]) == sorted([LISTING, "/iserver/account/trades"])
