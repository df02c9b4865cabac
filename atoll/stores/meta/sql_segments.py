"""The packed store's metadata (#8), for every SQL engine: segments and the reverse index of their live records.

``packed_refs`` has one row per extent of an object that lies in a segment, kept by triggers on ``objects``
(SQLite's in migrations.py, PostgreSQL's in pg_schema.py) in the same transaction as the change, so it is exact
whichever method writes objects (PUT, delete, eviction, Put Block List, compaction). A record without a row is
dead. ``segments`` carries each segment's state and its live bytes and records (triggers on ``packed_refs``), which
is how the compactor picks victims without reading segment files.

The fence: a new reference may only point into a segment that is ``open`` or ``sealed``. The compactor first
marks its victim ``compacting`` and only then reads its references, so a PUT whose metadata commit arrives
after that fails (``SegmentClosed``) instead of pointing into a segment about to be deleted; the namespace
writes such a record again into its open segment and retries. The trigger raises an error whose message starts
with ``SEGMENT_CLOSED``; each engine maps it to ``errors.SegmentClosed``.

States: open (its writer appends) → sealed (full, or its writer is gone) → compacting (under a lease) →
retired (no reference left; the file is deleted after a grace, then the row).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Sequence

from atoll import errors
from atoll.core.models import SegmentInfo
from atoll.stores.meta import sql_usage

if TYPE_CHECKING:
    from atoll.stores.meta.sql import SqlMetaStore

SEGMENT_CLOSED = "atoll: segment closed"

COLUMNS = "segment_id, owner, state, created, sealed, size, live_bytes, live_count, lease_until, retired"


def is_segment_closed(exc: BaseException) -> bool:
    return SEGMENT_CLOSED in str(exc)


def row_to_segment(row: Sequence) -> SegmentInfo:
    return SegmentInfo(*row)


def select_all(conn) -> list[SegmentInfo]:
    return [row_to_segment(r) for r in conn.execute(f"SELECT {COLUMNS} FROM segments ORDER BY created")]


def register(conn, segment_id: str, owner: str, now: float) -> None:
    conn.execute("INSERT INTO segments (segment_id, owner, state, created) VALUES (?, ?, 'open', ?)",
                 (segment_id, owner, now))


def seal(conn, segment_id: str, size: int, now: float) -> bool:
    return conn.execute("UPDATE segments SET state = 'sealed', sealed = ?, size = ? "
                        "WHERE segment_id = ? AND state = 'open'", (now, size, segment_id)).rowcount > 0


def claim(store: "SqlMetaStore", conn, owner: str, now: float, lease: float, threshold: float,
          settle: float) -> SegmentInfo | None:
    """The next segment to compact, marked ``compacting`` under ``owner``'s lease: one whose compaction stopped
    (its lease ran out: a crashed compactor) first, else the sealed one with the most dead bytes past the
    threshold. Sealed segments with no live record at all qualify whatever their size. Rows another node is
    claiming are skipped, and the UPDATE re-checks the state, so two compactors never get the same segment."""
    row = conn.execute(f"SELECT {COLUMNS} FROM segments WHERE state = 'compacting' AND lease_until < ? LIMIT 1"
                       f"{store.SKIP_LOCKED}", (now,)).fetchone()
    if row is None:
        row = conn.execute(
            f"SELECT {COLUMNS} FROM segments WHERE state = 'sealed' AND sealed < ? "
            "AND (live_count = 0 OR size - live_bytes - 12 * live_count >= ? * size) "
            f"ORDER BY size - live_bytes DESC LIMIT 1{store.SKIP_LOCKED}", (now - settle, threshold)).fetchone()
    if row is None:
        return None
    if conn.execute("UPDATE segments SET state = 'compacting', owner = ?, lease_until = ? WHERE segment_id = ? "
                    "AND (state = 'sealed' OR state = 'compacting' AND lease_until < ?)",
                    (owner, now + lease, row[0], now)).rowcount == 0:
        return None
    found = row_to_segment(row)
    found.state, found.owner, found.lease_until = "compacting", owner, now + lease
    return found


def refs(conn, segment_id: str, after: int, limit: int) -> list[tuple[int, int, str, str]]:
    return [tuple(r) for r in conn.execute(
        "SELECT \"offset\", length, bucket, key FROM packed_refs WHERE segment_id = ? AND \"offset\" > ? "
        "ORDER BY \"offset\" LIMIT ?", (segment_id, after, limit)).fetchall()]


def move(store: "SqlMetaStore", conn, segment_id: str, owner: str, lease_until: float,
         moves: Sequence[tuple[str, str, int, str, int]]) -> int:
    """Point objects at their records' new places: (bucket, key, old offset, new segment, new offset). An object
    changed since its record was copied (overwritten, deleted) is left alone: its copy is dead on arrival.
    Raises if the compaction lease was lost (another compactor took the segment over)."""
    held = conn.execute(f"SELECT 1 FROM segments WHERE segment_id = ? AND state = 'compacting' AND owner = ?"
                        f"{store.FOR_UPDATE}", (segment_id, owner)).fetchone()
    if held is None:
        raise errors.Unavailable("compaction lease lost")
    conn.execute("UPDATE segments SET lease_until = ? WHERE segment_id = ?", (lease_until, segment_id))
    moved = 0
    for bucket, key, old_offset, new_segment, new_offset in sorted(moves):
        store.lock_key(conn, "key", bucket, key)  # a PUT on another node may be replacing the row right now
        row = conn.execute("SELECT extents FROM objects WHERE bucket = ? AND key = ?", (bucket, key)).fetchone()
        if row is None:
            continue
        extents = json.loads(row[0])
        changed = False
        for extent in extents:
            if extent[0] == segment_id and extent[1] == old_offset:
                extent[0], extent[1] = new_segment, new_offset
                changed = True
        if changed:
            conn.execute("UPDATE objects SET extents = ? WHERE bucket = ? AND key = ?",
                         (json.dumps(extents, separators=(",", ":")), bucket, key))
            moved += 1
    return moved


def retire(conn, segment_id: str, owner: str, now: float) -> bool:
    """Mark a compacted segment retired, if nothing points into it any more (its file can go after a grace)."""
    if conn.execute("SELECT 1 FROM packed_refs WHERE segment_id = ? LIMIT 1", (segment_id,)).fetchone():
        return False
    return conn.execute("UPDATE segments SET state = 'retired', retired = ? WHERE segment_id = ? "
                        "AND state = 'compacting' AND owner = ?", (now, segment_id, owner)).rowcount > 0


def seal_orphans(conn, owners_alive: set[str], node: str, sizes: dict[str, int], now: float) -> list[str]:
    """Seal open segments of this node whose writer process is gone (``sizes``: their file sizes)."""
    sealed = []
    for segment_id, owner in conn.execute("SELECT segment_id, owner FROM segments WHERE state = 'open'").fetchall():
        if owner.split(":", 1)[0] == node and owner not in owners_alive and segment_id in sizes:
            if seal(conn, segment_id, sizes[segment_id], now):
                sealed.append(segment_id)
    return sealed


def release_dead_compactions(conn, owners: Sequence[str]) -> int:
    """End the leases of compactions whose compactor is known dead, so the next claim redoes them at once."""
    return sum(conn.execute("UPDATE segments SET lease_until = 0 WHERE state = 'compacting' AND owner = ?",
                            (owner,)).rowcount for owner in owners)


def recount(store: "SqlMetaStore", conn, repair: bool) -> list[tuple[str, int, int, int, int]]:
    """Segments whose live counters disagree with their references: (id, bytes said, counted, records said,
    counted). With ``repair`` the reverse index is rebuilt from the objects and the counters from it; segments
    being compacted go back to sealed first (a compaction is redone from the start; moves are idempotent).
    References into segments that are gone are not indexed: fsck reports them as missing data."""
    if repair:
        conn.execute("UPDATE segments SET state = 'sealed', lease_until = 0 WHERE state = 'compacting'")
        conn.execute("DELETE FROM packed_refs")
        sql_usage.settle_counts(conn)
        conn.execute("UPDATE segments SET live_bytes = 0, live_count = 0")
        conn.execute("INSERT INTO packed_refs (segment_id, \"offset\", length, bucket, key) "
                     f"SELECT seg, off, len, bucket, key FROM ({store.PACKED_EXTENTS}) AS x "
                     "WHERE seg IN (SELECT segment_id FROM segments WHERE state IN ('open', 'sealed'))")
        sql_usage.settle_counts(conn)
    return [(r[0], int(r[1]), int(r[2]), int(r[3]), int(r[4])) for r in conn.execute(
        "SELECT s.segment_id, s.live_bytes, coalesce(r.b, 0), s.live_count, coalesce(r.n, 0) FROM segments s "
        "LEFT JOIN (SELECT segment_id, sum(length) AS b, count(*) AS n FROM packed_refs GROUP BY segment_id) r "
        "ON r.segment_id = s.segment_id WHERE s.live_bytes != coalesce(r.b, 0) OR s.live_count != coalesce(r.n, 0)"
    ).fetchall()]
