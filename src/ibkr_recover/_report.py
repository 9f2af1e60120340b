"""The run's report: counters that always add up, and the outcomes file."""

from __future__ import annotations

from typing import IO, Final

import msgspec

from ._decide import Outcome
from ._mask import mask_account

__all__ = ["OutcomeLine", "Report", "outcome_line", "write_lines"]


class Report(msgspec.Struct, kw_only=True):
    """What a run did. ``scanned = completed + cleared_missing + unresolved + conflicts + skipped``.

    Only committed work is counted as completed or cleared.
    """

    scanned: int = 0
    completed: int = 0
    cleared_missing: int = 0
    unresolved: int = 0
    unresolved_reasons: dict[str, int] = msgspec.field(default_factory=dict)
    conflicts: int = 0
    skipped: int = 0
    skipped_reasons: dict[str, int] = msgspec.field(default_factory=dict)
    dry_run: bool = False
    fatal: str | None = None
    fatal_message: str | None = None
    elapsed_s: float = 0.0
    rows_per_s: float = 0.0

    def count(self, decision: str, reason: str) -> None:
        """Count one final decision for one row."""
        self.scanned += 1
        if decision == "complete":
            self.completed += 1
        elif decision == "clear":
            self.cleared_missing += 1
        elif decision == "conflict":
            self.conflicts += 1
        elif decision == "skipped":
            self.skipped += 1
            _bump(self.skipped_reasons, reason)
        else:
            self.unresolved += 1
            _bump(self.unresolved_reasons, reason)

    def adds_up(self) -> bool:
        parts = self.completed + self.cleared_missing + self.unresolved + self.conflicts
        return self.scanned == parts + self.skipped and self.unresolved == sum(
            self.unresolved_reasons.values()
        )

    def finish(self, elapsed: float) -> None:
        self.elapsed_s = round(elapsed, 3)
        self.rows_per_s = round(self.scanned / elapsed, 1) if elapsed > 0 else 0.0
        self.unresolved_reasons = dict(sorted(self.unresolved_reasons.items()))
        self.skipped_reasons = dict(sorted(self.skipped_reasons.items()))


def _bump(counter: dict[str, int], reason: str) -> None:
    counter[reason] = counter.get(reason, 0) + 1


class OutcomeLine(msgspec.Struct, omit_defaults=True):
    """One line of ``--outcomes FILE.jsonl``; the account id is masked."""

    key: str
    decision: str
    reason: str
    workflow: str | None = None
    operation: str | None = None
    account: str | None = None
    broker_status: str | None = None
    lifecycle_status: str | None = None
    broker_order_id: str | None = None


_line_encoder: Final = msgspec.json.Encoder()


def outcome_line(outcome: Outcome) -> bytes:
    line = OutcomeLine(
        key=outcome.key,
        decision=outcome.decision,
        reason=outcome.reason,
        workflow=outcome.workflow,
        operation=outcome.operation,
        account=mask_account(outcome.account_id) if outcome.account_id else None,
        broker_status=outcome.broker_status,
        lifecycle_status=outcome.lifecycle_status,
        broker_order_id=outcome.broker_order_id,
    )
    return _line_encoder.encode(line) + b"\n"


def write_lines(sink: IO[bytes], outcomes: list[Outcome]) -> None:
    sink.write(b"".join(outcome_line(o) for o in outcomes))
