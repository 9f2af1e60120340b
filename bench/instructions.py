"""Instructions per row, counted by valgrind: a measure the neighbours on a shared machine can't skew.

Wall-clock rates on a loaded 2-core machine swing by 20-50 % from run to run; the number of
user-space instructions a process executes for the same work does not. This runs each
contender of the per-order workload (concurrency 64, simulator latency 0) under
``valgrind --tool=callgrind`` for two backlog sizes and reports the difference per row, so the
start-up (imports, preflight) cancels out::

    python bench/instructions.py [--rows 300,900] [--contenders tool,wire,get]
    python bench/instructions.py --contenders tool,tool:/path/to/other/src    # A/B two trees
    python bench/instructions.py --https                     # over TLS, as a gateway serves

Contenders: ``tool`` (``ibkr-recover recover``; ``tool-dry`` with ``--dry-run``), the engine
alone (``engine``, ``engine-dry``: ``bench/engine.py``, no request at all), and the ceilings of
``bench/ceiling.py`` (``get``: the bare httpcore loop, ``wire``: the tool's request path,
``httpx``). ``NAME:SRC`` runs a contender with ``PYTHONPATH=SRC``, another tree's
package. Kernel time, cache misses and waiting are not counted: use it to compare code, and
``bench/run.py`` for speed. About a minute per contender and size.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import run
from backlog import make_backlog
from procs import Simulator

_VALGRIND = ["--tool=callgrind", "--callgrind-out-file=/dev/null", "--dump-instr=no"]


def instructions(cmd: list[str], env: dict[str, str]) -> int:
    """User-space instructions ``cmd`` executed (callgrind's ``Collected``)."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        sys.exit("valgrind is not installed (apt-get install valgrind)")
    done = subprocess.run([valgrind, *_VALGRIND, *cmd], capture_output=True, text=True, env=env)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode not in (0, 1) or found is None:
        sys.exit(f"{cmd[:3]} failed under valgrind:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def command(
    name: str, sim: Simulator, db: Path, targets: Path, concurrency: int, scenario: Path
) -> list[str]:
    if name in ("engine", "engine-dry"):
        extra = ("--dry-run",) if name == "engine-dry" else ()
        engine = str(Path(__file__).with_name("engine.py"))
        return [run.PY, engine, str(db), str(scenario), "--concurrency", str(concurrency), *extra]
    if name in ("tool", "tool-dry"):
        extra = ("--dry-run",) if name == "tool-dry" else ()
        fast = ("--rate", "0", "--listing-interval", "0")
        return run.tool_cmd(db, sim.base_url, concurrency, *fast, *extra, *sim.trust)
    ceiling = str(Path(__file__).with_name("ceiling.py"))
    return [run.PY, ceiling, sim.base_url, str(targets), "--via", name,
            "--concurrency", str(concurrency), *sim.trust]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="300,900", help="two backlog sizes, comma-separated")
    parser.add_argument("--contenders", default="tool,wire,get")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--https", action="store_true", help="against the simulator over TLS")
    args = parser.parse_args()
    small, large = (int(n) for n in args.rows.split(","))
    contenders = args.contenders.split(",")
    backlog = make_backlog(20000, "per_order", accounts=5)
    counts: dict[tuple[str, int], int] = {}
    with tempfile.TemporaryDirectory() as tmp, Simulator(backlog.scenario, tls=args.https) as sim:
        for n in (small, large):
            targets = Path(tmp) / f"targets-{n}.txt"
            db = run.prefix_copy(backlog, n, Path(tmp) / "targets.db")
            run.tool_targets(sim, db, args.concurrency, targets)
            for contender in contenders:
                name, _, src = contender.partition(":")
                env = dict(os.environ, **({"PYTHONPATH": src} if src else {}))
                db = run.prefix_copy(backlog, n, Path(tmp) / "run.db")
                sim.reset()
                counts[contender, n] = instructions(
                    command(name, sim, db, targets, args.concurrency, backlog.scenario), env
                )
                print(f"  {contender:24s} {n:6d} rows {counts[contender, n] / 1e9:8.3f} G")
    over = "HTTPS" if args.https else "HTTP"
    print(f"instructions per row over {over} (from {small} and {large} rows, concurrency "
          f"{args.concurrency}):")  # fmt: skip
    for contender in contenders:
        per_row = (counts[contender, large] - counts[contender, small]) / (large - small)
        print(f"  {contender:24s} {per_row / 1e3:8.1f} k")


if __name__ == "__main__":
    main()
