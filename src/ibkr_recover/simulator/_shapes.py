"""IBKR's response shapes, built from scenario objects.

Each function returns plain builtins ready for ``msgspec.json.encode``, with IBKR's field
names and types, including its inconsistencies: the listing is camelCase with float
quantities and ``side`` ``BUY``/``SELL``; the status endpoint is snake_case with quantities as
strings and ``side`` ``B``/``S``; ``orderId`` is an int in both.
"""

from __future__ import annotations

import time
from typing import Any

from ._scenario import Order, Trade

__all__ = [
    "SERVER_INFO",
    "accounts_body",
    "auth_status_body",
    "error_body",
    "listing_row",
    "status_body",
    "trade_row",
    "yymmddhhmmss",
]

SERVER_INFO = {
    "serverName": "JifC11113",
    "serverVersion": "Build 10.25.0m, Nov 17, 2023 11:29:27 AM",
}

_STATUS_CCP = {
    "Filled": ("2", "Order Filled"),
    "Cancelled": ("4", "Order Cancelled"),
    "ApiCancelled": ("4", "Order Cancelled"),
    "Inactive": ("5", "Order Inactive"),
    "PendingCancel": ("6", "Order Pending Cancel"),
    "PreCancelled": ("6", "Order Pending Cancel"),
}
_ORDER_TYPE_WORD = {"LMT": "Limit", "MKT": "Market", "STP": "Stop", "STP_LIMIT": "Stop Limit"}


