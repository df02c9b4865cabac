"""Contract of the uncommitted-block methods of ``atoll/stores/meta/base.py`` (Azure Put Block / Put Block List):
put_block, list_blocks, commit_blocks, expire_blocks, and how blocks take part in garbage and fsck lookups."""

from __future__ import annotations

import base64
import hashlib
import secrets
import time

import pytest

from atoll import errors
from atoll.core.models import Block, Extent, ObjectVersion
from atoll.stores.meta.base import WriteCondition
from tests.contract.test_metastore import OWNER, blob, blob_ids, garbage, new_bucket, version


def block_id(n: int, width: int = 6) -> str:
    return base64.b64encode(str(n).zfill(width).encode()).decode()


def block(bucket: str, key: str, n: int, *, size: int = 4, created: float | None = None, width: int = 6) -> Block:
    return Block(bucket=bucket, key=key, block_id=block_id(n, width), blob_id=blob(), size=size,
                 md5=hashlib.md5(secrets.token_bytes(4)).hexdigest(), created=created or time.time())


def committed(bucket: str, key: str, blocks: list[Block], extents: list[Extent] | None = None) -> ObjectVersion:
    """The version a Put Block List of ``blocks`` (in order) makes."""
    return ObjectVersion(bucket=bucket, key=key, version_id=blob(), size=sum(b.size for b in blocks),
                         etag="e" * 32 + f"-{len(blocks)}", last_modified=time.time(),
                         extents=extents or [Extent(b.blob_id, 0, b.size) for b in blocks], owner_id=OWNER,
                         part_count=len(blocks), blocks=[(b.block_id, b.size, b.md5) for b in blocks])


async def test_put_block_replaces_same_id_and_garbages_old_blob(meta_store):
    bucket = await new_bucket(meta_store)
    first = block(bucket, "k", 1)
    assert await meta_store.put_block(first, 10) is None
    second = block(bucket, "k", 2)
    await meta_store.put_block(second, 10)
    again = block(bucket, "k", 1, size=9)
    replaced = await meta_store.put_block(again, 10)
    assert replaced == first
    assert first.blob_id in await garbage(meta_store)
    listed = await meta_store.list_blocks(bucket, "k")
    assert {b.block_id: b for b in listed} == {again.block_id: again, second.block_id: second}
    assert await meta_store.list_blocks(bucket, "other") == []


async def test_put_block_refuses_missing_bucket_mixed_id_lengths_and_too_many(meta_store):
    with pytest.raises(errors.NoSuchBucket):
        await meta_store.put_block(block("nope", "k", 1), 10)
    bucket = await new_bucket(meta_store)
    await meta_store.put_block(block(bucket, "k", 1), 2)
    with pytest.raises(errors.InvalidRequest) as bad_length:
        await meta_store.put_block(block(bucket, "k", 2, width=12), 2)
    assert bad_length.value.detail["code"] == "InvalidBlobOrBlock"
    await meta_store.put_block(block(bucket, "k", 2), 2)
    with pytest.raises(errors.Conflict) as too_many:
        await meta_store.put_block(block(bucket, "k", 3), 2)
    assert too_many.value.detail["code"] == "BlockCountExceedsLimit"
    await meta_store.put_block(block(bucket, "k", 2), 2)  # replacing one is not one more
    assert len(await meta_store.list_blocks(bucket, "k")) == 2


async def test_list_blocks_oldest_first(meta_store):
    bucket = await new_bucket(meta_store)
    now = time.time()
    for n, age in ((1, 5), (2, 30), (3, 1)):
        await meta_store.put_block(block(bucket, "k", n, created=now - age), 10)
    assert [b.block_id for b in await meta_store.list_blocks(bucket, "k")] == [block_id(2), block_id(1), block_id(3)]


async def test_commit_blocks_makes_version_and_drops_unused_blocks(meta_store):
    bucket = await new_bucket(meta_store)
    old = version(bucket, "k")
    await meta_store.put_object(old)
    blocks = [block(bucket, "k", n) for n in (1, 2, 3)]
    for b in blocks:
        await meta_store.put_block(b, 10)
    final = committed(bucket, "k", [blocks[2], blocks[0]])
    replaced = await meta_store.commit_blocks(final, None, [(b.block_id, b.blob_id) for b in (blocks[2], blocks[0])])
    assert replaced.version_id == old.version_id
    stored = await meta_store.get_object(bucket, "k")
    assert stored == final
    assert stored.blocks == final.blocks
    assert await meta_store.list_blocks(bucket, "k") == []
    gone = await garbage(meta_store)
    assert blocks[1].blob_id in gone and blob_ids(old) <= gone
    assert not {blocks[0].blob_id, blocks[2].blob_id} & gone


