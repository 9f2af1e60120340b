"""The CP-API backend: preflight, per-account shared answers, and one resolver per worker.

::

    async with CpapiBackend(settings) as backend:
        await backend.preflight()                 # auth status, then /iserver/accounts
        async with backend.resolver() as resolver:  # one single-connection client per worker
            answer = await resolver.lookup(query)

Per account, the order listing and the 7-day trades are fetched once per run, by the first
worker that needs them, and shared by all; a failed fetch is remembered with its reason. Only
cancels and modifies missing from the listing cost a request of their own (the status endpoint).
The backend tells the engine which rows would wait for a listing (:meth:`CpapiBackend.waits_for`),
so that those rows are held back while the listing is fetched, and one account's listing
(with its warm-up re-ask) is fetched whole before the next account's.
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Final, Self

import httpx
import trio

from .._backend import Answer, Query, Resolver, Unresolved
from .._errors import BrokerError, BrokerFatal
from .._mask import mask_account
from .._pacing import PACING_MARGIN, Spacer
from ._evidence import (
    Executions,
    Failed,
    OrderBook,
    decide_not_found,
    decide_order_status,
    decide_submit,
    find_by_order_id,
    parse_order_id,
)
from ._http import ACCOUNTS_PATH, SMALL_BODY_BYTES, Connection, NotFound, Wire
from ._models import (
    ACCOUNTS,
    AUTH_STATUS,
    LISTING,
    ORDER_STATUS,
    TRADES,
    ErrorBody,
    ListingRow,
    OrderStatus,
    TradeRow,
)
from ._once import Once
from ._settings import CpapiSettings
from ._translate import RequestFailed, clip

__all__ = ["CpapiBackend", "CpapiResolver"]

log = logging.getLogger("ibkr_recover.cpapi")

AUTH_STATUS_PATH: Final = "/iserver/auth/status"
LISTING_PATH: Final = "/iserver/account/orders"
TRADES_PATH: Final = "/iserver/account/trades"
ORDER_STATUS_PATH: Final = "/iserver/account/order/status/{order_id}"
#: Connections of the backend's own client: preflight, one listing, one trades, one re-query.
_SHARED_CONNECTIONS: Final = 4


class CpapiBackend:
    """IBKR's Client Portal Web API as the engine's :class:`~ibkr_recover.Backend`.

    Parameters
    ----------
    settings
        Where the gateway is, how to trust it, how to pace it.
    _transport
        Private: replaces the network (tests pass an ``httpx.MockTransport``).
    _rng
        Private: the source of the retry jitter.
    """

    def __init__(
        self,
        settings: CpapiSettings,
        *,
        _transport: httpx.AsyncBaseTransport | None = None,
        _rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self._wire = Wire(settings, transport=_transport, rng=_rng)
        self._listing_lane = Spacer(settings.listing_interval * PACING_MARGIN)
        self._trades_lane = Spacer(settings.listing_interval * PACING_MARGIN)
        self._shared: Connection | None = None
        self._accounts: frozenset[str] | None = None
        self._listings: Once[OrderBook | Failed] = Once()
        self._trades: Once[Executions | Failed] = Once()
        # One account's fetch (both calls of a warm-up) at a time, in the order asked: the
        # first accounts' listings are in after one or two lane intervals each, instead of
        # every account's first call going before any re-ask.
        self._listing_turn = trio.Lock()
        self._trades_turn = trio.Lock()
        # Status answers asked in spare pacing slots while the order's account had no listing.
        self._early: dict[int, OrderStatus | NotFound] = {}

    async def __aenter__(self) -> Self:
        self._shared = self._wire.client(connections=_SHARED_CONNECTIONS)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        shared, self._shared = self._shared, None
        if shared is not None:
            with trio.CancelScope(shield=True):
                await shared.aclose()

    @property
    def accounts(self) -> frozenset[str]:
        """The accounts ``/iserver/accounts`` listed at preflight."""
        if self._accounts is None:
            raise RuntimeError("CpapiBackend.preflight() has not run")
        return self._accounts

    @property
    def requests_sent(self) -> int:
        """HTTP requests sent so far (retries included)."""
        return self._wire.requests_sent

    async def preflight(self) -> None:
        """The session must be authenticated, connected and not competing; then list accounts.

        Raises
        ------
        BrokerError
            The gateway is unreachable, refuses TLS, answers 401, or the session is unusable;
            the message says what to do.

        Cancellation: safe; nothing is remembered until both answers are in.
        """
        client = self._client()
        try:
            auth = await self._wire.get(
                client, AUTH_STATUS_PATH, AUTH_STATUS, cap=SMALL_BODY_BYTES, may_reprime=False
            )
        except RequestFailed as exc:
            raise BrokerError(f"the gateway is not usable: {exc}") from exc
        _check_session(auth.authenticated, auth.connected, auth.competing, auth.message, auth.fail)
        try:
            answer = await self._wire.get(
                client, ACCOUNTS_PATH, ACCOUNTS, cap=SMALL_BODY_BYTES, may_reprime=False
            )
        except RequestFailed as exc:
            raise BrokerError(f"the gateway did not list the accounts: {exc}") from exc
        if not answer.accounts:
            raise BrokerError(
                "the gateway lists no accounts for this session: log in to the Client Portal "
                "Gateway with the user that owns the accounts, then rerun"
            )
        self._accounts = frozenset(answer.accounts)

    @asynccontextmanager
    async def resolver(self) -> AsyncIterator[Resolver]:
        """One worker's handle, with its own single-connection client.

        Cancellation: safe; the client is closed (shielded) however the worker ends.
        """
        if self._accounts is None:
            raise RuntimeError("CpapiBackend.preflight() has not run")
        client = self._wire.client(connections=1)
        try:
            yield CpapiResolver(self, client)
        finally:
            with trio.CancelScope(shield=True):
                await client.aclose()

    async def listing(self, account_id: str) -> OrderBook | Failed:
        """The account's order listing, fetched once per run.

        Cancellation: safe; a fetch cancelled in flight is taken over by the next caller.
        """
        cached = self._listings.peek(account_id)
        if cached is not None:
            return cached
        return await self._listings.get(account_id, lambda: self._fetch_listing(account_id))

    async def trades(self, account_id: str) -> Executions | Failed:
        """The account's 7-day trades, fetched once per run.

        Cancellation: safe; as :meth:`listing`.
        """
        return await self._trades.get(account_id, lambda: self._fetch_trades(account_id))

    async def submit_evidence(
        self, account_id: str
    ) -> tuple[OrderBook | Failed, Executions | Failed]:
        """The account's listing and trades, fetched side by side the first time.

        Cancellation: safe; as :meth:`listing`.
        """
        listing = self._listings.peek(account_id)
        trades = self._trades.peek(account_id)
        if listing is not None and trades is not None:
            return listing, trades
        return await _both(self.listing, self.trades, account_id)

    def waits_for(self, query: Query) -> Hashable | None:
        """The account whose shared answers a lookup of ``query`` would wait for, or ``None``.

        A submit needs the account's listing and trades, a cancel or modify its listing; a
        query answered without them (an unknown account, a non-numeric order id) waits for
        nothing.
        """
        account = query.account_id
        if self._accounts is None or account not in self._accounts:
            return None
        if self._listings.peek(account) is None:
            if query.operation == "submit" or parse_order_id(query.lookup_id) is not None:
                return account
        elif query.operation == "submit" and self._trades.peek(account) is None:
            return account
        return None

    async def fetch(self, shared: Hashable) -> None:
        """Fetch the listing and the trades of the account :meth:`waits_for` named.

        Both together, even for an account of cancels and modifies only: the two endpoints
        have lanes of their own, and fetching both keeps the lanes in the same account order.
        """
        if not isinstance(shared, str):
            raise TypeError(f"not an account id: {shared!r}")
        await self.submit_evidence(shared)

    def prefetchable(self, query: Query) -> bool:
        """Whether a spare request could ask about ``query``'s order before its listing is in.

        Only in paced runs (unpaced, no budget goes unused), only for a cancel or modify by a
        numeric broker order id of a known account whose listing has not been fetched yet.
        """
        return (
            self._wire.paced
            and query.operation != "submit"
            and self._accounts is not None
            and query.account_id in self._accounts
            and self._listings.peek(query.account_id) is None
            and parse_order_id(query.lookup_id) is not None
        )

    async def prefetch(self, query: Query) -> None:
        """Ask the status endpoint about ``query``'s order in a spare pacing slot.

        The answer is kept for the row's lookup, which still goes by the listing first: an
        order in the listing is decided by the listing, and an early "not found" clears only
        next to a complete listing, as a late one does. A failed request keeps nothing (the
        lookup asks again).

        Raises
        ------
        BrokerFatal
            401/403, 429 or a TLS failure (the run stops).

        Cancellation: safe (a read); a cancelled request keeps nothing.
        """
        order_id = parse_order_id(query.lookup_id)
        if order_id is None or order_id in self._early or not self.prefetchable(query):
            return
        try:
            answer = await self.order_status(self._client(), order_id, spare=True)
        except RequestFailed:
            return
        # Kept only while the listing is still to come: after it, the row may be done already.
        if self._listings.peek(query.account_id) is None:
            self._early[order_id] = answer

    def early_status(self, order_id: int) -> OrderStatus | NotFound | None:
        """The status answer :meth:`prefetch` got for ``order_id``, handed out once."""
        return self._early.pop(order_id, None)

    async def order_status(
        self, client: Connection, order_id: int, *, spare: bool = False
    ) -> OrderStatus | NotFound:
        """One order by broker id, through the caller's own client (``spare``: only in a
        pacing slot no other request waits for).

        Cancellation: safe (a read).
        """
        path = ORDER_STATUS_PATH.format(order_id=order_id)
        return await self._wire.get(
            client, path, ORDER_STATUS, cap=SMALL_BODY_BYTES, not_found_ok=True, spare=spare
        )

    async def _fetch_listing(self, account_id: str) -> OrderBook | Failed:
        async with self._listing_turn:
            return await self._fetch_listing_now(account_id)

    async def _fetch_listing_now(self, account_id: str) -> OrderBook | Failed:
        try:
            book = OrderBook.build(await self._listing_rows(account_id), account_id)
            if isinstance(book, OrderBook) and book.state == "empty":
                # A session's first listing may be empty: ask once more, a lane interval later.
                book = OrderBook.build(await self._listing_rows(account_id), account_id)
        except RequestFailed as exc:
            log.warning("the listing of %s failed: %s", mask_account(account_id), exc)
            return Failed(exc.reason, str(exc))
        if isinstance(book, Failed):
            log.warning("the listing of %s is unusable: %s", mask_account(account_id), book.detail)
        elif book.state != "complete":
            log.info("the listing of %s is %s", mask_account(account_id), book.state)
        return book

    async def _listing_rows(self, account_id: str) -> list[ListingRow]:
        # Never the ``filters`` parameter: IBKR answers incompletely with it.
        listing = await self._wire.get(
            self._client(),
            LISTING_PATH,
            LISTING,
            params={"accountId": account_id},
            lane=self._listing_lane,
            cap=self.settings.max_body_bytes,
        )
        if listing.orders is None:
            raise RequestFailed("bad_schema", f"GET {LISTING_PATH}: the answer has no 'orders'")
        return listing.orders

    async def _fetch_trades(self, account_id: str) -> Executions | Failed:
        async with self._trades_turn:
            return await self._fetch_trades_now(account_id)

    async def _fetch_trades_now(self, account_id: str) -> Executions | Failed:
        try:
            rows = await self._trade_rows(account_id)
            if not any(row.account_id == account_id for row in rows):
                # The trades share the listing's session warm-up; an empty answer is asked
                # once more before it stands as "no executions in 7 days".
                rows = await self._trade_rows(account_id)
        except RequestFailed as exc:
            log.warning("the trades of %s failed: %s", mask_account(account_id), exc)
            return Failed(exc.reason, str(exc))
        return Executions.build(rows)

    async def _trade_rows(self, account_id: str) -> list[TradeRow]:
        answer = await self._wire.get(
            self._client(),
            TRADES_PATH,
            TRADES,
            params={"days": "7", "accountId": account_id},
            lane=self._trades_lane,
            cap=self.settings.max_body_bytes,
        )
        if isinstance(answer, ErrorBody):
            raise RequestFailed("bad_schema", f"GET {TRADES_PATH}: an object, not a list")
        return answer

    def _client(self) -> Connection:
        if self._shared is None:
            raise RuntimeError("use CpapiBackend as 'async with CpapiBackend(settings) as b'")
        return self._shared


class CpapiResolver:
    """One worker's handle: answers queries with the shared listings and its own client."""

    def __init__(self, backend: CpapiBackend, client: Connection) -> None:
        self._backend = backend
        self._client = client

    async def lookup(self, query: Query) -> Answer:
        """Answer one query (SPEC §3, §4).

        Raises
        ------
        BrokerFatal
            401/403, 429 or a TLS failure, now or earlier in the run from any worker.

        Cancellation: safe; reads only. A lookup answered from the shared listings may
        complete without a checkpoint.
        """
        backend = self._backend
        if query.account_id not in backend.accounts:
            return Unresolved("unknown_account", "the account is not among /iserver/accounts")
        try:
            if query.operation == "submit":
                return await self._submit(query)
            return await self._by_order_id(query)
        except RequestFailed as exc:
            return Unresolved(exc.reason, str(exc))

    async def _submit(self, query: Query) -> Answer:
        backend = self._backend
        listing, trades = await backend.submit_evidence(query.account_id)
        return decide_submit(
            query, listing, trades, trust_empty=backend.settings.trust_empty_listing
        )

    async def _by_order_id(self, query: Query) -> Answer:
        backend = self._backend
        # IBKR order ids are numbers; anything else (a key used as fallback, a hostile string)
        # can match no listing row and is never put into a URL path.
        order_id = parse_order_id(query.lookup_id)
        if order_id is None:
            return Unresolved("invalid_order_id", "the broker order id is not a number")
        listing = await backend.listing(query.account_id)
        early = backend.early_status(order_id)
        found = find_by_order_id(query, order_id, listing)
        if found is not None:
            return found
        answer = early if early is not None else await backend.order_status(self._client, order_id)
        if isinstance(answer, NotFound):
            return decide_not_found(
                order_id,
                answer.named_id,
                listing,
                trust_empty=backend.settings.trust_empty_listing,
            )
        return decide_order_status(query, order_id, answer)


