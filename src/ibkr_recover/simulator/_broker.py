"""The simulated gateway's session: routing, quirks, pacing, faults, and the request log.

:class:`Broker` turns one parsed request into one :class:`Reply`; it never touches a socket,
so every rule here is a plain synchronous function of the request and the session state. The
server owns the bytes on the wire (delays, truncation, streaming).

Order of the checks for a broker request, each one short-circuiting the rest:

1. an order write (POST/PUT/DELETE under ``/iserver/account/`` or ``/iserver/reply/``) is
   recorded and refused with 405, before anything else, so it is never hidden by a fault;
2. pacing (429, penalty box);
3. a lost or unauthenticated session (401; ``auth/status`` answers ``authenticated: false``);
4. faults, first match wins;
5. the endpoint itself, including "Please query /accounts first" and the warm-up.
"""

from __future__ import annotations

import functools
import random
import time
from collections import deque
from typing import Any, Literal
from urllib.parse import parse_qs

import msgspec

from ._book import EMPTY_LISTING, WRONG_ACCOUNT, Book
from ._http import Request, reason_phrase
from ._pacing import Pacer
from ._scenario import Fault, Scenario, ScenarioError, Switches, merge_switches
from ._shapes import auth_status_body, error_body

__all__ = ["API_PREFIX", "Broker", "LoggedRequest", "Reply", "Stats"]

API_PREFIX = "/v1/api"
CONTROL_PREFIX = "/__sim/"

_encode = msgspec.json.encode

Mode = Literal["normal", "truncated", "oversized", "unannounced", "slow", "drop", "hang"]


class Reply:
    """What to send back: a status and body, and how to deliver them.

    ``mode`` is ``normal`` (send it), ``truncated`` (announce the full length, send half,
    close), ``oversized`` (stream a valid-looking body of ``param`` bytes built around
    ``body``), ``unannounced`` (the same without a ``Content-Length``, then close), ``slow``
    (trickle the body at ``param`` bytes/s), ``drop`` (close without an answer) or ``hang``
    (never answer).
    """

    __slots__ = ("body", "delay", "mode", "param", "status")

    def __init__(self, status: int, body: bytes, mode: Mode = "normal", param: float = 0) -> None:
        self.status = status
        self.body = body
        self.mode: Mode = mode
        self.param = param
        self.delay = 0.0


class LoggedRequest(msgspec.Struct, omit_defaults=True):
    """One broker request as the simulator saw it.

    ``mono`` is ``time.monotonic()`` at arrival, ``wall`` the epoch time; ``endpoint`` the
    simulator's name for it (``auth``, ``accounts``, ``listing``, ``trades``, ``status``,
    ``write``, ``other``); ``body`` is kept for order writes only.
    """

    method: str
    path: str
    query: str
    endpoint: str
    status: int
    mono: float
    wall: float
    fault: str = ""
    body: str = ""


class Stats(msgspec.Struct):
    """Counters since the last reset (the log may have dropped old entries, these do not)."""

    requests: int
    by_endpoint: dict[str, int]
    by_status: dict[int, int]
    rate_limited: int
    unauthorized: int
    writes: int
    faults_fired: int
    session_lost: bool
    penalty_remaining_s: float


def _classify(method: str, path: str) -> str:
    p = path[len(API_PREFIX) :] if path.startswith(API_PREFIX) else ""
    if method not in ("GET", "HEAD") and (
        p.startswith(("/iserver/account/", "/iserver/reply/")) or p == "/iserver/account"
    ):
        return "write"
    if p == "/iserver/auth/status":
        return "auth"
    if p == "/iserver/accounts":
        return "accounts"
    if p == "/iserver/account/orders":
        return "listing"
    if p == "/iserver/account/trades":
        return "trades"
    if p.startswith("/iserver/account/order/status/"):
        return "status"
    return "other"


@functools.lru_cache(maxsize=4096)
def _query(query: str) -> dict[str, list[str]]:
    # Clients repeat the same few query strings (one per account); never mutate the result.
    return parse_qs(query)


