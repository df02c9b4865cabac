"""The packed store's metadata in SQLite (#8): segments and the reverse index of their live records.

``packed_refs`` has one row per extent of an object that lies in a segment, kept by triggers on ``objects`` in the
same transaction as the change, so it is exact whichever method writes objects (PUT, delete, eviction, Put
Block List, compaction). A record without a row is dead. ``segments`` carries each segment's state and its
live bytes and records (triggers on ``packed_refs``), which is how the compactor picks victims without reading
segment files.

The fence: a new reference may only point into a segment that is ``open`` or ``sealed``. The compactor first
marks its victim ``compacting`` and only then reads its references, so a PUT whose metadata commit arrives
after that fails (``SegmentClosed``) instead of pointing into a segment about to be deleted; the namespace
writes such a record again into its open segment and retries.

States: open (its writer appends) → sealed (full, or its writer is gone) → compacting (under a lease) →
retired (no reference left; the file is deleted after a grace, then the row).
"""

from __future__ import annotations

import json
import sqlite3
from typing import Sequence

from atoll import errors
from atoll.core.models import SegmentInfo

SEGMENT_CLOSED = "atoll: segment closed"

# The references of a removed or replaced row. SQLite 3.40 searches a row-value IN by the first key column only
# (every reference into the segment: 4 ms per delete in a full 64 MiB segment of 4 KiB records); the two
# one-column INs in front make it a search on the whole primary key, and the row-value IN keeps the pairs exact.
_REFS_OF_OLD = ("segment_id IN (SELECT e.value ->> 0 FROM json_each(OLD.extents) AS e) "
                "AND offset IN (SELECT e.value ->> 1 FROM json_each(OLD.extents) AS e) "
                "AND (segment_id, offset) IN (SELECT e.value ->> 0, e.value ->> 1 FROM json_each(OLD.extents) AS e)")

_SCHEMA = """
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
"""

_COLUMNS = "segment_id, owner, state, created, sealed, size, live_bytes, live_count, lease_until, retired"


def install(conn: sqlite3.Connection) -> None:
    # One transaction: another process may be writing objects while this one opens the store, and no write may
    # fall between a trigger's DROP and its CREATE (it would miss the index).
    conn.executescript("BEGIN IMMEDIATE;\n" + _SCHEMA.format(segment_closed=SEGMENT_CLOSED, refs_of_old=_REFS_OF_OLD)
                       + "\nCOMMIT;")


def is_segment_closed(exc: sqlite3.Error) -> bool:
    return SEGMENT_CLOSED in str(exc)


def row_to_segment(row: Sequence) -> SegmentInfo:
    return SegmentInfo(*row)


def select_all(conn: sqlite3.Connection) -> list[SegmentInfo]:
    return [row_to_segment(r) for r in conn.execute(f"SELECT {_COLUMNS} FROM segments ORDER BY created")]


def register(conn: sqlite3.Connection, segment_id: str, owner: str, now: float) -> None:
    conn.execute("INSERT INTO segments (segment_id, owner, state, created) VALUES (?, ?, 'open', ?)",
                 (segment_id, owner, now))


def seal(conn: sqlite3.Connection, segment_id: str, size: int, now: float) -> bool:
    return conn.execute("UPDATE segments SET state = 'sealed', sealed = ?, size = ? "
                        "WHERE segment_id = ? AND state = 'open'", (now, size, segment_id)).rowcount > 0


def claim(conn: sqlite3.Connection, owner: str, now: float, lease: float, threshold: float,
          settle: float) -> SegmentInfo | None:
    """The next segment to compact, marked ``compacting`` under ``owner``'s lease: one whose compaction stopped
    (its lease ran out: a crashed compactor) first, else the sealed one with the most dead bytes past the
    threshold. Sealed segments with no live record at all qualify whatever their size."""
    row = conn.execute(f"SELECT {_COLUMNS} FROM segments WHERE state = 'compacting' AND lease_until < ? LIMIT 1",
                       (now,)).fetchone()
    if row is None:
        row = conn.execute(
            f"SELECT {_COLUMNS} FROM segments WHERE state = 'sealed' AND sealed < ? "
            "AND (live_count = 0 OR size - live_bytes - 12 * live_count >= ? * size) "
            "ORDER BY size - live_bytes DESC LIMIT 1", (now - settle, threshold)).fetchone()
    if row is None:
        return None
    conn.execute("UPDATE segments SET state = 'compacting', owner = ?, lease_until = ? WHERE segment_id = ?",
                 (owner, now + lease, row[0]))
    found = row_to_segment(row)
    found.state, found.owner, found.lease_until = "compacting", owner, now + lease
    return found


