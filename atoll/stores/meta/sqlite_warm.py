"""Per-bucket warm bytes of the SQLite metadata store (#7: warm reservations and caps per tenant), and the index
that lets the drain claim per bucket.

One row per bucket holds the bytes its versions keep on the warm tier (resident, and partial fills counted whole,
as the ``resident_bytes`` counter counts them). Triggers keep it in the same transaction as every change of the
rows it sums, so eviction reads a tenant's warm bytes exactly, and cheaply: a sum over its buckets.
"""

from __future__ import annotations

import sqlite3

_SCHEMA = """
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
CREATE INDEX IF NOT EXISTS drain_by_bucket_age ON drain (bucket, since);
"""

_ACTUAL = "SELECT bucket, sum(size) FROM objects WHERE residency > 0 GROUP BY bucket"

_BY_TENANT = ("SELECT b.tenant, sum(w.bytes) FROM warm w JOIN buckets b ON b.name = w.bucket "
              "GROUP BY b.tenant HAVING sum(w.bytes) > 0")


def install(conn: sqlite3.Connection) -> None:
    """Create the table, triggers and index. A file that had no table yet is counted once the triggers are in
    place, so writes of other processes meanwhile are counted either way."""
    new = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'warm'").fetchone() is None
    conn.executescript(_SCHEMA)
    if new:
        conn.execute("BEGIN IMMEDIATE")
        recount(conn)
        conn.execute("COMMIT")


def mismatches(conn: sqlite3.Connection) -> list[tuple[str, int, int]]:
    """(bucket, counted bytes, actual bytes) of buckets whose row disagrees with their versions."""
    counted = {bucket: int(size) for bucket, size in conn.execute("SELECT bucket, bytes FROM warm")}
    actual = {bucket: int(size) for bucket, size in conn.execute(_ACTUAL)}
    return sorted((bucket, counted.get(bucket, 0), actual.get(bucket, 0)) for bucket in counted.keys() | actual.keys()
                  if counted.get(bucket, 0) != actual.get(bucket, 0))


def recount(conn: sqlite3.Connection) -> list[tuple[str, int, int]]:
    """Set every row to what the versions say; returns the mismatches it found."""
    wrong = mismatches(conn)
    conn.execute("DELETE FROM warm")
    conn.execute(f"INSERT INTO warm {_ACTUAL}")
    return wrong


def by_tenant(conn: sqlite3.Connection) -> dict[str, int]:
    return {tenant: int(size) for tenant, size in conn.execute(_BY_TENANT).fetchall()}
