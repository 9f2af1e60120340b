"""Validation of the CP-API backend's settings (URL scheme, TLS policy, ranges)."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest
import trustme

from ibkr_recover import ConfigError
from ibkr_recover.cpapi import DEFAULT_BASE_URL, CpapiSettings


def test_defaults_follow_ibkrs_limits() -> None:
    settings = CpapiSettings()
    assert settings.base_url == DEFAULT_BASE_URL == "https://localhost:5000/v1/api"
    assert (settings.rate, settings.listing_interval, settings.timeout) == (10.0, 5.0, 10.0)
    assert settings.trust_empty_listing is False
    assert settings.ssl_context.verify_mode == ssl.CERT_REQUIRED
    assert settings.ssl_context.check_hostname


def test_settings_are_frozen() -> None:
    settings = CpapiSettings()
    with pytest.raises(AttributeError):
        settings.rate = 50  # type: ignore[misc]


def test_trailing_slash_is_dropped() -> None:
    assert CpapiSettings(base_url="https://gw.example/v1/api/").base_url == (
        "https://gw.example/v1/api"
    )


@pytest.mark.parametrize(
    "url", ["http://localhost:5000/v1/api", "http://127.0.0.1:5000/v1/api", "http://[::1]:5000"]
)
def test_plain_http_is_accepted_for_loopback(url: str) -> None:
    assert CpapiSettings(base_url=url).base_url.startswith("http://")


@pytest.mark.parametrize(
    "url", ["http://gateway.internal:5000/v1/api", "http://10.0.0.5:5000", "http://0.0.0.0:5000"]
)
def test_plain_http_is_refused_for_other_hosts(url: str) -> None:
    with pytest.raises(ConfigError, match="loopback"):
        CpapiSettings(base_url=url)


@pytest.mark.parametrize(
    "url", ["ftp://localhost/v1/api", "localhost:5000", "file:///etc/passwd", "https://"]
)
def test_non_http_urls_are_refused(url: str) -> None:
    with pytest.raises(ConfigError, match="URL"):
        CpapiSettings(base_url=url)


def test_insecure_is_accepted_for_loopback_only() -> None:
    context = CpapiSettings(base_url="https://localhost:5000/v1/api", insecure=True).ssl_context
    assert context.verify_mode == ssl.CERT_NONE
    with pytest.raises(ConfigError, match="--insecure is only accepted for a loopback host"):
        CpapiSettings(base_url="https://api.ibkr.com/v1/api", insecure=True)


def test_cacert_and_insecure_exclude_each_other(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca))
    with pytest.raises(ConfigError, match="exclude"):
        CpapiSettings(cacert=ca, insecure=True)


def test_cacert_is_loaded_into_the_shared_context(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca))
    context = CpapiSettings(cacert=ca).ssl_context
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.cert_store_stats()["x509_ca"] >= 1


def test_missing_cacert_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        CpapiSettings(cacert=tmp_path / "nope.pem")


def test_garbage_cacert_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    with pytest.raises(ConfigError, match="does not load"):
        CpapiSettings(cacert=bad)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("timeout", 0),
        ("timeout", -1),
        ("timeout", float("inf")),
        ("rate", -1),
        ("rate", float("nan")),
        ("listing_interval", -5),
        ("retries", -1),
        ("retries", 1.5),
        ("concurrency", 0),
        ("max_body_bytes", 0),
        ("backoff_base", -0.1),
        ("backoff_cap", float("inf")),
        ("timeout", True),
        ("rate", "10"),
    ],
)
def test_out_of_range_values_are_refused(field: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=field):
        CpapiSettings(**{field: value})


def test_zero_rate_and_interval_mean_unlimited() -> None:
    settings = CpapiSettings(base_url="http://127.0.0.1:9/v1/api", rate=0, listing_interval=0)
    assert (settings.rate, settings.listing_interval) == (0, 0)
