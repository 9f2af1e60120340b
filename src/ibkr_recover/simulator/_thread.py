"""The simulator on its own thread and event loop, for tests and benchmarks in one process.

The client under test runs on trio (or anything else) in the calling thread and reaches the
simulator over a real socket; the handle's methods hop onto the simulator's loop, so the
session state is only ever touched from one thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from ._broker import LoggedRequest, Stats
from ._scenario import Scenario, Switches, demo_scenario, load_scenario, merge_switches
from ._server import Running, new_event_loop, start_simulator
from ._tls import CertKind

__all__ = ["SimulatorHandle", "run_in_thread"]

T = TypeVar("T")

_TIMEOUT = 30.0


class SimulatorHandle:
    """A running simulator, seen from another thread.

    Attributes
    ----------
    base_url
        ``http://127.0.0.1:PORT/v1/api`` (``https`` with TLS): what the client is given.
    root_url
        ``http://127.0.0.1:PORT``: the control endpoints live under ``/__sim/``.
    port
        The bound port.
    ca_path
        The CA certificate (PEM) to trust, when serving TLS; else ``None``.
    """

    def __init__(self, running: Running, loop: asyncio.AbstractEventLoop) -> None:
        self._running = running
        self._loop = loop
        self.base_url = running.base_url
        self.root_url = running.base_url.removesuffix("/v1/api")
        self.port = running.port
        self.ca_path = running.ca_path

    def _call(self, fn: Callable[[], T]) -> T:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

        self._loop.call_soon_threadsafe(run)
        return future.result(_TIMEOUT)

    def requests(self) -> list[LoggedRequest]:
        """The request log, oldest first (broker traffic only; control calls are not in it)."""
        return self._call(self._running.broker.requests)

    def stats(self) -> Stats:
        """The counters since the last reset (requests, per endpoint and status, 429s...)."""
        return self._call(self._running.broker.stats)

    def configure(self, update: dict[str, Any] | None = None, **switches: Any) -> Switches:
        """Merge switches into the running session, as ``POST /__sim/config`` does.

        Parameters
        ----------
        update
            A JSON-like mapping, merged first.
        **switches
            More switches by name (``latency_ms=50``, ``pacing={"rate": 5}``...).

        Raises
        ------
        ScenarioError
            The result does not validate; nothing changes.
        """
        merged = {**(update or {}), **switches}
        return self._call(lambda: self._running.broker.configure(merged))

    def reset(self, *, switches: bool = False) -> None:
        """Clear the log, counters, warm-up state and penalty box, as ``POST /__sim/reset``.

        Parameters
        ----------
        switches
            Also restore the scenario's own switches.
        """
        self._call(lambda: self._running.broker.reset(switches=switches))


def _resolve(scenario: Scenario | Path | str | None, switches: dict[str, Any]) -> Scenario:
    if scenario is None:
        resolved = demo_scenario()
    elif isinstance(scenario, Scenario):
        resolved = scenario
    else:
        resolved = load_scenario(Path(scenario))
    if switches:
        merged = merge_switches(resolved.switches, switches)
        resolved = Scenario(resolved.accounts, resolved.selected_account, merged)
    return resolved


@contextmanager
def run_in_thread(
    scenario: Scenario | Path | str | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    tls: bool = False,
    cert: CertKind = "valid",
    **switches: Any,
) -> Iterator[SimulatorHandle]:
    """Serve a scenario on a background thread for the duration of the ``with`` block.

    Parameters
    ----------
    scenario
        A :class:`Scenario`, a path to a scenario JSON file, or ``None`` for the demo.
    host, port
        Where to listen; port 0 (the default) picks a free port.
    tls
        Serve HTTPS; the CA to trust is written to a temporary file, ``handle.ca_path``.
    cert
        With TLS, which certificate to serve: ``valid``, ``expired`` or ``wrong_host``.
    **switches
        Switches merged over the scenario's (``latency_ms=20``, ``warmup_empty=False``...).

    Yields
    ------
    SimulatorHandle
        The running simulator.

    Examples
    --------
    >>> with run_in_thread(warmup_empty=False) as sim:  # doctest: +SKIP
    ...     httpx.get(sim.base_url + "/iserver/auth/status").json()["authenticated"]
    True
    """
    resolved = _resolve(scenario, switches)
    workdir = Path(tempfile.mkdtemp(prefix="ibkr-sim-")) if tls else None
    ca_path = workdir / "ca.pem" if workdir is not None else None
    loop = new_event_loop()
    started: concurrent.futures.Future[Running] = concurrent.futures.Future()
    stop = asyncio.Event()

    async def serve() -> None:
        try:
            running = await start_simulator(
                resolved, host=host, port=port, tls=tls, cert=cert, ca_path=ca_path
            )
        except BaseException as exc:
            started.set_exception(exc)
            return
        started.set_result(running)
        await stop.wait()
        await running.aclose()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    try:
        running = started.result(_TIMEOUT)
        yield SimulatorHandle(running, loop)
    finally:
        if thread.is_alive():
            loop.call_soon_threadsafe(stop.set)
        thread.join(_TIMEOUT)
        loop.close()
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
