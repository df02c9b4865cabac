"""Versioned schema migrations of the metadata store, for SQLite and PostgreSQL.

``STEPS`` is an ordered list; each step brings the schema from ``version - 1`` to ``version`` and has a SQLite form
(a function of the connection) and a PostgreSQL form (SQL text, from ``pg_schema``). ``schema_version`` holds one
row: the version reached. Steps are append-only: once released, a step is never edited (a file or database out
there has run it); a change is a new step at the end.

History. SQLite files carry version 1 (Atoll 0.1) or 2 (tiering), plus tables and columns added since without a
version bump (accounts, tenants, copies, blocks, leases, usage, warm bytes, segments), each applied "if missing" at
every open. Step 3 gathers all of those into one idempotent step, "everything as of #8", so that any file of any
earlier shape reaches version 3; its later steps are ordinary. PostgreSQL starts at version 3 (``PG_BASELINE``),
created whole by one step, so both engines number their versions alike.

Concurrency. Each SQLite step runs in its own ``BEGIN IMMEDIATE`` transaction and re-reads the version inside it,
so processes opening the same file at once (``--workers``, several nodes on one host) apply each step once. On
PostgreSQL, ``upgrade_postgres`` holds a session advisory lock while it works and each step is one transaction
(PostgreSQL's DDL is transactional): two nodes or two ``atoll db upgrade`` at once apply each step once.

A PostgreSQL node does not upgrade on its own: ``check_postgres`` refuses a schema older or newer than the code
and names ``atoll db upgrade``. The embedded SQLite store upgrades itself at open (``upgrade_sqlite``).
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from typing import Any, Callable

from atoll.core.models import ROOT_TENANT, tenant_name_for_key
from atoll.stores.meta import pg_schema


class SchemaMismatch(RuntimeError):
    """The database's schema version is not the one this Atoll runs on."""

    def __init__(self, found: int, needed: int) -> None:
        if found < needed:
            message = f"metadata schema {found}, this Atoll needs {needed}: run `atoll db upgrade`"
        else:
            message = (f"metadata schema {found} is newer than this Atoll ({needed}): run the Atoll version "
                       "that upgraded it")
        super().__init__(message)
        self.found, self.needed = found, needed


@dataclass(frozen=True)
class Step:
    version: int
    description: str
    sqlite: Callable[[sqlite3.Connection], None]
    postgres: str | None  # None: covered by PostgreSQL's baseline step (PG_BASELINE)


# --- SQLite forms --------------------------------------------------------------------------------------------------

def _script(conn: sqlite3.Connection, script: str) -> None:
    """Run several statements inside the current transaction (``executescript`` would commit it first).
    Trigger bodies hold semicolons: split where SQLite itself says a statement is complete."""
    pending = ""
    for line in script.strip().splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            conn.execute(pending)
            pending = ""
    if pending.strip():
        raise ValueError(f"incomplete SQL statement: {pending[:200]}")


def _add_missing_columns(conn: sqlite3.Connection, table: str, columns: tuple[tuple[str, str], ...]) -> None:
    present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
    for name, definition in columns:
        if name not in present:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {definition}")


