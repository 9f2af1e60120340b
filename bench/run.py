"""The benchmark harness: the tool, the baseline and the ceiling, side by side in one run.

Against the simulator on loopback (its own process, pinned to CPU 1; every contender pinned to
CPU 0), for two workloads (per-order lookups: cancels/modifies answered by the status endpoint;
listing-resolved submits across many accounts) at simulator latencies 0, 5, 20 and 50 ms:

* the tool (``ibkr-recover recover --rate 0 --listing-interval 0 --json``) at several
  concurrencies;
* the baseline (``bench/baseline.py``: the gateway's own sequential algorithm);
* the ceiling (``bench/ceiling.py``: the tool's requests in a bare loop, same client setup,
  same concurrency, no database);
* per-order, at concurrency 64: the tool and the ceiling over HTTPS too, as a gateway serves
  it (a second simulator, serving TLS); and once, at the first latency, the engine alone
  (``bench/engine.py``: the tool's pipeline on the same rows with every lookup answered in
  memory), with and without its writes.

Then peak RSS against backlog size, the writer alone, and a paced run (the simulator enforcing
IBKR's limits). Medians over repeats go to ``bench/RESULTS.md`` with two plots; the raw numbers
to ``bench/results.json``. Nothing here fails on a number::

    python bench/run.py            # the full run (about half an hour)
    python bench/run.py --quick    # small backlogs, one repeat (a minute or two)
    nox -s bench -- --quick
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import report
from backlog import Backlog, make_backlog
from procs import Measured, Simulator, measure

HERE = Path(__file__).resolve().parent
PY = sys.executable


@dataclass
class Plan:
    """What one run measures."""

    quick: bool
    repeats: int
    latencies: tuple[float, ...]
    concurrencies: tuple[int, ...]
    rows: int  # backlog of each latency workload
    run_seconds: float  # rows per run are sized to take about this long
    rss_rows: tuple[int, ...]
    paced_rows: int
    writer_rows: int

    @classmethod
    def make(cls, quick: bool) -> Plan:
        if quick:
            return cls(True, 1, (0, 20), (64,), 2000, 1.5, (1000, 3000), 600, 20000)
        return cls(
            False, 3, (0, 5, 20, 50), (16, 64, 256), 20000, 8.0, (10_000, 100_000, 1_000_000),
            10_000, 100_000,
        )  # fmt: skip


@dataclass
class Results:
    plan: dict[str, Any]
    machine: dict[str, Any]
    runs: list[dict[str, Any]] = field(default_factory=list)
    rss: list[dict[str, Any]] = field(default_factory=list)
    writer: list[dict[str, Any]] = field(default_factory=list)
    paced: dict[str, Any] = field(default_factory=dict)
    generator: list[dict[str, Any]] = field(default_factory=list)
    backlogs: list[dict[str, Any]] = field(default_factory=list)
    commands: dict[str, str] = field(default_factory=dict)


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


# -- backlogs ---------------------------------------------------------------------------------


def prefix_copy(backlog: Backlog, rows: int, target: Path) -> Path:
    """A copy of the backlog keeping only its first ``rows`` pending rows in scan order."""
    backlog.fresh_copy(target)
    if rows >= backlog.rows:
        return target
    conn = sqlite3.connect(target, isolation_level=None)
    cut = conn.execute(
        "SELECT created_at, idempotency_key FROM order_idempotency_records "
        "WHERE status = 'pending_writer' ORDER BY created_at, idempotency_key LIMIT 1 OFFSET ?",
        (rows,),
    ).fetchone()
    if cut is not None:
        conn.execute(
            "DELETE FROM order_idempotency_records WHERE status = 'pending_writer' "
            "AND (created_at, idempotency_key) >= (?, ?)",
            cut,
        )
    conn.close()
    return target


def pending(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        (n,) = conn.execute(
            "SELECT count(*) FROM order_idempotency_records WHERE status = 'pending_writer'"
        ).fetchone()
    finally:
        conn.close()
    return int(n)


def note_backlog(results: Results, backlog: Backlog) -> None:
    entry = {
        "rows": backlog.rows,
        "mix": backlog.mix,
        "accounts": backlog.accounts,
        "generate_s": round(backlog.generate_s, 3),
        "rows_per_s": round(backlog.rows_per_s),
    }
    if entry not in results.backlogs:
        results.backlogs.append(entry)


# -- contenders -------------------------------------------------------------------------------


def tool_cmd(db: Path, url: str, concurrency: int, *extra: str) -> list[str]:
    return [PY, "-m", "ibkr_recover", "recover", str(db), "--base-url", url, "--json",
            "--concurrency", str(concurrency), *extra]  # fmt: skip


def reported(m: Measured) -> dict[str, Any]:
    """The figures of a run that prints a report as the tool's ``--json`` does."""
    out = m.json() if m.stdout.strip() else {}
    return {
        "rows": out.get("scanned", 0),
        "rows_per_s": out.get("rows_per_s", 0.0),
        "elapsed_s": out.get("elapsed_s", m.wall_s),
        "wall_s": m.wall_s,
        "cpu_s": m.cpu_s,
        "maxrss_mb": m.maxrss_mb,
        "exit": m.returncode,
        "report": out,
        "stderr": m.stderr[-2000:],
    }


