"""Contract of the packed store's metadata (#8): the reverse index of extents in segments and each segment's live
counters stay exact through every kind of object change, the fence refuses new references into a segment being
compacted, and compaction moves and retirement behave as atoll.core.compaction relies on."""

from __future__ import annotations

import time

import pytest

from atoll import errors
from atoll.core.models import Extent
from tests.contract.test_metastore import garbage, new_bucket, version


def packed(bucket: str, key: str, segment: str, offset: int, size: int = 100):
    found = version(bucket, key, size=size)
    found.extents = [Extent(segment, offset, size)]
    return found


async def segment(store, segment_id: str):
    return next(s for s in await store.list_segments() if s.segment_id == segment_id)


SEG_A = "s" + "a" * 31
SEG_B = "s" + "b" * 31


async def test_live_counters_follow_puts_overwrites_deletes(meta_store):
    b = await new_bucket(meta_store)
    await meta_store.register_segment(SEG_A, "node:1:1")
    await meta_store.put_object(packed(b, "k1", SEG_A, 12, 100))
    await meta_store.put_object(packed(b, "k2", SEG_A, 124, 50))
    seg = await segment(meta_store, SEG_A)
    assert (seg.state, seg.live_bytes, seg.live_count) == ("open", 150, 2)
    assert await meta_store.segment_refs(SEG_A, -1, 10) == [(12, 100, b, "k1"), (124, 50, b, "k2")]
    # an overwrite by a file blob and a delete: both records die, and neither becomes collectable garbage
    await meta_store.put_object(version(b, "k1", size=7))
    await meta_store.delete_object(b, "k2")
    seg = await segment(meta_store, SEG_A)
    assert (seg.live_bytes, seg.live_count) == (0, 0)
    assert not any(g.startswith("s") for g in await garbage(meta_store))
    assert await meta_store.recount_segments(False) == []


async def test_fence_refuses_references_into_closed_segments(meta_store):
    b = await new_bucket(meta_store)
    with pytest.raises(errors.SegmentClosed):  # unknown segment
        await meta_store.put_object(packed(b, "k", SEG_A, 12))
    assert await meta_store.get_object(b, "k") is None
    await meta_store.register_segment(SEG_A, "node:1:1")
    await meta_store.put_object(packed(b, "k", SEG_A, 12))
    assert await meta_store.seal_segment(SEG_A, 1000)
    await meta_store.put_object(packed(b, "k2", SEG_A, 200))  # sealed still takes references (PUTs in flight)
    claimed = await meta_store.claim_compaction("node:2:2", 60, 0.5, settle=-1)
    assert claimed.segment_id == SEG_A and claimed.state == "compacting"
    with pytest.raises(errors.SegmentClosed):
        await meta_store.put_object(packed(b, "k3", SEG_A, 400))
    assert await meta_store.get_object(b, "k3") is None
    assert (await segment(meta_store, SEG_A)).live_count == 2


async def test_claim_picks_dead_sealed_segments_after_settling(meta_store):
    b = await new_bucket(meta_store)
    await meta_store.register_segment(SEG_A, "node:1:1")
    await meta_store.register_segment(SEG_B, "node:1:1")
    await meta_store.put_object(packed(b, "a", SEG_A, 12, 900))  # 90% live
    await meta_store.put_object(packed(b, "b", SEG_B, 12, 100))  # 10% live
    assert await meta_store.claim_compaction("c", 60, 0.5, settle=-1) is None  # both open
    await meta_store.seal_segment(SEG_A, 1000)
    await meta_store.seal_segment(SEG_B, 1000)
    assert await meta_store.claim_compaction("c", 60, 0.5, settle=3600) is None  # not settled
    claimed = await meta_store.claim_compaction("c", 60, 0.5, settle=-1)
    assert claimed.segment_id == SEG_B
    assert await meta_store.claim_compaction("c", 60, 0.5, settle=-1) is None  # A is 90% live
    # a compactor whose lease ran out is taken over
    again = await meta_store.claim_compaction("d", 60, 0.5, settle=-1)
    assert again is None
    stale = await meta_store.claim_compaction("d", -120, 0.05, settle=-1)  # lease already over: A claimed...
    assert stale.segment_id == SEG_A
    taken = await meta_store.claim_compaction("e", 60, 0.99, settle=-1)  # ...and taken over from d
    assert taken.segment_id == SEG_A and taken.owner == "e"


async def test_moves_repoint_only_unchanged_objects_then_retire(meta_store):
    b = await new_bucket(meta_store)
    await meta_store.register_segment(SEG_A, "w")
    await meta_store.register_segment(SEG_B, "w")
    for i in range(3):
        await meta_store.put_object(packed(b, f"k{i}", SEG_A, 12 + 200 * i))
    await meta_store.seal_segment(SEG_A, 600)
    assert await meta_store.claim_compaction("c", 60, 0.5, settle=-1) is None  # 44% dead: not yet
    await meta_store.delete_object(b, "k0")
    claimed = await meta_store.claim_compaction("c", 60, 0.5, settle=-1)  # 63% dead
    assert claimed.segment_id == SEG_A
    refs = await meta_store.segment_refs(SEG_A, -1, 10)
    assert [r[3] for r in refs] == ["k1", "k2"]
    assert not await meta_store.retire_segment(SEG_A, "c")  # references left
    await meta_store.put_object(version(b, "k2", size=5))  # overwritten after its record was read
    moved = await meta_store.move_packed(SEG_A, "c", 60, [(b, "k1", 212, SEG_B, 12), (b, "k2", 412, SEG_B, 124)])
    assert moved == 1
    assert (await meta_store.get_object(b, "k1")).extents == [Extent(SEG_B, 12, 100)]
    assert (await meta_store.get_object(b, "k2")).extents[0].blob_id != SEG_B
    with pytest.raises(errors.Unavailable):  # another compactor may not move records of a segment it does not hold
        await meta_store.move_packed(SEG_A, "x", 60, [])
    assert await meta_store.retire_segment(SEG_A, "c")
    seg = await segment(meta_store, SEG_A)
    assert seg.state == "retired" and seg.retired > time.time() - 60 and seg.live_count == 0
    assert (await segment(meta_store, SEG_B)).live_bytes == 100
    await meta_store.forget_segment(SEG_A)
    assert SEG_A not in {s.segment_id for s in await meta_store.list_segments()}


async def test_orphan_segments_of_dead_writers_are_sealed(meta_store):
    await meta_store.register_segment(SEG_A, "node1:10:5")
    await meta_store.register_segment(SEG_B, "node1:11:5")
    sealed = await meta_store.seal_orphan_segments("node1", {"node1:11:5"}, {SEG_A: 4096, SEG_B: 10})
    assert sealed == [SEG_A]
    seg = await segment(meta_store, SEG_A)
    assert seg.state == "sealed" and seg.size == 4096
    assert (await segment(meta_store, SEG_B)).state == "open"


async def test_recount_rebuilds_the_index(meta_store):
    b = await new_bucket(meta_store)
    await meta_store.register_segment(SEG_A, "w")
    await meta_store.put_object(packed(b, "k", SEG_A, 12, 64))
    await meta_store.seal_segment(SEG_A, 100)
    await meta_store.claim_compaction("c", 60, 0.1, settle=-1)  # a compactor that died mid-way
    assert await meta_store.recount_segments(False) == []
    assert await meta_store.recount_segments(True) == []
    seg = await segment(meta_store, SEG_A)
    assert seg.state == "sealed" and (seg.live_bytes, seg.live_count) == (64, 1)
