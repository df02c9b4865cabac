"""The embedded metadata store: SQLite in WAL mode, ``synchronous=FULL``.

Reads of single rows run inline on the calling (event-loop) thread: a point lookup on a WITHOUT ROWID table in
the page cache costs about 10 µs, less than a hop to a thread. Listings run on a small reader pool.

All writes go to one writer thread per process, which *group-commits*: it takes every write waiting in its queue,
runs each inside its own SAVEPOINT (so one failing condition does not undo its neighbours) and commits them
with a single fsync. Several processes (``--workers N``) share the file; SQLite's lock serialises their writers
and ``busy_timeout`` makes them wait instead of failing.

SQLite specifics stay here: TEXT compares with BINARY collation, i.e. memcmp over UTF-8, which is S3's key order.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import json
import mmap
import os
import queue
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Mapping, Sequence

from atoll import errors
from atoll.core.models import (RESIDENCY_CODES, RESIDENCY_NAMES, Block, Bucket, CheckpointGroup, DrainEntry, Extent,
                               Identity, Job, Limits, Link, ListEntry, ObjectVersion, Part, ROOT_TENANT, SegmentInfo, Tenant,
                               Upload, tenant_name_for_key)
from atoll.core.models import CopyState
from atoll.core.leases import Lease, check_write
from atoll.core.models import BucketProperties
from atoll.stores.meta.base import WriteCondition
from atoll.stores.meta import sqlite_segments, sqlite_usage, sqlite_warm

SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS identities (
    access_key TEXT PRIMARY KEY, secret_key TEXT NOT NULL, owner_id TEXT NOT NULL,
    display_name TEXT NOT NULL, created REAL NOT NULL, is_root INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS buckets (
    name TEXT PRIMARY KEY, owner_id TEXT NOT NULL, created REAL NOT NULL, region TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS objects (
    bucket TEXT NOT NULL, key TEXT NOT NULL, version_id TEXT NOT NULL, size INTEGER NOT NULL,
    etag TEXT NOT NULL, last_modified REAL NOT NULL, owner_id TEXT NOT NULL, part_count INTEGER NOT NULL,
    checksum_type TEXT NOT NULL, extents TEXT NOT NULL, attrs TEXT NOT NULL,
    residency INTEGER NOT NULL DEFAULT 2, warm_seq INTEGER NOT NULL DEFAULT 0, visited INTEGER NOT NULL DEFAULT 0,
    pinned_until REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (bucket, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS uploads (
    upload_id TEXT PRIMARY KEY, bucket TEXT NOT NULL, key TEXT NOT NULL, initiated REAL NOT NULL,
    owner_id TEXT NOT NULL, attrs TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS uploads_by_key ON uploads (bucket, key, upload_id);
CREATE TABLE IF NOT EXISTS parts (
    upload_id TEXT NOT NULL, part_number INTEGER NOT NULL, size INTEGER NOT NULL, etag TEXT NOT NULL,
    blob_id TEXT NOT NULL, last_modified REAL NOT NULL, checksums TEXT NOT NULL,
    PRIMARY KEY (upload_id, part_number)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS garbage (blob_id TEXT PRIMARY KEY, since REAL NOT NULL) WITHOUT ROWID;
"""

# Tiering (schema 2). Applied after _SCHEMA, and after the v1 -> v2 column additions on an old file.
_SCHEMA_TIERING = """
CREATE INDEX IF NOT EXISTS objects_by_warm_seq ON objects (warm_seq) WHERE warm_seq > 0;
CREATE INDEX IF NOT EXISTS objects_pinned ON objects (pinned_until) WHERE pinned_until > 0;
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS links (
    bucket TEXT PRIMARY KEY, url TEXT NOT NULL, mode TEXT NOT NULL, revalidate TEXT NOT NULL,
    options TEXT NOT NULL, created REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS groups (
    bucket TEXT NOT NULL, prefix TEXT NOT NULL, markers TEXT NOT NULL, PRIMARY KEY (bucket, prefix)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS drain (
    bucket TEXT NOT NULL, key TEXT NOT NULL, op TEXT NOT NULL, version_id TEXT NOT NULL, size INTEGER NOT NULL,
    since REAL NOT NULL, attempts INTEGER NOT NULL, last_error TEXT NOT NULL, not_before REAL NOT NULL,
    PRIMARY KEY (bucket, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS drain_by_time ON drain (not_before, since);
CREATE TABLE IF NOT EXISTS cold_uploads (
    id INTEGER PRIMARY KEY, bucket TEXT NOT NULL, key TEXT NOT NULL, started REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS fills (
    version_id TEXT PRIMARY KEY, block_size INTEGER NOT NULL, blocks BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY, kind TEXT NOT NULL, bucket TEXT NOT NULL, spec TEXT NOT NULL, state TEXT NOT NULL,
    priority INTEGER NOT NULL, created REAL NOT NULL, updated REAL NOT NULL, progress TEXT NOT NULL,
    error TEXT NOT NULL, owner TEXT NOT NULL, lease_until REAL NOT NULL
) WITHOUT ROWID;
"""

# Copy Blob state (no schema version: a new table, created on any file that lacks it).
_SCHEMA_COPIES = """
CREATE TABLE IF NOT EXISTS copies (
    bucket TEXT NOT NULL, key TEXT NOT NULL, copy_id TEXT NOT NULL, source TEXT NOT NULL, status TEXT NOT NULL,
    started REAL NOT NULL, copied INTEGER NOT NULL, total INTEGER NOT NULL, completed REAL NOT NULL,
    description TEXT NOT NULL, version_id TEXT NOT NULL, heartbeat REAL NOT NULL, PRIMARY KEY (bucket, key)
) WITHOUT ROWID;
"""

# Uncommitted Azure blocks (Put Block), by blob name. Applied at every open (new tables only: no version bump).
_SCHEMA_BLOCKS = """
CREATE TABLE IF NOT EXISTS blocks (
    bucket TEXT NOT NULL, key TEXT NOT NULL, block_id TEXT NOT NULL, blob_id TEXT NOT NULL, size INTEGER NOT NULL,
    md5 TEXT NOT NULL, created REAL NOT NULL, PRIMARY KEY (bucket, key, block_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS blocks_by_created ON blocks (created);
"""

# Leases (atoll/core/leases.py) of objects and of buckets (key ''). A new table: created on any file that lacks it.
_SCHEMA_LEASES = """
CREATE TABLE IF NOT EXISTS leases (
    bucket TEXT NOT NULL, key TEXT NOT NULL, state TEXT NOT NULL, lease_id TEXT NOT NULL, duration INTEGER NOT NULL,
    expires_at REAL NOT NULL, break_at REAL NOT NULL, PRIMARY KEY (bucket, key)
) WITHOUT ROWID;
"""

_V1_TO_V2 = (
    "ALTER TABLE objects ADD COLUMN residency INTEGER NOT NULL DEFAULT 2",
    "ALTER TABLE objects ADD COLUMN warm_seq INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE objects ADD COLUMN visited INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE objects ADD COLUMN pinned_until REAL NOT NULL DEFAULT 0",
)

_OBJECT_COLUMNS = ("bucket, key, version_id, size, etag, last_modified, owner_id, part_count, checksum_type, extents, "
                   "attrs, residency, warm_seq, pinned_until")
_OBJECT_PLACEHOLDERS = ",".join("?" * 14)
_BATCH_MAX = 512
_VERSION_CACHE_ENTRIES = 65536
_TOKEN_FILE_SIZE = 4096
_MISS = object()
_LEASE_COLUMNS = "state, lease_id, duration, expires_at, break_at"


_IDENTITY_COLUMNS = ("access_key, secret_key, owner_id, display_name, created, is_root, account_name, "
                     "account_key, tenant, role, scopes")
_SCHEMA_BLOB = """
CREATE UNIQUE INDEX IF NOT EXISTS identities_by_account ON identities (account_name) WHERE account_name != '';
CREATE TABLE IF NOT EXISTS bucket_properties (
    bucket TEXT PRIMARY KEY, public_access TEXT NOT NULL, metadata TEXT NOT NULL, access_policies TEXT NOT NULL,
    modified REAL NOT NULL
) WITHOUT ROWID;
"""


def _add_account_columns(conn: sqlite3.Connection) -> None:
    """Identities made before the Blob endpoint have no account: give the table its columns, empty."""
    present = {row[1] for row in conn.execute("PRAGMA table_info(identities)")}
    for column in ("account_name", "account_key"):
        if column not in present:
            conn.execute(f"ALTER TABLE identities ADD COLUMN {column} TEXT NOT NULL DEFAULT ''")


def _row_to_identity(row: Sequence[Any]) -> Identity:
    return Identity(row[0], row[1], row[2], row[3], row[4], bool(row[5]), row[6], row[7], row[8], row[9],
                    tuple(json.loads(row[10])))


# Governance (#7): tenants, and the tenant, role and scopes of identities and the tenant and limits of buckets.
# New columns and a new table: applied at every open; rows made before it are given tenants once (_adopt_tenants).
_SCHEMA_TENANTS = """
CREATE TABLE IF NOT EXISTS tenants (
    name TEXT PRIMARY KEY, created REAL NOT NULL, settings TEXT NOT NULL
) WITHOUT ROWID;
"""
_TENANT_COLUMNS = (("identities", "tenant", "''"), ("identities", "role", "'admin'"),
                   ("identities", "scopes", "'[]'"), ("buckets", "tenant", "''"), ("buckets", "limits", "'{}'"))


def _add_tenant_columns(conn: sqlite3.Connection) -> None:
    for table, column, default in _TENANT_COLUMNS:
        present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if column not in present:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} TEXT NOT NULL DEFAULT {default}")
    conn.executescript(_SCHEMA_TENANTS)
    conn.execute("CREATE INDEX IF NOT EXISTS buckets_by_tenant ON buckets (tenant, name)")
    conn.execute("CREATE INDEX IF NOT EXISTS identities_by_tenant ON identities (tenant)")


