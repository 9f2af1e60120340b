"""The package's exceptions, each mapped to one exit code.

::

    RecoverError                 exit 1
    ├── ConfigError              exit 2   bad option, bad URL, TLS policy
    ├── SchemaError              exit 2   the database is not a gateway database
    ├── StorageError             exit 4   locked past the busy timeout, I/O error, corrupt file
    └── BrokerError              exit 3   broker unavailable, unauthenticated, rate limited
        └── BrokerFatal                   a condition that stops every lookup of the run

Lower-layer errors (``sqlite3``, ``httpx``, ``msgspec``) are translated into these at exactly
one place per boundary, always chained with ``raise ... from exc``.
"""

from __future__ import annotations

__all__ = [
    "BrokerError",
    "BrokerFatal",
    "ConfigError",
    "RecoverError",
    "SchemaError",
    "StorageError",
]


class RecoverError(Exception):
    """Root of every error this package raises on purpose."""

    exit_code: int = 1


class ConfigError(RecoverError):
    """A usage or configuration problem: nothing was read from the broker, nothing written."""

    exit_code = 2


class SchemaError(RecoverError):
    """The database lacks the table or columns of the gateway's schema."""

    exit_code = 2


class StorageError(RecoverError):
    """SQLite failed: locked past the busy timeout, disk I/O error, corrupt or read-only file."""

    exit_code = 4


class BrokerError(RecoverError):
    """The broker could not be used: unreachable, unauthenticated, rate limited, TLS failure."""

    exit_code = 3


class BrokerFatal(BrokerError):
    """A broker condition that ends every lookup of the run at once.

    ``reason`` is the machine-readable reason given to every row left unresolved by it
    (``auth``, ``rate_limited``, ``unavailable``, ``tls``).
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