def _check_session(
    authenticated: bool, connected: bool, competing: bool, message: str | None, fail: str | None
) -> None:
    said = "; ".join(clip(text) for text in (message, fail) if text)
    said = f" (the gateway says: {said})" if said else ""
    if not authenticated:
        raise BrokerError(
            "the gateway session is not authenticated: log in to the Client Portal Gateway "
            f"in a browser, then rerun{said}"
        )
    if competing:
        raise BrokerError(
            "another session competes for this IBKR user (TWS, the mobile app or another "
            f"gateway): close it or log in again, then rerun{said}"
        )
    if not connected:
        raise BrokerError(
            "the gateway is authenticated but not connected to IBKR's brokerage backend: "
            f"wait a minute or log in again, then rerun{said}"
        )


async def _both(
    listing: Callable[[str], Awaitable[OrderBook | Failed]],
    trades: Callable[[str], Awaitable[Executions | Failed]],
    account_id: str,
) -> tuple[OrderBook | Failed, Executions | Failed]:
    """Both shared answers, fetched side by side (they have separate pacing lanes)."""
    got_listing: list[OrderBook | Failed] = []
    got_trades: list[Executions | Failed] = []
    fatal: list[BrokerFatal] = []

    async def run(fetch: Callable[[], Awaitable[None]], scope: trio.CancelScope) -> None:
        try:
            await fetch()
        except BrokerFatal as exc:
            fatal.append(exc)
            scope.cancel()

    async def fetch_listing() -> None:
        got_listing.append(await listing(account_id))

    async def fetch_trades() -> None:
        got_trades.append(await trades(account_id))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, fetch_listing, nursery.cancel_scope)
        nursery.start_soon(run, fetch_trades, nursery.cancel_scope)
    if fatal:
        raise fatal[0]
    return got_listing[0], got_trades[0]