def _adopt_tenants(conn: sqlite3.Connection) -> None:
    """Identities and buckets made before tenants existed: the root identity joins the tenant ``root``, every
    other identity gets a tenant of its own (its access key, lower-cased), so users isolated from each other
    before stay isolated; a bucket joins its owner's tenant (``root`` if its owner is gone)."""
    conn.execute("INSERT INTO tenants VALUES (?, ?, '{}') ON CONFLICT (name) DO NOTHING", (ROOT_TENANT, time.time()))
    orphans = conn.execute("SELECT access_key, is_root FROM identities WHERE tenant = ''").fetchall()
    if not orphans and conn.execute("SELECT 1 FROM buckets WHERE tenant = '' LIMIT 1").fetchone() is None:
        return
    conn.execute("BEGIN IMMEDIATE")
    now = time.time()
    taken = {row[0] for row in conn.execute("SELECT name FROM tenants")}

    def ensure(name: str) -> str:
        if name not in taken:
            conn.execute("INSERT INTO tenants VALUES (?, ?, '{}')", (name, now))
            taken.add(name)
        return name

    for access_key, is_root in orphans:
        tenant = ensure(ROOT_TENANT if is_root else tenant_name_for_key(access_key, taken))
        conn.execute("UPDATE identities SET tenant = ? WHERE access_key = ?", (tenant, access_key))
    ensure(ROOT_TENANT)
    conn.execute("UPDATE buckets SET tenant = coalesce((SELECT i.tenant FROM identities i WHERE i.owner_id = "
                 "buckets.owner_id ORDER BY i.is_root DESC LIMIT 1), ?) WHERE tenant = ''", (ROOT_TENANT,))
    conn.execute("COMMIT")


def _tenant_settings(tenant: Tenant) -> str:
    return json.dumps({"limits": dataclasses.asdict(tenant.limits), "warm_reserved": tenant.warm_reserved,
                       "warm_cap": tenant.warm_cap, "wan_weight": tenant.wan_weight}, separators=(",", ":"))


def _row_to_tenant(row: Sequence[Any]) -> Tenant:
    settings = json.loads(row[2])
    return Tenant(row[0], row[1], Limits(**settings.get("limits", {})), settings.get("warm_reserved", 0),
                  settings.get("warm_cap", 0), settings.get("wan_weight", 1.0))


_BUCKET_COLUMNS = "name, owner_id, created, region, tenant, limits"


def _row_to_bucket(row: Sequence[Any]) -> Bucket:
    return Bucket(row[0], row[1], row[2], row[3], row[4], Limits(**json.loads(row[5])))


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


def _row_to_version(row: Sequence[Any]) -> ObjectVersion:
    attrs = json.loads(row[10])
    cold = attrs.get("k")
    return ObjectVersion(
        bucket=row[0], key=row[1], version_id=row[2], size=row[3], etag=row[4], last_modified=row[5],
        owner_id=row[6], part_count=row[7], checksum_type=row[8],
        extents=[Extent(b, o, n) for b, o, n in json.loads(row[9])],
        headers=attrs.get("h", {}), user_meta=attrs.get("m", {}), checksums=attrs.get("c", {}),
        residency=RESIDENCY_NAMES[row[11]], warm_seq=row[12], pinned_until=row[13],
        cold_etag=cold[0] if cold else "", cold_mtime=cold[1] if cold else 0.0,
        blocks=[(b, n, m) for b, n, m in attrs.get("b", ())],
    )


def _attrs_json(v: ObjectVersion) -> str:
    attrs: dict[str, Any] = {"h": v.headers, "m": v.user_meta, "c": v.checksums}
    if v.cold_etag:
        attrs["k"] = [v.cold_etag, v.cold_mtime]
    if v.blocks:
        attrs["b"] = v.blocks
    return json.dumps(attrs, separators=(",", ":"))


def _version_params(v: ObjectVersion) -> tuple:
    extents = json.dumps([[e.blob_id, e.offset, e.length] for e in v.extents], separators=(",", ":"))
    return (v.bucket, v.key, v.version_id, v.size, v.etag, v.last_modified, v.owner_id, v.part_count,
            v.checksum_type, extents, _attrs_json(v), RESIDENCY_CODES[v.residency], v.warm_seq, v.pinned_until)


def _page_after(select: str, order: str, after: Sequence[Any] | None, limit: int) -> tuple[str, list[Any]]:
    """A keyset page of ``select``: up to ``limit`` rows after ``after`` in ``order`` (its column list)."""
    params: list[Any] = []
    if after is not None:
        select += f" WHERE ({order}) > ({', '.join('?' * len(after))})"
        params += list(after)
    return f"{select} ORDER BY {order} LIMIT ?", [*params, limit]


def _row_to_link(row: Sequence[Any]) -> Link:
    return Link(bucket=row[0], url=row[1], mode=row[2], revalidate=row[3], options=json.loads(row[4]),
                created=row[5])


def _row_to_job(row: Sequence[Any]) -> Job:
    return Job(job_id=row[0], kind=row[1], bucket=row[2], spec=json.loads(row[3]), state=row[4], priority=row[5],
               created=row[6], updated=row[7], progress=json.loads(row[8]), error=row[9], owner=row[10])


def _row_to_drain(row: Sequence[Any]) -> DrainEntry:
    return DrainEntry(bucket=row[0], key=row[1], op=row[2], version_id=row[3], size=row[4], since=row[5],
                      attempts=row[6], last_error=row[7])


def _key_range_query(columns: str, bucket: str, start: str, inclusive: bool, end: str | None,
                     limit: int) -> tuple[str, list[Any]]:
    """One index seek: keys after ``start`` (or from it when inclusive) and before ``end``, in key order."""
    sql = f"SELECT {columns} FROM objects WHERE bucket = ? AND key {'>=' if inclusive else '>'} ?"
    params: list[Any] = [bucket, start]
    if end is not None:
        sql += " AND key < ?"
        params.append(end)
    sql += " ORDER BY key LIMIT ?"
    params.append(limit)
    return sql, params


def _row_to_upload(row: Sequence[Any]) -> Upload:
    attrs = json.loads(row[5])
    return Upload(upload_id=row[0], bucket=row[1], key=row[2], initiated=row[3], owner_id=row[4],
                  headers=attrs.get("h", {}), user_meta=attrs.get("m", {}),
                  checksum_algorithm=attrs.get("ca", ""), checksum_type=attrs.get("ct", ""))


def _row_to_part(row: Sequence[Any]) -> Part:
    return Part(upload_id=row[0], part_number=row[1], size=row[2], etag=row[3], blob_id=row[4],
                last_modified=row[5], checksums=json.loads(row[6]))


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
    if sqlite_segments.is_segment_closed(exc):
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


