"""Separate processes for every contender: the simulator on one CPU, the measured one on the other.

:class:`Simulator` runs ``python -m ibkr_recover.simulator`` pinned to CPU 1 and talks to its
control endpoints (``/__sim/reset``, ``/__sim/config``, ``/__sim/stats``). :func:`measure` runs a
command pinned to CPU 0 and reports its wall time and CPU seconds from ``os.wait4`` and its peak
RSS from ``VmHWM`` in ``/proc/PID/status``, so that no contender shares a GIL (or a CPU) with the
server it talks to.

Why not ``ru_maxrss``: Linux carries a process's peak RSS across ``fork`` and ``exec``, so a
child of this (large, long-lived) harness reports at least the harness's own peak: a 65 MB tool
run reported 97 MB, and 177 MB after the harness had generated a 100k-row backlog. ``VmHWM``
belongs to the memory of the program after its ``exec``; it is sampled while the child runs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

__all__ = ["Measured", "Simulator", "measure", "pinned"]

_TASKSET = shutil.which("taskset")
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def pinned(cmd: list[str], cpu: int) -> list[str]:
    """``cmd`` pinned to ``cpu`` when ``taskset`` exists and the machine has that CPU."""
    if _TASKSET is None or cpu >= (os.cpu_count() or 1):
        return cmd
    return [_TASKSET, "-c", str(cpu), *cmd]


@dataclass(frozen=True)
class Measured:
    """One finished child process."""

    returncode: int
    stdout: str
    stderr: str
    wall_s: float
    cpu_s: float
    maxrss_mb: float

    def json(self) -> Any:
        return json.loads(self.stdout)


def measure(
    cmd: list[str], *, cpu: int = 0, env: dict[str, str] | None = None, timeout: float = 3600
) -> Measured:
    """Run ``cmd`` pinned to ``cpu``; its CPU time and peak RSS come from ``os.wait4``."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(pinned(cmd, cpu), stdout=out, stderr=err, env=env, text=True)
        killer = threading.Timer(timeout, proc.kill)
        killer.start()
        peak = _PeakRss(proc.pid)
        try:
            # Reaped here, not by Popen: wait4 is what reports the child's own resource usage.
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
            peak.stop()
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Measured(
            proc.returncode,
            out.read(),
            err.read(),
            wall,
            usage.ru_utime + usage.ru_stime,
            peak.kib / 1024 if peak.kib else usage.ru_maxrss / 1024,
        )


class _PeakRss:
    """Samples ``VmHWM`` (peak RSS since ``exec``, KiB) of a running process every 10 ms."""

    def __init__(self, pid: int) -> None:
        self.kib = 0
        self._path = f"/proc/{pid}/status"
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.is_set():
            try:
                with open(self._path) as status:
                    for line in status:
                        if line.startswith("VmHWM:"):
                            self.kib = max(self.kib, int(line.split()[1]))
            except (OSError, ValueError):
                return
            self._done.wait(0.01)

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


class Simulator:
    """``python -m ibkr_recover.simulator`` serving ``scenario`` on a free loopback port.

    Parameters
    ----------
    scenario
        The scenario JSON file.
    options
        More command-line options (``--pacing``, ``--latency-ms 5``, ...).
    cpu
        The CPU it is pinned to.
    tls
        Serve HTTPS; its CA certificate is :attr:`ca_file` (pass it to a client as ``--cacert``).
    """

    def __init__(self, scenario: Path, *options: str, cpu: int = 1, tls: bool = False) -> None:
        self.scenario = scenario
        self.options = options
        self.cpu = cpu
        self.base_url = ""
        self.root = ""
        self.ca_file: Path | None = None
        self._tls_dir = tempfile.TemporaryDirectory(prefix="bench-sim-") if tls else None
        self._opener = urllib.request.build_opener()
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> Self:
        cmd = [sys.executable, "-m", "ibkr_recover.simulator", "--scenario", str(self.scenario)]
        cmd += ["--port", "0", *self.options]
        if self._tls_dir is not None:
            self.ca_file = Path(self._tls_dir.name) / "ca.pem"
            cmd += ["--tls", "--ca-file", str(self.ca_file)]
        self._proc = subprocess.Popen(
            pinned(cmd, self.cpu), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline().strip()
        if not line.startswith("listening on "):
            self.__exit__(None, None, None)
            raise RuntimeError(f"the simulator did not start: {line!r}")
        self.base_url = line.removeprefix("listening on ")
        self.root = self.base_url.removesuffix("/v1/api")
        if self.ca_file is not None:
            trusting = ssl.create_default_context(cafile=str(self.ca_file))
            self._opener = urllib.request.build_opener(
                urllib.request.HTTPSHandler(context=trusting)
            )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._tls_dir is not None:
            self._tls_dir.cleanup()

    @property
    def trust(self) -> tuple[str, ...]:
        """The options that make a client trust this simulator (``--cacert CA`` over TLS)."""
        return ("--cacert", str(self.ca_file)) if self.ca_file is not None else ()

    def _call(self, method: str, name: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.root}/__sim/{name}", data=data, method=method)
        with self._opener.open(request, timeout=30) as answer:
            return json.loads(answer.read())

    def reset(self) -> None:
        """Clear the counters, the log, the warm-up state and the penalty box."""
        self._call("POST", "reset", {})

    def configure(self, **switches: Any) -> None:
        self._call("POST", "config", switches)

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = self._call("GET", "stats")
        return stats

    def cpu_s(self) -> float:
        """CPU seconds the simulator process has used so far."""
        assert self._proc is not None
        fields = Path(f"/proc/{self._proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK
