"""Masking of account ids for human output, logs and the outcomes file (``DU***567``)."""

from __future__ import annotations

import re
from typing import Final

__all__ = ["mask_account", "mask_accounts_in"]

#: What an IBKR account id looks like (``U1234567``, ``DU1234567``, ``F1234567``, ...). Not
#: anchored on the left, so that a prefix glued to it (``acct_DU1234567``) hides nothing.
_ACCOUNT_LIKE: Final = re.compile(r"[A-Z]{1,3}[0-9]{5,}")


def mask_account(account_id: str) -> str:
    """Keep the first two and last three characters of an account id; hide the rest.

    Characters that could steer a terminal or forge a log line (controls, line breaks) are
    shown as ``?``: an account id comes from the database or the broker, both untrusted.
    """
    text = "".join(ch if ch.isprintable() else "?" for ch in account_id.strip())
    if len(text) <= 6:
        return "***"
    return f"{text[:2]}***{text[-3:]}"


def mask_accounts_in(text: str) -> str:
    """``text`` (a broker's error message, say) with every account-id-shaped word masked."""
    return _ACCOUNT_LIKE.sub(lambda match: mask_account(match.group()), text)