class SqliteMetaStore:
    """See ``atoll.stores.meta.base.MetaStore`` for the contract of every method."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._writer: _GroupCommitWriter | None = None
        self._reader: sqlite3.Connection | None = None
        self._local = threading.local()
        self._pool: ThreadPoolExecutor | None = None
        self._versions: dict[tuple[str, str], ObjectVersion | None] = {}
        self._versions_generation = -1
        self._versions_token = b""
        self._versions_confirmed = 0.0
        self._token: ChangeToken | None = None

    # lifecycle -------------------------------------------------------------------------------------------
    def open_sync(self) -> None:
        new = not os.path.exists(self.path)
        if new:
            fd = os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600)
            os.close(fd)
        conn = _connect(self.path)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.executescript(_SCHEMA)
        row = conn.execute("SELECT version FROM schema_version").fetchone()
        if row is None:
            conn.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
        elif row[0] > SCHEMA_VERSION:
            conn.close()
            raise RuntimeError(f"metadata schema {row[0]} is newer than this Atoll ({SCHEMA_VERSION})")
        elif row[0] < SCHEMA_VERSION:
            _upgrade(conn, row[0])
        conn.executescript(_SCHEMA_TIERING)
        conn.executescript(_SCHEMA_LEASES)
        conn.executescript(_SCHEMA_BLOCKS)
        _add_account_columns(conn)
        conn.executescript(_SCHEMA_BLOB)
        conn.executescript(_SCHEMA_COPIES)
        _add_tenant_columns(conn)
        _adopt_tenants(conn)
        sqlite_usage.install(conn)
        sqlite_warm.install(conn)
        sqlite_segments.install(conn)
        conn.execute("INSERT INTO counters VALUES ('resident_bytes', 0) ON CONFLICT (name) DO NOTHING")
        conn.close()
        self._reader = _connect(self.path, readonly=True)
        self._token = ChangeToken(self.path + "-token")
        self._writer = _GroupCommitWriter(self.path, self._token)
        self._writer.start()
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="atoll-meta-read")

    async def open(self) -> None:
        await asyncio.to_thread(self.open_sync)

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

    async def close(self) -> None:
        await asyncio.to_thread(self.close_sync)

    def _pool_conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = _connect(self.path, readonly=True)
        return conn

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

    # identities ------------------------------------------------------------------------------------------
    async def put_identity(self, identity: Identity) -> None:
        def op(conn):
            conn.execute("DELETE FROM identities WHERE access_key = ?", (identity.access_key,))
            if identity.account_name and conn.execute(
                    "SELECT 1 FROM identities WHERE account_name = ?", (identity.account_name,)).fetchone():
                raise errors.InvalidArgument(f"Account name {identity.account_name} is taken.")
            if conn.execute("SELECT 1 FROM tenants WHERE name = ?", (identity.tenant,)).fetchone() is None:
                raise errors.NoSuchTenant(tenant=identity.tenant)
            conn.execute(f"INSERT INTO identities ({_IDENTITY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (identity.access_key, identity.secret_key, identity.owner_id, identity.display_name,
                          identity.created, int(identity.is_root), identity.account_name, identity.account_key,
                          identity.tenant, identity.role, json.dumps(list(identity.scopes))))
        await self._write(op)

    async def get_identity(self, access_key: str) -> Identity | None:
        row = self._reader.execute(f"SELECT {_IDENTITY_COLUMNS} FROM identities WHERE access_key = ?",
                                   (access_key,)).fetchone()
        return _row_to_identity(row) if row else None

    async def get_identity_by_account(self, account_name: str) -> Identity | None:
        if not account_name:
            return None
        row = self._reader.execute(f"SELECT {_IDENTITY_COLUMNS} FROM identities WHERE account_name = ?",
                                   (account_name,)).fetchone()
        return _row_to_identity(row) if row else None

    async def list_identities(self) -> list[Identity]:
        rows = self._reader.execute(f"SELECT {_IDENTITY_COLUMNS} FROM identities ORDER BY created, access_key"
                                    ).fetchall()
        return [_row_to_identity(r) for r in rows]

    async def delete_identity(self, access_key: str) -> bool:
        def op(conn):
            return conn.execute("DELETE FROM identities WHERE access_key = ?", (access_key,)).rowcount > 0
        return await self._write(op)

    # buckets ---------------------------------------------------------------------------------------------
    async def create_bucket(self, bucket: Bucket) -> None:
        def op(conn):
            row = conn.execute("SELECT tenant FROM buckets WHERE name = ?", (bucket.name,)).fetchone()
            if row is not None:
                if row[0] == bucket.tenant:
                    raise errors.BucketAlreadyOwnedByYou(bucket=bucket.name)
                raise errors.BucketAlreadyExists(bucket=bucket.name)
            if conn.execute("SELECT 1 FROM tenants WHERE name = ?", (bucket.tenant,)).fetchone() is None:
                raise errors.NoSuchTenant(tenant=bucket.tenant)
            conn.execute(f"INSERT INTO buckets ({_BUCKET_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                         (bucket.name, bucket.owner_id, bucket.created, bucket.region, bucket.tenant,
                          json.dumps(dataclasses.asdict(bucket.limits))))
        await self._write(op)

    async def get_bucket(self, name: str) -> Bucket | None:
        row = self._reader.execute(f"SELECT {_BUCKET_COLUMNS} FROM buckets WHERE name = ?", (name,)).fetchone()
        return _row_to_bucket(row) if row else None

    async def list_buckets(self, tenant: str | None = None) -> list[Bucket]:
        if tenant is None:
            rows = self._reader.execute(f"SELECT {_BUCKET_COLUMNS} FROM buckets ORDER BY name").fetchall()
        else:
            rows = self._reader.execute(f"SELECT {_BUCKET_COLUMNS} FROM buckets WHERE tenant = ? ORDER BY name",
                                        (tenant,)).fetchall()
        return [_row_to_bucket(r) for r in rows]

    async def set_bucket_limits(self, name: str, limits: Limits) -> None:
        def op(conn):
            if conn.execute("UPDATE buckets SET limits = ? WHERE name = ?",
                            (json.dumps(dataclasses.asdict(limits)), name)).rowcount == 0:
                raise errors.NoSuchBucket(bucket=name)
        await self._write(op)

    # tenants (#7) ----------------------------------------------------------------------------------------
    async def put_tenant(self, tenant: Tenant) -> None:
        def op(conn):
            conn.execute("INSERT INTO tenants VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                         "settings = excluded.settings", (tenant.name, tenant.created, _tenant_settings(tenant)))
        await self._write(op)

    async def get_tenant(self, name: str) -> Tenant | None:
        row = self._reader.execute("SELECT name, created, settings FROM tenants WHERE name = ?", (name,)).fetchone()
        return _row_to_tenant(row) if row else None

    async def list_tenants(self) -> list[Tenant]:
        rows = self._reader.execute("SELECT name, created, settings FROM tenants ORDER BY name").fetchall()
        return [_row_to_tenant(r) for r in rows]

    async def delete_tenant(self, name: str) -> None:
        def op(conn):
            if conn.execute("SELECT 1 FROM tenants WHERE name = ?", (name,)).fetchone() is None:
                raise errors.NoSuchTenant(tenant=name)
            if name == ROOT_TENANT:
                raise errors.InvalidRequest("The root tenant cannot be deleted.")
            if conn.execute("SELECT 1 FROM buckets WHERE tenant = ? LIMIT 1", (name,)).fetchone():
                raise errors.TenantNotEmpty("The tenant still owns buckets; delete them first.", tenant=name)
            conn.execute("DELETE FROM identities WHERE tenant = ?", (name,))
            conn.execute("DELETE FROM tenants WHERE name = ?", (name,))
        await self._write(op)

    async def delete_bucket(self, name: str) -> None:
        def op(conn):
            if conn.execute("SELECT 1 FROM buckets WHERE name = ?", (name,)).fetchone() is None:
                raise errors.NoSuchBucket(bucket=name)
            if conn.execute("SELECT 1 FROM objects WHERE bucket = ? LIMIT 1", (name,)).fetchone():
                raise errors.BucketNotEmpty(bucket=name)
            if conn.execute("SELECT 1 FROM drain WHERE bucket = ? LIMIT 1", (name,)).fetchone():
                raise errors.BucketNotEmpty("The bucket still has deletes to propagate to its cold store.",
                                            bucket=name)
            conn.execute("DELETE FROM links WHERE bucket = ?", (name,))
            conn.execute("DELETE FROM groups WHERE bucket = ?", (name,))
            conn.execute("DELETE FROM bucket_properties WHERE bucket = ?", (name,))
            conn.execute("DELETE FROM leases WHERE bucket = ?", (name,))
            now = time.time()
            for (upload_id,) in conn.execute("SELECT upload_id FROM uploads WHERE bucket = ?", (name,)).fetchall():
                _drop_upload(conn, upload_id, now)
            _drop_blocks(conn, "WHERE bucket = ?", (name,), now)
            conn.execute("DELETE FROM buckets WHERE name = ?", (name,))
        await self._write(op)

    async def get_bucket_properties(self, name: str) -> BucketProperties | None:
        row = self._reader.execute("SELECT bucket, public_access, metadata, access_policies, modified FROM "
                                   "bucket_properties WHERE bucket = ?", (name,)).fetchone()
        if row is None:
            return None
        return BucketProperties(row[0], row[1], json.loads(row[2]), json.loads(row[3]), row[4])

    async def put_bucket_properties(self, props: BucketProperties) -> None:
        def op(conn):
            if conn.execute("SELECT 1 FROM buckets WHERE name = ?", (props.bucket,)).fetchone() is None:
                raise errors.NoSuchBucket(bucket=props.bucket)
            conn.execute("INSERT OR REPLACE INTO bucket_properties VALUES (?, ?, ?, ?, ?)",
                         (props.bucket, props.public_access, json.dumps(props.metadata),
                          json.dumps(props.access_policies), props.modified))
        await self._write(op)

    # objects ---------------------------------------------------------------------------------------------
    async def get_object(self, bucket: str, key: str) -> ObjectVersion | None:
        return self.get_object_now(bucket, key)

    def get_object_now(self, bucket: str, key: str) -> ObjectVersion | None:
        """The current version, from the read cache while nobody has committed since it was filled (see
        ``ChangeToken``). Versions are shared by callers and treated as immutable."""
        return self._cached_row((bucket, key), lambda: self._reader.execute(
            f"SELECT {_OBJECT_COLUMNS} FROM objects WHERE bucket = ? AND key = ?", (bucket, key)).fetchone(),
            _row_to_version)

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

    async def put_object(self, version: ObjectVersion, condition: WriteCondition | None = None,
                         journal: bool = False) -> ObjectVersion | None:
        def op(conn):
            _require_bucket(conn, version.bucket)
            return sqlite_usage.guarded(conn, version.bucket,
                                        lambda: _swap_version(conn, version, condition, time.time(), journal))
        return await self._write(op)

    async def replace_metadata(self, bucket, key, version_id, headers, user_meta, last_modified,
                               journal: bool = False) -> ObjectVersion:
        def op(conn):
            row = conn.execute(f"SELECT {_OBJECT_COLUMNS} FROM objects WHERE bucket = ? AND key = ?",
                               (bucket, key)).fetchone()
            if row is None:
                raise errors.NoSuchKey(bucket=bucket, key=key)
            current = _row_to_version(row)
            if current.version_id != version_id:
                raise errors.ConditionalRequestConflict(bucket=bucket, key=key)
            current.headers, current.user_meta, current.last_modified = headers, user_meta, last_modified
            conn.execute("UPDATE objects SET attrs = ?, last_modified = ? WHERE bucket = ? AND key = ?",
                         (_attrs_json(current), last_modified, bucket, key))
            if journal:
                _journal(conn, bucket, key, "put", version_id, current.size, time.time())
            return current
        return await self._write(op)

    async def delete_object(self, bucket: str, key: str, journal: bool = False) -> ObjectVersion | None:
        def op(conn):
            _require_bucket(conn, bucket)
            return _delete_key(conn, bucket, key, time.time(), journal)
        return await self._write(op)

    async def delete_objects(self, bucket: str, keys: Sequence[str],
                             journal: bool = False) -> list[ObjectVersion | None]:
        def op(conn):
            _require_bucket(conn, bucket)
            now = time.time()
            return [_delete_key(conn, bucket, k, now, journal) for k in keys]
        return await self._write(op)

    async def list_objects(self, bucket: str, start: str, inclusive: bool, end: str | None,
                           limit: int) -> list[ListEntry]:
        sql, params = _key_range_query("key, size, etag, last_modified, owner_id", bucket, start, inclusive, end,
                                       limit)
        if limit <= 64:
            rows = self._reader.execute(sql, params).fetchall()
        else:
            rows = await self._read_in_pool(lambda c: c.execute(sql, params).fetchall())
        return [ListEntry(*r) for r in rows]

    async def count_objects(self, bucket: str) -> tuple[int, int]:
        def q(c):
            return c.execute("SELECT count(*), coalesce(sum(size), 0) FROM objects WHERE bucket = ?",
                             (bucket,)).fetchone()
        n, size = await self._read_in_pool(q)
        return int(n), int(size)

    # uploads ---------------------------------------------------------------------------------------------
    async def create_upload(self, upload: Upload) -> None:
        attrs = json.dumps({"h": upload.headers, "m": upload.user_meta, "ca": upload.checksum_algorithm,
                            "ct": upload.checksum_type}, separators=(",", ":"))

        def op(conn):
            _require_bucket(conn, upload.bucket)
            conn.execute("INSERT INTO uploads VALUES (?, ?, ?, ?, ?, ?)",
                         (upload.upload_id, upload.bucket, upload.key, upload.initiated, upload.owner_id, attrs))
        await self._write(op)

    async def get_upload(self, upload_id: str) -> Upload | None:
        row = self._reader.execute("SELECT * FROM uploads WHERE upload_id = ?", (upload_id,)).fetchone()
        return _row_to_upload(row) if row else None

    async def put_part(self, part: Part) -> Part | None:
        def op(conn):
            upload = conn.execute("SELECT bucket FROM uploads WHERE upload_id = ?", (part.upload_id,)).fetchone()
            if upload is None:
                raise errors.NoSuchUpload(upload_id=part.upload_id)
            return sqlite_usage.guarded(conn, upload[0], lambda: record(conn))

        def record(conn):
            row = conn.execute("SELECT * FROM parts WHERE upload_id = ? AND part_number = ?",
                               (part.upload_id, part.part_number)).fetchone()
            replaced = _row_to_part(row) if row else None
            if replaced is not None:
                conn.execute("DELETE FROM parts WHERE upload_id = ? AND part_number = ?",
                             (part.upload_id, part.part_number))
                _add_garbage(conn, [replaced.blob_id], time.time())
            conn.execute("INSERT INTO parts VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (part.upload_id, part.part_number, part.size, part.etag, part.blob_id,
                          part.last_modified, json.dumps(part.checksums, separators=(",", ":"))))
            return replaced
        return await self._write(op)

    async def list_parts(self, upload_id: str, after: int = 0, limit: int = 10000) -> list[Part]:
        rows = await self._read_in_pool(lambda c: c.execute(
            "SELECT * FROM parts WHERE upload_id = ? AND part_number > ? ORDER BY part_number LIMIT ?",
            (upload_id, after, limit)).fetchall())
        return [_row_to_part(r) for r in rows]

    async def list_uploads(self, bucket: str, prefix: str = "", key_marker: str = "", upload_id_marker: str = "",
                           limit: int = 1000) -> list[Upload]:
        def q(c):
            sql = "SELECT * FROM uploads WHERE bucket = ? AND key >= ?"
            params: list[Any] = [bucket, prefix]
            if key_marker:
                if upload_id_marker:
                    sql += " AND (key > ? OR (key = ? AND upload_id > ?))"
                    params += [key_marker, key_marker, upload_id_marker]
                else:
                    sql += " AND key > ?"
                    params.append(key_marker)
            sql += " ORDER BY key, upload_id LIMIT ?"
            params.append(limit if not prefix else limit * 4 + 64)
            rows = c.execute(sql, params).fetchall()
            return [r for r in rows if r[2].startswith(prefix)][:limit]
        return [_row_to_upload(r) for r in await self._read_in_pool(q)]

    async def complete_upload(self, upload_id: str, version: ObjectVersion, used_parts: Sequence[int],
                              condition: WriteCondition | None = None, journal: bool = False) -> ObjectVersion | None:
        def op(conn):
            if conn.execute("SELECT 1 FROM uploads WHERE upload_id = ?", (upload_id,)).fetchone() is None:
                raise errors.NoSuchUpload(upload_id=upload_id)
            _require_bucket(conn, version.bucket)
            parts = {r[1]: _row_to_part(r) for r in
                     conn.execute("SELECT * FROM parts WHERE upload_id = ?", (upload_id,)).fetchall()}
            for number, extent in zip(used_parts, version.extents):
                part = parts.get(number)
                if part is None or part.blob_id != extent.blob_id:
                    raise errors.InvalidPart("a part was replaced or removed while completing", part=number)
            return sqlite_usage.guarded(conn, version.bucket, lambda: complete(conn, parts))

        def complete(conn, parts):
            now = time.time()
            replaced = _swap_version(conn, version, condition, now, journal)
            used = set(used_parts)
            _add_garbage(conn, [p.blob_id for n, p in parts.items() if n not in used], now)
            conn.execute("DELETE FROM parts WHERE upload_id = ?", (upload_id,))
            conn.execute("DELETE FROM uploads WHERE upload_id = ?", (upload_id,))
            return replaced
        return await self._write(op)

    async def abort_upload(self, upload_id: str) -> None:
        def op(conn):
            if conn.execute("SELECT 1 FROM uploads WHERE upload_id = ?", (upload_id,)).fetchone() is None:
                raise errors.NoSuchUpload(upload_id=upload_id)
            _drop_upload(conn, upload_id, time.time())
        await self._write(op)

    # uncommitted blocks (Azure Put Block) ----------------------------------------------------------------
    async def put_block(self, block: Block, max_blocks: int) -> Block | None:
        def op(conn):
            _require_bucket(conn, block.bucket)
            return sqlite_usage.guarded(conn, block.bucket, lambda: stage(conn))

        def stage(conn):
            where = (block.bucket, block.key)
            row = conn.execute("SELECT * FROM blocks WHERE bucket = ? AND key = ? AND block_id = ?",
                               (*where, block.block_id)).fetchone()
            replaced = Block(*row) if row else None
            if replaced is None:
                other = conn.execute("SELECT block_id FROM blocks WHERE bucket = ? AND key = ? LIMIT 1",
                                     where).fetchone()
                if other is not None and len(other[0]) != len(block.block_id):
                    raise errors.InvalidRequest("The specified blob or block content is invalid: every block id "
                                                "of a blob must have the same length.", code="InvalidBlobOrBlock")
                count = conn.execute("SELECT count(*) FROM blocks WHERE bucket = ? AND key = ?", where).fetchone()[0]
                if count >= max_blocks:
                    raise errors.Conflict(f"The blob already has {max_blocks} uncommitted blocks.",
                                          code="BlockCountExceedsLimit")
            else:
                conn.execute("DELETE FROM blocks WHERE bucket = ? AND key = ? AND block_id = ?",
                             (*where, block.block_id))
                _add_garbage(conn, [replaced.blob_id], time.time())
            conn.execute("INSERT INTO blocks VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (block.bucket, block.key, block.block_id, block.blob_id, block.size, block.md5,
                          block.created))
            return replaced
        return await self._write(op)

    async def list_blocks(self, bucket: str, key: str) -> list[Block]:
        rows = await self._read_in_pool(lambda c: c.execute(
            "SELECT * FROM blocks WHERE bucket = ? AND key = ? ORDER BY created, block_id", (bucket, key)).fetchall())
        return [Block(*r) for r in rows]

    async def commit_blocks(self, version: ObjectVersion, base_version_id: str | None,
                            staged: Sequence[tuple[str, str]], condition: WriteCondition | None = None,
                            journal: bool = False) -> ObjectVersion | None:
        def op(conn):
            _require_bucket(conn, version.bucket)
            where = (version.bucket, version.key)
            blocks = {r[0]: r[1] for r in conn.execute(
                "SELECT block_id, blob_id FROM blocks WHERE bucket = ? AND key = ?", where)}
            for block_id, blob_id in staged:
                if blocks.get(block_id) != blob_id:
                    raise errors.ConditionalRequestConflict("A block was replaced or removed while the block list "
                                                            "was committed; retry.")
            return sqlite_usage.guarded(conn, version.bucket, lambda: commit(conn, where, blocks))

        def commit(conn, where, blocks):
            now = time.time()
            if base_version_id is not None:
                row = conn.execute("SELECT version_id FROM objects WHERE bucket = ? AND key = ?", where).fetchone()
                if row is None or row[0] != base_version_id:
                    raise errors.ConditionalRequestConflict("The blob changed while its block list was committed; "
                                                            "retry.")
            replaced = _swap_version(conn, version, condition, now, journal)
            if base_version_id is not None:
                # Committed blocks kept from the replaced version are extents of the new one: not garbage.
                conn.executemany("DELETE FROM garbage WHERE blob_id = ?",
                                 [(b,) for b in {e.blob_id for e in version.extents}])
            used = {blob_id for _, blob_id in staged}
            _add_garbage(conn, [b for b in blocks.values() if b not in used], now)
            conn.execute("DELETE FROM blocks WHERE bucket = ? AND key = ?", where)
            return replaced
        return await self._write(op)

    async def expire_blocks(self, older_than: float, limit: int) -> int:
        # Asked every collector round: look first, so a round with nothing to expire commits nothing.
        if self._reader.execute("SELECT 1 FROM blocks WHERE created < ? LIMIT 1", (older_than,)).fetchone() is None:
            return 0

        def op(conn):
            rows = conn.execute("SELECT bucket, key, block_id, blob_id FROM blocks WHERE created < ? ORDER BY created "
                                "LIMIT ?", (older_than, limit)).fetchall()
            conn.executemany("DELETE FROM blocks WHERE bucket = ? AND key = ? AND block_id = ?",
                             [r[:3] for r in rows])
            _add_garbage(conn, [r[3] for r in rows], time.time())
            return len(rows)
        return await self._write(op)

    # leases ----------------------------------------------------------------------------------------------
    async def get_lease(self, bucket: str, key: str) -> Lease | None:
        return self._cached_row(("lease", bucket, key), lambda: self._reader.execute(
            f"SELECT {_LEASE_COLUMNS} FROM leases WHERE bucket = ? AND key = ?", (bucket, key)).fetchone(),
            lambda row: Lease(*row))

    async def list_leases(self, bucket: str, first: str, last: str) -> dict[str, Lease]:
        rows = self._reader.execute(f"SELECT key, {_LEASE_COLUMNS} FROM leases WHERE bucket = ? AND key >= ? AND "
                                    "key <= ? AND key != ''", (bucket, first, last)).fetchall()
        return {r[0]: Lease(*r[1:]) for r in rows}

    async def apply_lease(self, bucket: str, key: str, change: Callable[[Lease | None], tuple[Lease | None, Any]]
                          ) -> Any:
        def op(conn):
            _require_bucket(conn, bucket)
            if key and conn.execute("SELECT 1 FROM objects WHERE bucket = ? AND key = ?",
                                    (bucket, key)).fetchone() is None:
                raise errors.NoSuchKey(bucket=bucket, key=key)
            row = conn.execute(f"SELECT {_LEASE_COLUMNS} FROM leases WHERE bucket = ? AND key = ?",
                               (bucket, key)).fetchone()
            new, result = change(Lease(*row) if row else None)
            if new is None:
                conn.execute("DELETE FROM leases WHERE bucket = ? AND key = ?", (bucket, key))
            else:
                conn.execute("INSERT OR REPLACE INTO leases VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (bucket, key, new.state, new.lease_id, new.duration, new.expires_at, new.break_at))
            return result
        return await self._write(op)

    # garbage ---------------------------------------------------------------------------------------------
    async def take_garbage(self, older_than: float, limit: int) -> list[str]:
        rows = await self._read_in_pool(lambda c: c.execute(
            "SELECT blob_id FROM garbage WHERE since < ? LIMIT ?", (older_than, limit)).fetchall())
        return [r[0] for r in rows]

    async def forget_garbage(self, blob_ids: Sequence[str]) -> None:
        ids = list(blob_ids)

        def op(conn):
            conn.executemany("DELETE FROM garbage WHERE blob_id = ?", [(b,) for b in ids])
        await self._write(op)

    async def referenced_blobs(self) -> set[str]:
        def q(c):
            found: set[str] = set()
            for (extents,) in c.execute("SELECT extents FROM objects"):
                found.update(e[0] for e in json.loads(extents))
            found.update(r[0] for r in c.execute("SELECT blob_id FROM parts"))
            found.update(r[0] for r in c.execute("SELECT blob_id FROM blocks"))
            found.update(r[0] for r in c.execute("SELECT blob_id FROM garbage"))
            return found
        return await self._read_in_pool(q)

    # tiering: links and checkpoint groups ----------------------------------------------------------------
    async def put_link(self, link: Link) -> None:
        def op(conn):
            _require_bucket(conn, link.bucket)
            conn.execute("INSERT INTO links VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (bucket) DO UPDATE SET "
                         "url = excluded.url, mode = excluded.mode, revalidate = excluded.revalidate, "
                         "options = excluded.options, created = excluded.created",
                         (link.bucket, link.url, link.mode, link.revalidate, json.dumps(link.options), link.created))
        await self._write(op)

    async def get_link(self, bucket: str) -> Link | None:
        row = self._reader.execute("SELECT * FROM links WHERE bucket = ?", (bucket,)).fetchone()
        return _row_to_link(row) if row else None

    async def list_links(self) -> list[Link]:
        return [_row_to_link(r) for r in self._reader.execute("SELECT * FROM links ORDER BY bucket").fetchall()]

    async def delete_link(self, bucket: str) -> bool:
        def op(conn):
            if conn.execute("SELECT 1 FROM drain WHERE bucket = ? LIMIT 1", (bucket,)).fetchone():
                raise errors.InvalidRequest("The bucket still has writes to drain to its cold store; unlink it "
                                            "when its backlog is empty.")
            conn.execute("DELETE FROM groups WHERE bucket = ?", (bucket,))
            # Objects known only from the cold store cannot be read once the link is gone, nor can the missing
            # blocks of partly filled ones: a local GET of a sparse blob would serve its holes as zeros.
            now = time.time()
            for (key,) in conn.execute("SELECT key FROM objects WHERE bucket = ? AND residency = 1",
                                       (bucket,)).fetchall():
                _delete_key(conn, bucket, key, now)
            conn.execute("DELETE FROM objects WHERE bucket = ? AND residency = 0", (bucket,))
            conn.execute("UPDATE objects SET warm_seq = 0, pinned_until = 0 WHERE bucket = ? AND warm_seq > 0",
                         (bucket,))
            return conn.execute("DELETE FROM links WHERE bucket = ?", (bucket,)).rowcount > 0
        return await self._write(op)

    async def put_group(self, group: CheckpointGroup) -> None:
        def op(conn):
            _require_bucket(conn, group.bucket)
            conn.execute("INSERT INTO groups VALUES (?, ?, ?) ON CONFLICT (bucket, prefix) DO UPDATE SET "
                         "markers = excluded.markers", (group.bucket, group.prefix, json.dumps(group.markers)))
        await self._write(op)

    async def list_groups(self, bucket: str) -> list[CheckpointGroup]:
        rows = self._reader.execute("SELECT * FROM groups WHERE bucket = ? ORDER BY prefix", (bucket,)).fetchall()
        return [CheckpointGroup(r[0], r[1], json.loads(r[2])) for r in rows]

    async def delete_group(self, bucket: str, prefix: str) -> bool:
        def op(conn):
            return conn.execute("DELETE FROM groups WHERE bucket = ? AND prefix = ?", (bucket, prefix)).rowcount > 0
        return await self._write(op)

    # tiering: cold objects and fills ---------------------------------------------------------------------
    async def record_cold_version(self, version: ObjectVersion, expect: str | None) -> ObjectVersion | None:
        """Make ``version`` (absent, or resident after a whole-object fill) current for its key if the key has
        no row (``expect`` None) or its row is still the clean version ``expect``; otherwise change nothing.
        Returns the row in effect afterwards (None if the bucket has none)."""
        def op(conn):
            _require_bucket(conn, version.bucket)
            row = conn.execute(f"SELECT {_OBJECT_COLUMNS} FROM objects WHERE bucket = ? AND key = ?",
                               (version.bucket, version.key)).fetchone()
            current = _row_to_version(row) if row else None
            if (current.version_id if current else None) != expect:
                return current
            # Dirty without a row is a pending delete: the cold copy is on its way out, not to be brought back.
            if _is_dirty(conn, version.bucket, version.key):
                return current
            _swap_version(conn, version, None, time.time())
            return version
        return await self._write(op)

    async def start_fill(self, bucket: str, key: str, version_id: str, blob_id: str, block_size: int,
                         warm_seq: int) -> ObjectVersion | None:
        """Turn the absent version ``version_id`` into a partial one backed by ``blob_id`` with an empty block
        map. If it is already partial or resident, nothing changes. Returns the row in effect afterwards."""
        def op(conn):
            row = conn.execute(f"SELECT {_OBJECT_COLUMNS} FROM objects WHERE bucket = ? AND key = ?",
                               (bucket, key)).fetchone()
            if row is None:
                return None
            current = _row_to_version(row)
            if current.version_id != version_id or current.residency != "absent":
                return current
            current.residency = "partial"
            current.extents = [Extent(blob_id, 0, current.size)]
            current.warm_seq = warm_seq
            blocks = (current.size + block_size - 1) // block_size
            conn.execute("UPDATE objects SET residency = 1, extents = ?, warm_seq = ? WHERE bucket = ? AND key = ?",
                         (_version_params(current)[9], warm_seq, bucket, key))
            conn.execute("INSERT INTO fills VALUES (?, ?, ?) ON CONFLICT (version_id) DO NOTHING",
                         (version_id, block_size, bytes((blocks + 7) // 8)))
            _account(conn, current.size)
            return current
        return await self._write(op)

    async def get_fill(self, version_id: str) -> tuple[int, bytes] | None:
        """(block size, bitmap of filled blocks) of a partial version; None once it is resident or gone."""
        row = self._reader.execute("SELECT block_size, blocks FROM fills WHERE version_id = ?",
                                   (version_id,)).fetchone()
        return (row[0], bytes(row[1])) if row else None

    async def mark_filled(self, bucket: str, key: str, version_id: str, blocks: Sequence[int],
                          blob_id: str | None = None) -> str | None:
        """Record blocks of a partial version as durable on the warm tier; when all are, the version becomes
        resident. Returns the residency afterwards, or None if the version is no longer current (or, with
        ``blob_id``, its warm copy is no longer that blob: it was evicted and is being filled again)."""
        indexes = list(blocks)

        def op(conn):
            row = conn.execute("SELECT block_size, blocks FROM fills WHERE version_id = ?", (version_id,)).fetchone()
            current = conn.execute("SELECT version_id, residency, size, extents FROM objects WHERE bucket = ? AND "
                                   "key = ?", (bucket, key)).fetchone()
            if current is None or current[0] != version_id:
                return None
            if blob_id is not None and [e[0] for e in json.loads(current[3])][:1] != [blob_id]:
                return None
            if row is None:
                return RESIDENCY_NAMES[current[1]]
            bitmap = bytearray(row[1])
            for i in indexes:
                bitmap[i >> 3] |= 1 << (i & 7)
            total = (current[2] + row[0] - 1) // row[0]
            if all(bitmap[i >> 3] & (1 << (i & 7)) for i in range(total)):
                conn.execute("DELETE FROM fills WHERE version_id = ?", (version_id,))
                conn.execute("UPDATE objects SET residency = 2 WHERE bucket = ? AND key = ?", (bucket, key))
                return "resident"
            conn.execute("UPDATE fills SET blocks = ? WHERE version_id = ?", (bytes(bitmap), version_id))
            return "partial"
        return await self._write(op)

    async def set_cold_identity(self, bucket: str, key: str, version_id: str, cold_etag: str,
                                cold_mtime: float) -> None:
        """Record which cold object a local version now matches (after a drain or a write-through)."""
        def op(conn):
            row = conn.execute(f"SELECT {_OBJECT_COLUMNS} FROM objects WHERE bucket = ? AND key = ?",
                               (bucket, key)).fetchone()
            if row is None:
                return
            current = _row_to_version(row)
            if current.version_id != version_id:
                return
            current.cold_etag, current.cold_mtime = cold_etag, cold_mtime
            conn.execute("UPDATE objects SET attrs = ? WHERE bucket = ? AND key = ?",
                         (_attrs_json(current), bucket, key))
        await self._write(op)

    # tiering: eviction and pins --------------------------------------------------------------------------
    async def resident_bytes(self, bucket: str | None = None) -> int:
        if bucket is None:
            row = self._reader.execute("SELECT value FROM counters WHERE name = 'resident_bytes'").fetchone()
            return int(row[0]) if row else 0
        # No per-bucket counter (it would cost every write a second counter row): a scan of the bucket's rows,
        # about 0.7 s per million objects on a thread of the read pool, paid by status and scrapes only.
        sql = "SELECT coalesce(sum(size), 0) FROM objects WHERE bucket = ? AND residency > 0"
        return int((await self._read_in_pool(lambda c: c.execute(sql, (bucket,)).fetchone()))[0])

    async def warm_bytes_by_tenant(self) -> dict[str, int]:
        return sqlite_warm.by_tenant(self._reader)

    async def eviction_candidates(self, after_seq: int, limit: int) -> list[tuple]:
        """(bucket, key, version_id, warm_seq, visited, size, evictable) in warm_seq order after ``after_seq``,
        among warm versions of linked buckets. ``evictable`` is false for dirty or pinned versions."""
        now = time.time()

        def q(c):
            return c.execute(
                "SELECT o.bucket, o.key, o.version_id, o.warm_seq, o.visited, o.size, "
                "o.pinned_until <= ? AND NOT EXISTS (SELECT 1 FROM drain d WHERE d.bucket = o.bucket AND d.key = o.key) "
                "FROM objects o WHERE o.warm_seq > ? AND o.residency > 0 ORDER BY o.warm_seq LIMIT ?",
                (now, after_seq, limit)).fetchall()
        return [tuple(r[:6]) + (bool(r[6]),) for r in await self._read_in_pool(q)]

    async def set_visited(self, keys: Sequence[tuple[str, str, str]], visited: bool) -> None:
        """Set or clear SIEVE's visited bit of (bucket, key, version_id) versions that are still current."""
        params = [(int(visited), b, k, v) for b, k, v in keys]

        def op(conn):
            conn.executemany("UPDATE objects SET visited = ? WHERE bucket = ? AND key = ? AND version_id = ? "
                             "AND warm_seq > 0", params)
        if params:
            await self._write(op)

    async def evict(self, bucket: str, key: str, version_id: str) -> int:
        """Drop the warm bytes of a clean, unpinned version (it becomes absent: known, served from the cold
        store on the next read). Returns the bytes freed (0 if the version moved on, is dirty or pinned)."""
        def op(conn):
            row = conn.execute(f"SELECT {_OBJECT_COLUMNS} FROM objects WHERE bucket = ? AND key = ?",
                               (bucket, key)).fetchone()
            if row is None:
                return 0
            current = _row_to_version(row)
            if (current.version_id != version_id or current.residency == "absent" or current.warm_seq <= 0
                    or current.pinned_until > time.time() or not current.cold_etag
                    or _is_dirty(conn, bucket, key)):
                return 0
            now = time.time()
            _add_garbage(conn, [e.blob_id for e in current.extents], now)
            conn.execute("DELETE FROM fills WHERE version_id = ?", (version_id,))
            conn.execute("UPDATE objects SET residency = 0, extents = '[]', visited = 0 WHERE bucket = ? AND key = ?",
                         (bucket, key))
            _account(conn, -current.size)
            return current.size
        return await self._write(op)

    async def pin(self, bucket: str, key: str, until: float) -> bool:
        def op(conn):
            return conn.execute("UPDATE objects SET pinned_until = ? WHERE bucket = ? AND key = ?",
                                (until, bucket, key)).rowcount > 0
        return await self._write(op)

    async def pinned_bytes(self, bucket: str | None = None) -> int:
        # "pinned_until > 0" lets SQLite use the partial index objects_pinned
        sql = ("SELECT coalesce(sum(size), 0) FROM objects "
               "WHERE pinned_until > 0 AND pinned_until > ? AND residency > 0")
        params: list[Any] = [time.time()]
        if bucket is not None:
            sql += " AND bucket = ?"
            params.append(bucket)
        return int((await self._read_in_pool(lambda c: c.execute(sql, params).fetchone()))[0])

    # tiering: the write-back journal ---------------------------------------------------------------------
    async def take_drain(self, limit: int, lease: float, skip_buckets: Sequence[str] = (),
                         busy: Mapping[str, int] | None = None) -> list[DrainEntry]:
        """Claim up to ``limit`` entries that are due for ``lease`` seconds (a crashed drainer's claims expire
        and are taken again; a drain is idempotent, so a retaken entry is merely re-uploaded). Tenants with due
        entries get claims in proportion to their WAN weights, counting the claims in ``busy`` (bucket -> entries
        of it being drained now); oldest first inside a tenant."""
        skip = set(skip_buckets)
        if limit <= 0:
            return []

        def op(conn):
            now = time.time()
            # The buckets with entries, by a skip scan of the primary key: the drain table may hold millions.
            buckets = [r[0] for r in conn.execute(_DRAIN_BUCKETS).fetchall() if r[0] not in skip]
            due: dict[str, list[tuple]] = {}  # tenant -> due rows of its buckets, oldest first
            for bucket in buckets:
                rows = conn.execute("SELECT * FROM drain WHERE bucket = ? AND not_before <= ? ORDER BY since LIMIT ?",
                                    (bucket, now, limit)).fetchall()
                if rows:
                    owner = conn.execute("SELECT tenant FROM buckets WHERE name = ?", (bucket,)).fetchone()
                    due.setdefault(owner[0] if owner else "", []).extend(rows)
            if not due:
                return []
            weights: dict[str, float] = {}
            held: dict[str, int] = {tenant: 0 for tenant in due}
            for tenant in due:
                row = conn.execute("SELECT name, created, settings FROM tenants WHERE name = ?", (tenant,)).fetchone()
                weight = _row_to_tenant(row).wan_weight if row else 1.0
                weights[tenant] = weight if weight > 0 else 1.0
                due[tenant].sort(key=lambda r: r[5])  # since
                due[tenant].reverse()  # popped from the end: oldest first
            for bucket, count in (busy or {}).items():
                owner = conn.execute("SELECT tenant FROM buckets WHERE name = ?", (bucket,)).fetchone()
                if owner and owner[0] in held:
                    held[owner[0]] += count
            taken: list[tuple] = []
            while len(taken) < limit and due:
                # The tenant holding the fewest claims for its weight (ties: the one with the oldest entry).
                tenant = min(due, key=lambda t: ((held[t] + 1) / weights[t], due[t][-1][5]))
                taken.append(due[tenant].pop())
                held[tenant] += 1
                if not due[tenant]:
                    del due[tenant]
            conn.executemany("UPDATE drain SET not_before = ? WHERE bucket = ? AND key = ?",
                             [(now + lease, r[0], r[1]) for r in taken])
            return [_row_to_drain(r) for r in taken]
        return await self._write(op)

    async def renew_drain(self, entries: Sequence[DrainEntry], lease: float) -> None:
        def op(conn):
            until = time.time() + lease
            conn.executemany("UPDATE drain SET not_before = ? WHERE bucket = ? AND key = ? AND version_id = ? "
                             "AND op = ?", [(until, e.bucket, e.key, e.version_id, e.op) for e in entries])
        if entries:
            await self._write(op)

    async def note_cold_upload(self, bucket: str, key: str, started: float) -> int:
        def op(conn):
            return conn.execute("INSERT INTO cold_uploads (bucket, key, started) VALUES (?, ?, ?)",
                                (bucket, key, started)).lastrowid
        return await self._write(op)

    async def forget_cold_upload(self, upload: int) -> None:
        await self._write(lambda conn: conn.execute("DELETE FROM cold_uploads WHERE id = ?", (upload,)))

    async def list_cold_uploads(self, limit: int = 1000) -> list[tuple[int, str, str, float]]:
        return [tuple(r) for r in self._reader.execute(
            "SELECT id, bucket, key, started FROM cold_uploads ORDER BY id LIMIT ?", (limit,)).fetchall()]

    async def finish_drain(self, entry: DrainEntry, uploaded_modified: float | None = None) -> bool:
        """Remove the entry if it is still for the same write; False if a newer write replaced it meanwhile.
        ``uploaded_modified`` is the last_modified of the version that was uploaded: a metadata replace (a
        self-copy) keeps the version id but changes it, and is a newer write too."""
        def op(conn):
            same = True
            if uploaded_modified is not None:
                row = conn.execute("SELECT last_modified FROM objects WHERE bucket = ? AND key = ? AND version_id = ?",
                                   (entry.bucket, entry.key, entry.version_id)).fetchone()
                same = row is None or row[0] == uploaded_modified
            if same and conn.execute("DELETE FROM drain WHERE bucket = ? AND key = ? AND op = ? AND version_id = ?",
                                     (entry.bucket, entry.key, entry.op, entry.version_id)).rowcount > 0:
                return True
            conn.execute("UPDATE drain SET not_before = 0 WHERE bucket = ? AND key = ?", (entry.bucket, entry.key))
            return False
        return await self._write(op)

    async def reset_drain_claims(self) -> int:
        """At start-up, before any drainer runs: claims of a crashed process are void."""
        def op(conn):
            return conn.execute("UPDATE drain SET not_before = 0 WHERE not_before > ?", (time.time(),)).rowcount
        return await self._write(op)

    # copies ----------------------------------------------------------------------------------------------
    async def put_copy(self, state: CopyState) -> None:
        def op(conn):
            conn.execute("INSERT OR REPLACE INTO copies VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (state.bucket, state.key, state.copy_id, state.source, state.status, state.started,
                          state.copied, state.total, state.completed, state.description, state.version_id,
                          state.heartbeat))
        await self._write(op)

    async def get_copy(self, bucket: str, key: str) -> CopyState | None:
        return self._cached_row(("copy", bucket, key), lambda: self._reader.execute(
            "SELECT * FROM copies WHERE bucket = ? AND key = ?", (bucket, key)).fetchone(),
            lambda row: CopyState(*row))

    async def update_copy(self, bucket: str, key: str, copy_id: str, *, status: str | None = None,
                          copied: int | None = None, total: int | None = None, completed: float | None = None,
                          description: str | None = None, version_id: str | None = None,
                          heartbeat: float | None = None) -> bool:
        fields = {"status": status, "copied": copied, "total": total, "completed": completed,
                  "description": description, "version_id": version_id, "heartbeat": heartbeat}
        changes = {name: value for name, value in fields.items() if value is not None}

        def op(conn):
            if not changes:
                return conn.execute("SELECT 1 FROM copies WHERE bucket = ? AND key = ? AND copy_id = ? AND "
                                    "status = 'pending'", (bucket, key, copy_id)).fetchone() is not None
            assignments = ", ".join(f"{name} = ?" for name in changes)
            return conn.execute(f"UPDATE copies SET {assignments} WHERE bucket = ? AND key = ? AND copy_id = ? "
                                "AND status = 'pending'", (*changes.values(), bucket, key, copy_id)).rowcount > 0
        return await self._write(op)

    async def fail_pending_copies(self, description: str, completed: float) -> int:
        def op(conn):
            return conn.execute("UPDATE copies SET status = 'failed', description = ?, completed = ? "
                                "WHERE status = 'pending'", (description, completed)).rowcount
        return await self._write(op)

    async def get_flag(self, name: str) -> int:
        row = self._reader.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    async def set_flag(self, name: str, value: int) -> None:
        def op(conn):
            conn.execute("INSERT INTO counters VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                         (name, value))
        await self._write(op)

    async def release_drain(self, entry: DrainEntry, delay: float, error: str = "") -> None:
        """Give a claimed entry back, due again after ``delay`` seconds (a failure when ``error`` is set)."""
        def op(conn):
            due = time.time() + delay
            if not conn.execute("UPDATE drain SET not_before = ?, attempts = attempts + ?, last_error = ? "
                                "WHERE bucket = ? AND key = ? AND version_id = ? AND op = ?",
                                (due, 1 if error else 0, error[:500], entry.bucket, entry.key,
                                 entry.version_id, entry.op)).rowcount:
                # A newer write replaced the entry while it was out and inherited its claim: give that back
                # too (without a failure: the newer write was not tried), or it would wait out the whole lease.
                conn.execute("UPDATE drain SET not_before = min(not_before, ?) WHERE bucket = ? AND key = ?",
                             (due, entry.bucket, entry.key))
        await self._write(op)

    async def get_drain(self, bucket: str, key: str) -> DrainEntry | None:
        r = self._reader.execute("SELECT * FROM drain WHERE bucket = ? AND key = ?", (bucket, key)).fetchone()
        return _row_to_drain(r) if r else None

    async def drain_pending_in(self, bucket: str, prefix: str, except_key: str) -> bool:
        """Whether any journaled write other than ``except_key`` waits under ``prefix``."""
        row = self._reader.execute(
            "SELECT 1 FROM drain WHERE bucket = ? AND key >= ? AND key < ? AND key != ? LIMIT 1",
            (bucket, prefix, prefix + "\U0010ffff", except_key)).fetchone()
        return row is not None

    async def drain_backlog(self, bucket: str | None = None) -> tuple[int, int, float | None]:
        """(entries, bytes, time of the oldest undrained write or None)."""
        sql = "SELECT count(*), coalesce(sum(size), 0), min(since) FROM drain"
        params: tuple = ()
        if bucket is not None:
            sql += " WHERE bucket = ?"
            params = (bucket,)
        n, size, oldest = await self._read_in_pool(lambda c: c.execute(sql, params).fetchone())
        return int(n), int(size), oldest

    async def list_drain(self, bucket: str, limit: int = 1000) -> list[DrainEntry]:
        rows = await self._read_in_pool(lambda c: c.execute(
            "SELECT * FROM drain WHERE bucket = ? ORDER BY key LIMIT ?", (bucket, limit)).fetchall())
        return [_row_to_drain(r) for r in rows]

    # tiering: index import -------------------------------------------------------------------------------
    async def list_versions(self, bucket: str, start: str, inclusive: bool, end: str | None,
                            limit: int) -> list[ObjectVersion]:
        """Like list_objects, with whole versions (for comparing the index against a cold listing)."""
        sql, params = _key_range_query(_OBJECT_COLUMNS, bucket, start, inclusive, end, limit)
        return [_row_to_version(r) for r in await self._read_in_pool(lambda c: c.execute(sql, params).fetchall())]

    async def apply_cold_listing(self, bucket: str, upserts: Sequence[tuple[ObjectVersion, str | None]],
                                 removals: Sequence[tuple[str, str]]) -> int:
        """Import part of a cold listing: each (version, expect) is applied as by record_cold_version; each
        (key, version_id) removal drops a clean row the cold store no longer has. Returns rows changed."""
        def op(conn):
            _require_bucket(conn, bucket)
            now = time.time()
            changed = 0
            for version, expect in upserts:
                row = conn.execute("SELECT version_id FROM objects WHERE bucket = ? AND key = ?",
                                   (bucket, version.key)).fetchone()
                # Dirty without a row is a pending delete: the cold copy is on its way out, not to be re-imported.
                if (row[0] if row else None) != expect or _is_dirty(conn, bucket, version.key):
                    continue
                _swap_version(conn, version, None, now)
                changed += 1
            for key, version_id in removals:
                row = conn.execute("SELECT version_id, pinned_until FROM objects WHERE bucket = ? AND key = ?",
                                   (bucket, key)).fetchone()
                if row is None or row[0] != version_id or _is_dirty(conn, bucket, key):
                    continue
                _delete_key(conn, bucket, key, now)
                changed += 1
            return changed
        return await self._write(op)

    # jobs ------------------------------------------------------------------------------------------------
    async def create_job(self, job: Job) -> None:
        def op(conn):
            _require_bucket(conn, job.bucket)
            conn.execute("INSERT INTO jobs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, '', 0)",
                         (job.job_id, job.kind, job.bucket, json.dumps(job.spec), job.state, job.priority,
                          job.created, job.updated, json.dumps(job.progress), job.error))
        await self._write(op)

    async def get_job(self, job_id: str) -> Job | None:
        row = self._reader.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return _row_to_job(row) if row else None

    async def list_jobs(self, limit: int = 100, active_only: bool = False) -> list[Job]:
        sql = "SELECT * FROM jobs"
        if active_only:
            sql += " WHERE state IN ('queued', 'running')"
        sql += " ORDER BY created DESC LIMIT ?"
        return [_row_to_job(r) for r in self._reader.execute(sql, (limit,)).fetchall()]

    async def claim_job(self, owner: str, lease: float) -> Job | None:
        """Take the most urgent queued job, or a running one whose owner's lease expired (it crashed)."""
        def op(conn):
            now = time.time()
            row = conn.execute("SELECT * FROM jobs WHERE state = 'queued' OR (state = 'running' AND lease_until < ?) "
                               "ORDER BY priority, created LIMIT 1", (now,)).fetchone()
            if row is None:
                return None
            conn.execute("UPDATE jobs SET state = 'running', owner = ?, lease_until = ?, updated = ? "
                         "WHERE job_id = ?", (owner, now + lease, now, row[0]))
            job = _row_to_job(row)
            job.state, job.owner = "running", owner
            return job
        return await self._write(op)

    async def update_job(self, job_id: str, *, owner: str | None = None, lease: float = 0.0,
                         state: str | None = None, progress: dict | None = None, error: str | None = None) -> str:
        """Record progress (and renew the lease when ``owner`` still holds it); returns the job's state, which
        may have become 'cancelled' meanwhile."""
        def op(conn):
            now = time.time()
            row = conn.execute("SELECT state, owner FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
            if row is None:
                return "gone"
            current = row[0]
            if owner is not None and row[1] != owner:
                return "lost"
            if current in ("cancelled", "done", "failed") and state not in ("cancelled",):
                return current
            sets, params = ["updated = ?"], [now]
            if state is not None:
                sets.append("state = ?")
                params.append(state)
                current = state
            if progress is not None:
                sets.append("progress = ?")
                params.append(json.dumps(progress))
            if error is not None:
                sets.append("error = ?")
                params.append(error[:2000])
            if owner is not None and lease:
                sets.append("lease_until = ?")
                params.append(now + lease)
            conn.execute(f"UPDATE jobs SET {', '.join(sets)} WHERE job_id = ?", (*params, job_id))
            return current
        return await self._write(op)

    # consistency: atoll fsck and start-up recovery -------------------------------------------------------
    async def scan_objects(self, after: tuple[str, str] | None, limit: int) -> list[ObjectVersion]:
        sql, params = _page_after(f"SELECT {_OBJECT_COLUMNS} FROM objects", "bucket, key", after, limit)
        rows = await self._read_in_pool(lambda c: c.execute(sql, params).fetchall())
        return [_row_to_version(r) for r in rows]

    async def scan_parts(self, after: tuple[str, int] | None, limit: int) -> list[Part]:
        sql, params = _page_after("SELECT * FROM parts", "upload_id, part_number", after, limit)
        rows = await self._read_in_pool(lambda c: c.execute(sql, params).fetchall())
        return [_row_to_part(r) for r in rows]

    async def scan_garbage(self, after: str, limit: int) -> list[str]:
        rows = await self._read_in_pool(lambda c: c.execute(
            "SELECT blob_id FROM garbage WHERE blob_id > ? ORDER BY blob_id LIMIT ?", (after, limit)).fetchall())
        return [r[0] for r in rows]

    async def scan_drain(self, after: tuple[str, str] | None, limit: int) -> list[tuple[DrainEntry, float]]:
        sql, params = _page_after("SELECT * FROM drain", "bucket, key", after, limit)
        rows = await self._read_in_pool(lambda c: c.execute(sql, params).fetchall())
        return [(_row_to_drain(r), r[8]) for r in rows]

    async def stale_fills(self) -> list[str]:
        def q(c):
            return [r[0] for r in c.execute(
                "WITH partial AS MATERIALIZED (SELECT version_id FROM objects WHERE residency = 1) "
                "SELECT version_id FROM fills WHERE version_id NOT IN partial ORDER BY version_id")]
        return await self._read_in_pool(q)

    async def unreferenced_blobs(self, blob_ids: Sequence[str]) -> set[str]:
        left = set(blob_ids)
        if not left:
            return left

        def q(c):
            # One snapshot: a blob moving from a part to an object or to garbage is seen once. No index by blob id
            # (nothing on the request path needs one): one pass over every reference, the extents unpacked by
            # SQLite's JSON code. With 1M objects this takes ~2.5 s whatever the number of candidates; an IN list
            # of them in SQL cost 2 s for 10 and 37 s for 1M.
            for sql in ("SELECT blob_id FROM garbage", "SELECT blob_id FROM parts", "SELECT blob_id FROM blocks",
                        "SELECT e.value ->> 0 FROM objects, json_each(objects.extents) AS e"):
                for (blob_id,) in c.execute(sql):
                    left.discard(blob_id)
                if not left:
                    break
            return left
        return await self._read_snapshot(q)

    # packed store: segments (atoll/stores/meta/sqlite_segments.py) -------------------------------------
    async def register_segment(self, segment_id: str, owner: str) -> None:
        await self._write(lambda conn: sqlite_segments.register(conn, segment_id, owner, time.time()))

    async def seal_segment(self, segment_id: str, size: int) -> bool:
        return await self._write(lambda conn: sqlite_segments.seal(conn, segment_id, size, time.time()))

    async def seal_orphan_segments(self, node: str, owners_alive: set[str], sizes: dict[str, int]) -> list[str]:
        return await self._write(lambda conn: sqlite_segments.seal_orphans(conn, owners_alive, node, sizes,
                                                                           time.time()))

    async def release_dead_compactions(self, owners: Sequence[str]) -> int:
        return await self._write(lambda conn: sqlite_segments.release_dead_compactions(conn, owners))

    async def list_segments(self) -> list[SegmentInfo]:
        return await self._read_in_pool(sqlite_segments.select_all)

    async def claim_compaction(self, owner: str, lease: float, threshold: float, settle: float) -> SegmentInfo | None:
        return await self._write(lambda conn: sqlite_segments.claim(conn, owner, time.time(), lease, threshold,
                                                                    settle))

    async def segment_refs(self, segment_id: str, after: int, limit: int) -> list[tuple[int, int, str, str]]:
        return await self._read_in_pool(lambda c: sqlite_segments.refs(c, segment_id, after, limit))

    async def move_packed(self, segment_id: str, owner: str, lease: float,
                          moves: Sequence[tuple[str, str, int, str, int]]) -> int:
        return await self._write(lambda conn: sqlite_segments.move(conn, segment_id, owner, time.time() + lease,
                                                                   moves))

    async def retire_segment(self, segment_id: str, owner: str) -> bool:
        return await self._write(lambda conn: sqlite_segments.retire(conn, segment_id, owner, time.time()))

    async def forget_segment(self, segment_id: str) -> None:
        await self._write(lambda conn: conn.execute(
            "DELETE FROM segments WHERE segment_id = ? AND (state = 'retired' OR state != 'open' AND live_count = 0)",
            (segment_id,)))

    async def recount_segments(self, repair: bool) -> list[tuple[str, int, int, int, int]]:
        if repair:
            return await self._write(lambda conn: sqlite_segments.recount(conn, True))
        return await self._read_snapshot(lambda c: sqlite_segments.recount(c, False))

    async def count_resident_bytes(self) -> tuple[int, int]:
        row = await self._read_in_pool(lambda c: c.execute(
            "SELECT (SELECT value FROM counters WHERE name = 'resident_bytes'), "
            "(SELECT coalesce(sum(size), 0) FROM objects WHERE residency > 0)").fetchone())
        return int(row[0] or 0), int(row[1])

    async def recount_resident_bytes(self) -> tuple[int, int]:
        def op(conn):
            old = conn.execute("SELECT value FROM counters WHERE name = 'resident_bytes'").fetchone()
            new = conn.execute("SELECT coalesce(sum(size), 0) FROM objects WHERE residency > 0").fetchone()[0]
            conn.execute("INSERT INTO counters VALUES ('resident_bytes', ?) ON CONFLICT (name) DO UPDATE SET "
                         "value = excluded.value", (new,))
            return (int(old[0]) if old else 0), int(new)
        return await self._write(op)

    # usage and quotas (#7; atoll/stores/meta/sqlite_usage.py) --------------------------------------------
    async def bucket_usage(self, bucket: str) -> tuple[int, int]:
        return sqlite_usage.bucket_usage(self._reader, bucket)

    async def tenant_usage(self, tenant: str) -> tuple[int, int]:
        return sqlite_usage.tenant_usage(self._reader, tenant)

    async def count_usage(self) -> list[tuple[str, tuple[int, int], tuple[int, int]]]:
        return await self._read_snapshot(sqlite_usage.mismatches)

    async def recount_usage(self) -> list[tuple[str, tuple[int, int], tuple[int, int]]]:
        return await self._write(sqlite_usage.recount)

    async def count_warm(self) -> list[tuple[str, int, int]]:
        return await self._read_snapshot(sqlite_warm.mismatches)

    async def recount_warm(self) -> list[tuple[str, int, int]]:
        return await self._write(sqlite_warm.recount)

    async def reset_to_absent(self, bucket: str, key: str, version_id: str, new_version_id: str) -> bool:
        def op(conn):
            row = conn.execute(f"SELECT {_OBJECT_COLUMNS} FROM objects WHERE bucket = ? AND key = ?",
                               (bucket, key)).fetchone()
            if row is None:
                return False
            current = _row_to_version(row)
            if (current.version_id != version_id or current.residency == "absent" or not current.cold_etag
                    or _is_dirty(conn, bucket, key)):
                return False
            _add_garbage(conn, [e.blob_id for e in current.extents], time.time())
            conn.execute("DELETE FROM fills WHERE version_id = ?", (version_id,))
            conn.execute("UPDATE objects SET version_id = ?, residency = 0, extents = '[]', visited = 0 "
                         "WHERE bucket = ? AND key = ?", (new_version_id, bucket, key))
            _account(conn, -current.size)
            return True
        return await self._write(op)

    async def drop_version(self, bucket: str, key: str, version_id: str) -> ObjectVersion | None:
        def op(conn):
            row = conn.execute("SELECT version_id FROM objects WHERE bucket = ? AND key = ?", (bucket, key)).fetchone()
            if row is None or row[0] != version_id:
                return None
            conn.execute("DELETE FROM drain WHERE bucket = ? AND key = ? AND op = 'put' AND version_id = ?",
                         (bucket, key, version_id))
            return _delete_key(conn, bucket, key, time.time())
        return await self._write(op)

    async def drop_part(self, upload_id: str, part_number: int, blob_id: str) -> bool:
        def op(conn):
            if conn.execute("DELETE FROM parts WHERE upload_id = ? AND part_number = ? AND blob_id = ?",
                            (upload_id, part_number, blob_id)).rowcount == 0:
                return False
            _add_garbage(conn, [blob_id], time.time())
            return True
        return await self._write(op)

    async def forget_fill(self, version_id: str) -> bool:
        def op(conn):
            # No index by version id: a scan, but fsck calls this only for the block maps it found stale.
            if conn.execute("SELECT 1 FROM objects WHERE version_id = ? AND residency = 1 LIMIT 1",
                            (version_id,)).fetchone():
                return False
            return conn.execute("DELETE FROM fills WHERE version_id = ?", (version_id,)).rowcount > 0
        return await self._write(op)

    # bulk tools ------------------------------------------------------------------------------------------
    def bulk_insert_sync(self, versions: Sequence[ObjectVersion]) -> None:
        """Insert many new versions in one transaction (bench and import tools; not for the request path)."""
        def op(conn):
            conn.executemany(f"INSERT OR REPLACE INTO objects ({_OBJECT_COLUMNS}) VALUES ({_OBJECT_PLACEHOLDERS})",
                             [_version_params(v) for v in versions])
        self._writer.submit_blocking(op)


# Each bucket with drain entries, found by seeking the primary key from one bucket to the next (a loose index scan):
# as cheap with a million entries as with one.
_DRAIN_BUCKETS = ("WITH RECURSIVE b(name) AS (SELECT min(bucket) FROM drain UNION ALL "
                  "SELECT (SELECT min(bucket) FROM drain WHERE bucket > b.name) FROM b WHERE b.name IS NOT NULL) "
                  "SELECT name FROM b WHERE name IS NOT NULL")


def _upgrade(conn: sqlite3.Connection, version: int) -> None:
    conn.execute("BEGIN IMMEDIATE")
    if version < 2:
        for statement in _V1_TO_V2:
            conn.execute(statement)
        conn.execute("CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID")
        # WHERE true: without it SQLite parses the upsert's ON as a join constraint (a syntax error).
        conn.execute("INSERT INTO counters SELECT 'resident_bytes', coalesce(sum(size), 0) FROM objects WHERE true "
                     "ON CONFLICT (name) DO NOTHING")
    conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))
    conn.execute("COMMIT")


