"""The one translation of lower-layer errors (httpcore, ssl, trio, msgspec) into the package's.

A failed request becomes :class:`RequestFailed` (the row is unresolved with its ``reason``) or
:class:`~ibkr_recover.BrokerFatal` (the run stops: a TLS handshake that fails will fail for
every request). Messages are single lines fit for an operator: the real cause of a TLS
failure, which httpx hides two levels down its ``__cause__`` chain, is surfaced.
"""

from __future__ import annotations

import ssl
import unicodedata
from collections.abc import Iterator

import httpcore
import httpx
import msgspec
import trio

from .._errors import BrokerError, BrokerFatal
from .._mask import mask_accounts_in
from ._settings import CpapiSettings

__all__ = ["RequestFailed", "clip", "origin", "translate_error"]

_CONNECTION_ERRORS = (
    httpcore.NetworkError,
    httpcore.ProtocolError,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
    trio.BrokenResourceError,
    OSError,
)


class RequestFailed(BrokerError):
    """One request got no usable answer; ``reason`` is the unresolved reason of the row.

    ``retryable`` marks transient failures (timeout, connection, 5xx) worth another attempt.
    """

    def __init__(self, reason: str, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.retryable = retryable


def translate_error(exc: Exception, where: str, settings: CpapiSettings) -> BrokerError:
    """The one translation of lower-layer errors into the package's.

    TLS handshake failures stop the run (``tls``): every later request would fail the same
    way. The real cause of those sits two levels down httpx's ``__cause__`` chain and is
    surfaced in the message.
    """
    if isinstance(exc, msgspec.ValidationError):
        return RequestFailed("bad_schema", f"{where}: unexpected answer: {clip(str(exc))}")
    if isinstance(exc, msgspec.DecodeError | httpx.DecodingError):
        return RequestFailed("bad_json", f"{where}: the answer is not valid JSON: {clip(str(exc))}")
    where_to = origin(settings)
    tls = _tls_failure(exc)
    if tls is not None:
        return BrokerFatal("tls", f"TLS failure talking to {where_to}: {_describe_tls(tls)}")
    if isinstance(exc, trio.TooSlowError | httpcore.TimeoutException | httpx.TimeoutException):
        return RequestFailed(
            "timeout",
            f"{where}: no complete answer within {settings.timeout:g} s",
            retryable=True,
        )
    cause = _describe_cause(exc)
    if isinstance(exc, httpcore.ConnectError | httpx.ConnectError):
        return RequestFailed(
            "unavailable",
            f"cannot connect to the gateway at {where_to}: {cause} "
            "(is the Client Portal Gateway running, and is --base-url right?)",
            retryable=True,
        )
    if isinstance(exc, _CONNECTION_ERRORS):
        hint = ""
        if _hung_up_on_plain_http(exc, settings):
            hint = " (does the gateway serve HTTPS? try an https:// base URL)"
        return RequestFailed(
            "unavailable", f"{where}: the connection failed: {cause}{hint}", retryable=True
        )
    return RequestFailed("unavailable", f"{where}: {cause}")


def _hung_up_on_plain_http(exc: Exception, settings: CpapiSettings) -> bool:
    """A plain-HTTP request the server hung up on unanswered: what a TLS port does with it."""
    return (
        httpx.URL(settings.base_url).scheme == "http"
        and isinstance(exc, httpcore.RemoteProtocolError | httpx.RemoteProtocolError)
        and "without sending a response" in str(exc)
    )


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception, its causes and contexts, exceptions in its args and in its groups."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        todo.extend(e for e in (current.__cause__, current.__context__) if e is not None)
        todo.extend(a for a in current.args if isinstance(a, BaseException))
        if isinstance(current, BaseExceptionGroup):
            todo.extend(current.exceptions)


def _tls_failure(exc: Exception) -> ssl.SSLError | None:
    """The TLS error of a failed handshake; a TLS EOF mid-stream is a connection failure."""
    errors = [e for e in _chain(exc) if isinstance(e, ssl.SSLError)]
    for error in errors:
        if isinstance(error, ssl.SSLCertVerificationError):
            return error
    if isinstance(exc, httpcore.ConnectError | httpx.ConnectError):
        for error in errors:
            if not isinstance(error, ssl.SSLEOFError | ssl.SSLZeroReturnError):
                return error
    return None


def _describe_tls(error: ssl.SSLError) -> str:
    if isinstance(error, ssl.SSLCertVerificationError):
        detail = error.verify_message or error.reason or str(error)
        return (
            f"certificate verify failed: {detail} (pass --cacert with the gateway's CA "
            "certificate, or --insecure for a gateway on this machine)"
        )
    reason = error.reason.lower().replace("_", " ") if error.reason else str(error)
    hint = " (does the gateway serve plain HTTP? try an http:// base URL)"
    return f"TLS handshake failed: {reason}" + (hint if "wrong version" in reason else "")


def _describe_cause(exc: Exception) -> str:
    for error in _chain(exc):
        if isinstance(error, OSError) and error.strerror:
            return error.strerror
    for error in _chain(exc):
        text = str(error).strip()
        if text:
            return clip(text)
    return type(exc).__name__


def origin(settings: CpapiSettings) -> str:
    """The gateway's scheme, host and port for messages; credentials in the URL stay out."""
    url = httpx.URL(settings.base_url)
    return str(url.copy_with(raw_path=b"/", userinfo=b"")).rstrip("/")


def clip(text: str, limit: int = 200) -> str:
    """Untrusted text fit for one line of a message.

    Control characters out, account ids masked (IBKR's error texts name them), length capped.
    """
    cleaned = text[: limit * 2]
    # Printable text has no control characters (category C) to replace: the common case.
    if not cleaned.isprintable():
        cleaned = "".join(" " if unicodedata.category(ch).startswith("C") else ch for ch in cleaned)
    cleaned = mask_accounts_in(" ".join(cleaned.split()))
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"
