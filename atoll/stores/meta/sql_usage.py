"""Usage counters and the quota check of the metadata store (#7), for every SQL engine.

One row per bucket (table ``usage``) holds its bytes and objects. Triggers (SQLite's in migrations.py, PostgreSQL's in
pg_schema.py) keep it in the same transaction as every change to the rows it sums, so it is exact by
construction, whichever method (or future method) writes them:
- objects count once whatever their residency: an absent row of a linked bucket is the tenant's namespace;
- parts of uploads in progress and uncommitted blocks count as bytes (not as objects). A part's bucket is its
  upload's, so parts must be deleted before their upload (every caller does).
A tenant's usage is the sum over its buckets (an index seek on buckets_by_tenant), read only when a limit asks.

Concurrency: the counter row of a bucket is updated by the triggers, so concurrent writers of one bucket queue on
its row lock (PostgreSQL) or on the one writer (SQLite); ``QuotaGuard.check`` reads the counter after the change,
in the same transaction, so it sees every write committed before it and none after.
"""

from __future__ import annotations

import functools
import json

from atoll.core import quota

# What each bucket's counters should say, from the rows themselves.
ACTUAL = """
SELECT b.name,
       coalesce((SELECT sum(size) FROM objects o WHERE o.bucket = b.name), 0)
     + coalesce((SELECT sum(p.size) FROM parts p JOIN uploads u ON u.upload_id = p.upload_id
                 WHERE u.bucket = b.name), 0)
     + coalesce((SELECT sum(size) FROM blocks k WHERE k.bucket = b.name), 0),
       (SELECT count(*) FROM objects o WHERE o.bucket = b.name)
FROM buckets b
"""

# The limits are JSON text, parsed here (json_extract is SQLite's, ->> on text PostgreSQL's: neither runs on both).
_LIMITS = "SELECT b.tenant, b.limits, t.settings FROM buckets b LEFT JOIN tenants t ON t.name = b.tenant WHERE b.name = ?"

_TENANT_USAGE = ("SELECT coalesce(sum(u.bytes), 0), coalesce(sum(u.objects), 0) FROM buckets b "
                 "JOIN usage u ON u.bucket = b.name WHERE b.tenant = ?")


@functools.lru_cache(maxsize=4096)
def _bucket_limits(text: str) -> tuple[int, int]:
    limits = json.loads(text)
    return int(limits.get("max_bytes") or 0), int(limits.get("max_objects") or 0)


@functools.lru_cache(maxsize=1024)
def _tenant_limits(text: str | None) -> tuple[int, int]:
    if not text:
        return 0, 0
    limits = json.loads(text).get("limits") or {}
    return int(limits.get("max_bytes") or 0), int(limits.get("max_objects") or 0)


def recount(conn) -> list[tuple[str, tuple[int, int], tuple[int, int]]]:
    """Set every bucket's counters to what its rows say; returns (bucket, old, new) of those that changed."""
    wrong = mismatches(conn)
    conn.execute("DELETE FROM usage")
    conn.execute(f"INSERT INTO usage (bucket, bytes, objects) {ACTUAL}")
    return wrong


def mismatches(conn) -> list[tuple[str, tuple[int, int], tuple[int, int]]]:
    """(bucket, counted (bytes, objects), actual (bytes, objects)) of buckets whose counters are wrong."""
    counted = {r[0]: (int(r[1]), int(r[2])) for r in conn.execute("SELECT bucket, bytes, objects FROM usage")}
    out = []
    for name, size, objects in conn.execute(ACTUAL).fetchall():
        have = counted.get(name)
        if have != (int(size), int(objects)):
            out.append((name, have if have is not None else (0, 0), (int(size), int(objects))))
    return sorted(out)


def settle_counts(conn) -> None:
    """Inside a write, before reading a counter row (usage, warm, a segment's live bytes) it changed: PostgreSQL
    collects the changes until the commit (postgres.py, pg_schema.V6_DEFERRED_COUNTS); SQLite applies them at once."""
    apply_counts = getattr(conn, "apply_counts", None)
    if apply_counts is not None:
        apply_counts()


def bucket_usage(conn, bucket: str) -> tuple[int, int]:
    row = conn.execute("SELECT bytes, objects FROM usage WHERE bucket = ?", (bucket,)).fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


def tenant_usage(conn, tenant: str) -> tuple[int, int]:
    row = conn.execute(_TENANT_USAGE, (tenant,)).fetchone()
    return int(row[0]), int(row[1])


class QuotaGuard:
    """Inside a write's transaction: ``QuotaGuard.start`` before the change, ``check`` after it. Raises
    QuotaExceeded when the change grew bytes or objects of the bucket or its tenant past a limit (the savepoint
    or transaction then undoes the change). Costs one indexed lookup when neither has a limit."""

    __slots__ = ("bucket", "tenant", "limits", "before")

    def __init__(self, bucket: str, tenant: str, limits: tuple[int, int, int, int], before: tuple[int, int]) -> None:
        self.bucket, self.tenant, self.limits, self.before = bucket, tenant, limits, before

    @classmethod
    def start(cls, conn, bucket: str) -> "QuotaGuard | None":
        row = conn.execute(_LIMITS, (bucket,)).fetchone()
        if row is None:
            return None
        limits = _bucket_limits(row[1]) + _tenant_limits(row[2])
        if not any(limits):
            return None
        return cls(bucket, row[0], limits, bucket_usage(conn, bucket))

    def check(self, conn) -> None:
        settle_counts(conn)
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


def guarded(conn, bucket: str, change):
    """Run ``change()`` (a client write to ``bucket``) under the quota check; returns its result."""
    guard = QuotaGuard.start(conn, bucket)
    result = change()
    if guard is not None:
        guard.check(conn)
    return result
