"""The scenario generator: a gateway database, the matching scenario, and the expected decisions.

:func:`generate` writes three things that belong together:

* a gateway-schema SQLite database of ``pending_writer`` rows (plus ``submitted`` and
  ``failed_after_writer`` rows that must never be touched, and the other gateway tables);
* the scenario the simulator serves for it;
* the decision SPEC §3 expects for every row, labelled by :mod:`._oracle` from the case the
  row was generated as, never by running any engine code.

Rows are generated from a *mix*: a list of cases (what the broker knows about the row's order,
and how the row itself looks), repeated and shuffled. See ``docs/simulator.md`` for the cases
of each mix.
"""

from __future__ import annotations

import gc
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import msgspec

from .._schema import IDEMPOTENCY_TABLE
from ._cases import CASES_BY_MIX, Case
from ._gateway_db import GatewayWriter, PendingBatch
from ._oracle import DEFAULT_MAX_CLEAR_AGE_S, DEFAULT_MIN_AGE_S, Decision, Decisions
from ._rows import Builder, RowBuilder
from ._scenario import Scenario, Switches, write_scenario

__all__ = ["MIXES", "Decision", "Expected", "Mix", "Report", "generate", "main"]

Mix = Literal["mixed", "per_order", "listing", "crash"]
MIXES: tuple[Mix, ...] = ("mixed", "per_order", "listing", "crash")

#: How long after ``now`` the expectations hold: the too-recent rows are dated this far ahead.
VALIDITY_S = 3600

_BATCH = 50_000
#: From this many rows on, SQLite works in a child process alongside the row building.
_BACKGROUND_ROWS = 100_000


class Report(msgspec.Struct):
    """The report counters a correct run with default options ends with (SPEC §3)."""

    scanned: int
    completed: int
    cleared_missing: int
    unresolved: int
    conflicts: int
    skipped: int
    unresolved_reasons: dict[str, int]


class Expected(msgspec.Struct):
    """The expected outcome of recovering a generated database against its scenario.

    The expectations hold for a run with the default ``--min-age`` and ``--max-clear-age``
    that starts between ``now`` and ``valid_until`` (epoch seconds).
    """

    mix: str
    seed: int
    now: int
    valid_until: int
    min_age_s: int
    max_clear_age_s: int
    pending: int
    untouched: int
    accounts: int
    counts: dict[str, int]
    report: Report
    decisions: Mapping[str, Decision]


