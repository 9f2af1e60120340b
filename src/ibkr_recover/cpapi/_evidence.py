"""What one account's listing and trades prove about one order (SPEC §3, "Authoritatively absent").

Pure functions over decoded answers; the HTTP side lives in ``_http`` and ``_backend``.

The asymmetry is deliberate: an order found in the listing (or by the status endpoint) is
positive evidence, used even when the trades failed; a trade proves a fill only next to a listing
that does not show the order (a partly filled order still working is in the listing); absence
needs every source to have answered completely.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from .._backend import Absent, Answer, BrokerOrder, Found, Query, Unresolved
from ._models import (
    ListingRow,
    OrderStatus,
    TradeRow,
    epoch_ms_to_datetime,
    normalise_order_id,
    yymmdd_to_datetime,
)

__all__ = [
    "LISTING_CAP",
    "Executions",
    "Failed",
    "OrderBook",
    "decide_not_found",
    "decide_order_status",
    "decide_submit",
    "find_by_order_id",
    "parse_order_id",
]

#: IBKR's listing holds at most this many rows; a listing that reaches it may be cut short.
LISTING_CAP: Final = 1000
#: The client order ids the gateway gives the legs of a bracket submitted under one key.
BRACKET_LEGS: Final = ("parent", "take-profit", "stop-loss")

ListingState = Literal["complete", "empty", "incomplete"]


@dataclass(frozen=True)
class Failed:
    """A shared answer that could not be had; every row that needs it is unresolved with it."""

    reason: str
    detail: str

    def unresolved(self) -> Unresolved:
        return Unresolved(self.reason, self.detail)


@dataclass(frozen=True)
class OrderBook:
    """One account's order listing, indexed by ``order_ref`` and by order id."""

    state: ListingState
    by_ref: Mapping[str, Sequence[ListingRow]]
    by_id: Mapping[int, Sequence[ListingRow]]

    @classmethod
    def build(cls, rows: Sequence[ListingRow], account_id: str) -> OrderBook | Failed:
        """Index the rows; ``empty`` means none of them is the account's."""
        by_ref: defaultdict[str, list[ListingRow]] = defaultdict(list)
        by_id: defaultdict[int, list[ListingRow]] = defaultdict(list)
        ours = 0
        for row in rows:
            if row.account_id is None:
                return Failed("bad_schema", "a listing row names no account (acct)")
            ours += row.account_id == account_id
            if row.order_ref is not None:
                by_ref[row.order_ref].append(row)
            order_id = normalise_order_id(row.order_id)
            if order_id is not None:
                by_id[order_id].append(row)
        state: ListingState
        if len(rows) >= LISTING_CAP:
            state = "incomplete"
        elif ours == 0:
            state = "empty"
        else:
            state = "complete"
        return cls(state, dict(by_ref), dict(by_id))

    def absence(self, *, trust_empty: bool) -> Answer:
        """What "not in this listing" proves."""
        if self.state == "incomplete":
            return Unresolved(
                "incomplete_listing", f"the listing reached its {LISTING_CAP}-row cap"
            )
        if self.state == "empty" and not trust_empty:
            return Unresolved("empty_listing", "the account's listing is empty")
        return Absent()


@dataclass(frozen=True)
class Executions:
    """One account's 7-day trades, indexed by ``order_ref``."""

    by_ref: Mapping[str, Sequence[TradeRow]]

    @classmethod
    def build(cls, rows: Sequence[TradeRow]) -> Executions | Failed:
        by_ref: defaultdict[str, list[TradeRow]] = defaultdict(list)
        for row in rows:
            if row.account_id is None:
                return Failed("bad_schema", "a trade row names no account")
            if row.order_ref is not None:
                by_ref[row.order_ref].append(row)
        return cls(dict(by_ref))


