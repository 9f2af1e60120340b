"""Building the rows of each case, the broker state behind them, and their expected decisions.

Each ``_case_*`` builder takes one case and the row numbers generated as that case, appends
the pending rows (key, ``created_at``, payload) to the output batch, the expected
:class:`Decision` of each to the decisions, and records at the broker (the accounts' orders
and trades) whatever the case implies.

Builders work on a whole run of row numbers at once, with everything that does not depend
on the row hoisted out of the loop: at a million rows the generator's speed is the sum of a
few microseconds per row here.

Accounts fill up to :data:`LISTED_LIMIT` listed orders each, then new ones are opened, so a
regular account's listing always stays complete (non-empty and well under the cap).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterable
from functools import partial
from itertools import chain, repeat
from operator import add
from typing import Any

from ._cases import Case
from ._gateway_db import PendingBatch, Row
from ._oracle import (
    DEFAULT_MAX_CLEAR_AGE_S,
    Decision,
    DecisionKind,
    Decisions,
    lifecycle_status,
)
from ._other_rows import side_tables, untouched_rows
from ._row_parts import (
    LISTED_LIMIT,
    AccountPool,
    PoolAccount,
    context_json,
    contexts,
    deal,
    execution_ids,
    numbered,
    rfc3339_span,
)
from ._scenario import Account, Order, Trade

__all__ = ["LISTED_LIMIT", "Builder", "RowBuilder"]

#: The cap the ``capped`` account's listing is filled to (IBKR's documented maximum).
CAP = 1000
_FILLERS = 2
_BLANK_KEYS = ("", " ", "   ", "\t", " \t ")
_DECOYS = 4
_PRICE = "190.00"
_SPREAD_S = 3 * 86_400  # ordinary rows are between one hour and three days old
#: Malformed recovery contexts, one per row in turn (``{account}``: the row's account).
_BAD_CONTEXTS = (
    '{"workflow":"paper","operation":"submit","account_id":"{account}"',
    '{"workflow":"demo","operation":"submit","account_id":"{account}"}',
    '{"workflow":"paper","operation":"replace","account_id":"{account}"}',
    '["paper","submit","{account}"]',
    '{"workflow":"paper","operation":"cancel","account_id":42}',
    '{"workflow":"paper","operation":"submit"}',
)

Builder = Callable[[Case, range], None]


class RowBuilder:
    """Makes rows case by case and accumulates the broker state they imply.

    Parameters
    ----------
    rng
        The generator's seeded random source.
    now
        Reference time (epoch seconds).
    accounts
        Regular accounts to open up front (paper and live alternate).
    valid_s
        How far ahead of ``now`` too-recent rows are dated.
    rows
        How many pending rows will be made: ordinary rows are dated in row order over the
        spread, oldest first.
    out
        Where pending rows go.
    decisions
        Where the expected decision of every row goes.
    """

    def __init__(
        self,
        rng: random.Random,
        now: int,
        accounts: int,
        valid_s: int,
        rows: int,
        out: PendingBatch,
        decisions: Decisions,
    ) -> None:
        self._rng = rng
        self._now = now
        self._rows = max(1, rows)
        self._future = now + valid_s
        self._out = out
        self._decisions = decisions
        self._texts: list[str] = []
        #: The context heads of every (workflow, operation), by account (see :func:`contexts`).
        self._heads: dict[tuple[str, str], dict[str, str]] = {}
        #: Columns of the open batch that depend on the row number only (see :meth:`_column`).
        self._columns: dict[str, list[Any]] = {}
        self._columns_start = -1
        #: How many rows got each (decision, reason), counted as they are labelled.
        self.tally: Counter[tuple[str, str]] = Counter()
        self._oid = 1_700_000_000 + rng.randrange(100_000_000)
        self._ids: set[str] = set()
        self._regular: list[PoolAccount] = []
        self._pools = {
            wf: AccountPool(partial(self._regular_account, wf)) for wf in ("paper", "live")
        }
        self._special: dict[str, PoolAccount] = {}
        self._blank_keys = 0
        self._groups: list[tuple[str, str, str, int]] = []
        for k in range(accounts):
            self._pools[("paper", "live")[k % 2]].add()

    def builder(self, kind: str) -> Builder:
        """The builder of one case kind."""
        handler: Builder = getattr(self, f"_case_{kind}")
        return handler

    def _emit(self, i: int, key: str, created: int, payload: str, decision: Decision) -> None:
        out = self._out
        out.keys[i - out.start] = key
        out.created[i - out.start] = created
        out.payloads[i - out.start] = payload
        self._decisions.put(key, decision)
        self.tally[decision.decision, decision.reason] += 1

    def _label(
        self,
        rows: range,
        keys: list[str],
        created: list[int],
        payloads: list[str],
        decisions: Iterable[Decision],
        label: tuple[DecisionKind, str],
    ) -> None:
        """Emit the rows of one run, all of them decided ``label`` (kind, reason); the
        decisions are read when the dict of them is made."""
        self._out.put(rows, keys, created, payloads)
        self._decisions.add(zip(keys, decisions, strict=True))
        self.tally[label] += len(rows)

    def _created(self, i: int) -> int:
        # In row order, as a gateway inserts its rows: the table's physical order is then its
        # scan order (created_at), and a run reads and writes its pages front to back.
        return self._now - 3600 - _SPREAD_S + i * _SPREAD_S // self._rows

    def _created_column(self, rows: range) -> list[int]:
        """:meth:`_created` of every row of ``rows``."""
        return self._column("created", rows)

    def _keys(self, rows: range, prefix: str = "ord-") -> list[str]:
        """``f"{prefix}{i:08d}"`` of every row ``i`` of ``rows`` (its key, or its order's ref)."""
        return self._column(prefix, rows)

    def _contexts(
        self, wf: str, op: str, accounts: list[str], oids: Iterable[int | str] | None = None
    ) -> list[str]:
        """:func:`contexts` of the rows, the accounts' context heads kept across calls."""
        return contexts(wf, op, accounts, oids, self._heads.setdefault((wf, op), {}))

    def _column(self, name: str, rows: range) -> list[Any]:
        """The column ``name`` (``created``, or a key prefix) of ``rows``, cut from the
        column of the whole open batch: made once per batch, rather than once per case."""
        out = self._out
        if self._columns_start != out.start:
            self._columns.clear()
            self._columns_start = out.start
        column = self._columns.get(name)
        if column is None:
            batch = range(out.start, out.start + len(out))
            if name == "created":
                oldest, spread, n = self._now - 3600 - _SPREAD_S, _SPREAD_S, self._rows
                column = [oldest + i * spread // n for i in batch]
            else:
                column = numbered(name, batch.start, batch.stop)
            self._columns[name] = column
        return column[rows.start - out.start : rows.stop - out.start : rows.step]

    # -- accounts ----------------------------------------------------------------------

    def _account_id(self, wf: str) -> str:
        prefix = "DU" if wf == "paper" else "U"
        while True:
            candidate = f"{prefix}{self._rng.randrange(1_000_000, 10_000_000)}"
            if candidate not in self._ids:
                self._ids.add(candidate)
                return candidate

    def _regular_account(self, wf: str) -> PoolAccount:
        account = PoolAccount(self._account_id(wf))
        self._regular.append(account)
        # A couple of unrelated orders, so that no regular listing is ever empty.
        for _ in range(_FILLERS):
            self._order(account, f"gw-{self._oid + 1}", "Submitted", self._now - 7200, 0, True)
        return account

    def _special_account(self, name: str, wf: str) -> PoolAccount:
        account = self._special.get(f"{name}-{wf}")
        if account is None:
            account = self._special[f"{name}-{wf}"] = PoolAccount(self._account_id(wf))
            if name == "capped":
                for _ in range(CAP):
                    ref = f"gw-{self._oid + 1}"
                    self._order(account, ref, "Submitted", self._now - 7200, 0, True)
        return account

    def scenario_accounts(self) -> list[Account]:
        """Every account in ``/iserver/accounts`` order: decoy first, then regular, special."""
        decoys = [a for name, a in self._special.items() if name.startswith("decoy")]
        others = [a for name, a in self._special.items() if not name.startswith("decoy")]
        return [Account(a.id, a.orders, a.trades) for a in [*decoys, *self._regular, *others]]

    # -- broker state ------------------------------------------------------------------

    def _next_oid(self) -> int:
        self._oid += 1
        return self._oid

    def _next_oids(self, n: int) -> range:
        """The next ``n`` broker order ids."""
        oids = range(self._oid + 1, self._oid + 1 + n)
        self._oid += n
        return oids

    def _listed_one_by_one(
        self, wf: str, rows: range, need: int
    ) -> tuple[list[PoolAccount], list[int]]:
        """An account with room for ``need`` listed orders and a first order id per row, in
        turn (an account opened meanwhile takes its fillers' ids in between); the room is
        taken, the caller places the orders. Keeps the order of picks and ids of placing the
        orders one row at a time, which :meth:`AccountPool.take` does not."""
        roomy = self._pools[wf].roomy
        picked: list[PoolAccount] = []
        oids: list[int] = []
        for _ in rows:
            account = roomy(need)
            account.listed += need
            picked.append(account)
            oids.append(self._oid + 1)
            self._oid += need
        return picked, oids

    def _order(
        self,
        account: PoolAccount,
        ref: str,
        status: str,
        created: int,
        i: int,
        listed: bool,
        parent: int | None = None,
    ) -> tuple[int, int]:
        """Place one order at the broker; returns its id and its time (epoch seconds).

        The bulk of the orders is placed by :meth:`_found`, which inlines this.
        """
        self._oid += 1
        oid = self._oid
        at = created + 1 + i % 29
        account.orders.append(Order(oid, ref, status, listed, at * 1000, parent_id=parent))
        if listed:
            account.listed += 1
        return oid, at

    # -- the cases ---------------------------------------------------------------------

    def _found(self, case: Case, rows: range, listed: bool, fallback: bool) -> None:
        """Orders the broker has (``listed`` or status-only); the rows complete.

        The hot path of every mix, so it works a column at a time (keys, times, payloads,
        decisions of all the rows of the case) rather than a row at a time: most of the
        per-row work then runs inside ``map`` and comprehensions instead of the interpreter
        loop, and whatever depends only on the case or the account is computed once.
        """
        _, wf, op, status = case
        n = len(rows)
        picked = self._pools[wf].take(n, 1 if listed else 0)
        accounts = [account.id for account in picked]
        oids = self._next_oids(n)
        # The broker ids as texts are the keys of fallback rows; other rows have them
        # formatted into their payloads, and as texts only in the decisions, if ever made.
        oid_texts = list(map(str, oids)) if fallback else None
        keys = self._keys(rows) if oid_texts is None else oid_texts
        refs = keys if op == "submit" else self._keys(rows, "orig-")
        created = self._created_column(rows)
        # The order's time (a second to 29 after its row's), in epoch ms.
        ms = [(t + 1 + i % 29) * 1000 for t, i in zip(created, rows, strict=True)]
        self._place(picked, rows, oids, refs, ms, status, listed)
        payloads = self._contexts(wf, op, accounts, None if op == "submit" or fallback else oids)
        self._out.put(rows, keys, created, payloads)
        first = self._now - 3600 - _SPREAD_S  # a found order's time is after its row's
        if not self._texts:
            self._texts = rfc3339_span(first, self._now - 3600 + 30)
        texts = self._texts
        updated = (texts[t // 1000 - first] for t in ms)  # made with the decisions, if ever
        found = map(
            Decision,
            repeat("complete"),
            repeat("found"),
            accounts,
            repeat(wf),
            repeat(op),
            repeat(lifecycle_status(status, op, wf)),
            map(str, oids) if oid_texts is None else oid_texts,
            updated,
        )
        self._decisions.add(zip(keys, found, strict=True))
        self.tally["complete", "found"] += n

    def _place(
        self,
        picked: list[PoolAccount],
        rows: range,
        oids: range,
        refs: list[str],
        ms: list[int],
        status: str,
        listed: bool,
    ) -> None:
        """The broker's orders (and executions) behind found rows, one per row (``ms``:
        their times)."""
        state = (repeat(status), repeat(listed))
        if status == "Filled":
            filled = (repeat(1.0), repeat(1.0), repeat(_PRICE))  # total_size, filled, avg_price
            orders = list(map(Order, oids, refs, *state, ms, *filled))
            # IBKR does not promise the order id on executions; give it to every other one.
            trade_oids = [oid if i % 2 else None for oid, i in zip(oids, rows, strict=True)]
            ids = execution_ids(oids, rows)
            trades = map(Trade, ids, refs, trade_oids, ms, repeat(1.0), repeat(_PRICE))
            deal([account.trades for account in picked], trades)
        elif status in ("Cancelled", "ApiCancelled"):
            # Every other one was partly filled before it was cancelled.
            orders = list(map(Order, oids, refs, *state, ms))
            odd = slice(1, None, 2)
            partly = (repeat(2.0), repeat(1.0), repeat(_PRICE))
            orders[odd] = list(map(Order, oids[odd], refs[odd], *state, ms[odd], *partly))
            ids = execution_ids(oids[odd], rows[odd])
            executions = map(Trade, ids, refs[odd], repeat(None), ms[odd], repeat(1.0))
            deal([account.trades for account in picked[odd]], executions)
        else:
            orders = list(map(Order, oids, refs, *state, ms))
        deal([account.orders for account in picked], orders)

    def _case_listed(self, case: Case, rows: range) -> None:
        self._found(case, rows, True, False)

    def _case_status_only(self, case: Case, rows: range) -> None:
        self._found(case, rows, False, False)

    def _case_fallback_found(self, case: Case, rows: range) -> None:
        # The context has no broker_order_id, so the key (here the broker id) is the lookup.
        # Every other row is in the listing, the others known to the status endpoint only.
        case = case._replace(status="Cancelled" if case.operation == "cancel" else "Submitted")
        self._found(case, rows[::2], True, True)
        self._found(case, rows[1::2], False, True)

    def _absent(self, case: Case, rows: range, reason: str) -> None:
        wf, op = case.workflow, case.operation
        accounts = [account.id for account in self._pools[wf].take(len(rows), 0)]
        keys = self._keys(rows)
        if reason == "beyond_horizon":
            old = self._now - DEFAULT_MAX_CLEAR_AGE_S - 86_400
            created = [old - i % 86_400 for i in rows]
        else:
            created = self._created_column(rows)
        oids = None if op == "submit" else self._next_oids(len(rows))
        payloads = self._contexts(wf, op, accounts, oids)
        decision: DecisionKind = "clear" if reason == "cleared_missing" else "unresolved"
        # One decision object per account serves all its rows (decisions are never changed).
        shared = {a: Decision(decision, reason, a, wf, op) for a in set(accounts)}
        decisions = map(shared.__getitem__, accounts)
        self._label(rows, keys, created, payloads, decisions, (decision, reason))

    def _case_absent(self, case: Case, rows: range) -> None:
        self._absent(case, rows, "cleared_missing")

    def _case_absent_old(self, case: Case, rows: range) -> None:
        self._absent(case, rows, "beyond_horizon")

    def _case_fallback_absent(self, case: Case, rows: range) -> None:
        wf, op = case.workflow, case.operation
        accounts = [account.id for account in self._pools[wf].take(len(rows), 0)]
        keys = list(map(str, self._next_oids(len(rows))))
        payloads = self._contexts(wf, op, accounts)
        label: tuple[DecisionKind, str] = ("clear", "cleared_missing")
        absent = map(Decision, *map(repeat, label), accounts, repeat(wf), repeat(op))
        self._label(rows, keys, self._created_column(rows), payloads, absent, label)

    def _in_trades_only(self, case: Case, rows: range, with_id: bool) -> None:
        wf, n = case.workflow, len(rows)
        picked = self._pools[wf].take(n, 0)
        accounts = [account.id for account in picked]
        oids = self._next_oids(n)
        keys = self._keys(rows)
        created = self._created_column(rows)
        ms = [(t + 5) * 1000 for t in created]
        # A partial fill (odd rows) leaves a second execution row, right after the first.
        counts = [1 + i % 2 for i in rows]

        def each(column: Iterable[Any]) -> list[Any]:
            """The column with a value per execution row rather than per order."""
            return list(chain.from_iterable(map(repeat, column, counts)))

        nth = list(chain.from_iterable(map(range, counts)))
        trade_oids = each(oids)
        ids = map("%010x.%08x.01.01".__mod__, zip(trade_oids, nth, strict=True))
        times = map(add, each(ms), nth)
        trades = map(Trade, ids, each(keys), trade_oids if with_id else repeat(None), times)
        deal(each(account.trades for account in picked), trades)
        payloads = self._contexts(wf, "submit", accounts)
        label: tuple[DecisionKind, str]
        if with_id:
            label = ("complete", "found")
            rest = (repeat(wf), repeat("submit"), repeat("filled"), map(str, oids))
            decisions: Iterable[Decision] = map(Decision, *map(repeat, label), accounts, *rest)
        else:
            label = ("unresolved", "found_in_trades_only")
            shared = {a: Decision(*label, a, wf, "submit") for a in set(accounts)}
            decisions = map(shared.__getitem__, accounts)
        self._label(rows, keys, created, payloads, decisions, label)

    def _case_trades_id(self, case: Case, rows: range) -> None:
        self._in_trades_only(case, rows, True)

    def _case_trades_noid(self, case: Case, rows: range) -> None:
        self._in_trades_only(case, rows, False)

    def _case_legs(self, case: Case, rows: range) -> None:
        wf = case.workflow
        for i in rows:
            account = self._pools[wf].roomy(3)
            created = self._created(i)
            key = f"ord-{i:08d}"
            parent, _ = self._order(account, f"{key}-parent", "PreSubmitted", created, i, True)
            if i % 2:
                # The parent already left the listing; its children are still working.
                account.orders.pop()
                account.listed -= 1
            for leg in ("take-profit", "stop-loss"):
                self._order(account, f"{key}-{leg}", "PreSubmitted", created, i, True, parent)
            if len(self._groups) < 1000:
                legs = f'{{"parent":"{key}-parent","take_profit":"{key}-take-profit"}}'
                self._groups.append((key, account.id, legs, created))
            decision = Decision("unresolved", "group_legs_found", account.id, wf, "submit")
            self._emit(i, key, created, context_json(wf, "submit", account.id), decision)

    def _in_special(self, case: Case, rows: range, name: str, reason: str) -> None:
        wf = case.workflow
        account = self._special_account(name, wf).id
        payloads = [context_json(wf, "submit", account)] * len(rows)
        keys = self._keys(rows)
        decision = Decision("unresolved", reason, account, wf, "submit")
        label: tuple[DecisionKind, str] = ("unresolved", reason)
        shared = repeat(decision, len(rows))
        self._label(rows, keys, self._created_column(rows), payloads, shared, label)

    def _case_empty_listing(self, case: Case, rows: range) -> None:
        self._in_special(case, rows, "empty", "empty_listing")

    def _case_capped(self, case: Case, rows: range) -> None:
        self._in_special(case, rows, "capped", "incomplete_listing")

    def _case_foreign_ref(self, case: Case, rows: range) -> None:
        decoy = self._special_account("decoy", "paper")
        for i in rows:
            # Only a few decoys: they must all fit in the foreign rows of one listing.
            if len(decoy.orders) < _DECOYS:
                self._order(decoy, f"ord-{i:08d}", "Submitted", self._created(i), i, True)
        self._case_absent(case, rows)

    def _case_unknown_account(self, case: Case, rows: range) -> None:
        wf, op = case.workflow, case.operation
        # Seven digits with a leading zero: never one of the generated accounts.
        prefix = "DU0" if wf == "paper" else "U0"
        accounts = [prefix + str(i % 1_000_000).zfill(6) for i in rows]
        if op == "submit":
            payloads = [context_json(wf, op, account) for account in accounts]
        else:
            oids = self._next_oids(len(rows))
            payloads = [
                context_json(wf, op, account, oid)
                for account, oid in zip(accounts, oids, strict=True)
            ]
        keys = self._keys(rows)
        label: tuple[DecisionKind, str] = ("unresolved", "unknown_account")
        unknown = map(Decision, *map(repeat, label), accounts, repeat(wf), repeat(op))
        self._label(rows, keys, self._created_column(rows), payloads, unknown, label)

    def _case_too_recent(self, case: Case, rows: range) -> None:
        wf, op = case.workflow, case.operation
        picked, oids = self._listed_one_by_one(wf, rows, 1)
        accounts = [account.id for account in picked]
        keys = self._keys(rows)
        refs = keys if op == "submit" else self._keys(rows, "orig-")
        created = [self._future + i % 600 for i in rows]
        ms = [(t + 1 + i % 29) * 1000 for t, i in zip(created, rows, strict=True)]
        orders = map(Order, oids, refs, repeat("Submitted"), repeat(True), ms)
        deal([account.orders for account in picked], orders)
        payloads = self._contexts(wf, op, accounts, None if op == "submit" else oids)
        shared = {a: Decision("skipped", "too_recent", a, wf, op) for a in set(accounts)}
        recent = map(shared.__getitem__, accounts)
        self._label(rows, keys, created, payloads, recent, ("skipped", "too_recent"))

    def _case_no_context(self, case: Case, rows: range) -> None:
        payloads = ["{}" if i % 2 else "" for i in rows]
        keys = self._keys(rows)
        label: tuple[DecisionKind, str] = ("unresolved", "no_context")
        shared = repeat(Decision(*label), len(rows))
        self._label(rows, keys, self._created_column(rows), payloads, shared, label)

    def _case_bad_context(self, case: Case, rows: range) -> None:
        accounts = [account.id for account in self._pools["paper"].take(len(rows), 0)]
        variants = _BAD_CONTEXTS
        payloads = [
            variants[i % len(variants)].replace("{account}", account)
            for i, account in zip(rows, accounts, strict=True)
        ]
        keys = self._keys(rows)
        label: tuple[DecisionKind, str] = ("unresolved", "bad_context")
        shared = repeat(Decision(*label), len(rows))
        self._label(rows, keys, self._created_column(rows), payloads, shared, label)

    def _case_blank_key(self, case: Case, rows: range) -> None:
        wf = case.workflow
        for i in rows:
            if self._blank_keys >= len(_BLANK_KEYS):
                # Blank keys are few by nature (the key is the primary key).
                self._case_no_context(case, range(i, i + 1))
                continue
            key = _BLANK_KEYS[self._blank_keys]
            self._blank_keys += 1
            account = self._pools[wf].any().id
            decision = Decision("unresolved", "invalid_key", account, wf, "submit")
            self._emit(i, key, self._created(i), context_json(wf, "submit", account), decision)

    # -- rows that must never be touched, and the other gateway tables -------------------

    def untouched_rows(self, n: int) -> list[Row]:
        """``n`` ``submitted`` and ``n`` ``failed_after_writer`` rows, their decisions recorded.

        Pair ``j`` (one row of each) is of a paper account for even ``j``, of a live one for
        odd ``j``.
        """
        wfs = [("paper", "live")[j % 2] for j in range(n)]
        accounts: list[str] = []
        oids: list[int] = []
        for wf in wfs:
            accounts.append(self._pools[wf].any().id)
            oids.append(self._next_oid())
        rows, decisions = untouched_rows(self._now, wfs, accounts, oids)
        self._decisions.add(decisions)
        self.tally["untouched", "submitted"] += n
        self.tally["untouched", "failed_after_writer"] += n
        return rows

    def side_tables(self) -> dict[str, list[tuple[Any, ...]]]:
        """A few plausible rows for the gateway's other tables."""
        accounts = [account.id for account in self._regular[:100]]
        return side_tables(self._now, self._rng, accounts, self._oid + 1, self._groups)
