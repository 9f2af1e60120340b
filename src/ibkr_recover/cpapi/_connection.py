"""One worker's keep-alive HTTP/1.1 connection, with no connection pool around it.

A lookup worker sends one request at a time, always to the same gateway, so it needs one
connection and the means to replace it. httpcore's ``AsyncConnectionPool`` (even of one
connection) and its ``AsyncHTTPConnection`` wrapper do much more for every request: a request
queue, an event to wait for a connection, two passes over the pool, a lock held while a
connection is made, the response stream wrapped once more. On a 2-core machine that was a
quarter of the client's instructions per lookup. Here the request goes straight to httpcore's
``AsyncHTTP11Connection``; only the opening of a connection (TCP, then TLS) is done here.
"""

from __future__ import annotations

import ssl
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
    network_backend
        How sockets are opened (httpcore's trio backend unless given).
    """

    def __init__(
        self,
        origin: httpcore.Origin,
        ssl_context: ssl.SSLContext,
        *,
        keepalive_expiry: float,
        network_backend: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self._origin = origin
        self._host = origin.host.decode("ascii")
        self._tls = ssl_context if origin.scheme == b"https" else None
        if self._tls is not None:
            self._tls.set_alpn_protocols(_ALPN)
        self._keepalive_expiry = keepalive_expiry
        self._backend = network_backend if network_backend is not None else httpcore.TrioBackend()
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
        stream = await self._backend.connect_tcp(self._host, self._origin.port)
        if self._tls is not None:
            try:
                stream = await stream.start_tls(self._tls, server_hostname=self._host)
            except BaseException:
                # httpcore closes the socket of a failed handshake, not of a cancelled one.
                with trio.CancelScope(shield=True):
                    await stream.aclose()
                raise
        return httpcore.AsyncHTTP11Connection(
            self._origin, stream, keepalive_expiry=self._keepalive_expiry
        )
