"""HTTP to the gateway: paced, bounded, retried, and translated into the package's errors.

Every request of the backend goes through :meth:`Wire.get`:

1. refuse at once when an earlier answer stopped the run (429, 401, TLS failure);
2. wait for the endpoint's lane (listing and trades: one request at a time, spaced by the
   listing interval) and for the global pacer;
3. send it under one total deadline (a cancel scope covering connect, TLS, send and every
   read), and read the body as a stream, giving up past the size cap;
4. interpret the status and decode the body into a slim struct;
5. retry timeouts, connection failures and 5xx (other than "not found") with exponential
   back-off and full jitter, a bounded number of times; re-query ``/iserver/accounts`` once
   when the gateway asks for it.

Lower-layer errors are turned into the package's by ``_translate.translate_error`` alone.

Requests go to httpcore (httpx's own transport layer) directly: each lookup worker has one
keep-alive HTTP/1.1 connection (:class:`OneConnection`), the backend's shared client a small
httpcore pool. On a 2-core machine ``httpx.AsyncClient`` added about 0.45 ms of CPU per request
(its request/response models, cookies, auth and redirect flows, the transport's wrapping) and a
single-connection httpcore pool about a quarter of the instructions of a lookup. httpx still
parses the base URL; tests replace the network with an ``httpx.MockTransport``
(:class:`_ViaHttpx`).
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal, Protocol, TypeVar, overload
from urllib.parse import quote, urlencode

import httpcore
import httpx
import msgspec
import trio

from .._errors import BrokerError, BrokerFatal
from .._pacing import PACING_MARGIN, Pacer, Spacer
from ._connection import OneConnection
from ._models import ACCOUNTS, ERROR_BODY
from ._settings import CpapiSettings
from ._translate import RequestFailed, clip, origin, translate_error

__all__ = ["ACCOUNTS_PATH", "SMALL_BODY_BYTES", "Connection", "NotFound", "Wire"]

log = logging.getLogger("ibkr_recover.cpapi")

T = TypeVar("T")

ACCOUNTS_PATH: Final = "/iserver/accounts"
#: Cap for the answers about one thing (session, accounts, one order).
SMALL_BODY_BYTES: Final = 1024 * 1024

_NOT_FOUND: Final = re.compile(r"\border\s+(\S+)\s+is\s+not\s+found", re.IGNORECASE)
_ACCOUNTS_FIRST: Final = re.compile(r"query\s+/?accounts\s+first", re.IGNORECASE)
#: Idle keep-alive connections are closed after this long (httpx's default).
_KEEPALIVE_S: Final = 5.0
#: The lower-layer errors of one request (httpx's come from a test transport).
_REQUEST_ERRORS: Final = (
    httpcore.NetworkError,
    httpcore.TimeoutException,
    httpcore.ProtocolError,
    httpcore.UnsupportedProtocol,
    httpx.HTTPError,
    trio.TooSlowError,
    trio.BrokenResourceError,
    OSError,
)


class Connection(Protocol):
    """What requests go through: one connection, httpcore's pool, or a test transport."""

    async def handle_async_request(self, request: httpcore.Request) -> httpcore.Response: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class NotFound:
    """The status endpoint's ``503 {"error": "Order N is not found"}``; ``named_id`` is N."""

    named_id: str


class _AccountsFirst(Exception):
    """The gateway answered "Please query /accounts first"."""


@dataclass(frozen=True)
class _Reply:
    status: int
    body: bytes
    location: str


