"""The embedded metadata store: SQLite in WAL mode, ``synchronous=FULL``. The methods are ``SqlMetaStore``'s
(atoll/stores/meta/sql.py); this module supplies the engine.

Reads of single rows run inline on the calling (event-loop) thread: a point lookup on a WITHOUT ROWID table in
the page cache costs about 10 µs, less than a hop to a thread. Listings run on a small reader pool.

All writes go to one writer thread per process, which *group-commits*: it takes every write waiting in its queue,
runs each inside its own SAVEPOINT (so one failing condition does not undo its neighbours) and commits them
with a single fsync. Several processes (``--workers N``, or cluster nodes on one host) share the file; SQLite's
lock serialises their writers and ``busy_timeout`` makes them wait instead of failing. Writers are serialised, so
``lock_key`` is a no-op and claims need no SKIP LOCKED.

SQLite specifics stay here: TEXT compares with BINARY collation, i.e. memcmp over UTF-8, which is S3's key order.
"""

from __future__ import annotations

import asyncio
import fcntl
import mmap
import os
import queue
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from atoll import errors
from atoll.core.models import ObjectVersion
from atoll.stores.meta import migrations, sql_segments
from atoll.stores.meta.sql import SqlMetaStore
from atoll.stores.meta.sql_rows import OBJECT_COLUMNS, row_to_version

# The schema is migrations.py's, applied at every open (the embedded store upgrades itself).
SCHEMA_VERSION = migrations.LATEST


def _connect(path: str, *, readonly: bool = False) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA busy_timeout = 30000")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = OFF")
    conn.execute("PRAGMA cache_size = -65536")
    conn.execute("PRAGMA recursive_triggers = ON")  # a REPLACE's implicit delete must reach the usage triggers
    if readonly:
        conn.execute("PRAGMA query_only = 1")
    return conn


_BATCH_MAX = 512
_VERSION_CACHE_ENTRIES = 65536
_TOKEN_FILE_SIZE = 4096
_MISS = object()


class ChangeToken:
    """An 8-byte token in a shared memory-mapped file that every committer replaces after each commit.

    Readers keep caches valid while the token is unchanged: reading it costs a memory access, where asking
    SQLite (``PRAGMA data_version``) costs a read transaction with two fcntl locks and a stat per request. A
    committer writes a fresh random token, not an increment, so two processes committing at once can never
    write back the value a reader already saw. The token is also replaced when a store opens, which covers a
    process that died between its commit and its token write; the read path additionally confirms with
    ``data_version`` every ``CONFIRM_INTERVAL`` seconds as a last line of defence.
    """

    CONFIRM_INTERVAL = 0.1

    def __init__(self, path: str) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if os.fstat(fd).st_size < _TOKEN_FILE_SIZE:
                # Allocated, not a sparse ftruncate: storing into a hole of a mapping on a full disk is a SIGBUS,
                # where this fails at open with ENOSPC.
                os.posix_fallocate(fd, 0, _TOKEN_FILE_SIZE)
            self._map = mmap.mmap(fd, _TOKEN_FILE_SIZE)
        finally:
            os.close(fd)
        self.replace()

    def read(self) -> bytes:
        return self._map[0:8]

    def replace(self) -> None:
        self._map[0:8] = os.urandom(8)

    def close(self) -> None:
        self._map.close()


