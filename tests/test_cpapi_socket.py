"""The CP-API backend over a real socket: TLS trust, body caps, deadlines (no virtual clock)."""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import httpcore
import pytest
import trio
import trustme

from ibkr_recover import Absent, BrokerError, BrokerFatal, Query, Unresolved
from ibkr_recover.cpapi import CpapiBackend, CpapiSettings
from ibkr_recover.cpapi._connection import _YIELD_EVERY, OneConnection, _Stream, _TlsStream

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


@pytest.fixture(params=["http", "https"])
def transport(
    request: pytest.FixtureRequest, server_tls: ssl.SSLContext, ca_file: Path
) -> tuple[ssl.SSLContext | None, str, dict[str, object]]:
    """Plain HTTP, or HTTPS trusted through ``cacert``: the server's context, the URL's scheme
    and host, and the settings that go with them."""
    if request.param == "http":
        return None, "http://127.0.0.1", {}
    return server_tls, "https://localhost", {"cacert": ca_file}


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


async def test_oversized_chunked_body_is_cut_short_over_a_socket(
    transport: tuple[ssl.SSLContext | None, str, dict[str, object]],
) -> None:
    tls, url, extra = transport

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

    # Over TLS the body arrives faster than it is read: the reads that find it waiting still
    # let the cut through.
    async with serve(endless, tls=tls) as port:
        settings = CpapiSettings(
            base_url=f"{url}:{port}/v1/api", max_body_bytes=200_000, timeout=5, **extra
        )
        async with CpapiBackend(settings) as backend:
            await backend.preflight()
            async with backend.resolver() as resolver:
                with trio.fail_after(4):
                    answer = await resolver.lookup(submit("k2"))
    assert isinstance(answer, Unresolved)
    assert answer.reason == "response_too_large"