def _json(status: int, value: Any) -> Reply:
    return Reply(status, _encode(value))


def _mistyped(value: Any) -> Any:
    """The same document with every string turned into a number: valid JSON, wrong schema."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return [_mistyped(item) for item in value]
    if isinstance(value, dict):
        return {key: _mistyped(item) for key, item in value.items()}
    return value


def _error(status: int, message: str, *, code: bool = True) -> Reply:
    return Reply(status, _encode(error_body(message, status if code else None)))


class Broker:
    """The state of one simulated gateway session.

    Parameters
    ----------
    scenario
        Accounts, orders, trades and the initial switches.

    Not thread-safe: the server calls it from its event loop only.
    """

    def __init__(self, scenario: Scenario) -> None:
        self.initial_switches = scenario.switches
        self.switches = scenario.switches
        self.book = Book(scenario, int(time.time()) * 1000)
        self._pacer = Pacer()
        self._log: deque[LoggedRequest] = deque(maxlen=max(self.switches.log_limit, 0))
        self._fault_seen: list[int] = []
        self._fault_fired: list[int] = []
        self.reset()

    # -- session state -----------------------------------------------------------------

    def reset(self, *, switches: bool = False) -> None:
        """Clear the log, counters, warm-up state, fault counters and penalty box.

        Parameters
        ----------
        switches
            Also restore the scenario's own switches.
        """
        if switches:
            self._apply(self.initial_switches)
        self._log.clear()
        self._pacer.reset()
        self._warm: set[tuple[str, str]] = set()
        self._accounts_queried = False
        self._broker_requests = 0
        self._by_endpoint: dict[str, int] = {}
        self._by_status: dict[int, int] = {}
        self._writes = 0
        self._faults_fired = 0
        self._reset_faults()

    def _reset_faults(self) -> None:
        self._rng = random.Random(self.switches.seed)
        n = len(self.switches.faults)
        self._fault_seen = [0] * n
        self._fault_fired = [0] * n

    def configure(self, update: dict[str, Any]) -> Switches:
        """Merge ``update`` into the switches (see :func:`merge_switches`) and return them.

        Raises
        ------
        ScenarioError
            The merged switches do not validate; nothing changes.
        """
        self._apply(merge_switches(self.switches, update))
        if "faults" in update:
            # A fault list posted again starts afresh, even when it is unchanged.
            self._reset_faults()
        return self.switches

    def _apply(self, switches: Switches) -> None:
        old = self.switches
        self.switches = switches
        if (old.listing_cap, old.foreign_rows) != (switches.listing_cap, switches.foreign_rows):
            self.book.invalidate()
        if switches.log_limit != self._log.maxlen:
            self._log = deque(self._log, maxlen=max(switches.log_limit, 0))
        if (old.faults, old.seed) != (switches.faults, switches.seed):
            self._reset_faults()

    def requests(self) -> list[LoggedRequest]:
        """A copy of the request log, oldest first."""
        return list(self._log)

    def stats(self) -> Stats:
        """The counters since the last reset."""
        remaining = max(0.0, self._pacer.penalty_until - time.monotonic())
        return Stats(
            requests=self._broker_requests + self._writes,
            by_endpoint=dict(self._by_endpoint),
            by_status=dict(self._by_status),
            rate_limited=self._by_status.get(429, 0),
            unauthorized=self._by_status.get(401, 0),
            writes=self._writes,
            faults_fired=self._faults_fired,
            session_lost=self._session_lost(),
            penalty_remaining_s=remaining,
        )

    def _session_lost(self) -> bool:
        limit = self.switches.session_lost_after
        return limit is not None and self._broker_requests > limit

    # -- dispatch ----------------------------------------------------------------------

    def handle(self, request: Request, arrival: float | None = None) -> Reply:
        """Answer one request (broker or control).

        Parameters
        ----------
        request
            The parsed request.
        arrival
            When its bytes arrived (``time.monotonic()``); pacing and the log use it.
        """
        if request.path.startswith(CONTROL_PREFIX):
            return self._control(request)
        now = time.monotonic() if arrival is None else arrival
        endpoint = _classify(request.method, request.path)
        fault = ""
        if endpoint == "write":
            self._writes += 1
            reply = _error(405, "order writes are refused: this gateway is read-only")
            body = request.body[:4096].decode("utf-8", "replace")
        else:
            body = ""
            self._broker_requests += 1
            reply, fault = self._broker(request, endpoint, now)
            reply.delay += self.switches.latency_ms / 1000
        self._by_endpoint[endpoint] = self._by_endpoint.get(endpoint, 0) + 1
        status = reply.status
        self._by_status[status] = self._by_status.get(status, 0) + 1
        self._log.append(
            LoggedRequest(
                request.method,
                request.path,
                request.query,
                endpoint,
                status,
                now,
                time.time(),
                fault,
                body,
            )
        )
        return reply

    def _broker(self, request: Request, endpoint: str, now: float) -> tuple[Reply, str]:
        sw = self.switches
        if sw.pacing is not None:
            refused = self._pacer.admit(sw.pacing, endpoint, now)
            if refused is not None:
                return _error(429, f"Too many requests: {refused}"), ""
        authenticated = not (sw.unauthenticated or self._session_lost())
        if not authenticated and endpoint != "auth":
            return _error(401, "not authenticated"), ""
        allowed = ("GET", "POST") if endpoint == "auth" else ("GET",)
        if request.method not in allowed:
            return _error(405, f"method {request.method} not allowed"), ""
        index, delay = self._pick_fault(endpoint)
        fault = None if index < 0 else sw.faults[index]
        if fault is None:
            reply = self._route(request, endpoint, authenticated, "")
        else:
            self._faults_fired += 1
            fired = self._fault_fired[index]
            reply = self._faulted(request, endpoint, authenticated, fault, fired)
        reply.delay = delay
        return reply, "" if fault is None else fault.kind

    def _pick_fault(self, endpoint: str) -> tuple[int, float]:
        """The index of the fault that decides this request (-1: none), and the added delay."""
        delay = 0.0
        for i, fault in enumerate(self.switches.faults):
            if fault.endpoint not in ("all", endpoint):
                continue
            self._fault_seen[i] += 1
            if self._fault_seen[i] <= fault.skip:
                continue
            if fault.count is not None and self._fault_fired[i] >= fault.count:
                continue
            if fault.probability < 1.0 and self._rng.random() >= fault.probability:
                continue
            self._fault_fired[i] += 1
            if fault.kind == "delay":
                delay += fault.ms / 1000
                continue
            return i, delay
        return -1, delay

    def _faulted(
        self, request: Request, endpoint: str, authenticated: bool, fault: Fault, fired: int
    ) -> Reply:
        kind = fault.kind
        # Faults that stand for "the gateway never processed it" have no side effect
        # (no warm-up consumed, no /accounts priming).
        if kind == "error":
            statuses = fault.status if isinstance(fault.status, list) else [fault.status]
            status = statuses[(fired - 1) % len(statuses)] if statuses else 503
            return _error(status, fault.message or reason_phrase(status))
        if kind == "error_200":
            return _error(200, fault.message or "Internal error", code=False)
        if kind == "drop":
            return Reply(0, b"", "drop")
        if kind == "hang":
            return Reply(0, b"", "hang")
        reply = self._route(request, endpoint, authenticated, kind)
        if kind == "malformed":
            reply.body = reply.body[: max(1, len(reply.body) // 2)]
        elif kind == "truncated":
            reply.mode = "truncated"
        elif kind == "oversized":
            reply.mode = "oversized" if fault.announce else "unannounced"
            reply.param = fault.size
        elif kind == "wrong_schema":
            reply.body = _encode(_mistyped(msgspec.json.decode(reply.body)))
        elif kind == "slow_body":
            reply.mode, reply.param = "slow", fault.bytes_per_s
        return reply

    def _route(self, request: Request, endpoint: str, authenticated: bool, fault: str) -> Reply:
        sw = self.switches
        if endpoint == "auth":
            return _json(
                200,
                auth_status_body(
                    authenticated=authenticated,
                    competing=sw.competing,
                    connected=not sw.disconnected,
                ),
            )
        if endpoint == "accounts":
            self._accounts_queried = True
            return Reply(200, self.book.accounts_bytes)
        if endpoint == "other":
            return _error(404, f"no such endpoint: {request.path}")
        if not self._accounts_queried:
            return _error(500, "Please query /accounts first", code=False)
        if endpoint == "status":
            return self._status(request.path.rsplit("/", 1)[-1], fault)
        params = _query(request.query)
        account = params.get("accountId", [""])[0]
        if endpoint == "listing":
            return self._listing(account, params, fault)
        return self._trades(account or self.book.selected, fault)

    def _warm_up(self, endpoint: str, account: str, enabled: bool) -> bool:
        """True when this call is the session's first for the account and must be empty."""
        if not enabled or (endpoint, account) in self._warm:
            return False
        self._warm.add((endpoint, account))
        return True

    def _listing(self, account: str, params: dict[str, list[str]], fault: str) -> Reply:
        sw = self.switches
        if not account or account not in self.book.accounts:
            return Reply(200, EMPTY_LISTING)
        if params.get("force", ["false"])[0].lower() == "true":
            return Reply(200, EMPTY_LISTING)
        if self._warm_up("listing", account, sw.warmup_empty):
            return Reply(200, EMPTY_LISTING)
        if not params.get("filters") and fault != "wrong_account":
            return Reply(200, self.book.listing(account, sw.listing_cap, sw.foreign_rows))
        rows = self.book.listing_rows(account, sw.listing_cap, sw.foreign_rows)
        if params.get("filters"):
            # IBKR answers filtered listings incompletely; so does the simulator.
            rows = rows[::2]
        if fault == "wrong_account":
            for row in rows:
                row["acct"] = row["account"] = WRONG_ACCOUNT
        return _json(200, {"orders": rows, "snapshot": True})

    def _trades(self, account: str, fault: str) -> Reply:
        sw = self.switches
        if account not in self.book.accounts:
            return Reply(200, b"[]")
        if self._warm_up("trades", account, sw.warmup_trades):
            return Reply(200, b"[]")
        if fault != "wrong_account":
            return Reply(200, self.book.trades(account, sw.foreign_rows))
        rows = self.book.trade_rows(account, sw.foreign_rows)
        for row in rows:
            row["account"] = row["accountCode"] = row["account_allocation_name"] = WRONG_ACCOUNT
        return _json(200, rows)

    def _status(self, raw_id: str, fault: str) -> Reply:
        body = self.book.status(int(raw_id)) if raw_id.isdigit() else None
        if body is None:
            return _error(503, f"Order {raw_id} is not found")
        if fault == "wrong_order":
            body["order_id"] = int(raw_id) + 1
        elif fault == "wrong_account":
            body["account"] = WRONG_ACCOUNT
        return _json(200, body)

    # -- control endpoints -------------------------------------------------------------

    def _control(self, request: Request) -> Reply:
        name = request.path[len(CONTROL_PREFIX) :]
        method = request.method
        if name == "requests" and method == "GET":
            return Reply(200, _encode(self.requests()))
        if name == "stats" and method == "GET":
            return Reply(200, _encode(self.stats()))
        if name == "config" and method == "GET":
            return Reply(200, _encode(self.switches))
        if name == "config" and method == "POST":
            try:
                update = msgspec.json.decode(request.body or b"{}", type=dict[str, Any])
                return Reply(200, _encode(self.configure(update)))
            except (msgspec.DecodeError, ScenarioError) as exc:
                return _error(400, str(exc))
        if name == "reset" and method == "POST":
            try:
                options = msgspec.json.decode(request.body or b"{}")
            except msgspec.DecodeError as exc:
                return _error(400, str(exc))
            self.reset(switches=isinstance(options, dict) and bool(options.get("switches")))
            return Reply(200, b'{"reset":true}')
        return _error(404, f"no such control endpoint: {request.path}")
