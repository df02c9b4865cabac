"""The metadata store on PostgreSQL, for several Atoll nodes sharing one namespace. The methods are
``SqlMetaStore``'s (atoll/stores/meta/sql.py); this module supplies the engine.

psycopg 3, synchronous connections, one per thread of two small pools (writes; reads, so that a read never queues
behind writes waiting for a lock): every read and every write runs on a pool thread, never on the event loop.
Connections are in autocommit; a write is one explicit transaction, READ COMMITTED, run again from the start when
PostgreSQL aborts it for a serialization failure or a deadlock (the write functions have no effect outside their
transaction). Counter rows every write shares (a bucket's usage and warm bytes, a segment's live bytes,
resident_bytes) are not updated as the write goes: the triggers collect the changes and the round trip that
commits applies them, summed, in one global order (pg_schema.V6_DEFERRED_COUNTS), so writers never lock them in
opposite orders (deadlocks) nor hold them for more than that round trip (convoys). Read-check-writes take ``lock_key`` (a transaction-scoped
advisory lock) before they read; claims of shared work select with ``FOR UPDATE SKIP LOCKED`` and re-check in
their UPDATE, so two nodes never claim one entry.

No read cache: a write acknowledged by one node must be visible to a read on any other at once, and every
read here asks the database (a primary-key lookup on a pooled connection, ~0.1 ms).

Text columns are ``COLLATE "C"`` (pg_schema.py): byte order of UTF-8, S3's key order, as SQLite's BINARY.

Errors: the segment fence (a trigger raising ``atoll: segment closed``) is ``errors.SegmentClosed``; anything
else the database says is ``errors.Unavailable`` (retryable), and a connection that broke is replaced on its next
use. Messages and logs name the error class and SQLSTATE, never the URL (it may hold a password).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import errors as pg_errors

from atoll import errors
from atoll.stores.meta import migrations, sql_segments
from atoll.stores.meta.dsn import redact
from atoll.stores.meta.sql import SqlMetaStore

log = logging.getLogger("atoll.meta.postgres")

DEFAULT_POOL_SIZE = 8
_POOL_PARAM = "pool_size"  # ?pool_size=N in the URL: Atoll's, removed before libpq sees the URL
_WRITE_ATTEMPTS = 8
# Aborted for a conflict with a concurrent transaction: running the write again resolves it.
_RETRYABLE = (pg_errors.SerializationFailure, pg_errors.DeadlockDetected, pg_errors.UniqueViolation,
              pg_errors.LockNotAvailable)


@functools.lru_cache(maxsize=4096)
def _pg_sql(sql: str) -> str:
    """Portable ``?`` placeholders as psycopg's ``%s`` (a literal ``%`` doubled)."""
    return sql.replace("%", "%%").replace("?", "%s")


def _pg_params(params: Any) -> tuple:
    # Integer columns (is_root, visited) are BIGINT on PostgreSQL, which does not take a boolean for them.
    params = tuple(params)
    if any(type(p) is bool for p in params):
        params = tuple(int(p) if type(p) is bool else p for p in params)
    return params


# A write's transaction: its counter changes are collected (pg_schema.V6_DEFERRED_COUNTS) and applied in one
# order in the round trip that commits, so the rows every write shares are locked for that round trip only.
_BEGIN_WRITE = "BEGIN ISOLATION LEVEL READ COMMITTED; SELECT set_config('atoll.defer_counts', 'on', true)"
_COMMIT_WRITE = "SELECT atoll_apply_counts(); COMMIT"
_DELTAS_TABLE = ('CREATE TEMP TABLE IF NOT EXISTS atoll_deltas (kind INT NOT NULL, name TEXT COLLATE "C", '
                 "delta_bytes BIGINT NOT NULL, delta_items BIGINT NOT NULL) ON COMMIT DELETE ROWS")
_RESIDENT_BYTES = 4  # atoll_count's kind of a row of the counters table


class _Conn:
    """A psycopg connection with the DB-API-like face the SQL layer writes against (``?`` placeholders)."""

    __slots__ = ("raw", "resident_delta")

    def __init__(self, raw: psycopg.Connection) -> None:
        self.raw = raw
        self.resident_delta = 0  # resident_bytes change of the write in progress, applied with its commit

    def add_resident_bytes(self, delta: int) -> None:
        """``counters.resident_bytes`` += delta at commit: every write of every bucket changes that one row."""
        self.resident_delta += delta

    def apply_counts(self) -> None:
        """Apply the counter changes the triggers collected so far (before reading a counter inside the write).
        resident_bytes waits for the commit: no write reads it, and every write shares its row."""
        self.raw.execute("SELECT atoll_apply_counts()")

    def commit_write(self) -> None:
        self.raw.execute(self._pending() + _COMMIT_WRITE)

    def _pending(self) -> str:
        delta, self.resident_delta = self.resident_delta, 0
        if not delta:
            return ""
        return f"INSERT INTO pg_temp.atoll_deltas VALUES ({_RESIDENT_BYTES}, 'resident_bytes', {int(delta)}, 0); "

    def execute(self, sql: str, params: Any = ()) -> psycopg.Cursor:
        # Always a tuple, even empty: psycopg then parses the query, so a doubled %% means one %.
        return self.raw.execute(_pg_sql(sql), _pg_params(params))

    def executemany(self, sql: str, seq: Any) -> psycopg.Cursor:
        cursor = self.raw.cursor()
        cursor.executemany(_pg_sql(sql), [_pg_params(p) for p in seq])
        return cursor


