"""ibkr-recover: crash recovery of order-idempotency write-ahead records."""

from __future__ import annotations

__version__ = "0.1.0"
