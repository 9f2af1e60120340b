"""A per-key result computed once per run, shared by every task that asks for it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import trio

__all__ = ["Once"]

V = TypeVar("V")


@dataclass
class _Entry(Generic[V]):
    done: trio.Event = field(default_factory=trio.Event)
    value: V | None = None


class Once(Generic[V]):
    """Per-key results computed once per run: the first caller computes, the others wait.

    A computation that is cancelled (or raises) is forgotten, and one of the waiters takes it
    over; a failure the computation returns as a value is remembered like any result.
    """

    def __init__(self) -> None:
        self._entries: dict[Hashable, _Entry[V]] = {}

    def peek(self, key: Hashable) -> V | None:
        entry = self._entries.get(key)
        return entry.value if entry is not None else None

    async def get(self, key: Hashable, compute: Callable[[], Awaitable[V]]) -> V:
        """Cancellation: safe; see the class docstring."""
        while True:
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = _Entry()
                try:
                    entry.value = await compute()
                except BaseException:
                    del self._entries[key]
                    raise
                finally:
                    entry.done.set()
                return entry.value
            await entry.done.wait()
            if entry.value is not None:
                return entry.value
