"""Every SQL statement of the tool: opening and checking the database, reading, writing.

The tool never creates a database (a typo must not produce an empty one), checks the gateway's
schema before anything else, reads pending rows in keyset pages and writes decisions in batched
``BEGIN IMMEDIATE`` transactions whose statements are all compare-and-set on
``(idempotency_key, request_hash, status='pending_writer')``.

All functions here block; the pipeline runs them in worker threads, one hop per page or batch.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Final, TypeVar
from urllib.parse import quote

import msgspec
import sqlite_utils

from . import _crash
from ._decide import Outcome, PendingRow
from ._errors import ConfigError, SchemaError, StorageError
from ._schema import IDEMPOTENCY_COLUMNS, IDEMPOTENCY_TABLE, PENDING_INDEX_DDL, PENDING_INDEX_NAME

__all__ = [
    "Store",
    "SummaryRows",
    "connect",
    "require_database",
    "storage_error",
    "summarise",
]

# A page of pending rows in the scan order ``{order}`` (``{after}``: after a keyset position, or
# nothing for the first page). The last column is the rowid (``NULL`` when the table has none):
# see :class:`PendingRow`.
_SELECT_PAGE: Final = f"""
SELECT idempotency_key, request_hash, created_at, payload_json, {{rowid}}
FROM {IDEMPOTENCY_TABLE}
WHERE status = 'pending_writer'{{after}}
ORDER BY {{order}}
LIMIT ?"""

#: Oldest first, through the scan index.
_BY_AGE: Final = ("created_at", "idempotency_key")
#: While the scan index is missing (a dry run never adds it), through the key's own index: in
#: created_at order, every page would sort the whole table.
_BY_KEY: Final = ("idempotency_key",)

_PROBE_SCAN_INDEX: Final = (
    "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ? AND tbl_name = ?"
)

_PROBE_ROWID: Final = f"SELECT rowid FROM {IDEMPOTENCY_TABLE} LIMIT 0"

_TABLE_XINFO: Final = f"PRAGMA table_xinfo({IDEMPOTENCY_TABLE})"

_COMPLETE_SET: Final = f"""
UPDATE {IDEMPOTENCY_TABLE}
SET status = 'submitted', payload_json = ?, result_hash = ?, updated_at = ?, failure_json = NULL"""

_CAS: Final = "idempotency_key = ? AND request_hash = ? AND status = 'pending_writer'"

_COMPLETE: Final = f"{_COMPLETE_SET}\nWHERE {_CAS}"

_CLEAR: Final = f"DELETE FROM {IDEMPOTENCY_TABLE}\nWHERE {_CAS}"

# The same compare-and-set, reaching the row through its rowid instead of the key's index.
_COMPLETE_AT: Final = f"{_COMPLETE_SET}\nWHERE rowid = ? AND {_CAS}"

_CLEAR_AT: Final = f"DELETE FROM {IDEMPOTENCY_TABLE}\nWHERE rowid = ? AND {_CAS}"

_PROBE_WRITE: Final = f"UPDATE {IDEMPOTENCY_TABLE} SET status = status WHERE 0"

_T = TypeVar("_T")

#: How often a ``BEGIN IMMEDIATE`` that found the database locked past the busy timeout is tried
#: again before the run gives up with exit 4.
BUSY_RETRIES: Final = 3

#: WAL size, in pages, past which a commit of the writer checkpoints (SQLite's default is
#: 1000). Every checkpoint ends in an fsync of the database; at the default a run spends more
#: time in them than in its statements. The gateway's connections keep their own threshold.
WRITER_AUTOCHECKPOINT_PAGES: Final = 10_000


def storage_error(exc: sqlite3.Error, path: Path, action: str) -> StorageError:
    """Translate a ``sqlite3`` error into a :class:`StorageError` with a message for operators."""
    text = str(exc)
    code = getattr(exc, "sqlite_errorname", "")
    if "locked" in text or "busy" in text.lower():
        hint = "another process holds the write lock; retry when the gateway is idle"
    elif "not a database" in text or "malformed" in text or code == "SQLITE_CORRUPT":
        hint = "the file is corrupt; restore it from a backup"
    elif "readonly" in text or "read-only" in text:
        hint = "the file or its folder is read-only; the tool needs to write the -wal/-shm files"
    elif "disk" in text or "full" in text:
        hint = "disk I/O error: check free space and the file system"
    else:
        hint = "SQLite error"
    return StorageError(f"{action} {path}: {text} ({hint})")


def require_database(path: Path) -> None:
    """Refuse a path that is not an existing file: the tool never creates a database."""
    if not path.exists():
        raise ConfigError(f"database {path} does not exist (it is never created; check the path)")
    if not path.is_file():
        raise ConfigError(f"database {path} is not a file")


def connect(path: Path, *, busy_timeout: float) -> sqlite3.Connection:
    """Open ``path`` read-write without ever creating it."""
    uri = f"file:{quote(str(path.absolute()))}?mode=rw"
    try:
        conn = sqlite3.connect(
            uri, uri=True, timeout=busy_timeout, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA synchronous = NORMAL")
    except sqlite3.Error as exc:
        raise storage_error(exc, path, "cannot open") from exc
    return conn


class Store:
    """The gateway database: one connection for reading pages, one for writing batches.

    Each connection is used by one thread at a time (the pipeline serialises calls per
    connection), so ``check_same_thread`` is off.
    """

    def __init__(self, path: Path, *, busy_timeout: float = 5.0) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self._lock_fd: int | None = None
        self._committed = False
        self._pages: _PageQueries | None = None
        self._reader = connect(path, busy_timeout=busy_timeout)
        self._writer = connect(path, busy_timeout=busy_timeout)
        try:
            self._writer.execute(f"PRAGMA wal_autocheckpoint = {WRITER_AUTOCHECKPOINT_PAGES}")
        except sqlite3.Error as exc:
            self.close()
            raise storage_error(exc, path, "cannot open") from exc
        self.db = sqlite_utils.Database(self._reader)

    def close(self) -> None:
        if self._committed:
            self._checkpoint_wal()
        self._reader.close()
        self._writer.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _checkpoint_wal(self) -> None:
        """Move the run's frames from the WAL into the database file before closing.

        Closing the last connection does it anyway; beside a gateway it does not, and the
        gateway's next commit would checkpoint up to ``WRITER_AUTOCHECKPOINT_PAGES`` of them.
        ``PASSIVE`` never waits for the gateway (``RESTART``/``TRUNCATE`` block its writers).
        A failure loses nothing: the batches are committed in the WAL.
        """
        self._committed = False
        with contextlib.suppress(sqlite3.Error):
            self._writer.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def lock_run(self) -> None:
        """Take the run lock: one writing ``ibkr-recover`` run per database at a time.

        An advisory ``flock`` on the database file itself; SQLite's own locks are POSIX
        record locks, which ``flock`` does not touch, so the gateway is unaffected. The lock
        goes away with the process, however it ends.
        """
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StorageError(
                f"another ibkr-recover run is recovering {self.path}; "
                "wait for it to finish (runs never overlap)"
            ) from None
        self._lock_fd = fd

    # -- checks -------------------------------------------------------------------------------

    def check(self, *, integrity: bool = True) -> None:
        """Refuse a database that is corrupt or lacks the gateway's table or columns.

        Raises
        ------
        StorageError
            Not a SQLite file, or ``PRAGMA quick_check`` fails.
        SchemaError
            The table or one of its columns is missing.
        """
        try:
            if integrity:
                problems = [row[0] for row in self._reader.execute("PRAGMA quick_check(5)")]
                if problems != ["ok"]:
                    raise StorageError(
                        f"{self.path} failed PRAGMA quick_check: {'; '.join(problems)} "
                        "(the file is corrupt; restore it from a backup)"
                    )
            tables = set(self.db.table_names())
            if IDEMPOTENCY_TABLE not in tables:
                raise SchemaError(
                    f"{self.path} has no table {IDEMPOTENCY_TABLE!r}: "
                    "it is not an ibkr-agent-gateway database"
                )
            columns = set(self.db[IDEMPOTENCY_TABLE].columns_dict)
        except sqlite3.Error as exc:
            raise storage_error(exc, self.path, "cannot read") from exc
        missing = [name for name in IDEMPOTENCY_COLUMNS if name not in columns]
        if missing:
            raise SchemaError(
                f"table {IDEMPOTENCY_TABLE!r} in {self.path} lacks column(s) {', '.join(missing)}"
            )

    def check_writable(self) -> None:
        """Fail before any broker call when the file or its folder is read-only.

        ``BEGIN IMMEDIATE`` alone does not tell: on a read-only file SQLite quietly starts a
        read transaction instead. A statement that writes nothing but needs the write lock
        does tell, and the rollback leaves the file as it was.
        """
        self._begin_immediate()
        try:
            self._writer.execute(_PROBE_WRITE)
        except sqlite3.Error as exc:
            raise storage_error(exc, self.path, "cannot write") from exc
        finally:
            if self._writer.in_transaction:
                self._writer.execute("ROLLBACK")

    def ensure_scan_index(self) -> None:
        """Create the partial index over pending rows that makes every page an index range scan."""
        try:
            self._writer.execute(PENDING_INDEX_DDL)
        except sqlite3.Error as exc:
            raise storage_error(exc, self.path, "cannot index") from exc

    def backup(self, target: Path) -> None:
        """Copy the database to ``target`` with SQLite's online backup API (mode 0600).

        Refuses to overwrite an existing file. The copy is consistent even while the gateway
        writes: the backup API restarts when the source changes under it.
        """
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise ConfigError(f"backup {target} already exists; it is never overwritten") from None
        except OSError as exc:
            raise ConfigError(f"cannot create backup {target}: {exc.strerror}") from exc
        os.close(fd)
        try:
            copy = sqlite3.connect(target)
            try:
                self._reader.backup(copy)
            finally:
                copy.close()
        except sqlite3.Error as exc:
            target.unlink(missing_ok=True)
            raise storage_error(exc, target, "cannot back up to") from exc

    # -- reading ------------------------------------------------------------------------------

    def count_pending(self) -> int:
        """How many ``pending_writer`` rows there are now."""
        try:
            query = f"SELECT count(*) FROM {IDEMPOTENCY_TABLE} WHERE status = 'pending_writer'"
            (count,) = self._reader.execute(query).fetchone()
        except sqlite3.Error as exc:
            raise storage_error(exc, self.path, "cannot read") from exc
        return int(count)

    def read_page(self, after: PendingRow | None, limit: int) -> list[PendingRow]:
        """The next ``limit`` pending rows after ``after``, the last row of the page before.

        Oldest first (``(created_at, key)`` order) through the scan index; in key order while
        the database has no scan index (:meth:`ensure_scan_index`, which a dry run never
        calls), where each page in created_at order would cost a sort of the whole table.
        """
        try:
            pages = self._pages or self._choose_page_queries()
            if after is None:
                cursor = self._reader.execute(pages.first, (limit,))
            else:
                cursor = self._reader.execute(pages.following, (*pages.position(after), limit))
            page = [PendingRow(*row) for row in cursor]
        except sqlite3.Error as exc:
            raise storage_error(exc, self.path, "cannot read") from exc
        _crash.checkpoint("page read")
        return page

    def _choose_page_queries(self) -> _PageQueries:
        # A WITHOUT ROWID table has no rowid, and a column named ``rowid`` would shadow it:
        # either way pages carry NULL and the writer addresses those rows by key alone.
        columns = {row[1].lower() for row in self._reader.execute(_TABLE_XINFO)}
        rowid = "NULL"
        if "rowid" not in columns:
            try:
                self._reader.execute(_PROBE_ROWID)
            except sqlite3.OperationalError as exc:
                if "no such column" not in str(exc):
                    raise
            else:
                rowid = "rowid"
        indexed = self._reader.execute(
            _PROBE_SCAN_INDEX, (PENDING_INDEX_NAME, IDEMPOTENCY_TABLE)
        ).fetchone()
        if indexed:
            pages = _PageQueries(_BY_AGE, _by_age, rowid)
        else:
            pages = _PageQueries(_BY_KEY, _by_key, rowid)
        self._pages = pages
        return pages

    # -- writing ------------------------------------------------------------------------------

    def _begin_immediate(self) -> None:
        for attempt in range(BUSY_RETRIES + 1):
            try:
                self._writer.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if "locked" in str(exc) and attempt < BUSY_RETRIES:
                    time.sleep(0.05 * (attempt + 1))
                    continue
                raise storage_error(exc, self.path, "cannot write") from exc
            else:
                return

    def apply(self, outcomes: Sequence[Outcome], now: int) -> list[bool]:
        """Write completions and clears in one transaction; return whether each was applied.

        Every statement is compare-and-set: a row changed by someone else since it was read
        (another status, another request hash, deleted) is left as it is and reported ``False``.
        The transaction is all-or-nothing: on any error it is rolled back and
        :class:`StorageError` is raised.
        """
        completes = _by_rowid([o for o in outcomes if o.decision == "complete"])
        clears = _by_rowid([o for o in outcomes if o.decision == "clear"])
        if self._transaction(lambda: self._apply_all(completes, clears, now)):
            return [o.decision == "complete" or o.decision == "clear" for o in outcomes]
        # Someone changed rows since we read them; the batch was rolled back whole and a second
        # transaction finds out which, one statement each. (A savepoint would keep the first one,
        # but SQLite then copies every page the batch touches to a sub-journal, a temporary file
        # past 64 KiB: ~25 % of the writer's CPU in created_at order, for a rare case.)
        applied = self._transaction(lambda: self._apply_each(completes, clears, now))
        by_id = dict(zip([id(o) for o in completes + clears], applied, strict=True))
        return [by_id.get(id(o), False) for o in outcomes]

    def _transaction(self, work: Callable[[], _T]) -> _T:
        """Run ``work`` in one ``BEGIN IMMEDIATE`` transaction, rolled back if it returns
        ``False`` or raises, committed otherwise."""
        self._begin_immediate()
        try:
            _crash.checkpoint("after BEGIN IMMEDIATE")
            result = work()
            kept = result is not False
            self._writer.execute("COMMIT" if kept else "ROLLBACK")
        except BaseException as exc:
            if self._writer.in_transaction:
                self._writer.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise storage_error(exc, self.path, "cannot write") from exc
            raise
        if kept:
            self._committed = True
            _crash.checkpoint("after COMMIT")
        return result

    def _apply_all(self, completes: list[Outcome], clears: list[Outcome], now: int) -> bool:
        """Every statement of the batch, ``executemany`` per kind; whether all hit their row.

        A statement addressed by rowid misses when the row has moved (re-inserted, ``VACUUM``)
        as well as when it has changed; :meth:`_apply_each` then settles it by key alone.
        """
        executemany = self._writer.executemany
        checkpoints = _Checkpoints()
        at, by_key = _split(completes)
        statements = [(_COMPLETE_AT, _complete_at(at, now)), (_COMPLETE, _complete(by_key, now))]
        at, by_key = _split(clears)
        statements += [(_CLEAR_AT, _clear_at(at)), (_CLEAR, _clear(by_key))]
        changed = 0
        for sql, params in statements:
            if params:
                changed += executemany(sql, checkpoints.each(params)).rowcount
        return changed == len(completes) + len(clears)

    def _apply_each(self, completes: list[Outcome], clears: list[Outcome], now: int) -> list[bool]:
        execute = self._writer.execute
        applied = [execute(_COMPLETE, p).rowcount == 1 for p in _complete(completes, now)]
        applied += [execute(_CLEAR, p).rowcount == 1 for p in _clear(clears)]
        return applied


class _PageQueries:
    """The two page queries of the scan order by ``columns``, and a row's position in it."""

    def __init__(
        self,
        columns: tuple[str, ...],
        position: Callable[[PendingRow], tuple[object, ...]],
        rowid: str,
    ) -> None:
        order = ", ".join(columns)
        keyset = f" AND ({order}) > ({', '.join('?' for _ in columns)})"
        self.first = _SELECT_PAGE.format(rowid=rowid, after="", order=order)
        self.following = _SELECT_PAGE.format(rowid=rowid, after=keyset, order=order)
        self.position = position


