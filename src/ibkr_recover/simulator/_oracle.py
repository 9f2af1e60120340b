"""SPEC §3 written down a second time, as data: the oracle the generator labels rows with.

This module deliberately shares nothing with the recovery engine. It is the specification's
own tables transcribed, so that an engine bug cannot hide by being copied into the test's
expectations.
"""

from __future__ import annotations

from typing import Literal

import msgspec

__all__ = [
    "ALL_STATUSES",
    "DEFAULT_MAX_CLEAR_AGE_S",
    "DEFAULT_MIN_AGE_S",
    "Decision",
    "DecisionKind",
    "lifecycle_status",
]

DecisionKind = Literal["complete", "clear", "unresolved", "skipped", "untouched"]

DEFAULT_MIN_AGE_S = 60
DEFAULT_MAX_CLEAR_AGE_S = 5 * 86_400

_OPEN = frozenset({"PendingSubmit", "PreSubmitted", "Submitted", "WarnState"})
_PENDING_CANCEL = frozenset({"PendingCancel", "PreCancelled"})
_TERMINAL = {"Filled": "filled", "Cancelled": "cancelled", "ApiCancelled": "cancelled"}
_UNKNOWN = {"submit": "submitted", "cancel": "cancelled", "modify": "open"}

#: Every row of the status-mapping table, plus one status IBKR's CP API does not document
#: (``ApiPending`` is a TWS status), which must take the "anything else" column.
ALL_STATUSES = (
    "PendingSubmit",
    "PreSubmitted",
    "Submitted",
    "WarnState",
    "PendingCancel",
    "PreCancelled",
    "Filled",
    "Cancelled",
    "ApiCancelled",
    "Inactive",
    "ApiPending",
)


def lifecycle_status(broker_status: str, operation: str, workflow: str) -> str:
    """The lifecycle status a completed row must carry (SPEC §3, status mapping).

    Parameters
    ----------
    broker_status
        IBKR's status string, exactly as the broker sent it.
    operation
        ``submit``, ``cancel`` or ``modify``.
    workflow
        ``paper`` or ``live`` (only ``live`` has ``pending_cancel``).
    """
    if broker_status in _OPEN:
        return "open"
    if broker_status in _PENDING_CANCEL:
        return "pending_cancel" if workflow == "live" else "open"
    if broker_status in _TERMINAL:
        return _TERMINAL[broker_status]
    if broker_status == "Inactive":
        return "refused"
    return _UNKNOWN[operation]


class Decision(msgspec.Struct, omit_defaults=True, gc=False):
    """What the recovery must do with one row.

    ``decision`` is ``complete``, ``clear``, ``unresolved``, ``skipped`` or ``untouched``.
    ``reason``: ``found`` (complete), ``cleared_missing`` (clear), the SPEC reason
    (unresolved, skipped), or the row's status (untouched). For a completed row, ``status``
    is the lifecycle status, ``broker_order_id`` and ``account`` the broker's, and
    ``updated_at`` the payload's time when the broker gives one (``None``: the run's time).
    ``account``, ``workflow`` and ``operation`` are those of the row's context, when it has a
    valid one.
    """

    decision: DecisionKind
    reason: str
    account: str | None = None
    workflow: str | None = None
    operation: str | None = None
    status: str | None = None
    broker_order_id: str | None = None
    updated_at: str | None = None
