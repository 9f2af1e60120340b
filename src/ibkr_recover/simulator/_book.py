"""The scenario's orders and trades, indexed and rendered as IBKR would answer.

Rendering a listing of a thousand rows costs milliseconds, so encoded listing and trades bodies
are cached per account and dropped whenever a switch that shapes them changes.
"""

from __future__ import annotations

from typing import Any

import msgspec

from ._scenario import Account, Order, Scenario
from ._shapes import accounts_body, listing_row, status_body, trade_row

__all__ = ["EMPTY_LISTING", "Book"]

_encode = msgspec.json.encode

EMPTY_LISTING = _encode({"orders": [], "snapshot": True})

#: The account a ``wrong_account`` fault puts into answers; never a scenario account.
WRONG_ACCOUNT = "U0000000"


class Book:
    """Read-only view of a scenario's accounts, orders and trades.

    Parameters
    ----------
    scenario
        The scenario.
    default_ms
        The time (epoch ms) given to orders and trades whose ``time_ms`` is 0.
    """

    def __init__(self, scenario: Scenario, default_ms: int) -> None:
        self.default_ms = default_ms
        self.accounts: dict[str, Account] = {a.id: a for a in scenario.accounts}
        self.ids = [a.id for a in scenario.accounts]
        self.selected = scenario.selected_account or (self.ids[0] if self.ids else "")
        self.status_index: dict[int, tuple[str, Order]] = {}
        for account in scenario.accounts:
            for order in account.orders:
                self.status_index[order.order_id] = (account.id, order)
        self.accounts_bytes = _encode(accounts_body(self.ids, self.selected))
        self._listings: dict[str, bytes] = {}
        self._trades: dict[str, bytes] = {}

    def invalidate(self) -> None:
        """Drop the cached bodies (a switch shaping them changed)."""
        self._listings.clear()
        self._trades.clear()

    def listing(self, account_id: str, cap: int, foreign: int) -> bytes:
        """The encoded listing of one account, at most ``cap`` rows."""
        body = self._listings.get(account_id)
        if body is None:
            rows = self.listing_rows(account_id, cap, foreign)
            body = self._listings[account_id] = _encode({"orders": rows, "snapshot": True})
        return body

    def listing_rows(self, account_id: str, cap: int, foreign: int) -> list[dict[str, Any]]:
        """The listing rows of one account: its own first, then rows of other accounts.

        Foreign rows never take the listing to its cap: whether a listing is complete must
        not depend on rows the client is expected to filter out.
        """
        account = self.accounts.get(account_id)
        if account is None:
            return []
        ms = self.default_ms
        own = [o for o in account.orders if o.in_listing][: max(cap, 0)]
        rows = [listing_row(account_id, o, ms) for o in own]
        room = cap - 1 - len(rows)
        if foreign > 0 and room > 0:
            extra: list[dict[str, Any]] = []
            for other in self.ids:
                if other == account_id or len(extra) >= room:
                    continue
                listed = [o for o in self.accounts[other].orders if o.in_listing][:foreign]
                extra.extend(listing_row(other, o, ms) for o in listed[: room - len(extra)])
            # Foreign rows first, so a client that does not filter by account is caught.
            rows = extra + rows
        return rows

    def trades(self, account_id: str, foreign: int) -> bytes:
        """The encoded 7-day trades of one account."""
        body = self._trades.get(account_id)
        if body is None:
            body = self._trades[account_id] = _encode(self.trade_rows(account_id, foreign))
        return body

    def trade_rows(self, account_id: str, foreign: int) -> list[dict[str, Any]]:
        """The trade rows of one account, plus up to ``foreign`` rows of every other one."""
        account = self.accounts.get(account_id)
        if account is None:
            return []
        ms = self.default_ms
        rows: list[dict[str, Any]] = []
        if foreign > 0:
            for other in self.ids:
                if other != account_id:
                    trades = self.accounts[other].trades[:foreign]
                    rows.extend(trade_row(other, t, ms) for t in trades)
        rows.extend(trade_row(account_id, t, ms) for t in account.trades)
        return rows

    def status(self, order_id: int) -> dict[str, Any] | None:
        """The status body of one order, or ``None`` when the gateway does not know it."""
        hit = self.status_index.get(order_id)
        if hit is None:
            return None
        return status_body(hit[0], hit[1], self.default_ms)