def _by_age(row: PendingRow) -> tuple[object, ...]:
    return row.created_at, row.key


def _by_key(row: PendingRow) -> tuple[object, ...]:
    return (row.key,)


def _by_rowid(outcomes: list[Outcome]) -> list[Outcome]:
    # Statements in rowid order walk the table's b-tree front to back (rows without one first).
    outcomes.sort(key=_rowid_order)
    return outcomes


def _rowid_order(outcome: Outcome) -> int:
    return -1 if outcome.rowid is None else outcome.rowid


def _split(outcomes: list[Outcome]) -> tuple[list[Outcome], list[Outcome]]:
    """Those that carry a rowid, and those that do not (first in rowid order)."""
    keyed = 0
    while keyed < len(outcomes) and outcomes[keyed].rowid is None:
        keyed += 1
    return outcomes[keyed:], outcomes[:keyed]


def _complete(outcomes: list[Outcome], now: int) -> list[tuple[object, ...]]:
    return [(o.payload_json, o.result_hash, now, o.key, o.request_hash) for o in outcomes]


def _complete_at(outcomes: list[Outcome], now: int) -> list[tuple[object, ...]]:
    return [(o.payload_json, o.result_hash, now, o.rowid, o.key, o.request_hash) for o in outcomes]


def _clear(outcomes: list[Outcome]) -> list[tuple[object, ...]]:
    return [(o.key, o.request_hash) for o in outcomes]