# transaction helpers (run on the writer thread, inside a savepoint) ----------------------------------------
def _require_bucket(conn: sqlite3.Connection, bucket: str) -> None:
    if conn.execute("SELECT 1 FROM buckets WHERE name = ?", (bucket,)).fetchone() is None:
        raise errors.NoSuchBucket(bucket=bucket)


def _add_garbage(conn: sqlite3.Connection, blob_ids: Sequence[str], now: float) -> None:
    # A record in a segment is not garbage to collect: it is dead once no object points at it (packed_refs).
    blob_ids = [b for b in blob_ids if not b.startswith("s")]
    if blob_ids:
        conn.executemany("INSERT INTO garbage VALUES (?, ?) ON CONFLICT (blob_id) DO NOTHING",
                         [(b, now) for b in blob_ids])


def _swap_version(conn: sqlite3.Connection, version: ObjectVersion, condition: WriteCondition | None,
                  now: float, journal: bool = False) -> ObjectVersion | None:
    row = conn.execute(f"SELECT {_OBJECT_COLUMNS} FROM objects WHERE bucket = ? AND key = ?",
                       (version.bucket, version.key)).fetchone()
    current = _row_to_version(row) if row else None
    if condition is not None:
        if condition.if_none_match and current is not None:
            raise errors.PreconditionFailed(condition="If-None-Match")
        if condition.if_match is not None:
            if current is None:
                raise errors.NoSuchKey(bucket=version.bucket, key=version.key)
            if condition.if_match != "*" and condition.if_match != current.etag:
                raise errors.PreconditionFailed(condition="If-Match")
        if condition.guard_lease:
            lease = conn.execute(f"SELECT {_LEASE_COLUMNS} FROM leases WHERE bucket = ? AND key = ?",
                                 (version.bucket, version.key)).fetchone()
            if lease is not None and current is None:
                # Left by a row that went another way than a delete (tiering drops rows the cold store lost):
                # a lease never outlives its object.
                conn.execute("DELETE FROM leases WHERE bucket = ? AND key = ?", (version.bucket, version.key))
                lease = None
            if lease is not None or condition.lease_id is not None:
                check_write(Lease(*lease) if lease else None, condition.lease_id, now)
    if current is not None:
        conn.execute("DELETE FROM objects WHERE bucket = ? AND key = ?", (version.bucket, version.key))
        _add_garbage(conn, [e.blob_id for e in current.extents], now)
        if current.residency == "partial":
            conn.execute("DELETE FROM fills WHERE version_id = ?", (current.version_id,))
    conn.execute(f"INSERT INTO objects ({_OBJECT_COLUMNS}) VALUES ({_OBJECT_PLACEHOLDERS})", _version_params(version))
    _account(conn, _resident_size(version) - (_resident_size(current) if current else 0))
    if journal:
        _journal(conn, version.bucket, version.key, "put", version.version_id, version.size, now)
    return current