def run_tool(
    sim: Simulator, db: Path, concurrency: int, *extra: str, fast: bool = True
) -> dict[str, Any]:
    sim.reset()
    sim_cpu = sim.cpu_s()
    pacing = ("--rate", "0", "--listing-interval", "0") if fast else ()
    r = reported(measure(tool_cmd(db, sim.base_url, concurrency, *pacing, *sim.trust, *extra)))
    stats = sim.stats()
    r.update(
        requests=stats["requests"],
        rate_limited=stats["rate_limited"],
        sim_cpu_s=sim.cpu_s() - sim_cpu,
    )
    return r


def run_baseline(sim: Simulator, db: Path) -> dict[str, Any]:
    sim.reset()
    r = reported(measure([PY, str(HERE / "baseline.py"), str(db), sim.base_url]))
    r["requests"] = sim.stats()["requests"]
    return r


def run_ceiling(
    sim: Simulator, targets: Path, rows: int, concurrency: int, via: str = "get"
) -> dict[str, Any]:
    sim.reset()
    sim_cpu = sim.cpu_s()
    cmd = [PY, str(HERE / "ceiling.py"), sim.base_url, str(targets), "--via", via, *sim.trust]
    m = measure([*cmd, "--concurrency", str(concurrency)])
    out = m.json() if m.stdout.strip() else {}
    elapsed = out.get("elapsed_s", 0.0)
    return {
        "rows": rows,
        "rows_per_s": round(rows / elapsed, 1) if elapsed else 0.0,
        "requests_per_s": out.get("requests_per_s", 0.0),
        "elapsed_s": elapsed,
        "cpu_s": m.cpu_s,
        "maxrss_mb": m.maxrss_mb,
        "exit": m.returncode,
        "requests": sim.stats()["requests"],
        "sim_cpu_s": sim.cpu_s() - sim_cpu,
        "stderr": m.stderr[-2000:],
    }


def run_engine(backlog: Backlog, db: Path, concurrency: int, *extra: str) -> dict[str, Any]:
    """The tool's pipeline with every lookup answered in memory (``bench/engine.py``)."""
    cmd = [PY, str(HERE / "engine.py"), str(db), str(backlog.scenario), *extra]
    r = reported(measure([*cmd, "--concurrency", str(concurrency)]))
    r["requests"] = 0
    return r


def tool_targets(sim: Simulator, db: Path, concurrency: int, path: Path) -> int:
    """Record the requests one tool run sends (from the simulator's log) as ceiling targets."""
    run_tool(sim, db, concurrency)
    log = sim._call("GET", "requests")
    targets = []
    for entry in log:
        target = entry["path"].removeprefix("/v1/api")
        if target in ("/iserver/auth/status", "/iserver/accounts"):
            continue
        targets.append(target + (f"?{entry['query']}" if entry["query"] else ""))
    path.write_text("\n".join(targets) + "\n")
    return len(targets)


# -- the parts of a run -------------------------------------------------------------------------


def sized(plan: Plan, rate: float, available: int, floor: int = 100) -> int:
    """Rows for a run expected to go at ``rate`` rows/s: about ``plan.run_seconds`` of it."""
    return max(floor, min(available, int(rate * plan.run_seconds)))


