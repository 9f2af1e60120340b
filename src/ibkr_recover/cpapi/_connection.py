"""One worker's keep-alive HTTP/1.1 connection, with no connection pool around it.

A lookup worker sends one request at a time, always to the same gateway, so it needs one
connection and the means to replace it. httpcore's ``AsyncConnectionPool`` (even of one
connection) and its ``AsyncHTTPConnection`` wrapper do much more for every request: a request
queue, an event to wait for a connection, two passes over the pool, a lock held while a
connection is made, the response stream wrapped once more: about a quarter of the
instructions of a bare request on a 2-core machine. Here the request goes straight to httpcore's
``AsyncHTTP11Connection`` (h11 and its state); the connection is opened here (TCP, then TLS)
over a stream that adds no cancel scope per read and write: trio's socket stream for plain
HTTP (:class:`_Stream`), the standard library's TLS socket for HTTPS (:class:`_TlsStream`).
"""

from __future__ import annotations

import select
import socket
import ssl
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Final, TypeVar

import httpcore
import trio

__all__ = ["OneConnection"]

_ALPN: Final = ["http/1.1"]
#: Reads and writes in a row that found the socket ready before one yields to the scheduler.
_YIELD_EVERY: Final = 16

_T = TypeVar("_T")


class OneConnection:
    """A keep-alive connection to ``origin``, opened on first use and reopened when needed.

    A new connection is opened when there is none yet, when the last one closed (an error or a
    cancelled request closes it), when it sat idle past ``keepalive_expiry``, or when the server
    closed it while it was idle. One request at a time: a second, concurrent request fails with
    ``httpcore.ConnectionNotAvailable``.

    Parameters
    ----------
    origin
        Scheme, host and port of every request.
    ssl_context
        The TLS context, for ``https``; shared by every connection of the run.
    keepalive_expiry
        Seconds an idle connection is kept.
    """

    def __init__(
        self,
        origin: httpcore.Origin,
        ssl_context: ssl.SSLContext,
        *,
        keepalive_expiry: float,
    ) -> None:
        self._origin = origin
        self._host = origin.host.decode("ascii")
        self._tls = ssl_context if origin.scheme == b"https" else None
        if self._tls is not None:
            self._tls.set_alpn_protocols(_ALPN)
        self._keepalive_expiry = keepalive_expiry
        self._connection: httpcore.AsyncHTTP11Connection | None = None

    async def handle_async_request(self, request: httpcore.Request) -> httpcore.Response:
        """Send ``request``; the response's body is read from the connection as it is streamed.

        Cancellation: safe; a request cancelled in flight closes its connection (httpcore's).
        """
        connection = self._connection
        if connection is not None and (connection.is_closed() or connection.has_expired()):
            await self.aclose()
            connection = None
        if connection is None:
            connection = self._connection = await self._open()
        return await connection.handle_async_request(request)

    async def aclose(self) -> None:
        """Close the connection, if one is open."""
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.aclose()

    async def _open(self) -> httpcore.AsyncHTTP11Connection:
        # Bounded by the caller's deadline: no timeout of its own, as with every other phase.
        try:
            stream = await trio.open_tcp_stream(self._host, self._origin.port)
        except (OSError, trio.BrokenResourceError) as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        network: httpcore.AsyncNetworkStream
        if self._tls is None:
            network = _Stream(stream)
        else:
            network = await _TlsStream.connect(stream, self._tls, self._host)
        return httpcore.AsyncHTTP11Connection(
            self._origin, network, keepalive_expiry=self._keepalive_expiry
        )


class _Stream(httpcore.AsyncNetworkStream):
    """A trio stream for httpcore, with no cancel scope of its own around every read and write.

    httpcore's trio stream enters ``trio.fail_after`` for each read and write even without a
    timeout (about 10 µs each here, two per lookup); the caller's total deadline bounds them
    already. Errors are httpcore's, as there.
    """

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._socket = stream.socket

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            with _within(timeout):
                data = await self._stream.receive_some(max_bytes)
        except trio.TooSlowError as exc:
            raise httpcore.ReadTimeout(str(exc)) from exc
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise httpcore.ReadError(str(exc)) from exc
        return data if isinstance(data, bytes) else bytes(data)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        try:
            with _within(timeout):
                await self._stream.send_all(buffer)
        except trio.TooSlowError as exc:
            raise httpcore.WriteTimeout(str(exc)) from exc
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise httpcore.WriteError(str(exc)) from exc

    async def aclose(self) -> None:
        await self._stream.aclose()

    def get_extra_info(self, info: str) -> object:
        if info == "is_readable":
            return self._socket.is_readable()
        if info == "socket":
            return self._socket
        return None