def _delete_key(conn: sqlite3.Connection, bucket: str, key: str, now: float,
                journal: bool = False) -> ObjectVersion | None:
    if journal:
        # Journaled even when the key is not in the index: it may exist in the cold store only.
        _journal(conn, bucket, key, "delete", "", 0, now)
    row = conn.execute(f"SELECT {_OBJECT_COLUMNS} FROM objects WHERE bucket = ? AND key = ?",
                       (bucket, key)).fetchone()
    if row is None:
        return None
    current = _row_to_version(row)
    conn.execute("DELETE FROM objects WHERE bucket = ? AND key = ?", (bucket, key))
    conn.execute("DELETE FROM leases WHERE bucket = ? AND key = ?", (bucket, key))  # a lease dies with its blob
    _add_garbage(conn, [e.blob_id for e in current.extents], now)
    _account(conn, -_resident_size(current))
    if current.residency == "partial":
        conn.execute("DELETE FROM fills WHERE version_id = ?", (current.version_id,))
    return current


def _resident_size(version: ObjectVersion) -> int:
    """Bytes a version holds on the warm tier; a partial fill counts whole, as its sparse blob may become so."""
    return 0 if version.residency == "absent" else version.size


def _account(conn: sqlite3.Connection, delta: int) -> None:
    if delta:
        conn.execute("UPDATE counters SET value = value + ? WHERE name = 'resident_bytes'", (delta,))


