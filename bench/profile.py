"""Where the tool's CPU goes on per-order lookups: a sampling profile, folded by layer.

Runs the tool (pinned to CPU 0) on a per-order backlog against the simulator (CPU 1) under
``py-spy record --gil`` (only the thread holding the GIL is sampled, so the samples are the
process's Python CPU), then attributes every sample to the innermost layer it is in::

    pip install py-spy
    python bench/profile.py [--rows 20000] [--concurrency 64]

Layers: ``http`` (inside httpcore: sending, reading, closing a request), ``wire``
(the backend's request path around it: deadline, pacing, body cap, status interpretation),
``cpapi`` (the evidence rules), ``engine`` (planning, deciding, the pipeline's tasks), ``writer``
and ``reader`` (their tasks; SQLite itself runs without the GIL), ``trio`` (the scheduler
between tasks), ``startup`` (imports).
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from backlog import make_backlog
from procs import Simulator, pinned

LAYERS = (
    ("startup", ("_find_and_load",)),
    ("writer", ("_Run._write", "_Run._flush", "Store.apply")),
    ("reader", ("_Run._read", "Store.read_page")),
    (
        "http",
        (
            "OneConnection.handle_async_request",
            "AsyncConnectionPool.handle_async_request",
            "_Body.read",
            "Response.aclose",
            "Request.__init__",
            "URL.__init__",
        ),
    ),
    ("wire", ("Wire.",)),
    ("cpapi", ("CpapiResolver", "CpapiBackend")),
    ("engine", ("_Run._resolve", "_Run._work", "plan (", "decide (")),
    ("trio", ("unrolled_run",)),
)


def fold(raw: Path) -> tuple[collections.Counter[str], int]:
    layers: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        for name, marks in LAYERS:
            if any(mark in stack for mark in marks):
                layers[name] += n
                break
        else:
            layers["other"] += n
    return layers, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rate", type=int, default=250, help="samples per second")
    args = parser.parse_args()
    spy = shutil.which("py-spy")
    if spy is None:
        sys.exit("py-spy is not installed: pip install py-spy")
    backlog = make_backlog(args.rows, "per_order", accounts=5)
    with tempfile.TemporaryDirectory() as tmp, Simulator(backlog.scenario) as sim:
        db = backlog.fresh_copy(Path(tmp) / "profile.db")
        raw = Path(tmp) / "profile.txt"
        tool = [sys.executable, "-m", "ibkr_recover", "recover", str(db), "--base-url"]
        tool += [sim.base_url, "--rate", "0", "--listing-interval", "0", "--json"]
        tool += ["--concurrency", str(args.concurrency)]
        cmd = [spy, "record", "--gil", "-r", str(args.rate), "-f", "raw", "-o", str(raw), "--"]
        subprocess.run([*cmd, *pinned(tool, 0)], check=True, capture_output=True)
        layers, total = fold(raw)
    print(f"{total} samples at {args.rate}/s, {args.rows} rows, concurrency {args.concurrency}")
    for name, n in layers.most_common():
        per_row = 1e6 * n / args.rate / args.rows
        print(f"  {name:8s} {100 * n / total:5.1f} %  {per_row:7.1f} us/row (sampled)")


if __name__ == "__main__":
    main()
