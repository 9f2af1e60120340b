"""The broker as the engine sees it: a small async interface.

The engine asks one question per pending row (:class:`Query`) and gets one of three answers:

* :class:`Found` -- the broker has the order; its state is in :class:`BrokerOrder`;
* :class:`Absent` -- the broker authoritatively has no such order;
* :class:`Unresolved` -- anything uncertain, with a machine-readable reason.

A condition that must stop every lookup of the run (session lost, rate limited) is raised as
:class:`~ibkr_recover.BrokerFatal` instead of being answered.

A backend is an async context manager (its lifetime is the run). ``preflight`` runs once before
any lookup or write; ``resolver`` opens one per-worker handle (the CP backend gives each worker
its own single-connection HTTP client).

A backend whose answers come from something shared by many rows (an account's order listing)
may also be :class:`SharedAnswers`: the engine then holds back rows whose shared answer is not
in yet, so that the workers stay busy with rows that can be answered now.
"""

from __future__ import annotations

from collections.abc import Hashable
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Literal, Protocol, runtime_checkable

import msgspec

__all__ = [
    "Absent",
    "Answer",
    "Backend",
    "BrokerOrder",
    "Found",
    "Operation",
    "Query",
    "Resolver",
    "SharedAnswers",
    "Unresolved",
    "Workflow",
]

Workflow = Literal["paper", "live"]
Operation = Literal["submit", "cancel", "modify"]


class Query(msgspec.Struct, frozen=True):
    """What the engine asks the broker about one pending row.

    ``lookup_id`` is the idempotency key (matched against ``order_ref``) for a submit, and the
    context's ``broker_order_id`` (else the key) for a cancel or modify.
    """

    key: str
    workflow: Workflow
    operation: Operation
    account_id: str
    lookup_id: str


class BrokerOrder(msgspec.Struct, frozen=True):
    """The broker's state of one order, already checked against the query.

    ``status`` is IBKR's raw status string (``Submitted``, ``Filled``, ...); ``time`` is the
    broker's own time for the order when it gives one (timezone-aware UTC).
    """

    account_id: str
    broker_order_id: str
    status: str
    time: datetime | None = None


class Found(msgspec.Struct, frozen=True, tag="found"):
    order: BrokerOrder


class Absent(msgspec.Struct, frozen=True, tag="absent"):
    """The broker authoritatively has no such order (complete listing, status 'not found')."""


class Unresolved(msgspec.Struct, frozen=True, tag="unresolved"):
    """The broker's answer does not allow a decision; ``reason`` is machine-readable."""

    reason: str
    detail: str = ""


Answer = Found | Absent | Unresolved


class Resolver(Protocol):
    """One worker's handle on the broker."""

    async def lookup(self, query: Query) -> Answer:
        """Answer one query.

        Raises
        ------
        BrokerFatal
            When the run must stop every lookup (401 / lost session, 429).

        Cancellation: safe; a cancelled lookup has no effect on the broker (reads only).
        """
        ...


class Backend(Protocol):
    """The broker for one run."""

    async def preflight(self) -> None:
        """Check that the broker can be used at all, before any lookup or write.

        Raises
        ------
        BrokerError
            The broker is unreachable, unauthenticated, or refuses the connection (TLS).
        """
        ...

    def resolver(self) -> AbstractAsyncContextManager[Resolver]:
        """Open one worker's handle; closed when the worker ends."""
        ...


@runtime_checkable
class SharedAnswers(Protocol):
    """A backend whose lookups may wait for an answer shared by many rows."""

    def waits_for(self, query: Query) -> Hashable | None:
        """The shared answer a lookup of ``query`` would wait for now, or ``None``.

        Cheap and synchronous: asked for every row before it is handed to a worker.
        """
        ...

    async def fetch(self, shared: Hashable) -> None:
        """Bring ``shared`` (a value :meth:`waits_for` returned) in, once per run.

        Raises
        ------
        BrokerFatal
            As :meth:`Resolver.lookup`.

        Cancellation: safe; a cancelled fetch is taken over by the next caller.
        """
        ...

    def prefetchable(self, query: Query) -> bool:
        """Whether :meth:`prefetch` could use budget nobody needs on ``query`` while it waits."""
        ...

    async def prefetch(self, query: Query) -> None:
        """Ask, in spare time, what ``query``'s lookup will need besides the shared answer.

        It never decides a row: the lookup, once the shared answer is in, still does.

        Raises
        ------
        BrokerFatal
            As :meth:`Resolver.lookup`.

        Cancellation: safe; a cancelled prefetch leaves the lookup to ask for itself.
        """
        ...
