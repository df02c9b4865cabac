"""The tiering half of the metadata-store contract: cold identities, fills, eviction, the resident-bytes counter,
the write-back journal, cold-listing imports, jobs, links and groups. Every MetaStore implementation must pass it
(``META_STORES`` in conftest.py); only the last test, the upgrade of a schema-1 SQLite file, is SQLite's own.

The journal rules exercised here are the ones the drainer relies on: one entry per key; a newer write replaces
the entry but keeps ``since`` (the recovery point) and the claim (so two versions of a key are never in flight at
once); finishing a superseded entry fails and makes the newer one due at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import sqlite3
import time

import pytest

from atoll import errors
from atoll.core.models import (ABSENT, PARTIAL, RESIDENT, Bucket, CheckpointGroup, Extent, Job, Link,
                               ObjectVersion, Upload, Part)
from atoll.stores.meta.sqlite import SCHEMA_VERSION, SqliteMetaStore

OWNER = "owner-a"


def blob() -> str:
    return secrets.token_hex(16)


def warm(bucket: str, key: str, size: int = 100, *, seq: int = 1, cold: bool = False, **fields) -> ObjectVersion:
    """A resident version of a linked bucket (``warm_seq`` > 0), clean-able once it has a cold identity."""
    v = ObjectVersion(bucket=bucket, key=key, version_id=blob(), size=size,
                      etag=hashlib.md5(secrets.token_bytes(8)).hexdigest(), last_modified=time.time(),
                      extents=[Extent(blob(), 0, size)], owner_id=OWNER, warm_seq=seq, **fields)
    if cold:
        v.cold_etag, v.cold_mtime = "cold-" + v.etag, 1000.0
    return v


def cold_only(bucket: str, key: str, size: int = 1000) -> ObjectVersion:
    """What a cold lookup or listing records: known, not resident, no extents."""
    etag = hashlib.md5(key.encode() + secrets.token_bytes(4)).hexdigest()
    return ObjectVersion(bucket=bucket, key=key, version_id=blob(), size=size, etag=etag, last_modified=500.0,
                         owner_id=OWNER, residency=ABSENT, cold_etag=etag, cold_mtime=500.0,
                         headers={"content-type": "text/x-cold"}, user_meta={"from": "cold"})


async def new_bucket(store, name: str = "b1") -> str:
    await store.create_bucket(Bucket(name=name, owner_id=OWNER, created=time.time()))
    return name


async def garbage(store) -> set[str]:
    return set(await store.take_garbage(time.time() + 3600, 1_000_000))


async def drain_one(store, bucket: str, key: str) -> None:
    """Claim and finish the key's journal entry, as a successful drain does; the other entries claimed on the
    way are given back."""
    claimed = await store.take_drain(1000, 60.0)
    entries = [e for e in claimed if (e.bucket, e.key) == (bucket, key)]
    assert len(entries) == 1
    assert await store.finish_drain(entries[0]) is True
    for other in claimed:
        if other is not entries[0]:
            await store.release_drain(other, 0.0)


async def make_clean(store, v: ObjectVersion) -> None:
    """A drained version: journal entry finished, cold identity recorded."""
    await drain_one(store, v.bucket, v.key)
    await store.set_cold_identity(v.bucket, v.key, v.version_id, "drained-" + v.etag, 2000.0)


# cold identities -------------------------------------------------------------------------------------------
async def test_record_cold_version_expectations(meta_store):
    with pytest.raises(errors.NoSuchBucket):
        await meta_store.record_cold_version(cold_only("missing", "k"), None)
    bucket = await new_bucket(meta_store)

    first = cold_only(bucket, "k")
    assert await meta_store.record_cold_version(first, None) == first
    stored = await meta_store.get_object(bucket, "k")
    assert (stored.residency, stored.cold_etag, stored.extents) == (ABSENT, first.etag, [])
    assert (stored.headers, stored.user_meta) == ({"content-type": "text/x-cold"}, {"from": "cold"})
    assert await meta_store.resident_bytes() == 0  # known, not held

    # Expecting "no row" when there is one, or the wrong version: nothing changes, the current row comes back.
    second = cold_only(bucket, "k")
    assert (await meta_store.record_cold_version(second, None)).version_id == first.version_id
    assert (await meta_store.record_cold_version(second, "not-it")).version_id == first.version_id
    assert (await meta_store.get_object(bucket, "k")).version_id == first.version_id
    # Expecting the clean current version: replaced.
    assert (await meta_store.record_cold_version(second, first.version_id)).version_id == second.version_id
    assert (await meta_store.get_object(bucket, "k")).version_id == second.version_id

    # A whole-object fill recorded as resident counts its bytes.
    filled = cold_only(bucket, "filled", size=300)
    filled.residency, filled.extents, filled.warm_seq = RESIDENT, [Extent(blob(), 0, 300)], 5
    await meta_store.record_cold_version(filled, None)
    assert await meta_store.resident_bytes() == 300

    # A dirty row (a local write not yet drained) is never replaced by what the cold store says.
    local = warm(bucket, "dirty")
    await meta_store.put_object(local, journal=True)
    returned = await meta_store.record_cold_version(cold_only(bucket, "dirty"), local.version_id)
    assert returned.version_id == local.version_id
    assert (await meta_store.get_object(bucket, "dirty")).version_id == local.version_id


async def test_record_cold_version_does_not_resurrect_a_key_whose_delete_is_pending(meta_store):
    bucket = await new_bucket(meta_store)
    await meta_store.put_object(warm(bucket, "gone"), journal=True)
    await meta_store.delete_object(bucket, "gone", journal=True)
    # The cold store still has the object until the delete drains; a lookup must not bring it back.
    assert await meta_store.record_cold_version(cold_only(bucket, "gone"), None) is None
    assert await meta_store.get_object(bucket, "gone") is None
    assert (await meta_store.get_drain(bucket, "gone")).op == "delete"


# fills -----------------------------------------------------------------------------------------------------
async def test_start_fill_and_mark_filled_to_resident(meta_store):
    bucket = await new_bucket(meta_store)
    absent = cold_only(bucket, "obj", size=10)
    await meta_store.record_cold_version(absent, None)
    assert await meta_store.start_fill(bucket, "missing", absent.version_id, blob(), 4, 1) is None
    wrong = await meta_store.start_fill(bucket, "obj", "other-version", blob(), 4, 1)
    assert wrong.residency == ABSENT and wrong.extents == []

    sparse = blob()
    partial = await meta_store.start_fill(bucket, "obj", absent.version_id, sparse, 4, 77)
    assert (partial.residency, partial.extents, partial.warm_seq) == (PARTIAL, [Extent(sparse, 0, 10)], 77)
    assert await meta_store.get_object(bucket, "obj") == partial
    assert await meta_store.get_fill(absent.version_id) == (4, b"\x00")  # 3 blocks of 4 bytes, none filled
    assert await meta_store.resident_bytes() == 10  # a partial fill counts whole: its sparse blob may become so
    # Starting again (another reader) changes nothing: same blob, same map, counted once.
    again = await meta_store.start_fill(bucket, "obj", absent.version_id, blob(), 4, 99)
    assert again.extents == [Extent(sparse, 0, 10)] and again.warm_seq == 77
    assert await meta_store.resident_bytes() == 10

    assert await meta_store.mark_filled(bucket, "obj", absent.version_id, [0]) == PARTIAL
    assert await meta_store.mark_filled(bucket, "obj", absent.version_id, [0]) == PARTIAL  # idempotent
    assert await meta_store.get_fill(absent.version_id) == (4, b"\x01")
    assert await meta_store.mark_filled(bucket, "obj", "other-version", [1, 2]) is None
    # Blocks written to another blob (a warm copy since evicted) are not recorded for this one.
    assert await meta_store.mark_filled(bucket, "obj", absent.version_id, [1, 2], blob_id=blob()) is None
    assert await meta_store.get_fill(absent.version_id) == (4, b"\x01")
    assert await meta_store.mark_filled(bucket, "obj", absent.version_id, [2, 1], blob_id=sparse) == RESIDENT
    assert await meta_store.get_fill(absent.version_id) is None
    done = await meta_store.get_object(bucket, "obj")
    assert (done.residency, done.extents, done.cold_etag) == (RESIDENT, [Extent(sparse, 0, 10)], absent.etag)
    assert await meta_store.mark_filled(bucket, "obj", absent.version_id, [0]) == RESIDENT
    assert await meta_store.resident_bytes() == 10
    # Resident already: a late start_fill changes nothing.
    assert (await meta_store.start_fill(bucket, "obj", absent.version_id, blob(), 4, 1)).residency == RESIDENT


async def test_a_partial_fill_replaced_midway_is_dropped(meta_store):
    bucket = await new_bucket(meta_store)
    absent = cold_only(bucket, "obj", size=64)
    await meta_store.record_cold_version(absent, None)
    sparse = blob()
    await meta_store.start_fill(bucket, "obj", absent.version_id, sparse, 16, 1)
    await meta_store.mark_filled(bucket, "obj", absent.version_id, [0, 1])
    newer = warm(bucket, "obj", size=5)
    await meta_store.put_object(newer, journal=True)
    assert await meta_store.get_fill(absent.version_id) is None
    assert await meta_store.mark_filled(bucket, "obj", absent.version_id, [2, 3]) is None
    assert sparse in await garbage(meta_store)
    assert await meta_store.resident_bytes() == 5


# eviction --------------------------------------------------------------------------------------------------
async def test_evict_refuses_dirty_pinned_and_cold_less_rows_and_frees_bytes(meta_store):
    bucket = await new_bucket(meta_store)
    dirty = warm(bucket, "dirty", 100, seq=1)
    await meta_store.put_object(dirty, journal=True)
    await meta_store.set_cold_identity(bucket, "dirty", dirty.version_id, "stale-cold", 1.0)  # an older drain
    coldless = warm(bucket, "coldless", 200, seq=2)  # clean in the journal, but never reached the cold store
    await meta_store.put_object(coldless)
    pinned = warm(bucket, "pinned", 300, seq=3, cold=True)
    await meta_store.put_object(pinned)
    await meta_store.pin(bucket, "pinned", time.time() + 3600)
    local = warm(bucket, "local", 400, seq=0, cold=True)  # warm_seq 0: a local bucket's object, never evicted
    await meta_store.put_object(local)
    clean = warm(bucket, "clean", 500, seq=4, cold=True)
    await meta_store.put_object(clean)
    assert await meta_store.resident_bytes() == 1500

    candidates = await meta_store.eviction_candidates(0, 100)
    assert [(c[1], c[3], c[5], c[6]) for c in candidates] == [
        ("dirty", 1, 100, False), ("coldless", 2, 200, True), ("pinned", 3, 300, False), ("clean", 4, 500, True)]
    assert [c[1] for c in await meta_store.eviction_candidates(2, 100)] == ["pinned", "clean"]

    assert await meta_store.evict(bucket, "dirty", dirty.version_id) == 0
    assert await meta_store.evict(bucket, "coldless", coldless.version_id) == 0
    assert await meta_store.evict(bucket, "pinned", pinned.version_id) == 0
    assert await meta_store.evict(bucket, "local", local.version_id) == 0
    assert await meta_store.evict(bucket, "clean", "another-version") == 0
    assert await meta_store.evict(bucket, "nothing", "v") == 0
    assert await meta_store.resident_bytes() == 1500
    assert await meta_store.pinned_bytes(bucket) == 300

    assert await meta_store.evict(bucket, "clean", clean.version_id) == 500
    evicted = await meta_store.get_object(bucket, "clean")
    assert (evicted.residency, evicted.extents, evicted.cold_etag) == (ABSENT, [], clean.cold_etag)
    assert evicted.etag == clean.etag and evicted.size == 500  # still known: served from the cold store
    assert clean.extents[0].blob_id in await garbage(meta_store)
    assert await meta_store.resident_bytes() == 1000
    assert await meta_store.evict(bucket, "clean", clean.version_id) == 0  # already absent
    assert "clean" not in [c[1] for c in await meta_store.eviction_candidates(0, 100)]

    # Drained: the dirty one becomes evictable. An expired pin no longer protects.
    await make_clean(meta_store, dirty)
    assert await meta_store.evict(bucket, "dirty", dirty.version_id) == 100
    await meta_store.pin(bucket, "pinned", time.time() - 1)
    assert await meta_store.pinned_bytes(bucket) == 0
    assert await meta_store.evict(bucket, "pinned", pinned.version_id) == 300
    assert await meta_store.resident_bytes() == 600


async def test_resident_bytes_accounting(meta_store):
    bucket = await new_bucket(meta_store)
    assert await meta_store.resident_bytes() == 0
    first = warm(bucket, "a", 100, cold=True)
    await meta_store.put_object(first)
    assert await meta_store.resident_bytes() == 100
    await meta_store.put_object(warm(bucket, "a", 30, cold=True))  # overwrite
    assert await meta_store.resident_bytes() == 30
    await meta_store.put_object(warm(bucket, "b", 50), journal=True)
    assert await meta_store.resident_bytes() == 80
    replaced = await meta_store.get_object(bucket, "b")
    await meta_store.replace_metadata(bucket, "b", replaced.version_id, {"content-type": "x"}, {}, time.time(),
                                      journal=True)
    assert await meta_store.resident_bytes() == 80

    upload = Upload(upload_id=blob(), bucket=bucket, key="mp", initiated=time.time(), owner_id=OWNER)
    await meta_store.create_upload(upload)
    parts = [Part(upload.upload_id, n, 7, "e", blob(), time.time()) for n in (1, 2)]
    for p in parts:
        await meta_store.put_part(p)
    assert await meta_store.resident_bytes() == 80  # parts are not objects yet
    completed = ObjectVersion(bucket=bucket, key="mp", version_id=blob(), size=14, etag="x-2", last_modified=1.0,
                              extents=[Extent(p.blob_id, 0, 7) for p in parts], part_count=2, owner_id=OWNER,
                              warm_seq=9)
    await meta_store.complete_upload(upload.upload_id, completed, [1, 2], journal=True)
    assert await meta_store.resident_bytes() == 94

    absent = cold_only(bucket, "c", 1000)
    await meta_store.record_cold_version(absent, None)
    assert await meta_store.resident_bytes() == 94
    await meta_store.start_fill(bucket, "c", absent.version_id, blob(), 1000, 3)
    assert await meta_store.resident_bytes() == 1094
    await meta_store.mark_filled(bucket, "c", absent.version_id, [0])
    assert await meta_store.resident_bytes() == 1094

    current_a = await meta_store.get_object(bucket, "a")
    assert await meta_store.evict(bucket, "a", current_a.version_id) == 30
    assert await meta_store.resident_bytes() == 1064
    await meta_store.delete_object(bucket, "a")  # an absent row holds nothing: deleting it frees nothing
    assert await meta_store.resident_bytes() == 1064
    await meta_store.delete_object(bucket, "c", journal=True)
    assert await meta_store.resident_bytes() == 64
    await meta_store.delete_objects(bucket, ["b", "mp", "never"], journal=True)
    assert await meta_store.resident_bytes() == 0

    # An imported cold listing: a resident upsert counts, a removal of a clean resident row uncounts.
    listed = cold_only(bucket, "d", 40)
    listed.residency, listed.extents = RESIDENT, [Extent(blob(), 0, 40)]
    assert await meta_store.apply_cold_listing(bucket, [(listed, None)], []) == 1
    assert await meta_store.resident_bytes() == 40
    assert await meta_store.apply_cold_listing(bucket, [], [("d", listed.version_id)]) == 1
    assert await meta_store.resident_bytes() == 0


async def test_resident_bytes_of_one_bucket(meta_store):
    first, second = await new_bucket(meta_store, "r1"), await new_bucket(meta_store, "r2")
    assert await meta_store.resident_bytes(first) == 0
    assert await meta_store.resident_bytes("no-such-bucket") == 0
    await meta_store.put_object(warm(first, "a", 100, cold=True))
    await meta_store.put_object(warm(first, "b", 20), journal=True)
    await meta_store.put_object(warm(second, "a", 7, cold=True))
    absent = cold_only(first, "c", 1000)
    await meta_store.record_cold_version(absent, None)
    assert (await meta_store.resident_bytes(first), await meta_store.resident_bytes(second)) == (120, 7)
    await meta_store.start_fill(first, "c", absent.version_id, blob(), 500, 3)  # partial: counts whole
    assert await meta_store.resident_bytes(first) == 1120
    a = await meta_store.get_object(first, "a")
    assert await meta_store.evict(first, "a", a.version_id) == 100
    assert await meta_store.resident_bytes(first) == 1020
    assert await meta_store.resident_bytes() == 1027  # the tier's counter is the sum over buckets
    await meta_store.delete_objects(first, ["b", "c"], journal=True)
    assert (await meta_store.resident_bytes(first), await meta_store.resident_bytes(second)) == (0, 7)


# the write-back journal --------------------------------------------------------------------------------------
async def test_journal_coalescing_keeps_the_oldest_since_and_the_claim(meta_store):
    bucket = await new_bucket(meta_store)
    v1 = warm(bucket, "k", 10)
    await meta_store.put_object(v1, journal=True)
    entry = await meta_store.get_drain(bucket, "k")
    assert (entry.op, entry.version_id, entry.size, entry.attempts) == ("put", v1.version_id, 10, 0)
    since = entry.since

    claimed = await meta_store.take_drain(10, 60.0)
    assert [(e.key, e.version_id) for e in claimed] == [("k", v1.version_id)]
    await asyncio.sleep(0.01)
    v2 = warm(bucket, "k", 20)
    await meta_store.put_object(v2, journal=True)
    entry = await meta_store.get_drain(bucket, "k")
    assert (entry.op, entry.version_id, entry.size, entry.since) == ("put", v2.version_id, 20, since)
    assert await meta_store.drain_backlog(bucket) == (1, 20, since)
    # Still claimed by the drainer sending v1: nobody may send v2 before v1 has landed.
    assert await meta_store.take_drain(10, 60.0) == []

    await meta_store.delete_object(bucket, "k", journal=True)
    entry = await meta_store.get_drain(bucket, "k")
    assert (entry.op, entry.size, entry.since) == ("delete", 0, since)
    assert await meta_store.take_drain(10, 60.0) == []

    # A failure recorded on the entry is forgotten by a newer write.
    assert await meta_store.finish_drain(claimed[0]) is False
    [due] = await meta_store.take_drain(10, 60.0)
    await meta_store.release_drain(due, 60.0, "cold store unavailable")
    failed = await meta_store.get_drain(bucket, "k")
    assert (failed.attempts, failed.last_error) == (1, "cold store unavailable")
    await meta_store.put_object(warm(bucket, "k", 5), journal=True)
    rewritten = await meta_store.get_drain(bucket, "k")
    assert (rewritten.attempts, rewritten.last_error, rewritten.since) == (0, "", since)


async def test_finish_drain_of_a_superseded_entry_returns_false_and_makes_the_new_entry_due(meta_store):
    bucket = await new_bucket(meta_store)
    v1 = warm(bucket, "k")
    await meta_store.put_object(v1, journal=True)
    [old] = await meta_store.take_drain(10, 300.0)
    v2 = warm(bucket, "k")
    await meta_store.put_object(v2, journal=True)
    assert await meta_store.finish_drain(old) is False
    [new] = await meta_store.take_drain(10, 300.0)  # due at once, not after the old claim's 300 s
    assert new.version_id == v2.version_id
    assert await meta_store.finish_drain(new) is True
    assert await meta_store.get_drain(bucket, "k") is None
    assert await meta_store.drain_backlog(bucket) == (0, 0, None)

    # A metadata replace keeps the version id; the upload that was in flight carried the old metadata.
    await meta_store.replace_metadata(bucket, "k", v2.version_id, {"content-type": "text/new"}, {"m": "2"},
                                      v2.last_modified + 5, journal=True)
    [sending] = await meta_store.take_drain(10, 300.0)
    assert sending.version_id == v2.version_id
    await meta_store.replace_metadata(bucket, "k", v2.version_id, {"content-type": "text/newer"}, {"m": "3"},
                                      v2.last_modified + 10, journal=True)
    assert await meta_store.finish_drain(sending, uploaded_modified=v2.last_modified + 5) is False
    [again] = await meta_store.take_drain(10, 300.0)
    assert again.version_id == v2.version_id
    assert await meta_store.finish_drain(again, uploaded_modified=v2.last_modified + 10) is True
    assert await meta_store.drain_backlog(bucket) == (0, 0, None)

    # Deletes finish the same way.
    await meta_store.delete_object(bucket, "k", journal=True)
    [delete] = await meta_store.take_drain(10, 300.0)
    assert delete.op == "delete"
    assert await meta_store.finish_drain(delete) is True
    assert await meta_store.get_drain(bucket, "k") is None


async def test_release_drain_backs_off_and_start_up_voids_claims(meta_store):
    bucket = await new_bucket(meta_store)
    await meta_store.put_object(warm(bucket, "k"), journal=True)
    [entry] = await meta_store.take_drain(10, 60.0)
    await meta_store.release_drain(entry, 0.3, "boom")
    assert await meta_store.take_drain(10, 60.0) == []  # not due before its delay
    pending = await meta_store.get_drain(bucket, "k")
    assert (pending.attempts, pending.last_error) == (1, "boom")
    await asyncio.sleep(0.35)
    [entry] = await meta_store.take_drain(10, 60.0)
    assert entry.attempts == 1
    await meta_store.release_drain(entry, 0.0)  # given back without a failure (e.g. a marker waiting its turn)
    [entry] = await meta_store.take_drain(10, 60.0)
    assert (entry.attempts, (await meta_store.get_drain(bucket, "k")).attempts) == (1, 1)

    # Claimed for 60 s by a process that then died: start-up makes it due at once.
    assert await meta_store.take_drain(10, 60.0) == []
    assert await meta_store.reset_drain_claims() == 1
    assert [e.key for e in await meta_store.take_drain(10, 60.0)] == ["k"]


async def test_release_drain_of_a_superseded_entry_gives_the_claim_back(meta_store):
    """A failed upload of a write that a newer write (a delete here) replaced meanwhile: the newer entry kept
    the claim; releasing the old one must make the newer one due after the delay, not after the lease."""
    bucket = await new_bucket(meta_store)
    await meta_store.put_object(warm(bucket, "k"), journal=True)
    [old] = await meta_store.take_drain(10, 300.0)
    await meta_store.delete_object(bucket, "k", journal=True)
    await meta_store.release_drain(old, 0.2, "cold store unavailable")
    assert await meta_store.take_drain(10, 300.0) == []  # not before the delay
    await asyncio.sleep(0.25)
    [new] = await meta_store.take_drain(10, 300.0)
    assert (new.op, new.attempts, new.last_error) == ("delete", 0, "")  # the delete was not tried: no failure


async def test_take_drain_oldest_first_with_a_limit(meta_store):
    bucket = await new_bucket(meta_store)
    other = await new_bucket(meta_store, "b2")
    for key in ("z", "a", "m"):
        await meta_store.put_object(warm(bucket, key, 3), journal=True)
        await asyncio.sleep(0.005)
    await meta_store.delete_object(other, "x", journal=True)  # journaled though the key was never here
    assert [e.key for e in await meta_store.take_drain(2, 60.0)] == ["z", "a"]
    assert [e.key for e in await meta_store.take_drain(10, 60.0)] == ["m", "x"]
    assert await meta_store.take_drain(10, 60.0) == []
    count, size, oldest = await meta_store.drain_backlog()
    assert (count, size) == (4, 9) and oldest == (await meta_store.get_drain(bucket, "z")).since
    assert (await meta_store.drain_backlog(other))[:2] == (1, 0)
    assert [e.key for e in await meta_store.list_drain(bucket)] == ["a", "m", "z"]


async def test_drain_pending_in(meta_store):
    bucket = await new_bucket(meta_store)
    other = await new_bucket(meta_store, "b2")
    marker = "ckpt/s1/.metadata"
    for key in ("ckpt/s1/shard-0", "ckpt/s1/sub/shard-1", marker, "ckpt/s10/shard-0", "ckpt/s2/shard-0"):
        await meta_store.put_object(warm(bucket, key), journal=True)
    await meta_store.put_object(warm(other, "ckpt/s1/shard-9"), journal=True)
    assert await meta_store.drain_pending_in(bucket, "ckpt/s1/", marker) is True
    await drain_one(meta_store, bucket, "ckpt/s1/shard-0")
    assert await meta_store.drain_pending_in(bucket, "ckpt/s1/", marker) is True  # the sub-directory's shard
    await drain_one(meta_store, bucket, "ckpt/s1/sub/shard-1")
    # Neither the marker itself, nor a sibling directory sharing the name's start, nor another bucket counts.
    assert await meta_store.drain_pending_in(bucket, "ckpt/s1/", marker) is False
    # A pending delete under the directory does.
    await meta_store.delete_object(bucket, "ckpt/s1/stale", journal=True)
    assert await meta_store.drain_pending_in(bucket, "ckpt/s1/", marker) is True
    assert await meta_store.drain_pending_in(bucket, "", marker) is True  # a marker at the top of the bucket


# cold listings ---------------------------------------------------------------------------------------------
async def test_apply_cold_listing_never_touches_dirty_rows(meta_store):
    bucket = await new_bucket(meta_store)
    dirty = warm(bucket, "dirty")
    await meta_store.put_object(dirty, journal=True)
    await meta_store.put_object(warm(bucket, "deleted"), journal=True)
    await meta_store.delete_object(bucket, "deleted", journal=True)
    clean = cold_only(bucket, "clean")
    await meta_store.record_cold_version(clean, None)
    stale = cold_only(bucket, "stale")
    await meta_store.record_cold_version(stale, None)

    upserts = [(cold_only(bucket, "dirty"), dirty.version_id),  # a dirty row: newer than the cold copy
               (cold_only(bucket, "deleted"), None),  # a pending delete: the cold copy is on its way out
               (cold_only(bucket, "clean"), "someone-else"),  # the expectation no longer holds
               (cold_only(bucket, "new"), None)]
    removals = [("dirty", dirty.version_id), ("stale", stale.version_id), ("clean", "someone-else")]
    assert await meta_store.apply_cold_listing(bucket, upserts, removals) == 2
    assert (await meta_store.get_object(bucket, "dirty")).version_id == dirty.version_id
    assert await meta_store.get_object(bucket, "deleted") is None
    assert (await meta_store.get_object(bucket, "clean")).version_id == clean.version_id
    assert (await meta_store.get_object(bucket, "new")).residency == ABSENT
    assert await meta_store.get_object(bucket, "stale") is None
    assert {e.key for e in await meta_store.list_drain(bucket)} == {"dirty", "deleted"}
    with pytest.raises(errors.NoSuchBucket):
        await meta_store.apply_cold_listing("missing", [], [])

    listed = await meta_store.list_versions(bucket, "clean", True, "new", 10)
    assert [v.key for v in listed] == ["clean", "dirty"]
    assert listed[0].cold_etag == clean.cold_etag and listed[1].extents == dirty.extents
    assert [v.key for v in await meta_store.list_versions(bucket, "clean", False, None, 1)] == ["dirty"]


async def test_key_ranges_bounded_by_a_nul_suffix(meta_store):
    # sync-index reads "every key up to and including K" as the range [.., K + "\0"): no key holds a NUL
    # (the S3 front refuses one), so the bound sits just after K. PostgreSQL's text takes no NUL: the store must
    # still answer such a range, not fail the import with a DataError.
    bucket = await new_bucket(meta_store)
    for key in ("a", "k", "k/1", "k0", "z"):
        await meta_store.record_cold_version(cold_only(bucket, key), None)
    assert [v.key for v in await meta_store.list_versions(bucket, "", True, "k\0", 10)] == ["a", "k"]
    assert [v.key for v in await meta_store.list_versions(bucket, "k\0", True, None, 10)] == ["k/1", "k0", "z"]
    assert [v.key for v in await meta_store.list_versions(bucket, "a\0x", False, "k0\0", 10)] == ["k", "k/1", "k0"]
    assert [e.key for e in await meta_store.list_objects(bucket, "a", False, "k\0", 10)] == ["k"]


# jobs ------------------------------------------------------------------------------------------------------
def job(bucket: str, priority: int, created: float, kind: str = "stage") -> Job:
    return Job(job_id=secrets.token_hex(8), kind=kind, bucket=bucket, spec={"prefix": "p/"}, priority=priority,
               created=created, updated=created)


async def test_jobs_claim_by_priority_lease_and_cancel(meta_store):
    with pytest.raises(errors.NoSuchBucket):
        await meta_store.create_job(job("missing", 1, 1.0))
    bucket = await new_bucket(meta_store)
    low, high, normal = job(bucket, 2, 1.0), job(bucket, 0, 3.0), job(bucket, 1, 2.0)
    for j in (low, high, normal):
        await meta_store.create_job(j)
    assert (await meta_store.get_job(high.job_id)).spec == {"prefix": "p/"}
    assert [j.job_id for j in await meta_store.list_jobs()] == [high.job_id, normal.job_id, low.job_id]

    first = await meta_store.claim_job("runner-a", 60.0)
    assert (first.job_id, first.state) == (high.job_id, "running")
    assert (await meta_store.get_job(high.job_id)).state == "running"
    assert (await meta_store.claim_job("runner-a", 60.0)).job_id == normal.job_id
    assert (await meta_store.claim_job("runner-b", 60.0)).job_id == low.job_id
    assert await meta_store.claim_job("runner-c", 60.0) is None  # all running, leases fresh

    # Progress and lease renewal by the holder; anyone else has lost it.
    assert await meta_store.update_job(high.job_id, owner="runner-a", lease=60.0,
                                       progress={"objects": 3}) == "running"
    assert (await meta_store.get_job(high.job_id)).progress == {"objects": 3}
    assert await meta_store.update_job(high.job_id, owner="runner-b", progress={"objects": 0}) == "lost"
    assert (await meta_store.get_job(high.job_id)).progress == {"objects": 3}
    assert await meta_store.update_job("no-such-job", state="done") == "gone"

    # A runner that stops renewing (it crashed) loses the job to the next claimer.
    assert await meta_store.update_job(normal.job_id, owner="runner-a", lease=0.05) == "running"
    await asyncio.sleep(0.1)
    taken = await meta_store.claim_job("runner-c", 60.0)
    assert (taken.job_id, taken.state) == (normal.job_id, "running")
    assert await meta_store.update_job(normal.job_id, owner="runner-a", progress={"objects": 9}) == "lost"
    assert await meta_store.update_job(normal.job_id, owner="runner-c", state="done",
                                       progress={"objects": 10}) == "done"
    assert await meta_store.update_job(normal.job_id, owner="runner-c", state="running") == "done"  # final

    # Cancelled while running: the runner learns it on its next update, and nobody claims it again.
    assert await meta_store.update_job(low.job_id, state="cancelled") == "cancelled"
    assert await meta_store.update_job(low.job_id, owner="runner-b", progress={"objects": 1}) == "cancelled"
    assert (await meta_store.get_job(low.job_id)).state == "cancelled"
    assert await meta_store.update_job(high.job_id, owner="runner-a", state="failed", error="cold gone") == "failed"
    assert (await meta_store.get_job(high.job_id)).error == "cold gone"
    assert await meta_store.claim_job("runner-d", 0.01) is None
    assert await meta_store.list_jobs(active_only=True) == []
    assert [j.state for j in await meta_store.list_jobs()] == ["failed", "done", "cancelled"]


# links, groups, flags --------------------------------------------------------------------------------------
async def test_links_groups_and_flags(meta_store):
    bucket = await new_bucket(meta_store)
    with pytest.raises(errors.NoSuchBucket):
        await meta_store.put_link(Link(bucket="missing", url="s3://x", mode="cache"))
    link = Link(bucket=bucket, url="s3://cold/p", mode="writeback", revalidate="ttl=5", options={"region": "r"},
                created=10.0)
    await meta_store.put_link(link)
    assert await meta_store.get_link(bucket) == link
    relinked = Link(bucket=bucket, url="s3://cold/q", mode="writeback", created=20.0)
    await meta_store.put_link(relinked)
    assert (await meta_store.get_link(bucket)).url == "s3://cold/q"
    assert [l.bucket for l in await meta_store.list_links()] == [bucket]

    await meta_store.put_group(CheckpointGroup(bucket, "ckpt/", [".metadata"]))
    await meta_store.put_group(CheckpointGroup(bucket, "ckpt/", [".metadata", "_SUCCESS"]))
    await meta_store.put_group(CheckpointGroup(bucket, "a/", ["_DONE"]))
    assert await meta_store.list_groups(bucket) == [CheckpointGroup(bucket, "a/", ["_DONE"]),
                                                     CheckpointGroup(bucket, "ckpt/", [".metadata", "_SUCCESS"])]
    assert await meta_store.delete_group(bucket, "a/") is True
    assert await meta_store.delete_group(bucket, "a/") is False

    # Unlinking waits for the backlog; then cold-only rows go, warm ones stay as plain local objects.
    kept = warm(bucket, "kept", cold=True)
    await meta_store.put_object(kept, journal=True)
    await meta_store.record_cold_version(cold_only(bucket, "remote"), None)
    with pytest.raises(errors.InvalidRequest):
        await meta_store.delete_link(bucket)
    assert await meta_store.get_link(bucket) is not None
    await drain_one(meta_store, bucket, "kept")
    await meta_store.pin(bucket, "kept", time.time() + 60)
    assert await meta_store.delete_link(bucket) is True
    assert await meta_store.get_link(bucket) is None
    assert await meta_store.list_groups(bucket) == []
    assert await meta_store.get_object(bucket, "remote") is None
    local = await meta_store.get_object(bucket, "kept")
    assert (local.warm_seq, local.pinned_until, local.residency) == (0, 0.0, RESIDENT)
    assert await meta_store.delete_link(bucket) is False

    assert await meta_store.get_flag("drain_paused") == 0
    await meta_store.set_flag("drain_paused", 1)
    assert await meta_store.get_flag("drain_paused") == 1
    await meta_store.set_flag("drain_paused", 0)
    assert await meta_store.get_flag("drain_paused") == 0


async def test_delete_bucket_refuses_while_deletes_wait_to_drain(meta_store):
    bucket = await new_bucket(meta_store)
    await meta_store.put_object(warm(bucket, "k"), journal=True)
    await meta_store.delete_object(bucket, "k", journal=True)
    with pytest.raises(errors.BucketNotEmpty):
        await meta_store.delete_bucket(bucket)
    await drain_one(meta_store, bucket, "k")
    await meta_store.delete_bucket(bucket)


# schema upgrade (SQLite's own) -------------------------------------------------------------------------------
# The schema of Atoll 0.1 (schema_version 1), as `git show HEAD~1:atoll/stores/meta/sqlite.py` has it.
_V1_SCHEMA = """
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


