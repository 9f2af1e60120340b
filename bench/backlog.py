"""Write-ahead backlogs for the benchmarks: gateway databases of N rows and their scenarios.

A backlog is what :func:`ibkr_recover.simulator.generate` writes (a gateway-schema database of
``pending_writer`` rows, plus rows that must never be touched and the gateway's other tables,
and the simulator scenario that matches it), kept in a cache folder keyed by its parameters so
that a benchmark run generates each backlog once::

    python bench/backlog.py --rows 1000000 --mix per_order      # prints where, and how fast

Mixes (``docs/simulator.md``): ``per_order`` (cancels/modifies each answered by the status
endpoint), ``listing`` (submits answered by the account listings), ``mixed`` (every case of the
decision rules, paper and live, submit/cancel/modify, special accounts).

A run works on a copy (:meth:`Backlog.fresh_copy`): recovery changes the database.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from ibkr_recover.simulator import generate

__all__ = ["CACHE", "Backlog", "make_backlog"]

#: Where backlogs are kept between runs (ignored by git).
CACHE = Path(__file__).resolve().parent / ".cache"


@dataclass(frozen=True)
class Backlog:
    """A generated backlog: its database, scenario, and what generating it cost."""

    folder: Path
    rows: int
    mix: str
    accounts: int
    generate_s: float
    #: CPU seconds of generating, the background writer process included (0: not recorded).
    generate_cpu_s: float = 0.0

    @property
    def db(self) -> Path:
        return self.folder / "gateway.db"

    @property
    def scenario(self) -> Path:
        return self.folder / "scenario.json"

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.generate_s if self.generate_s > 0 else 0.0

    def fresh_copy(self, target: Path) -> Path:
        """Copy the pristine database to ``target`` (any stale ``-wal``/``-shm`` removed)."""
        for suffix in ("-wal", "-shm"):
            Path(f"{target}{suffix}").unlink(missing_ok=True)
        shutil.copyfile(self.db, target)
        return target


def make_backlog(
    rows: int,
    mix: str,
    *,
    accounts: int = 5,
    seed: int = 1,
    cache: Path = CACHE,
    force: bool = False,
) -> Backlog:
    """The backlog of ``rows`` pending rows of ``mix`` over at least ``accounts`` accounts.

    Generated once per parameter set; ``force`` generates it again (and re-times it).
    """
    folder = cache / f"{mix}-{rows}-a{accounts}-s{seed}"
    meta = folder / "backlog.json"
    if not force and meta.exists():
        info = json.loads(meta.read_text())
        cpu_s = info.get("generate_cpu_s", 0.0)
        return Backlog(folder, rows, mix, info["accounts"], info["generate_s"], cpu_s)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    cpu_before = _cpu_s()
    started = time.perf_counter()
    expected = generate(
        folder / "gateway.db",
        folder / "scenario.json",
        rows=rows,
        accounts=accounts,
        seed=seed,
        mix=mix,  # type: ignore[arg-type]
    )
    elapsed = time.perf_counter() - started
    cpu_s = _cpu_s() - cpu_before
    info = {"accounts": expected.accounts, "generate_s": elapsed, "generate_cpu_s": cpu_s}
    meta.write_text(json.dumps(info))
    return Backlog(folder, rows, mix, expected.accounts, elapsed, cpu_s)


def _cpu_s() -> float:
    """CPU seconds of this process and of its finished children (the writer process).

    On a shared machine the wall-clock rate says as much about the neighbours as about the
    generator; the CPU seconds say what generating cost.
    """
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument(
        "--mix", choices=("per_order", "listing", "mixed", "crash"), default="mixed"
    )
    parser.add_argument("--accounts", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cache", type=Path, default=CACHE)
    # The command always generates (it is there to time that); --force says so explicitly.
    parser.add_argument("--force", action="store_true", help="generate even if cached (always)")
    args = parser.parse_args()
    backlog = make_backlog(
        args.rows, args.mix, accounts=args.accounts, seed=args.seed, cache=args.cache, force=True
    )
    print(
        f"{backlog.rows:,} {backlog.mix} rows over {backlog.accounts} accounts in "
        f"{backlog.generate_s:.2f} s ({backlog.rows_per_s:,.0f} rows/s; "
        f"{backlog.generate_cpu_s:.2f} CPU s with the writer process): {backlog.folder}"
    )


if __name__ == "__main__":
    main()