async def test_slow_body_hits_the_total_deadline(
    transport: tuple[ssl.SSLContext | None, str, dict[str, object]],
) -> None:
    tls, url, extra = transport

    async def trickle(target: str, stream: trio.abc.Stream) -> None:
        if "/iserver/account/order/status/" not in target:
            await gateway_answers(target, stream)
            return
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n")
        for _ in range(100):
            await stream.send_all(b" ")
            await trio.sleep(0.1)

    async with serve(trickle, tls=tls) as port:
        settings = CpapiSettings(
            base_url=f"{url}:{port}/v1/api", timeout=0.5, retries=0, listing_interval=0, **extra
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


def _streams_seen(handler: Handler, seen: list[trio.abc.Stream]) -> Handler:
    async def counting(target: str, stream: trio.abc.Stream) -> None:
        if not any(stream is known for known in seen):
            seen.append(stream)
        await handler(target, stream)

    return counting


async def _get(connection: OneConnection, port: int, target: bytes) -> tuple[int, bytes]:
    url = httpcore.URL(scheme=b"http", host=b"127.0.0.1", port=port, target=target)
    request = httpcore.Request(b"GET", url, headers=[(b"Host", f"127.0.0.1:{port}".encode())])
    response = await connection.handle_async_request(request)
    try:
        return response.status, b"".join([chunk async for chunk in response.aiter_stream()])
    finally:
        await response.aclose()


def _plain(port: int, *, keepalive_expiry: float = 5.0) -> OneConnection:
    origin = httpcore.Origin(b"http", b"127.0.0.1", port)
    return OneConnection(origin, ssl.create_default_context(), keepalive_expiry=keepalive_expiry)


async def test_a_workers_lookups_share_one_keep_alive_connection(
    server_tls: ssl.SSLContext, ca_file: Path
) -> None:
    seen: list[trio.abc.Stream] = []
    async with serve(_streams_seen(gateway_answers, seen), tls=server_tls) as port:
        settings = CpapiSettings(
            base_url=f"https://localhost:{port}/v1/api", cacert=ca_file, rate=0, listing_interval=0
        )
        async with CpapiBackend(settings) as backend:
            await backend.preflight()
            shared = len(seen)
            async with backend.resolver() as resolver:
                for n in range(5):
                    query = Query(
                        key=f"c{n}", workflow="live", operation="cancel", account_id=ACCOUNT,
                        lookup_id=str(100 + n),
                    )  # fmt: skip
                    assert isinstance(await resolver.lookup(query), Unresolved | Absent)
    assert len(seen) == shared + 1


async def test_a_connection_the_server_closed_while_idle_is_replaced_before_sending() -> None:
    closed = trio.Event()

    async def once_then_close(target: str, stream: trio.abc.Stream) -> None:
        await gateway_answers(target, stream)
        await stream.aclose()
        closed.set()

    seen: list[trio.abc.Stream] = []
    async with serve(_streams_seen(once_then_close, seen)) as port:
        connection = _plain(port)
        try:
            assert await _get(connection, port, b"/v1/api/iserver/accounts") == (
                200, b'{"accounts": ["DU1111111"]}'
            )  # fmt: skip
            await closed.wait()
            # The server's close arrived while the connection sat idle: sending on it would
            # fail ("server disconnected"); a new connection is opened instead.
            status, _ = await _get(connection, port, b"/v1/api/iserver/accounts")
        finally:
            await connection.aclose()
    assert status == 200
    assert len(seen) == 2


async def test_connection_close_and_keep_alive_expiry_open_a_new_connection() -> None:
    async def closing(target: str, stream: trio.abc.Stream) -> None:
        if "close" in target:
            await stream.send_all(
                b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\n{}"
            )
            return
        await gateway_answers(target, stream)

    seen: list[trio.abc.Stream] = []
    async with serve(_streams_seen(closing, seen)) as port:
        connection = _plain(port, keepalive_expiry=0.2)
        try:
            await _get(connection, port, b"/v1/api/iserver/accounts")
            await _get(connection, port, b"/v1/api/iserver/accounts")
            assert len(seen) == 1
            assert await _get(connection, port, b"/v1/api/close") == (200, b"{}")
            await _get(connection, port, b"/v1/api/iserver/accounts")
            assert len(seen) == 2
            await trio.sleep(0.3)
            await _get(connection, port, b"/v1/api/iserver/accounts")
            assert len(seen) == 3
        finally:
            await connection.aclose()


async def test_a_request_cancelled_in_flight_leaves_the_next_one_a_fresh_connection() -> None:
    async def stalls(target: str, stream: trio.abc.Stream) -> None:
        if "stall" in target:
            await trio.sleep_forever()
        await gateway_answers(target, stream)

    seen: list[trio.abc.Stream] = []
    async with serve(_streams_seen(stalls, seen)) as port:
        connection = _plain(port)
        try:
            with trio.move_on_after(0.2) as scope:
                await _get(connection, port, b"/v1/api/stall")
            assert scope.cancelled_caught
            # The cancelled request's answer could still arrive on that connection, to be
            # read as the next request's: it was closed, and the next one goes on a new one.
            assert await _get(connection, port, b"/v1/api/iserver/accounts") == (
                200, b'{"accounts": ["DU1111111"]}'
            )  # fmt: skip
        finally:
            await connection.aclose()
    assert len(seen) == 2


async def test_one_request_at_a_time() -> None:
    async def slow(target: str, stream: trio.abc.Stream) -> None:
        await trio.sleep(0.2)
        await gateway_answers(target, stream)

    async with serve(slow) as port:
        connection = _plain(port)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_get, connection, port, b"/v1/api/iserver/accounts")
                await trio.sleep(0.05)
                with pytest.raises(httpcore.ConnectionNotAvailable):
                    await _get(connection, port, b"/v1/api/iserver/accounts")
        finally:
            await connection.aclose()


async def test_the_connections_stream_keeps_httpcores_timeouts_and_errors() -> None:
    async def silent(target: str, stream: trio.abc.Stream) -> None:
        await stream.aclose()

    async with serve(silent) as port:
        stream = _Stream(await trio.open_tcp_stream("127.0.0.1", port))
        try:
            # Without a timeout the caller's deadline bounds a read; with one, it is httpcore's.
            with pytest.raises(httpcore.ReadTimeout):
                await stream.read(100, timeout=0.1)
            await stream.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", timeout=1)
            assert await stream.read(100) == b""
            assert stream.get_extra_info("is_readable")
        finally:
            await stream.aclose()
        with pytest.raises(httpcore.WriteError):
            await stream.write(b"more")
        with pytest.raises(httpcore.ReadError):
            await stream.read(100)


