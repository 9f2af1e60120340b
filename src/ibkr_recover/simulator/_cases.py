"""The cases rows are generated as, and the mixes that combine them.

A case says what the broker knows about a row's order and how the row itself looks; its
expected decision follows from SPEC §3 alone (see :mod:`._rows` for how each case is built
and labelled):

==================  =========================================================================
kind                the row, and what the broker knows
==================  =========================================================================
listed              order in the account's listing with ``status`` -> complete
status_only         cancel/modify: order unknown to the listing, known to the status endpoint
absent              no such order anywhere, listing complete -> clear ``cleared_missing``
absent_old          submit, absent, older than max-clear-age -> ``beyond_horizon``
trades_id           submit, only in the trades, rows carry the order id -> complete ``filled``
trades_noid         submit, only in the trades, no order id -> ``found_in_trades_only``
legs                submit, absent, bracket legs ``{key}-parent`` ... listed -> ``group_legs_found``
empty_listing       submit in an account whose listing is always empty -> ``empty_listing``
capped              submit in an account whose listing is at the cap -> ``incomplete_listing``
unknown_account     account not in ``/iserver/accounts`` -> ``unknown_account``
fallback_found      cancel/modify without ``broker_order_id``; the key is the broker id -> complete
fallback_absent     the same, order unknown -> clear
foreign_ref         submit; an order with that ``order_ref`` exists in *another* account -> clear
too_recent          younger than min-age -> skipped ``too_recent``
no_context          payload ``{}`` or empty -> ``no_context``
bad_context         malformed recovery context -> ``bad_context``
blank_key           blank idempotency key, valid context -> ``invalid_key``
==================  =========================================================================
"""

from __future__ import annotations

from typing import NamedTuple

from ._oracle import ALL_STATUSES

__all__ = ["CASES_BY_MIX", "Case"]

WORKFLOWS = ("paper", "live")


class Case(NamedTuple):
    """One kind of row: ``kind`` (table above), its workflow, operation and broker status."""

    kind: str
    workflow: str = "paper"
    operation: str = "submit"
    status: str = ""


def _mixed() -> list[Case]:
    cases: list[Case] = []
    for wf in WORKFLOWS:
        for op in ("submit", "cancel", "modify"):
            for status in ALL_STATUSES:
                cases.append(Case("listed", wf, op, status))
                if op != "submit":
                    cases.append(Case("status_only", wf, op, status))
            cases.append(Case("unknown_account", wf, op))
            cases.append(Case("too_recent", wf, op))
            kinds: tuple[str, ...]
            if op == "submit":
                kinds = ("absent", "absent_old", "trades_id", "trades_noid", "legs")
                kinds += ("empty_listing", "capped", "foreign_ref")
            else:
                kinds = ("absent", "fallback_found", "fallback_absent")
            cases.extend(Case(kind, wf, op) for kind in kinds)
        cases.extend(Case(kind, wf) for kind in ("no_context", "bad_context", "blank_key"))
    return cases


def _per_order() -> list[Case]:
    cases: list[Case] = []
    for wf in WORKFLOWS:
        for op in ("cancel", "modify"):
            cases.extend(Case("status_only", wf, op, status) for status in ALL_STATUSES)
            cases.extend([Case("absent", wf, op)] * 2)
    return cases


def _listing() -> list[Case]:
    cases: list[Case] = []
    for wf in WORKFLOWS:
        cases.extend(Case("listed", wf, "submit", status) for status in ALL_STATUSES)
        cases.append(Case("absent", wf, "submit"))
    return cases


def _crash() -> list[Case]:
    """A gateway's backlog after a crash, per 99 rows.

    Mostly submits: 30 that the broker has (in the listing, or filled and only in the
    trades), 54 that never reached it (the gateway died between its write-ahead row and the
    send); 10 cancels and modifies, 6 of orders in the listing and 4 answered by the status
    endpoint (orders of an earlier session); a few too recent, without context, or with
    bracket legs at the broker. Listings stay below 900 rows up to 2,600 pending rows of an
    account.
    """
    common = ("Submitted", "PreSubmitted", "Filled", "Cancelled", "PendingSubmit", "Inactive")
    cases: list[Case] = []
    for wf in WORKFLOWS:
        cases.extend(Case("listed", wf, "submit", common[n % len(common)]) for n in range(12))
        cases.extend([Case("trades_id", wf)] * 3)
        cases.extend([Case("absent", wf)] * 27)
        cases.append(Case("listed", wf, "cancel", "Submitted"))
        cases.append(Case("listed", wf, "cancel", "Cancelled"))
        cases.append(Case("listed", wf, "modify", "Submitted"))
        cases.append(Case("status_only", wf, "cancel", "Filled"))
        cases.append(Case("status_only", wf, "modify", "Submitted"))
        cases.extend([Case("too_recent", wf), Case("no_context", wf)])
    cases.append(Case("legs", "paper"))
    return cases


CASES_BY_MIX: dict[str, tuple[Case, ...]] = {
    "mixed": tuple(_mixed()),
    "per_order": tuple(_per_order()),
    "listing": tuple(_listing()),
    "crash": tuple(_crash()),
}