def latency_runs(plan: Plan, results: Results, workload: str, tmp: Path) -> None:
    mix = "per_order" if workload == "per_order" else "listing"
    backlog = make_backlog(plan.rows, mix, accounts=5)
    note_backlog(results, backlog)
    say(f"{workload}: {backlog.rows:,} rows over {backlog.accounts} accounts")
    # Per-order lookups are also measured over HTTPS, as a gateway serves them: one more
    # simulator, on the same CPU, serving TLS with a CA of its own.
    https = Simulator(backlog.scenario, tls=True) if workload == "per_order" else None
    with Simulator(backlog.scenario) as sim, https or contextlib.nullcontext():
        for latency in plan.latencies:
            sim.configure(latency_ms=latency)
            if https is not None:
                https.configure(latency_ms=latency)
            lat_s = latency / 1000
            per_request = 0.0012 if workload == "per_order" else 0.008
            for rep in range(plan.repeats):
                for conc in plan.concurrencies:
                    # Per-order rows cost one request each: Little's law, capped by the CPU
                    # (a little above the tool's rate on the fastest machine it ran on).
                    if workload == "per_order":
                        rate = min(conc / (lat_s + 0.001), 6000.0)
                        rows = sized(plan, rate, backlog.rows)
                    else:
                        rows = backlog.rows
                    db = prefix_copy(backlog, rows, tmp / "tool.db")
                    targets = tmp / f"targets-{workload}-{rows}.txt"
                    if not targets.exists():
                        tool_targets(sim, prefix_copy(backlog, rows, tmp / "t.db"), conc, targets)
                    tool = run_tool(sim, db, conc)
                    record(results, workload, latency, "tool", conc, rep, tool)
                    ceiling = run_ceiling(sim, targets, rows, conc)
                    record(results, workload, latency, "ceiling", conc, rep, ceiling)
                    if conc == 64:
                        wire = run_ceiling(sim, targets, rows, conc, via="wire")
                        record(results, workload, latency, "wire", conc, rep, wire)
                        for via in ("pool", "httpx"):
                            old = run_ceiling(sim, targets, rows, conc, via=via)
                            record(results, workload, latency, via, conc, rep, old)
                    if conc == 64 and workload == "per_order" and latency == plan.latencies[0]:
                        # What a row costs besides its request; it asks no broker, so
                        # one latency is enough.
                        for who, extra in (("engine", ()), ("engine-dry", ("--dry-run",))):
                            db = prefix_copy(backlog, rows, tmp / "engine.db")
                            engine = run_engine(backlog, db, conc, *extra)
                            record(results, workload, latency, who, conc, rep, engine)
                    if conc == 64 and https is not None:
                        db = prefix_copy(backlog, rows, tmp / "tool.db")
                        tool = run_tool(https, db, conc)
                        record(results, workload, latency, "tool-https", conc, rep, tool)
                        ceiling = run_ceiling(https, targets, rows, conc)
                        record(results, workload, latency, "ceiling-https", conc, rep, ceiling)
                rate = 1 / (lat_s + per_request)
                rows = sized(plan, rate, backlog.rows, floor=60)
                baseline = run_baseline(sim, prefix_copy(backlog, rows, tmp / "base.db"))
                record(results, workload, latency, "baseline", 1, rep, baseline)
    if workload == "per_order":
        results.commands["engine"] = (
            "python bench/engine.py DB SCENARIO --concurrency 64 [--dry-run]   (taskset -c 0; "
            "the same rows, every lookup answered in memory)"
        )
    results.commands[f"{workload} tool"] = (
        "ibkr-recover recover DB --base-url URL --rate 0 --listing-interval 0 "
        "--concurrency C --json   (taskset -c 0; simulator: python -m ibkr_recover.simulator "
        f"--scenario {mix}.json --port 0, taskset -c 1, latency set by POST /__sim/config)"
    )


def record(
    results: Results,
    workload: str,
    latency: float,
    who: str,
    conc: int,
    rep: int,
    r: dict[str, Any],
) -> None:
    r.update(workload=workload, latency_ms=latency, contender=who, concurrency=conc, repeat=rep)
    results.runs.append(r)
    say(
        f"  {workload:9s} {latency:>4g} ms {who:13s} c={conc:<4d} {r['rows']:>7,} rows "
        f"{r['rows_per_s']:>9,.0f} rows/s  cpu {r['cpu_s']:6.2f} s  exit {r['exit']}"
    )


