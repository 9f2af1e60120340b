"""A gateway database as ``ibkr-agent-gateway`` leaves it, written fast.

The idempotency table comes from the package's own DDL; the other gateway tables get
plausible DDL after the gateway's migrations (the tool must leave them intact, so they are
there to be checked, not to be exact).

Speed: SQLite's own insert work is about half of a generator's time per row, so for large
databases it runs in a child process (:class:`GatewayWriter` with ``background=True``) while
the parent builds the next batch. Pending rows travel as three joined buffers per batch rather
than as pickled tuples, the child computes their ``request_hash``, and one INSERT statement
carries :data:`ROWS_PER_INSERT` rows of three parameters each (the rest are SQL literals or cut
from one text of all their request hashes): a statement per row costs twice as much. While
generating: no rollback journal, ``synchronous=OFF``, a page cache that writes full pages out
as it goes, one transaction for everything; a fixture lost in a crash is simply generated
again. The file is left in WAL mode, as the gateway runs it.
"""

from __future__ import annotations

import gc
import hashlib
import queue
import sqlite3
import struct
import subprocess
import sys
import threading
from array import array
from collections.abc import Sequence
from itertools import chain, islice
from pathlib import Path
from typing import Any, BinaryIO

import msgspec

from .._schema import IDEMPOTENCY_DDL, IDEMPOTENCY_TABLE

__all__ = ["GATEWAY_TABLES", "GatewayWriter", "PendingBatch", "Row"]

#: (key, request_hash, result_hash, created_at, payload_json, status, updated_at, failure_json)
Row = tuple[str, str, str | None, int, str, str, int | None, str | None]

GATEWAY_TABLES = {
    "audit_events": """\
CREATE TABLE IF NOT EXISTS audit_events (
    sequence_id INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    event_type TEXT NOT NULL,
    timestamp INTEGER NOT NULL,
    payload_json TEXT NOT NULL,
    chain_hash TEXT NOT NULL DEFAULT ''
)""",
    "approval_records": """\
CREATE TABLE IF NOT EXISTS approval_records (
    approval_id TEXT PRIMARY KEY,
    preview_id TEXT NOT NULL,
    account_id TEXT NOT NULL,
    status TEXT NOT NULL,
    payload_json TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    consumed_at INTEGER
)""",
    "order_preview_records": """\
CREATE TABLE IF NOT EXISTS order_preview_records (
    preview_id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    payload_json TEXT NOT NULL,
    created_at INTEGER NOT NULL
)""",
    "live_orders_pending": """\
CREATE TABLE IF NOT EXISTS live_orders_pending (
    account_id TEXT NOT NULL,
    broker_order_id TEXT NOT NULL,
    last_status TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    last_polled_at INTEGER NOT NULL,
    PRIMARY KEY (account_id, broker_order_id)
)""",
    "order_groups": """\
CREATE TABLE IF NOT EXISTS order_groups (
    group_id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    payload_json TEXT NOT NULL,
    created_at INTEGER NOT NULL
)""",
}

_INSERT_ROW = f"INSERT INTO {IDEMPOTENCY_TABLE} VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
#: Pending rows per INSERT statement (three parameters each and one for all their request
#: hashes, far below SQLite's limit of 999).
ROWS_PER_INSERT = 64
_SEP = "\x00"  # never part of a generated key or payload


def _insert_pending(n: int) -> str:
    """One INSERT of ``n`` pending rows; row ``r`` binds key, created_at (also the
    ``updated_at``) and payload as parameters ``3r+1`` to ``3r+3``. The last parameter is the
    text of all their request hashes (:func:`_request_hashes`), as a blob: ``substr`` of a blob
    is cut at a byte offset, of a text only after counting the characters before it."""
    h = 3 * n + 1
    values = ", ".join(
        f"(?{p + 1}, CAST(substr(?{h}, {64 * r + 1}, 64) AS TEXT), NULL, ?{p + 2}, ?{p + 3}, "
        f"'pending_writer', ?{p + 2}, NULL)"
        for r, p in enumerate(range(0, 3 * n, 3))
    )
    return f"INSERT INTO {IDEMPOTENCY_TABLE} VALUES {values}"


def _request_hashes(keys: list[str], created: Sequence[int]) -> bytes:
    """The request hashes of one batch, 64 hex digits per row (like the gateway's SHA-256),
    as one ASCII text: row ``r``'s is bytes ``64r`` to ``64r + 63``.

    The tool treats ``request_hash`` as an opaque compare-and-set guard, so it only has to be
    a stable, unique-looking digest: one SHAKE-128 stream over the whole batch costs a tenth
    of hashing every row on its own. SQLite cuts the text up (:func:`_insert_pending`), which
    is cheaper than a Python string per row bound as a parameter.
    """
    batch = _SEP.join(keys).encode() + array("q", created).tobytes()
    return hashlib.shake_128(batch).hexdigest(32 * len(keys)).encode()