class Wire:
    """The HTTP side of one run: the pacer, the stop switch, the retry policy.

    Parameters
    ----------
    settings
        The backend's settings (URL, TLS context, timeouts, pacing, retries).
    transport
        Replaces the network (tests pass an ``httpx.MockTransport``).
    rng
        Source of the back-off jitter.
    """

    def __init__(
        self,
        settings: CpapiSettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._settings = settings
        self._transport = transport
        self._rng = rng if rng is not None else random.Random()
        self._pacer = Pacer.per_second(settings.rate / PACING_MARGIN)
        self._stopped: BrokerFatal | None = None
        self._accounts_generation = 0
        self._given_up = 0
        self._reprime_lock = trio.Lock()
        self.requests_sent = 0
        url = httpx.URL(settings.base_url)
        self._origin = httpcore.URL(
            scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=b"/"
        ).origin
        self._base_path = url.raw_path.rstrip(b"/")
        self._headers = [
            (b"Host", url.netloc),
            (b"Accept", b"application/json"),
            (b"User-Agent", b"ibkr-recover"),
        ]

    @property
    def paced(self) -> bool:
        """Whether requests are paced at all (``settings.rate`` > 0)."""
        return self._pacer.interval > 0

    @property
    def stopped(self) -> BrokerFatal | None:
        """The fatal condition that stopped every request of the run, if any."""
        return self._stopped

    def client(self, *, connections: int) -> Connection:
        """A new client of at most ``connections``, sharing the TLS context.

        One connection (a lookup worker's) is a bare :class:`OneConnection`; more (the
        backend's shared client, used by concurrent callers) are httpcore's pool.
        """
        if self._transport is not None:
            return _ViaHttpx(self._transport)
        if connections == 1:
            return OneConnection(
                self._origin, self._settings.ssl_context, keepalive_expiry=_KEEPALIVE_S
            )
        return httpcore.AsyncConnectionPool(
            ssl_context=self._settings.ssl_context,
            max_connections=connections,
            max_keepalive_connections=connections,
            keepalive_expiry=_KEEPALIVE_S,
        )

    @overload
    async def get(
        self,
        client: Connection,
        path: str,
        decoder: msgspec.json.Decoder[T],
        *,
        cap: int,
        params: Mapping[str, str] | None = ...,
        lane: Spacer | None = ...,
        not_found_ok: Literal[False] = ...,
        may_reprime: bool = ...,
        spare: bool = ...,
    ) -> T: ...

    @overload
    async def get(
        self,
        client: Connection,
        path: str,
        decoder: msgspec.json.Decoder[T],
        *,
        cap: int,
        params: Mapping[str, str] | None = ...,
        lane: Spacer | None = ...,
        not_found_ok: Literal[True],
        may_reprime: bool = ...,
        spare: bool = ...,
    ) -> T | NotFound: ...

    async def get(
        self,
        client: Connection,
        path: str,
        decoder: msgspec.json.Decoder[T],
        *,
        cap: int,
        params: Mapping[str, str] | None = None,
        lane: Spacer | None = None,
        not_found_ok: bool = False,
        may_reprime: bool = True,
        spare: bool = False,
    ) -> T | NotFound:
        """GET ``path`` and decode the answer.

        Parameters
        ----------
        cap
            Largest body accepted, in bytes (bounded by ``settings.max_body_bytes``).
        lane
            The endpoint's own spacing, if it has one (listing, trades).
        not_found_ok
            Answer :class:`NotFound` for a 503 "Order N is not found" instead of failing.
        may_reprime
            Re-query ``/iserver/accounts`` once if the gateway asks for it, then retry.
        spare
            Send only in a pacing slot no other request waits for (:meth:`Pacer.acquire_spare`).

        Raises
        ------
        RequestFailed
            No usable answer after the retries; ``reason`` says why.
        BrokerFatal
            401/403, 429, a TLS failure, or ``breaker_threshold`` requests in a row that failed
            all their retries; now or earlier in the run (no request is sent then).

        Cancellation: safe (reads only); a request cancelled in flight is abandoned and its
        connection closed.
        """
        where = f"GET {path}"
        cap = min(cap, self._settings.max_body_bytes)
        reprimed = not may_reprime
        failures = 0
        while True:
            generation = self._accounts_generation
            try:
                reply = await self._exchange(client, path, params, lane, cap, where, spare)
                value = self._interpret(reply, decoder, where, not_found_ok=not_found_ok)
            except _AccountsFirst:
                if reprimed:
                    raise RequestFailed(
                        "broker_error", f"{where}: the gateway keeps asking to query /accounts"
                    ) from None
                reprimed = True
                await self._reprime(client, generation)
            except RequestFailed as exc:
                if not exc.retryable:
                    self._given_up = 0
                    raise
                if failures >= self._settings.retries:
                    # One line per retry burst: the attempts themselves are logged at debug.
                    log.warning("%s; gave up after %d retries", exc, failures)
                    self._give_up(exc)
                    raise
                delay = self._backoff(failures)
                failures += 1
                log.debug("%s; retry %d in %.2f s", exc, failures, delay)
                await trio.sleep(delay)
            else:
                if failures:
                    log.warning("%s succeeded after %d retries", where, failures)
                self._given_up = 0
                return value

    async def _exchange(
        self,
        client: Connection,
        path: str,
        params: Mapping[str, str] | None,
        lane: Spacer | None,
        cap: int,
        where: str,
        spare: bool = False,
    ) -> _Reply:
        self._raise_if_stopped()
        if lane is None:
            # Unlimited, the pacer would only add a scheduler round trip per request.
            if spare:
                await self._pacer.acquire_spare()
            elif self._pacer.interval:
                await self._pacer.acquire()
            return await self._send(client, path, params, cap, where)
        # One request of the endpoint at a time, so that a shared client never waits for a
        # connection, and its calls spaced from the moment they really go.
        async with lane.turn(self._pacer):
            return await self._send(client, path, params, cap, where)

    async def _send(
        self,
        client: Connection,
        path: str,
        params: Mapping[str, str] | None,
        cap: int,
        where: str,
    ) -> _Reply:
        self._raise_if_stopped()
        self.requests_sent += 1
        reader = _Body(cap, where)
        target = self._base_path + path.encode("ascii")
        if params:
            target += b"?" + urlencode(params, quote_via=quote).encode("ascii")
        origin = self._origin
        url = httpcore.URL(scheme=origin.scheme, host=origin.host, port=origin.port, target=target)
        # The total deadline bounds every phase (connect, TLS, send, headers, body), so the
        # request carries no per-phase timeouts: of the same length, they would never fire
        # first, and each would register a deadline of its own for every socket operation.
        request = httpcore.Request(b"GET", url, headers=self._headers)
        scope = trio.CancelScope(deadline=trio.current_time() + self._settings.timeout)
        try:
            with scope:
                response = await client.handle_async_request(request)
                try:
                    body = await reader.read(response, scope)
                    status = response.status
                    location = _header(response, b"location") if 300 <= status < 400 else ""
                    return _Reply(status, body, location)
                finally:
                    await response.aclose()
            # Only reached when the scope caught its own cancellation: the deadline passed,
            # or the body cap cut the answer short.
            raise trio.TooSlowError
        except _REQUEST_ERRORS as exc:
            if reader.too_large:
                raise reader.refusal("read") from exc
            raise self._stopping(translate_error(exc, where, self._settings)) from exc

    def _interpret(
        self, reply: _Reply, decoder: msgspec.json.Decoder[T], where: str, *, not_found_ok: bool
    ) -> T | NotFound:
        status = reply.status
        if status == 200:
            try:
                value = decoder.decode(reply.body)
            except msgspec.DecodeError as exc:
                raise translate_error(exc, where, self._settings) from exc
            error = getattr(value, "error", None)
            if error:
                if _ACCOUNTS_FIRST.search(error):
                    raise _AccountsFirst
                raise RequestFailed("broker_error", f"{where}: HTTP 200 with error {clip(error)!r}")
            return value
        if 300 <= status < 400:
            raise RequestFailed(
                "redirect",
                f"{where}: unexpected redirect (HTTP {status}) to {clip(reply.location)!r}; "
                "check --base-url",
            )
        text = _error_text(reply.body)
        if status in (401, 403):
            raise self._stopping(
                BrokerFatal(
                    "auth",
                    f"{where}: HTTP {status} {text!r}: the gateway session is not authenticated; "
                    f"log in to the Client Portal Gateway ({origin(self._settings)}), then rerun",
                )
            )
        if status == 429:
            raise self._stopping(
                BrokerFatal(
                    "rate_limited",
                    f"{where}: HTTP 429: IBKR's pacing limit was exceeded and the client may be "
                    "in its penalty box for 10-15 minutes; wait, then rerun with a lower --rate",
                )
            )
        if _ACCOUNTS_FIRST.search(text):
            raise _AccountsFirst
        if status == 503 and not_found_ok and (match := _NOT_FOUND.search(text)):
            return NotFound(match.group(1))
        if 500 <= status < 600:
            raise RequestFailed("server_error", f"{where}: HTTP {status} {text!r}", retryable=True)
        raise RequestFailed("broker_error", f"{where}: HTTP {status} {text!r}")

    async def _reprime(self, client: Connection, generation: int) -> None:
        """Query ``/iserver/accounts`` once for every worker that saw the same generation.

        Cancellation: safe; a cancelled re-query leaves the generation unchanged, so the next
        worker asks again.
        """
        async with self._reprime_lock:
            if self._accounts_generation != generation:
                return
            log.info("the gateway asks to query /accounts first; querying it again")
            await self.get(client, ACCOUNTS_PATH, ACCOUNTS, cap=SMALL_BODY_BYTES, may_reprime=False)
            self._accounts_generation += 1

    def _give_up(self, exc: RequestFailed) -> None:
        """Count a request that failed all its retries; too many in a row stop the run.

        Without this, a gateway that went down mid-run would cost every remaining row its
        full round of retries.
        """
        self._given_up += 1
        limit = self._settings.breaker_threshold
        if limit and self._given_up >= limit:
            raise self._stopping(
                BrokerFatal(
                    "unavailable",
                    f"{self._given_up} requests in a row failed after their retries, the last "
                    f"with: {exc}; check the gateway, then rerun",
                )
            ) from exc

    def _backoff(self, failures: int) -> float:
        settings = self._settings
        ceiling = min(settings.backoff_cap, settings.backoff_base * 2.0**failures)
        return self._rng.uniform(0.0, ceiling)

    def _raise_if_stopped(self) -> None:
        if self._stopped is not None:
            raise BrokerFatal(self._stopped.reason, f"stopped earlier: {self._stopped}")

    def _stopping(self, exc: BrokerError) -> BrokerError:
        if isinstance(exc, BrokerFatal) and self._stopped is None:
            self._stopped = exc
        return exc


class _Body:
    """Reads a body up to ``cap`` bytes, cutting the request short past it."""

    def __init__(self, cap: int, where: str) -> None:
        self.cap = cap
        self.where = where
        self.too_large = False

    def refusal(self, size: str) -> RequestFailed:
        return RequestFailed(
            "response_too_large", f"{self.where}: the answer exceeds {self.cap} bytes ({size})"
        )

    async def read(self, response: httpcore.Response, scope: trio.CancelScope) -> bytes:
        declared = _header(response, b"content-length")
        if declared.isdigit() and int(declared) > self.cap:
            raise self.refusal(f"{declared} declared")
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_stream():
            size += len(chunk)
            if size > self.cap:
                # Cut by cancellation: it unwinds the nested stream generators, where
                # leaving the loop would abandon them to the garbage collector.
                self.too_large = True
                chunks.clear()
                scope.cancel()
                continue
            chunks.append(chunk)
        if self.too_large:
            raise self.refusal("read")
        return b"".join(chunks)


def _error_text(body: bytes) -> str:
    """IBKR's error message from an error body, or the start of the body."""
    try:
        decoded = ERROR_BODY.decode(body)
    except msgspec.DecodeError:
        return clip(body[:200].decode("utf-8", "replace"))
    return clip(decoded.error or "")


def _header(response: httpcore.Response, name: bytes) -> str:
    """The first value of header ``name`` (lower case), or ``""``."""
    for key, value in response.headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return ""


class _ViaHttpx:
    """A :class:`Connection` over an httpx transport (the tests' ``httpx.MockTransport``)."""

    def __init__(self, transport: httpx.AsyncBaseTransport) -> None:
        self._transport = transport

    async def handle_async_request(self, request: httpcore.Request) -> httpcore.Response:
        url = request.url
        answer = await self._transport.handle_async_request(
            httpx.Request(
                request.method.decode("ascii"),
                httpx.URL(
                    scheme=url.scheme.decode("ascii"),
                    host=url.host.decode("ascii"),
                    port=url.port,
                    raw_path=url.target,
                ),
                headers=request.headers,
            )
        )
        stream = answer.stream
        assert isinstance(stream, httpx.AsyncByteStream)
        return httpcore.Response(answer.status_code, headers=answer.headers.raw, content=stream)

    async def aclose(self) -> None:
        """The transport is shared by every connection; its owner closes it."""