class _TlsStream(httpcore.AsyncNetworkStream):
    """TLS straight over the socket, through the standard library's TLS socket.

    trio's ``SSLStream`` runs TLS over memory buffers, behind locks, with several awaits on the
    socket stream for every read and write: over HTTPS that was a sixth of a lookup's
    instructions here (1,285k -> 1,068k a row). This calls OpenSSL on the non-blocking socket
    itself and waits only when it says so. Verification is the context's, as there
    (certificate chain, and the host name given as ``server_hostname``).

    A read or write that did not have to wait yields to the scheduler every
    :data:`_YIELD_EVERY` calls, so that a body arriving faster than it is read still lets the
    request's deadline, its cancellation and the other tasks through.
    """

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self._sock = sock
        self._unyielded = 0

    @classmethod
    async def connect(
        cls, stream: trio.SocketStream, context: ssl.SSLContext, host: str
    ) -> _TlsStream:
        """Take over the socket of ``stream`` and do the TLS handshake on it.

        Raises ``httpcore.ConnectError`` from the ``ssl.SSLError`` when the handshake fails.
        """
        raw = socket.socket(fileno=stream.socket.detach())
        raw.setblocking(False)
        try:
            sock = context.wrap_socket(raw, server_hostname=host, do_handshake_on_connect=False)
        except BaseException:
            raw.close()
            raise
        tls = cls(sock)
        try:
            await tls._io(sock.do_handshake)
        except BaseException as exc:
            sock.close()
            if isinstance(exc, OSError):
                raise httpcore.ConnectError(str(exc)) from exc
            raise
        return tls

    async def _io(self, call: Callable[..., _T], *args: object) -> _T:
        """``call(*args)`` on the TLS socket, waiting on the socket as often as OpenSSL asks."""
        sock = self._sock
        waited = False
        while True:
            try:
                result = call(*args)
            except ssl.SSLWantReadError:
                waited = True
                await trio.lowlevel.wait_readable(sock)
            except ssl.SSLWantWriteError:
                waited = True
                await trio.lowlevel.wait_writable(sock)
            else:
                break
        if waited:
            self._unyielded = 0
        else:
            self._unyielded += 1
            if self._unyielded >= _YIELD_EVERY:
                self._unyielded = 0
                await trio.lowlevel.checkpoint()
            else:
                await trio.lowlevel.checkpoint_if_cancelled()
        return result

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            with _within(timeout):
                return await self._io(self._sock.recv, max_bytes)
        except trio.TooSlowError as exc:
            raise httpcore.ReadTimeout(str(exc)) from exc
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
            # Closed, with or without TLS's close_notify: the end of the stream, as for trio's
            # SSLStream(https_compatible=True); HTTP's own framing tells a cut answer.
            return b""
        except OSError as exc:
            raise httpcore.ReadError(str(exc)) from exc

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        view = memoryview(buffer)
        try:
            with _within(timeout):
                while view:
                    view = view[await self._io(self._sock.send, view) :]
        except trio.TooSlowError as exc:
            raise httpcore.WriteTimeout(str(exc)) from exc
        except OSError as exc:
            raise httpcore.WriteError(str(exc)) from exc

    async def aclose(self) -> None:
        # No close_notify: HTTP/1.1 answers carry their own length (httpcore's own sync TLS
        # stream closes the same way).
        self._sock.close()

    def get_extra_info(self, info: str) -> object:
        if info == "is_readable":
            if self._sock.fileno() < 0:
                return True
            poll = select.poll()
            poll.register(self._sock, select.POLLIN)
            return self._sock.pending() > 0 or bool(poll.poll(0))
        if info in ("ssl_object", "socket"):
            return self._sock
        return None


def _within(timeout: float | None) -> AbstractContextManager[object]:
    """``trio.fail_after(timeout)``, or nothing at all without a timeout."""
    return nullcontext() if timeout is None else trio.fail_after(timeout)
