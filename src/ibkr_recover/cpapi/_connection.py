"""One worker's keep-alive HTTP/1.1 connection, with no connection pool around it.

A lookup worker sends one request at a time, always to the same gateway, so it needs one
connection and the means to replace it. httpcore's ``AsyncConnectionPool`` (even of one
connection) and its ``AsyncHTTPConnection`` wrapper do much more for every request: a request
queue, an event to wait for a connection, two passes over the pool, a lock held while a
connection is made, the response stream wrapped once more: about a quarter of the
instructions of a bare request on a 2-core machine. Here the request goes straight to httpcore's
``AsyncHTTP11Connection`` (h11 and its state); the connection is opened here (TCP, then TLS)
over a trio stream that adds no cancel scope per read and write (:class:`_Stream`).
"""

from __future__ import annotations

import ssl
from contextlib import AbstractContextManager, nullcontext
from typing import Final

import httpcore
import trio

__all__ = ["OneConnection"]

_ALPN: Final = ["http/1.1"]


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
            stream: trio.abc.Stream = await trio.open_tcp_stream(self._host, self._origin.port)
        except (OSError, trio.BrokenResourceError) as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        if self._tls is not None:
            stream = trio.SSLStream(
                stream, self._tls, server_hostname=self._host, https_compatible=True
            )
            try:
                await stream.do_handshake()
            except BaseException as exc:
                with trio.CancelScope(shield=True):
                    await stream.aclose()
                if isinstance(exc, trio.BrokenResourceError):
                    raise httpcore.ConnectError(str(exc)) from exc
                raise
        return httpcore.AsyncHTTP11Connection(
            self._origin, _Stream(stream), keepalive_expiry=self._keepalive_expiry
        )


class _Stream(httpcore.AsyncNetworkStream):
    """A trio stream for httpcore, with no cancel scope of its own around every read and write.

    httpcore's trio stream enters ``trio.fail_after`` for each read and write even without a
    timeout (about 10 µs each here, two per lookup); the caller's total deadline bounds them
    already. Errors are httpcore's, as there.
    """

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream
        socket_stream = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
        assert isinstance(socket_stream, trio.SocketStream)
        self._socket = socket_stream.socket

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


def _within(timeout: float | None) -> AbstractContextManager[object]:
    """``trio.fail_after(timeout)``, or nothing at all without a timeout."""
    return nullcontext() if timeout is None else trio.fail_after(timeout)
