"""Frozen run settings and their defaults (SPEC §6)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_CONCURRENCY",
    "DEFAULT_FLUSH_INTERVAL",
    "DEFAULT_MAX_CLEAR_AGE",
    "DEFAULT_MIN_AGE",
    "DEFAULT_PAGE_SIZE",
    "RunConfig",
]

DEFAULT_CONCURRENCY: Final = 16
DEFAULT_BATCH_SIZE: Final = 1000
DEFAULT_FLUSH_INTERVAL: Final = 0.5
DEFAULT_MIN_AGE: Final = 60.0
DEFAULT_MAX_CLEAR_AGE: Final = 5 * 86400.0
DEFAULT_PAGE_SIZE: Final = 1000
DEFAULT_BUSY_TIMEOUT: Final = 5.0


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """How one recovery run behaves, independent of the broker backend."""

    db: Path
    concurrency: int = DEFAULT_CONCURRENCY
    batch_size: int = DEFAULT_BATCH_SIZE
    flush_interval: float = DEFAULT_FLUSH_INTERVAL
    page_size: int = DEFAULT_PAGE_SIZE
    min_age: float = DEFAULT_MIN_AGE
    max_clear_age: float = DEFAULT_MAX_CLEAR_AGE
    dry_run: bool = False
    outcomes: Path | None = None
    backup: Path | None = None
    busy_timeout: float = DEFAULT_BUSY_TIMEOUT
    clock: Callable[[], float] = time.time