def split_pool_size(url: str) -> tuple[str, int | None]:
    """(the URL libpq may see, the pool size its ``pool_size`` query parameter asked for)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    sizes = [v for k, v in query if k == _POOL_PARAM]
    if not sizes:
        return url, None
    try:
        size = int(sizes[-1])
    except ValueError:
        raise ValueError(f"metadata: {_POOL_PARAM} must be a whole number, got {sizes[-1]!r}") from None
    if not 1 <= size <= 256:
        raise ValueError(f"metadata: {_POOL_PARAM} must be 1 to 256, got {size}")
    rest = urlencode([(k, v) for k, v in query if k != _POOL_PARAM])
    return urlunsplit((parts.scheme, parts.netloc, parts.path, rest, parts.fragment)), size


class PostgresMetaStore(SqlMetaStore):
    """See ``atoll.stores.meta.base.MetaStore`` for the contract of every method."""

    SKIP_LOCKED = " FOR UPDATE SKIP LOCKED"
    FOR_UPDATE = " FOR UPDATE"
    FOR_KEY_SHARE = " FOR KEY SHARE"
    PACKED_EXTENTS = ('SELECT r.segment_id AS seg, r."offset" AS off, r.length AS len, o.bucket AS bucket, '
                      "o.key AS key FROM objects o, atoll_packed_refs_of(o.extents) AS r "
                      "WHERE strpos(o.extents, '[\"s') > 0")
    EXTENT_BLOB_IDS = "SELECT e.v ->> 0 FROM objects, json_array_elements(objects.extents::json) AS e(v)"

    def __init__(self, url: str, *, pool_size: int | None = None, auto_upgrade: bool = False) -> None:
        self._url, from_url = split_pool_size(url)
        self.path = redact(url)  # what messages may show of where the store is
        self.pool_size = pool_size or from_url or DEFAULT_POOL_SIZE
        self.auto_upgrade = auto_upgrade
        self._pool: ThreadPoolExecutor | None = None
        self._read_pool: ThreadPoolExecutor | None = None
        self.write_retries = 0  # writes run again after a conflict (deadlock, serialization failure): should stay ~0
        self._local = threading.local()
        self._conns: set[psycopg.Connection] = set()
        self._conns_lock = threading.Lock()

    # lifecycle -------------------------------------------------------------------------------------------
    def _connect(self) -> psycopg.Connection:
        try:
            return psycopg.connect(self._url, autocommit=True, application_name="atoll", connect_timeout=10)
        except psycopg.Error as exc:
            raise _store_error(exc) from None

    def _connect_pooled(self) -> psycopg.Connection:
        raw = self._connect()
        try:
            raw.execute(_DELTAS_TABLE)
        except psycopg.Error as exc:
            raw.close()
            raise _store_error(exc) from None
        return raw

    def open_sync(self) -> None:
        conn = self._connect()
        try:
            if self.auto_upgrade:
                migrations.upgrade_postgres(conn)
            else:
                migrations.check_postgres(conn)
        except psycopg.Error as exc:
            raise _store_error(exc) from None
        finally:
            conn.close()
        self._pool = ThreadPoolExecutor(max_workers=self.pool_size, thread_name_prefix="atoll-meta-pg")
        # Reads have threads (and connections) of their own: a read must not queue behind writes that wait for a
        # lock (a burst of writes to one key or one bucket), only behind other reads.
        self._read_pool = ThreadPoolExecutor(max_workers=self.pool_size, thread_name_prefix="atoll-meta-pg-read")

    def close_sync(self) -> None:
        for pool in (self._pool, self._read_pool):
            if pool is not None:
                pool.shutdown(wait=True)
        self._pool = self._read_pool = None
        with self._conns_lock:
            conns, self._conns = self._conns, set()
        for conn in conns:
            conn.close()

    def _conn(self) -> _Conn:
        """This pool thread's connection, made (again) when it has none or its last one broke."""
        conn: _Conn | None = getattr(self._local, "conn", None)
        if conn is not None and not conn.raw.closed:
            return conn
        raw = self._connect_pooled()
        with self._conns_lock:
            self._conns.add(raw)
        conn = self._local.conn = _Conn(raw)
        return conn

    def _drop_if_broken(self, conn: _Conn) -> None:
        if conn.raw.broken or conn.raw.closed:
            with self._conns_lock:
                self._conns.discard(conn.raw)
            conn.raw.close()
            self._local.conn = None

    # engine hooks (atoll/stores/meta/sql.py) -------------------------------------------------------------
    def _run_read(self, fn: Callable[[_Conn], Any], snapshot: bool = False) -> Any:
        for attempt in range(2):
            conn = self._conn()
            try:
                if not snapshot:
                    return fn(conn)
                with conn.raw.transaction():
                    conn.raw.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                    return fn(conn)
            except psycopg.Error as exc:
                self._drop_if_broken(conn)
                # A read is safe to repeat: once on a new connection when the old one was lost (a restart).
                if attempt == 0 and isinstance(exc, psycopg.OperationalError):
                    continue
                raise _store_error(exc) from None
        raise AssertionError("unreachable")

    def _run_write(self, fn: Callable[[_Conn], Any]) -> Any:
        delay = 0.002
        for attempt in range(_WRITE_ATTEMPTS):
            conn = self._conn()
            conn.resident_delta = 0
            try:
                conn.raw.execute(_BEGIN_WRITE)
                try:
                    result = fn(conn)
                    conn.commit_write()
                except BaseException:
                    if not conn.raw.broken and not conn.raw.closed:
                        conn.raw.execute("ROLLBACK")
                    raise
                return result
            except psycopg.Error as exc:
                self._drop_if_broken(conn)
                if isinstance(exc, _RETRYABLE) and attempt < _WRITE_ATTEMPTS - 1:
                    self.write_retries += 1
                    log.debug("write retried after %s", exc.__class__.__name__)
                    time.sleep(delay * (0.5 + random.random()))
                    delay = min(delay * 2, 0.2)
                    continue
                raise _store_error(exc) from None
        raise AssertionError("unreachable")

    async def _in_pool(self, run: Callable[..., Any], *args: Any, reading: bool = False) -> Any:
        pool = self._read_pool if reading else self._pool
        if pool is None:
            raise errors.Unavailable("metadata store is closed")
        return await asyncio.get_running_loop().run_in_executor(pool, run, *args)

    async def _read(self, fn: Callable[[_Conn], Any]) -> Any:
        return await self._in_pool(self._run_read, fn, reading=True)

    async def _read_in_pool(self, fn: Callable[[_Conn], Any]) -> Any:
        return await self._in_pool(self._run_read, fn, reading=True)

    async def _read_snapshot(self, fn: Callable[[_Conn], Any]) -> Any:
        return await self._in_pool(self._run_read, fn, True, reading=True)

    async def _write(self, fn: Callable[[_Conn], Any]) -> Any:
        return await self._in_pool(self._run_write, fn)

    def _write_blocking(self, fn: Callable[[_Conn], Any]) -> Any:
        if self._pool is None:
            raise errors.Unavailable("metadata store is closed")
        return self._pool.submit(self._run_write, fn).result()

    def lock_key(self, conn: _Conn, *parts: str) -> None:
        # 64-bit hash of the parts: two row sets sharing a hash merely queue behind each other.
        conn.raw.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", ("\x1f".join(parts),))

    def _exclude_writers(self, conn: _Conn) -> _Conn:
        # SHARE conflicts with the ROW EXCLUSIVE every INSERT, UPDATE and DELETE takes, not with reads.
        conn.raw.execute("LOCK TABLE objects, parts, uploads, blocks IN SHARE MODE")
        return conn


def _store_error(exc: psycopg.Error) -> errors.AtollError:
    """A failed statement, commit or connection as a core error. The message never holds the server's text in
    full: a connection error may quote the connection string."""
    if sql_segments.is_segment_closed(getattr(exc.diag, "message_primary", None) or ""):
        return errors.SegmentClosed("A packed record's segment was closed by compaction; retry.")
    sqlstate = getattr(exc, "sqlstate", None) or ""
    log.warning("metadata store error %s %s", exc.__class__.__name__, sqlstate)
    if isinstance(exc, psycopg.OperationalError) or sqlstate.startswith(("08", "57P", "53")):
        # lost connection (08), shutdown (57P01..03), out of disk/memory/connections (53)
        return errors.Unavailable(f"metadata store unavailable: {exc.__class__.__name__}", retry_after=2)
    return errors.Unavailable(f"metadata store error: {exc.__class__.__name__}")
