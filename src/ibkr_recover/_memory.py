"""An in-memory broker for the engine's tests and for library users' own tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import trio

from ._backend import Absent, Answer, Query, Resolver
from ._errors import BrokerError, BrokerFatal

__all__ = ["MemoryBackend"]


class MemoryBackend:
    """Answers queries from a table keyed by ``(account_id, lookup_id)``.

    Parameters
    ----------
    answers
        The answer for each ``(account_id, lookup_id)``; anything else gets ``default``.
    default
        The answer for queries not in ``answers`` (``Absent()`` unless given).
    fatal
        ``{lookup_id: BrokerFatal}``: looking up that id raises it.
    delay
        Seconds each lookup takes.
    preflight_error
        Raised by :meth:`preflight` when set.
    record
        Keep every query in :attr:`queries` (off for very large runs).
    """

    def __init__(
        self,
        answers: Mapping[tuple[str, str], Answer] | None = None,
        *,
        default: Answer | None = None,
        fatal: Mapping[str, BrokerFatal] | None = None,
        delay: float = 0.0,
        preflight_error: BrokerError | None = None,
        record: bool = True,
    ) -> None:
        self.answers = dict(answers or {})
        self.default = default if default is not None else Absent()
        self.fatal = dict(fatal or {})
        self.delay = delay
        self.preflight_error = preflight_error
        self.record = record
        self.queries: list[Query] = []
        self.preflights = 0

    async def preflight(self) -> None:
        self.preflights += 1
        if self.preflight_error is not None:
            raise self.preflight_error

    @asynccontextmanager
    async def resolver(self) -> AsyncIterator[Resolver]:
        yield self

    async def lookup(self, query: Query) -> Answer:
        if self.record:
            self.queries.append(query)
        if self.delay:
            await trio.sleep(self.delay)
        else:
            await trio.lowlevel.checkpoint()
        if query.lookup_id in self.fatal:
            raise self.fatal[query.lookup_id]
        return self.answers.get((query.account_id, query.lookup_id), self.default)