@asynccontextmanager
async def _tls_pair(
    server_tls: ssl.SSLContext, ca_file: Path
) -> AsyncIterator[tuple[_TlsStream, trio.SSLStream[trio.SocketStream]]]:
    """The connection's TLS stream and the server's end of it, over a socket pair."""
    client_sock, server_sock = trio.socket.socketpair()
    server = trio.SSLStream(trio.SocketStream(server_sock), server_tls, server_side=True)
    context = ssl.create_default_context(cafile=str(ca_file))
    tls: list[_TlsStream] = []

    async def connect() -> None:
        tls.append(await _TlsStream.connect(trio.SocketStream(client_sock), context, "localhost"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(connect)
        nursery.start_soon(server.do_handshake)
    try:
        yield tls[0], server
    finally:
        await tls[0].aclose()
        await server.aclose()


async def test_the_tls_stream_keeps_httpcores_timeouts_and_errors(
    server_tls: ssl.SSLContext, ca_file: Path
) -> None:
    async with _tls_pair(server_tls, ca_file) as (stream, server):
        assert stream.get_extra_info("ssl_object").version() in ("TLSv1.2", "TLSv1.3")
        assert not stream.get_extra_info("is_readable")
        with pytest.raises(httpcore.ReadTimeout):
            await stream.read(100, timeout=0.1)
        await stream.write(b"GET / HTTP/1.1\r\n\r\n" * 1000, timeout=1)
        assert await server.receive_some(65536)
        await server.send_all(b"answer")
        assert await stream.read(100) == b"answer"
        # The server goes away without TLS's close_notify: the end of the stream, not an error.
        await server.transport_stream.aclose()
        assert stream.get_extra_info("is_readable")
        assert await stream.read(100) == b""
    with pytest.raises(httpcore.WriteError):
        await stream.write(b"more")
    with pytest.raises(httpcore.ReadError):
        await stream.read(100)


async def test_tls_reads_that_find_data_waiting_still_let_other_tasks_run(
    server_tls: ssl.SSLContext, ca_file: Path
) -> None:
    async with _tls_pair(server_tls, ca_file) as (stream, server):
        first: list[bytes] = []

        async def read_first() -> None:
            first.append(await stream.read(4))

        # The first read waits for the record; the rest of it is then read without waiting.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_first)
            await trio.sleep(0.05)
            await server.send_all(b"x" * 4 * (2 * _YIELD_EVERY + 1))
        assert first == [b"xxxx"]
        ran = trio.Event()

        async def other_task() -> None:
            ran.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(other_task)
            for _ in range(_YIELD_EVERY - 1):
                assert await stream.read(4) == b"xxxx"
                assert not ran.is_set()
            # The next read yields; trio may run this task again first, the other one by the
            # yield after that at the latest.
            for _ in range(_YIELD_EVERY + 1):
                assert await stream.read(4) == b"xxxx"
            assert ran.is_set()


async def test_a_failed_tls_handshake_is_a_connect_error_with_the_tls_cause(
    server_tls: ssl.SSLContext,
) -> None:
    client_sock, server_sock = trio.socket.socketpair()
    server = trio.SSLStream(trio.SocketStream(server_sock), server_tls, server_side=True)
    untrusting = ssl.create_default_context()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_handshake_quietly, server)
        with pytest.raises(httpcore.ConnectError) as raised:
            await _TlsStream.connect(trio.SocketStream(client_sock), untrusting, "localhost")
    assert isinstance(raised.value.__cause__, ssl.SSLCertVerificationError)
    assert client_sock.fileno() == -1  # handed over, and closed with the TLS socket
    await server.aclose()


async def _handshake_quietly(stream: trio.SSLStream[trio.SocketStream]) -> None:
    with pytest.raises(trio.BrokenResourceError):
        await stream.do_handshake()