def _write_v1_file(path: str) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.executescript(_V1_SCHEMA)
    conn.execute("INSERT INTO schema_version VALUES (1)")
    conn.execute("INSERT INTO identities VALUES ('AKOLD', 'secret', 'o1', 'root', 1.0, 1)")
    conn.execute("INSERT INTO buckets VALUES ('old', 'o1', 1.0, 'us-east-1')")
    attrs = json.dumps({"h": {"content-type": "text/plain"}, "m": {"k": "v"}, "c": {}})
    for key, size in (("a", 11), ("b/c", 2000)):
        conn.execute("INSERT INTO objects VALUES ('old', ?, ?, ?, 'etag', 2.0, 'o1', 0, '', ?, ?)",
                     (key, "v-" + key, size, json.dumps([["blob-" + key.replace("/", "-"), 0, size]]), attrs))
    conn.execute("INSERT INTO uploads VALUES ('up1', 'old', 'mp', 3.0, 'o1', '{}')")
    conn.execute("INSERT INTO garbage VALUES ('blob-gone', 4.0)")
    conn.close()


@pytest.mark.sqlite_only
def test_sqlite_schema_1_file_is_upgraded_in_place(tmp_path, loop):
    path = str(tmp_path / "meta.sqlite3")
    _write_v1_file(path)

    async def check() -> None:
        store = SqliteMetaStore(path)
        await store.open()
        try:
            old = await store.get_object("old", "b/c")
            assert (old.size, old.extents, old.headers, old.user_meta) == (
                2000, [Extent("blob-b-c", 0, 2000)], {"content-type": "text/plain"}, {"k": "v"})
            assert (old.residency, old.warm_seq, old.pinned_until, old.cold_etag) == (RESIDENT, 0, 0.0, "")
            assert await store.resident_bytes() == 2011  # the counter starts from what the file holds
            assert (await store.get_identity("AKOLD")).is_root
            assert (await store.get_upload("up1")).key == "mp"
            assert await garbage(store) == {"blob-gone"}
            # The tiering tables work on the upgraded file.
            await store.put_link(Link(bucket="old", url="s3://cold", mode="writeback", created=5.0))
            await store.put_object(warm("old", "new", 9), journal=True)
            assert [e.key for e in await store.take_drain(10, 60.0)] == ["new"]
            assert await store.resident_bytes() == 2020
            assert [c[1] for c in await store.eviction_candidates(0, 10)] == ["new"]
        finally:
            await store.close()

    loop.run_until_complete(check())
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
        columns = {row[1] for row in conn.execute("PRAGMA table_info(objects)")}
        assert {"residency", "warm_seq", "visited", "pinned_until"} <= columns
    finally:
        conn.close()

    async def reopen() -> None:  # opening an upgraded file again changes nothing
        store = SqliteMetaStore(path)
        await store.open()
        try:
            assert await store.resident_bytes() == 2020
            assert await store.get_link("old") is not None
        finally:
            await store.close()

    loop.run_until_complete(reopen())


