"""The consistency half of the metadata-store contract: the scans and conditional repairs ``atoll fsck`` and the
start-up recovery use. Every MetaStore implementation must pass it (``META_STORES`` in conftest.py); the last tests are
SQLite's own: they plant damage no sequence of operations can make (a hand-edited counter or block map).
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import time

import pytest

from atoll.core.models import ABSENT, PARTIAL, RESIDENT, Bucket, Extent, ObjectVersion, Part, Upload
from atoll.stores.meta.sqlite import SqliteMetaStore

OWNER = "owner-a"


def blob() -> str:
    return secrets.token_hex(16)


def local(bucket: str, key: str, size: int = 10, blobs: int = 1) -> ObjectVersion:
    return ObjectVersion(bucket=bucket, key=key, version_id=blob(), size=size * blobs,
                         etag=hashlib.md5(key.encode()).hexdigest(), last_modified=time.time(),
                         extents=[Extent(blob(), 0, size) for _ in range(blobs)], owner_id=OWNER)


def warm_clean(bucket: str, key: str, size: int = 10) -> ObjectVersion:
    """A resident version the cold store has (filled, or drained: a cold identity)."""
    v = local(bucket, key, size)
    v.warm_seq, v.cold_etag, v.cold_mtime = 1, "cold-" + v.etag, 1000.0
    return v


def cold_only(bucket: str, key: str, size: int = 1000) -> ObjectVersion:
    return ObjectVersion(bucket=bucket, key=key, version_id=blob(), size=size, etag="e" * 32, last_modified=500.0,
                         owner_id=OWNER, residency=ABSENT, cold_etag="e" * 32, cold_mtime=500.0)


async def new_bucket(store, name: str = "b1") -> str:
    await store.create_bucket(Bucket(name=name, owner_id=OWNER, created=time.time()))
    return name


async def new_upload(store, bucket: str, key: str, parts: int) -> list[Part]:
    upload = Upload(upload_id=secrets.token_hex(8), bucket=bucket, key=key, initiated=time.time(), owner_id=OWNER)
    await store.create_upload(upload)
    made = [Part(upload.upload_id, n, 5, hashlib.md5(str(n).encode()).hexdigest(), blob(), time.time())
            for n in range(1, parts + 1)]
    for p in made:
        await store.put_part(p)
    return made


async def garbage(store) -> set[str]:
    return set(await store.take_garbage(time.time() + 3600, 1_000_000))


async def scan_all(scan, key, limit: int = 2) -> list:
    """Every item of a paged scan, walked ``limit`` at a time."""
    items, after = [], None
    while page := await scan(after, limit):
        assert len(page) <= limit
        items += page
        after = key(page[-1])
    return items


# scans -------------------------------------------------------------------------------------------------------
async def test_scans_walk_everything_in_order(meta_store):
    for name in ("b2", "b1"):
        await new_bucket(meta_store, name)
    keys = [("b1", "a"), ("b1", "a/b"), ("b1", "z"), ("b2", "\u00e9"), ("b2", "a")]
    for bucket, key in keys:
        await meta_store.put_object(local(bucket, key))
    versions = await scan_all(meta_store.scan_objects, lambda v: (v.bucket, v.key))
    assert [(v.bucket, v.key) for v in versions] == sorted(keys, key=lambda bk: (bk[0], bk[1].encode()))
    assert all(v.extents and v.residency == RESIDENT for v in versions)

    parts = await new_upload(meta_store, "b1", "up1", 3) + await new_upload(meta_store, "b2", "up2", 2)
    scanned = await scan_all(meta_store.scan_parts, lambda p: (p.upload_id, p.part_number))
    assert [(p.upload_id, p.part_number, p.blob_id) for p in scanned] == \
        sorted((p.upload_id, p.part_number, p.blob_id) for p in parts)

    replaced = [v for v in versions if v.bucket == "b1"]
    for v in replaced:
        await meta_store.put_object(local(v.bucket, v.key))
    expected = sorted(e.blob_id for v in replaced for e in v.extents)
    walked, after = [], ""
    while page := await meta_store.scan_garbage(after, 2):
        walked += page
        after = page[-1]
    assert walked == expected


async def test_scan_drain_shows_claims(meta_store):
    bucket = await new_bucket(meta_store)
    for key in ("k1", "k2", "k3"):
        await meta_store.put_object(local(bucket, key), journal=True)
    claimed = await meta_store.take_drain(1, 300.0)
    entries = await scan_all(meta_store.scan_drain, lambda e: (e[0].bucket, e[0].key))
    assert [e.key for e, _ in entries] == ["k1", "k2", "k3"]
    now = time.time()
    held = {e.key for e, until in entries if until > now}
    assert held == {claimed[0].key} and all(until > now + 250 for e, until in entries if e.key in held)
    assert all(e.op == "put" and e.version_id for e, _ in entries)


async def test_unreferenced_blobs_sees_objects_parts_and_garbage(meta_store):
    bucket = await new_bucket(meta_store)
    live = local(bucket, "live", blobs=3)
    gone = local(bucket, "gone")
    await meta_store.put_object(live)
    await meta_store.put_object(gone)
    await meta_store.delete_object(bucket, "gone")  # its blob waits as garbage: still referenced
    parts = await new_upload(meta_store, bucket, "up", 2)
    strangers = {blob() for _ in range(3)}
    known = {e.blob_id for e in live.extents + gone.extents} | {p.blob_id for p in parts}
    assert await meta_store.unreferenced_blobs(list(known | strangers)) == strangers
    assert await meta_store.unreferenced_blobs([]) == set()
    await meta_store.forget_garbage([gone.extents[0].blob_id])
    assert await meta_store.unreferenced_blobs([gone.extents[0].blob_id]) == {gone.extents[0].blob_id}


async def test_resident_bytes_count_and_recount(meta_store):
    bucket = await new_bucket(meta_store)
    await meta_store.put_object(local(bucket, "a", size=100))
    await meta_store.put_object(warm_clean(bucket, "b", size=50))
    await meta_store.record_cold_version(cold_only(bucket, "c", size=7000), None)  # absent: not counted
    assert await meta_store.count_resident_bytes() == (150, 150)
    assert await meta_store.recount_resident_bytes() == (150, 150)


# repairs -----------------------------------------------------------------------------------------------------
async def test_reset_to_absent_gives_up_warm_bytes_the_cold_store_has(meta_store):
    bucket = await new_bucket(meta_store)
    clean = warm_clean(bucket, "clean", size=40)
    await meta_store.put_object(clean)
    assert not await meta_store.reset_to_absent(bucket, "clean", "another-version", blob())
    assert not await meta_store.reset_to_absent(bucket, "nothing-here", clean.version_id, blob())
    new_id = blob()
    assert await meta_store.reset_to_absent(bucket, "clean", clean.version_id, new_id)
    row = await meta_store.get_object(bucket, "clean")
    assert (row.version_id, row.residency, row.extents) == (new_id, ABSENT, [])
    assert (row.cold_etag, row.etag, row.size) == (clean.cold_etag, clean.etag, clean.size)
    assert clean.extents[0].blob_id in await garbage(meta_store)
    assert await meta_store.count_resident_bytes() == (0, 0)
    assert not await meta_store.reset_to_absent(bucket, "clean", new_id, blob()), "absent already"

    # Refused: bytes the cold store does not have (no cold identity), or a journaled write.
    mine = local(bucket, "mine")
    await meta_store.put_object(mine)
    assert not await meta_store.reset_to_absent(bucket, "mine", mine.version_id, blob())
    dirty = warm_clean(bucket, "dirty")
    await meta_store.put_object(dirty, journal=True)
    assert not await meta_store.reset_to_absent(bucket, "dirty", dirty.version_id, blob())
    assert (await meta_store.get_object(bucket, "dirty")).residency == RESIDENT


async def test_reset_to_absent_drops_a_partial_fill(meta_store):
    bucket = await new_bucket(meta_store)
    absent = cold_only(bucket, "obj", size=100)
    await meta_store.record_cold_version(absent, None)
    sparse = blob()
    await meta_store.start_fill(bucket, "obj", absent.version_id, sparse, 16, 5)
    await meta_store.mark_filled(bucket, "obj", absent.version_id, [0, 1])
    assert (await meta_store.get_object(bucket, "obj")).residency == PARTIAL
    new_id = blob()
    assert await meta_store.reset_to_absent(bucket, "obj", absent.version_id, new_id)
    assert await meta_store.get_fill(absent.version_id) is None
    assert (await meta_store.get_object(bucket, "obj")).residency == ABSENT
    assert sparse in await garbage(meta_store)
    assert await meta_store.count_resident_bytes() == (0, 0)
    assert await meta_store.stale_fills() == []
    # The next fill starts from scratch under the new id.
    assert (await meta_store.start_fill(bucket, "obj", new_id, blob(), 16, 6)).residency == PARTIAL
    assert (await meta_store.get_fill(new_id))[1] == bytes(1)


async def test_drop_version_removes_a_lost_object_and_its_journal_entry(meta_store):
    bucket = await new_bucket(meta_store)
    lost = local(bucket, "lost", size=30)
    await meta_store.put_object(lost, journal=True)
    assert await meta_store.drop_version(bucket, "lost", "another-version") is None
    dropped = await meta_store.drop_version(bucket, "lost", lost.version_id)
    assert dropped is not None and dropped.version_id == lost.version_id
    assert await meta_store.get_object(bucket, "lost") is None
    assert await meta_store.get_drain(bucket, "lost") is None, "nothing is left to upload"
    assert lost.extents[0].blob_id in await garbage(meta_store)
    assert await meta_store.count_resident_bytes() == (0, 0)
    assert await meta_store.drop_version(bucket, "lost", lost.version_id) is None


async def test_drop_part(meta_store):
    bucket = await new_bucket(meta_store)
    parts = await new_upload(meta_store, bucket, "up", 2)
    assert not await meta_store.drop_part(parts[0].upload_id, 1, blob())
    assert await meta_store.drop_part(parts[0].upload_id, 1, parts[0].blob_id)
    left = await meta_store.list_parts(parts[0].upload_id)
    assert [p.part_number for p in left] == [2]
    assert parts[0].blob_id in await garbage(meta_store)


async def test_unlinking_drops_partial_rows_with_absent_ones(meta_store):
    """A partial row left as a "local object" after unlinking would be served whole, its holes as zeros."""
    from atoll.core.models import Link

    bucket = await new_bucket(meta_store)
    await meta_store.put_link(Link(bucket, "file:///cold", "cache", created=time.time()))
    resident = warm_clean(bucket, "resident", size=40)
    await meta_store.put_object(resident)
    absent = cold_only(bucket, "absent", size=100)
    await meta_store.record_cold_version(absent, None)
    partial = cold_only(bucket, "partial", size=100)
    await meta_store.record_cold_version(partial, None)
    sparse = blob()
    await meta_store.start_fill(bucket, "partial", partial.version_id, sparse, 16, 5)
    assert await meta_store.delete_link(bucket)
    assert [v.key for v in await meta_store.scan_objects(None, 10)] == ["resident"]
    assert await meta_store.get_fill(partial.version_id) is None
    assert sparse in await garbage(meta_store)
    assert await meta_store.count_resident_bytes() == (40, 40)


# SQLite's own: damage only a hand edit makes ------------------------------------------------------------------
@pytest.fixture
def sqlite_store(tmp_path, loop):
    store = SqliteMetaStore(str(tmp_path / "own.sqlite3"))
    loop.run_until_complete(store.open())
    yield store
    loop.run_until_complete(store.close())


def _hand_edit(store: SqliteMetaStore, sql: str) -> None:
    with sqlite3.connect(store.path, isolation_level=None) as conn:
        conn.execute(sql)


@pytest.mark.sqlite_only
async def test_sqlite_counter_drift_is_seen_and_recomputed(sqlite_store, loop):
    bucket = await new_bucket(sqlite_store)
    await sqlite_store.put_object(local(bucket, "a", size=100))
    _hand_edit(sqlite_store, "UPDATE counters SET value = value + 12345 WHERE name = 'resident_bytes'")
    assert await sqlite_store.count_resident_bytes() == (12445, 100)
    assert await sqlite_store.recount_resident_bytes() == (12445, 100)
    assert await sqlite_store.count_resident_bytes() == (100, 100)
    assert await sqlite_store.resident_bytes() == 100


@pytest.mark.sqlite_only
async def test_sqlite_stale_fills_found_and_forgotten(sqlite_store, loop):
    bucket = await new_bucket(sqlite_store)
    absent = cold_only(bucket, "obj", size=100)
    await sqlite_store.record_cold_version(absent, None)
    await sqlite_store.start_fill(bucket, "obj", absent.version_id, blob(), 16, 5)
    _hand_edit(sqlite_store, "INSERT INTO fills VALUES ('no-such-version', 16, x'00')")
    assert await sqlite_store.stale_fills() == ["no-such-version"]
    assert not await sqlite_store.forget_fill(absent.version_id), "the block map of a partial version stays"
    assert await sqlite_store.forget_fill("no-such-version")
    assert await sqlite_store.stale_fills() == []
    assert await sqlite_store.get_fill(absent.version_id) is not None
