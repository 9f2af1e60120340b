"""The engine alone: what a row costs the tool besides its broker request.

The tool's own pipeline (``ibkr_recover.recover``: pages read, rows planned, decided, written
in batches, counted), with the tool's process settings, against a broker that answers every
lookup in memory with what the simulator's scenario says of the order (``Found`` with its
status and time, or ``Absent``): no HTTP, no sockets, no decoding. Each lookup takes one
scheduler pass, as ``MemoryBackend`` does::

    python bench/engine.py DB SCENARIO.json [--concurrency 64] [--dry-run]   # prints JSON

``DB`` is recovered in place, as by the tool: run it on a copy of a backlog's database (the
harness gives it one), never on the cached original.

``--yields N`` makes each lookup wait ``N`` scheduler passes, and ``--depth D`` makes it go
through ``D`` more coroutine frames: a request through the tool's HTTP stack waits about
four times, each time through every frame between the worker and the socket, so these show
what the depth of the lookup path costs a row.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import trio

from ibkr_recover import Answer, BrokerOrder, Found, MemoryBackend, Query, RunConfig, recover
from ibkr_recover.cli import tune_gc
from ibkr_recover.simulator import load_scenario

Lookup = Callable[[Query], Awaitable[Answer]]


def answers(scenario: Path) -> dict[tuple[str, str], Answer]:
    """Every order of the scenario, by broker id (cancels, modifies) and by ``order_ref``
    (submits); any other lookup is ``Absent``."""
    table: dict[tuple[str, str], Answer] = {}
    for account in load_scenario(scenario.read_bytes()).accounts:
        for order in account.orders:
            when = datetime.fromtimestamp(order.time_ms / 1000, UTC) if order.time_ms else None
            found = Found(BrokerOrder(account.id, str(order.order_id), order.status, when))
            table[account.id, str(order.order_id)] = found
            if order.order_ref:
                table[account.id, order.order_ref] = found
    return table


class Broker(MemoryBackend):
    """``MemoryBackend`` whose lookups wait ``yields`` passes through ``depth`` more frames."""

    def __init__(self, table: dict[tuple[str, str], Answer], yields: int, depth: int) -> None:
        super().__init__(table, record=False)
        self.yields = yields
        lookup: Lookup = self._answer
        for _ in range(depth):
            lookup = _deeper(lookup)
        self._lookup = lookup

    async def lookup(self, query: Query) -> Answer:
        return await self._lookup(query)

    async def _answer(self, query: Query) -> Answer:
        for _ in range(self.yields):
            await trio.lowlevel.checkpoint()
        return self.answers.get((query.account_id, query.lookup_id), self.default)


def _deeper(inner: Lookup) -> Lookup:
    async def frame(query: Query) -> Answer:
        return await inner(query)

    return frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "db", type=Path, help="a backlog's database: recovered in place, so give it a copy"
    )
    parser.add_argument("scenario", type=Path, help="the backlog's scenario.json")
    parser.add_argument("--concurrency", type=int, default=64, help="lookup workers")
    parser.add_argument("--dry-run", action="store_true", help="decide, write nothing")
    parser.add_argument("--yields", type=int, default=1, help="scheduler passes per lookup")
    parser.add_argument("--depth", type=int, default=0, help="more coroutine frames per lookup")
    args = parser.parse_args()
    if args.yields < 1 or args.depth < 0:
        parser.error("--yields must be at least 1 and --depth at least 0")
    broker = Broker(answers(args.scenario), args.yields, args.depth)
    config = RunConfig(db=args.db, concurrency=args.concurrency, dry_run=args.dry_run)
    tune_gc()
    cpu = time.process_time()
    report = trio.run(recover, config, broker)
    out = msgspec.to_builtins(report)
    out["cpu_s"] = round(time.process_time() - cpu, 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
