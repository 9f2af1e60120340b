"""The CP Web API simulator, over a real socket: shapes, quirks, faults, pacing, TLS, the log."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from ibkr_recover.simulator import (
    Account,
    Fault,
    Order,
    Pacing,
    Scenario,
    ScenarioError,
    SimulatorHandle,
    Switches,
    Trade,
    demo_scenario,
    load_scenario,
    run_in_thread,
)
from ibkr_recover.simulator._command import build_parser, main, parse_fault

PAPER = "DU1234567"
LIVE = "U7654321"
T0 = 1_702_317_649_000  # 2023-12-11 18:00:49 UTC


def make_scenario(**switches: Any) -> Scenario:
    paper = Account(
        PAPER,
        orders=[
            Order(1001, "k-open", "Submitted", time_ms=T0),
            Order(1002, "k-filled", "Filled", filled=1.0, avg_price="192.26", time_ms=T0),
            Order(1003, "k-sell", "PreSubmitted", side="SELL", total_size=5.0, time_ms=T0),
            Order(1004, "k-old", "Cancelled", in_listing=False, time_ms=T0),
        ],
        trades=[
            Trade("0000e0d5.01", "k-filled", 1002, T0, price="192.26"),
            Trade("0000e0d5.02", "k-anon", None, T0, side="S"),
        ],
    )
    live = Account(LIVE, orders=[Order(2001, "k-live", "PendingCancel", time_ms=T0)])
    return Scenario([paper, live], PAPER, msgspec.convert(switches, Switches))


@pytest.fixture
def sim() -> Iterator[SimulatorHandle]:
    with run_in_thread(make_scenario()) as handle:
        yield handle


@pytest.fixture
def client(sim: SimulatorHandle) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.base_url, timeout=5) as c:
        yield c


def primed(client: httpx.Client) -> httpx.Client:
    """Query /accounts and burn the warm-up of both accounts' listings and trades."""
    assert client.get("/iserver/accounts").status_code == 200
    for account in (PAPER, LIVE):
        client.get("/iserver/account/orders", params={"accountId": account})
        client.get("/iserver/account/trades", params={"days": 7, "accountId": account})
    return client


def listing(client: httpx.Client, account: str = PAPER) -> httpx.Response:
    return client.get("/iserver/account/orders", params={"accountId": account})


# -- endpoints and their shapes ----------------------------------------------------------


def test_auth_status_answers_get_and_post(client: httpx.Client) -> None:
    for method in ("GET", "POST"):
        body = client.request(method, "/iserver/auth/status").json()
        assert body["authenticated"] is True
        assert body["competing"] is False
        assert body["connected"] is True
        assert body["message"] == ""
        assert body["MAC"]
        assert set(body["serverInfo"]) == {"serverName", "serverVersion"}


def test_accounts_lists_scenario_accounts(client: httpx.Client) -> None:
    body = client.get("/iserver/accounts").json()
    assert body["accounts"] == [PAPER, LIVE]
    assert body["selectedAccount"] == PAPER
    assert body["isPaper"] is True


