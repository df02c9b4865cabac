"""Contract of usage counters and the quota check (#7): ``bucket_usage``/``tenant_usage`` stay exact through every
kind of change, and client writes that would grow a bucket or tenant past a limit are refused, changing nothing."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import pytest

from atoll import errors
from atoll.core.models import Block, Bucket, Extent, Limits, ObjectVersion, Tenant
from atoll.stores.meta.sqlite import SqliteMetaStore
from tests.contract.test_metastore import blob, new_upload, part, version


async def tenant_bucket(store, name: str, tenant: str = "vision", limits: Limits = Limits()) -> str:
    if await store.get_tenant(tenant) is None:
        await store.put_tenant(Tenant(tenant, time.time()))
    await store.create_bucket(Bucket(name, "o", time.time(), tenant=tenant, limits=limits))
    return name


def cold(bucket: str, key: str, size: int) -> ObjectVersion:
    """A row of a linked bucket's object known only in the cold store (absent: no warm bytes)."""
    found = version(bucket, key, size=size, residency="absent")
    found.extents = []
    return found


def block(bucket: str, key: str, block_id: str, size: int) -> Block:
    return Block(bucket=bucket, key=key, block_id=block_id, blob_id=blob(), size=size, md5="0" * 32,
                 created=time.time())


def from_blocks(bucket: str, key: str, blocks: list[Block]) -> ObjectVersion:
    size = sum(b.size for b in blocks)
    return ObjectVersion(bucket=bucket, key=key, version_id=blob(), size=size, etag="e" * 32,
                         last_modified=time.time(), owner_id="o", extents=[Extent(b.blob_id, 0, b.size) for b in blocks],
                         blocks=[(b.block_id, b.size, b.md5) for b in blocks])


async def test_counters_follow_puts_overwrites_and_deletes(meta_store):
    b = await tenant_bucket(meta_store, "q1")
    other = await tenant_bucket(meta_store, "q2")
    assert await meta_store.bucket_usage(b) == (0, 0)
    await meta_store.put_object(version(b, "a", size=10))
    await meta_store.put_object(version(b, "b", size=20))
    await meta_store.put_object(version(other, "c", size=5))
    assert await meta_store.bucket_usage(b) == (30, 2)
    await meta_store.put_object(version(b, "a", size=4))  # overwrite: bytes change, objects do not
    assert await meta_store.bucket_usage(b) == (24, 2)
    assert await meta_store.tenant_usage("vision") == (29, 3)
    await meta_store.delete_object(b, "a")
    await meta_store.delete_object(b, "never-there")
    assert await meta_store.bucket_usage(b) == (20, 1)
    await meta_store.put_object(version(b, "x", size=1))
    await meta_store.delete_objects(b, ["b", "x", "missing"])
    assert await meta_store.bucket_usage(b) == (0, 0)
    assert await meta_store.tenant_usage("vision") == (5, 1)
    assert await meta_store.tenant_usage("nobody") == (0, 0)
    assert await meta_store.bucket_usage("nothing") == (0, 0)
    assert await meta_store.count_usage() == []


async def test_parts_count_until_complete_or_abort(meta_store):
    b = await tenant_bucket(meta_store, "q1")
    upload = await new_upload(meta_store, b, "big")
    p1, p2, p3 = part(upload.upload_id, 1, 100), part(upload.upload_id, 2, 50), part(upload.upload_id, 3, 7)
    for p in (p1, p2, p3):
        await meta_store.put_part(p)
    assert await meta_store.bucket_usage(b) == (157, 0)
    await meta_store.put_part(part(upload.upload_id, 3, 9))  # a replaced part stops counting
    assert await meta_store.bucket_usage(b) == (159, 0)
    final = ObjectVersion(bucket=b, key="big", version_id=blob(), size=150, etag="e" * 32, last_modified=time.time(),
                          owner_id="o", extents=[Extent(p1.blob_id, 0, 100), Extent(p2.blob_id, 0, 50)])
    await meta_store.complete_upload(upload.upload_id, final, [1, 2])  # unused part 3 goes
    assert await meta_store.bucket_usage(b) == (150, 1)
    aborted = await new_upload(meta_store, b, "other")
    await meta_store.put_part(part(aborted.upload_id, 1, 30))
    assert await meta_store.bucket_usage(b) == (180, 1)
    await meta_store.abort_upload(aborted.upload_id)
    assert await meta_store.bucket_usage(b) == (150, 1)
    assert await meta_store.count_usage() == []


