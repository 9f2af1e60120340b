"""The run: one trio nursery joining the reader, the lookup workers and the batch writer.

::

    pending rows --(keyset pages, worker thread)--> bounded channel
        --> N lookup workers (one broker resolver each, shared fatal switch)
        --> results channel --> batch writer (BEGIN IMMEDIATE, executemany, commit every
            batch_size rows or flush_interval seconds) --> report

Rows whose lookup would wait for an answer shared by many rows (an account's listing, paced at
one call per 5 s against IBKR) are held back, a bounded number of them, while that answer is
fetched: the workers go on with rows that can be answered now, instead of all waiting in turn
for the listings of other accounts while the request budget idles.

Memory stays bounded by the channel sizes, one page and the held rows, whatever the backlog
(a backend's shared answers are its own: the CP backend keeps each account's listing and
trades for the run).
A broker condition that is fatal for the run (401, 429) trips a switch: lookups in flight are
cancelled, every row still coming through is left unresolved with that reason, decided rows are
committed, and the reader stops reading.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import stat
from collections.abc import Hashable, Iterator
from datetime import UTC, datetime
from typing import IO, Protocol

import trio

from . import _crash
from ._backend import Backend, Query, Resolver, SharedAnswers, Unresolved
from ._config import RunConfig
from ._decide import Outcome, PendingRow, decide, plan, unresolved
from ._errors import BrokerFatal, ConfigError, StorageError
from ._report import Report, write_lines
from ._store import Store, require_database

__all__ = ["open_store", "recover"]

log = logging.getLogger("ibkr_recover")


class Progress(Protocol):
    """Told the backlog size once, then the report after every flush (about every 0.5 s)."""

    def start(self, total: int) -> None: ...

    def update(self, report: Report) -> None: ...


#: A row as read, with what :func:`plan` made of it: the query to ask, or the outcome already.
Planned = tuple[PendingRow, Query | Outcome]

# Rows that need no write are recorded in the outcomes file at least this often.
_MAX_DONE = 4096
# At most this many rows are held back waiting for a shared answer (a few MiB); beyond it,
# rows go to the workers, who then wait for the answer themselves.
MAX_HELD = 20_000


def open_store(config: RunConfig) -> Store:
    """Open and check the database before the broker is asked anything (blocking).

    With ``config.backup`` set, a consistent copy is made after the checks and before the
    first write.
    """
    require_database(config.db)
    store = Store(config.db, busy_timeout=config.busy_timeout)
    try:
        store.check()
        if not config.dry_run:
            store.lock_run()
            store.check_writable()
        if config.backup is not None:
            store.backup(config.backup)
        if not config.dry_run:
            store.ensure_scan_index()
    except BaseException:
        store.close()
        raise
    return store


class _FatalSwitch:
    """Trips once on the first fatal broker condition and cancels every lookup in flight."""

    def __init__(self) -> None:
        self.fatal: BrokerFatal | None = None
        self._scopes: set[trio.CancelScope] = set()

    def trip(self, exc: BrokerFatal) -> None:
        if self.fatal is not None:
            return
        self.fatal = exc
        log.error("stopping all lookups: %s", exc)
        for scope in self._scopes:
            scope.cancel()

    def watch(self, scope: trio.CancelScope) -> None:
        self._scopes.add(scope)

    def unwatch(self, scope: trio.CancelScope) -> None:
        self._scopes.discard(scope)

    @contextlib.contextmanager
    def guard(self, what: str) -> Iterator[None]:
        """Run a task's work under the switch: cancelled when it trips, tripping it on a fatal
        condition; any other error is logged (``what`` failed) and ends the work only."""
        scope = trio.CancelScope()
        self.watch(scope)
        try:
            with scope:
                yield
        except BrokerFatal as exc:
            self.trip(exc)
        except Exception:
            log.exception("%s failed unexpectedly", what)
        finally:
            self.unwatch(scope)


class _Run:
    def __init__(
        self,
        config: RunConfig,
        backend: Backend,
        store: Store,
        progress: Progress | None,
        outcomes: IO[bytes] | None,
    ) -> None:
        self.config = config
        self.backend = backend
        self.store = store
        self.progress = progress
        self.outcomes = outcomes
        self.switch = _FatalSwitch()
        self.report = Report(dry_run=config.dry_run)
        self.run_time = datetime.fromtimestamp(config.clock(), UTC)

    async def run(self) -> Report:
        """Run the pipeline to the end of the backlog.

        Cancellation: the batch being committed when the run is cancelled commits or rolls back
        whole (its thread is never abandoned); decided rows not yet in a batch stay pending
        and are picked up by the next run.
        """
        started = trio.current_time()
        if self.progress is not None:
            self.progress.start(await trio.to_thread.run_sync(self.store.count_pending))
        width = max(1, self.config.concurrency)
        row_send, row_recv = trio.open_memory_channel[Planned](2 * width)
        out_send, out_recv = trio.open_memory_channel[Outcome](max(64, 2 * width))
        async with trio.open_nursery() as nursery:
            held = None
            if isinstance(self.backend, SharedAnswers):
                held = _Held(self, self.backend, nursery)
            nursery.start_soon(self._read, row_send, held)
            async with row_recv, out_send:
                for _ in range(width):
                    nursery.start_soon(self._work, row_recv.clone(), out_send.clone())
            nursery.start_soon(self._write, out_recv)
        if self.switch.fatal is not None:
            self.report.fatal = self.switch.fatal.reason
            self.report.fatal_message = str(self.switch.fatal)
        self.report.finish(trio.current_time() - started)
        return self.report

    async def _read(self, send: trio.MemorySendChannel[Planned], held: _Held | None) -> None:
        size, min_age = self.config.page_size, self.config.min_age
        after: PendingRow | None = None
        # Closed without a checkpoint: in a cancelled run, an async close would replace a
        # storage error of the last page with Cancelled, and the operator would never see it.
        with send, contextlib.ExitStack() as stack:
            if held is not None:
                stack.callback(held.close)
            while self.switch.fatal is None:
                page = await trio.to_thread.run_sync(self.store.read_page, after, size)
                # Planned once, as read: a row only gets older, so what was asked of it stays.
                now = self.config.clock()
                for row in page:
                    item = (row, plan(row, now, min_age))
                    if held is not None and held.hold(item, send):
                        continue
                    # Fill the buffer without yielding per row: an await per row would hand the
                    # workers one row per scheduler tick.
                    try:
                        send.send_nowait(item)
                    except trio.WouldBlock:
                        await send.send(item)
                if len(page) < size:
                    return
                after = page[-1]

    async def _work(
        self, rows: trio.MemoryReceiveChannel[Planned], out: trio.MemorySendChannel[Outcome]
    ) -> None:
        async with rows, out, self.backend.resolver() as resolver:
            await _Worker(self, resolver, rows, out).run()

    async def resolve(self, resolver: Resolver, row: PendingRow, planned: Query) -> Outcome:
        """Ask the broker about ``row`` and decide; no lookup once the fatal switch tripped."""
        if self.switch.fatal is not None:
            return unresolved(row, self.switch.fatal.reason, planned)
        try:
            answer = await resolver.lookup(planned)
        except BrokerFatal as exc:
            self.switch.trip(exc)
            return unresolved(row, exc.reason, planned)
        except Exception:
            # One row's failure never aborts the run; it stays pending for the next one.
            log.exception("lookup failed unexpectedly")
            answer = Unresolved("internal_error")
        _crash.checkpoint("broker answer")
        return decide(
            row,
            planned,
            answer,
            now=self.config.clock(),
            max_clear_age=self.config.max_clear_age,
            run_time=self.run_time,
        )

    async def _write(self, results: trio.MemoryReceiveChannel[Outcome]) -> None:
        batch: list[Outcome] = []
        done: list[Outcome] = []
        deadline = math.inf
        writing = not self.config.dry_run
        # Closed without a checkpoint, so that a failed commit in a cancelled run still raises
        # its StorageError rather than Cancelled.
        with results:
            while True:
                arrived: list[Outcome] = []
                with trio.move_on_at(deadline):
                    try:
                        arrived.append(await results.receive())
                    except trio.EndOfChannel:
                        break
                # Take whatever else is already waiting, without a scheduler tick per outcome.
                with contextlib.suppress(trio.WouldBlock, trio.EndOfChannel):
                    while True:
                        arrived.append(results.receive_nowait())
                for outcome in arrived:
                    if not batch and not done:
                        deadline = trio.current_time() + self.config.flush_interval
                    if writing and outcome.writes:
                        batch.append(outcome)
                    else:
                        self.report.count(outcome.decision, outcome.reason)
                        done.append(outcome)
                    # Checked per outcome: answers pile up while a batch commits, and a
                    # transaction must never hold more than batch_size rows.
                    if len(batch) >= self.config.batch_size or len(done) >= _MAX_DONE:
                        await self._flush(batch, done)
                        batch, done, deadline = [], [], math.inf
                if (batch or done) and trio.current_time() >= deadline:
                    await self._flush(batch, done)
                    batch, done, deadline = [], [], math.inf
        await self._flush(batch, done)

    @trio.lowlevel.enable_ki_protection
    async def _flush(self, batch: list[Outcome], done: list[Outcome]) -> None:
        """Commit ``batch``, count it, and record both lists in the outcomes file.

        Cancellation: the commit runs in a thread that is never abandoned, so a cancelled
        flush has either committed the whole batch or nothing; a committed batch is always
        counted and recorded (Ctrl-C is held off until then: KI protection).

        Raises
        ------
        StorageError
            The commit failed (rolled back whole), or the outcomes file cannot be written.
        """
        if batch:
            now = int(self.config.clock())
            applied = await trio.to_thread.run_sync(self.store.apply, batch, now)
            for outcome, ok in zip(batch, applied, strict=True):
                if not ok:
                    outcome.decision, outcome.reason = "conflict", "conflict"
                self.report.count(outcome.decision, outcome.reason)
        if self.outcomes is not None and (batch or done):
            try:
                write_lines(self.outcomes, batch + done)
                self.outcomes.flush()
            except OSError as exc:
                raise StorageError(
                    f"cannot write the outcomes file {self.config.outcomes}: {exc.strerror} "
                    "(the batches before this one are committed)"
                ) from exc
        if self.progress is not None:
            self.progress.update(self.report)


class _Worker:
    """One lookup worker: planned rows in, outcomes out, under one scope of the fatal switch.

    One cancel scope for the worker's whole run rather than one per lookup (entering and
    leaving a scope costs as much as the rest of a row's bookkeeping): when the switch trips,
    whatever the worker waits on is cancelled, the row or outcome in its hand is settled, and
    the rows after it are marked unresolved without a lookup.
    """

    def __init__(
        self,
        run: _Run,
        resolver: Resolver,
        rows: trio.MemoryReceiveChannel[Planned],
        out: trio.MemorySendChannel[Outcome],
    ) -> None:
        self._run = run
        self._resolver = resolver
        self._rows = rows
        self._out = out
        # The row being looked up or the outcome being handed over; None between rows.
        self._hand: Planned | Outcome | None = None

    async def run(self) -> None:
        switch = self._run.switch
        scope = trio.CancelScope()
        switch.watch(scope)
        try:
            with scope:
                await self._loop()
                return
        finally:
            switch.unwatch(scope)
        # The switch tripped while this worker waited (a lookup, a row, a full results channel).
        hand, self._hand = self._hand, None
        if isinstance(hand, tuple):
            # Only a lookup waits with a row in hand: its plan is a query.
            row, planned = hand
            assert switch.fatal is not None
            assert isinstance(planned, Query)
            hand = unresolved(row, switch.fatal.reason, planned)
        if hand is not None:
            await self._out.send(hand)
        await self._loop()

    async def _loop(self) -> None:
        # The lookup is this loop's checkpoint; the channel operations only wait when they must,
        # so a worker costs one scheduler tick per row, not three.
        rows, out, resolve = self._rows, self._out, self._run.resolve
        while True:
            try:
                item = rows.receive_nowait()
            except trio.WouldBlock:
                try:
                    item = await rows.receive()
                except trio.EndOfChannel:
                    return
            except trio.EndOfChannel:
                return
            self._hand = item
            row, planned = item
            if isinstance(planned, Query):
                outcome = await resolve(self._resolver, row, planned)
            else:
                outcome = planned
            self._hand = outcome
            try:
                out.send_nowait(outcome)
            except trio.WouldBlock:
                await out.send(outcome)
            self._hand = None


class _Held:
    """Rows held back until the shared answer their lookup waits for is in.

    The first row held for a shared answer starts one task that fetches it (under the fatal
    switch) and then hands every row held for it to the workers. Once the answer is in, the
    backend no longer names it, and later rows of that account go straight to the workers.

    Meanwhile one more task goes through the held rows the backend can prefetch for, oldest
    first, and has it ask what else their lookups will need, in request budget nobody else
    wants (at a run's start, or while every listed row is done and the next listing is still
    paced): the lookups after the listing then have their answers already.
    """

    def __init__(self, run: _Run, backend: SharedAnswers, nursery: trio.Nursery) -> None:
        self._run = run
        self._backend = backend
        self._nursery = nursery
        self._rows: dict[Hashable, list[Planned]] = {}
        self._count = 0
        # One query per row held; rows are held only until their shared answer is in, and
        # the task skips a query whose row has gone on meanwhile without waiting.
        self._early_send, early_recv = trio.open_memory_channel[Query](math.inf)
        nursery.start_soon(self._prefetch, early_recv)

    def close(self) -> None:
        """No more rows come: the prefetching task ends once it went through those held."""
        self._early_send.close()

    def hold(self, item: Planned, send: trio.MemorySendChannel[Planned]) -> bool:
        """Hold ``item`` back if its lookup would wait now; ``False``: give it to a worker."""
        if self._count >= MAX_HELD or self._run.switch.fatal is not None:
            return False
        planned = item[1]
        if not isinstance(planned, Query):
            return False
        shared = self._backend.waits_for(planned)
        if shared is None:
            return False
        rows = self._rows.get(shared)
        if rows is None:
            rows = self._rows[shared] = []
            # The clone keeps the workers' channel open until these rows are handed over.
            self._nursery.start_soon(self._release, shared, send.clone())
        rows.append(item)
        self._count += 1
        if self._backend.prefetchable(planned):
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                self._early_send.send_nowait(planned)
        return True

    async def _prefetch(self, queries: trio.MemoryReceiveChannel[Query]) -> None:
        switch = self._run.switch
        # An unexpected failure only ends prefetching: the lookups ask for themselves.
        with switch.guard("prefetching"), queries:
            async for query in queries:
                if switch.fatal is not None:
                    return
                # Skipped once the listing is in: the row is being looked up already.
                if self._backend.prefetchable(query):
                    await self._backend.prefetch(query)

    async def _release(self, shared: Hashable, send: trio.MemorySendChannel[Planned]) -> None:
        with send:
            # After an unexpected failure, the workers' lookups meet it and answer for it.
            with self._run.switch.guard("fetching a shared answer"):
                await self._backend.fetch(shared)
            # After a fatal condition the rows still go through: the workers mark them.
            items = self._rows.pop(shared)
            self._count -= len(items)
            for item in items:
                try:
                    send.send_nowait(item)
                except trio.WouldBlock:
                    await send.send(item)


def _open_private(path: os.PathLike[str] | str) -> IO[bytes]:
    """Create or truncate a file readable by its owner only (mode 0600).

    Raises
    ------
    ConfigError
        The file cannot be created (no such folder, no permission): a bad option.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        # A regular file only: --outcomes /dev/stdout must not chmod the terminal.
        if stat.S_ISREG(os.fstat(fd).st_mode):
            os.fchmod(fd, 0o600)
    except OSError as exc:
        raise ConfigError(f"cannot create the outcomes file {path}: {exc.strerror}") from exc
    return os.fdopen(fd, "wb")


async def recover(
    config: RunConfig,
    backend: Backend,
    *,
    progress: Progress | None = None,
) -> Report:
    """Recover every pending row of ``config.db`` against ``backend``.

    The database is opened and checked first (exit 2 or 4 before any broker call) and the
    outcomes file created (exit 2), then the broker's preflight runs (exit 3 before any
    write), then the pipeline.

    Cancellation: see :meth:`_Run.run`; nothing half-written is ever left behind.
    """
    store = await trio.to_thread.run_sync(open_store, config)
    try:
        # Opened before the broker is asked anything: a bad path is a usage error (exit 2).
        outcomes = _open_private(config.outcomes) if config.outcomes else None
        try:
            await backend.preflight()
            report = await _Run(config, backend, store, progress, outcomes).run()
        finally:
            if outcomes is not None:
                outcomes.close()
    finally:
        store.close()
    return report