def yymmddhhmmss(ms: int) -> str:
    """IBKR's compact UTC timestamp (``231211180049``) of an epoch-milliseconds time."""
    return time.strftime("%y%m%d%H%M%S", time.gmtime(ms // 1000))


def _qty(value: float) -> str:
    return repr(float(value))


def listing_row(account: str, order: Order, default_ms: int) -> dict[str, Any]:
    """One row of ``GET /iserver/account/orders``."""
    ms = order.time_ms or default_ms
    word = _ORDER_TYPE_WORD.get(order.order_type, order.order_type.title())
    verb = "Bought" if order.side == "BUY" else "Sold"
    size = order.total_size
    row: dict[str, Any] = {
        "acct": account,
        "conidex": str(order.conid),
        "conid": order.conid,
        "account": account,
        "orderId": order.order_id,
        "cashCcy": "USD",
        "sizeAndFills": f"{order.filled:g}/{size:g}",
        "orderDesc": f"{verb} {size:g} {word} {order.price}, DAY",
        "description1": order.ticker,
        "ticker": order.ticker,
        "secType": "STK",
        "listingExchange": "NASDAQ.NMS",
        "remainingQuantity": float(size - order.filled),
        "filledQuantity": float(order.filled),
        "totalSize": float(size),
        "companyName": order.ticker,
        "status": order.status,
        "order_ccp_status": order.status,
        "avgPrice": order.avg_price,
        "origOrderType": word.upper(),
        "supportsTaxOpt": "1",
        "lastExecutionTime": yymmddhhmmss(ms),
        "orderType": word,
        "bgColor": "#FFFFFF",
        "fgColor": "#000000",
        "order_ref": order.order_ref,
        "timeInForce": "DAY",
        "lastExecutionTime_r": ms,
        "side": order.side,
        "price": order.price,
    }
    if order.parent_id is not None:
        row["parentId"] = order.parent_id
    return row


def status_body(account: str, order: Order, default_ms: int) -> dict[str, Any]:
    """The body of ``GET /iserver/account/order/status/{orderId}``."""
    ms = order.time_ms or default_ms
    ccp, description = _STATUS_CCP.get(order.status, ("0", "Order Submitted"))
    return {
        "sub_type": None,
        "request_id": "209",
        "server_id": "0",
        "order_id": order.order_id,
        "conidex": str(order.conid),
        "conid": order.conid,
        "symbol": order.ticker,
        "side": "B" if order.side == "BUY" else "S",
        "contract_description_1": order.ticker,
        "listing_exchange": "NASDAQ.NMS",
        "company_name": order.ticker,
        "size": _qty(order.total_size - order.filled),
        "total_size": _qty(order.total_size),
        "currency": "USD",
        "account": account,
        "order_type": _ORDER_TYPE_WORD.get(order.order_type, order.order_type).upper(),
        "cum_fill": _qty(order.filled),
        "order_status": order.status,
        "order_ccp_status": ccp,
        "order_status_description": description,
        "tif": "DAY",
        "fg_color": "#000000",
        "bg_color": "#FFFFFF",
        "order_not_editable": order.status in ("Filled", "Cancelled", "ApiCancelled", "Inactive"),
        "cannot_cancel_order": order.status in ("Filled", "Cancelled", "ApiCancelled"),
        "sec_type": "STK",
        "average_price": order.avg_price,
        "limit_price": order.price,
        "order_time": yymmddhhmmss(ms),
    }


def trade_row(account: str, trade: Trade, default_ms: int) -> dict[str, Any]:
    """One row of ``GET /iserver/account/trades``."""
    ms = trade.time_ms or default_ms
    verb = "Bought" if trade.side == "B" else "Sold"
    row: dict[str, Any] = {
        "execution_id": trade.execution_id,
        "symbol": trade.symbol,
        "supports_tax_opt": "1",
        "side": trade.side,
        "order_description": f"{verb} {trade.size:g} @ {trade.price} on ISLAND",
        "trade_time": time.strftime("%Y%m%d-%H:%M:%S", time.gmtime(ms // 1000)),
        "trade_time_r": ms,
        "size": float(trade.size),
        "price": trade.price,
        "order_ref": trade.order_ref,
        "submitter": "user1234",
        "exchange": "ISLAND",
        "commission": "1.01",
        "net_amount": round(trade.size * float(trade.price or 0), 2),
        "account": account,
        "accountCode": account,
        "account_allocation_name": account,
        "company_name": trade.symbol,
        "contract_description_1": trade.symbol,
        "sec_type": "STK",
        "listing_exchange": "NASDAQ.NMS",
        "conid": trade.conid,
        "conidEx": str(trade.conid),
        "clearing_id": "IB",
        "clearing_name": "IB",
        "liquidation_trade": "0",
        "is_event_trading": "0",
    }
    if trade.order_id is not None:
        row["order_id"] = trade.order_id
    return row


def auth_status_body(*, authenticated: bool, competing: bool, connected: bool) -> dict[str, Any]:
    """The body of ``/iserver/auth/status``."""
    return {
        "authenticated": authenticated,
        "competing": competing,
        "connected": connected,
        "message": "" if authenticated else "not authenticated",
        "MAC": "F4:03:43:CD:BD:C0",
        "fail": "",
        "hardware_info": "1c4558e8|F4:03:43:CD:BD:C0",
        "serverInfo": SERVER_INFO,
    }


def accounts_body(accounts: list[str], selected: str) -> dict[str, Any]:
    """The body of ``GET /iserver/accounts``."""
    return {
        "accounts": accounts,
        "acctProps": {
            a: {"hasChildAccounts": False, "supportsCashQty": True, "supportsFractions": False}
            for a in accounts
        },
        "aliases": {a: a for a in accounts},
        "allowFeatures": {"showGFIS": True, "allowCrypto": False},
        "chartPeriods": {},
        "groups": [],
        "profiles": [],
        "selectedAccount": selected,
        "serverInfo": SERVER_INFO,
        "sessionId": "5f1b2c3d.00000042",
        "isFt": False,
        "isPaper": selected.startswith("D"),
    }


def error_body(message: str, status: int | None) -> dict[str, Any]:
    """IBKR's error shapes: ``{"error": ...}`` plus ``statusCode`` when IBKR sends one."""
    if status is None:
        return {"error": message}
    return {"error": message, "statusCode": status}
