"""An in-process fake of IBKR's Client Portal endpoints for ``httpx.MockTransport`` (no tests here)."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import trio

from ibkr_recover import Query
from ibkr_recover.cpapi import CpapiBackend, CpapiSettings

BASE = "https://gw.test/v1/api"
PREFIX = "/v1/api"
A1 = "DU1111111"
A2 = "DU2222222"

Script = httpx.Response | Callable[[httpx.Request], Awaitable[httpx.Response]]


def order(
    order_id: int | str,
    ref: str | None = None,
    *,
    acct: str = A1,
    status: str = "Submitted",
    last_ms: int | None = None,
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "acct": acct,
        "account": acct,
        "orderId": order_id,
        "status": status,
        "conid": 265598,
        "ticker": "AAPL",
        "filledQuantity": "0.0",
        "remainingQuantity": 5.0,
        "totalSize": "5.0",
    }
    if ref is not None:
        row["order_ref"] = ref
    if last_ms is not None:
        row["lastExecutionTime_r"] = last_ms
    return row


def trade(
    ref: str, *, acct: str = A1, order_id: int | None = None, time_ms: int = 1702317649000
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "execution_id": f"0000e0d5.{ref}",
        "account": acct,
        "accountCode": acct,
        "order_ref": ref,
        "trade_time_r": time_ms,
        "size": 5.0,
        "price": "192.26",
    }
    if order_id is not None:
        row["order_id"] = order_id
    return row


def status_body(
    order_id: int | str, *, account: str = A1, status: str = "Filled"
) -> dict[str, Any]:
    return {
        "order_id": order_id,
        "order_status": status,
        "account": account,
        "order_time": "231211180049",
        "cum_fill": "5.0",
        "total_size": "5.0",
        "side": "S",
    }


def not_found(order_id: int | str) -> httpx.Response:
    return httpx.Response(503, json={"error": f"Order {order_id} is not found", "statusCode": 503})


@dataclass
class Sent:
    """One request as the fake saw it, with the virtual time it arrived."""

    path: str
    params: dict[str, str]
    at: float


@dataclass
class FakeGateway:
    """IBKR's endpoints over in-memory data; ``script`` overrides answers one by one."""

    accounts: list[str] = field(default_factory=lambda: [A1, A2])
    auth: dict[str, Any] = field(
        default_factory=lambda: {
            "authenticated": True,
            "connected": True,
            "competing": False,
            "message": "",
            "fail": "",
            "MAC": "F4:03:43:CD:BD:C0",
        }
    )
    orders: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    trades: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    status: dict[str, dict[str, Any]] = field(default_factory=dict)
    scripts: dict[str, list[Script]] = field(default_factory=lambda: defaultdict(list))
    sent: list[Sent] = field(default_factory=list)

    def script(self, path: str, *answers: Script) -> None:
        self.scripts[path].extend(answers)

    def paths(self) -> list[str]:
        return [s.path for s in self.sent]

    def count(self, path: str) -> int:
        return sum(s.path == path for s in self.sent)

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.method == "GET"
        path = request.url.path.removeprefix(PREFIX)
        self.sent.append(Sent(path, dict(request.url.params), trio.current_time()))
        await trio.lowlevel.checkpoint()
        queued = self.scripts.get(path)
        if queued:
            answer = queued.pop(0)
            return answer if isinstance(answer, httpx.Response) else await answer(request)
        return self.default(path, request)

    def default(self, path: str, request: httpx.Request) -> httpx.Response:
        params = request.url.params
        if path == "/iserver/auth/status":
            return httpx.Response(200, json=self.auth)
        if path == "/iserver/accounts":
            return httpx.Response(200, json={"accounts": self.accounts, "selectedAccount": A1})
        if path == "/iserver/account/orders":
            return httpx.Response(
                200, json={"orders": self.orders[params["accountId"]], "snapshot": True}
            )
        if path == "/iserver/account/trades":
            return httpx.Response(200, json=self.trades[params["accountId"]])
        if path.startswith("/iserver/account/order/status/"):
            order_id = path.rsplit("/", 1)[1]
            if order_id in self.status:
                return httpx.Response(200, json=self.status[order_id])
            return not_found(order_id)
        return httpx.Response(404, json={"error": "no such route"})


def settings(**overrides: Any) -> CpapiSettings:
    values: dict[str, Any] = {"base_url": BASE}
    values.update(overrides)
    return CpapiSettings(**values)


@asynccontextmanager
async def open_backend(
    gateway: FakeGateway, *, preflight: bool = True, **overrides: Any
) -> AsyncIterator[CpapiBackend]:
    backend = CpapiBackend(
        settings(**overrides), _transport=httpx.MockTransport(gateway), _rng=random.Random(7)
    )
    async with backend:
        if preflight:
            await backend.preflight()
        yield backend


def submit(key: str, account: str = A1) -> Query:
    return Query(key=key, workflow="live", operation="submit", account_id=account, lookup_id=key)


def cancel(order_id: str, account: str = A1, *, key: str = "cancel-key") -> Query:
    return Query(
        key=key, workflow="live", operation="cancel", account_id=account, lookup_id=order_id
    )
