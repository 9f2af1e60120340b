"""The simulator as a command: ``python -m ibkr_recover.simulator`` / ``ibkr-recover simulate``.

:func:`simulate` is the one definition of the command's options. The main CLI registers it as
is; ``python -m ibkr_recover.simulator`` builds an ``argparse`` parser from its signature and
numpydoc docstring (:func:`build_parser`), so the two can never disagree.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import re
import shutil
import signal
import sys
import tempfile
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import msgspec

from ._scenario import (
    Endpoint,
    Fault,
    Scenario,
    ScenarioError,
    demo_scenario,
    load_scenario,
    merge_switches,
)
from ._server import new_event_loop, start_simulator

__all__ = ["build_parser", "main", "simulate"]


def simulate(
    *,
    scenario: Path | None = None,
    port: int = 5000,
    host: str = "127.0.0.1",
    tls: bool = False,
    cert: Literal["valid", "expired", "wrong_host"] = "valid",
    ca_file: Path | None = None,
    latency_ms: float | None = None,
    warmup: bool | None = None,
    listing_cap: int | None = None,
    foreign_rows: int | None = None,
    pacing: bool | None = None,
    rate: float | None = None,
    listing_interval: float | None = None,
    trades_interval: float | None = None,
    penalty_s: float | None = None,
    session_lost_after: int | None = None,
    unauthenticated: bool | None = None,
    competing: bool | None = None,
    disconnected: bool | None = None,
    error_rate: float | None = None,
    error_status: int = 503,
    error_burst: int | None = None,
    error_endpoint: Endpoint = "all",
    fault: list[str] | None = None,
    seed: int | None = None,
) -> None:
    """Serve a simulated IBKR Client Portal gateway until SIGTERM or SIGINT.

    Prints ``listening on BASE_URL`` (and, with TLS, ``ca PATH``) on stdout once it accepts
    connections. Options left unset keep the scenario's own switches.

    Parameters
    ----------
    scenario : Path | None
        Scenario JSON file (docs/simulator.md); without it a small demo scenario is served.
    port : int
        Port to listen on (0 picks a free one).
    host : str
        Address to listen on; keep it a loopback address.
    tls : bool
        Serve HTTPS with a freshly minted certificate; its CA is written to CA_FILE.
    cert : str
        With TLS, the certificate to serve: valid, expired, or wrong_host (issued for another name).
    ca_file : Path | None
        Where to write the CA certificate (PEM) with TLS; default: a temporary file.
    latency_ms : float | None
        Delay every broker response by this many milliseconds.
    warmup : bool | None
        Answer the first listing and trades call per account with an empty list.
    listing_cap : int | None
        The most rows one listing returns (IBKR: 1000).
    foreign_rows : int | None
        Mix this many rows of every other account into each listing and trades answer.
    pacing : bool | None
        Enforce IBKR's pacing (10 requests/s, listing and trades 1 per 5 s, 429 and penalty box).
    rate : float | None
        Global pacing limit in requests per second (0: none); implies pacing.
    listing_interval : float | None
        Minimum seconds between two listing calls; implies pacing.
    trades_interval : float | None
        Minimum seconds between two trades calls; implies pacing.
    penalty_s : float | None
        Seconds in the penalty box after a pacing violation; implies pacing.
    session_lost_after : int | None
        Lose the session after this many broker requests (401 from then on).
    unauthenticated : bool | None
        Start unauthenticated: auth/status says so, everything else answers 401.
    competing : bool | None
        auth/status reports a competing session.
    disconnected : bool | None
        auth/status reports the gateway disconnected from the backend.
    error_rate : float | None
        Fraction of broker requests answered with ERROR_STATUS (seeded random draw).
    error_status : int
        HTTP status of the random errors of ERROR_RATE.
    error_burst : int | None
        Fail the first N requests (of ERROR_ENDPOINT) with 500, 502, 503 in turn, then succeed.
    error_endpoint : str
        Where ERROR_RATE and ERROR_BURST apply: auth, accounts, listing, trades, status or all.
    fault : list[str] | None
        A fault, as JSON ({"kind":"error","endpoint":"status","count":3}) or
        KIND[:ENDPOINT[:COUNT]]; repeatable.
    seed : int | None
        Seed of the random draws of probabilistic faults.

    Raises
    ------
    ScenarioError
        The scenario file or a fault does not decode.
    """
    update = _switch_update(dict(locals()))
    loaded = load_scenario(scenario) if scenario is not None else demo_scenario()
    switches = merge_switches(loaded.switches, update) if update else loaded.switches
    resolved = Scenario(loaded.accounts, loaded.selected_account, switches)
    workdir = Path(tempfile.mkdtemp(prefix="ibkr-sim-")) if tls and ca_file is None else None
    if workdir is not None:
        ca_file = workdir / "ca.pem"
    try:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            runner.run(_serve(resolved, host, port, tls, cert, ca_file))
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)


def _switch_update(options: dict[str, Any]) -> dict[str, Any]:
    """The switch update the command-line options ask for (unset options are left out)."""
    update: dict[str, Any] = {}
    for name in ("latency_ms", "listing_cap", "foreign_rows", "session_lost_after", "seed"):
        if options[name] is not None:
            update[name] = options[name]
    for name in ("unauthenticated", "competing", "disconnected"):
        if options[name] is not None:
            update[name] = options[name]
    if options["warmup"] is not None:
        update["warmup_empty"] = update["warmup_trades"] = options["warmup"]
    limits = {
        name: options[name]
        for name in ("rate", "listing_interval", "trades_interval", "penalty_s")
        if options[name] is not None
    }
    if options["pacing"] is False:
        update["pacing"] = None
    elif options["pacing"] or limits:
        update["pacing"] = limits
    faults: list[Fault] = []
    where = options["error_endpoint"]
    if options["error_burst"]:
        faults.append(Fault("error", where, options["error_burst"], status=[500, 502, 503]))
    if options["error_rate"]:
        rate, status = options["error_rate"], options["error_status"]
        faults.append(Fault("error", where, probability=rate, status=status))
    faults.extend(parse_fault(text) for text in options["fault"] or ())
    if faults:
        update["faults"] = msgspec.to_builtins(faults)
    return update


def parse_fault(text: str) -> Fault:
    """Decode one ``--fault``: a JSON object, or the short form ``KIND[:ENDPOINT[:COUNT]]``.

    Raises
    ------
    ScenarioError
        The text is neither form, or names an unknown kind or endpoint.
    """
    if text.lstrip().startswith("{"):
        data: Any = text.encode()
        try:
            return msgspec.json.decode(data, type=Fault)
        except msgspec.DecodeError as exc:
            raise ScenarioError(f"invalid fault {text!r}: {exc}") from exc
    parts = text.split(":")
    if len(parts) > 3:
        raise ScenarioError(f"invalid fault {text!r}: expected KIND[:ENDPOINT[:COUNT]]")
    raw: dict[str, Any] = {"kind": parts[0]}
    if len(parts) > 1 and parts[1]:
        raw["endpoint"] = parts[1]
    if len(parts) > 2:
        if not parts[2].isdigit():
            raise ScenarioError(f"invalid fault {text!r}: COUNT must be an integer")
        raw["count"] = int(parts[2])
    try:
        return msgspec.convert(raw, Fault)
    except msgspec.ValidationError as exc:
        raise ScenarioError(f"invalid fault {text!r}: {exc}") from exc


async def _serve(
    scenario: Scenario, host: str, port: int, tls: bool, cert: Any, ca_file: Path | None
) -> None:
    running = await start_simulator(
        scenario, host=host, port=port, tls=tls, cert=cert, ca_path=ca_file
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    lines = [f"listening on {running.base_url}"]
    if running.ca_path is not None:
        lines.append(f"ca {running.ca_path}")
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()
    try:
        await stop.wait()
    finally:
        await running.aclose()


# -- argparse from the signature ---------------------------------------------------------


def _param_help(fn: Callable[..., Any]) -> dict[str, str]:
    """The description of each parameter in a numpydoc ``Parameters`` section."""
    doc = inspect.getdoc(fn) or ""
    section = re.search(r"Parameters\n-+\n(.*?)(?:\n\n[A-Z][a-z]+\n-+\n|\Z)", doc, re.S)
    helps: dict[str, str] = {}
    if section is None:
        return helps
    name = ""
    for line in section.group(1).splitlines():
        if line and not line.startswith(" "):
            name = line.split(" : ")[0].strip()
            helps[name] = ""
        elif name:
            helps[name] = (helps[name] + " " + line.strip()).strip()
    return helps


def build_parser(
    fn: Callable[..., Any] = simulate, prog: str | None = None
) -> argparse.ArgumentParser:
    """An ``argparse`` parser whose options are ``fn``'s keyword parameters.

    ``bool`` parameters become ``--x/--no-x``, ``Literal`` ones get choices, ``list[str]`` ones
    are repeatable; the help text is the numpydoc description of each parameter.
    """
    summary = (inspect.getdoc(fn) or "").split("\n\n")[0]
    parser = argparse.ArgumentParser(prog=prog, description=summary)
    hints = typing.get_type_hints(fn)
    helps = _param_help(fn)
    for name, param in inspect.signature(fn).parameters.items():
        flag = "--" + name.replace("_", "-")
        hint = hints[name]
        args = typing.get_args(hint)
        optional = type(None) in args
        inner = next((a for a in args if a is not type(None)), hint) if optional else hint
        kwargs: dict[str, Any] = {"default": param.default, "help": helps.get(name, "")}
        if inner is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(inner) is Literal:
            kwargs["choices"] = list(typing.get_args(inner))
        elif typing.get_origin(inner) is list:
            kwargs["action"] = "append"
            kwargs["metavar"] = name.upper()
        elif isinstance(inner, type):
            kwargs["type"] = inner
            kwargs["metavar"] = name.upper()
        parser.add_argument(flag, **kwargs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``python -m ibkr_recover.simulator``; returns the exit status."""
    parser = build_parser(simulate, prog="python -m ibkr_recover.simulator")
    options = vars(parser.parse_args(argv))
    try:
        simulate(**options)
    except (ScenarioError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
