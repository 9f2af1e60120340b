"""Running the CLI with a file system that says no: size limits and permissions.

``RLIMIT_FSIZE`` (with ``SIGXFSZ`` ignored) makes every write past N bytes fail the way a full
disk does. Read-only files are read-only only to a process without ``CAP_DAC_OVERRIDE``: as
root, the child drops it (and ``CAP_DAC_READ_SEARCH``) from its bounding set before exec, so
the permission bits apply to it as to any user.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

_PR_CAPBSET_DROP = 24
_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH = 1, 2


def _drop_file_capabilities() -> None:
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def file_size_limit(limit: int) -> Callable[[], None]:
    """A ``preexec_fn``: writes past ``limit`` bytes of any file fail with EFBIG, as on a full disk."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def run_cli(
    *args: str, preexec: Callable[[], None] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``python -m ibkr_recover ARGS`` in a child, permission bits enforced even as root."""

    def setup() -> None:
        _drop_file_capabilities()
        if preexec is not None:
            preexec()

    return subprocess.run(
        [sys.executable, "-m", "ibkr_recover", *args],
        capture_output=True,
        text=True,
        preexec_fn=setup,
        timeout=timeout,
    )


def make_read_only(path: Path) -> int:
    """Drop write permission; returns the old mode for :func:`restore_mode`."""
    mode = path.stat().st_mode & 0o7777
    path.chmod(mode & ~0o222)
    return mode


def restore_mode(path: Path, mode: int) -> None:
    path.chmod(mode)
