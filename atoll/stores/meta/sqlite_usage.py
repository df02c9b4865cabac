"""Usage counters and the quota check of the SQLite metadata store (#7).

One row per bucket holds its bytes and objects. Triggers keep it in the same transaction as every change to
the rows it sums, so it is exact by construction, whichever method (or future method) writes them:
- objects count once whatever their residency: an absent row of a linked bucket is the tenant's namespace;
- parts of uploads in progress and uncommitted blocks count as bytes (not as objects). A part's bucket is its
  upload's, so parts must be deleted before their upload (every caller does).
A tenant's usage is the sum over its buckets (an index seek on buckets_by_tenant), read only when a limit asks.
"""

from __future__ import annotations

import sqlite3

from atoll.core import quota

_SCHEMA = """
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

# What each bucket's counters should say, from the rows themselves.
_ACTUAL = """
SELECT b.name,
       coalesce((SELECT sum(size) FROM objects o WHERE o.bucket = b.name), 0)
     + coalesce((SELECT sum(p.size) FROM parts p JOIN uploads u ON u.upload_id = p.upload_id
                 WHERE u.bucket = b.name), 0)
     + coalesce((SELECT sum(size) FROM blocks k WHERE k.bucket = b.name), 0),
       (SELECT count(*) FROM objects o WHERE o.bucket = b.name)
FROM buckets b
"""

_LIMITS = """
SELECT b.tenant, coalesce(json_extract(b.limits, '$.max_bytes'), 0), coalesce(json_extract(b.limits, '$.max_objects'), 0),
       coalesce(json_extract(t.settings, '$.limits.max_bytes'), 0),
       coalesce(json_extract(t.settings, '$.limits.max_objects'), 0)
FROM buckets b LEFT JOIN tenants t ON t.name = b.tenant WHERE b.name = ?
"""

_TENANT_USAGE = ("SELECT coalesce(sum(u.bytes), 0), coalesce(sum(u.objects), 0) FROM buckets b "
                 "JOIN usage u ON u.bucket = b.name WHERE b.tenant = ?")


def install(conn: sqlite3.Connection) -> None:
    """Create the table and triggers; a file that had no table yet is counted once, in the same transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        new = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'usage'").fetchone() is None
        for statement in _statements(_SCHEMA):
            conn.execute(statement)
        if new:
            recount(conn)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _statements(script: str) -> list[str]:
    # Trigger bodies hold semicolons: split on the statement ends SQLite itself reports.
    out, pending = [], ""
    for line in script.strip().splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            out.append(pending.strip())
            pending = ""
    return out


def recount(conn: sqlite3.Connection) -> list[tuple[str, tuple[int, int], tuple[int, int]]]:
    """Set every bucket's counters to what its rows say; returns (bucket, old, new) of those that changed."""
    wrong = mismatches(conn)
    conn.execute("DELETE FROM usage")
    conn.execute(f"INSERT INTO usage {_ACTUAL}")
    return wrong


def mismatches(conn: sqlite3.Connection) -> list[tuple[str, tuple[int, int], tuple[int, int]]]:
    """(bucket, counted (bytes, objects), actual (bytes, objects)) of buckets whose counters are wrong."""
    counted = {r[0]: (r[1], r[2]) for r in conn.execute("SELECT bucket, bytes, objects FROM usage")}
    out = []
    for name, size, objects in conn.execute(_ACTUAL).fetchall():
        have = counted.get(name)
        if have != (size, objects):
            out.append((name, have if have is not None else (0, 0), (int(size), int(objects))))
    return sorted(out)


def bucket_usage(conn: sqlite3.Connection, bucket: str) -> tuple[int, int]:
    row = conn.execute("SELECT bytes, objects FROM usage WHERE bucket = ?", (bucket,)).fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


def tenant_usage(conn: sqlite3.Connection, tenant: str) -> tuple[int, int]:
    row = conn.execute(_TENANT_USAGE, (tenant,)).fetchone()
    return int(row[0]), int(row[1])


class QuotaGuard:
    """Inside a write's transaction: ``QuotaGuard.start`` before the change, ``check`` after it. Raises
    QuotaExceeded when the change grew bytes or objects of the bucket or its tenant past a limit (the savepoint
    then undoes the change). Costs one indexed lookup when neither has a limit."""

    __slots__ = ("bucket", "tenant", "limits", "before")

    def __init__(self, bucket: str, tenant: str, limits: tuple[int, int, int, int], before: tuple[int, int]) -> None:
        self.bucket, self.tenant, self.limits, self.before = bucket, tenant, limits, before

    @classmethod
    def start(cls, conn: sqlite3.Connection, bucket: str) -> "QuotaGuard | None":
        row = conn.execute(_LIMITS, (bucket,)).fetchone()
        if row is None or not any(row[1:]):
            return None
        return cls(bucket, row[0], (int(row[1]), int(row[2]), int(row[3]), int(row[4])), bucket_usage(conn, bucket))

    def check(self, conn: sqlite3.Connection) -> None:
        after = bucket_usage(conn, self.bucket)
        bucket_bytes, bucket_objects, tenant_bytes, tenant_objects = self.limits
        if quota.grows_past(bucket_bytes, self.before[0], after[0]):
            raise quota.exceeded("bucket", self.bucket, "bytes", bucket_bytes, self.bucket)
        if quota.grows_past(bucket_objects, self.before[1], after[1]):
            raise quota.exceeded("bucket", self.bucket, "objects", bucket_objects, self.bucket)
        if tenant_bytes or tenant_objects:
            # A write changes one bucket: the tenant moved by the same amount.
            now = tenant_usage(conn, self.tenant)
            was = (now[0] - after[0] + self.before[0], now[1] - after[1] + self.before[1])
            if quota.grows_past(tenant_bytes, was[0], now[0]):
                raise quota.exceeded("tenant", self.tenant, "bytes", tenant_bytes, self.bucket)
            if quota.grows_past(tenant_objects, was[1], now[1]):
                raise quota.exceeded("tenant", self.tenant, "objects", tenant_objects, self.bucket)


def guarded(conn: sqlite3.Connection, bucket: str, change):
    """Run ``change()`` (a client write to ``bucket``) under the quota check; returns its result."""
    guard = QuotaGuard.start(conn, bucket)
    result = change()
    if guard is not None:
        guard.check(conn)
    return result
