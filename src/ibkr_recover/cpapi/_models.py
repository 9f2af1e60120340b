"""Slim msgspec shapes of the CP-API answers the backend reads, and their module-level decoders.

Only the fields a decision uses are declared; unknown fields are skipped. IBKR is loose with
types (``orderId`` is a number in listings, ``order_id`` a string in some answers, times are
numbers or strings), so every id and time field accepts both and is normalised here.

Every answer shape carries the optional ``error`` field: IBKR reports some failures as
HTTP 200 with ``{"error": "..."}``, which must never read as an empty answer.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Final

import msgspec

__all__ = [
    "ACCOUNTS",
    "AUTH_STATUS",
    "ERROR_BODY",
    "LISTING",
    "ORDER_STATUS",
    "TRADES",
    "Accounts",
    "AuthStatus",
    "ErrorBody",
    "Listing",
    "ListingRow",
    "OrderStatus",
    "TradeRow",
    "epoch_ms_to_datetime",
    "normalise_order_id",
    "yymmdd_to_datetime",
]

Id = int | str
Stamp = int | float | str


class ErrorBody(msgspec.Struct, frozen=True):
    """The error shape of any route: ``{"error": "...", "statusCode": 503}``."""

    error: str | None = None


class AuthStatus(msgspec.Struct, frozen=True):
    """``/iserver/auth/status``; a missing flag counts against the session."""

    authenticated: bool = False
    connected: bool = False
    competing: bool = False
    message: str | None = None
    fail: str | None = None
    error: str | None = None


class Accounts(msgspec.Struct, frozen=True):
    """``/iserver/accounts``."""

    accounts: list[str] | None = None
    error: str | None = None


class ListingRow(msgspec.Struct, frozen=True):
    """One row of ``/iserver/account/orders``; ``acct`` and ``account`` both name the account."""

    order_id: Id = msgspec.field(name="orderId")
    status: str
    acct: str | None = None
    account: str | None = None
    order_ref: str | None = None
    last_execution_ms: Stamp | None = msgspec.field(default=None, name="lastExecutionTime_r")

    @property
    def account_id(self) -> str | None:
        return self.acct if self.acct is not None else self.account


class Listing(msgspec.Struct, frozen=True):
    """``/iserver/account/orders``: ``{"orders": [...], "snapshot": bool}``."""

    orders: list[ListingRow] | None = None
    error: str | None = None


class TradeRow(msgspec.Struct, frozen=True):
    """One execution of ``/iserver/account/trades``; IBKR does not promise an order id."""

    account: str | None = None
    account_code: str | None = msgspec.field(default=None, name="accountCode")
    order_ref: str | None = None
    order_id: Id | None = None
    order_id_camel: Id | None = msgspec.field(default=None, name="orderId")
    trade_time_ms: Stamp | None = msgspec.field(default=None, name="trade_time_r")

    @property
    def account_id(self) -> str | None:
        return self.account if self.account is not None else self.account_code

    @property
    def broker_order_id(self) -> Id | None:
        return self.order_id if self.order_id is not None else self.order_id_camel


class OrderStatus(msgspec.Struct, frozen=True):
    """``/iserver/account/order/status/{id}`` (snake_case, unlike the listing)."""

    order_id: Id | None = None
    order_status: str | None = None
    account: str | None = None
    order_time: str | None = None
    error: str | None = None


AUTH_STATUS: Final = msgspec.json.Decoder(AuthStatus)
ACCOUNTS: Final = msgspec.json.Decoder(Accounts)
LISTING: Final = msgspec.json.Decoder(Listing)
#: The trades route answers a bare array, or an object when it fails.
TRADES: Final = msgspec.json.Decoder(list[TradeRow] | ErrorBody)
ORDER_STATUS: Final = msgspec.json.Decoder(OrderStatus)
ERROR_BODY: Final = msgspec.json.Decoder(ErrorBody)

_DIGITS: Final = re.compile(r"[0-9]{1,19}")
_TWELVE_DIGITS: Final = re.compile(r"[0-9]{12}")
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_MS: Final = 253402300799999  # 9999-12-31T23:59:59.999Z


def normalise_order_id(value: Id | None) -> int | None:
    """IBKR order ids are non-negative integers, sent as numbers or digit strings."""
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, str):
        digits = value.strip()
        if _DIGITS.fullmatch(digits):
            return int(digits)
    return None


def epoch_ms_to_datetime(value: Stamp | None) -> datetime | None:
    """``lastExecutionTime_r`` / ``trade_time_r``: epoch milliseconds, UTC; junk gives None."""
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if value is None or isinstance(value, bool):
        return None
    if not 0 < value <= _MAX_MS:  # also false for NaN
        return None
    return _EPOCH + timedelta(milliseconds=round(value))


def yymmdd_to_datetime(value: str | None) -> datetime | None:
    """``order_time``: ``YYMMDDhhmmss`` in UTC; junk gives None.

    Two-digit years follow ``strptime``'s ``%y`` (69-99 are 1969-1999, 00-68 are 2000-2068).
    """
    if value is None or not _TWELVE_DIGITS.fullmatch(value):
        return None
    # Sliced by hand: ``strptime`` costs more than the rest of the row's decision.
    yy = int(value[0:2])
    try:
        return datetime(
            yy + (1900 if yy >= 69 else 2000),
            int(value[2:4]),
            int(value[4:6]),
            int(value[6:8]),
            int(value[8:10]),
            int(value[10:12]),
            tzinfo=UTC,
        )
    except ValueError:
        return None