class PendingBatch:
    """Pending rows being collected: key, ``created_at`` and payload, column by column.

    :meth:`open` sizes the columns for rows ``start .. start + n``, so that rows built out of
    order land in key order: SQLite inserts sorted keys a quarter faster.
    """

    __slots__ = ("created", "keys", "payloads", "start")

    def __init__(self) -> None:
        self.start = 0
        self.keys: list[str] = []
        self.created: list[int] = []
        self.payloads: list[str] = []

    def open(self, start: int, n: int) -> None:
        """Make room for rows ``start`` to ``start + n - 1``, stored at ``row - start``."""
        self.start = start
        self.keys = [""] * n
        self.created = [0] * n
        self.payloads = [""] * n

    def put(self, rows: range, keys: list[str], created: list[int], payloads: list[str]) -> None:
        """Store rows ``rows`` (a range inside the open batch) at once, a column at a time."""
        at = slice(rows.start - self.start, rows.stop - self.start, rows.step)
        self.keys[at] = keys
        self.created[at] = created
        self.payloads[at] = payloads

    def __len__(self) -> int:
        return len(self.keys)

    def pack(self) -> tuple[bytes, bytes, bytes]:
        """The batch as three buffers, and empty it."""
        packed = (
            _SEP.join(self.keys).encode(),
            array("q", self.created).tobytes(),
            _SEP.join(self.payloads).encode(),
        )
        self.clear()
        return packed

    def clear(self) -> None:
        """Empty the batch."""
        self.keys = []
        self.created = []
        self.payloads = []


