"""The pieces the row builder works with: context and time texts, and the pool of accounts.

:class:`AccountPool` opens regular accounts as they fill up to :data:`LISTED_LIMIT` listed
orders each, so that a regular account's listing always stays complete.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from functools import lru_cache
from typing import Any

from ._scenario import Order, Trade

__all__ = [
    "LISTED_LIMIT",
    "AccountPool",
    "PoolAccount",
    "context_json",
    "day_texts",
    "deal",
    "execution_ids",
    "context_heads",
    "numbered",
    "rfc3339",
    "rfc3339_span",
    "sha256_hex",
    "times_of_day",
]

#: Listed orders per regular account; far enough below the cap of 1000 that foreign rows
#: and bracket legs never take a listing there.
LISTED_LIMIT = 900


def context_json(wf: str, op: str, account: str, oid: int | None = None) -> str:
    if oid is None:
        return f'{{"workflow":"{wf}","operation":"{op}","account_id":"{account}"}}'
    return (
        f'{{"workflow":"{wf}","operation":"{op}","account_id":"{account}",'
        f'"broker_order_id":"{oid}"}}'
    )


#: ``"000"`` to ``"999"``: the last three digits of a row number.
_THOUSAND = tuple(f"{n:03d}" for n in range(1000))


def numbered(prefix: str, first: int, stop: int) -> list[str]:
    """``f"{prefix}{i:08d}"`` of every row ``i`` from ``first`` to ``stop - 1``.

    Made a thousand at a time, as one head of the leading digits joined to each of the
    thousand tails: a fifth of the cost of formatting every number.
    """
    texts: list[str] = []
    if stop <= first:
        return texts
    for thousand in range(first // 1000, (stop - 1) // 1000 + 1):
        head = prefix + str(thousand).zfill(5)
        offset = thousand * 1000
        texts += map(head.__add__, _THOUSAND[max(first - offset, 0) : stop - offset])
    return texts


def context_heads(wf: str, op: str, accounts: list[str]) -> dict[str, str]:
    """The recovery context of each account, without its closing brace."""
    return {account: context_json(wf, op, account)[:-1] for account in set(accounts)}


def contexts(
    wf: str,
    op: str,
    accounts: list[str],
    oids: Iterable[int | str] | None = None,
    heads: dict[str, str] | None = None,
) -> list[str]:
    """:func:`context_json` of every row, a column at a time (``oids``: the broker order id
    of every row, for a cancel or modify).

    ``heads`` keeps the :func:`context_heads` of ``wf`` and ``op`` from call to call (the
    accounts added as they come): a case takes rows of every account, so otherwise the
    heads of hundreds of accounts are formatted again for each case of each batch.
    """
    if heads is None:
        heads = {}
    new = set(accounts).difference(heads)
    if new:
        heads.update(context_heads(wf, op, list(new)))
    if oids is None:
        return [heads[account] + "}" for account in accounts]
    return [
        f'{heads[account]},"broker_order_id":"{oid}"}}'
        for account, oid in zip(accounts, oids, strict=True)
    ]


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def deal(owners: list[list[Any]], items: Iterable[Any]) -> None:
    """Append the ``k``-th item to the ``k``-th list, in C (twice as fast as a loop)."""
    deque(map(list.append, owners, items), maxlen=0)


def execution_ids(oids: range, rows: range) -> Iterator[str]:
    """IBKR-like execution ids (``f"{oid:010x}.{row:08x}.01.01"``), one per order."""
    return map("%010x.%08x.01.01".__mod__, zip(oids, rows, strict=True))


@lru_cache(maxsize=1)
def times_of_day() -> tuple[str, ...]:
    """``HH:MM:SSZ`` of every second of a day."""
    sixty = [f"{n:02d}" for n in range(60)]
    return tuple(f"{h}:{m}:{s}Z" for h in sixty[:24] for m in sixty for s in sixty)


@lru_cache(maxsize=8)
def day_texts(day: int) -> tuple[str, ...]:
    """The RFC 3339 UTC text of every second of one day (days since the epoch).

    Kept across runs: a run dates its rows over four or five days, and tests and benchmarks
    generate again and again around the same ``now``.
    """
    date = time.strftime("%Y-%m-%dT", time.gmtime(day * 86_400))
    return tuple(map(date.__add__, times_of_day()))


def rfc3339(seconds: int) -> str:
    """The RFC 3339 UTC text of whole epoch seconds."""
    day, second = divmod(seconds, 86_400)
    return day_texts(day)[second]


def rfc3339_span(first: int, stop: int) -> list[str]:
    """:func:`rfc3339` of every second from ``first`` to ``stop - 1``, as one table.

    Looking the text of a second up in it costs a fifth of composing the text: a found row's
    ``updated_at`` is its most expensive column otherwise.
    """
    span: list[str] = []
    for day in range(first // 86_400, (stop - 1) // 86_400 + 1):
        offset = day * 86_400
        span += day_texts(day)[max(first - offset, 0) : stop - offset]
    return span


class PoolAccount:
    __slots__ = ("id", "listed", "orders", "trades")

    def __init__(self, account_id: str) -> None:
        self.id = account_id
        self.orders: list[Order] = []
        self.trades: list[Trade] = []
        self.listed = 0


class AccountPool:
    """The regular accounts of one workflow."""

    def __init__(self, new: Callable[[], PoolAccount]) -> None:
        self._new = new
        self.all: list[PoolAccount] = []
        self._open: list[PoolAccount] = []
        self._rr = 0

    def add(self) -> PoolAccount:
        account = self._new()
        self.all.append(account)
        self._open.append(account)
        return account

    def roomy(self, need: int = 1) -> PoolAccount:
        """The next account (round robin) with room for ``need`` more listed orders."""
        while True:
            if not self._open:
                self.add()
            account = self._open[self._rr % len(self._open)]
            self._rr += 1
            if account.listed + need <= LISTED_LIMIT:
                return account
            self._open.remove(account)

    def take(self, n: int, need: int) -> list[PoolAccount]:
        """Accounts for ``n`` rows (round robin), each with room for ``need`` listed orders.

        Room is reserved here: the caller places the orders without counting them. The
        accounts are picked in whole rounds over the open ones, as many rounds at a time as
        the fullest of them has room for, rather than one row at a time.
        """
        if need == 0:
            if not self.all:
                self.add()
            return self._rounds(self.all, n)
        picked: list[PoolAccount] = []
        while len(picked) < n:
            self._open = [a for a in self._open if a.listed + need <= LISTED_LIMIT]
            if not self._open:
                self.add()
            rounds = min((LISTED_LIMIT - a.listed) // need for a in self._open)
            chunk = self._rounds(self._open, min(n - len(picked), rounds * len(self._open)))
            for account, times in Counter(chunk).items():
                account.listed += need * times
            picked += chunk
        return picked

    def _rounds(self, accounts: list[PoolAccount], n: int) -> list[PoolAccount]:
        """``n`` accounts of ``accounts`` round robin, from where the last pick stopped."""
        at = self._rr % len(accounts)
        self._rr += n
        rotated = accounts[at:] + accounts[:at]
        return (rotated * (n // len(accounts) + 1))[:n]

    def any(self, need: int = 0) -> PoolAccount:
        """The next account, round robin, for a row that lists nothing."""
        if not self.all:
            self.add()
        account = self.all[self._rr % len(self.all)]
        self._rr += 1
        return account
