"""The baseline: the gateway's own recovery algorithm, ported as written, for the benchmarks only.

``ibkr-agent-gateway`` recovers its write-ahead rows in one sequential loop
(``recovery.rs``; shared/reference/gateway-reference.md §4.5): load every pending row, then for
each one, in ``created_at`` order, make one broker round trip and one autocommitted write:

* no context or a blank key: unresolved;
* look the order up: a submit by its key in the account's order listing, a cancel/modify by its
  broker order id (else the key) at the order-status endpoint;
* found: ``UPDATE`` the row to ``submitted`` with the lifecycle payload (one commit);
* "not found": ``DELETE`` the row (one commit);
* anything else: unresolved.

It is the speed to beat, not a second implementation to trust: it has none of the tool's
evidence rules (an empty listing clears a submit, as the original's does). One synchronous
``httpx.Client`` (one keep-alive connection), ``sqlite3`` in autocommit mode with the gateway's
``journal_mode=WAL`` and ``synchronous=NORMAL``::

    python bench/baseline.py DB BASE_URL          # prints one JSON object
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sqlite3
import time
from datetime import UTC, datetime
from typing import Any

import httpx

_OPEN = {"pendingsubmit", "presubmitted", "submitted", "warnstate"}
_MAP = {
    "pendingcancel": "pending_cancel",
    "precancelled": "pending_cancel",
    "filled": "filled",
    "cancelled": "cancelled",
    "apicancelled": "cancelled",
    "inactive": "refused",
}
_UNKNOWN = {"submit": "submitted", "cancel": "cancelled", "modify": "open"}


def lifecycle(status: str, operation: str, workflow: str) -> str:
    norm = status.lower().replace("_", "").replace(" ", "")
    mapped = "open" if norm in _OPEN else _MAP.get(norm)
    if mapped is None:
        return _UNKNOWN[operation]
    return "open" if mapped == "pending_cancel" and workflow == "paper" else mapped


def payload(account: str, order_id: str, status: str, workflow: str) -> str:
    record: dict[str, Any] = {
        "account_id": account,
        "broker_order_id": order_id,
        "status": status,
        "updated_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if workflow == "live":
        record["execution_correlation"] = None
    return json.dumps(record, sort_keys=True, separators=(",", ":"))


def order_status(
    client: httpx.Client, account: str, operation: str, lookup: str
) -> dict[str, str] | None:
    """The order as ``{account, order_id, status}``, None for "not found"; raises otherwise."""
    if operation == "submit":
        answer = client.get("/iserver/account/orders", params={"accountId": account})
        answer.raise_for_status()
        for row in answer.json().get("orders") or []:
            if row.get("order_ref") == lookup and row.get("acct") == account:
                return {
                    "account": account,
                    "order_id": str(row["orderId"]),
                    "status": row["status"],
                }
        return None
    answer = client.get(f"/iserver/account/order/status/{lookup}")
    if answer.status_code == 503 and "not found" in answer.text:
        return None
    answer.raise_for_status()
    body = answer.json()
    return {
        "account": body["account"],
        "order_id": str(body["order_id"]),
        "status": body["order_status"],
    }


def recover(db: str, base_url: str) -> dict[str, Any]:
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    started = time.perf_counter()
    pending = conn.execute(
        "SELECT idempotency_key, request_hash, payload_json FROM order_idempotency_records "
        "WHERE status = 'pending_writer' ORDER BY created_at ASC"
    ).fetchall()
    report = {"scanned": len(pending), "completed": 0, "cleared_missing": 0, "unresolved": 0}
    requests = 0
    with httpx.Client(base_url=base_url, timeout=10.0, trust_env=False) as client:
        client.get("/iserver/accounts").raise_for_status()
        requests += 1
        for key, request_hash, text in pending:
            try:
                ctx = json.loads(text) if text and text.strip() not in ("", "{}") else None
            except ValueError:
                ctx = None
            if not isinstance(ctx, dict) or not key.strip() or "account_id" not in ctx:
                report["unresolved"] += 1
                continue
            operation = ctx.get("operation", "")
            lookup = key if operation == "submit" else (ctx.get("broker_order_id") or key)
            requests += 1
            try:
                order = order_status(client, ctx["account_id"], operation, lookup)
            except (httpx.HTTPError, ValueError, KeyError):
                report["unresolved"] += 1
                continue
            if order is None:
                conn.execute(
                    "DELETE FROM order_idempotency_records WHERE idempotency_key = ? "
                    "AND request_hash = ? AND status = 'pending_writer'",
                    (key, request_hash),
                )
                report["cleared_missing"] += 1
                continue
            status = lifecycle(order["status"], operation, ctx.get("workflow", "paper"))
            text = payload(order["account"], order["order_id"], status, ctx.get("workflow", ""))
            conn.execute(
                "UPDATE order_idempotency_records SET status = 'submitted', payload_json = ?, "
                "result_hash = ?, updated_at = ?, failure_json = NULL "
                "WHERE idempotency_key = ? AND request_hash = ? AND status = 'pending_writer'",
                (
                    text,
                    hashlib.sha256(text.encode()).hexdigest(),
                    int(time.time()),
                    key,
                    request_hash,
                ),
            )
            report["completed"] += 1
    elapsed = time.perf_counter() - started
    conn.close()
    report["requests"] = requests
    report["elapsed_s"] = round(elapsed, 3)
    report["rows_per_s"] = round(report["scanned"] / elapsed, 1) if elapsed > 0 else 0.0
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("db")
    parser.add_argument("base_url")
    args = parser.parse_args()
    print(json.dumps(recover(args.db, args.base_url)))


if __name__ == "__main__":
    main()
