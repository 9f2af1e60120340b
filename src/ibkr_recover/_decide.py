"""The decision rules of SPEC §3: what to ask about a pending row, and what to do with the answer.

Pure functions, no I/O: :func:`plan` applies rules 1-4 (context, key, age, lookup id) and either
returns the broker :class:`~ibkr_recover.Query` or an already final :class:`Outcome`;
:func:`decide` applies rule 5 to the broker's answer.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

from ._backend import Absent, Answer, Found, Operation, Query, Unresolved, Workflow
from ._domain import BadContext, lifecycle_payload, parse_context

__all__ = ["Decision", "Outcome", "PendingRow", "decide", "plan", "unresolved"]

Decision = Literal["complete", "clear", "unresolved", "skipped", "conflict"]


class PendingRow(msgspec.Struct, frozen=True, array_like=True):
    """One ``pending_writer`` row as read from the table.

    ``rowid`` is where the row sat when it was read (``None`` for a ``WITHOUT ROWID`` table):
    a hint that lets the writer skip the key's index, never part of the compare-and-set.
    """

    key: str
    request_hash: str
    created_at: object
    payload_json: object
    rowid: int | None = None


class Outcome(msgspec.Struct):
    """What was decided for one row; ``payload_json``/``result_hash`` are set for completions."""

    key: str
    request_hash: str
    decision: Decision
    reason: str
    workflow: Workflow | None = None
    operation: Operation | None = None
    account_id: str | None = None
    broker_status: str | None = None
    lifecycle_status: str | None = None
    broker_order_id: str | None = None
    payload_json: str | None = None
    result_hash: str | None = None
    rowid: int | None = None

    @property
    def writes(self) -> bool:
        return self.decision in ("complete", "clear")


def unresolved(row: PendingRow, reason: str, query: Query | None = None) -> Outcome:
    """An outcome that leaves the row untouched, with ``reason``."""
    if query is None:
        return Outcome(row.key, row.request_hash, "unresolved", reason, rowid=row.rowid)
    return Outcome(
        row.key,
        row.request_hash,
        "unresolved",
        reason,
        workflow=query.workflow,
        operation=query.operation,
        account_id=query.account_id,
        rowid=row.rowid,
    )


def plan(row: PendingRow, now: float, min_age: float) -> Query | Outcome:
    """Rules 1-4: decide whether to ask the broker about ``row``, and with which id."""
    try:
        context = parse_context(row.payload_json)
    except BadContext:
        return unresolved(row, "bad_context")
    if context is None:
        return unresolved(row, "no_context")
    if not isinstance(row.key, str) or not row.key.strip():
        return unresolved(row, "invalid_key")
    created_at = row.created_at
    if isinstance(created_at, bool) or not isinstance(created_at, int | float):
        return unresolved(row, "bad_timestamp")
    if now - created_at < min_age:
        outcome = unresolved(row, "too_recent")
        outcome.decision = "skipped"
        outcome.workflow, outcome.operation = context.workflow, context.operation
        outcome.account_id = context.account_id
        return outcome
    # A submit was sent with the key as cOID; a cancel or modify names the broker's order.
    lookup_id = row.key if context.operation == "submit" else context.broker_order_id or row.key
    return Query(row.key, context.workflow, context.operation, context.account_id, lookup_id)


def decide(
    row: PendingRow,
    query: Query,
    answer: Answer,
    *,
    now: float,
    max_clear_age: float,
    run_time: datetime,
) -> Outcome:
    """Rule 5: turn the broker's answer into a completion, a clear, or an unresolved row."""
    match answer:
        case Found(order=order):
            payload, result_hash, status = lifecycle_payload(
                order, query.operation, query.workflow, run_time
            )
            return Outcome(
                row.key,
                row.request_hash,
                "complete",
                "found",
                workflow=query.workflow,
                operation=query.operation,
                account_id=order.account_id,
                broker_status=order.status,
                lifecycle_status=status,
                broker_order_id=order.broker_order_id,
                payload_json=payload,
                result_hash=result_hash,
                rowid=row.rowid,
            )
        case Absent():
            # The broker's listings only reach back so far: an old submit's absence proves nothing.
            if query.operation == "submit" and now - _age_base(row) > max_clear_age:
                return unresolved(row, "beyond_horizon", query)
            outcome = unresolved(row, "cleared_missing", query)
            outcome.decision = "clear"
            return outcome
        case Unresolved(reason=reason):
            return unresolved(row, reason, query)


def _age_base(row: PendingRow) -> float:
    # plan() only hands out queries for rows with a numeric created_at.
    created_at = row.created_at
    return float(created_at) if isinstance(created_at, int | float) else float("-inf")
