"""Per-bucket warm bytes (#7: warm reservations and caps per tenant), for every SQL engine.

One row per bucket (table ``warm``) holds the bytes its versions keep on the warm tier (resident, and partial fills
counted whole, as the ``resident_bytes`` counter counts them). Triggers (migrations.py, pg_schema.py) keep it in
the same transaction as every change of the rows it sums, so eviction reads a tenant's warm bytes exactly, and
cheaply: a sum over its buckets.
"""

from __future__ import annotations

ACTUAL = "SELECT bucket, sum(size) FROM objects WHERE residency > 0 GROUP BY bucket"

_BY_TENANT = ("SELECT b.tenant, sum(w.bytes) FROM warm w JOIN buckets b ON b.name = w.bucket "
              "GROUP BY b.tenant HAVING sum(w.bytes) > 0")


def mismatches(conn) -> list[tuple[str, int, int]]:
    """(bucket, counted bytes, actual bytes) of buckets whose row disagrees with their versions."""
    counted = {bucket: int(size) for bucket, size in conn.execute("SELECT bucket, bytes FROM warm")}
    actual = {bucket: int(size) for bucket, size in conn.execute(ACTUAL)}
    return sorted((bucket, counted.get(bucket, 0), actual.get(bucket, 0)) for bucket in counted.keys() | actual.keys()
                  if counted.get(bucket, 0) != actual.get(bucket, 0))


def recount(conn) -> list[tuple[str, int, int]]:
    """Set every row to what the versions say; returns the mismatches it found."""
    wrong = mismatches(conn)
    conn.execute("DELETE FROM warm")
    conn.execute(f"INSERT INTO warm (bucket, bytes) {ACTUAL}")
    return wrong


def by_tenant(conn) -> dict[str, int]:
    return {tenant: int(size) for tenant, size in conn.execute(_BY_TENANT).fetchall()}