def _clear_at(outcomes: list[Outcome]) -> list[tuple[object, ...]]:
    return [(o.rowid, o.key, o.request_hash) for o in outcomes]


class _Checkpoints:
    """The crash hook between any two statements of a batch (a no-op unless it is armed)."""

    def __init__(self) -> None:
        self._first = True

    def each(self, params: list[tuple[object, ...]]) -> Iterable[tuple[object, ...]]:
        if not _crash.enabled():
            return params
        return self._between(params)

    def _between(self, params: list[tuple[object, ...]]) -> Iterator[tuple[object, ...]]:
        for p in params:
            if not self._first:
                _crash.checkpoint("between statements")
            self._first = False
            yield p


_SUMMARY_BY_STATUS: Final = f"""
SELECT status,
       CASE WHEN json_valid(payload_json) THEN json_extract(payload_json, '$.workflow') END,
       CASE WHEN json_valid(payload_json) THEN json_extract(payload_json, '$.operation') END,
       count(*)
FROM {IDEMPOTENCY_TABLE}
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3"""

_SUMMARY_PENDING_AGES: Final = f"""
SELECT CASE
         WHEN typeof(created_at) NOT IN ('integer', 'real') THEN 'bad_timestamp'
         WHEN :now - created_at < :min_age THEN 'lt_min_age'
         WHEN :now - created_at < 3600 THEN 'lt_1h'
         WHEN :now - created_at < 86400 THEN 'lt_1d'
         WHEN :now - created_at < :max_clear_age THEN 'lt_max_clear_age'
         ELSE 'older'
       END,
       count(*)
FROM {IDEMPOTENCY_TABLE}
WHERE status = 'pending_writer'
GROUP BY 1"""

_SUMMARY_PENDING_ACCOUNTS: Final = f"""
SELECT CASE WHEN json_valid(payload_json) THEN json_extract(payload_json, '$.account_id') END,
       count(*)
FROM {IDEMPOTENCY_TABLE}
WHERE status = 'pending_writer'
GROUP BY 1"""

_SUMMARY_OLDEST: Final = f"""
SELECT min(created_at) FROM {IDEMPOTENCY_TABLE}
WHERE status = 'pending_writer' AND typeof(created_at) IN ('integer', 'real')"""


class SummaryRows(msgspec.Struct):
    """Raw aggregates for ``ibkr-recover pending``; the caller formats and masks them."""

    by_status: list[tuple[str, object, object, int]]
    ages: dict[str, int]
    accounts: list[tuple[object, int]]
    oldest_created_at: float | None


def summarise(store: Store, *, now: float, min_age: float, max_clear_age: float) -> SummaryRows:
    """Count rows by status, workflow and operation, and pending rows by age and account."""
    conn = store._reader
    args = {"now": now, "min_age": min_age, "max_clear_age": max_clear_age}
    try:
        by_status = [tuple(row) for row in conn.execute(_SUMMARY_BY_STATUS)]
        ages = dict(conn.execute(_SUMMARY_PENDING_AGES, args).fetchall())
        accounts = [tuple(row) for row in conn.execute(_SUMMARY_PENDING_ACCOUNTS)]
        (oldest,) = conn.execute(_SUMMARY_OLDEST).fetchone()
    except sqlite3.Error as exc:
        raise storage_error(exc, store.path, "cannot read") from exc
    return SummaryRows(by_status, ages, accounts, oldest)