def _table_exists(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() is not None


# Version 1 (Atoll 0.1).
_SQLITE_V1 = """
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


def _sqlite_v1(conn: sqlite3.Connection) -> None:
    _script(conn, _SQLITE_V1)


# Version 2: tiering (#2). Objects gain residency and eviction columns; every object then was resident.
_SQLITE_V2_COLUMNS = (("residency", "INTEGER NOT NULL DEFAULT 2"), ("warm_seq", "INTEGER NOT NULL DEFAULT 0"),
                      ("visited", "INTEGER NOT NULL DEFAULT 0"), ("pinned_until", "REAL NOT NULL DEFAULT 0"))
_SQLITE_V2 = """
CREATE INDEX IF NOT EXISTS objects_by_warm_seq ON objects (warm_seq) WHERE warm_seq > 0;
CREATE INDEX IF NOT EXISTS objects_pinned ON objects (pinned_until) WHERE pinned_until > 0;
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


def _sqlite_v2(conn: sqlite3.Connection) -> None:
    _add_missing_columns(conn, "objects", _SQLITE_V2_COLUMNS)
    conn.execute("CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID")
    # The resident-bytes counter starts from what the file holds. WHERE true: without it SQLite parses the
    # upsert's ON as a join constraint (a syntax error).
    conn.execute("INSERT INTO counters SELECT 'resident_bytes', coalesce(sum(size), 0) FROM objects WHERE true "
                 "ON CONFLICT (name) DO NOTHING")
    _script(conn, _SQLITE_V2)


# Version 3: everything as of #8 — the additions made "if missing" at every open until then.
_SQLITE_V3_TABLES = """
CREATE TABLE IF NOT EXISTS leases (
    bucket TEXT NOT NULL, key TEXT NOT NULL, state TEXT NOT NULL, lease_id TEXT NOT NULL, duration INTEGER NOT NULL,
    expires_at REAL NOT NULL, break_at REAL NOT NULL, PRIMARY KEY (bucket, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS blocks (
    bucket TEXT NOT NULL, key TEXT NOT NULL, block_id TEXT NOT NULL, blob_id TEXT NOT NULL, size INTEGER NOT NULL,
    md5 TEXT NOT NULL, created REAL NOT NULL, PRIMARY KEY (bucket, key, block_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS blocks_by_created ON blocks (created);
CREATE TABLE IF NOT EXISTS bucket_properties (
    bucket TEXT PRIMARY KEY, public_access TEXT NOT NULL, metadata TEXT NOT NULL, access_policies TEXT NOT NULL,
    modified REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS copies (
    bucket TEXT NOT NULL, key TEXT NOT NULL, copy_id TEXT NOT NULL, source TEXT NOT NULL, status TEXT NOT NULL,
    started REAL NOT NULL, copied INTEGER NOT NULL, total INTEGER NOT NULL, completed REAL NOT NULL,
    description TEXT NOT NULL, version_id TEXT NOT NULL, heartbeat REAL NOT NULL, PRIMARY KEY (bucket, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tenants (
    name TEXT PRIMARY KEY, created REAL NOT NULL, settings TEXT NOT NULL
) WITHOUT ROWID;
"""
_SQLITE_V3_IDENTITY_COLUMNS = (("account_name", "TEXT NOT NULL DEFAULT ''"),
                               ("account_key", "TEXT NOT NULL DEFAULT ''"), ("tenant", "TEXT NOT NULL DEFAULT ''"),
                               ("role", "TEXT NOT NULL DEFAULT 'admin'"), ("scopes", "TEXT NOT NULL DEFAULT '[]'"))
_SQLITE_V3_BUCKET_COLUMNS = (("tenant", "TEXT NOT NULL DEFAULT ''"), ("limits", "TEXT NOT NULL DEFAULT '{}'"))
_SQLITE_V3_INDEXES = """
CREATE UNIQUE INDEX IF NOT EXISTS identities_by_account ON identities (account_name) WHERE account_name != '';
CREATE INDEX IF NOT EXISTS buckets_by_tenant ON buckets (tenant, name);
CREATE INDEX IF NOT EXISTS identities_by_tenant ON identities (tenant);
CREATE INDEX IF NOT EXISTS drain_by_bucket_age ON drain (bucket, since);
"""

# Usage counters per bucket (#7): objects (whatever their residency), parts of uploads, uncommitted blocks.
_SQLITE_V3_USAGE = """
CREATE TABLE IF NOT EXISTS usage (
    bucket TEXT PRIMARY KEY, bytes INTEGER NOT NULL, objects INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS usage_bucket_created AFTER INSERT ON buckets BEGIN
    INSERT INTO usage VALUES (NEW.name, 0, 0) ON CONFLICT (bucket) DO UPDATE SET bytes = 0, objects = 0;
END;
CREATE TRIGGER IF NOT EXISTS usage_bucket_deleted AFTER DELETE ON buckets BEGIN
    DELETE FROM usage WHERE bucket = OLD.name;
END;
CREATE TRIGGER IF NOT EXISTS usage_object_added AFTER INSERT ON objects BEGIN
    UPDATE usage SET bytes = bytes + NEW.size, objects = objects + 1 WHERE bucket = NEW.bucket;
END;
CREATE TRIGGER IF NOT EXISTS usage_object_removed AFTER DELETE ON objects BEGIN
    UPDATE usage SET bytes = bytes - OLD.size, objects = objects - 1 WHERE bucket = OLD.bucket;
END;
CREATE TRIGGER IF NOT EXISTS usage_object_resized AFTER UPDATE OF size ON objects WHEN OLD.size != NEW.size BEGIN
    UPDATE usage SET bytes = bytes - OLD.size + NEW.size WHERE bucket = NEW.bucket;
END;
CREATE TRIGGER IF NOT EXISTS usage_part_added AFTER INSERT ON parts BEGIN
    UPDATE usage SET bytes = bytes + NEW.size
    WHERE bucket = (SELECT bucket FROM uploads WHERE upload_id = NEW.upload_id);
END;
CREATE TRIGGER IF NOT EXISTS usage_part_removed AFTER DELETE ON parts BEGIN
    UPDATE usage SET bytes = bytes - OLD.size
    WHERE bucket = (SELECT bucket FROM uploads WHERE upload_id = OLD.upload_id);
END;
CREATE TRIGGER IF NOT EXISTS usage_block_added AFTER INSERT ON blocks BEGIN
    UPDATE usage SET bytes = bytes + NEW.size WHERE bucket = NEW.bucket;
END;
CREATE TRIGGER IF NOT EXISTS usage_block_removed AFTER DELETE ON blocks BEGIN
    UPDATE usage SET bytes = bytes - OLD.size WHERE bucket = OLD.bucket;
END;
"""
_SQLITE_V3_USAGE_COUNT = """
INSERT INTO usage
SELECT b.name,
       coalesce((SELECT sum(size) FROM objects o WHERE o.bucket = b.name), 0)
     + coalesce((SELECT sum(p.size) FROM parts p JOIN uploads u ON u.upload_id = p.upload_id
                 WHERE u.bucket = b.name), 0)
     + coalesce((SELECT sum(size) FROM blocks k WHERE k.bucket = b.name), 0),
       (SELECT count(*) FROM objects o WHERE o.bucket = b.name)
FROM buckets b
"""

# Warm bytes per bucket (#7): versions with residency > 0.
_SQLITE_V3_WARM = """
CREATE TABLE IF NOT EXISTS warm (bucket TEXT PRIMARY KEY, bytes INTEGER NOT NULL) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS warm_object_added AFTER INSERT ON objects WHEN NEW.residency > 0 BEGIN
    INSERT INTO warm VALUES (NEW.bucket, NEW.size) ON CONFLICT (bucket) DO UPDATE SET bytes = bytes + excluded.bytes;
END;
CREATE TRIGGER IF NOT EXISTS warm_object_removed AFTER DELETE ON objects WHEN OLD.residency > 0 BEGIN
    UPDATE warm SET bytes = bytes - OLD.size WHERE bucket = OLD.bucket;
END;
CREATE TRIGGER IF NOT EXISTS warm_object_changed AFTER UPDATE OF residency, size ON objects
WHEN (OLD.residency > 0) != (NEW.residency > 0) OR (NEW.residency > 0 AND OLD.size != NEW.size) BEGIN
    UPDATE warm SET bytes = bytes - OLD.size WHERE bucket = OLD.bucket AND OLD.residency > 0;
    INSERT INTO warm SELECT NEW.bucket, NEW.size WHERE NEW.residency > 0
        ON CONFLICT (bucket) DO UPDATE SET bytes = bytes + excluded.bytes;
END;
CREATE TRIGGER IF NOT EXISTS warm_bucket_deleted AFTER DELETE ON buckets BEGIN
    DELETE FROM warm WHERE bucket = OLD.name;
END;
"""
_SQLITE_V3_WARM_COUNT = "INSERT INTO warm SELECT bucket, sum(size) FROM objects WHERE residency > 0 GROUP BY bucket"

# The packed store (#8). The references of a removed or replaced row: SQLite 3.40 searches a row-value IN by the
# first key column only; the two one-column INs in front make it a search on the whole primary key. The two
# triggers that use it are dropped and made again: files of early #8 builds have slower versions of them.
_SQLITE_REFS_OF_OLD = ("segment_id IN (SELECT e.value ->> 0 FROM json_each(OLD.extents) AS e) "
                       "AND offset IN (SELECT e.value ->> 1 FROM json_each(OLD.extents) AS e) "
                       "AND (segment_id, offset) IN "
                       "(SELECT e.value ->> 0, e.value ->> 1 FROM json_each(OLD.extents) AS e)")
_SQLITE_V3_SEGMENTS = """
CREATE TABLE IF NOT EXISTS segments (
    segment_id TEXT PRIMARY KEY, owner TEXT NOT NULL, state TEXT NOT NULL, created REAL NOT NULL,
    sealed REAL NOT NULL DEFAULT 0, size INTEGER NOT NULL DEFAULT 0, live_bytes INTEGER NOT NULL DEFAULT 0,
    live_count INTEGER NOT NULL DEFAULT 0, lease_until REAL NOT NULL DEFAULT 0, retired REAL NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS segments_by_state ON segments (state, sealed);
CREATE TABLE IF NOT EXISTS packed_refs (
    segment_id TEXT NOT NULL, offset INTEGER NOT NULL, length INTEGER NOT NULL, bucket TEXT NOT NULL,
    key TEXT NOT NULL, PRIMARY KEY (segment_id, offset)
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS packed_ref_fence BEFORE INSERT ON packed_refs
WHEN NOT EXISTS (SELECT 1 FROM segments WHERE segment_id = NEW.segment_id AND state IN ('open', 'sealed'))
BEGIN
    SELECT RAISE(ABORT, '{segment_closed}');
END;
CREATE TRIGGER IF NOT EXISTS packed_ref_added AFTER INSERT ON packed_refs BEGIN
    UPDATE segments SET live_bytes = live_bytes + NEW.length, live_count = live_count + 1
    WHERE segment_id = NEW.segment_id;
END;
CREATE TRIGGER IF NOT EXISTS packed_ref_removed AFTER DELETE ON packed_refs BEGIN
    UPDATE segments SET live_bytes = live_bytes - OLD.length, live_count = live_count - 1
    WHERE segment_id = OLD.segment_id;
END;
CREATE TRIGGER IF NOT EXISTS packed_object_added AFTER INSERT ON objects
WHEN instr(NEW.extents, '["s') > 0 BEGIN
    INSERT INTO packed_refs SELECT e.value ->> 0, e.value ->> 1, e.value ->> 2, NEW.bucket, NEW.key
    FROM json_each(NEW.extents) AS e WHERE substr(e.value ->> 0, 1, 1) = 's';
END;
DROP TRIGGER IF EXISTS packed_object_removed;
CREATE TRIGGER packed_object_removed AFTER DELETE ON objects
WHEN instr(OLD.extents, '["s') > 0 BEGIN
    DELETE FROM packed_refs WHERE {refs_of_old};
END;
DROP TRIGGER IF EXISTS packed_object_moved;
CREATE TRIGGER packed_object_moved AFTER UPDATE OF extents ON objects
WHEN OLD.extents IS NOT NEW.extents AND (instr(OLD.extents, '["s') > 0 OR instr(NEW.extents, '["s') > 0) BEGIN
    DELETE FROM packed_refs WHERE {refs_of_old};
    INSERT INTO packed_refs SELECT e.value ->> 0, e.value ->> 1, e.value ->> 2, NEW.bucket, NEW.key
    FROM json_each(NEW.extents) AS e WHERE substr(e.value ->> 0, 1, 1) = 's';
END;
""".format(segment_closed=pg_schema.SEGMENT_CLOSED, refs_of_old=_SQLITE_REFS_OF_OLD)


def _adopt_tenants(conn: sqlite3.Connection) -> None:
    """Identities and buckets made before tenants existed: the root identity joins the tenant ``root``, every
    other identity gets a tenant of its own (its access key, lower-cased), so users isolated from each other
    before stay isolated; a bucket joins its owner's tenant (``root`` if its owner is gone)."""
    now = time.time()
    conn.execute("INSERT INTO tenants VALUES (?, ?, '{}') ON CONFLICT (name) DO NOTHING", (ROOT_TENANT, now))
    taken = {row[0] for row in conn.execute("SELECT name FROM tenants")}
    for access_key, is_root in conn.execute("SELECT access_key, is_root FROM identities WHERE tenant = ''").fetchall():
        tenant = ROOT_TENANT if is_root else tenant_name_for_key(access_key, taken)
        if tenant not in taken:
            conn.execute("INSERT INTO tenants VALUES (?, ?, '{}')", (tenant, now))
            taken.add(tenant)
        conn.execute("UPDATE identities SET tenant = ? WHERE access_key = ?", (tenant, access_key))
    conn.execute("UPDATE buckets SET tenant = coalesce((SELECT i.tenant FROM identities i WHERE i.owner_id = "
                 "buckets.owner_id ORDER BY i.is_root DESC LIMIT 1), ?) WHERE tenant = ''", (ROOT_TENANT,))


def _sqlite_v3(conn: sqlite3.Connection) -> None:
    # Files marked 1 or 2 may lack any table of their version too (a file cut short at creation): make sure.
    _sqlite_v1(conn)
    _sqlite_v2(conn)
    _script(conn, _SQLITE_V3_TABLES)
    _add_missing_columns(conn, "identities", _SQLITE_V3_IDENTITY_COLUMNS)
    _add_missing_columns(conn, "buckets", _SQLITE_V3_BUCKET_COLUMNS)
    _script(conn, _SQLITE_V3_INDEXES)
    _adopt_tenants(conn)
    # Counters new to the file are counted once, in this transaction, with their triggers in place.
    count_usage, count_warm = not _table_exists(conn, "usage"), not _table_exists(conn, "warm")
    _script(conn, _SQLITE_V3_USAGE)
    if count_usage:
        conn.execute(_SQLITE_V3_USAGE_COUNT)
    _script(conn, _SQLITE_V3_WARM)
    if count_warm:
        conn.execute(_SQLITE_V3_WARM_COUNT)
    _script(conn, _SQLITE_V3_SEGMENTS)
    conn.execute("INSERT INTO counters VALUES ('resident_bytes', 0) ON CONFLICT (name) DO NOTHING")


# Version 4: the cluster (#9).
_SQLITE_V4 = """
CREATE TABLE IF NOT EXISTS nodes (
    node TEXT PRIMARY KEY, address TEXT NOT NULL, started REAL NOT NULL, heartbeat REAL NOT NULL, info TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS cluster_leases (
    name TEXT PRIMARY KEY, owner TEXT NOT NULL, lease_until REAL NOT NULL
) WITHOUT ROWID;
"""


def _sqlite_v4(conn: sqlite3.Connection) -> None:
    _script(conn, _SQLITE_V4)


# Version 5: who holds a drain claim (#9), so that the claims of a dead node are taken over at once instead of
# after they lapse. '' = unknown (claims of older code, and entries never claimed).
def _sqlite_v5(conn: sqlite3.Connection) -> None:
    _add_missing_columns(conn, "drain", (("claimed_by", "TEXT NOT NULL DEFAULT ''"),))


_PG_V5 = """ALTER TABLE drain ADD COLUMN IF NOT EXISTS claimed_by TEXT COLLATE "C" NOT NULL DEFAULT ''"""


# Version 6: PostgreSQL's counter triggers defer their updates to the end of the write (pg_schema.py). SQLite has
# one writer at a time, so the order its triggers lock in cannot deadlock: nothing changes there.
def _sqlite_v6(conn: sqlite3.Connection) -> None:
    pass


# Version 7: the audit log (#10): operator actions through the admin API, cluster-wide. ``id INTEGER PRIMARY KEY`` is
# the rowid (no AUTOINCREMENT: rows are never deleted, so max + 1 never reuses an id).
_SQLITE_V7 = """
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY, time REAL NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL, target TEXT NOT NULL,
    detail TEXT NOT NULL, outcome TEXT NOT NULL, request_id TEXT NOT NULL, node TEXT NOT NULL
);
"""


def _sqlite_v7(conn: sqlite3.Connection) -> None:
    _script(conn, _SQLITE_V7)


# --- the steps -----------------------------------------------------------------------------------------------------

PG_BASELINE = 3  # PostgreSQL databases start here: their first step creates everything up to it at once

STEPS: tuple[Step, ...] = (
    Step(1, "objects, buckets, identities, multipart uploads (Atoll 0.1)", _sqlite_v1, None),
    Step(2, "tiering: residency, drain, links, jobs, fills", _sqlite_v2, None),
    Step(3, "everything as of #8: accounts, tenants, usage, warm bytes, copies, blocks, leases, segments",
         _sqlite_v3, pg_schema.V3_BASELINE),
    Step(4, "cluster: nodes and cluster leases", _sqlite_v4, pg_schema.V4_CLUSTER),
    Step(5, "cluster: owners of drain claims", _sqlite_v5, _PG_V5),
    Step(6, "PostgreSQL: counters applied at commit in one lock order", _sqlite_v6, pg_schema.V6_DEFERRED_COUNTS),
    Step(7, "audit log of operator actions", _sqlite_v7, pg_schema.V7_AUDIT),
)
LATEST = STEPS[-1].version

assert [s.version for s in STEPS] == list(range(1, LATEST + 1)), "steps are numbered 1, 2, 3, ... in order"
assert all(s.postgres is None for s in STEPS if s.version < PG_BASELINE)
assert all(s.postgres is not None for s in STEPS if s.version >= PG_BASELINE)


def pending_steps(version: int, engine: str) -> list[Step]:
    """The steps ``upgrade_*`` would apply to a database at ``version`` (``engine``: "sqlite" or "postgres")."""
    if engine == "postgres":
        return [s for s in STEPS if s.version > version and s.postgres is not None]
    return [s for s in STEPS if s.version > version]


# --- SQLite --------------------------------------------------------------------------------------------------------

def _sqlite_version(conn: sqlite3.Connection) -> int:
    if not _table_exists(conn, "schema_version"):
        return 0
    row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def upgrade_sqlite(conn: sqlite3.Connection) -> tuple[int, int]:
    """Apply the pending steps to a SQLite file, each in its own write transaction; returns (from, to).
    Raises SchemaMismatch if the file is newer than this code. Safe with other processes opening it at once."""
    saved_isolation = conn.isolation_level
    conn.isolation_level = None  # transactions are ours: BEGIN IMMEDIATE takes the write lock before reading
    try:
        start = _sqlite_version(conn)
        if start > LATEST:
            raise SchemaMismatch(start, LATEST)
        while True:
            conn.execute("BEGIN IMMEDIATE")
            try:
                version = _sqlite_version(conn)
                if version > LATEST:
                    raise SchemaMismatch(version, LATEST)
                steps = pending_steps(version, "sqlite")
                if steps:
                    steps[0].sqlite(conn)
                    conn.execute("DELETE FROM schema_version")
                    conn.execute("INSERT INTO schema_version VALUES (?)", (steps[0].version,))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            if not steps:
                return start, version
    finally:
        conn.isolation_level = saved_isolation


# --- PostgreSQL ----------------------------------------------------------------------------------------------------

# pg_advisory_lock key of schema upgrades: the bytes of "atolldb" as a number (any constant no other lock uses).
_PG_UPGRADE_LOCK = int.from_bytes(b"atolldb", "big")


def _pg_version(conn: Any) -> int:
    """psycopg connection → the version in schema_version (0 if the database has no such table or no row)."""
    if conn.execute("SELECT to_regclass('schema_version')").fetchone()[0] is None:
        return 0
    row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def _pg_idle_read(conn: Any, fn: Callable[[Any], Any]) -> Any:
    """Run a read on ``conn`` and leave it as found: a transaction this opened is ended."""
    from psycopg.pq import TransactionStatus

    was_idle = conn.info.transaction_status == TransactionStatus.IDLE
    try:
        return fn(conn)
    finally:
        if was_idle and conn.info.transaction_status != TransactionStatus.IDLE:
            conn.rollback()


def current_version(conn: Any) -> int:
    """The schema version of a database (0: no schema yet); ``conn`` a sqlite3 or a psycopg connection."""
    if isinstance(conn, sqlite3.Connection):
        return _sqlite_version(conn)
    return _pg_idle_read(conn, _pg_version)


def check_postgres(conn: Any) -> int:
    """Refuse to run on a schema older or newer than this code (raises SchemaMismatch); returns the version."""
    version = current_version(conn)
    if version != LATEST:
        raise SchemaMismatch(version, LATEST)
    return version


def upgrade_postgres(conn: Any) -> tuple[int, int]:
    """Apply the pending steps to a PostgreSQL database, one transaction each, under a session advisory lock (two
    upgraders at once apply each step once); returns (from, to). ``conn``: a psycopg connection not inside a
    transaction. Raises SchemaMismatch if the database is newer than this code."""
    from psycopg.pq import TransactionStatus

    if conn.info.transaction_status != TransactionStatus.IDLE:
        raise RuntimeError("upgrade_postgres needs a connection outside any transaction")
    saved_autocommit = conn.autocommit
    conn.autocommit = True
    try:
        conn.execute("SELECT pg_advisory_lock(%s)", (_PG_UPGRADE_LOCK,))
        try:
            start = _pg_version(conn)
            if start > LATEST:
                raise SchemaMismatch(start, LATEST)
            for step in pending_steps(start, "postgres"):
                with conn.transaction():
                    conn.execute(step.postgres)
                    conn.execute("DELETE FROM schema_version")
                    conn.execute("INSERT INTO schema_version VALUES (%s)", (step.version,))
            return start, _pg_version(conn)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_PG_UPGRADE_LOCK,))
    finally:
        conn.autocommit = saved_autocommit