def refs(conn: sqlite3.Connection, segment_id: str, after: int, limit: int) -> list[tuple[int, int, str, str]]:
    return conn.execute("SELECT offset, length, bucket, key FROM packed_refs WHERE segment_id = ? AND offset > ? "
                        "ORDER BY offset LIMIT ?", (segment_id, after, limit)).fetchall()


def move(conn: sqlite3.Connection, segment_id: str, owner: str, lease_until: float,
         moves: Sequence[tuple[str, str, int, str, int]]) -> int:
    """Point objects at their records' new places: (bucket, key, old offset, new segment, new offset). An object
    changed since its record was copied (overwritten, deleted) is left alone: its copy is dead on arrival.
    Raises if the compaction lease was lost (another compactor took the segment over)."""
    held = conn.execute("SELECT 1 FROM segments WHERE segment_id = ? AND state = 'compacting' AND owner = ?",
                        (segment_id, owner)).fetchone()
    if held is None:
        raise errors.Unavailable("compaction lease lost")
    conn.execute("UPDATE segments SET lease_until = ? WHERE segment_id = ?", (lease_until, segment_id))
    moved = 0
    for bucket, key, old_offset, new_segment, new_offset in moves:
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


def retire(conn: sqlite3.Connection, segment_id: str, owner: str, now: float) -> bool:
    """Mark a compacted segment retired, if nothing points into it any more (its file can go after a grace)."""
    if conn.execute("SELECT 1 FROM packed_refs WHERE segment_id = ? LIMIT 1", (segment_id,)).fetchone():
        return False
    return conn.execute("UPDATE segments SET state = 'retired', retired = ? WHERE segment_id = ? "
                        "AND state = 'compacting' AND owner = ?", (now, segment_id, owner)).rowcount > 0


def seal_orphans(conn: sqlite3.Connection, owners_alive: set[str], node: str, sizes: dict[str, int],
                 now: float) -> list[str]:
    """Seal open segments of this node whose writer process is gone (``sizes``: their file sizes)."""
    sealed = []
    for segment_id, owner in conn.execute("SELECT segment_id, owner FROM segments WHERE state = 'open'").fetchall():
        if owner.split(":", 1)[0] == node and owner not in owners_alive and segment_id in sizes:
            if seal(conn, segment_id, sizes[segment_id], now):
                sealed.append(segment_id)
    return sealed


def release_dead_compactions(conn: sqlite3.Connection, owners: Sequence[str]) -> int:
    """End the leases of compactions whose compactor is known dead, so the next claim redoes them at once."""
    return sum(conn.execute("UPDATE segments SET lease_until = 0 WHERE state = 'compacting' AND owner = ?",
                            (owner,)).rowcount for owner in owners)


def recount(conn: sqlite3.Connection, repair: bool) -> list[tuple[str, int, int, int, int]]:
    """Segments whose live counters disagree with their references: (id, bytes said, counted, records said,
    counted). With ``repair`` the reverse index is rebuilt from the objects and the counters from it; segments
    being compacted go back to sealed first (a compaction is redone from the start; moves are idempotent).
    References into segments that are gone are not indexed: fsck reports them as missing data."""
    if repair:
        conn.execute("UPDATE segments SET state = 'sealed', lease_until = 0 WHERE state = 'compacting'")
        conn.execute("DELETE FROM packed_refs")
        conn.execute("UPDATE segments SET live_bytes = 0, live_count = 0")
        conn.execute("INSERT INTO packed_refs SELECT e.value ->> 0, e.value ->> 1, e.value ->> 2, o.bucket, o.key "
                     "FROM objects o, json_each(o.extents) AS e "
                     "WHERE instr(o.extents, '[\"s') > 0 AND substr(e.value ->> 0, 1, 1) = 's' "
                     "AND e.value ->> 0 IN (SELECT segment_id FROM segments WHERE state IN ('open', 'sealed'))")
    return conn.execute(
        "SELECT s.segment_id, s.live_bytes, coalesce(r.b, 0), s.live_count, coalesce(r.n, 0) FROM segments s "
        "LEFT JOIN (SELECT segment_id, sum(length) AS b, count(*) AS n FROM packed_refs GROUP BY segment_id) r "
        "ON r.segment_id = s.segment_id WHERE s.live_bytes != coalesce(r.b, 0) OR s.live_count != coalesce(r.n, 0)"
    ).fetchall()
