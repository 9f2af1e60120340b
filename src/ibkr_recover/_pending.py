"""``ibkr-recover pending``: an operator's first look at what is blocked."""

from __future__ import annotations

from pathlib import Path

import msgspec

from ._mask import mask_account
from ._store import Store, require_database, summarise

__all__ = ["PendingSummary", "pending_summary", "render_pending"]

AGE_BUCKETS = ("lt_min_age", "lt_1h", "lt_1d", "lt_max_clear_age", "older", "bad_timestamp")


class Group(msgspec.Struct):
    status: str
    workflow: str | None
    operation: str | None
    count: int


class PendingSummary(msgspec.Struct):
    """Counts by status, workflow and operation; pending rows by age bucket and masked account."""

    total: int
    pending: int
    by_status: dict[str, int]
    groups: list[Group]
    pending_by_age: dict[str, int]
    pending_by_account: dict[str, int]
    oldest_pending_age_s: float | None


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def pending_summary(
    db: Path, *, now: float, min_age: float, max_clear_age: float, busy_timeout: float = 5.0
) -> PendingSummary:
    """Read the summary of ``db`` (blocking; read-only queries)."""
    require_database(db)
    store = Store(db, busy_timeout=busy_timeout)
    try:
        store.check(integrity=False)
        rows = summarise(store, now=now, min_age=min_age, max_clear_age=max_clear_age)
    finally:
        store.close()
    groups = [Group(str(s), _text(w), _text(o), int(n)) for s, w, o, n in rows.by_status]
    by_status: dict[str, int] = {}
    for group in groups:
        by_status[group.status] = by_status.get(group.status, 0) + group.count
    accounts: dict[str, int] = {}
    for account, count in rows.accounts:
        name = mask_account(str(account)) if isinstance(account, str) else "(no context)"
        accounts[name] = accounts.get(name, 0) + count
    oldest = None if rows.oldest_created_at is None else max(0.0, now - rows.oldest_created_at)
    return PendingSummary(
        total=sum(by_status.values()),
        pending=by_status.get("pending_writer", 0),
        by_status=by_status,
        groups=groups,
        pending_by_age={name: rows.ages.get(name, 0) for name in AGE_BUCKETS},
        pending_by_account=dict(sorted(accounts.items())),
        oldest_pending_age_s=oldest,
    )


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def render_pending(summary: PendingSummary) -> str:
    """The summary as a plain-text table."""
    lines = [f"{summary.pending} pending_writer row(s) of {summary.total}"]
    if summary.oldest_pending_age_s is not None:
        lines[0] += f"; the oldest is {_age(summary.oldest_pending_age_s)} old"
    lines += ["", f"{'status':<20} {'workflow':<9} {'operation':<10} {'rows':>10}"]
    for g in summary.groups:
        workflow, operation = g.workflow or "-", g.operation or "-"
        lines.append(f"{g.status:<20} {workflow:<9} {operation:<10} {g.count:>10,}")
    if summary.pending:
        lines += ["", "pending rows by age:"]
        labels = {
            "lt_min_age": "younger than --min-age",
            "lt_1h": "younger than 1 h",
            "lt_1d": "younger than 1 day",
            "lt_max_clear_age": "younger than --max-clear-age",
            "older": "older (never cleared)",
            "bad_timestamp": "unreadable created_at",
        }
        for name, count in summary.pending_by_age.items():
            if count:
                lines.append(f"  {labels[name]:<30} {count:>10,}")
        lines += ["", "pending rows by account:"]
        for account, count in summary.pending_by_account.items():
            lines.append(f"  {account:<30} {count:>10,}")
    return "\n".join(lines)