async def test_take_drain_skips_unreachable_buckets_and_renewed_claims_hold(meta_store):
    reachable, cut_off = await new_bucket(meta_store, "up"), await new_bucket(meta_store, "down")
    await meta_store.put_object(warm(cut_off, "a"), journal=True)
    await meta_store.put_object(warm(reachable, "b"), journal=True)
    claimed = await meta_store.take_drain(10, 0.2, skip_buckets=[cut_off])
    assert [(e.bucket, e.key) for e in claimed] == [(reachable, "b")]
    await meta_store.renew_drain(claimed, 300.0)
    await asyncio.sleep(0.3)
    # The renewed claim outlives the first lease; the skipped bucket's entry was never touched.
    assert [(e.bucket, e.key, e.attempts) for e in await meta_store.take_drain(10, 60.0)] == [(cut_off, "a", 0)]
    assert await meta_store.take_drain(10, 60.0) == []


async def test_cold_upload_records_survive_until_forgotten(meta_store):
    bucket = await new_bucket(meta_store, "mpu")
    first = await meta_store.note_cold_upload(bucket, "big/a", 1000.0)
    second = await meta_store.note_cold_upload(bucket, "big/b", 1001.0)
    assert first != second
    assert await meta_store.list_cold_uploads() == [(first, bucket, "big/a", 1000.0), (second, bucket, "big/b", 1001.0)]
    await meta_store.forget_cold_upload(first)
    assert await meta_store.list_cold_uploads() == [(second, bucket, "big/b", 1001.0)]
    assert await meta_store.list_cold_uploads(limit=0) == []