@pytest.mark.parametrize(
    "path",
    [
        "/iserver/account/orders?accountId=DU1234567",
        "/iserver/account/trades?days=7&accountId=DU1234567",
        "/iserver/account/order/status/1001",
    ],
)
def test_order_endpoints_need_accounts_first(client: httpx.Client, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 500
    assert response.json() == {"error": "Please query /accounts first"}
    client.get("/iserver/accounts")
    assert client.get(path).status_code == 200


def test_first_listing_per_account_is_empty_then_rows(client: httpx.Client) -> None:
    client.get("/iserver/accounts")
    assert listing(client).json() == {"orders": [], "snapshot": True}
    orders = listing(client).json()["orders"]
    assert [o["orderId"] for o in orders] == [1001, 1002, 1003]  # 1004 is not in the listing
    # The warm-up is per account: the live account's first listing is empty too.
    assert listing(client, LIVE).json()["orders"] == []
    assert [o["order_ref"] for o in listing(client, LIVE).json()["orders"]] == ["k-live"]


def test_listing_rows_have_ibkr_names_and_types(client: httpx.Client) -> None:
    row = listing(primed(client)).json()["orders"][1]
    assert row["acct"] == row["account"] == PAPER
    assert row["orderId"] == 1002
    assert row["order_ref"] == "k-filled"
    assert row["status"] == "Filled"
    assert row["filledQuantity"] == 1.0
    assert row["remainingQuantity"] == 0.0
    assert row["totalSize"] == 1.0
    assert row["avgPrice"] == "192.26"
    assert row["lastExecutionTime"] == "231211180049"
    assert row["lastExecutionTime_r"] == T0
    assert row["side"] == "BUY"
    assert row["ticker"] == "AAPL"
    assert isinstance(row["conid"], int)
    assert isinstance(row["orderType"], str)
    sell = listing(client).json()["orders"][2]
    assert sell["side"] == "SELL"
    assert sell["totalSize"] == 5.0


def test_listing_without_account_id_is_empty(client: httpx.Client) -> None:
    primed(client)
    assert client.get("/iserver/account/orders").json() == {"orders": [], "snapshot": True}


def test_listing_stops_at_the_cap() -> None:
    with run_in_thread(make_scenario(listing_cap=2, warmup_empty=False)) as sim:
        with httpx.Client(base_url=sim.base_url) as c:
            c.get("/iserver/accounts")
            assert [o["orderId"] for o in listing(c).json()["orders"]] == [1001, 1002]
            sim.configure(listing_cap=1000)
            assert len(listing(c).json()["orders"]) == 3


def test_foreign_rows_are_mixed_in(sim: SimulatorHandle, client: httpx.Client) -> None:
    primed(client)
    sim.configure(foreign_rows=5)
    rows = listing(client, LIVE).json()["orders"]
    assert {r["acct"] for r in rows} == {PAPER, LIVE}
    trades = client.get("/iserver/account/trades", params={"accountId": LIVE}).json()
    assert {t["account"] for t in trades} == {PAPER}


def test_foreign_rows_never_push_a_listing_to_its_cap(sim: SimulatorHandle) -> None:
    sim.configure(foreign_rows=5, listing_cap=4, warmup_empty=False)
    with httpx.Client(base_url=sim.base_url) as c:
        c.get("/iserver/accounts")
        rows = listing(c, LIVE).json()["orders"]
    assert len(rows) == 3  # one own row + two foreign: still below the cap of 4
    assert sum(r["acct"] == LIVE for r in rows) == 1


def test_filtered_listing_is_incomplete(client: httpx.Client) -> None:
    primed(client)
    full = listing(client).json()["orders"]
    params = {"accountId": PAPER, "filters": "filled,submitted"}
    filtered = client.get("/iserver/account/orders", params=params).json()["orders"]
    assert 0 < len(filtered) < len(full)


def test_trades_rows_warm_up_and_optional_order_id(client: httpx.Client) -> None:
    client.get("/iserver/accounts")
    params = {"days": 7, "accountId": PAPER}
    assert client.get("/iserver/account/trades", params=params).json() == []
    first, second = client.get("/iserver/account/trades", params=params).json()
    assert first["execution_id"] == "0000e0d5.01"
    assert first["order_ref"] == "k-filled"
    assert first["order_id"] == 1002
    assert first["account"] == first["accountCode"] == PAPER
    assert first["trade_time"] == "20231211-18:00:49"
    assert first["trade_time_r"] == T0
    assert first["price"] == "192.26"
    assert first["size"] == 1.0
    assert first["side"] == "B"
    assert "order_id" not in second
    assert second["side"] == "S"


def test_status_is_snake_case_with_strings(client: httpx.Client) -> None:
    client.get("/iserver/accounts")
    body = client.get("/iserver/account/order/status/1003").json()
    assert body["order_id"] == 1003
    assert body["order_status"] == "PreSubmitted"
    assert body["cum_fill"] == "0.0"
    assert body["total_size"] == "5.0"
    assert body["size"] == "5.0"
    assert body["account"] == PAPER
    assert body["order_time"] == "231211180049"
    assert body["symbol"] == "AAPL"
    assert body["side"] == "S"


def test_status_knows_orders_hidden_from_the_listing(client: httpx.Client) -> None:
    primed(client)
    assert 1004 not in [o["orderId"] for o in listing(client).json()["orders"]]
    assert client.get("/iserver/account/order/status/1004").json()["order_status"] == "Cancelled"


@pytest.mark.parametrize("order_id", ["999", "k-open"])
def test_unknown_order_is_503_not_found(client: httpx.Client, order_id: str) -> None:
    client.get("/iserver/accounts")
    response = client.get(f"/iserver/account/order/status/{order_id}")
    assert response.status_code == 503
    assert response.json() == {"error": f"Order {order_id} is not found", "statusCode": 503}


@pytest.mark.order_writes
def test_order_writes_are_recorded_and_refused(sim: SimulatorHandle, client: httpx.Client) -> None:
    attempts = [
        ("POST", f"/iserver/account/{PAPER}/orders", {"orders": [{"cOID": "x"}]}),
        ("POST", f"/iserver/account/{PAPER}/order/1001", {"quantity": 2}),
        ("DELETE", f"/iserver/account/{PAPER}/order/1001", None),
        ("PUT", f"/iserver/account/{PAPER}/order/1001", {}),
        ("POST", "/iserver/reply/07a13a5a", {"confirmed": True}),
    ]
    for method, path, body in attempts:
        response = client.request(method, path, json=body)
        assert response.status_code == 405
        assert "error" in response.json()
    assert sim.stats().writes == len(attempts)
    writes = [r for r in sim.requests() if r.endpoint == "write"]
    assert [(r.method, r.path.removeprefix("/v1/api")) for r in writes] == [
        (m, p) for m, p, _ in attempts
    ]
    assert json.loads(writes[0].body) == {"orders": [{"cOID": "x"}]}


def test_unknown_path_is_404(client: httpx.Client) -> None:
    assert client.get("/iserver/nothing").status_code == 404


# -- the request log and the control endpoints --------------------------------------------


def test_request_log_records_every_broker_request(sim: SimulatorHandle) -> None:
    before = time.time()
    with httpx.Client(base_url=sim.base_url) as c:
        c.get("/iserver/accounts")
        c.get("/iserver/account/orders", params={"accountId": PAPER})
        c.get(sim.root_url + "/__sim/stats")  # control traffic is not broker traffic
    first, second = sim.requests()
    assert (first.method, first.path, first.status) == ("GET", "/v1/api/iserver/accounts", 200)
    assert second.query == f"accountId={PAPER}"
    assert second.endpoint == "listing"
    assert second.mono >= first.mono
    assert before <= first.wall <= second.wall <= time.time()


def test_control_endpoints_over_http(sim: SimulatorHandle) -> None:
    with httpx.Client(base_url=sim.root_url) as c:
        c.get("/v1/api/iserver/accounts")
        log = c.get("/__sim/requests").json()
        assert [r["path"] for r in log] == ["/v1/api/iserver/accounts"]
        assert c.get("/__sim/stats").json()["by_endpoint"] == {"accounts": 1}
        switches = c.post("/__sim/config", json={"latency_ms": 5, "pacing": {"rate": 3}}).json()
        assert switches["latency_ms"] == 5
        assert switches["pacing"]["rate"] == 3
        assert switches["pacing"]["listing_interval"] == 5.0
        assert c.get("/__sim/config").json()["pacing"]["rate"] == 3
        assert c.post("/__sim/config", json={"pacing": None}).json().get("pacing") is None
        bad = c.post("/__sim/config", json={"listing_cap": "many"})
        assert bad.status_code == 400
        assert "$.listing_cap" in bad.json()["error"]
        assert c.post("/__sim/reset").status_code == 200
        assert c.get("/__sim/requests").json() == []
        assert c.get("/__sim/nothing").status_code == 404


def test_reset_clears_log_counters_warmup_and_penalty(sim: SimulatorHandle) -> None:
    sim.configure(pacing={"rate": 1, "penalty_s": 60})
    with httpx.Client(base_url=sim.base_url) as c:
        c.get("/iserver/accounts")
        listing(c)
        assert listing(c).status_code == 429
        sim.reset()
        assert sim.requests() == []
        assert sim.stats().requests == 0
        assert sim.stats().penalty_remaining_s == 0
        sim.configure(pacing=None)
        assert listing(c).status_code == 500  # /accounts must be queried again
        c.get("/iserver/accounts")
        assert listing(c).json()["orders"] == []  # the warm-up starts over


def test_reset_can_restore_the_scenario_switches(sim: SimulatorHandle) -> None:
    sim.configure(latency_ms=50, listing_cap=1)
    sim.reset(switches=True)
    assert sim.configure() == Switches()


def test_configure_rejects_invalid_switches(sim: SimulatorHandle) -> None:
    with pytest.raises(ScenarioError, match=r"\$\.faults\[0\]\.kind"):
        sim.configure(faults=[{"kind": "explode"}])


# -- faults -----------------------------------------------------------------------------


def status_of(client: httpx.Client, order_id: int = 1001) -> httpx.Response:
    return client.get(f"/iserver/account/order/status/{order_id}")


def test_error_burst_cycles_statuses_then_succeeds(
    sim: SimulatorHandle, client: httpx.Client
) -> None:
    client.get("/iserver/accounts")
    sim.configure(
        faults=[{"kind": "error", "endpoint": "status", "count": 3, "status": [500, 502, 503]}]
    )
    statuses = [status_of(client).status_code for _ in range(5)]
    assert statuses == [500, 502, 503, 200, 200]
    assert listing(client).status_code == 200  # other endpoints are not affected
    assert sim.stats().faults_fired == 3


def test_error_rate_is_seeded(sim: SimulatorHandle, client: httpx.Client) -> None:
    client.get("/iserver/accounts")
    runs = []
    for _ in range(2):
        sim.configure(seed=7, faults=[Fault("error", "status", probability=0.3, status=502)])
        runs.append([status_of(client).status_code for _ in range(40)])
    assert runs[0] == runs[1]
    assert 3 <= runs[0].count(502) <= 25
    assert set(runs[0]) == {200, 502}


def test_fault_skip_lets_the_first_requests_through(
    sim: SimulatorHandle, client: httpx.Client
) -> None:
    client.get("/iserver/accounts")
    sim.configure(faults=[{"kind": "error", "endpoint": "status", "skip": 2, "count": 1}])
    assert [status_of(client).status_code for _ in range(4)] == [200, 200, 503, 200]


def test_error_200_carries_an_error_body(sim: SimulatorHandle, client: httpx.Client) -> None:
    sim.configure(faults=[{"kind": "error_200", "endpoint": "auth", "message": "no bridge"}])
    response = client.get("/iserver/auth/status")
    assert response.status_code == 200
    assert response.json() == {"error": "no bridge"}


def test_malformed_body_is_not_json(sim: SimulatorHandle, client: httpx.Client) -> None:
    client.get("/iserver/accounts")
    sim.configure(faults=[{"kind": "malformed", "endpoint": "status"}])
    response = status_of(client)
    assert response.status_code == 200
    assert int(response.headers["content-length"]) == len(response.content)
    with pytest.raises(json.JSONDecodeError):
        response.json()


def test_truncated_body_closes_early(sim: SimulatorHandle, client: httpx.Client) -> None:
    client.get("/iserver/accounts")
    sim.configure(faults=[{"kind": "truncated", "endpoint": "status", "count": 1}])
    with pytest.raises(httpx.RemoteProtocolError):
        status_of(client)
    assert status_of(client).status_code == 200  # a fresh connection works again


@pytest.mark.parametrize("path", ["/iserver/account/order/status/1001", "/iserver/account/trades"])
def test_oversized_body_is_valid_json_of_that_size(
    sim: SimulatorHandle, client: httpx.Client, path: str
) -> None:
    primed(client)
    size = 3 * 1024 * 1024 + 17
    sim.configure(faults=[{"kind": "oversized", "size": size, "count": 1}])
    response = client.get(path, params={"accountId": PAPER})
    assert int(response.headers["content-length"]) == size
    assert len(response.content) == size
    body = response.json()
    if isinstance(body, dict):
        assert body["order_id"] == 1001
    else:
        assert body[0]["execution_id"] == "0000e0d5.01"


def test_oversized_body_is_streamed(sim: SimulatorHandle) -> None:
    sim.configure(faults=[{"kind": "oversized", "endpoint": "auth", "size": 64 * 1024 * 1024}])
    with httpx.Client(base_url=sim.base_url) as c, c.stream("GET", "/iserver/auth/status") as r:
        assert r.headers["content-length"] == str(64 * 1024 * 1024)
        chunk = next(r.iter_bytes())
        assert chunk.startswith(b'{"padding":"')


def test_oversized_body_without_a_length_ends_at_close(sim: SimulatorHandle) -> None:
    size = 2 * 1024 * 1024
    sim.configure(
        faults=[{"kind": "oversized", "endpoint": "auth", "size": size, "announce": False}]
    )
    with httpx.Client(base_url=sim.base_url) as c:
        response = c.get("/iserver/auth/status")
    assert "content-length" not in response.headers
    assert len(response.content) == size
    assert response.json()["authenticated"] is True


def test_wrong_schema_is_valid_json_of_the_wrong_types(
    sim: SimulatorHandle, client: httpx.Client
) -> None:
    client.get("/iserver/accounts")
    sim.configure(faults=[{"kind": "wrong_schema", "endpoint": "status"}])
    body = status_of(client).json()
    assert body["order_id"] == 1001
    assert isinstance(body["order_status"], int)
    assert isinstance(body["account"], int)


def test_slow_body_trickles(sim: SimulatorHandle, client: httpx.Client) -> None:
    sim.configure(faults=[{"kind": "slow_body", "endpoint": "auth", "bytes_per_s": 800}])
    started = time.monotonic()
    body = client.get("/iserver/auth/status").json()
    elapsed = time.monotonic() - started
    assert body["authenticated"] is True
    size = len(msgspec.json.encode(body))
    assert elapsed >= 0.8 * size / 800


def test_wrong_order_and_wrong_account(sim: SimulatorHandle, client: httpx.Client) -> None:
    primed(client)
    sim.configure(faults=[{"kind": "wrong_order", "endpoint": "status", "count": 1}])
    assert status_of(client, 1002).json()["order_id"] == 1003
    sim.configure(faults=[{"kind": "wrong_account", "count": 3}])
    assert status_of(client).json()["account"] not in (PAPER, LIVE)
    assert {r["acct"] for r in listing(client).json()["orders"]} - {PAPER, LIVE}
    trades = client.get("/iserver/account/trades", params={"accountId": PAPER}).json()
    assert {t["account"] for t in trades} - {PAPER, LIVE}


def test_drop_closes_without_an_answer(sim: SimulatorHandle, client: httpx.Client) -> None:
    sim.configure(faults=[{"kind": "drop", "endpoint": "auth", "count": 1}])
    with pytest.raises(httpx.TransportError):
        client.get("/iserver/auth/status")
    assert client.get("/iserver/auth/status").status_code == 200


def test_hang_never_answers(sim: SimulatorHandle) -> None:
    sim.configure(faults=[{"kind": "hang", "endpoint": "auth", "count": 1}])
    with httpx.Client(base_url=sim.base_url, timeout=0.3) as c:
        with pytest.raises(httpx.ReadTimeout):
            c.get("/iserver/auth/status")
        assert c.get("/iserver/auth/status").status_code == 200


def test_latency_delays_without_blocking_other_connections(sim: SimulatorHandle) -> None:
    sim.configure(faults=[{"kind": "delay", "endpoint": "accounts", "ms": 600}], latency_ms=20)
    timings: dict[str, float] = {}

    def timed(name: str, path: str) -> None:
        with httpx.Client(base_url=sim.base_url) as c:
            started = time.monotonic()
            c.get(path)
            timings[name] = time.monotonic() - started

    slow = threading.Thread(target=timed, args=("slow", "/iserver/accounts"))
    slow.start()
    time.sleep(0.05)
    timed("fast", "/iserver/auth/status")
    slow.join()
    assert timings["slow"] >= 0.6
    assert 0.02 <= timings["fast"] < 0.4


def test_session_lost_after_n_requests(sim: SimulatorHandle, client: httpx.Client) -> None:
    sim.configure(session_lost_after=2)
    assert client.get("/iserver/accounts").status_code == 200
    assert client.get("/iserver/accounts").status_code == 200
    response = client.get("/iserver/accounts")
    assert response.status_code == 401
    assert response.json() == {"error": "not authenticated", "statusCode": 401}
    assert client.get("/iserver/auth/status").json()["authenticated"] is False
    assert sim.stats().session_lost
    assert sim.stats().unauthorized == 1


@pytest.mark.parametrize(
    ("switch", "field", "value"),
    [
        ("unauthenticated", "authenticated", False),
        ("competing", "competing", True),
        ("disconnected", "connected", False),
    ],
)
def test_auth_states(
    sim: SimulatorHandle, client: httpx.Client, switch: str, field: str, value: bool
) -> None:
    sim.configure({switch: True})
    assert client.post("/iserver/auth/status").json()[field] is value
    expected = 401 if switch == "unauthenticated" else 200
    assert client.get("/iserver/accounts").status_code == expected


# -- pacing -----------------------------------------------------------------------------


def test_global_rate_gives_429_and_a_penalty_box(
    sim: SimulatorHandle, client: httpx.Client
) -> None:
    sim.configure(pacing=Pacing(rate=5, penalty_s=0.6, slack_s=0))
    statuses = [client.get("/iserver/auth/status").status_code for _ in range(8)]
    assert statuses == [200] * 5 + [429] * 3
    body = client.get("/iserver/auth/status").json()
    assert body["statusCode"] == 429
    assert "error" in body
    time.sleep(0.7)
    assert client.get("/iserver/auth/status").status_code == 200
    assert sim.stats().rate_limited == 4


def test_listing_interval_is_enforced(sim: SimulatorHandle, client: httpx.Client) -> None:
    client.get("/iserver/accounts")
    sim.configure(
        pacing={"rate": 0, "listing_interval": 0.3, "trades_interval": 0, "penalty_s": 0.2}
    )
    assert listing(client).status_code == 200
    assert client.get("/iserver/account/trades", params={"accountId": PAPER}).status_code == 200
    assert listing(client, LIVE).status_code == 429  # per endpoint, whatever the account
    time.sleep(0.35)
    assert listing(client, LIVE).status_code == 200
    assert sim.stats().rate_limited == 1


def test_pacing_is_off_by_default(client: httpx.Client) -> None:
    primed(client)
    assert all(listing(client).status_code == 200 for _ in range(30))


# -- HTTP/1.1 on the wire ----------------------------------------------------------------


def raw_exchange(sim: SimulatorHandle, data: bytes, *, expect: int) -> list[bytes]:
    """Send raw bytes, read ``expect`` responses (or until the server closes)."""
    with socket.create_connection(("127.0.0.1", sim.port), timeout=5) as sock:
        sock.sendall(data)
        buf = b""
        responses: list[bytes] = []
        while len(responses) < expect:
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
            while b"\r\n\r\n" in buf:
                head, rest = buf.split(b"\r\n\r\n", 1)
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                if len(rest) < length:
                    break
                responses.append(head + b"\r\n\r\n" + rest[:length])
                buf = rest[length:]
        return responses


def test_pipelined_requests_are_answered_in_order(sim: SimulatorHandle) -> None:
    sim.configure(faults=[{"kind": "delay", "endpoint": "accounts", "ms": 200}])
    requests = b"".join(
        f"GET /v1/api{path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        for path in ("/iserver/accounts", "/iserver/auth/status", "/iserver/nothing")
    )
    responses = raw_exchange(sim, requests, expect=3)
    assert [r.split(b" ", 2)[1] for r in responses] == [b"200", b"200", b"404"]
    assert b'"accounts"' in responses[0]
    assert b'"authenticated"' in responses[1]


def test_request_body_is_read_by_content_length(sim: SimulatorHandle) -> None:
    body = b'{"latency_ms": 1}'
    request = (
        b"POST /__sim/config HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
        b"GET /v1/api/iserver/auth/status HTTP/1.1\r\nHost: x\r\n\r\n" % (len(body), body)
    )
    first, second = raw_exchange(sim, request, expect=2)
    assert b'"latency_ms":1' in first
    assert b" 200 " in second


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /v1/api/iserver/auth/status HTTP/2.0\r\nHost: x\r\n\r\n",
        b"GET /v1/api/iserver/auth/status HTTP/1.1\r\n\r\n",
        b"POST /__sim/config HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /__sim/config HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: x\r\n folded: header\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20_000 + b"\r\n\r\n",
    ],
)
def test_malformed_requests_get_400_and_close(sim: SimulatorHandle, request_bytes: bytes) -> None:
    (response,) = raw_exchange(sim, request_bytes + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", expect=2)
    assert response.startswith(b"HTTP/1.1 400 ")
    assert b"Connection: close" in response
    assert sim.requests() == []


def test_bytes_that_are_not_http_are_refused_at_once(sim: SimulatorHandle) -> None:
    # A TLS ClientHello on the plain-HTTP port: refused without waiting for a head.
    hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"
    started = time.monotonic()
    (response,) = raw_exchange(sim, hello, expect=1)
    assert response.startswith(b"HTTP/1.1 400 ")
    assert time.monotonic() - started < 2


def test_connection_close_is_honoured(sim: SimulatorHandle) -> None:
    request = b"GET /v1/api/iserver/auth/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    responses = raw_exchange(sim, request * 2, expect=2)
    assert len(responses) == 1
    assert b"Connection: close" in responses[0]


def test_keep_alive_serves_many_requests_on_one_connection(client: httpx.Client) -> None:
    ports = set()
    for _ in range(20):
        response = client.get("/iserver/auth/status", extensions={})
        assert response.status_code == 200
        stream: Any = response.extensions["network_stream"]
        ports.add(stream.get_extra_info("client_addr"))
    assert len(ports) == 1


# -- TLS -------------------------------------------------------------------------------


def test_tls_with_the_ca_file() -> None:
    with run_in_thread(make_scenario(), tls=True) as sim:
        assert sim.base_url.startswith("https://127.0.0.1:")
        assert sim.ca_path is not None
        assert sim.ca_path.read_text().startswith("-----BEGIN CERTIFICATE-----")
        context = ssl.create_default_context(cafile=str(sim.ca_path))
        with httpx.Client(base_url=sim.base_url, verify=context) as c:
            assert c.get("/iserver/auth/status").json()["authenticated"] is True
        localhost = sim.base_url.replace("127.0.0.1", "localhost")
        with httpx.Client(verify=context) as c:
            assert c.get(localhost + "/iserver/auth/status").status_code == 200
        with httpx.Client(verify=ssl.create_default_context()) as c:
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                c.get(sim.base_url + "/iserver/auth/status")
        ca_path = sim.ca_path
    assert not ca_path.exists()


@pytest.mark.parametrize(("cert", "reason"), [("expired", "expired"), ("wrong_host", "mismatch")])
def test_tls_failure_certificates(cert: Any, reason: str) -> None:
    with run_in_thread(make_scenario(), tls=True, cert=cert) as sim:
        assert sim.ca_path is not None
        context = ssl.create_default_context(cafile=str(sim.ca_path))
        with httpx.Client(verify=context) as c:
            with pytest.raises(httpx.ConnectError, match=reason):
                c.get(sim.base_url + "/iserver/auth/status")
        assert sim.requests() == []


# -- scenarios ---------------------------------------------------------------------------


def test_scenario_errors_name_the_json_path() -> None:
    with pytest.raises(ScenarioError, match=r"\$\.accounts\[0\]\.orders\[0\]\.order_id"):
        load_scenario(b'{"accounts": [{"id": "DU1", "orders": [{"order_id": "x"}]}]}')
    with pytest.raises(ScenarioError, match="unknown field"):
        load_scenario(b'{"accounts": [], "switches": {"latency": 5}}')


def test_scenario_file_round_trips(tmp_path: Any) -> None:
    path = tmp_path / "scenario.json"
    path.write_bytes(msgspec.json.encode(make_scenario(latency_ms=3)))
    assert load_scenario(path) == make_scenario(latency_ms=3)


def test_no_scenario_serves_the_demo() -> None:
    demo = demo_scenario()
    with run_in_thread() as sim, httpx.Client(base_url=sim.base_url) as c:
        accounts = c.get("/iserver/accounts").json()["accounts"]
    assert accounts == [a.id for a in demo.accounts]


# -- as a process, and the command's options ----------------------------------------------


def start_process(*args: str) -> tuple[subprocess.Popen[str], list[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "ibkr_recover.simulator", "--port", "0", *args],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    assert proc.stdout is not None
    lines = [proc.stdout.readline().strip()]
    if "--tls" in args:
        lines.append(proc.stdout.readline().strip())
    return proc, lines


def test_process_prints_its_url_serves_and_stops_on_sigterm() -> None:
    proc, (line,) = start_process("--latency-ms", "1", "--pacing", "--rate", "50")
    try:
        assert line.startswith("listening on http://127.0.0.1:")
        base_url = line.removeprefix("listening on ")
        assert base_url.endswith("/v1/api")
        with httpx.Client(base_url=base_url) as c:
            assert c.get("/iserver/auth/status").json()["authenticated"] is True
            switches = c.get(base_url.removesuffix("/v1/api") + "/__sim/config").json()
        assert switches["latency_ms"] == 1
        assert switches["pacing"]["rate"] == 50
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert out == ""


def test_process_with_tls_prints_the_ca_path() -> None:
    proc, (line, ca_line) = start_process("--tls")
    try:
        assert line.startswith("listening on https://127.0.0.1:")
        assert ca_line.startswith("ca ")
        ca_path = Path(ca_line.removeprefix("ca "))
        context = ssl.create_default_context(cafile=str(ca_path))
        with httpx.Client(verify=context) as c:
            response = c.get(line.removeprefix("listening on ") + "/iserver/auth/status")
        assert response.status_code == 200
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert not ca_path.exists()


def test_command_refuses_a_bad_scenario(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"accounts": 3}')
    assert main(["--scenario", str(bad), "--port", "0"]) == 2
    assert "$.accounts" in capsys.readouterr().err


def test_command_error_options_become_faults(tmp_path: Path) -> None:
    from ibkr_recover.simulator._command import _switch_update

    options = vars(build_parser().parse_args(["--error-burst", "3", "--error-endpoint", "status"]))
    options.update(error_rate=0.5)
    faults = _switch_update(options)["faults"]
    assert faults[0] == msgspec.to_builtins(Fault("error", "status", 3, status=[500, 502, 503]))
    assert faults[1]["probability"] == 0.5
    assert faults[1]["endpoint"] == "status"


def test_command_options_come_from_the_signature() -> None:
    options = vars(build_parser().parse_args(["--no-warmup", "--fault", "drop:auth:1"]))
    assert options["warmup"] is False
    assert options["fault"] == ["drop:auth:1"]
    assert options["port"] == 5000
    assert options["latency_ms"] is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--cert", "self-signed"])


def test_faults_parse_in_short_and_json_forms() -> None:
    assert parse_fault("error") == Fault("error")
    assert parse_fault("truncated:listing:2") == Fault("truncated", "listing", 2)
    assert parse_fault('{"kind": "slow_body", "bytes_per_s": 10}') == Fault(
        "slow_body", bytes_per_s=10
    )
    for text in ("explode", "error:nowhere", "error:status:many", "a:b:c:d", '{"kind": 1}'):
        with pytest.raises(ScenarioError):
            parse_fault(text)
