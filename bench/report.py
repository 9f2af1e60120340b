"""Turn the raw results of ``bench/run.py`` into ``RESULTS.md`` and two PNG plots."""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

__all__ = ["write"]


def med(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def medians(runs: list[dict[str, Any]]) -> dict[tuple[str, float, str, int], dict[str, float]]:
    """Per (workload, latency, contender, concurrency): the median of each measured number."""
    groups: dict[tuple[str, float, str, int], list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        groups[(r["workload"], r["latency_ms"], r["contender"], r["concurrency"])].append(r)
    out = {}
    for key, rs in groups.items():
        entry = {
            name: med([float(r[name]) for r in rs if isinstance(r.get(name), int | float)])
            for name in ("rows", "rows_per_s", "cpu_s", "maxrss_mb", "requests", "elapsed_s")
        }
        entry["repeats"] = len(rs)
        entry["cpu_per_row_us"] = med([1e6 * r["cpu_s"] / r["rows"] for r in rs if r["rows"]])
        entry["requests_per_s"] = med(
            [r["requests"] / r["elapsed_s"] for r in rs if r.get("elapsed_s")]
        )
        entry["failed"] = sum(1 for r in rs if r["exit"] not in (0, 1))
        out[key] = entry
    return out


def simulator_headroom(
    runs: list[dict[str, Any]], m: dict[tuple[str, float, str, int], dict[str, float]]
) -> dict[tuple[str, float], tuple[float, float]]:
    """Per workload (``... https`` for the simulator serving TLS) and latency: the requests the
    simulator served per CPU-second it used, and the fastest request rate of the tool there.

    The capacity sums requests and CPU over every run of that workload and latency, whatever
    the contender: the simulator's CPU time comes in clock ticks of 10 ms, and a listing run
    of a few dozen large answers uses only a few of them.
    """
    served: dict[tuple[str, float], list[float]] = defaultdict(lambda: [0.0, 0.0])
    for r in runs:
        if r.get("sim_cpu_s", 0) > 0 and r["exit"] in (0, 1):
            https = r["contender"].endswith("-https")
            total = served[(r["workload"] + (" https" if https else ""), r["latency_ms"])]
            total[0] += r["requests"]
            total[1] += r["sim_cpu_s"]
    out = {}
    for (label, latency), (requests, cpu_s) in served.items():
        workload, _, https = label.partition(" ")
        tool = "tool-https" if https else "tool"
        rates = [v["requests_per_s"] for k, v in m.items() if k[:3] == (workload, latency, tool)]
        if rates and max(rates) > 0:
            out[(label, latency)] = (requests / cpu_s, max(rates))
    return out


def fmt(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def verdict(ok: bool | None) -> str:
    return "—" if ok is None else ("met" if ok else "**missed**")


def targets(
    results: dict[str, Any], m: dict[tuple[str, float, str, int], dict[str, float]]
) -> list[tuple[str, str, bool | None]]:
    rows: list[tuple[str, str, bool | None]] = []
    # 1. per-order at c=64 against the ceiling, latency 0 (where both are CPU-bound).
    for latency in sorted({k[1] for k in m if k[0] == "per_order"}):
        tool = m.get(("per_order", latency, "tool", 64))
        ceiling = m.get(("per_order", latency, "ceiling", 64))
        if tool and ceiling and ceiling["rows_per_s"]:
            ratio = tool["rows_per_s"] / ceiling["rows_per_s"]
            rows.append(
                (
                    f"per-order, c=64, {latency:g} ms: tool ≥ 0.85 x ceiling",
                    f"{ratio:.2f} x ({fmt(tool['rows_per_s'])} vs {fmt(ceiling['rows_per_s'])} rows/s)",
                    ratio >= 0.85,
                )
            )
    # 2. 30x the baseline at 20 ms.
    for workload in ("per_order", "listing"):
        base = m.get((workload, 20, "baseline", 1))
        tools = [v for k, v in m.items() if k[:3] == (workload, 20, "tool")]
        if base and tools and base["rows_per_s"]:
            best = max(t["rows_per_s"] for t in tools)
            tool64 = m.get((workload, 20, "tool", 64), {"rows_per_s": best})["rows_per_s"]
            rows.append(
                (
                    f"{workload}, 20 ms: tool (c=64) ≥ 30 x baseline",
                    f"{tool64 / base['rows_per_s']:.1f} x ({fmt(tool64)} vs "
                    f"{fmt(base['rows_per_s'], 1)} rows/s); best concurrency "
                    f"{best / base['rows_per_s']:.1f} x",
                    tool64 / base["rows_per_s"] >= 30,
                )
            )
    # 3. the writer alone.
    orders = dict.fromkeys(w["order"] for w in results.get("writer", []))
    for order in orders:
        ws = [w for w in results.get("writer", []) if w["order"] == order]
        if ws:
            rate = med([w["batched"]["rows_per_s"] for w in ws])
            speedup = med([w["speedup"] for w in ws])
            rows.append(
                (
                    f"writer alone, database {order}: ≥ 100k rows/s",
                    f"{fmt(rate)} rows/s",
                    rate >= 1e5,
                )
            )
            rows.append(
                (
                    f"writer alone, database {order}: ≥ 20 x one commit per row (NORMAL)",
                    f"{speedup:.1f} x (per row {fmt(med([w['per_row']['rows_per_s'] for w in ws]))} rows/s)",
                    speedup >= 20,
                )
            )
            fulls = [w for w in ws if "per_row_full" in w]
            if fulls:
                full = med([w["speedup_full"] for w in fulls])
                per_row_full = med([w["per_row_full"]["rows_per_s"] for w in fulls])
                rows.append(
                    (
                        f"writer alone, database {order}: ≥ 20 x one commit per row (FULL)",
                        f"{full:.1f} x (per row {fmt(per_row_full)} rows/s)",
                        full >= 20,
                    )
                )
    # 4. peak RSS.
    rss = defaultdict(list)
    for r in results.get("rss", []):
        if r.get("mix", "per_order") == "per_order":
            rss[r["n"]].append(r["maxrss_mb"])
    if 1_000_000 in rss:
        peak = med(rss[1_000_000])
        rows.append(("peak RSS at 1M rows ≤ 200 MB", f"{peak:.1f} MB", peak <= 200))
        if 100_000 in rss:
            ratio = peak / med(rss[100_000])
            rows.append(
                (
                    "peak RSS at 1M ≤ 1.25 x peak at 100k",
                    f"{ratio:.2f} x ({peak:.1f} vs {med(rss[100_000]):.1f} MB)",
                    ratio <= 1.25,
                )
            )
    # 5. paced.
    p = results.get("paced") or {}
    if p:
        used = p["achieved_rate"] / p["allowed_rate"]
        rows.append(
            (
                "paced: ≥ 95 % of the allowed request rate",
                f"{100 * used:.1f} % ({p['achieved_rate']:.2f} of {p['allowed_rate']:g} req/s)",
                used >= 0.95,
            )
        )
        rows.append(("paced: zero 429s", str(p["rate_limited"]), p["rate_limited"] == 0))
        rows.append(
            (
                f"paced: {p['rows']:,}-row backlog done in ≤ 60 s",
                f"{p['elapsed_s']:.1f} s ({p['requests']} requests: at least "
                f"{p['lower_bound_s']:.0f} s at {p['allowed_rate']:g}/s)",
                p["elapsed_s"] <= 60,
            )
        )
    # 6. the generator.
    gen = defaultdict(list)
    for g in results.get("generator", []):
        gen[(g["rows"], g["mix"])].append(g["rows_per_s"])
    for (n, mix), rates in sorted(gen.items()):
        if n == max(k[0] for k in gen):
            rate = med(rates)
            rows.append(
                (f"generator ≥ 200k rows/s ({n:,} rows, {mix})", f"{fmt(rate)} rows/s", rate >= 2e5)
            )
    # 7. the simulator is not the limit, at any latency of either workload.
    headroom = simulator_headroom(results.get("runs", []), m)
    if headroom:
        (workload, latency), (capacity, fastest) = min(
            headroom.items(), key=lambda item: item[1][0] / item[1][1]
        )
        rows.append(
            (
                "simulator serves ≥ 3 x the tool's request rate",
                f"{capacity / fastest:.1f} x at worst ({workload}, {latency:g} ms: "
                f"{fmt(capacity)} requests per simulator CPU-second vs the tool's "
                f"{fmt(fastest)} req/s)",
                capacity >= 3 * fastest,
            )
        )
    return rows


def row_costs(m: dict[tuple[str, float, str, int], dict[str, float]]) -> list[str]:
    """Where a per-order row's time goes at the latency the engine ran at (c=64)."""
    latencies = [k[1] for k in m if k[0] == "per_order" and k[2] == "engine" and k[3] == 64]
    if not latencies:
        return []
    latency = min(latencies)

    def per_row(who: str) -> float | None:
        v = m.get(("per_order", latency, who, 64))
        return 1e6 / v["rows_per_s"] if v and v["rows_per_s"] else None

    ceiling, tool, engine = per_row("ceiling"), per_row("tool"), per_row("engine")
    if ceiling is None or tool is None or engine is None:
        return []
    allowed = ceiling / 0.85
    # (what, µs a row, whether it includes the bare request)
    costs = [
        ("ceiling: the bare request", ceiling, False),
        ("wire: the same request through the tool's request path", per_row("wire"), True),
        ("tool", tool, True),
        ("the most a row may take for tool ≥ 0.85 x ceiling", allowed, True),
        ("engine alone: the tool's pipeline, lookups answered in memory", engine, False),
        ("engine alone, dry run (no writes)", per_row("engine-dry"), False),
    ]
    md = [
        f"## What a per-order row costs ({latency:g} ms, c=64)",
        "",
        "Microseconds of run time per row (rows/s inverted; start-up excluded). At this "
        "latency the tool and the ceiling are bound by the one CPU they run on, so this is also "
        "their CPU time per row.",
        "",
        "| what | µs per row | beyond the bare request |",
        "|---|---:|---:|",
    ]
    for name, value, with_request in costs:
        if value is not None:
            beyond = f"{value - ceiling:+,.0f}" if with_request else "—"
            md.append(f"| {name} | {value:,.0f} | {beyond} |")
    md += [
        "",
        f"The target leaves {allowed - ceiling:,.0f} µs a row for everything the tool does "
        "besides the request; the engine alone, whose lookups take one scheduler pass and no "
        f"request at all, takes {engine:,.0f} µs of them."
        + (
            f" The tool takes {tool - ceiling:,.0f}: the engine, its request path (`wire`), "
            "decoding the answer and weighing the evidence, and the deeper stack that every "
            "wait of a request leaves and resumes (`python bench/engine.py DB SCENARIO "
            "--yields 4 --depth 10` shows what that costs; NOTES.md)."
            if tool > allowed
            else ""
        ),
        "",
    ]
    return md


def plots(
    results: dict[str, Any], m: dict[tuple[str, float, str, int], dict[str, float]], out: Path
) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    names = []
    workloads = [w for w in ("per_order", "listing") if any(k[0] == w for k in m)]
    if workloads:
        fig, axes = plt.subplots(
            1, len(workloads), figsize=(6 * len(workloads), 4.5), squeeze=False
        )
        for ax, workload in zip(axes[0], workloads, strict=True):
            lines: dict[tuple[str, int], list[tuple[float, float]]] = defaultdict(list)
            for (w, latency, who, conc), v in m.items():
                if w == workload:
                    lines[(who, conc)].append((latency, v["rows_per_s"]))
            for (who, conc), points in sorted(lines.items()):
                points.sort()
                if who not in ("tool", "ceiling", "baseline"):
                    continue  # in the table; the plot shows the three contenders
                style = {"tool": "-o", "ceiling": "--s", "baseline": ":^"}[who]
                label = who if who == "baseline" else f"{who} c={conc}"
                ax.plot([p[0] for p in points], [p[1] for p in points], style, label=label)
            ax.set_yscale("log")
            ax.set_xlabel("simulator latency (ms)")
            ax.set_ylabel("rows/s (median)")
            ax.set_title(workload.replace("_", "-"))
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "rows_per_s.png", dpi=110)
        plt.close(fig)
        names.append("rows_per_s.png")
    if results.get("rss"):
        by_n: dict[int, list[float]] = defaultdict(list)
        for r in results["rss"]:
            if r.get("mix", "per_order") == "per_order":
                by_n[r["n"]].append(r["maxrss_mb"])
        ns = sorted(by_n)
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(ns, [med(by_n[n]) for n in ns], "-o", label="tool, peak RSS")
        ax.axhline(200, color="grey", linestyle=":", label="200 MB target")
        ax.set_xscale("log")
        ax.set_xlabel("pending rows (N)")
        ax.set_ylabel("peak RSS (MB)")
        ax.set_ylim(0, max(220, 1.1 * max(med(by_n[n]) for n in ns)))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "rss.png", dpi=110)
        plt.close(fig)
        names.append("rss.png")
    return names


def write(results: dict[str, Any], out: Path, *, quick: bool) -> Path:
    m = medians(results["runs"])
    images = [] if quick else plots(results, m, out)
    md: list[str] = []
    title = "Benchmark results" + (" (quick mode: small backlogs, one repeat)" if quick else "")
    md += [f"# {title}", ""]
    mach = results["machine"]
    carried = {**mach.get("reruns", {}), **mach.get("carried", {})}
    md += [
        f"Run {mach['date']} on {mach['cpus']} CPUs, Python {mach['python']}, SQLite "
        f"{mach['sqlite']} ({mach['platform']}), the simulator on "
        f"{mach.get('simulator_loop', 'uvloop')}; load average before "
        f"{', '.join(f'{x:.2f}' for x in mach['load_before'])}, after "
        f"{', '.join(f'{x:.2f}' for x in mach.get('load_after', (0, 0, 0)))}; "
        f"{mach.get('total_s', 0):.0f} s in all. Produced by "
        f"`{mach.get('command', 'python bench/run.py' + (' --quick' if quick else ''))}`; raw "
        "numbers in "
        f"`bench/{'results-quick' if quick else 'results'}.json`.",
        "",
        *(
            [
                "Parts carried over from earlier runs (`python bench/run.py --only PART ... "
                "--merge` measures the named parts and keeps the others): "
                + ", ".join(f"{part} (measured {when})" for part, when in carried.items())
                + ".",
                "",
            ]
            if carried
            else []
        ),
        "Every contender is its own process pinned to CPU 0 (`taskset -c 0`), the simulator "
        "another pinned to CPU 1; CPU seconds come from `os.wait4`, peak RSS from `VmHWM` "
        "(sampled in `/proc` while the process runs; see NOTES.md), requests from the "
        "simulator's `/__sim/stats`, which is reset between runs. Medians over "
        f"{results['plan']['repeats']} repeat(s).",
        "",
        "## Targets",
        "",
        "| target | measured | verdict |",
        "|---|---|---|",
    ]
    md += [f"| {name} | {value} | {verdict(ok)} |" for name, value, ok in targets(results, m)]
    md += ["", "## Rows per second against latency", ""]
    md += [f"![rows/s against latency]({name})" for name in images if name == "rows_per_s.png"]
    md += [
        "",
        "| workload | latency ms | contender | concurrency | rows | rows/s | CPU s | CPU µs/row | "
        "peak RSS MB | requests | requests/s |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (workload, latency, who, conc), v in sorted(m.items()):
        md.append(
            f"| {workload} | {latency:g} | {who} | {conc} | {fmt(v['rows'])} | "
            f"{fmt(v['rows_per_s'])} | {v['cpu_s']:.2f} | {fmt(v['cpu_per_row_us'])} | "
            f"{v['maxrss_mb']:.0f} | {fmt(v['requests'])} | {fmt(v['requests_per_s'])} |"
        )
    md += [
        "",
        "Rows per run are sized to take a few seconds (Little's law for the tool and the "
        "ceiling, one round trip per row for the baseline), so the baseline runs on the first "
        "rows of the same backlog. The ceiling replays the requests the tool sent for the same "
        "rows (taken from the simulator's request log), so its rows/s is rows divided by the "
        "time of those requests. `wire` sends the same requests through the tool's own request "
        "path (deadline, capped streamed body) with the tool's process settings. `pool` and "
        "`httpx` are the ceiling's loop through the clients the tool used before: one "
        "single-connection `httpcore.AsyncConnectionPool`, or one `httpx.AsyncClient`, per "
        "worker instead of one bare keep-alive connection. `tool-https` and `ceiling-https` "
        "are the tool and the ceiling over HTTPS, as a gateway serves it (a second simulator "
        "serving TLS with its own CA, trusted through `--cacert`). `engine` and `engine-dry` "
        "are the tool's pipeline on the same rows with every lookup answered in memory "
        "(`bench/engine.py`), with and without its writes: no request at all.",
        "",
    ]
    headroom = simulator_headroom(results.get("runs", []), m)
    if headroom:
        md += [
            "Simulator headroom: the requests it served per CPU-second it used (every run of "
            "the workload and latency, summed), against the tool's fastest request rate there.",
            "",
            "| workload | latency ms | simulator req per CPU-s | tool's fastest req/s | headroom |",
            "|---|---:|---:|---:|---:|",
        ]
        md += [
            f"| {workload} | {latency:g} | {fmt(capacity)} | {fmt(fastest)} | "
            f"{capacity / fastest:.1f} x |"
            for (workload, latency), (capacity, fastest) in sorted(headroom.items())
        ]
        md.append("")
    md += row_costs(m)
    if results.get("rss"):
        md += ["## Peak RSS against backlog size", ""]
        md += [f"![peak RSS against N]({name})" for name in images if name == "rss.png"]
        md += [
            "",
            "| pending rows | mix | accounts | peak RSS MB | rows/s | CPU s | exit |",
            "|---:|---|---:|---:|---:|---:|---:|",
        ]
        for r in results["rss"]:
            md.append(
                f"| {r['n']:,} | {r.get('mix', 'per_order')} | {r['accounts']} | "
                f"{r['maxrss_mb']:.1f} | {fmt(r['rows_per_s'])} | {r['cpu_s']:.1f} | {r['exit']} |"
            )
        md.append("")
    if results.get("writer"):
        md += [
            "## The writer alone",
            "",
            "`Store.apply` in batches against one autocommitted `UPDATE`/`DELETE` per row, on "
            f"copies of the same {results['plan']['writer_rows']:,}-row database (every pending "
            "row completed, one in six cleared); one commit per row with `synchronous=NORMAL` "
            "(what the gateway sets) and with `FULL` (SQLite's default), on fewer rows. `python "
            "bench/writer.py DB`.",
            "",
            "| database order | batch rows/s | batch CPU µs/row | one commit per row rows/s "
            "(NORMAL) | speed-up | one commit per row rows/s (FULL) | speed-up |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for w in results["writer"]:
            b, p = w["batched"], w["per_row"]
            full = w.get("per_row_full")
            md.append(
                f"| {w['order']} | {fmt(b['rows_per_s'])} | {1e6 * b['cpu_s'] / b['rows']:.1f} | "
                f"{fmt(p['rows_per_s'])} | {w['speedup']:.1f} x | "
                + (
                    f"{fmt(full['rows_per_s'])} | {w['speedup_full']:.1f} x |"
                    if full
                    else "— | — |"
                )
            )
        md.append("")
    p = results.get("paced") or {}
    if p:
        md += [
            "## Paced run (IBKR's limits enforced by the simulator)",
            "",
            f"{p['rows']:,}-row `{p.get('mix', 'mixed')}` backlog over {p['accounts']} "
            "accounts; the simulator enforces 10 requests/s and one listing and one trades call "
            "per 5 s (429 and penalty box otherwise); the tool runs with its defaults "
            "(`--rate 10 --listing-interval 5`).",
            "",
            "| requests | elapsed s | achieved req/s | allowed req/s | 429s | lower bound s "
            "| exit | baseline requests | baseline listing calls | baseline would need s |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            f"| {p['requests']:,} | {p['elapsed_s']:.1f} | {p['achieved_rate']:.2f} | "
            f"{p['allowed_rate']:g} | {p['rate_limited']} | {p['lower_bound_s']:.0f} | {p['exit']} | "
            f"{p['baseline_requests']:,} | {p['baseline_listing_requests']:,} | "
            f"{p['baseline_s']:,.0f} |",
            "",
            "The baseline's time is computed from its request count: one request per row with a "
            "context, a submit's being a listing call, so at least max(requests / 10, "
            "(listing calls - 1) x 5 s).",
            "",
        ]
        if "by_endpoint" in p:
            calls = ", ".join(f"{k} {v:,}" for k, v in sorted(p["by_endpoint"].items()))
            md += [
                f"The tool's requests by endpoint: {calls}. Its listing calls alone take "
                f"{p['listing_chain_s']:.1f} s (one per 5.1 s; an account's first listing is "
                "the session warm-up and is asked again); meanwhile, budget no other request "
                "wants goes to status lookups of held-back cancels and modifies.",
                "",
            ]
    if results.get("generator"):
        md += [
            "## Backlog generation",
            "",
            "Timed afresh in this run (a new cache folder each time), medians over repeats; CPU "
            "seconds include the background SQLite writer process. `python bench/backlog.py "
            "--rows N --mix M --force`.",
            "",
            "| rows | mix | accounts | seconds | rows/s | CPU s | repeats |",
            "|---:|---|---:|---:|---:|---:|---:|",
        ]
        groups: dict[tuple[int, str], list[dict[str, Any]]] = defaultdict(list)
        for g in results["generator"]:
            groups[(g["rows"], g["mix"])].append(g)
        for (n, mix), gs in sorted(groups.items()):
            md.append(
                f"| {n:,} | {mix} | {gs[0]['accounts']} | {med([g['seconds'] for g in gs]):.2f} | "
                f"{fmt(med([g['rows_per_s'] for g in gs]))} | {med([g['cpu_s'] for g in gs]):.2f} | "
                f"{len(gs)} |"
            )
        md.append("")
    elif results.get("backlogs"):
        md += [
            "## Backlog generation",
            "",
            "| rows | mix | accounts | seconds | rows/s |",
            "|---:|---|---:|---:|---:|",
        ]
        for b in sorted(results["backlogs"], key=lambda b: (b["mix"], b["rows"])):
            md.append(
                f"| {b['rows']:,} | {b['mix']} | {b['accounts']} | {b['generate_s']:.2f} | "
                f"{fmt(b['rows_per_s'])} |"
            )
        md += [
            "",
            "Cached in `bench/.cache/` (a backlog's seconds are those of its first generation); "
            "`python bench/backlog.py --rows N --mix M` generates one again and times it.",
            "",
        ]
    md += ["## Commands", ""]
    md += [f"* {name}: `{cmd}`" for name, cmd in results.get("commands", {}).items()]
    md += [
        "* baseline: `python bench/baseline.py DB URL`; ceiling: "
        "`python bench/ceiling.py URL TARGETS --concurrency C`",
        "",
    ]
    notes = Path(__file__).with_name("NOTES.md")
    if notes.exists():
        md += [notes.read_text().strip(), ""]
    path = out / ("RESULTS-quick.md" if quick else "RESULTS.md")
    path.write_text("\n".join(md))
    return path
