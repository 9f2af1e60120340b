"""Domain types: the recovery context, lifecycle records, and status mapping (SPEC §2, §3)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Final, Literal

import msgspec

from ._backend import BrokerOrder, Operation, Workflow

__all__ = [
    "BadContext",
    "LiveLifecycle",
    "PaperLifecycle",
    "RecoveryContext",
    "format_rfc3339",
    "lifecycle_payload",
    "lifecycle_status",
    "parse_context",
]

LifecycleStatus = Literal["submitted", "open", "pending_cancel", "filled", "cancelled", "refused"]


class RecoveryContext(msgspec.Struct, frozen=True):
    """The ``payload_json`` of a ``pending_writer`` row, as the gateway writes it."""

    workflow: Workflow
    operation: Operation
    account_id: str
    broker_order_id: str | None = None


class BadContext(ValueError):
    """The recovery context is present but not usable; the message says why."""


_context_decoder: Final = msgspec.json.Decoder(RecoveryContext)


def parse_context(payload_json: object) -> RecoveryContext | None:
    """Decode a pending row's recovery context.

    Returns ``None`` for "no context" (empty text or ``{}``).

    Raises
    ------
    BadContext
        The text is not a valid context (bad JSON, wrong schema, blank account id).
    """
    if payload_json is None:
        return None
    if not isinstance(payload_json, str | bytes):
        raise BadContext(f"payload_json is {type(payload_json).__name__}, not text")
    text = payload_json.strip()
    if text in ("", b"", "{}", b"{}"):
        return None
    try:
        context = _context_decoder.decode(text)
    except msgspec.DecodeError as exc:
        raise BadContext(str(exc)) from exc
    if not context.account_id.strip():
        raise BadContext("account_id is blank")
    return context


class PaperLifecycle(msgspec.Struct, frozen=True):
    """The gateway's paper lifecycle record (keys serialised sorted)."""

    account_id: str
    broker_order_id: str
    status: LifecycleStatus
    updated_at: str


class LiveLifecycle(msgspec.Struct, frozen=True):
    """The gateway's live lifecycle record; ``execution_correlation`` is always ``null`` here."""

    account_id: str
    broker_order_id: str
    execution_correlation: None
    status: LifecycleStatus
    updated_at: str


# IBKR status, normalised (lowercase, no "_", "-" or spaces) -> the operation-independent part of
# SPEC §3's table. "pending_cancel" becomes "open" for paper, which has no such state.
_STATUS_MAP: Final[dict[str, LifecycleStatus]] = {
    "pendingsubmit": "open",
    "presubmitted": "open",
    "submitted": "open",
    "warnstate": "open",
    "pendingcancel": "pending_cancel",
    "precancelled": "pending_cancel",
    "filled": "filled",
    "cancelled": "cancelled",
    "apicancelled": "cancelled",
    "inactive": "refused",
}

# What an IBKR status outside the table means, per operation (SPEC §3, last row).
_UNKNOWN_STATUS: Final[dict[str, LifecycleStatus]] = {
    "submit": "submitted",
    "cancel": "cancelled",
    "modify": "open",
}


def _normalise(status: str) -> str:
    return status.lower().replace("_", "").replace("-", "").replace(" ", "")


def lifecycle_status(
    broker_status: str, operation: Operation, workflow: Workflow
) -> LifecycleStatus:
    """Map an IBKR order status to the gateway's lifecycle status (SPEC §3)."""
    mapped = _STATUS_MAP.get(_normalise(broker_status))
    if mapped is None:
        return _UNKNOWN_STATUS[operation]
    if mapped == "pending_cancel" and workflow == "paper":
        return "open"
    return mapped


def format_rfc3339(moment: datetime) -> str:
    """RFC 3339 in UTC with ``Z``; fractional seconds only when non-zero, trailing zeros trimmed.

    A naive time is taken as UTC.
    """
    # ``%`` formatting: ``isoformat`` and ``strftime`` format each field through libc (and an
    # aware time's offset besides), f-string specs each through a call: 2-3 x the cost, once
    # per completed row.
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    text = "%04d-%02d-%02dT%02d:%02d:%02d" % (  # noqa: UP031
        moment.year,
        moment.month,
        moment.day,
        moment.hour,
        moment.minute,
        moment.second,
    )
    if moment.microsecond:
        text += (".%06d" % moment.microsecond).rstrip("0")  # noqa: UP031
    return text + "Z"


_encoder: Final = msgspec.json.Encoder(order="sorted")


def lifecycle_payload(
    order: BrokerOrder, operation: Operation, workflow: Workflow, run_time: datetime
) -> tuple[str, str, LifecycleStatus]:
    """Build the completed row's ``payload_json`` and ``result_hash``.

    Returns ``(payload_json, result_hash, status)``: compact JSON with sorted keys, and the
    lowercase SHA-256 hex of exactly that text.
    """
    status = lifecycle_status(order.status, operation, workflow)
    updated_at = format_rfc3339(order.time or run_time)
    record: PaperLifecycle | LiveLifecycle
    if workflow == "live":
        record = LiveLifecycle(order.account_id, order.broker_order_id, None, status, updated_at)
    else:
        record = PaperLifecycle(order.account_id, order.broker_order_id, status, updated_at)
    raw = _encoder.encode(record)
    return raw.decode(), hashlib.sha256(raw).hexdigest(), status
