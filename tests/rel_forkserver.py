"""Run the real ``ibkr-recover`` CLI many times, cheaply: one pre-imported process forks each run.

A crash loop needs hundreds of runs; importing trio, httpx and the package costs most of a
second per process, more than a small run itself. :class:`ForkServer` starts one Python process
that imports the CLI once and then forks a child per run. The child is a complete CLI process
(``ibkr_recover.cli.main(argv)``, its own pid, stdio redirected to files, the crash hook re-read
from its environment) that can be killed like any other; the server reaps it and reports how it
ended. Signals reach the child through the server, which only ever signals a child it has not
reaped yet, so a pid is never reused under us.

Protocol (one JSON object per line): the test sends ``{"argv", "env", "out", "err"}``, the server
answers ``{"pid"}`` once forked, then ``{"status"}`` (the exit code, or ``-signal``). While a child
runs, the test may send ``{"signal": N}``.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_SERVER = r"""
import importlib, json, os, select, signal, sys, traceback
import ibkr_recover.cli as cli
import httpcore, h11  # noqa: F401  (imported lazily by httpx; once here, not in every child)
import ibkr_recover.cpapi  # noqa: F401
from ibkr_recover import _crash

def child(request):
    out = os.open(request["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    err = os.open(request["err"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(out, 1)
    os.dup2(err, 2)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.environ.update(request["env"])
    importlib.reload(_crash)
    code = 1
    try:
        cli.main(request["argv"])
    except SystemExit as exc:
        code = 0 if exc.code is None else exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

def reply(obj):
    os.write(1, json.dumps(obj).encode() + b"\n")

buffer = b""

def read_line(timeout):
    # Unbuffered: a buffered reader could hold a second line that select() no longer sees.
    global buffer
    while b"\n" not in buffer:
        ready, _, _ = select.select([0], [], [], timeout)
        if not ready:
            return None
        chunk = os.read(0, 65536)
        if not chunk:
            return b""
        buffer += chunk
    line, buffer = buffer.split(b"\n", 1)
    return line

while True:
    line = read_line(None)
    if not line:
        break
    request = json.loads(line)
    if "argv" not in request:
        continue  # a signal for a child that is already gone
    pid = os.fork()
    if pid == 0:
        child(request)
    reply({"pid": pid})
    while True:
        command = read_line(0.002)
        if command == b"":
            os.kill(pid, signal.SIGKILL)
        elif command is not None and "signal" in json.loads(command):
            os.kill(pid, json.loads(command)["signal"])
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            reply({"status": os.waitstatus_to_exitcode(status)})
            break
"""


@dataclass
class Result:
    """How one run ended: ``returncode`` is negative for a signal (``-9`` for SIGKILL)."""

    returncode: int
    stdout: str
    stderr: str
    elapsed: float

    @property
    def killed(self) -> bool:
        return self.returncode == -signal.SIGKILL


class Child:
    """One run of the CLI, in flight."""

    def __init__(self, server: ForkServer, pid: int, out: Path, err: Path) -> None:
        self._server = server
        self.pid = pid
        self._out, self._err = out, err
        self._started = time.monotonic()
        self.result: Result | None = None

    def send_signal(self, signum: int) -> None:
        """Signal the child, unless it has already been reaped."""
        if self.result is None:
            self._server._send({"signal": int(signum)})

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def poll(self, timeout: float = 0.0) -> Result | None:
        """The result if the child has ended within ``timeout`` seconds, else ``None``."""
        if self.result is None:
            reply = self._server._receive(timeout)
            if reply is not None:
                self.result = Result(
                    int(reply["status"]),
                    self._out.read_text(),
                    self._err.read_text(),
                    time.monotonic() - self._started,
                )
        return self.result

    def finish(self) -> None:
        """Make sure the child is gone (for ``finally``): the server runs one child at a time."""
        if self.poll() is None:
            self.kill()
            self.poll(10.0)

    def wait(self, timeout: float = 60.0) -> Result:
        """Wait for the end; a child still running after ``timeout`` is killed and fails the test."""
        result = self.poll(timeout)
        if result is None:
            self.kill()
            self.poll(10.0)
            raise AssertionError(f"ibkr-recover still running after {timeout} s; killed")
        return result


class ForkServer:
    """A pre-imported process that forks one ``ibkr-recover`` child per run, one at a time."""

    def __init__(self, workdir: Path) -> None:
        self._workdir = workdir
        self._runs = 0
        # The children speak plain HTTP to the simulator, yet every run builds a verifying
        # SSL context; an empty trust store saves loading the system's CA bundle each time.
        empty = workdir / "empty-trust-store"
        empty.mkdir(exist_ok=True)
        (empty / "none.pem").touch()
        env = {**_clean_env(), "SSL_CERT_FILE": str(empty / "none.pem"), "SSL_CERT_DIR": str(empty)}
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
        )
        self._buffer = b""

    def close(self) -> None:
        assert self._proc.stdin is not None
        assert self._proc.stdout is not None
        self._proc.stdin.close()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc.stdout.close()

    def start(self, *argv: str, env: dict[str, str] | None = None) -> Child:
        """Fork a child running ``ibkr-recover ARGV`` with ``env`` added to its environment."""
        self._runs += 1
        out = self._workdir / f"run-{self._runs}.out"
        err = self._workdir / f"run-{self._runs}.err"
        # Created here: a child killed at once never gets to open them.
        out.write_bytes(b"")
        err.write_bytes(b"")
        self._send({"argv": list(argv), "env": env or {}, "out": str(out), "err": str(err)})
        reply = self._receive(30.0)
        assert reply is not None, "the fork server did not start a child"
        assert "pid" in reply, reply
        return Child(self, int(reply["pid"]), out, err)

    def run(self, *argv: str, env: dict[str, str] | None = None, timeout: float = 60.0) -> Result:
        return self.start(*argv, env=env).wait(timeout)

    def _send(self, obj: dict[str, Any]) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(obj).encode() + b"\n")
        self._proc.stdin.flush()

    def _receive(self, timeout: float) -> dict[str, Any] | None:
        # Unbuffered reads of our own: a buffered reader could hold a second line that select()
        # no longer sees.
        assert self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError(f"the fork server died (exit {self._proc.wait()})")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        reply: dict[str, Any] = json.loads(line)
        return reply


def _clean_env() -> dict[str, str]:
    # The server's own environment must not arm the crash hook of every child.
    return {k: v for k, v in os.environ.items() if k != "IBKR_RECOVER_CRASH_AT"}
