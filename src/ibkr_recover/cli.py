"""The ``ibkr-recover`` command line: parse, build the config, run, map to an exit code."""

from __future__ import annotations

import gc
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Annotated, Literal, TypeVar

import cyclopts
import msgspec
import trio
from cyclopts import Parameter, validators

from . import __version__, _crash
from ._config import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_BUSY_TIMEOUT,
    DEFAULT_CONCURRENCY,
    DEFAULT_MAX_CLEAR_AGE,
    DEFAULT_MIN_AGE,
    RunConfig,
)
from ._errors import RecoverError
from ._pending import pending_summary, render_pending
from ._pipeline import recover as run_recovery
from ._progress import ProgressBar
from ._report import Report

__all__ = ["app", "exit_code", "main"]

log = logging.getLogger("ibkr_recover")

EXIT_OK, EXIT_UNRESOLVED, EXIT_USAGE, EXIT_BROKER, EXIT_STORAGE = 0, 1, 2, 3, 4
EXIT_SIGINT, EXIT_SIGTERM = 130, 143

app = cyclopts.App(
    name="ibkr-recover",
    version=__version__,
    help=(
        "Recover crashed order-idempotency write-ahead records (pending_writer rows) of an "
        "Interactive Brokers order gateway by asking the Client Portal Web API what happened. "
        "Reads from the broker only; never places, cancels or modifies an order."
    ),
)


def _env(name: str, **kwargs: object) -> Parameter:
    return Parameter(env_var=f"IBKR_RECOVER_{name}", **kwargs)  # type: ignore[arg-type]


Seconds = Annotated[float, validators.Number(gte=0)]


class _Terminated(Exception):
    """SIGTERM arrived."""


T = TypeVar("T")


def _run_trio(main: Callable[[], Awaitable[T]]) -> T:
    """Run ``main`` under trio; SIGTERM cancels it like Ctrl-C does, and raises _Terminated.

    Whatever failed while the run was being stopped is kept as the ``__cause__`` of
    _Terminated, so that it is still reported.
    """

    async def runner() -> T:
        result: list[T] = []
        terminated = False
        try:
            async with trio.open_nursery() as nursery:

                async def watch() -> None:
                    nonlocal terminated
                    with trio.open_signal_receiver(signal.SIGTERM) as signals:
                        async for _ in signals:
                            terminated = True
                            nursery.cancel_scope.cancel()
                            return

                async def body() -> None:
                    result.append(await main())
                    nursery.cancel_scope.cancel()

                nursery.start_soon(watch)
                nursery.start_soon(body)
        except BaseException as exc:
            if terminated:
                raise _Terminated from exc
            raise
        if terminated:
            raise _Terminated
        return result[0]

    return trio.run(runner)


def tune_gc() -> None:
    """Fewer, cheaper cyclic garbage collections for this process (the console script only).

    A run allocates a few dozen tracked objects per row (requests, answers, outcomes) that
    reference counting frees, but at the default threshold they still trigger a young
    collection every few rows, and every older one walks the whole process (with httpx's
    reference cycles this was a tenth of a run's CPU; with httpcore a run of 8,000 rows spends
    ~0.05 s in 117 collections). Objects made before the run (modules, settings, clients) are
    frozen out of the collections, and the young generation is collected every 10,000
    allocations instead of 700: the garbage waiting in between stays a few megabytes.
    """
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    """The non-group exceptions inside nested exception groups (and what stopped a signal)."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
        return
    yield exc
    if isinstance(exc, _Terminated) and exc.__cause__ is not None:
        yield from _leaves(exc.__cause__)


def _fail(exc: BaseException) -> int:
    leaves = list(_leaves(exc))
    errors = [leaf for leaf in leaves if isinstance(leaf, RecoverError)]
    signalled = [leaf for leaf in leaves if isinstance(leaf, KeyboardInterrupt | _Terminated)]
    if not signalled:
        if not errors:
            raise exc
        print(f"ibkr-recover: error: {errors[0]}", file=sys.stderr)
        return errors[0].exit_code
    # A signal decides the exit code; an error met on the way out is still told.
    for error in errors:
        print(f"ibkr-recover: error: {error}", file=sys.stderr)
    if isinstance(signalled[0], KeyboardInterrupt):
        print("ibkr-recover: interrupted; only committed batches were written", file=sys.stderr)
        return EXIT_SIGINT
    print("ibkr-recover: terminated; only committed batches were written", file=sys.stderr)
    return EXIT_SIGTERM


def exit_code(report: Report) -> int:
    """0: nothing left unresolved; 1: some rows unresolved; 3: the broker stopped the run."""
    if report.fatal is not None:
        return EXIT_BROKER
    if report.unresolved:
        return EXIT_UNRESOLVED
    return EXIT_OK


def _setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("ibkr-recover: %(levelname)s: %(message)s"))
    root = logging.getLogger("ibkr_recover")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        return msgspec.json.encode(entry).decode()


def render_report(report: Report) -> str:
    """The short human summary of a run."""
    head = f"scanned {report.scanned:,} row(s) in {report.elapsed_s:.1f} s"
    if report.scanned:
        head += f" ({report.rows_per_s:,.0f} rows/s)"
    if report.dry_run:
        head += " — dry run, nothing was written"
    lines = [head]

    def detail(reasons: dict[str, int]) -> str:
        return "  (" + ", ".join(f"{k} {v:,}" for k, v in reasons.items()) + ")" if reasons else ""

    lines.append(f"  completed        {report.completed:>10,}")
    lines.append(f"  cleared_missing  {report.cleared_missing:>10,}")
    lines.append(f"  unresolved       {report.unresolved:>10,}{detail(report.unresolved_reasons)}")
    lines.append(f"  conflicts        {report.conflicts:>10,}")
    lines.append(f"  skipped          {report.skipped:>10,}{detail(report.skipped_reasons)}")
    if report.fatal:
        lines.append(f"stopped early ({report.fatal}): {report.fatal_message}")
    return "\n".join(lines)


@app.command
def recover(
    db: Path,
    *,
    base_url: Annotated[str, _env("BASE_URL")] = "https://localhost:5000/v1/api",
    concurrency: Annotated[
        int, _env("CONCURRENCY", validator=validators.Number(gte=1, lte=1024))
    ] = DEFAULT_CONCURRENCY,
    rate: Annotated[Seconds, _env("RATE")] = 10.0,
    listing_interval: Annotated[Seconds, _env("LISTING_INTERVAL")] = 5.0,
    batch_size: Annotated[
        int, _env("BATCH_SIZE", validator=validators.Number(gte=1, lte=100_000))
    ] = DEFAULT_BATCH_SIZE,
    min_age: Annotated[Seconds, _env("MIN_AGE")] = DEFAULT_MIN_AGE,
    max_clear_age: Annotated[Seconds, _env("MAX_CLEAR_AGE")] = DEFAULT_MAX_CLEAR_AGE,
    trust_empty_listing: Annotated[bool, _env("TRUST_EMPTY_LISTING", negative="")] = False,
    dry_run: Annotated[bool, _env("DRY_RUN", negative="")] = False,
    json: Annotated[bool, _env("JSON", negative="")] = False,
    outcomes: Annotated[Path | None, _env("OUTCOMES")] = None,
    backup: Annotated[Path | None, _env("BACKUP")] = None,
    cacert: Annotated[Path | None, _env("CACERT")] = None,
    insecure: Annotated[bool, _env("INSECURE", negative="")] = False,
    timeout: Annotated[Seconds, _env("TIMEOUT")] = 10.0,
    busy_timeout: Annotated[Seconds, _env("BUSY_TIMEOUT")] = DEFAULT_BUSY_TIMEOUT,
    quiet: Annotated[bool, _env("QUIET", negative="")] = False,
    log_level: Annotated[
        Literal["debug", "info", "warning", "error"], _env("LOG_LEVEL")
    ] = "warning",
    log_format: Annotated[Literal["text", "json"], _env("LOG_FORMAT")] = "text",
) -> int:
    """Recover the pending_writer rows of a gateway database.

    Each row is completed (the broker has the order), cleared (the broker authoritatively
    has none) or left unresolved with a reason. Exit codes: 0 nothing left unresolved,
    1 some rows unresolved, 2 usage/configuration/schema error, 3 broker unavailable,
    unauthenticated or rate limited, 4 storage error, 130/143 interrupted.

    Parameters
    ----------
    db
        The gateway's SQLite database. Opened read-write; never created.
    base_url
        Client Portal Web API base URL. Plain http:// only for loopback hosts.
    concurrency
        Lookup workers, each with its own HTTP connection.
    rate
        Global request budget in requests per second (IBKR allows 10); 0 = unlimited.
    listing_interval
        Minimum seconds between two calls of the order listing, and between two of the
        trades endpoint (IBKR allows one per 5 s); 0 = none.
    batch_size
        Rows per write transaction (also committed every 0.5 s).
    min_age
        Seconds: rows younger than this are skipped (the gateway may still be mid-call).
    max_clear_age
        Seconds: a submit row older than this is never cleared (default 5 days, inside
        IBKR's 7-day trades window).
    trust_empty_listing
        Treat an empty order listing as evidence of absence (IBKR returns spurious empty
        listings; off by default).
    dry_run
        Do the same lookups and report, write nothing.
    json
        Print the report as one JSON object on stdout.
    outcomes
        Write one JSON line per row (key, decision, reason, masked account) to this file
        (mode 0600).
    backup
        Before the first write, copy the database to this new file with SQLite's online
        backup API (mode 0600; an existing file is never overwritten). Recommended.
    cacert
        PEM file of the CA (or self-signed certificate) of the Client Portal Gateway.
    insecure
        Do not verify TLS certificates; accepted only for loopback hosts.
    timeout
        Seconds allowed for one HTTP request.
    busy_timeout
        Seconds to wait for the gateway's write lock, on each of a few attempts; a lock
        held longer than that ends the run with exit 4 (committed batches stay committed).
    quiet
        Print nothing on success (for cron); errors still go to stderr.
    log_level
        Log level of the messages on stderr.
    log_format
        Log line format on stderr: text, or json for log shippers.
    """
    _setup_logging(log_level, log_format)
    config = RunConfig(
        db=db,
        concurrency=concurrency,
        batch_size=batch_size,
        min_age=min_age,
        max_clear_age=max_clear_age,
        dry_run=dry_run,
        outcomes=outcomes,
        backup=backup,
        busy_timeout=busy_timeout,
    )
    show_progress = not (json or quiet) and sys.stderr.isatty()
    try:
        from .cpapi import CpapiBackend, CpapiSettings

        settings = CpapiSettings(
            base_url=base_url,
            cacert=cacert,
            insecure=insecure,
            timeout=timeout,
            rate=rate,
            listing_interval=listing_interval,
            trust_empty_listing=trust_empty_listing,
            concurrency=concurrency,
        )

        async def main() -> Report:
            async with CpapiBackend(settings) as backend:
                if not show_progress:
                    return await run_recovery(config, backend)
                with ProgressBar() as bar:
                    return await run_recovery(config, backend, progress=bar)

        report = _run_trio(main)
    except BaseException as exc:
        return _fail(exc)
    if json:
        sys.stdout.buffer.write(msgspec.json.encode(report) + b"\n")
    elif not quiet or exit_code(report) != EXIT_OK:
        print(render_report(report))
    sys.stdout.flush()
    _crash.checkpoint("after report")
    return exit_code(report)


@app.command
def pending(
    db: Path,
    *,
    json: Annotated[bool, _env("JSON", negative="")] = False,
    min_age: Annotated[Seconds, _env("MIN_AGE")] = DEFAULT_MIN_AGE,
    max_clear_age: Annotated[Seconds, _env("MAX_CLEAR_AGE")] = DEFAULT_MAX_CLEAR_AGE,
) -> int:
    """Show what is pending: rows by status, workflow and operation, pending rows by age.

    Reads only. Account ids are masked.

    Parameters
    ----------
    db
        The gateway's SQLite database (never created).
    json
        Print the summary as one JSON object on stdout.
    min_age
        Seconds: the age bucket of rows that recover would skip.
    max_clear_age
        Seconds: the age bucket past which recover never clears a submit.
    """
    try:
        summary = pending_summary(db, now=time.time(), min_age=min_age, max_clear_age=max_clear_age)
    except BaseException as exc:
        return _fail(exc)
    if json:
        sys.stdout.buffer.write(msgspec.json.encode(summary) + b"\n")
    else:
        print(render_pending(summary))
    return EXIT_OK


@app.command
def demo(
    *,
    rows: Annotated[int, Parameter(validator=validators.Number(gte=10, lte=100_000))] = 400,
    tls: Annotated[bool, Parameter(negative="--no-tls")] = True,
    folder: Path | None = None,
) -> int:
    """Run a complete recovery against the bundled simulator (the first thing to try).

    Generates a gateway database with a mixed backlog and the matching broker scenario in a
    temporary folder, serves it with the simulator over HTTPS on loopback, recovers it, and
    checks every row against the decision it must get.

    Parameters
    ----------
    rows
        Pending rows in the sample database.
    tls
        Serve the simulator over HTTPS and trust its CA with --cacert.
    folder
        Where to put the files (default: a new temporary folder).
    """
    from ._demo import run_demo

    try:
        report, mismatches, where = run_demo(rows=rows, tls=tls, folder=folder, say=print)
    except BaseException as exc:
        return _fail(exc)
    print(render_report(report))
    if mismatches:
        print(f"\n{len(mismatches)} row(s) did not get their expected decision:")
        for line in mismatches[:10]:
            print(f"  {line}")
        return EXIT_UNRESOLVED
    print(
        f"\nevery row got the decision it must get ({report.scanned:,} of {report.scanned:,});"
        " unresolved rows are uncertain on purpose (their reasons are above)."
    )
    print(f"look around: ibkr-recover pending {where / 'gateway.db'}")
    return EXIT_OK


# Loaded only when asked for, so the recovery commands never import the simulator.
app.command(
    "ibkr_recover.simulator._command:simulate",
    name="simulate",
    help="Serve a simulated IBKR Client Portal gateway on loopback (for trying things out).",
)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    tune_gc()
    result = app(argv, result_action="return_value")
    sys.exit(result if isinstance(result, int) else EXIT_OK)