class _Database:
    """The connection that does the writing (in the parent or in the child)."""

    def __init__(self, path: str) -> None:
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=OFF")
        self._db.execute("PRAGMA synchronous=OFF")
        # Keys arrive in ascending runs, so a page, once full, is never needed again: a cache
        # of 32 MB holds every page still growing and writes the full ones out as it goes. (A
        # cache of the whole file, ~250 MB at a million rows, left all of it to write at
        # COMMIT, half a second after the last batch.)
        self._db.execute("PRAGMA cache_size=-32768")
        self._db.execute(IDEMPOTENCY_DDL)
        for ddl in GATEWAY_TABLES.values():
            self._db.execute(ddl)
        # One transaction for the whole file: the B-tree's upper pages are written once,
        # not once per batch (twice the insert rate at a million rows).
        self._db.execute("BEGIN")
        self._insert_full = _insert_pending(ROWS_PER_INSERT)

    def pending(self, keys: list[str], created: Sequence[int], payloads: list[str]) -> None:
        if not keys:
            return
        hashes = _request_hashes(keys, created)
        per = 64 * ROWS_PER_INSERT
        values = chain.from_iterable(zip(keys, created, payloads, strict=True))
        whole = len(keys) // ROWS_PER_INSERT
        # The parameters of whole statements, grouped by zip in C, and their hashes' blob.
        width = 3 * ROWS_PER_INSERT
        groups = zip(*[islice(values, width * whole)] * width, strict=True)
        blobs = (hashes[at : at + per] for at in range(0, whole * per, per))
        statements = ((*group, blob) for group, blob in zip(groups, blobs, strict=True))
        self._db.executemany(self._insert_full, statements)
        tail = list(values)
        if tail:
            self._db.execute(_insert_pending(len(tail) // 3), [*tail, hashes[whole * per :]])

    def rows(self, table: str, rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        if table == IDEMPOTENCY_TABLE:
            sql = _INSERT_ROW
        elif table in GATEWAY_TABLES:
            sql = f"INSERT INTO {table} VALUES ({', '.join('?' * len(rows[0]))})"
        else:
            raise ValueError(f"not a gateway table: {table}")
        self._db.executemany(sql, rows)

    def close(self) -> None:
        self._db.execute("COMMIT")
        # The gateway runs in WAL mode; leave the file the way it would find it.
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.close()


_HEADER = struct.Struct("<cQQQ")


def _read_exactly(stream: BinaryIO, n: int) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise EOFError("the generator went away")
    return data


def child_main(path: str) -> int:
    """The background writer's process: apply frames from stdin, report on stdout."""
    stdin, stdout = sys.stdin.buffer, sys.stdout
    # Nothing here makes reference cycles; the collector would only go through the
    # statements' parameter tuples.
    gc.disable()
    try:
        db = _Database(path)
        while True:
            tag, a, b, c = _HEADER.unpack(_read_exactly(stdin, _HEADER.size))
            first, second, third = (_read_exactly(stdin, n) for n in (a, b, c))
            if tag == b"P":
                created = array("q")
                created.frombytes(second)
                db.pending(first.decode().split(_SEP), created, third.decode().split(_SEP))
            elif tag == b"R":
                db.rows(first.decode(), msgspec.json.decode(second))
            else:
                db.close()
                break
    except Exception as exc:
        stdout.write(f"error {type(exc).__name__}: {exc}\n")
        return 1
    stdout.write("done\n")
    return 0


#: The background writer's program. It needs this module and ``_schema`` only: bare package
#: modules stand in for ``ibkr_recover`` and ``ibkr_recover.simulator``, whose ``__init__``
#: import the whole tool (0.6 s before the child could take its first batch).
_CHILD = """\
import sys, types
for name, folder in (("ibkr_recover", sys.argv[2]), ("ibkr_recover.simulator", sys.argv[3])):
    sys.modules[name] = types.ModuleType(name)
    sys.modules[name].__path__ = [folder]
from ibkr_recover.simulator._gateway_db import child_main
sys.exit(child_main(sys.argv[1]))
"""


#: Batches queued for the child at most, beyond the one being written.
_QUEUED_FRAMES = 8


class GatewayWriter:
    """Create a fresh gateway database at ``path`` (an existing file is replaced).

    Parameters
    ----------
    path
        The database file.
    background
        Do the SQLite work in a child process, overlapping with the caller's.

    Use as a context manager; on a clean exit the database is complete and in WAL mode.
    """

    def __init__(self, path: Path, *, background: bool = False) -> None:
        self._db: _Database | None = None
        self._child: subprocess.Popen[bytes] | None = None
        self._sender: threading.Thread | None = None
        #: Frames (header and parts) waiting for the sender thread; ``None`` ends it.
        self._frames: queue.Queue[tuple[bytes, ...] | None] = queue.Queue(_QUEUED_FRAMES)
        self._failed = False
        if not background:
            self._db = _Database(str(path))
            return
        # A plain child process rather than multiprocessing: spawning through multiprocessing
        # re-imports the caller's __main__, which breaks any script without a main guard.
        here = Path(__file__).resolve().parent
        self._child = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(path), str(here.parent), str(here)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        # The pipe takes a batch only as fast as the child inserts the previous one; a thread
        # does the writing, so that the rows of the next batches (and at the end, the
        # scenario) are built meanwhile, rather than after the child caught up. A few batches
        # wait at most (~6 MB per 50k rows), so that memory stays bounded at any size.
        self._sender = threading.Thread(
            target=self._send_frames, name="gateway-db-sender", daemon=True
        )
        self._sender.start()

    def __enter__(self) -> GatewayWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self._abandon()

    def _send(self, tag: bytes, *parts: bytes) -> None:
        if self._sender is None:
            return
        if self._failed:
            self._finish()  # raises the child's error
            return
        a, b, c = (*parts, b"", b"", b"")[:3]
        self._frames.put((_HEADER.pack(tag, len(a), len(b), len(c)), a, b, c))

    def _send_frames(self) -> None:
        """The sender thread: write the queued frames to the child, until ``None``.

        A write into the pipe waits for the child to read it, the previous batch inserted
        first; here it waits without the GIL, and the caller goes on building meanwhile.
        After a failed write the frames are only taken off the queue (:meth:`_send` and
        :meth:`close` then report the child's error).
        """
        stdin = self._child.stdin if self._child is not None else None
        while (frame := self._frames.get()) is not None:
            if stdin is None or self._failed:
                continue
            try:
                for part in frame:
                    stdin.write(part)
            except OSError:
                self._failed = True

    def pending(self, batch: PendingBatch) -> None:
        """Insert a batch of pending rows (and empty it), in one transaction."""
        if not len(batch):
            return
        if self._child is not None:
            self._send(b"P", *batch.pack())
        elif self._db is not None:
            self._db.pending(batch.keys, batch.created, batch.payloads)
            batch.clear()

    def insert(self, table: str, rows: Sequence[Sequence[Any]]) -> None:
        """Insert full rows into the idempotency table or one of :data:`GATEWAY_TABLES`."""
        if self._child is not None:
            self._send(b"R", table.encode(), msgspec.json.encode(list(rows)))
        elif self._db is not None:
            self._db.rows(table, rows)

    def close(self) -> None:
        """Finish writing; raises ``OSError`` when the background writer failed."""
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._child is not None:
            self._send(b"C")
            self._finish()

    def _stop_sender(self) -> None:
        sender, self._sender = self._sender, None
        if sender is not None:
            self._frames.put(None)
            sender.join()

    def _finish(self) -> None:
        self._stop_sender()
        child, self._child = self._child, None
        if child is None:
            return
        out, _ = child.communicate()
        if child.returncode != 0 or not out.startswith(b"done"):
            message = out.decode(errors="replace").strip() or f"exit status {child.returncode}"
            raise OSError(f"the database writer failed: {message}")

    def _abandon(self) -> None:
        if self._child is not None:
            self._child.kill()
            self._stop_sender()
            self._child.communicate()
            self._child = None
        if self._db is not None:
            self._db.close()
            self._db = None