async def test_commit_blocks_reusing_committed_blocks_keeps_their_blobs(meta_store):
    bucket = await new_bucket(meta_store)
    a, b = block(bucket, "k", 1), block(bucket, "k", 2)
    for x in (a, b):
        await meta_store.put_block(x, 10)
    first = committed(bucket, "k", [a, b])
    await meta_store.commit_blocks(first, None, [(a.block_id, a.blob_id), (b.block_id, b.blob_id)])
    c = block(bucket, "k", 3)
    await meta_store.put_block(c, 10)
    second = committed(bucket, "k", [b, c])  # b kept from the committed list, a dropped
    await meta_store.commit_blocks(second, first.version_id, [(c.block_id, c.blob_id)])
    assert (await meta_store.get_object(bucket, "k")).blocks == second.blocks
    gone = await garbage(meta_store)
    assert a.blob_id in gone
    assert not {b.blob_id, c.blob_id} & gone
    assert await meta_store.unreferenced_blobs([a.blob_id, b.blob_id, c.blob_id]) == set()


async def test_commit_blocks_refuses_moved_blocks_or_version_and_changes_nothing(meta_store):
    bucket = await new_bucket(meta_store)
    a = block(bucket, "k", 1)
    await meta_store.put_block(a, 10)
    replaced_meanwhile = block(bucket, "k", 1)
    await meta_store.put_block(replaced_meanwhile, 10)
    with pytest.raises(errors.ConditionalRequestConflict):
        await meta_store.commit_blocks(committed(bucket, "k", [a]), None, [(a.block_id, a.blob_id)])
    first = committed(bucket, "k", [replaced_meanwhile])
    await meta_store.commit_blocks(first, None, [(replaced_meanwhile.block_id, replaced_meanwhile.blob_id)])
    await meta_store.put_object(version(bucket, "k"))  # an overwrite between reading and committing
    b = block(bucket, "k", 2)
    await meta_store.put_block(b, 10)
    with pytest.raises(errors.ConditionalRequestConflict):
        await meta_store.commit_blocks(committed(bucket, "k", [replaced_meanwhile, b]), first.version_id,
                                       [(b.block_id, b.blob_id)])
    assert [x.block_id for x in await meta_store.list_blocks(bucket, "k")] == [b.block_id]


async def test_commit_blocks_honours_write_conditions(meta_store):
    bucket = await new_bucket(meta_store)
    await meta_store.put_object(version(bucket, "k"))
    a = block(bucket, "k", 1)
    await meta_store.put_block(a, 10)
    with pytest.raises(errors.PreconditionFailed):
        await meta_store.commit_blocks(committed(bucket, "k", [a]), None, [(a.block_id, a.blob_id)],
                                       WriteCondition(if_none_match=True))
    assert len(await meta_store.list_blocks(bucket, "k")) == 1


async def test_commit_blocks_journals_for_the_drain(meta_store):
    bucket = await new_bucket(meta_store)
    a = block(bucket, "k", 1)
    await meta_store.put_block(a, 10)
    final = committed(bucket, "k", [a])
    await meta_store.commit_blocks(final, None, [(a.block_id, a.blob_id)], journal=True)
    entry = await meta_store.get_drain(bucket, "k")
    assert (entry.op, entry.version_id, entry.size) == ("put", final.version_id, final.size)


async def test_expire_blocks_garbages_old_blocks_only(meta_store):
    bucket = await new_bucket(meta_store)
    now = time.time()
    old = [block(bucket, "k", n, created=now - 100) for n in (1, 2)]
    fresh = block(bucket, "k", 3, created=now)
    for b in (*old, fresh):
        await meta_store.put_block(b, 10)
    assert await meta_store.expire_blocks(now - 50, 1) == 1
    assert await meta_store.expire_blocks(now - 50, 10) == 1
    assert await meta_store.expire_blocks(now - 50, 10) == 0
    assert [b.block_id for b in await meta_store.list_blocks(bucket, "k")] == [fresh.block_id]
    assert {b.blob_id for b in old} <= await garbage(meta_store)


async def test_blocks_are_referenced_and_go_with_their_bucket(meta_store):
    bucket = await new_bucket(meta_store)
    a = block(bucket, "k", 1)
    await meta_store.put_block(a, 10)
    assert a.blob_id in await meta_store.referenced_blobs()
    assert await meta_store.unreferenced_blobs([a.blob_id, "f" * 32]) == {"f" * 32}
    await meta_store.delete_bucket(bucket)
    assert a.blob_id in await garbage(meta_store)
    await new_bucket(meta_store)
    assert await meta_store.list_blocks(bucket, "k") == []
