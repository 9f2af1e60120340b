"""The HTTP/1.1 server: an ``asyncio.Protocol`` per connection, no framework.

Speed matters here (the benchmarks must never be limited by the simulator), so the hot path
is one buffer search, a few comparisons to route and one ``transport.write`` per request, and
nothing waits on anything: a delayed answer is a ``loop.call_later`` timer, a slow or huge body
is written chunk by chunk as the transport drains. Answers leave in request order even when
later ones are ready first, so pipelining stays correct.
"""

from __future__ import annotations

import asyncio
import importlib
import ssl
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import msgspec

from ._broker import API_PREFIX, Broker, Reply
from ._http import BadRequest, parse_request, response_head
from ._scenario import Scenario
from ._tls import CertKind, server_context

__all__ = ["Running", "new_event_loop", "oversized_pieces", "start_simulator"]

_CHUNK = 64 * 1024
#: Pipelined requests queued on one connection before reading from it pauses.
_MAX_QUEUE = 256


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new event loop, from ``uvloop`` when it is installed."""
    try:
        uvloop: Any = importlib.import_module("uvloop")
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def oversized_pieces(body: bytes, size: int) -> Iterator[bytes]:
    """A valid JSON document of exactly ``size`` bytes (when ``size`` allows), in chunks.

    An object gains a long ``padding`` string before its own fields; an array is filled with
    copies of its first element. The document is produced lazily, so a body of any size
    costs no memory.
    """
    if body.startswith(b"["):
        items = msgspec.json.decode(body) if len(body) > 2 else []
        unit = msgspec.json.encode(items[0] if items else {"padding": ""})
        room = max(0, size - 2 - len(unit))
        count, spaces = divmod(room, len(unit) + 1)
        yield b"["
        per_block = max(1, _CHUNK // (len(unit) + 1))
        block = (unit + b",") * per_block
        full, rest = divmod(count, per_block)
        for _ in range(full):
            yield block
        yield (unit + b",") * rest + unit + b" " * spaces + b"]"
        return
    prefix = b'{"padding":"'
    suffix = b'"}' if body in (b"", b"{}") else b'",' + body[1:]
    pad = max(0, size - len(prefix) - len(suffix))
    yield prefix
    block = b"x" * _CHUNK
    full, rest = divmod(pad, _CHUNK)
    for _ in range(full):
        yield block
    yield b"x" * rest + suffix


def _pieces(data: bytes, chunk: int) -> Iterator[bytes]:
    for start in range(0, len(data), chunk):
        yield data[start : start + chunk]


class _Slot:
    """One answer waiting for its turn on the connection."""

    __slots__ = ("close", "ready", "reply", "timer")

    def __init__(self, reply: Reply, close: bool) -> None:
        self.reply = reply
        self.close = close
        self.ready = False
        self.timer: asyncio.TimerHandle | None = None


class _Connection(asyncio.Protocol):
    def __init__(self, broker: Broker, connections: set[_Connection]) -> None:
        self._broker = broker
        self._connections = connections
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._queue: deque[_Slot] = deque()
        self._done = False  # no further request is read (close pending, or an error)
        self._write_paused = False
        self._read_paused = False
        self._stream: Iterator[bytes] | None = None
        self._stream_interval = 0.0
        self._stream_timer: asyncio.TimerHandle | None = None
        self._stream_close = False

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's are not subclasses of asyncio.Transport, hence the cast).
        self._transport = cast(asyncio.Transport, transport)
        self._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._connections.discard(self)
        self._transport = None
        for slot in self._queue:
            if slot.timer is not None:
                slot.timer.cancel()
        self._queue.clear()
        if self._stream_timer is not None:
            self._stream_timer.cancel()
        self._stream = None

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._stream is not None and self._stream_interval == 0:
            self._stream_step()

    def data_received(self, data: bytes) -> None:
        if self._done:
            return
        # Stamped on arrival, before any parsing or answering: pacing judges arrival gaps.
        arrival = time.monotonic()
        self._buf += data
        handle = self._broker.handle
        while True:
            try:
                parsed = parse_request(self._buf)
            except BadRequest as exc:
                self._refuse(str(exc))
                return
            if parsed is None:
                break
            request, used = parsed
            del self._buf[:used]
            reply = handle(request, arrival)
            close = not request.keep_alive or reply.mode in ("truncated", "unannounced", "drop")
            slot = _Slot(reply, close)
            self._queue.append(slot)
            if reply.mode != "hang":
                if reply.delay > 0:
                    slot.timer = self._loop.call_later(reply.delay, self._ready, slot)
                else:
                    slot.ready = True
            if close:
                self._done = True
                break
        self._pump()
        if len(self._queue) > _MAX_QUEUE and self._transport is not None:
            self._transport.pause_reading()
            self._read_paused = True

    def eof_received(self) -> bool | None:
        # Half-closed by the client: finish the queued answers, then close.
        self._done = True
        if not self._queue and self._transport is not None:
            self._transport.close()
        # TLS has no half-close: asking to keep the transport open only draws a warning there.
        plain = self._transport is not None and self._transport.get_extra_info("sslcontext") is None
        return True if plain else None

    # -- writing -----------------------------------------------------------------------

    def _refuse(self, message: str) -> None:
        self._done = True
        body = msgspec.json.encode({"error": f"Bad Request: {message}", "statusCode": 400})
        reply = Reply(400, body)
        reply.delay = 0
        slot = _Slot(reply, close=True)
        slot.ready = True
        self._queue.append(slot)
        self._pump()

    def _ready(self, slot: _Slot) -> None:
        slot.timer = None
        slot.ready = True
        self._pump()

    def _pump(self) -> None:
        transport = self._transport
        while transport is not None and self._stream is None and self._queue:
            slot = self._queue[0]
            if not slot.ready:
                return
            self._queue.popleft()
            reply = slot.reply
            mode = reply.mode
            if mode == "normal":
                # One write, one send(2): on a busy machine the system call is the cost.
                head = response_head(reply.status, len(reply.body), close=slot.close)
                transport.write(head + reply.body)
            elif mode == "drop":
                transport.abort()
                return
            elif mode == "truncated":
                head = response_head(reply.status, len(reply.body), close=True)
                transport.write(head + reply.body[: len(reply.body) // 2])
            elif mode in ("oversized", "unannounced"):
                size = int(reply.param)
                length = size if mode == "oversized" else None
                transport.write(response_head(reply.status, length, close=slot.close))
                self._start_stream(oversized_pieces(reply.body, size), 0.0, slot.close)
                return
            elif mode == "slow":
                rate = max(reply.param, 1.0)
                chunk = max(1, int(rate / 20))
                transport.write(response_head(reply.status, len(reply.body), close=slot.close))
                self._start_stream(_pieces(reply.body, chunk), chunk / rate, slot.close)
                return
            if slot.close:
                transport.close()
                return
        if self._read_paused and len(self._queue) <= _MAX_QUEUE // 2 and transport is not None:
            self._read_paused = False
            transport.resume_reading()
        if self._done and not self._queue and self._stream is None and transport is not None:
            transport.close()

    def _start_stream(self, pieces: Iterator[bytes], interval: float, close: bool) -> None:
        self._stream = pieces
        self._stream_interval = interval
        self._stream_close = close
        if interval > 0:
            self._stream_timer = self._loop.call_later(interval, self._stream_step)
        else:
            self._stream_step()

    def _stream_step(self) -> None:
        self._stream_timer = None
        transport = self._transport
        stream = self._stream
        if transport is None or stream is None:
            return
        # A client that hung up mid-body closes the transport; writing on would only feed
        # asyncio's "socket.send() raised exception" warnings until the stream ran out.
        while not self._write_paused and not transport.is_closing():
            piece = next(stream, None)
            if piece is None:
                self._stream = None
                if self._stream_close:
                    transport.close()
                else:
                    self._pump()
                return
            transport.write(piece)
            if self._stream_interval > 0:
                self._stream_timer = self._loop.call_later(self._stream_interval, self._stream_step)
                return


@dataclass
class Running:
    """A simulator serving on an event loop.

    Attributes
    ----------
    broker
        The session state (use it from the loop's thread only).
    host, port
        Where it listens.
    base_url
        ``http(s)://HOST:PORT/v1/api``.
    ca_path
        The CA certificate (PEM) clients must trust, when serving TLS.
    """

    broker: Broker
    host: str
    port: int
    base_url: str
    ca_path: Path | None
    _server: asyncio.Server
    _connections: set[_Connection]

    async def aclose(self) -> None:
        """Stop listening and drop every open connection."""
        self._server.close()
        for connection in list(self._connections):
            transport = connection._transport
            if transport is not None:
                transport.abort()
        await self._server.wait_closed()
        # Let the aborted transports run connection_lost before the loop goes away.
        await asyncio.sleep(0)


def _quiet_handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    # Clients that reject the certificate or vanish mid-answer are expected in fault tests;
    # they are the client's news, not the server's.
    if isinstance(context.get("exception"), ssl.SSLError | ConnectionError):
        return
    loop.default_exception_handler(context)


async def start_simulator(
    scenario: Scenario,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    tls: bool = False,
    cert: CertKind = "valid",
    ca_path: Path | None = None,
) -> Running:
    """Start serving ``scenario`` on the running event loop.

    Parameters
    ----------
    scenario
        What the broker knows, and the initial switches.
    host, port
        Where to listen; port 0 picks a free one.
    tls
        Serve HTTPS with a freshly minted certificate.
    cert
        Which certificate to serve (``valid``, ``expired``, ``wrong_host``).
    ca_path
        Where to write the CA PEM when serving TLS (required then).

    Cancellation: safe; nothing is listening until the call returns.
    """
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(_quiet_handler)
    context: ssl.SSLContext | None = None
    if tls:
        if ca_path is None:
            raise ValueError("serving TLS needs a path for the CA certificate")
        context = server_context(ca_path, cert)
    broker = Broker(scenario)
    connections: set[_Connection] = set()
    factory: Callable[[], _Connection] = lambda: _Connection(broker, connections)  # noqa: E731
    server = await loop.create_server(factory, host, port, ssl=context, backlog=1024)
    bound = server.sockets[0].getsockname()
    scheme = "https" if tls else "http"
    shown = f"[{host}]" if ":" in host else host
    base_url = f"{scheme}://{shown}:{bound[1]}{API_PREFIX}"
    return Running(broker, host, bound[1], base_url, ca_path if tls else None, server, connections)
