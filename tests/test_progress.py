"""The progress bar: on stderr under a terminal, never in a pipe, with --json or --quiet."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ibkr_recover.simulator import run_in_thread
from simtools import FAST, generated


def run_with_tty_stderr(args: list[str]) -> tuple[int, str, str]:
    """Run the CLI with stderr on a pseudo-terminal and stdout on a pipe."""
    controller, terminal = os.openpty()
    env = {**os.environ, "COLUMNS": "160", "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ibkr_recover", *args],
        stdout=subprocess.PIPE,
        stderr=terminal,
        env=env,
    )
    os.close(terminal)
    chunks: list[bytes] = []
    while True:
        try:
            data = os.read(controller, 65536)
        except OSError:  # EIO once the child closed its end
            break
        if not data:
            break
        chunks.append(data)
    stdout, _ = proc.communicate(timeout=60)
    os.close(controller)
    return proc.returncode, stdout.decode(), b"".join(chunks).decode(errors="replace")


@pytest.fixture
def slow_run(tmp_path: Path):  # type: ignore[no-untyped-def]
    db, scenario, _ = generated(tmp_path, 300, accounts=2, mix="per_order", seed=2)
    with run_in_thread(scenario, latency_ms=8) as sim:
        yield [
            "recover",
            str(db),
            "--base-url",
            sim.base_url,
            *FAST,
            "--concurrency",
            "2",
            "--dry-run",
        ]


def test_progress_bar_appears_on_a_terminal(slow_run: list[str]) -> None:
    code, stdout, stderr = run_with_tty_stderr(slow_run)
    assert code in (0, 1)
    assert "recovering" in stderr
    assert "/300" in stderr
    assert "rows/s" in stderr
    assert "scanned 300 row(s)" in stdout


@pytest.mark.parametrize("flag", ["--json", "--quiet"])
def test_no_progress_bar_with_json_or_quiet(slow_run: list[str], flag: str) -> None:
    _, _, stderr = run_with_tty_stderr([*slow_run, flag])
    assert "recovering" not in stderr


def test_no_progress_bar_in_a_pipe(slow_run: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ibkr_recover", *slow_run],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode in (0, 1)
    assert "recovering" not in result.stderr
    assert "scanned 300 row(s)" in result.stdout
