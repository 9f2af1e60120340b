"""``ibkr-recover demo``: a complete recovery against the bundled simulator, in seconds.

It generates a gateway database with a mixed backlog and the broker scenario that goes with
it, serves the scenario with the simulator over HTTPS on loopback, runs a real recovery with
the simulator's CA as ``--cacert``, and checks every row against the expected decision.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import msgspec

from ._config import RunConfig
from ._pipeline import recover
from ._report import Report
from .cpapi import CpapiBackend, CpapiSettings

__all__ = ["run_demo"]


class _Line(msgspec.Struct):
    key: str
    decision: str
    reason: str


def _mismatches(outcomes: Path, expected: Mapping[str, tuple[str, str]]) -> list[str]:
    decoder = msgspec.json.Decoder(_Line)
    seen: dict[str, tuple[str, str]] = {}
    for raw in outcomes.read_bytes().splitlines():
        line = decoder.decode(raw)
        seen[line.key] = (line.decision, line.reason)
    problems = [
        f"{key}: expected {want}, got {seen.get(key)}"
        for key, want in expected.items()
        if seen.get(key) != want
    ]
    return problems


def run_demo(
    *, rows: int, tls: bool, folder: Path | None, say: Callable[[str], None]
) -> tuple[Report, list[str], Path]:
    """Run the demo; return the report, the rows that missed their expectation, the folder."""
    import trio

    from .simulator import run_in_thread
    from .simulator._generate import generate

    where = folder or Path(tempfile.mkdtemp(prefix="ibkr-recover-demo-"))
    where.mkdir(parents=True, exist_ok=True)
    db, scenario = where / "gateway.db", where / "scenario.json"
    expected = generate(
        db, scenario, rows=rows, accounts=4, mix="mixed", expected_path=where / "expected.json"
    )
    say(f"demo folder: {where}")
    say(f"  gateway.db      a gateway database with {expected.pending:,} pending_writer rows")
    say("  scenario.json   what the simulated IBKR gateway knows about those orders")
    say("  expected.json   the decision every row must get")
    outcomes = where / "outcomes.jsonl"
    with run_in_thread(scenario, tls=tls) as sim:
        cacert = None
        if sim.ca_path is not None:
            cacert = where / "ca.pem"
            shutil.copy(sim.ca_path, cacert)
        say(f"simulator: {sim.base_url}" + (f" (its CA: {cacert})" if cacert else ""))
        command = f"ibkr-recover recover {db} --base-url {sim.base_url}"
        if cacert:
            command += f" --cacert {cacert}"
        say(f"\n$ {command} --rate 0 --listing-interval 0 --outcomes {outcomes}")
        settings = CpapiSettings(
            base_url=sim.base_url, cacert=cacert, rate=0, listing_interval=0, concurrency=8
        )
        config = RunConfig(db=db, concurrency=8, outcomes=outcomes)

        async def main() -> Report:
            async with CpapiBackend(settings) as backend:
                return await recover(config, backend)

        report = trio.run(main)
    wanted = {
        key: (d.decision, d.reason)
        for key, d in expected.decisions.items()
        if d.decision != "untouched"
    }
    return report, _mismatches(outcomes, wanted), where
