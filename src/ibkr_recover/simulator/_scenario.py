"""The scenario: what the simulated broker knows, and the switches that bend its behaviour.

A scenario is a JSON document decoded into the Structs below. Field names are snake_case
throughout the file; the server renders them in IBKR's own (mixed) spelling. Decoding errors
name the JSON path of the offending value (``Expected `int`, got `str` - at
`$.accounts[0].orders[3].order_id```), which is all the validation a hand-written file needs.

The switch model is deliberately flat: a handful of top-level switches for the behaviours that
are either on or off for the whole session (warm-up, cap, pacing, lost session), and a list of
:class:`Fault` objects for everything that hits some requests of some endpoint.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

import msgspec

__all__ = [
    "Account",
    "Endpoint",
    "Fault",
    "FaultKind",
    "Order",
    "Pacing",
    "Scenario",
    "ScenarioError",
    "Switches",
    "Trade",
    "demo_scenario",
    "dump_scenario",
    "load_scenario",
    "merge_switches",
    "write_scenario",
]

#: The endpoints a fault can be scoped to; ``all`` matches every broker request.
Endpoint = Literal["auth", "accounts", "listing", "trades", "status", "all"]

FaultKind = Literal[
    "error",
    "error_200",
    "malformed",
    "truncated",
    "oversized",
    "slow_body",
    "wrong_order",
    "wrong_account",
    "wrong_schema",
    "delay",
    "drop",
    "hang",
]


class ScenarioError(ValueError):
    """A scenario or a switch update does not decode; the message names the JSON path."""


class Order(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=True, gc=False):
    """One order at the broker.

    (Orders and trades hold scalars only, so they stay out of the cycle collector's sight:
    a generated scenario has a million of them.)

    ``time_ms`` is the order's last activity (epoch milliseconds); it is served as the
    listing's ``lastExecutionTime``/``lastExecutionTime_r`` and the status endpoint's
    ``order_time``. ``0`` means "when the simulator loaded the scenario".
    ``in_listing=False`` hides the order from the listing while the status endpoint still
    knows it (an order of an earlier session that the gateway still caches).
    """

    order_id: int
    order_ref: str = ""
    status: str = "Submitted"
    in_listing: bool = True
    time_ms: int = 0
    total_size: float = 1.0
    filled: float = 0.0
    avg_price: str = ""
    ticker: str = "AAPL"
    conid: int = 265598
    side: Literal["BUY", "SELL"] = "BUY"
    order_type: str = "LMT"
    price: str = "190.00"
    parent_id: int | None = None


class Trade(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=True, gc=False):
    """One execution in the account's 7-day trades.

    ``order_id`` is optional, as at IBKR: the trades endpoint does not guarantee it.
    """

    execution_id: str
    order_ref: str = ""
    order_id: int | None = None
    time_ms: int = 0
    size: float = 1.0
    price: str = "190.00"
    side: Literal["B", "S"] = "B"
    symbol: str = "AAPL"
    conid: int = 265598


class Account(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=True):
    """An account the session has trading access to, with its orders and executions."""

    id: str
    orders: list[Order] = msgspec.field(default_factory=list)
    trades: list[Trade] = msgspec.field(default_factory=list)


class Pacing(msgspec.Struct, forbid_unknown_fields=True):
    """IBKR's pacing limits; present in :class:`Switches` means "enforced".

    ``rate`` is the global budget in requests per second over a sliding window (``0``: no
    global limit); ``listing_interval``/``trades_interval`` the minimum gap in seconds between
    two calls of that endpoint. A violation answers 429 and opens a penalty box of
    ``penalty_s`` seconds during which every broker request gets 429. ``slack_s`` forgives
    that much arrival jitter (a gap of ``listing_interval - slack_s`` still passes): the
    client's clock and the gateway's never agree exactly, and a request on a fresh connection
    arrives later than one on a warm one. ``0`` makes the limits exact.
    """

    rate: float = 10.0
    listing_interval: float = 5.0
    trades_interval: float = 5.0
    penalty_s: float = 600.0
    slack_s: float = 0.1


class Fault(msgspec.Struct, forbid_unknown_fields=True):
    """One fault, applied to the requests of ``endpoint`` that it matches.

    A request matches when the first ``skip`` matching requests have gone by, fewer than
    ``count`` have fired (``None``: no limit), and the seeded random draw falls under
    ``probability``. The first matching fault of the list decides the response; ``delay``
    faults only add ``ms`` and let the next fault decide.

    ``status`` is the HTTP status of an ``error`` (a list is cycled through: a burst of
    500, 502, 503); ``size`` the byte size of an ``oversized`` body, and ``announce`` whether
    its ``Content-Length`` says so (``False``: no length, the body ends when the connection
    closes, so only counting the bytes can stop it); ``bytes_per_s`` the rate of a
    ``slow_body``; ``message`` the error text of ``error``/``error_200``.
    """

    kind: FaultKind
    endpoint: Endpoint = "all"
    count: int | None = None
    skip: int = 0
    probability: float = 1.0
    status: int | list[int] = 503
    message: str = ""
    size: int = 16 * 1024 * 1024
    announce: bool = True
    bytes_per_s: float = 64.0
    ms: float = 0.0


class Switches(msgspec.Struct, forbid_unknown_fields=True):
    """The behaviour of the simulated gateway, changeable at run time.

    Attributes
    ----------
    latency_ms
        Delay of every broker response, in milliseconds (no connection is blocked by it).
    warmup_empty
        The first listing call per account and session answers an empty listing.
    warmup_trades
        The same for the trades endpoint.
    listing_cap
        The most rows one listing returns (IBKR: 1000).
    foreign_rows
        Mix up to that many rows of every other account into each listing and trades answer
        (never pushing a listing to its cap), as IBKR does when ``accountId`` is ignored.
    pacing
        Enforce IBKR's pacing; ``None`` (the default) serves flat out.
    session_lost_after
        After that many broker requests the session is lost: everything answers 401 and
        ``auth/status`` says unauthenticated.
    unauthenticated, competing, disconnected
        The state ``auth/status`` reports; ``unauthenticated`` also answers 401 everywhere.
    faults
        The fault list (see :class:`Fault`).
    seed
        Seed of the random draws of probabilistic faults; reset re-seeds.
    log_limit
        How many requests the log keeps (counters count them all).
    """

    latency_ms: float = 0.0
    warmup_empty: bool = True
    warmup_trades: bool = True
    listing_cap: int = 1000
    foreign_rows: int = 0
    pacing: Pacing | None = None
    session_lost_after: int | None = None
    unauthenticated: bool = False
    competing: bool = False
    disconnected: bool = False
    faults: list[Fault] = msgspec.field(default_factory=list)
    seed: int = 0
    log_limit: int = 200_000


class Scenario(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=True):
    """Accounts (in the order ``/iserver/accounts`` lists them) and the switches."""

    accounts: list[Account]
    selected_account: str | None = None
    switches: Switches = msgspec.field(default_factory=Switches)


_decoder = msgspec.json.Decoder(Scenario)
_encoder = msgspec.json.Encoder()


def load_scenario(source: Path | str | bytes) -> Scenario:
    """Decode a scenario from a file path or from JSON bytes.

    Parameters
    ----------
    source
        A path to a JSON file, or the JSON document itself as ``bytes``.

    Raises
    ------
    ScenarioError
        The document is not valid JSON or does not match the format; the message names the
        JSON path. A missing or unreadable file raises ``OSError`` as usual.
    """
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    try:
        return _decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise ScenarioError(f"invalid scenario: {exc}") from exc


def dump_scenario(scenario: Scenario) -> bytes:
    """Encode a scenario as compact JSON (defaults omitted)."""
    return _encoder.encode(scenario)


def write_scenario(scenario: Scenario, path: Path | str) -> None:
    """Write ``scenario`` to ``path`` as :func:`dump_scenario` encodes it, an account at a time.

    A generated scenario of a million orders is a JSON text of 100 MB or more; encoding it
    account by account into one small reused buffer, rather than into a buffer of that size,
    takes a third of the time (the big buffer's growth and first touch of its pages was most
    of the work).
    """
    # Accounts are the first field: the document without them opens with '{"accounts":[]'.
    shell = _encoder.encode(msgspec.structs.replace(scenario, accounts=[]))
    opening = b'{"accounts":['
    buffer = bytearray()
    with Path(path).open("wb") as out:
        out.write(opening)
        for n, account in enumerate(scenario.accounts):
            if n:
                out.write(b",")
            _encoder.encode_into(account, buffer)
            out.write(buffer)
        out.write(shell[len(opening) :])


def merge_switches(current: Switches, update: dict[str, Any]) -> Switches:
    """Return ``current`` with ``update`` merged in, as by ``POST /__sim/config``.

    Objects merge key by key (``{"pacing": {"rate": 5}}`` changes only the rate, turning pacing
    on with defaults if it was off); any other value, lists included, replaces; ``null``
    resets a nullable switch (``{"pacing": null}`` turns pacing off).

    Raises
    ------
    ScenarioError
        The merged switches do not validate; the message names the JSON path.
    """
    merged = _deep_merge(msgspec.to_builtins(current), update)
    try:
        return msgspec.convert(merged, Switches)
    except msgspec.ValidationError as exc:
        raise ScenarioError(f"invalid switches: {exc}") from exc


def _deep_merge(base: Any, update: Any) -> Any:
    if not isinstance(update, dict):
        return update
    out = dict(base) if isinstance(base, dict) else {}
    for key, value in update.items():
        out[key] = _deep_merge(out.get(key), value)
    return out


def demo_scenario(now_ms: int | None = None) -> Scenario:
    """A small scenario for a first run: one paper and one live account, a few orders.

    Parameters
    ----------
    now_ms
        The reference time in epoch milliseconds (default: now); order times lie shortly
        before it.
    """
    now = int(time.time()) * 1000 if now_ms is None else now_ms
    paper, live = "DU1234567", "U7654321"
    return Scenario(
        accounts=[
            Account(
                id=paper,
                orders=[
                    Order(1001, "demo-submit-1", "Submitted", time_ms=now - 600_000),
                    Order(
                        1002,
                        "demo-submit-2",
                        "Filled",
                        filled=1.0,
                        avg_price="189.95",
                        time_ms=now - 500_000,
                    ),
                    Order(1003, "demo-submit-3", "Cancelled", time_ms=now - 400_000),
                    Order(1004, "demo-old", "Filled", in_listing=False, time_ms=now - 90_000_000),
                ],
                trades=[
                    Trade(
                        "0000e0d5.6576fd38.01.01",
                        "demo-submit-2",
                        1002,
                        now - 500_000,
                        price="189.95",
                    ),
                ],
            ),
            Account(
                id=live,
                orders=[
                    Order(2001, "demo-live-1", "PreSubmitted", side="SELL", time_ms=now - 300_000),
                    Order(2002, "demo-live-2", "PendingCancel", time_ms=now - 200_000),
                ],
            ),
        ],
        selected_account=paper,
    )
