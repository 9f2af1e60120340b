"""TLS and where the tool may connect (matrix D1): it fails closed, before any lookup or write.

A certificate that does not verify, the wrong protocol on the port, or a redirect stops the
run at its first request with exit 3 and a message naming the cause; ``--insecure`` and plain
``http://`` are refused for hosts other than loopback with exit 2 before any socket is opened.
"""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from conftest import context, make_db
from ibkr_recover.simulator import Account, Order, Scenario, run_in_thread
from simtools import FAST, table

PAPER = "DU2718281"
CLI = (sys.executable, "-m", "ibkr_recover")


def scenario() -> Scenario:
    return Scenario([Account(PAPER, orders=[Order(1001, "k-open", "Submitted")])], PAPER)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return make_db(
        tmp_path / "gateway.db",
        [
            {"key": "k-open", "payload": context("paper", "submit", PAPER)},
            {"key": "k-absent", "payload": context("paper", "submit", PAPER)},
        ],
    )


def recover(db: Path, base_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    outcomes = db.parent / "outcomes.jsonl"
    return subprocess.run(
        [
            *CLI,
            "recover",
            str(db),
            "--base-url",
            base_url,
            *FAST,
            "--outcomes",
            str(outcomes),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def assert_failed_closed(db: Path, pristine: dict[str, Any]) -> None:
    assert table(db) == pristine
    outcomes = db.parent / "outcomes.jsonl"
    assert not outcomes.exists() or outcomes.read_text() == "", "a row was decided"


@pytest.fixture
def other_ca(tmp_path: Path) -> Path:
    path = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(path))
    return path


@pytest.mark.parametrize(
    ("cert", "trust", "host", "cause"),
    [
        ("valid", "system", "127.0.0.1", "unable to get local issuer certificate"),
        ("valid", "other-ca", "127.0.0.1", "unable to get local issuer certificate"),
        ("expired", "simulator-ca", "127.0.0.1", "certificate has expired"),
        ("wrong_host", "simulator-ca", "127.0.0.1", "IP address mismatch"),
        ("wrong_host", "simulator-ca", "localhost", "Hostname mismatch"),
    ],
    ids=["self-signed", "wrong-ca", "expired", "wrong-ip", "wrong-name"],
)
def test_certificate_that_does_not_verify_fails_closed_naming_the_cause(
    db: Path, other_ca: Path, cert: Any, trust: str, host: str, cause: str
) -> None:
    pristine = table(db)
    with run_in_thread(scenario(), tls=True, cert=cert) as sim:
        args = {
            "system": [],
            "other-ca": ["--cacert", str(other_ca)],
            "simulator-ca": ["--cacert", str(sim.ca_path)],
        }[trust]
        url = f"https://{host}:{sim.port}/v1/api"
        done = recover(db, url, *args)
        stats = sim.stats()
    assert done.returncode == 3, done.stderr
    assert f"TLS failure talking to https://{host}:{sim.port}" in done.stderr
    assert f"certificate verify failed: {cause}" in done.stderr
    assert stats.requests == 0, "a request went through an unverified connection"
    assert_failed_closed(db, pristine)


def test_plain_http_to_the_https_port_fails_closed(db: Path) -> None:
    pristine = table(db)
    with run_in_thread(scenario(), tls=True) as sim:
        done = recover(db, sim.base_url.replace("https://", "http://"))
        stats = sim.stats()
    assert done.returncode == 3, done.stderr
    assert "Server disconnected without sending a response" in done.stderr
    assert "does the gateway serve HTTPS? try an https:// base URL" in done.stderr
    assert stats.requests == 0
    assert_failed_closed(db, pristine)


def test_https_to_a_plain_http_port_fails_closed(db: Path) -> None:
    pristine = table(db)
    with run_in_thread(scenario()) as sim:
        done = recover(db, sim.base_url.replace("http://", "https://"))
        stats = sim.stats()
    assert done.returncode == 3, done.stderr
    assert "TLS handshake failed: wrong version number" in done.stderr
    assert "does the gateway serve plain HTTP?" in done.stderr
    assert stats.requests == 0
    assert_failed_closed(db, pristine)


@pytest.fixture
def redirector() -> Iterator[tuple[str, list[str], list[str]]]:
    """A server that answers every request with a redirect to ``target`` (set by the test)."""
    target: list[str] = []
    seen: list[str] = []

    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            self.send_response(302)
            self.send_header("Location", target[0] + self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_POST = do_GET

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", target, seen
    finally:
        server.shutdown()
        server.server_close()


def test_redirect_to_another_host_is_never_followed(
    db: Path, redirector: tuple[str, list[str], list[str]]
) -> None:
    origin, target, seen = redirector
    pristine = table(db)
    with run_in_thread(scenario()) as elsewhere:
        # "localhost" is another host name than the base URL's 127.0.0.1, as far as a URL goes.
        target.append(f"http://localhost:{elsewhere.port}")
        done = recover(db, f"{origin}/v1/api")
        reached = elsewhere.stats().requests
    assert done.returncode == 3, done.stderr
    assert "unexpected redirect (HTTP 302)" in done.stderr
    assert f"http://localhost:{elsewhere.port}/v1/api/iserver/auth/status" in done.stderr
    assert "check --base-url" in done.stderr
    assert seen == ["/v1/api/iserver/auth/status"]
    assert reached == 0, "the redirect was followed"
    assert_failed_closed(db, pristine)


#: Runs the CLI with every way of opening a connection replaced by an exit with status 99.
NO_NETWORK = """
import os, socket, sys

def refuse(*args, **kwargs):
    sys.stderr.write("ibkr-recover test: a connection was attempted\\n")
    sys.stderr.flush()
    os._exit(99)

socket.socket.connect = socket.socket.connect_ex = refuse
socket.getaddrinfo = socket.create_connection = refuse
from ibkr_recover.cli import main
main(sys.argv[1:])
"""


@pytest.mark.parametrize(
    ("args", "env", "code"),
    [
        (["--base-url", "https://gateway.example.com:5000/v1/api", "--insecure"], {}, 2),
        (["--base-url", "https://10.0.0.5:5000/v1/api", "--insecure"], {}, 2),
        (["--base-url", "http://gateway.example.com:5000/v1/api"], {}, 2),
        (["--base-url", "http://192.0.2.10:5000/v1/api"], {}, 2),
        (["--base-url", "http://localhost.example.com:5000/v1/api"], {}, 2),
        (["--base-url", "http://127.0.0.1.nip.io:5000/v1/api"], {}, 2),
        (["--base-url", "https://gateway.example.com/v1/api"], {"IBKR_RECOVER_INSECURE": "1"}, 2),
        ([], {"IBKR_RECOVER_BASE_URL": "http://gateway.example.com:5000/v1/api"}, 2),
        # The control: a loopback URL is accepted, so the guard sees the connection attempt.
        (["--base-url", "http://127.0.0.1:9/v1/api"], {}, 99),
    ],
    ids=[
        "insecure-remote-name",
        "insecure-remote-ip",
        "http-remote-name",
        "http-remote-ip",
        "http-localhost-lookalike",
        "http-loopback-ip-lookalike",
        "insecure-from-env",
        "http-from-env",
        "control-loopback-connects",
    ],
)
def test_insecure_and_plain_http_are_refused_for_remote_hosts_before_any_connection(
    db: Path, args: list[str], env: dict[str, str], code: int
) -> None:
    pristine = table(db)
    backup = db.parent / "backup.db"
    done = subprocess.run(
        [sys.executable, "-c", NO_NETWORK, "recover", str(db), "--backup", str(backup), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**_environ(), **env},
    )
    assert done.returncode == code, done.stderr
    if code == 2:
        assert "is only accepted for a loopback host" in done.stderr
        assert "a connection was attempted" not in done.stderr
        assert not backup.exists()
    assert table(db) == pristine


def _environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("IBKR_RECOVER_")}
