"""Masking of account ids for human output, logs and the outcomes file (``DU***567``)."""

from __future__ import annotations

__all__ = ["mask_account"]


def mask_account(account_id: str) -> str:
    """Keep the first two and last three characters of an account id; hide the rest."""
    text = account_id.strip()
    if len(text) <= 6:
        return "***"
    return f"{text[:2]}***{text[-3:]}"
