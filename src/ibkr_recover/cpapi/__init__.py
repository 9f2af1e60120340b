"""IBKR's Client Portal Web API as the broker backend (SPEC §4).

::

    from ibkr_recover.cpapi import CpapiBackend, CpapiSettings

    async with CpapiBackend(CpapiSettings(base_url="https://localhost:5000/v1/api")) as backend:
        await backend.preflight()
        async with backend.resolver() as resolver:
            answer = await resolver.lookup(query)
"""

from __future__ import annotations

from ._backend import CpapiBackend as CpapiBackend
from ._backend import CpapiResolver as CpapiResolver
from ._settings import DEFAULT_BASE_URL as DEFAULT_BASE_URL
from ._settings import CpapiSettings as CpapiSettings

__all__ = ["DEFAULT_BASE_URL", "CpapiBackend", "CpapiResolver", "CpapiSettings"]