def rss_runs(plan: Plan, results: Results, tmp: Path) -> None:
    """Peak RSS of the tool against backlog size, on per-order backlogs (5 accounts, 0 ms).

    One listing backlog too: its accounts grow with it (a listing holds at most 1000 rows), and
    so do the listings the run keeps, one per account.
    """
    points = [(rows, "per_order") for rows in plan.rss_rows] + [(plan.rss_rows[1], "listing")]
    for rows, mix in points:
        backlog = make_backlog(rows, mix, accounts=5)
        note_backlog(results, backlog)
        repeats = 1 if rows >= 100_000 else min(2, plan.repeats)
        with Simulator(backlog.scenario) as sim:
            for rep in range(repeats):
                r = run_tool(sim, backlog.fresh_copy(tmp / "rss.db"), 64)
                r.update(n=rows, mix=mix, repeat=rep, accounts=backlog.accounts)
                results.rss.append(r)
                say(
                    f"  rss {mix} {rows:>9,} rows: {r['maxrss_mb']:.1f} MB peak, "
                    f"{r['rows_per_s']:,.0f} rows/s, exit {r['exit']}"
                )
    results.commands["rss"] = (
        "ibkr-recover recover DB --base-url URL --rate 0 --listing-interval 0 --concurrency 64 "
        "--json on per-order backlogs of 5 accounts (latency 0); peak RSS of the tool process "
        "from os.wait4"
    )


def writer_runs(plan: Plan, results: Results) -> None:
    backlog = make_backlog(plan.writer_rows, "per_order", accounts=5)
    note_backlog(results, backlog)
    per_row = min(20_000, plan.writer_rows)
    cmd = [PY, str(HERE / "writer.py"), str(backlog.db), "--per-row-rows", str(per_row)]
    for rep in range(plan.repeats):
        m = measure(cmd)
        if m.returncode != 0:
            say(f"  writer failed: {m.stderr[-500:]}")
            continue
        r = m.json()
        r.update(repeat=rep, rows=plan.writer_rows)
        results.writer.append(r)
        say(
            f"  writer {r['order']}: batched {r['batched']['rows_per_s']:,.0f} rows/s, "
            f"per row {r['per_row']['rows_per_s']:,.0f} rows/s, x{r['speedup']:.1f}"
        )
    results.commands["writer"] = (
        f"python bench/writer.py {plan.writer_rows}-row per_order DB --per-row-rows {per_row}"
    )


def baseline_requests(db: Path) -> tuple[int, int]:
    """The baseline's requests for a backlog: (all of them, those of the listing endpoint)."""
    conn = sqlite3.connect(db)
    total = listing = 0
    for key, text in conn.execute(
        "SELECT idempotency_key, payload_json FROM order_idempotency_records "
        "WHERE status = 'pending_writer'"
    ):
        try:
            ctx = json.loads(text) if text else None
        except ValueError:
            continue
        if not isinstance(ctx, dict) or not str(key).strip() or "account_id" not in ctx:
            continue
        total += 1
        listing += ctx.get("operation") == "submit"
    conn.close()
    return total + 1, listing


def paced_run(plan: Plan, results: Results, tmp: Path) -> None:
    backlog = make_backlog(plan.paced_rows, "crash", accounts=5)
    note_backlog(results, backlog)
    rate, listing_interval = 10.0, 5.0
    with Simulator(backlog.scenario, "--pacing") as sim:
        r = run_tool(sim, backlog.fresh_copy(tmp / "paced.db"), 64, fast=False)
        by_endpoint = sim.stats()["by_endpoint"]
    elapsed = r["elapsed_s"]
    requests = r["requests"]
    listing_calls = by_endpoint.get("listing", 0)
    base_total, base_listing = baseline_requests(backlog.db)
    r.update(
        rows=backlog.rows,
        mix=backlog.mix,
        accounts=backlog.accounts,
        allowed_rate=rate,
        achieved_rate=requests / elapsed if elapsed else 0.0,
        lower_bound_s=requests / rate,
        by_endpoint=by_endpoint,
        # The listing calls go one per interval (the tool keeps 2 % inside it).
        listing_chain_s=max(0, listing_calls - 1) * listing_interval * 1.02,
        baseline_requests=base_total,
        baseline_listing_requests=base_listing,
        baseline_s=max(base_total / rate, (base_listing - 1) * listing_interval),
    )
    results.paced = r
    say(
        f"  paced: {requests} requests in {elapsed:.1f} s = {r['achieved_rate']:.2f}/s of "
        f"{rate:g}/s, {r['rate_limited']} x 429, exit {r['exit']}; baseline would need "
        f"{r['baseline_s']:,.0f} s"
    )
    results.commands["paced"] = (
        "simulator: python -m ibkr_recover.simulator --scenario crash.json --pacing; tool: "
        "ibkr-recover recover DB --base-url URL --concurrency 64 --json (defaults --rate 10 "
        "--listing-interval 5)"
    )


