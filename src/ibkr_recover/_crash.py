"""A test-only crash hook: ``IBKR_RECOVER_CRASH_AT=k`` SIGKILLs the process at the k-th checkpoint.

Checkpoints sit where a crash is most interesting: after a page is read, after a broker answer,
after ``BEGIN IMMEDIATE``, between the statements of a batch, after ``COMMIT``, and after the
report. With the variable unset, :func:`checkpoint` is a counter check and nothing else.

Just before the kill, one line naming the checkpoint goes to stderr (unbuffered), so a test
knows where the run died: ``ibkr-recover: crash hook: checkpoint 12 (after COMMIT)``.
"""

from __future__ import annotations

import os
import signal
import threading

__all__ = ["checkpoint", "enabled"]

_target = int(os.environ.get("IBKR_RECOVER_CRASH_AT", "0") or 0)
_count = 0
_lock = threading.Lock()


def enabled() -> bool:
    return _target > 0


def checkpoint(name: str) -> None:
    """Count one checkpoint; kill the process without cleanup when it is the chosen one."""
    global _count
    if _target <= 0:
        return
    with _lock:
        _count += 1
        hit = _count == _target
    if hit:
        os.write(2, f"ibkr-recover: crash hook: checkpoint {_target} ({name})\n".encode())
        os.kill(os.getpid(), signal.SIGKILL)
