"""ibkr-recover: crash recovery of order-idempotency write-ahead records.

The engine is importable::

    import trio
    from ibkr_recover import MemoryBackend, RunConfig, recover

    report = trio.run(recover, RunConfig(db=path), MemoryBackend())
"""

from __future__ import annotations

from ._backend import Absent as Absent
from ._backend import Answer as Answer
from ._backend import Backend as Backend
from ._backend import BrokerOrder as BrokerOrder
from ._backend import Found as Found
from ._backend import Query as Query
from ._backend import Resolver as Resolver
from ._backend import Unresolved as Unresolved
from ._config import RunConfig as RunConfig
from ._decide import Outcome as Outcome
from ._decide import PendingRow as PendingRow
from ._domain import lifecycle_status as lifecycle_status
from ._errors import BrokerError as BrokerError
from ._errors import BrokerFatal as BrokerFatal
from ._errors import ConfigError as ConfigError
from ._errors import RecoverError as RecoverError
from ._errors import SchemaError as SchemaError
from ._errors import StorageError as StorageError
from ._memory import MemoryBackend as MemoryBackend
from ._pipeline import recover as recover
from ._report import Report as Report

__version__ = "0.1.0"

__all__ = [
    "Absent",
    "Answer",
    "Backend",
    "BrokerError",
    "BrokerFatal",
    "BrokerOrder",
    "ConfigError",
    "Found",
    "MemoryBackend",
    "Outcome",
    "PendingRow",
    "Query",
    "RecoverError",
    "Report",
    "Resolver",
    "RunConfig",
    "SchemaError",
    "StorageError",
    "Unresolved",
    "__version__",
    "lifecycle_status",
    "recover",
]
