"""The CP-API backend over a real socket: TLS trust, body caps, deadlines (no virtual clock)."""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import pytest
import trio
import trustme

from ibkr_recover import Absent, BrokerError, BrokerFatal, Query, Unresolved
from ibkr_recover.cpapi import CpapiBackend, CpapiSettings

ACCOUNT = "DU1111111"
Handler = Callable[[str, trio.abc.Stream], Awaitable[None]]


def _response(body: bytes, status: str = "200 OK") -> bytes:
    head = f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    return head.encode() + body


def _json(value: object) -> bytes:
    return _response(json.dumps(value).encode())


async def gateway_answers(target: str, stream: trio.abc.Stream) -> None:
    """A well-behaved gateway with one order; ``target`` is the request line's target."""
    path = target.split("?", 1)[0].removeprefix("/v1/api")
    if path == "/iserver/auth/status":
        reply = _json({"authenticated": True, "connected": True, "competing": False})
    elif path == "/iserver/accounts":
        reply = _json({"accounts": [ACCOUNT]})
    elif path == "/iserver/account/orders":
        order = {"acct": ACCOUNT, "orderId": 1, "status": "Filled", "order_ref": "k1"}
        reply = _json({"orders": [order], "snapshot": True})
    elif path == "/iserver/account/trades":
        reply = _json([{"account": ACCOUNT, "order_ref": "k1", "order_id": 1}])
    else:
        reply = _response(b'{"error":"Order 5 is not found"}', "503 Service Unavailable")
    await stream.send_all(reply)


@asynccontextmanager
async def serve(handler: Handler, *, tls: ssl.SSLContext | None = None) -> AsyncIterator[int]:
    """A keep-alive HTTP/1.1 server on loopback; yields its port."""

    async def connection(stream: trio.abc.Stream) -> None:
        buffer = b""
        try:
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    buffer += data
                head, buffer = buffer.split(b"\r\n\r\n", 1)
                target = head.split(b"\r\n", 1)[0].split(b" ")[1].decode()
                await handler(target, stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError):
            return

    async with trio.open_nursery() as nursery:
        if tls is None:
            listeners = await nursery.start(
                partial(trio.serve_tcp, connection, 0, host="127.0.0.1")
            )
            port = listeners[0].socket.getsockname()[1]
        else:
            listeners = await nursery.start(
                partial(trio.serve_ssl_over_tcp, connection, 0, tls, host="127.0.0.1")
            )
            port = listeners[0].transport_listener.socket.getsockname()[1]
        yield port
        nursery.cancel_scope.cancel()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    return context


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "gateway-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


def submit(key: str) -> Query:
    return Query(key=key, workflow="paper", operation="submit", account_id=ACCOUNT, lookup_id=key)


async def test_untrusted_certificate_fails_preflight_naming_the_cause(
    server_tls: ssl.SSLContext,
) -> None:
    async with serve(gateway_answers, tls=server_tls) as port:
        settings = CpapiSettings(base_url=f"https://localhost:{port}/v1/api", retries=0)
        async with CpapiBackend(settings) as backend:
            with pytest.raises(BrokerFatal) as raised:
                await backend.preflight()
    assert raised.value.reason == "tls"
    assert raised.value.exit_code == 3
    assert "certificate verify failed: unable to get local issuer certificate" in str(raised.value)


async def test_cacert_trusts_the_gateway(server_tls: ssl.SSLContext, ca_file: Path) -> None:
    async with serve(gateway_answers, tls=server_tls) as port:
        settings = CpapiSettings(
            base_url=f"https://localhost:{port}/v1/api", cacert=ca_file, listing_interval=0
        )
        async with CpapiBackend(settings) as backend:
            await backend.preflight()
            async with backend.resolver() as resolver:
                assert await resolver.lookup(submit("k2")) == Absent()


async def test_hostname_mismatch_is_a_tls_failure(ca: trustme.CA, ca_file: Path) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("gateway.other").configure_cert(context)
    async with serve(gateway_answers, tls=context) as port:
        settings = CpapiSettings(base_url=f"https://localhost:{port}/v1/api", cacert=ca_file)
        async with CpapiBackend(settings) as backend:
            with pytest.raises(BrokerFatal, match="certificate verify failed") as raised:
                await backend.preflight()
    assert raised.value.reason == "tls"


async def test_insecure_skips_verification_on_loopback(server_tls: ssl.SSLContext) -> None:
    async with serve(gateway_answers, tls=server_tls) as port:
        settings = CpapiSettings(base_url=f"https://127.0.0.1:{port}/v1/api", insecure=True)
        async with CpapiBackend(settings) as backend:
            await backend.preflight()
            assert backend.accounts == {ACCOUNT}


async def test_https_to_a_plain_http_gateway_says_so() -> None:
    async def plain_http(stream: trio.abc.Stream) -> None:
        # A plain HTTP server answers the TLS hello as a malformed request.
        await stream.receive_some(65536)
        await stream.send_all(_response(b"bad request", "400 Bad Request"))

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, plain_http, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        settings = CpapiSettings(base_url=f"https://127.0.0.1:{port}/v1/api", retries=0)
        async with CpapiBackend(settings) as backend:
            with pytest.raises(BrokerError, match="TLS handshake failed: wrong version number"):
                await backend.preflight()
        nursery.cancel_scope.cancel()


async def test_nothing_listening_is_a_clear_broker_error() -> None:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = CpapiSettings(base_url=f"http://127.0.0.1:{port}/v1/api", retries=1, backoff_base=0)
    async with CpapiBackend(settings) as backend:
        with pytest.raises(BrokerError, match="cannot connect to the gateway") as raised:
            await backend.preflight()
    assert "refused" in str(raised.value).lower()


async def test_oversized_chunked_body_is_cut_short_over_a_socket() -> None:
    async def endless(target: str, stream: trio.abc.Stream) -> None:
        if "/iserver/account/orders" not in target:
            await gateway_answers(target, stream)
            return
        await stream.send_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        chunk = b'{"acct":"DU1111111","orderId":1,"status":"Filled"},' * 100
        frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
        await stream.send_all(b'4\r\n{"or\r\n')
        for _ in range(10_000):
            await stream.send_all(frame)

    async with serve(endless) as port:
        settings = CpapiSettings(
            base_url=f"http://127.0.0.1:{port}/v1/api", max_body_bytes=200_000, timeout=5
        )
        async with CpapiBackend(settings) as backend:
            await backend.preflight()
            async with backend.resolver() as resolver:
                with trio.fail_after(4):
                    answer = await resolver.lookup(submit("k2"))
    assert isinstance(answer, Unresolved)
    assert answer.reason == "response_too_large"


async def test_slow_body_hits_the_total_deadline() -> None:
    async def trickle(target: str, stream: trio.abc.Stream) -> None:
        if "/iserver/account/order/status/" not in target:
            await gateway_answers(target, stream)
            return
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n")
        for _ in range(100):
            await stream.send_all(b" ")
            await trio.sleep(0.1)

    async with serve(trickle) as port:
        settings = CpapiSettings(
            base_url=f"http://127.0.0.1:{port}/v1/api", timeout=0.5, retries=0, listing_interval=0
        )
        async with CpapiBackend(settings) as backend:
            await backend.preflight()
            async with backend.resolver() as resolver:
                query = Query(
                    key="c", workflow="live", operation="cancel", account_id=ACCOUNT, lookup_id="7"
                )
                start = trio.current_time()
                answer = await resolver.lookup(query)
                elapsed = trio.current_time() - start
    assert isinstance(answer, Unresolved)
    assert answer.reason == "timeout"
    assert elapsed < 2.0