class _GroupCommitWriter(threading.Thread):
    """Runs write functions in batches: one transaction and one fsync per batch, a savepoint per function."""

    def __init__(self, path: str, token: ChangeToken) -> None:
        super().__init__(name="atoll-meta-writer", daemon=True)
        self._path = path
        self._token = token
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._started = threading.Event()
        self._error: BaseException | None = None

    def run(self) -> None:
        conn = _connect(self._path)
        # Writers of several processes (--workers N, the CLI) queue on this lock, not on SQLite's: a writer that
        # finds SQLite's write lock taken polls it with sleeps growing to 100 ms, so under a steady stream of
        # commits from another process it can starve for seconds (a PUT storm on two workers: p99 2.1 s). The
        # kernel hands a released flock to a waiter at once.
        self._lock_fd = os.open(self._path + "-writer.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._started.set()
        while True:
            item = self._queue.get()
            if item is None:
                break
            batch = [item]
            stop = False
            while len(batch) < _BATCH_MAX:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            self._run_batch(conn, batch)
            if stop:
                break
        conn.close()
        os.close(self._lock_fd)

    def _run_batch(self, conn: sqlite3.Connection, batch: list) -> None:
        outcomes: list[tuple[Any, Any, BaseException | None, Any]] = []
        full: errors.AtollError | None = None
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            conn.execute("BEGIN IMMEDIATE")
            for fn, fut, loop in batch:
                conn.execute("SAVEPOINT op")
                try:
                    result = fn(conn)
                except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
                    if isinstance(exc, sqlite3.Error):
                        exc = _store_error(exc)
                        if isinstance(exc, errors.InsufficientStorage):
                            # SQLite may have rolled the whole transaction back already, and then the
                            # savepoint is gone: the batch fails, for want of space, not for that.
                            full = exc
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    outcomes.append((fut, loop, exc, None))
                else:
                    conn.execute("RELEASE op")
                    outcomes.append((fut, loop, None, result))
            conn.execute("COMMIT")
            self._token.replace()  # before anyone learns of the commit, so no reader can cache across it
        except sqlite3.Error as exc:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # already rolled back by SQLite itself (a full disk does that)
            failure = full or _store_error(exc)
            outcomes = [(fut, loop, failure, None) for fn, fut, loop in batch]
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        for fut, loop, exc, result in outcomes:
            loop.call_soon_threadsafe(_settle, fut, exc, result)

    def submit(self, fn: Callable[[sqlite3.Connection], Any]) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._queue.put((fn, fut, loop))
        return fut

    def submit_blocking(self, fn: Callable[[sqlite3.Connection], Any]):
        """For callers without a running loop (CLI, tools): wait on a thread-safe future."""
        import concurrent.futures

        cf: concurrent.futures.Future = concurrent.futures.Future()

        class _Shim:
            @staticmethod
            def call_soon_threadsafe(cb, fut, exc, result):
                cb(fut, exc, result)

        self._queue.put((fn, cf, _Shim))
        return cf.result()

    def stop(self) -> None:
        self._queue.put(None)
        self.join()


def _store_error(exc: sqlite3.Error) -> errors.AtollError:
    """A failed statement or commit as a core error: a full disk (SQLITE_FULL, "database or disk is full") is
    InsufficientStorage, like a blob write that finds no room; anything else is Unavailable. Both are retried by
    clients; the connection stays usable (the failed transaction is rolled back, the WAL's uncommitted frames
    are overwritten by the next commit)."""
    if sql_segments.is_segment_closed(exc):
        return errors.SegmentClosed("A packed record's segment was closed by compaction; retry.")
    if getattr(exc, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_FULL or "disk is full" in str(exc):
        return errors.InsufficientStorage("The metadata store is out of disk space; retry later.", retry_after=5)
    return errors.Unavailable(f"metadata store error: {exc.__class__.__name__}")


def _settle(fut, exc, result) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)


class SqliteMetaStore(SqlMetaStore):
    """See ``atoll.stores.meta.base.MetaStore`` for the contract of every method."""

    PACKED_EXTENTS = ("SELECT e.value ->> 0 AS seg, e.value ->> 1 AS off, e.value ->> 2 AS len, o.bucket AS bucket, "
                      "o.key AS key FROM objects o, json_each(o.extents) AS e "
                      "WHERE instr(o.extents, '[\"s') > 0 AND substr(e.value ->> 0, 1, 1) = 's'")
    EXTENT_BLOB_IDS = "SELECT e.value ->> 0 FROM objects, json_each(objects.extents) AS e"

    def __init__(self, path: str) -> None:
        self.path = path
        self._writer: _GroupCommitWriter | None = None
        self._reader: sqlite3.Connection | None = None
        self._local = threading.local()
        self._pool: ThreadPoolExecutor | None = None
        self._versions: dict[tuple, Any] = {}
        self._versions_generation = -1
        self._versions_token = b""
        self._versions_confirmed = 0.0
        self._token: ChangeToken | None = None

    # lifecycle -------------------------------------------------------------------------------------------
    def open_sync(self) -> None:
        if not os.path.exists(self.path):
            fd = os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600)
            os.close(fd)
        conn = _connect(self.path)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            migrations.upgrade_sqlite(conn)
        finally:
            conn.close()
        self._reader = _connect(self.path, readonly=True)
        self._token = ChangeToken(self.path + "-token")
        self._writer = _GroupCommitWriter(self.path, self._token)
        self._writer.start()
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="atoll-meta-read")

    def close_sync(self) -> None:
        if self._writer is not None:
            self._writer.stop()
            self._writer = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._token is not None:
            self._token.close()
            self._token = None

    # engine hooks (atoll/stores/meta/sql.py) -------------------------------------------------------------
    def _pool_conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = _connect(self.path, readonly=True)
        return conn

    async def _read(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        return fn(self._reader)

    async def _read_in_pool(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: fn(self._pool_conn()))

    async def _read_snapshot(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """``fn`` in one read transaction: every query it makes sees the same committed state (fsck compares
        counters with the rows they sum, references with blobs)."""
        def in_snapshot(conn: sqlite3.Connection) -> Any:
            conn.execute("BEGIN")
            try:
                return fn(conn)
            finally:
                conn.execute("COMMIT")
        return await self._read_in_pool(in_snapshot)

    def _write(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        return self._writer.submit(fn)

    def _write_blocking(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        return self._writer.submit_blocking(fn)

    async def _read_row(self, cache_key: tuple, sql: str, params: tuple, build: Callable[[Any], Any]) -> Any:
        return self._cached_row(cache_key, lambda: self._reader.execute(sql, params).fetchone(), build)

    # the read cache --------------------------------------------------------------------------------------
    async def get_object(self, bucket: str, key: str) -> ObjectVersion | None:
        return self.get_object_now(bucket, key)

    def get_object_now(self, bucket: str, key: str) -> ObjectVersion | None:
        """The current version, from the read cache while nobody has committed since it was filled (see
        ``ChangeToken``). Versions are shared by callers and treated as immutable."""
        return self._cached_row((bucket, key), lambda: self._reader.execute(
            f"SELECT {OBJECT_COLUMNS} FROM objects WHERE bucket = ? AND key = ?", (bucket, key)).fetchone(),
            row_to_version)

    def _cached_row(self, cache_key: tuple, query: Callable[[], Any], build: Callable[[Any], Any]) -> Any:
        """A row read through the per-process cache that ``ChangeToken`` keeps valid (objects, leases and copy
        states: what every GET or Get Blob looks up). Cached values are shared: callers never change them."""
        cache = self._versions
        token = self._token.read()
        now = time.monotonic()
        if token != self._versions_token or now - self._versions_confirmed > ChangeToken.CONFIRM_INTERVAL:
            generation = self._reader.execute("PRAGMA data_version").fetchone()[0]
            if token != self._versions_token or generation != self._versions_generation:
                cache.clear()
                self._versions_token = token
                self._versions_generation = generation
            self._versions_confirmed = now
        else:
            hit = cache.get(cache_key, _MISS)
            if hit is not _MISS:
                return hit
        row = query()
        found = build(row) if row else None
        if len(cache) >= _VERSION_CACHE_ENTRIES:
            cache.clear()
        cache[cache_key] = found
        return found
