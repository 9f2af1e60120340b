"""The rows beside the pending ones: idempotency rows that must never be touched, and a few
plausible rows for the gateway's other tables."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from itertools import chain
from typing import Any

from ._gateway_db import Row
from ._oracle import Decision
from ._row_parts import context_json, rfc3339, sha256_hex

__all__ = ["side_tables", "untouched_rows"]

_FAILURE = (
    '{"code":"BROKER_BACKEND_UNAVAILABLE","message":"broker call failed",'
    '"retryable":true,"user_action":"Inspect the broker-side order state before '
    'retrying","audit_event_id":null}'
)


def untouched_rows(
    now: int, wfs: list[str], accounts: list[str], oids: list[int]
) -> tuple[list[Row], Iterator[tuple[str, Decision]]]:
    """A ``submitted`` and a ``failed_after_writer`` row per workflow, account and order id
    (pair by pair), built a column at a time like the pending rows, and their decisions."""
    n = len(wfs)
    created = range(now - 7200, now - 7200 - n, -1)
    extra = {"paper": "", "live": '"execution_correlation":null,'}
    payloads = [
        f'{{"account_id":"{account}","broker_order_id":"{oid}",{extra[wf]}'
        f'"status":"filled","updated_at":"{rfc3339(t + 3)}"}}'
        for account, oid, wf, t in zip(accounts, oids, wfs, created, strict=True)
    ]
    contexts = [context_json(wf, "submit", a) for wf, a in zip(wfs, accounts, strict=True)]
    done = [f"done-{j:08d}" for j in range(n)]
    failed = [f"failed-{j:08d}" for j in range(n)]
    status = "failed_after_writer"
    submitted: list[Row] = [
        (key, sha256_hex(key), sha256_hex(payload), t, payload, "submitted", t + 3, None)
        for key, payload, t in zip(done, payloads, created, strict=True)
    ]
    unsent: list[Row] = [
        (key, sha256_hex(key), None, t, context, status, t + 1, _FAILURE)
        for key, context, t in zip(failed, contexts, created, strict=True)
    ]
    rows = list(chain.from_iterable(zip(submitted, unsent, strict=True)))
    # The decisions pair by pair, in the rows' order.
    decisions = chain.from_iterable(
        (
            (d, Decision("untouched", "submitted", a, wf, "submit")),
            (f, Decision("untouched", status, a, wf, "submit")),
        )
        for d, f, a, wf in zip(done, failed, accounts, wfs, strict=True)
    )
    return rows, decisions


def side_tables(
    now: int,
    rng: random.Random,
    accounts: list[str],
    first_free_oid: int,
    groups: list[tuple[str, str, str, int]],
) -> dict[str, list[tuple[Any, ...]]]:
    """A few plausible rows for the gateway's other tables: approvals and previews of
    ``accounts``, live orders pending with ids from ``first_free_oid`` on, and ``groups``."""
    events: list[tuple[Any, ...]] = []
    for n, kind in enumerate(("session_started", "order_submitted", "order_cancelled")):
        event_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        payload = f'{{"event":"{kind}","n":{n}}}'
        events.append((None, event_id, kind, now - 60 * n, payload, f"{n:064x}"))
    approvals: list[tuple[Any, ...]] = []
    previews: list[tuple[Any, ...]] = []
    live: list[tuple[Any, ...]] = []
    for n, account in enumerate(accounts):
        preview = f"prev-{n:06d}"
        approvals.append(
            (f"appr-{n:06d}", preview, account, "approved", "{}", now - 900, now + 900, None)
        )
        previews.append((preview, account, f"{n:064x}", "{}", now - 960))
        if account.startswith("U"):
            live.append((account, str(first_free_oid + n), "open", now - 900, now - 30))
    return {
        "audit_events": events,
        "approval_records": approvals,
        "order_preview_records": previews,
        "live_orders_pending": live,
        "order_groups": list(groups),
    }