async def test_blocks_count_until_committed_and_bucket_delete_clears(meta_store):
    b = await tenant_bucket(meta_store, "q1")
    one, two, unused = block(b, "blob", "AA==", 10), block(b, "blob", "AQ==", 20), block(b, "blob", "Ag==", 5)
    for blk in (one, two, unused):
        await meta_store.put_block(blk, 1000)
    await meta_store.put_block(block(b, "blob", "Ag==", 6), 1000)  # replaced: the old one stops counting
    assert await meta_store.bucket_usage(b) == (36, 0)
    await meta_store.commit_blocks(from_blocks(b, "blob", [one, two]), None, [(one.block_id, one.blob_id),
                                                                                (two.block_id, two.blob_id)])
    assert await meta_store.bucket_usage(b) == (30, 1)
    await meta_store.put_block(block(b, "left", "AA==", 8), 1000)
    upload = await new_upload(meta_store, b, "mp")
    await meta_store.put_part(part(upload.upload_id, 1, 3))
    await meta_store.delete_object(b, "blob")
    assert await meta_store.bucket_usage(b) == (11, 0)
    await meta_store.delete_bucket(b)  # drops uploads and blocks: nothing is left counted
    assert await meta_store.bucket_usage(b) == (0, 0)
    assert await meta_store.tenant_usage("vision") == (0, 0)
    await tenant_bucket(meta_store, "q1")  # a new bucket of the same name starts from zero
    assert await meta_store.bucket_usage(b) == (0, 0)


async def test_absent_rows_of_linked_buckets_count(meta_store):
    b = await tenant_bucket(meta_store, "q1")
    first = cold(b, "cold", 40)
    await meta_store.record_cold_version(first, None)
    assert await meta_store.bucket_usage(b) == (40, 1)
    await meta_store.apply_cold_listing(b, [(cold(b, "c2", 2), None)], [("cold", first.version_id)])
    assert await meta_store.bucket_usage(b) == (2, 1)


async def test_bucket_byte_quota_refuses_exactly_past_the_limit(meta_store):
    b = await tenant_bucket(meta_store, "q1", limits=Limits(max_bytes=100))
    await meta_store.put_object(version(b, "a", size=60))
    await meta_store.put_object(version(b, "b", size=40))  # exactly at the limit
    with pytest.raises(errors.QuotaExceeded) as caught:
        await meta_store.put_object(version(b, "c", size=1))
    assert caught.value.message == "bucket q1: 100 bytes byte quota exceeded"
    assert caught.value.detail["code"] == "QuotaExceeded"
    assert await meta_store.get_object(b, "c") is None  # nothing changed
    assert await meta_store.bucket_usage(b) == (100, 2)
    await meta_store.put_object(version(b, "a", size=10))  # a shrinking overwrite passes
    await meta_store.put_object(version(b, "a", size=60))  # and growing back to the limit too
    await meta_store.set_bucket_limits(b, Limits(max_bytes=50))  # a lowered limit: shrinking still passes
    await meta_store.put_object(version(b, "a", size=59))
    with pytest.raises(errors.QuotaExceeded):
        await meta_store.put_object(version(b, "a", size=60))
    await meta_store.delete_object(b, "a")  # deletes always pass
    assert await meta_store.bucket_usage(b) == (40, 1)


async def test_object_quota_and_tenant_quotas(meta_store):
    b = await tenant_bucket(meta_store, "q1", limits=Limits(max_objects=2))
    await meta_store.put_object(version(b, "a"))
    await meta_store.put_object(version(b, "b"))
    with pytest.raises(errors.QuotaExceeded, match="bucket q1: 2 object quota exceeded"):
        await meta_store.put_object(version(b, "c"))
    await meta_store.put_object(version(b, "a", size=9))  # an overwrite adds no object
    await meta_store.put_tenant(Tenant("audio", time.time(), Limits(max_bytes=2 << 30, max_objects=3)))
    x = await tenant_bucket(meta_store, "x1", tenant="audio")
    y = await tenant_bucket(meta_store, "y1", tenant="audio")
    await meta_store.put_object(version(x, "1"))
    await meta_store.put_object(version(y, "2"))
    await meta_store.put_object(version(y, "3"))
    with pytest.raises(errors.QuotaExceeded, match="tenant audio: 3 object quota exceeded"):
        await meta_store.put_object(version(x, "4"))
    await meta_store.delete_object(y, "3")
    big = version(x, "big", size=(2 << 30) - 5)  # 6 bytes are used
    with pytest.raises(errors.QuotaExceeded, match=r"tenant audio: 2 GiB byte quota exceeded"):
        await meta_store.put_object(big)
    await meta_store.put_object(version(x, "fits", size=(2 << 30) - 6))
    assert await meta_store.tenant_usage("audio") == (2 << 30, 3)


