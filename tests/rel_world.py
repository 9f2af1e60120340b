"""A generated mixed database, the simulator serving its scenario, and the real CLI run against it.

:class:`World` holds what the crash, signal and property tests share: the pristine database and
its oracle, a reference end state from one uninterrupted run, and helpers that run the CLI on a
working copy and check SPEC §9 afterwards (integrity, rows all-or-nothing, convergence to the
reference, a rerun that writes nothing).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ibkr_recover.simulator import Expected, SimulatorHandle, generate, run_in_thread
from rel_checks import (
    Rows,
    assert_batches_whole,
    changed_rows,
    integrity,
    logged_writes,
    normalised,
    report_matches_database,
    table,
)
from rel_forkserver import Child, ForkServer, Result
from simtools import FAST, assert_matches_expected

#: Checkpoints inside an open write transaction: a kill there must leave no trace of the batch.
INSIDE_TRANSACTION = frozenset({"after BEGIN IMMEDIATE", "between statements"})
#: Every checkpoint of the crash hook (``_crash``), in the order a run meets them first.
CHECKPOINTS = (
    "page read",
    "broker answer",
    "after BEGIN IMMEDIATE",
    "between statements",
    "after COMMIT",
    "after report",
)


def restore(source: Path, target: Path) -> None:
    """Put a pristine copy in place, never over a stale ``-wal`` that would be replayed onto it."""
    for suffix in ("-wal", "-shm"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(source, target)


def checkpoint_hit(result: Result) -> str | None:
    """The checkpoint the crash hook killed the run at, from its last words on stderr."""
    marker = "ibkr-recover: crash hook: checkpoint "
    for line in result.stderr.splitlines():
        if line.startswith(marker):
            return line.rsplit("(", 1)[1].rstrip(")")
    return None


@dataclass
class World:
    workdir: Path
    original: Path
    expected: Expected
    sim: SimulatorHandle
    server: ForkServer
    batch_size: int
    concurrency: int
    original_rows: Rows = field(default_factory=dict)
    reference: Rows = field(default_factory=dict)
    reference_report: dict[str, Any] = field(default_factory=dict)
    reference_elapsed: float = 0.0
    startup_elapsed: float = 0.0
    _runs: int = 0

    @property
    def decisions(self) -> dict[str, Any]:
        return self.expected.decisions

    def args(self, db: Path, *extra: str) -> list[str]:
        return [
            "recover",
            str(db),
            "--base-url",
            self.sim.base_url,
            *FAST,
            "--batch-size",
            str(self.batch_size),
            "--concurrency",
            str(self.concurrency),
            "--json",
            *extra,
        ]

    def outcomes_path(self) -> Path:
        self._runs += 1
        return self.workdir / f"outcomes-{self._runs}.jsonl"

    def start(self, db: Path, outcomes: Path, *extra: str, crash_at: int | None = None) -> Child:
        env = {"IBKR_RECOVER_CRASH_AT": str(crash_at)} if crash_at else {}
        return self.server.start(*self.args(db, "--outcomes", str(outcomes), *extra), env=env)

    def copy(self, name: str = "work.db") -> Path:
        db = self.workdir / name
        restore(self.original, db)
        return db

    @contextmanager
    def lanes(self, n: int) -> Iterator[list[World]]:
        """``n`` independent copies of this world (own fork server, own files), for threads.

        The simulator and the oracle are shared; each lane runs one child at a time.
        """
        lanes: list[World] = []
        try:
            for index in range(n):
                workdir = self.workdir / f"lane-{index}"
                workdir.mkdir(exist_ok=True)
                lanes.append(replace(self, workdir=workdir, server=ForkServer(workdir), _runs=0))
            yield lanes
        finally:
            for lane in lanes:
                lane.server.close()

    # -- the post-conditions ------------------------------------------------------------

    def check_interrupted(
        self, db: Path, before: Rows, outcomes: Path, result: Result, checkpoint: str | None
    ) -> set[str]:
        """After a run that did not finish: integrity, rows old-or-final, batches whole.

        Returns the keys this run changed.
        """
        assert integrity(db) == "ok"
        now = table(db)
        changed_rows(self.original_rows, now, self.decisions)
        changed = {k for k, row in before.items() if now.get(k) != row}
        assert set(now) <= set(before), "rows appeared"
        assert_batches_whole(
            changed,
            logged_writes(outcomes),
            batch_size=self.batch_size,
            inside_transaction=checkpoint in INSIDE_TRANSACTION,
        )
        if result.stdout.strip():
            # Only a run that got as far as its report prints one; it must claim what is written.
            report_matches_database(json.loads(result.stdout), changed, self.decisions)
        return changed

    def converge(self, db: Path) -> dict[str, Any]:
        """Rerun to the end: the oracle's end state, the reference's rows; then a no-op rerun."""
        before = table(db)
        result = self.server.run(*self.args(db), timeout=60)
        assert result.returncode == 1, result.stderr  # the mix leaves rows unresolved on purpose
        report: dict[str, Any] = json.loads(result.stdout)
        assert integrity(db) == "ok"
        assert_matches_expected(db, self.original, self.expected)
        after = table(db)
        assert normalised(after, self.decisions) == self.reference
        # The rerun counted only what was left, and together the runs did what one run does.
        done_before = {k for k, row in self.original_rows.items() if before.get(k) != row}
        completed_before = sum(1 for k in done_before if self.decisions[k].decision == "complete")
        assert report["completed"] + completed_before == self.expected.report.completed
        assert (
            report["cleared_missing"] + len(done_before) - completed_before
            == self.expected.report.cleared_missing
        )
        assert report["unresolved_reasons"] == self.expected.report.unresolved_reasons
        assert report["conflicts"] == 0
        self.assert_rerun_writes_nothing(db)
        return report

    def assert_rerun_writes_nothing(self, db: Path) -> None:
        image = db.read_bytes()
        result = self.server.run(*self.args(db), timeout=60)
        assert result.returncode == 1, result.stderr
        report = json.loads(result.stdout)
        assert (report["completed"], report["cleared_missing"], report["conflicts"]) == (0, 0, 0)
        assert db.read_bytes() == image, "a rerun with nothing to do changed the file"


@contextmanager
def world(
    workdir: Path,
    *,
    rows: int,
    seed: int,
    batch_size: int = 7,
    concurrency: int = 4,
    accounts: int = 2,
    **switches: Any,
) -> Iterator[World]:
    """Generate the database, serve its scenario, and make the reference run."""
    workdir.mkdir(parents=True, exist_ok=True)
    original, scenario = workdir / "original.db", workdir / "scenario.json"
    expected = generate(original, scenario, rows=rows, accounts=accounts, seed=seed, mix="mixed")
    server = ForkServer(workdir)
    try:
        with run_in_thread(scenario, **switches) as sim:
            w = World(workdir, original, expected, sim, server, batch_size, concurrency)
            w.original_rows = table(original)
            reference = w.copy("reference.db")
            result = server.run(*w.args(reference), timeout=60)
            assert result.returncode == 1, result.stderr
            assert_matches_expected(reference, original, expected)
            w.reference = normalised(table(reference), expected.decisions)
            w.reference_report = json.loads(result.stdout)
            w.reference_elapsed = result.elapsed
            # How long a run takes to get to its first page: kills before that test nothing.
            started = server.run(*w.args(w.copy("startup.db")), env={"IBKR_RECOVER_CRASH_AT": "1"})
            assert checkpoint_hit(started) == "page read", started.stderr
            w.startup_elapsed = started.elapsed
            yield w
            assert sim.stats().writes == 0
    finally:
        server.close()