def generate(
    db_path: Path | str,
    scenario_path: Path | str,
    *,
    rows: int,
    accounts: int = 5,
    seed: int = 0,
    mix: Mix = "mixed",
    now: int | None = None,
    expected_path: Path | str | None = None,
) -> Expected:
    """Write a gateway database and its scenario; return the expected decisions.

    Parameters
    ----------
    db_path
        The database to create (an existing file is replaced).
    scenario_path
        The scenario JSON to write.
    rows
        How many ``pending_writer`` rows to generate. ``max(1, rows // 50)`` ``submitted``
        and as many ``failed_after_writer`` rows are added on top.
    accounts
        At least this many regular accounts (paper and live alternate); more are added when
        a listing would come near IBKR's 1000-row cap. ``mixed`` adds special accounts (an
        always-empty listing, a listing at the cap, a decoy).
    seed
        Seed of every random choice: the same arguments give the same files.
    mix
        ``mixed`` (every case of SPEC §3), ``per_order`` (cancel/modify rows answered by the
        status endpoint, one request per row) or ``listing`` (submits answered by the listings).
    now
        The reference time (epoch seconds; default: now). Row ages are relative to it.
    expected_path
        Also write the expectations there as JSON.

    Returns
    -------
    Expected
        The decision per key and the report counters a correct run produces.
    """
    if mix not in CASES_BY_MIX:
        raise ValueError(f"unknown mix {mix!r}; choose one of {', '.join(MIXES)}")
    if rows < 0 or accounts < 1:
        raise ValueError("rows must be >= 0 and accounts >= 1")
    now = int(time.time()) if now is None else int(now)
    rng = random.Random(seed)
    cases = list(CASES_BY_MIX[mix])
    rng.shuffle(cases)
    batch = PendingBatch()
    decisions = Decisions()
    builder = RowBuilder(rng, now, accounts, VALIDITY_S, rows, batch, decisions)
    schedule = [(builder.builder(case.kind), case) for case in cases]
    with (
        _no_cycle_collection(),
        GatewayWriter(Path(db_path), background=rows >= _BACKGROUND_ROWS) as db,
    ):
        _write_rows(db, batch, schedule, rows)
        db.insert(IDEMPOTENCY_TABLE, builder.untouched_rows(max(1, rows // 50)))
        for table, table_rows in builder.side_tables().items():
            db.insert(table, table_rows)
        # Still inside: the background writer finishes its last batches meanwhile.
        scenario = Scenario(builder.scenario_accounts(), switches=Switches())
        write_scenario(scenario, scenario_path)
        n_accounts = len(scenario.accounts)
        expected = _summarise(mix, seed, now, rows, n_accounts, builder.tally, decisions)
        if expected_path is not None:
            Path(expected_path).write_bytes(msgspec.json.encode(expected, enc_hook=_plain))
    return expected


@contextmanager
def _no_cycle_collection() -> Iterator[None]:
    """Keep Python's cycle collector off while generating.

    Generating makes next to no reference cycles, but the collector would still go through the
    columns of every row built so far (the lazy decisions keep them), again and again as they
    grow: a tenth of the building time.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _write_rows(
    db: GatewayWriter, batch: PendingBatch, schedule: Sequence[tuple[Builder, Case]], rows: int
) -> None:
    """Row ``i`` is of case ``schedule[i % len(schedule)]``; build batch by batch, case by case."""
    n = len(schedule)
    for start in range(0, rows, _BATCH):
        stop = min(rows, start + _BATCH)
        batch.open(start, stop - start)
        for index, (build, case) in enumerate(schedule):
            build(case, range(start + (index - start) % n, stop, n))
        db.pending(batch)


def _summarise(
    mix: str,
    seed: int,
    now: int,
    rows: int,
    n_accounts: int,
    tally: Counter[tuple[str, str]],
    decisions: Decisions,
) -> Expected:
    """The expectations, with the counters from the tally the builder kept of its labels
    (counting a million decisions again would take a third of a second)."""
    counts = dict.fromkeys(("complete", "clear", "unresolved", "skipped", "untouched"), 0)
    reasons: dict[str, int] = {}
    for (decision, reason), n in tally.items():
        counts[decision] += n
        if decision == "unresolved" and n:
            reasons[reason] = reasons.get(reason, 0) + n
    report = Report(
        scanned=rows,
        completed=counts["complete"],
        cleared_missing=counts["clear"],
        unresolved=counts["unresolved"],
        conflicts=0,
        skipped=counts["skipped"],
        unresolved_reasons=dict(sorted(reasons.items())),
    )
    return Expected(
        mix=mix,
        seed=seed,
        now=now,
        valid_until=now + VALIDITY_S,
        min_age_s=DEFAULT_MIN_AGE_S,
        max_clear_age_s=DEFAULT_MAX_CLEAR_AGE_S,
        pending=rows,
        untouched=counts["untouched"],
        accounts=n_accounts,
        counts=counts,
        report=report,
        decisions=decisions,
    )


def _plain(obj: object) -> object:
    """Encode :class:`Decisions` as the dict it stands for."""
    if isinstance(obj, Decisions):
        return obj.dict
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")


def main(argv: Sequence[str] | None = None, *, out: Callable[[str], None] = print) -> int:
    """Run ``python -m ibkr_recover.simulator.generate``; returns the exit status."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m ibkr_recover.simulator.generate",
        description="Write DIR/gateway.db, DIR/scenario.json and DIR/expected.json.",
    )
    parser.add_argument("--rows", type=int, required=True, help="pending_writer rows")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output directory")
    parser.add_argument("--mix", choices=MIXES, default="mixed", help="case mix (default mixed)")
    parser.add_argument("--accounts", type=int, default=5, help="regular accounts (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--now", type=int, default=None, help="reference epoch seconds")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        expected = generate(
            args.out / "gateway.db",
            args.out / "scenario.json",
            rows=args.rows,
            accounts=args.accounts,
            seed=args.seed,
            mix=args.mix,
            now=args.now,
            expected_path=args.out / "expected.json",
        )
    except (ValueError, OSError) as exc:
        parser.exit(2, f"error: {exc}\n")
    elapsed = time.perf_counter() - started
    counts = ", ".join(f"{k} {v}" for k, v in expected.counts.items())
    out(
        f"{args.rows} pending rows, {expected.accounts} accounts in {elapsed:.2f} s "
        f"({args.rows / max(elapsed, 1e-9):,.0f} rows/s): {counts}"
    )
    return 0
