"""A simulated IBKR Client Portal gateway, and the scenario generator that feeds it.

The simulator is a real HTTP(S) server on loopback speaking the endpoints the recovery tool
uses, with IBKR's shapes and quirks, driven by a scenario (see ``docs/simulator.md``)::

    with run_in_thread(scenario, latency_ms=20) as sim:
        run_the_tool(base_url=sim.base_url)
        assert sim.stats().writes == 0

The generator writes a gateway database, the matching scenario, and the decisions SPEC §3
expects for every row.
"""

from __future__ import annotations

from ._broker import LoggedRequest as LoggedRequest
from ._broker import Stats as Stats
from ._command import simulate as simulate
from ._generate import MIXES as MIXES
from ._generate import Expected as Expected
from ._generate import Mix as Mix
from ._generate import Report as Report
from ._generate import generate as generate
from ._oracle import Decision as Decision
from ._scenario import Account as Account
from ._scenario import Endpoint as Endpoint
from ._scenario import Fault as Fault
from ._scenario import FaultKind as FaultKind
from ._scenario import Order as Order
from ._scenario import Pacing as Pacing
from ._scenario import Scenario as Scenario
from ._scenario import ScenarioError as ScenarioError
from ._scenario import Switches as Switches
from ._scenario import Trade as Trade
from ._scenario import demo_scenario as demo_scenario
from ._scenario import dump_scenario as dump_scenario
from ._scenario import load_scenario as load_scenario
from ._scenario import merge_switches as merge_switches
from ._server import Running as Running
from ._server import start_simulator as start_simulator
from ._thread import SimulatorHandle as SimulatorHandle
from ._thread import run_in_thread as run_in_thread
from ._tls import CertKind as CertKind

__all__ = [
    "Account",
    "CertKind",
    "Decision",
    "Endpoint",
    "Expected",
    "Fault",
    "FaultKind",
    "LoggedRequest",
    "MIXES",
    "Mix",
    "Order",
    "Pacing",
    "Report",
    "Running",
    "Scenario",
    "ScenarioError",
    "SimulatorHandle",
    "Stats",
    "Switches",
    "Trade",
    "demo_scenario",
    "dump_scenario",
    "generate",
    "load_scenario",
    "merge_switches",
    "run_in_thread",
    "simulate",
    "start_simulator",
]