def _journal(conn: sqlite3.Connection, bucket: str, key: str, op: str, version_id: str, size: int,
             now: float) -> None:
    # A replaced entry keeps its claim (not_before): the drainer uploading the older bytes must finish before
    # anyone uploads the newer ones, or the older could land last. finish_drain makes it due again at once.
    conn.execute("INSERT INTO drain VALUES (?, ?, ?, ?, ?, ?, 0, '', 0) ON CONFLICT (bucket, key) DO UPDATE SET "
                 "op = excluded.op, version_id = excluded.version_id, size = excluded.size, attempts = 0, "
                 "last_error = ''", (bucket, key, op, version_id, size, now))


def _is_dirty(conn: sqlite3.Connection, bucket: str, key: str) -> bool:
    return conn.execute("SELECT 1 FROM drain WHERE bucket = ? AND key = ?", (bucket, key)).fetchone() is not None


def _drop_upload(conn: sqlite3.Connection, upload_id: str, now: float) -> None:
    blobs = [r[0] for r in conn.execute("SELECT blob_id FROM parts WHERE upload_id = ?", (upload_id,)).fetchall()]
    _add_garbage(conn, blobs, now)
    conn.execute("DELETE FROM parts WHERE upload_id = ?", (upload_id,))
    conn.execute("DELETE FROM uploads WHERE upload_id = ?", (upload_id,))


def _drop_blocks(conn: sqlite3.Connection, where: str, params: tuple, now: float) -> int:
    """Remove the uncommitted blocks ``where`` selects; their blobs become garbage."""
    blobs = [r[0] for r in conn.execute(f"SELECT blob_id FROM blocks {where}", params).fetchall()]
    _add_garbage(conn, blobs, now)
    conn.execute(f"DELETE FROM blocks {where}", params)
    return len(blobs)
