"""Frozen settings of the CP-API backend, validated when built (SPEC §4, §6)."""

from __future__ import annotations

import ipaddress
import math
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import httpx

from .._errors import ConfigError

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_LISTING_INTERVAL",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_RATE",
    "DEFAULT_TIMEOUT",
    "CpapiSettings",
]

DEFAULT_BASE_URL: Final = "https://localhost:5000/v1/api"
DEFAULT_TIMEOUT: Final = 10.0
DEFAULT_RATE: Final = 10.0
DEFAULT_LISTING_INTERVAL: Final = 5.0
DEFAULT_CONCURRENCY: Final = 16
#: A full listing is 1000 rows of ~1-2 KB; the 7-day trades have no row cap (one row per
#: execution), so the cap leaves room for several thousand executions.
DEFAULT_MAX_BODY_BYTES: Final = 16 * 1024 * 1024
DEFAULT_RETRIES: Final = 3
DEFAULT_BACKOFF_BASE: Final = 0.5
DEFAULT_BACKOFF_CAP: Final = 8.0
DEFAULT_BREAKER_THRESHOLD: Final = 5

_LOOPBACK_NAMES: Final = frozenset({"localhost"})


@dataclass(frozen=True, kw_only=True)
class CpapiSettings:
    """How to reach IBKR's Client Portal Web API and how politely to use it.

    Parameters
    ----------
    base_url
        The API root, ``https://localhost:5000/v1/api`` for a local Client Portal Gateway.
        Plain ``http://`` is accepted only for a loopback host.
    cacert
        A PEM file of the CA (or the self-signed certificate) to trust for the gateway.
    insecure
        Do not verify the gateway's certificate; accepted only for a loopback host.
    timeout
        Seconds one request may take in total (connect, send, wait, read the whole body).
    rate
        Requests per second in total (IBKR's gateway allows 10); ``0`` means unlimited.
    listing_interval
        Minimum seconds between two calls of the listing endpoint, and between two calls of
        the trades endpoint (IBKR allows one per 5 s each); ``0`` means none.
    trust_empty_listing
        Accept an empty listing (after the warm-up re-ask) as complete.
    concurrency
        How many resolvers the engine opens; each holds one connection to the gateway.
    max_body_bytes
        Largest response body read before giving up with ``response_too_large``.
    retries
        How many times a timed-out, unreachable or 5xx request is retried.
    backoff_base, backoff_cap
        Retry ``n`` (from 0) waits a uniformly random time below
        ``min(backoff_cap, backoff_base * 2**n)`` seconds ("full jitter").
    breaker_threshold
        After this many requests in a row failed all their retries (unreachable, timeout,
        5xx), the run stops with ``unavailable``; ``0`` never stops.

    Raises
    ------
    ConfigError
        A value is out of range, the URL is not http(s), the TLS policy is violated
        (``insecure`` or ``http://`` for a non-loopback host), or ``cacert`` does not load.
    """

    base_url: str = DEFAULT_BASE_URL
    cacert: Path | None = None
    insecure: bool = False
    timeout: float = DEFAULT_TIMEOUT
    rate: float = DEFAULT_RATE
    listing_interval: float = DEFAULT_LISTING_INTERVAL
    trust_empty_listing: bool = False
    concurrency: int = DEFAULT_CONCURRENCY
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    retries: int = DEFAULT_RETRIES
    backoff_base: float = DEFAULT_BACKOFF_BASE
    backoff_cap: float = DEFAULT_BACKOFF_CAP
    breaker_threshold: int = DEFAULT_BREAKER_THRESHOLD
    _ssl_context: ssl.SSLContext = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        url = _parse_url(self.base_url)
        object.__setattr__(self, "base_url", str(url).rstrip("/"))
        _check_number("timeout", self.timeout, minimum=0.0, inclusive=False)
        _check_number("rate", self.rate, minimum=0.0)
        _check_number("listing_interval", self.listing_interval, minimum=0.0)
        _check_number("backoff_base", self.backoff_base, minimum=0.0)
        _check_number("backoff_cap", self.backoff_cap, minimum=0.0)
        _check_int("concurrency", self.concurrency, minimum=1)
        _check_int("max_body_bytes", self.max_body_bytes, minimum=1)
        _check_int("retries", self.retries, minimum=0)
        _check_int("breaker_threshold", self.breaker_threshold, minimum=0)
        if self.insecure and self.cacert is not None:
            raise ConfigError("--cacert and --insecure exclude each other: pick one")
        loopback = _is_loopback(url.host)
        if url.scheme == "http" and not loopback:
            raise ConfigError(
                f"plain http:// is only accepted for a loopback host, not {url.host!r}: "
                "use https://"
            )
        if self.insecure and not loopback:
            raise ConfigError(
                f"--insecure is only accepted for a loopback host, not {url.host!r}: "
                "pass --cacert with the gateway's CA instead"
            )
        object.__setattr__(self, "_ssl_context", _ssl_context(self.cacert, self.insecure))

    @property
    def ssl_context(self) -> ssl.SSLContext:
        """The one TLS context every HTTP client of the run shares (building one costs ~50 ms)."""
        return self._ssl_context


def _parse_url(text: str) -> httpx.URL:
    try:
        url = httpx.URL(text)
    except (httpx.InvalidURL, TypeError) as exc:
        raise ConfigError(f"invalid base URL {text!r}: {exc}") from exc
    if url.scheme not in ("http", "https"):
        raise ConfigError(f"the base URL must start with https:// or http://, not {text!r}")
    if not url.host:
        raise ConfigError(f"the base URL has no host: {text!r}")
    if url.query or url.fragment:
        raise ConfigError(f"the base URL must not carry a query or fragment: {text!r}")
    return url


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _ssl_context(cacert: Path | None, insecure: bool) -> ssl.SSLContext:
    if cacert is None:
        context = ssl.create_default_context()
        if insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context
    if not cacert.is_file():
        raise ConfigError(f"--cacert {str(cacert)!r}: no such file")
    try:
        return ssl.create_default_context(cafile=str(cacert))
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise ConfigError(
            f"--cacert {str(cacert)!r} does not load as a PEM certificate: {exc}"
        ) from exc


def _check_number(name: str, value: float, *, minimum: float, inclusive: bool = True) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be a number, not {value!r}")
    ok = value >= minimum if inclusive else value > minimum
    if not math.isfinite(value) or not ok:
        bound = f">= {minimum:g}" if inclusive else f"> {minimum:g}"
        raise ConfigError(f"{name} must be a finite number {bound}, not {value!r}")


def _check_int(name: str, value: int, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, not {value!r}")