def generator_runs(plan: Plan, results: Results, tmp: Path) -> None:
    """The backlog generator timed afresh (never from the cache), a few sizes and mixes."""
    sizes = (20_000,) if plan.quick else (100_000, 1_000_000)
    for rows in sizes:
        for mix in ("per_order", "mixed"):
            for rep in range(plan.repeats):
                cache = tmp / "generated"
                backlog = make_backlog(rows, mix, accounts=5, cache=cache, force=True)
                shutil.rmtree(cache)
                results.generator.append(
                    {
                        "rows": rows,
                        "mix": mix,
                        "repeat": rep,
                        "accounts": backlog.accounts,
                        "seconds": round(backlog.generate_s, 3),
                        "rows_per_s": round(backlog.rows_per_s),
                        "cpu_s": round(backlog.generate_cpu_s, 2),
                    }
                )
                say(
                    f"  generator {rows:>9,} {mix:9s} {backlog.generate_s:6.2f} s "
                    f"{backlog.rows_per_s:>9,.0f} rows/s  cpu {backlog.generate_cpu_s:.2f} s"
                )
    results.commands["generator"] = "python bench/backlog.py --rows N --mix M --force"


def merge_earlier(results: Results, raw: Path, ran: set[str]) -> None:
    """Carry the parts this run did not measure over from the results already at ``raw``."""
    if not raw.exists():
        return
    earlier = json.loads(raw.read_text())
    mach = earlier.get("machine", {})
    # A part the earlier results carried or re-ran keeps the date it was measured at.
    dates = {**mach.get("reruns", {}), **mach.get("carried", {})}
    when = mach.get("date", "?")
    carried: dict[str, str] = {}
    if "per_order" not in ran or "listing" not in ran:
        kept = [r for r in earlier.get("runs", []) if r["workload"] not in ran]
        results.runs = kept + results.runs
        for workload in {r["workload"] for r in kept}:
            carried[workload] = dates.get(workload, when)
    for part in ("rss", "writer", "paced", "generator"):
        if part not in ran and earlier.get(part):
            setattr(results, part, earlier[part])
            carried[part] = dates.get(part, when)
    for name, command in earlier.get("commands", {}).items():
        results.commands.setdefault(name, command)
    for entry in earlier.get("backlogs", []):
        if entry not in results.backlogs:
            results.backlogs.append(entry)
    results.machine["carried"] = carried


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "sqlite": sqlite3.sqlite_version,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "load_before": os.getloadavg(),
        # The simulator runs on uvloop when it is installed (the bench extra installs it).
        "simulator_loop": "uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small backlogs, one repeat")
    parser.add_argument("--only", nargs="*", default=None,
                        choices=("per_order", "listing", "rss", "writer", "paced", "generator"))  # fmt: skip
    parser.add_argument("--out", type=Path, default=HERE, help="where RESULTS.md etc. go")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="with --only: keep the other parts from the results already in --out",
    )
    args = parser.parse_args()
    plan = Plan.make(args.quick)
    results = Results(plan=plan.__dict__, machine=machine())
    results.machine["command"] = " ".join(["python bench/run.py", *sys.argv[1:]])
    parts: dict[str, Callable[[Path], None]] = {
        "per_order": lambda tmp: latency_runs(plan, results, "per_order", tmp),
        "listing": lambda tmp: latency_runs(plan, results, "listing", tmp),
        "rss": lambda tmp: rss_runs(plan, results, tmp),
        "writer": lambda tmp: writer_runs(plan, results),
        "paced": lambda tmp: paced_run(plan, results, tmp),
        "generator": lambda tmp: generator_runs(plan, results, tmp),
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ibkr-bench-") as tmp:
        for name, part in parts.items():
            if args.only is not None and name not in args.only:
                continue
            say(f"== {name}")
            try:
                part(Path(tmp))
            except Exception as exc:  # a benchmark never fails on a number, nor on one part
                say(f"  {name} failed: {exc!r}")
    results.machine["total_s"] = round(time.perf_counter() - started, 1)
    results.machine["load_after"] = os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    raw = args.out / ("results-quick.json" if plan.quick else "results.json")
    if args.merge and args.only is not None:
        merge_earlier(results, raw, set(args.only))
    raw.write_text(json.dumps(results.__dict__, indent=1, default=str))
    md = report.write(results.__dict__, args.out, quick=plan.quick)
    say(f"wrote {raw} and {md}")


if __name__ == "__main__":
    shutil.rmtree(HERE / "__pycache__", ignore_errors=True)
    main()
