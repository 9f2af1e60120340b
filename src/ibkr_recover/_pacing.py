"""Request pacing: a GCRA limiter that is exact under trio's virtual clock.

IBKR's gateway allows 10 requests per second in total and one call per 5 s of the order listing
and of the trades endpoint; exceeding either puts the client in a penalty box for 10-15 minutes.
Every request therefore passes through the global :class:`Pacer`, and listing and trades calls
also through their endpoint's :class:`Spacer`.

The limiter is the generic cell rate algorithm: it keeps the theoretical arrival time (TAT) of
the next slot, waits on a fair :class:`trio.Lock` (FIFO), and sleeps once until an absolute
deadline. It never loops on "tokens short by 1e-17" as a refilling token bucket does under
:class:`trio.testing.MockClock`. The TAT is kept as ``anchor + n * interval`` rather than by
repeated addition, so that slot ``n`` lands on its exact time (``0.1`` added ten times is not
``1.0``).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

__all__ = ["PACING_MARGIN", "Pacer", "Spacer"]

#: Every interval the backend keeps is this much longer than the limit it was given: requests
#: are stamped where they leave, IBKR counts where they arrive, and loopback or network jitter
#: of a few milliseconds must not turn "exactly 5 s apart" into 4.99 s and a penalty box.
PACING_MARGIN = 1.02


class Pacer:
    """Spaces acquisitions at least ``interval`` seconds apart (after an allowed burst).

    Parameters
    ----------
    interval
        Minimum time between two acquisitions, in seconds; ``0`` means unlimited.
    burst
        How many acquisitions may happen back to back after an idle period (``1``: none).
    """

    def __init__(self, interval: float, *, burst: int = 1) -> None:
        if not math.isfinite(interval) or interval < 0:
            raise ValueError(f"interval must be a finite number >= 0, not {interval!r}")
        if burst < 1:
            raise ValueError(f"burst must be >= 1, not {burst!r}")
        self._interval = float(interval)
        self._tolerance = (burst - 1) * self._interval
        # The schedule restarts at ``_anchor`` after every idle period; -inf means "never used",
        # so that a Pacer may be built outside trio.run.
        self._anchor = -math.inf
        self._count = 0
        self._lock = trio.Lock()
        self._urgent_lock = trio.Lock()
        self._spare_lock = trio.Lock()

    @classmethod
    def per_second(cls, rate: float, *, burst: int = 1) -> Pacer:
        """A pacer allowing ``rate`` acquisitions per second; ``0`` means unlimited."""
        if not math.isfinite(rate) or rate < 0:
            raise ValueError(f"rate must be a finite number >= 0, not {rate!r}")
        return cls(0.0 if rate == 0 else 1.0 / rate, burst=burst)

    @property
    def interval(self) -> float:
        """Seconds between two slots (``0``: unlimited)."""
        return self._interval

    async def acquire(self, *, urgent: bool = False) -> None:
        """Wait for the next slot and take it.

        ``urgent`` callers queue apart from the others and get the slot after the one being
        waited for: the listing and trades calls, one every few seconds, on which whole
        accounts of rows wait, never queue behind every worker's status request.

        Cancellation: safe. A caller cancelled while queued or sleeping takes no slot, and the
        callers behind it move up (unless an urgent caller took the next slot meanwhile: then
        the slot stays unused); ``acquire`` is always a checkpoint.
        """
        if self._interval == 0:
            await trio.lowlevel.checkpoint()
            return
        async with self._urgent_lock if urgent else self._lock:
            now = trio.current_time()
            tat = self._anchor + self._count * self._interval
            if tat < now:
                self._anchor, self._count = now, 0
                tat = now
            allowed_at = tat - self._tolerance
            # Reserved before sleeping: the other queue's head computes its slot after this.
            self._count += 1
            taken = self._count
            if allowed_at > now:
                try:
                    await trio.sleep_until(allowed_at)
                except trio.Cancelled:
                    if self._count == taken:
                        self._count -= 1
                    raise

    async def acquire_spare(self) -> None:
        """Wait for a slot that no other caller takes, and take it.

        For requests worth sending only with budget that would otherwise go unused: a slot is
        spare when its time has come and nobody reserved it. While :meth:`acquire` callers keep
        the schedule booked ahead, a spare caller waits; the most it takes from them is the
        one slot it took just before they came back.

        Cancellation: safe. A caller cancelled while waiting takes no slot; ``acquire_spare``
        is always a checkpoint.
        """
        if self._interval == 0:
            await trio.lowlevel.checkpoint()
            return
        async with self._spare_lock:
            while True:
                now = trio.current_time()
                tat = self._anchor + self._count * self._interval
                if tat - self._tolerance <= now:
                    break
                await trio.sleep_until(tat - self._tolerance)
            # No checkpoint from the check to here: the slot is still free when taken.
            if tat < now:
                self._anchor, self._count = now, 0
            self._count += 1


class Spacer:
    """One holder at a time, each going at least ``interval`` seconds after the previous one.

    Unlike a :class:`Pacer` slot, the gap is measured from the moment a holder really goes:
    after the pacers passed to :meth:`turn`, so that waiting for the global budget cannot
    bring two calls of one endpoint closer than ``interval``.

    Parameters
    ----------
    interval
        Minimum seconds between two holders going; ``0`` means none (still one at a time).
    """

    def __init__(self, interval: float) -> None:
        if not math.isfinite(interval) or interval < 0:
            raise ValueError(f"interval must be a finite number >= 0, not {interval!r}")
        self._interval = float(interval)
        self._last = -math.inf
        self._lock = trio.Lock()

    @property
    def interval(self) -> float:
        """Minimum seconds between two holders going."""
        return self._interval

    @asynccontextmanager
    async def turn(self, *then: Pacer) -> AsyncIterator[None]:
        """Wait for the lock and the interval, then for each of ``then``; hold until exit.

        The pacers are acquired ``urgent``: a lane's calls go before the requests queued there.

        Cancellation: safe. A holder cancelled before it goes (while queued, sleeping, or
        waiting for ``then``) leaves the spacing as it was; one cancelled after it went
        counts as having gone.
        """
        async with self._lock:
            if self._interval > 0:
                await trio.sleep_until(self._last + self._interval)
            for pacer in then:
                await pacer.acquire(urgent=True)
            self._last = trio.current_time()
            yield
