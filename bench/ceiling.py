"""The ceiling: the tool's HTTP requests in a bare loop, with no database and no decisions.

The same client setup as the tool (one keep-alive connection per worker, all sharing one
``ssl.SSLContext``, built by the tool's own ``Wire.client``), on trio, at the same concurrency,
issuing the same requests; each worker sends a prebuilt ``httpcore.Request`` and reads the
body, nothing else::

    python bench/ceiling.py BASE_URL TARGETS.txt --concurrency 64     # prints one JSON object

``--via pool`` is the same loop through one single-connection ``httpcore.AsyncConnectionPool``
per worker, and ``--via httpx`` through one single-connection ``httpx.AsyncClient`` per worker
(``await client.get(target)``): the clients the tool used before.

``--via wire`` sends them through the tool's own request path instead (``Wire._send``: the
total deadline, an absolute URL, the streamed and capped body), still without decoding, deciding
or writing anything, and with the tool's process settings (``cli.tune_gc``): the difference
between the two is what the tool's HTTP layer and runtime settings cost or save.

``--cacert CA.pem`` trusts the CA of an ``https://`` base URL, as the tool's option does.

``TARGETS.txt`` holds one request target per line, relative to the base URL
(``/iserver/account/order/status/1798016332``). ``/iserver/accounts`` is asked once first, as
the tool's preflight does (the gateway refuses order endpoints before it).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qsl

import httpcore
import httpx
import trio

from ibkr_recover.cpapi import CpapiSettings
from ibkr_recover.cpapi._http import Connection, Wire

#: Cap of the listing and trades answers in ``--via wire`` (the tool's default).
_CAP = 16 * 1024 * 1024


async def bare_loop(
    base_url: str,
    targets: list[str],
    concurrency: int,
    via: str = "get",
    cacert: Path | None = None,
) -> dict[str, float]:
    settings = CpapiSettings(
        base_url=base_url, rate=0, listing_interval=0, concurrency=concurrency, cacert=cacert
    )
    wire = Wire(settings)
    headers = {"Accept": "application/json", "User-Agent": "ibkr-recover"}
    # The tool's own origin, path prefix and headers, as its requests carry them.
    origin, prefix, raw_headers = wire._origin, wire._base_path, wire._headers
    async with httpx.AsyncClient(base_url=base_url, verify=settings.ssl_context) as first:
        (await first.get("/iserver/accounts")).raise_for_status()
    pending: Iterator[str] = iter(targets)
    done = 0

    async def worker() -> None:
        nonlocal done
        if via == "httpx":
            async with httpx.AsyncClient(
                base_url=base_url,
                verify=settings.ssl_context,
                limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
                headers=headers,
            ) as client:
                for target in pending:
                    _ = (await client.get(target)).content
                    done += 1
            return
        client: Connection
        if via == "pool":
            client = httpcore.AsyncConnectionPool(
                ssl_context=settings.ssl_context,
                max_connections=1,
                max_keepalive_connections=1,
                keepalive_expiry=5.0,
            )
        else:
            client = wire.client(connections=1)
        try:
            for target in pending:
                if via == "wire":
                    path, _, query = target.partition("?")
                    params = dict(parse_qsl(query)) or None
                    await wire._send(client, path, params, _CAP, target)
                else:
                    target_url = httpcore.URL(
                        scheme=origin.scheme,
                        host=origin.host,
                        port=origin.port,
                        target=prefix + target.encode("ascii"),
                    )
                    response = await client.handle_async_request(
                        httpcore.Request(b"GET", target_url, headers=raw_headers)
                    )
                    try:
                        _ = b"".join([chunk async for chunk in response.aiter_stream()])
                    finally:
                        await response.aclose()
                done += 1
        finally:
            await client.aclose()

    started = trio.current_time()
    cpu = time.process_time()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    elapsed = trio.current_time() - started
    return {
        "requests": done,
        "elapsed_s": round(elapsed, 3),
        "requests_per_s": round(done / elapsed, 1) if elapsed > 0 else 0.0,
        "loop_cpu_s": round(time.process_time() - cpu, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base_url")
    parser.add_argument("targets", type=Path)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--via", choices=("get", "wire", "pool", "httpx"), default="get")
    parser.add_argument("--cacert", type=Path, help="the CA of an https:// BASE_URL")
    args = parser.parse_args()
    targets = args.targets.read_text().split()
    if args.via == "wire":
        # The tool's process settings too (its console script tunes the cyclic collector).
        from ibkr_recover.cli import tune_gc

        tune_gc()
    result = trio.run(bare_loop, args.base_url, targets, args.concurrency, args.via, args.cacert)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