async def test_parts_and_blocks_are_refused_past_the_limit_and_complete_reconciles(meta_store):
    b = await tenant_bucket(meta_store, "q1", limits=Limits(max_bytes=100, max_objects=1))
    upload = await new_upload(meta_store, b, "mp")
    p1, p2 = part(upload.upload_id, 1, 60), part(upload.upload_id, 2, 40)
    await meta_store.put_part(p1)
    await meta_store.put_part(p2)
    with pytest.raises(errors.QuotaExceeded, match="byte quota"):
        await meta_store.put_part(part(upload.upload_id, 3, 1))
    await meta_store.put_part(part(upload.upload_id, 2, 40))  # a same-size replacement passes
    p2 = (await meta_store.list_parts(upload.upload_id))[1]
    with pytest.raises(errors.QuotaExceeded):
        await meta_store.put_block(block(b, "blk", "AA==", 1), 1000)
    final = ObjectVersion(bucket=b, key="mp", version_id=blob(), size=100, etag="e" * 32, last_modified=time.time(),
                          owner_id="o", extents=[Extent(p1.blob_id, 0, 60), Extent(p2.blob_id, 0, 40)])
    await meta_store.complete_upload(upload.upload_id, final, [1, 2])  # parts became the object: no growth
    assert await meta_store.bucket_usage(b) == (100, 1)
    second = await new_upload(meta_store, b, "mp2")
    with pytest.raises(errors.QuotaExceeded):
        await meta_store.put_part(part(second.upload_id, 1, 1))
    await meta_store.delete_object(b, "mp")
    one = block(b, "blk", "AA==", 5)
    await meta_store.put_block(one, 1000)
    await meta_store.put_object(version(b, "other", size=1))
    with pytest.raises(errors.QuotaExceeded, match="object quota"):  # the block list would add a second object
        await meta_store.commit_blocks(from_blocks(b, "blk", [one]), None, [(one.block_id, one.blob_id)])
    assert [x.block_id for x in await meta_store.list_blocks(b, "blk")] == ["AA=="]  # refused: nothing changed


async def test_cold_imports_are_never_refused(meta_store):
    b = await tenant_bucket(meta_store, "q1", limits=Limits(max_bytes=10, max_objects=1))
    await meta_store.record_cold_version(cold(b, "cold", 400), None)
    await meta_store.apply_cold_listing(b, [(cold(b, "c2", 2), None)], [])
    assert await meta_store.bucket_usage(b) == (402, 2)


async def test_concurrent_writers_never_overshoot(meta_store):
    b = await tenant_bucket(meta_store, "q1", limits=Limits(max_bytes=1000))
    results = await asyncio.gather(*(meta_store.put_object(version(b, f"k{i}", size=100)) for i in range(25)),
                                   return_exceptions=True)
    assert sum(1 for r in results if not isinstance(r, BaseException)) == 10
    assert all(isinstance(r, errors.QuotaExceeded) for r in results if isinstance(r, BaseException))
    assert await meta_store.bucket_usage(b) == (1000, 10)


@pytest.mark.sqlite_only
async def test_counters_are_recounted_when_the_table_is_new_and_by_fsck(tmp_path, loop):
    path = str(tmp_path / "meta.sqlite3")
    store = SqliteMetaStore(path)
    await store.open()
    b = await tenant_bucket(store, "q1")
    await store.put_object(version(b, "a", size=7))
    upload = await new_upload(store, b, "mp")
    await store.put_part(part(upload.upload_id, 1, 5))
    await store.put_block(block(b, "blk", "AA==", 3), 1000)
    await store.close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE usage SET bytes = 1, objects = 9")  # a counter gone wrong
    conn.execute("UPDATE warm SET bytes = 2")
    conn.commit()
    conn.close()
    await store.open()
    assert await store.count_usage() == [("q1", (1, 9), (15, 1))]
    assert await store.recount_usage() == [("q1", (1, 9), (15, 1))]
    assert await store.bucket_usage(b) == (15, 1)
    assert await store.count_warm() == [("q1", 2, 7)]  # the object; parts and blocks are not warm versions
    assert await store.recount_warm() == [("q1", 2, 7)]
    assert await store.count_warm() == []
    await store.close()
    conn = sqlite3.connect(path)  # a file from before the counters (schema 2): counted once at open
    conn.execute("UPDATE schema_version SET version = 2")
    conn.execute("DROP TABLE usage")
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        conn.execute(f"DROP TRIGGER {name}")
    conn.commit()
    conn.close()
    await store.open()
    assert await store.bucket_usage(b) == (15, 1)
    store.bulk_insert_sync([version(b, "a", size=2), version(b, "bulk", size=1)])  # REPLACE reaches the triggers
    assert await store.bucket_usage(b) == (11, 2)
    assert await store.count_usage() == []
    await store.close()


async def test_put_delete_storm_cost(meta_store):
    """Not a limit, a record: the counters' triggers on a PUT/DELETE storm (printed with -s)."""
    b = await tenant_bucket(meta_store, "q1", limits=Limits(max_bytes=1 << 40, max_objects=1 << 30))
    started = time.perf_counter()
    n = 2000
    await asyncio.gather(*(meta_store.put_object(version(b, f"k{i}", size=10)) for i in range(n)))
    await asyncio.gather(*(meta_store.delete_object(b, f"k{i}") for i in range(n)))
    elapsed = time.perf_counter() - started
    print(f"\n{2 * n} writes under a quota: {elapsed / (2 * n) * 1e6:.0f} µs each")
    assert await meta_store.bucket_usage(b) == (0, 0)
