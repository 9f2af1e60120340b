"""SPEC §3 written down a second time, as data: the oracle the generator labels rows with.

This module deliberately shares nothing with the recovery engine. It is the specification's
own tables transcribed, so that an engine bug cannot hide by being copied into the test's
expectations.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, KeysView, Mapping, ValuesView
from itertools import chain
from typing import Any, Literal

import msgspec

__all__ = [
    "ALL_STATUSES",
    "DEFAULT_MAX_CLEAR_AGE_S",
    "DEFAULT_MIN_AGE_S",
    "Decision",
    "DecisionKind",
    "Decisions",
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


class Decisions(Mapping[str, Decision]):
    """The decision of every generated row, by key, in the order the rows were labelled.

    The generator records the labels a case at a time, as iterators over the columns it built
    the rows from; the dict of them is made when it is first looked at. At a million rows
    making it is a second of the generator's time, which a benchmark's backlog never needs.
    """

    def __init__(self) -> None:
        self._parts: list[Iterable[tuple[str, Decision]]] = []
        self._singles: list[tuple[str, Decision]] = []
        self._dict: dict[str, Decision] | None = None

    def add(self, pairs: Iterable[tuple[str, Decision]]) -> None:
        """Record the ``(key, decision)`` pairs of some rows; read once, when needed.

        The pairs must not depend on anything that changes afterwards.
        """
        if self._dict is not None:
            self._dict.update(pairs)
            return
        self._flush()
        self._parts.append(pairs)

    def put(self, key: str, decision: Decision) -> None:
        """Record the decision of one row."""
        if self._dict is not None:
            self._dict[key] = decision
        else:
            self._singles.append((key, decision))

    def _flush(self) -> None:
        if self._singles:
            self._parts.append(self._singles)
            self._singles = []

    @property
    def dict(self) -> dict[str, Decision]:
        """The decisions as a plain dict (made on first use)."""
        if self._dict is None:
            self._flush()
            self._dict = dict(chain.from_iterable(self._parts))
            self._parts = []
        return self._dict

    def __getitem__(self, key: str) -> Decision:
        return self.dict[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.dict)

    def __len__(self) -> int:
        return len(self.dict)

    def __contains__(self, key: object) -> bool:
        return key in self.dict

    def get(self, key: str, default: Any = None) -> Any:
        return self.dict.get(key, default)

    def keys(self) -> KeysView[str]:
        return self.dict.keys()

    def values(self) -> ValuesView[Decision]:
        return self.dict.values()

    def items(self) -> Any:
        return self.dict.items()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Decisions):
            other = other.dict
        return self.dict == other

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Decisions({self.dict!r})"