def decide_submit(
    query: Query,
    listing: OrderBook | Failed,
    trades: Executions | Failed,
    *,
    trust_empty: bool,
) -> Answer:
    """A submit, looked up by its key as ``order_ref`` in the listing, then in the trades."""
    key = query.lookup_id
    legs = [f"{key}-{leg}" for leg in BRACKET_LEGS]
    for source in (listing, trades):
        if not isinstance(source, Failed) and any(source.by_ref.get(leg) for leg in legs):
            return Unresolved("group_legs_found", "the broker has legs of a bracket under this key")
    if isinstance(listing, Failed):
        return listing.unresolved()
    rows = listing.by_ref.get(key)
    if rows:
        return _found_in_listing(rows, query.account_id)
    if isinstance(trades, Failed):
        return trades.unresolved()
    executions = trades.by_ref.get(key)
    if executions:
        return _found_in_trades(executions, query.account_id)
    return listing.absence(trust_empty=trust_empty)


def parse_order_id(text: str) -> int | None:
    """A cancel's or modify's broker order id; anything but digits is never sent to IBKR."""
    return normalise_order_id(text)


def find_by_order_id(query: Query, order_id: int, listing: OrderBook | Failed) -> Answer | None:
    """The order in the listing, or None: ask the status endpoint."""
    if isinstance(listing, Failed):
        return None
    rows = listing.by_id.get(order_id)
    return _found_in_listing(rows, query.account_id) if rows else None


def decide_order_status(query: Query, order_id: int, status: OrderStatus) -> Answer:
    """A 200 from ``/iserver/account/order/status/{id}``: checked against what was asked."""
    if normalise_order_id(status.order_id) != order_id:
        return Unresolved("mismatch", "the status endpoint answered about another order")
    if status.account is None or not status.order_status:
        return Unresolved("bad_schema", "the order status names no account or no status")
    if status.account != query.account_id:
        return Unresolved("mismatch", "the status endpoint answered with another account's order")
    return Found(
        BrokerOrder(
            account_id=status.account,
            broker_order_id=str(order_id),
            status=status.order_status,
            time=yymmdd_to_datetime(status.order_time),
        )
    )


def decide_not_found(
    order_id: int, named_id: str, listing: OrderBook | Failed, *, trust_empty: bool
) -> Answer:
    """The status endpoint's "Order N is not found": absence only next to a complete listing."""
    if normalise_order_id(named_id) != order_id:
        return Unresolved("mismatch", "the status endpoint's 'not found' names another order")
    if isinstance(listing, Failed):
        return listing.unresolved()
    return listing.absence(trust_empty=trust_empty)


def _found_in_listing(rows: Sequence[ListingRow], account_id: str) -> Answer:
    if any(row.account_id != account_id for row in rows):
        return Unresolved("mismatch", "a listing row with this id belongs to another account")
    orders = {(normalise_order_id(row.order_id), row.status) for row in rows}
    if len(orders) > 1:
        return Unresolved("ambiguous", f"{len(orders)} listing rows match")
    ((order_id, status),) = orders
    if order_id is None or not status:
        return Unresolved("bad_schema", "the matching listing row has no numeric orderId or status")
    times = [epoch_ms_to_datetime(row.last_execution_ms) for row in rows]
    return Found(
        BrokerOrder(
            account_id=account_id,
            broker_order_id=str(order_id),
            status=status,
            time=max((t for t in times if t is not None), default=None),
        )
    )


def _found_in_trades(rows: Sequence[TradeRow], account_id: str) -> Answer:
    if any(row.account_id != account_id for row in rows):
        return Unresolved("mismatch", "a trade with this order_ref belongs to another account")
    order_ids = {normalise_order_id(row.broker_order_id) for row in rows} - {None}
    if not order_ids:
        return Unresolved("found_in_trades_only", "executed, but the trades carry no order id")
    if len(order_ids) > 1:
        return Unresolved("ambiguous", f"trades of {len(order_ids)} orders carry this order_ref")
    (order_id,) = order_ids
    times = [epoch_ms_to_datetime(row.trade_time_ms) for row in rows]
    return Found(
        BrokerOrder(
            account_id=account_id,
            broker_order_id=str(order_id),
            status="Filled",
            time=max((t for t in times if t is not None), default=None),
        )
    )
