"""IBKR's pacing rules: a global sliding window, per-endpoint gaps, and the penalty box."""

from __future__ import annotations

from collections import deque

from ._scenario import Pacing

__all__ = ["Pacer"]


class Pacer:
    """Decides whether a broker request arriving at a monotonic time violates the pacing.

    Only admitted requests count against the window and the gaps; a violation opens the
    penalty box, and every request inside the box is refused without extending it (IBKR's box
    is a fixed sentence, not a sliding one).
    """

    def __init__(self) -> None:
        self._window: deque[float] = deque()
        self._last: dict[str, float] = {}
        self.penalty_until = 0.0

    def reset(self) -> None:
        """Forget every admitted request and leave the penalty box."""
        self._window.clear()
        self._last.clear()
        self.penalty_until = 0.0

    def admit(self, pacing: Pacing, endpoint: str, now: float) -> str | None:
        """Admit the request, or return why it is refused (and open the penalty box).

        Parameters
        ----------
        pacing
            The limits in force.
        endpoint
            The endpoint name (``listing`` and ``trades`` have their own gap).
        now
            The arrival time, ``time.monotonic()``.
        """
        if now < self.penalty_until:
            return "penalty box"
        reason = self._violation(pacing, endpoint, now)
        if reason is not None:
            # The sentence replaces the record: out of the box, the client starts afresh.
            self.reset()
            self.penalty_until = now + pacing.penalty_s
            return reason
        if pacing.rate > 0:
            self._window.append(now)
        if endpoint in ("listing", "trades"):
            self._last[endpoint] = now
        return None

    def _violation(self, pacing: Pacing, endpoint: str, now: float) -> str | None:
        if pacing.rate > 0:
            # A rate below 1/s is a window of 1/rate seconds holding one request.
            span = max(1.0, 1.0 / pacing.rate) - pacing.slack_s
            limit = max(1, int(pacing.rate)) if pacing.rate >= 1 else 1
            window = self._window
            while window and window[0] <= now - span:
                window.popleft()
            if len(window) >= limit:
                return f"more than {pacing.rate:g} requests per second"
        gap = {"listing": pacing.listing_interval, "trades": pacing.trades_interval}.get(endpoint)
        if gap:
            last = self._last.get(endpoint)
            if last is not None and now - last < gap - pacing.slack_s:
                return f"{endpoint} called again within {gap:g} s"
        return None
