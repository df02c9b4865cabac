"""The executable form of ``atoll/stores/meta/base.py``: every MetaStore implementation must pass all of this.

Written against the protocol only (no SQL, no SQLite file tricks), so a new backend adds one line to
``META_STORES`` in conftest.py and inherits the suite.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time

import pytest

from atoll import errors
from atoll.core.models import Bucket, Extent, Identity, ObjectVersion, Part, Tenant, Upload
from atoll.stores.meta.base import WriteCondition

OWNER = "owner-a"
OTHER = "owner-b"


def blob() -> str:
    return secrets.token_hex(16)


def version(bucket: str, key: str, *, size: int = 3, blobs: int = 1, **fields) -> ObjectVersion:
    extents = [Extent(blob(), 0, size) for _ in range(blobs)]
    return ObjectVersion(bucket=bucket, key=key, version_id=blob(), size=size * blobs,
                         etag=hashlib.md5(secrets.token_bytes(8)).hexdigest(), last_modified=time.time(),
                         extents=extents, owner_id=OWNER, **fields)


def blob_ids(v: ObjectVersion) -> set[str]:
    return {e.blob_id for e in v.extents}


async def garbage(store) -> set[str]:
    return set(await store.take_garbage(time.time() + 3600, 1_000_000))


async def new_bucket(store, name: str = "b1", owner: str = OWNER) -> str:
    await store.create_bucket(Bucket(name=name, owner_id=owner, created=time.time()))
    return name


async def new_upload(store, bucket: str, key: str, upload_id: str | None = None) -> Upload:
    upload = Upload(upload_id=upload_id or secrets.token_urlsafe(16), bucket=bucket, key=key,
                    initiated=time.time(), owner_id=OWNER, headers={"content-type": "text/x"},
                    user_meta={"m": "1"}, checksum_algorithm="crc32c", checksum_type="COMPOSITE")
    await store.create_upload(upload)
    return upload


def part(upload_id: str, number: int, size: int = 5) -> Part:
    return Part(upload_id=upload_id, part_number=number, size=size, etag=hashlib.md5(str(number).encode()).hexdigest(),
                blob_id=blob(), last_modified=time.time(), checksums={"crc32c": "AAAAAA=="})


# identities ------------------------------------------------------------------------------------------------
async def test_identities_crud(meta_store):
    first = Identity("AK1", "secret1", "o1", "alice", created=1000.0, is_root=True)
    second = Identity("AK2", "secret2", "o2", "bob", created=2000.0)
    assert await meta_store.get_identity("AK1") is None
    await meta_store.put_identity(first)
    await meta_store.put_identity(second)
    assert await meta_store.get_identity("AK1") == first
    assert {i.access_key for i in await meta_store.list_identities()} == {"AK1", "AK2"}

    rotated = Identity("AK2", "secret2-new", "o2", "bob", created=2000.0)
    await meta_store.put_identity(rotated)  # insert or replace
    assert await meta_store.get_identity("AK2") == rotated
    assert len(await meta_store.list_identities()) == 2

    assert await meta_store.delete_identity("AK1") is True
    assert await meta_store.delete_identity("AK1") is False
    assert await meta_store.get_identity("AK1") is None
    assert [i.access_key for i in await meta_store.list_identities()] == ["AK2"]


# buckets ---------------------------------------------------------------------------------------------------
async def test_create_bucket_conflicts_name_the_owner(meta_store):
    created = Bucket(name="data", owner_id=OWNER, created=1234.5, region="us-east-1")
    await meta_store.create_bucket(created)
    assert await meta_store.get_bucket("data") == created
    # Names are unique on the island; "owned by you" means owned by your tenant, whoever in it created it.
    with pytest.raises(errors.BucketAlreadyOwnedByYou):
        await meta_store.create_bucket(Bucket(name="data", owner_id=OTHER, created=2.0))
    await meta_store.put_tenant(Tenant("other-team", 1.0))
    with pytest.raises(errors.BucketAlreadyExists):
        await meta_store.create_bucket(Bucket(name="data", owner_id=OTHER, created=2.0, tenant="other-team"))
    assert await meta_store.get_bucket("data") == created
    assert await meta_store.get_bucket("nope") is None


async def test_list_buckets_in_name_order_and_by_tenant(meta_store):
    await meta_store.put_tenant(Tenant("other-team", 1.0))
    for name, tenant in [("m-bucket", "root"), ("a-bucket", "other-team"), ("z-bucket", "root"),
                         ("0-bucket", "root")]:
        await meta_store.create_bucket(Bucket(name=name, owner_id=OWNER, created=time.time(), tenant=tenant))
    assert [b.name for b in await meta_store.list_buckets()] == ["0-bucket", "a-bucket", "m-bucket", "z-bucket"]
    assert [b.name for b in await meta_store.list_buckets("root")] == ["0-bucket", "m-bucket", "z-bucket"]
    assert [b.name for b in await meta_store.list_buckets("other-team")] == ["a-bucket"]
    assert await meta_store.list_buckets("nobody") == []
    assert await meta_store.list_buckets("nobody") == []


async def test_delete_bucket(meta_store):
    with pytest.raises(errors.NoSuchBucket):
        await meta_store.delete_bucket("missing")
    bucket = await new_bucket(meta_store)
    await meta_store.put_object(version(bucket, "k"))
    with pytest.raises(errors.BucketNotEmpty):
        await meta_store.delete_bucket(bucket)
    assert await meta_store.get_bucket(bucket) is not None
    await meta_store.delete_object(bucket, "k")
    await meta_store.delete_bucket(bucket)
    assert await meta_store.get_bucket(bucket) is None
    with pytest.raises(errors.NoSuchBucket):
        await meta_store.delete_bucket(bucket)


async def test_delete_bucket_aborts_its_uploads_and_garbages_their_blobs(meta_store):
    bucket = await new_bucket(meta_store)
    keep = await new_bucket(meta_store, "other")
    upload = await new_upload(meta_store, bucket, "big")
    survivor = await new_upload(meta_store, keep, "big")
    parts = [part(upload.upload_id, n) for n in (1, 2)]
    for p in parts:
        await meta_store.put_part(p)
    kept_part = part(survivor.upload_id, 1)
    await meta_store.put_part(kept_part)

    await meta_store.delete_bucket(bucket)
    assert await meta_store.get_upload(upload.upload_id) is None
    assert await meta_store.list_parts(upload.upload_id) == []
    assert {p.blob_id for p in parts} <= await garbage(meta_store)
    assert kept_part.blob_id not in await garbage(meta_store)
    assert (await meta_store.get_upload(survivor.upload_id)).key == "big"


# objects ---------------------------------------------------------------------------------------------------
async def test_object_round_trip_keeps_every_field(meta_store):
    bucket = await new_bucket(meta_store)
    v = version(bucket, "dir/obj", blobs=3, headers={"content-type": "text/plain", "cache-control": "no-cache"},
                user_meta={"author": "me", "x": ""}, checksums={"crc32": "AAAAAA==-3"}, checksum_type="COMPOSITE",
                part_count=3)
    assert await meta_store.put_object(v) is None
    got = await meta_store.get_object(bucket, "dir/obj")
    assert got == v
    assert got.last_modified == pytest.approx(v.last_modified, abs=1e-3)
    assert await meta_store.get_object(bucket, "dir/obj2") is None
    assert await meta_store.get_object("other-bucket", "dir/obj") is None


async def test_put_returns_replaced_version_and_garbages_its_blobs(meta_store):
    bucket = await new_bucket(meta_store)
    first, second = version(bucket, "k", blobs=2), version(bucket, "k")
    await meta_store.put_object(first)
    assert await garbage(meta_store) == set()
    replaced = await meta_store.put_object(second)
    assert replaced is not None and replaced.version_id == first.version_id
    assert (await meta_store.get_object(bucket, "k")).version_id == second.version_id
    gone = await garbage(meta_store)
    assert blob_ids(first) <= gone
    assert not blob_ids(second) & gone


async def test_put_into_missing_bucket(meta_store):
    with pytest.raises(errors.NoSuchBucket):
        await meta_store.put_object(version("missing", "k"))
    with pytest.raises(errors.NoSuchBucket):
        await meta_store.put_object(version("missing", "k"), WriteCondition(if_none_match=True))


async def test_write_conditions(meta_store):
    bucket = await new_bucket(meta_store)
    created = version(bucket, "k")
    assert await meta_store.put_object(created, WriteCondition(if_none_match=True)) is None

    loser = version(bucket, "k")
    with pytest.raises(errors.PreconditionFailed):
        await meta_store.put_object(loser, WriteCondition(if_none_match=True))
    with pytest.raises(errors.PreconditionFailed):
        await meta_store.put_object(loser, WriteCondition(if_match="0" * 32))
    assert (await meta_store.get_object(bucket, "k")).version_id == created.version_id
    assert not blob_ids(created) & await garbage(meta_store), "a failed condition must not garbage the current blobs"

    winner = version(bucket, "k")
    replaced = await meta_store.put_object(winner, WriteCondition(if_match=created.etag))
    assert replaced.version_id == created.version_id
    assert (await meta_store.get_object(bucket, "k")).version_id == winner.version_id

    with pytest.raises(errors.NoSuchKey):
        await meta_store.put_object(version(bucket, "absent"), WriteCondition(if_match=created.etag))
    assert await meta_store.get_object(bucket, "absent") is None


async def test_replace_metadata_keeps_bytes_and_etag(meta_store):
    bucket = await new_bucket(meta_store)
    v = version(bucket, "k", blobs=2, headers={"content-type": "a/b"}, user_meta={"old": "1"},
                checksums={"crc64nvme": "AAAAAAAAAAA="}, checksum_type="FULL_OBJECT")
    await meta_store.put_object(v)
    later = v.last_modified + 10
    updated = await meta_store.replace_metadata(bucket, "k", v.version_id, {"content-type": "c/d"}, {"new": "2"}, later)
    got = await meta_store.get_object(bucket, "k")
    for current in (updated, got):
        assert current.headers == {"content-type": "c/d"}
        assert current.user_meta == {"new": "2"}
        assert current.last_modified == pytest.approx(later)
        assert (current.etag, current.extents, current.size, current.version_id, current.checksums) == \
               (v.etag, v.extents, v.size, v.version_id, v.checksums)
    assert await garbage(meta_store) == set()

    with pytest.raises(errors.ConditionalRequestConflict):
        await meta_store.replace_metadata(bucket, "k", "another-version", {}, {}, later)
    with pytest.raises(errors.NoSuchKey):
        await meta_store.replace_metadata(bucket, "absent", v.version_id, {}, {}, later)
    assert (await meta_store.get_object(bucket, "k")).user_meta == {"new": "2"}


async def test_delete_object(meta_store):
    with pytest.raises(errors.NoSuchBucket):
        await meta_store.delete_object("missing", "k")
    bucket = await new_bucket(meta_store)
    v = version(bucket, "k")
    await meta_store.put_object(v)
    removed = await meta_store.delete_object(bucket, "k")
    assert removed.version_id == v.version_id
    assert await meta_store.get_object(bucket, "k") is None
    assert blob_ids(v) <= await garbage(meta_store)
    assert await meta_store.delete_object(bucket, "k") is None


async def test_delete_objects_lines_up_with_keys(meta_store):
    with pytest.raises(errors.NoSuchBucket):
        await meta_store.delete_objects("missing", ["k"])
    bucket = await new_bucket(meta_store)
    a, c = version(bucket, "a"), version(bucket, "c")
    await meta_store.put_object(a)
    await meta_store.put_object(c)
    await meta_store.put_object(version(bucket, "keep"))
    result = await meta_store.delete_objects(bucket, ["a", "b", "c"])
    assert [r.version_id if r else None for r in result] == [a.version_id, None, c.version_id]
    assert [e.key for e in await meta_store.list_objects(bucket, "", True, None, 100)] == ["keep"]
    assert blob_ids(a) | blob_ids(c) <= await garbage(meta_store)


async def test_list_objects_bounds(meta_store):
    bucket = await new_bucket(meta_store)
    keys = ["a", "b", "c", "d", "e"]
    for key in keys:
        await meta_store.put_object(version(bucket, key))
    await meta_store.put_object(version(await new_bucket(meta_store, "neighbour"), "b2"))

    async def keys_of(start, inclusive, end, limit=100):
        return [e.key for e in await meta_store.list_objects(bucket, start, inclusive, end, limit)]

    assert await keys_of("", True, None) == keys
    assert await keys_of("", False, None) == keys
    assert await keys_of("b", True, None) == ["b", "c", "d", "e"]
    assert await keys_of("b", False, None) == ["c", "d", "e"]
    assert await keys_of("b", True, "d") == ["b", "c"]
    assert await keys_of("b", False, "d") == ["c"]
    assert await keys_of("bb", True, "d") == ["c"]
    assert await keys_of("", True, "a") == []
    assert await keys_of("e", False, None) == []
    assert await keys_of("a", True, None, limit=2) == ["a", "b"]
    assert await keys_of("", True, None, limit=1) == ["a"]
    entry = (await meta_store.list_objects(bucket, "c", True, None, 1))[0]
    stored = await meta_store.get_object(bucket, "c")
    assert (entry.key, entry.size, entry.etag, entry.owner_id) == ("c", stored.size, stored.etag, stored.owner_id)
    assert entry.last_modified == pytest.approx(stored.last_modified, abs=1e-3)


async def test_list_objects_binary_utf8_order(meta_store):
    bucket = await new_bucket(meta_store)
    # "\uff01" sorts before U+1F600 in UTF-8 and code-point order but after it in UTF-16 order.
    keys = ["a", "a/", "a0", "é", "\U0001F600", "Z", "~", "\uff01", "a b", "A", "a\x7f", "\u00ff", "a/b"]
    for key in sorted(keys, reverse=True):
        await meta_store.put_object(version(bucket, key))
    expected = sorted(keys, key=lambda k: k.encode("utf-8"))
    assert [e.key for e in await meta_store.list_objects(bucket, "", True, None, 1000)] == expected
    # Page through one key at a time with exclusive starts: the same order, every key once.
    seen, start = [], ""
    for _ in range(len(keys) + 1):
        batch = await meta_store.list_objects(bucket, start, False, None, 1)
        if not batch:
            break
        seen.append(batch[0].key)
        start = batch[0].key
    assert seen == expected
    # Bounds compare as bytes too.
    between = [e.key for e in await meta_store.list_objects(bucket, "~", False, "\U0001F600", 100)]
    assert between == ["é", "\u00ff", "\uff01"]


async def test_count_objects(meta_store):
    bucket = await new_bucket(meta_store)
    assert await meta_store.count_objects(bucket) == (0, 0)
    await meta_store.put_object(version(bucket, "a", size=10))
    await meta_store.put_object(version(bucket, "b", size=7, blobs=2))
    await meta_store.put_object(version(bucket, "a", size=4))
    assert await meta_store.count_objects(bucket) == (2, 18)


# multipart uploads -----------------------------------------------------------------------------------------
async def test_create_and_get_upload(meta_store):
    with pytest.raises(errors.NoSuchBucket):
        await new_upload(meta_store, "missing", "k")
    bucket = await new_bucket(meta_store)
    upload = await new_upload(meta_store, bucket, "dir/key é")
    assert await meta_store.get_upload(upload.upload_id) == upload
    assert await meta_store.get_upload("nope") is None


async def test_put_part_replaces_and_garbages_the_old_blob(meta_store):
    with pytest.raises(errors.NoSuchUpload):
        await meta_store.put_part(part("nope", 1))
    bucket = await new_bucket(meta_store)
    upload = await new_upload(meta_store, bucket, "k")
    first = part(upload.upload_id, 1)
    assert await meta_store.put_part(first) is None
    second = part(upload.upload_id, 1, size=9)
    replaced = await meta_store.put_part(second)
    assert replaced is not None and replaced.blob_id == first.blob_id
    assert first.blob_id in await garbage(meta_store)
    assert second.blob_id not in await garbage(meta_store)
    assert await meta_store.list_parts(upload.upload_id) == [second]


async def test_list_parts_after_and_limit(meta_store):
    bucket = await new_bucket(meta_store)
    upload = await new_upload(meta_store, bucket, "k")
    other = await new_upload(meta_store, bucket, "k")
    for number in (7, 2, 10000, 3, 1):
        await meta_store.put_part(part(upload.upload_id, number))
    await meta_store.put_part(part(other.upload_id, 5))

    async def numbers(after=0, limit=10000):
        return [p.part_number for p in await meta_store.list_parts(upload.upload_id, after, limit)]

    assert await numbers() == [1, 2, 3, 7, 10000]
    assert await numbers(after=2) == [3, 7, 10000]
    assert await numbers(after=3, limit=1) == [7]
    assert await numbers(limit=2) == [1, 2]
    assert await numbers(after=10000) == []
    assert await meta_store.list_parts("nope") == []


async def test_list_uploads_order_prefix_and_markers(meta_store):
    bucket = await new_bucket(meta_store)
    other = await new_bucket(meta_store, "other")
    made = []
    for key, upload_id in [("b", "u2"), ("a", "u9"), ("b", "u1"), ("a/x", "u5"), ("c", "u3"), ("é", "u4")]:
        made.append(await new_upload(meta_store, bucket, key, upload_id))
    await new_upload(meta_store, other, "a", "zz")

    async def listed(**kw):
        return [(u.key, u.upload_id) for u in await meta_store.list_uploads(bucket, **kw)]

    assert await listed() == [("a", "u9"), ("a/x", "u5"), ("b", "u1"), ("b", "u2"), ("c", "u3"), ("é", "u4")]
    assert await listed(prefix="a") == [("a", "u9"), ("a/x", "u5")]
    assert await listed(prefix="b", limit=1) == [("b", "u1")]
    assert await listed(prefix="zz") == []
    assert await listed(key_marker="a/x") == [("b", "u1"), ("b", "u2"), ("c", "u3"), ("é", "u4")]
    assert await listed(key_marker="b", upload_id_marker="u1") == [("b", "u2"), ("c", "u3"), ("é", "u4")]
    assert await listed(key_marker="b", upload_id_marker="u1", limit=2) == [("b", "u2"), ("c", "u3")]
    assert await listed(key_marker="b", upload_id_marker="u1", prefix="b") == [("b", "u2")]
    assert await listed(limit=2) == [("a", "u9"), ("a/x", "u5")]
    assert [u.upload_id for u in await meta_store.list_uploads(other)] == ["zz"]


async def _upload_with_parts(store, bucket: str, key: str, numbers=(1, 2, 3)) -> tuple[Upload, dict[int, Part]]:
    upload = await new_upload(store, bucket, key)
    parts = {}
    for number in numbers:
        parts[number] = part(upload.upload_id, number)
        await store.put_part(parts[number])
    return upload, parts


def _completed(upload: Upload, parts: list[Part]) -> ObjectVersion:
    return ObjectVersion(bucket=upload.bucket, key=upload.key, version_id=blob(), size=sum(p.size for p in parts),
                         etag="f" * 32 + f"-{len(parts)}", last_modified=time.time(), headers=upload.headers,
                         user_meta=upload.user_meta, extents=[Extent(p.blob_id, 0, p.size) for p in parts],
                         part_count=len(parts), owner_id=OWNER)


async def test_complete_upload(meta_store):
    bucket = await new_bucket(meta_store)
    old = version(bucket, "k")
    await meta_store.put_object(old)
    upload, parts = await _upload_with_parts(meta_store, bucket, "k", (1, 2, 3, 4))
    final = _completed(upload, [parts[1], parts[3]])  # a subset: 2 and 4 are unused

    replaced = await meta_store.complete_upload(upload.upload_id, final, [1, 3])
    assert replaced.version_id == old.version_id
    assert await meta_store.get_object(bucket, "k") == final
    assert await meta_store.get_upload(upload.upload_id) is None
    assert await meta_store.list_parts(upload.upload_id) == []
    gone = await garbage(meta_store)
    assert {parts[2].blob_id, parts[4].blob_id} | blob_ids(old) <= gone
    assert not {parts[1].blob_id, parts[3].blob_id} & gone
    with pytest.raises(errors.NoSuchUpload):
        await meta_store.complete_upload(upload.upload_id, final, [1, 3])


async def test_complete_upload_refuses_a_changed_or_missing_part(meta_store):
    bucket = await new_bucket(meta_store)
    upload, parts = await _upload_with_parts(meta_store, bucket, "k")
    final = _completed(upload, [parts[1], parts[2]])
    await meta_store.put_part(part(upload.upload_id, 2))  # re-uploaded after the caller read the part list
    with pytest.raises(errors.InvalidPart):
        await meta_store.complete_upload(upload.upload_id, final, [1, 2])

    ghost = Part(upload.upload_id, 9, 5, "e" * 32, blob(), time.time())
    with pytest.raises(errors.InvalidPart):
        await meta_store.complete_upload(upload.upload_id, _completed(upload, [parts[1], ghost]), [1, 9])
    assert await meta_store.get_object(bucket, "k") is None
    assert (await meta_store.get_upload(upload.upload_id)) is not None
    assert len(await meta_store.list_parts(upload.upload_id)) == 3


async def test_complete_upload_conditions_leave_the_upload_intact(meta_store):
    bucket = await new_bucket(meta_store)
    existing = version(bucket, "k")
    await meta_store.put_object(existing)
    upload, parts = await _upload_with_parts(meta_store, bucket, "k", (1,))
    final = _completed(upload, [parts[1]])
    with pytest.raises(errors.PreconditionFailed):
        await meta_store.complete_upload(upload.upload_id, final, [1], WriteCondition(if_none_match=True))
    with pytest.raises(errors.PreconditionFailed):
        await meta_store.complete_upload(upload.upload_id, final, [1], WriteCondition(if_match="0" * 32))
    assert await meta_store.get_upload(upload.upload_id) is not None
    assert [p.part_number for p in await meta_store.list_parts(upload.upload_id)] == [1]
    assert (await meta_store.get_object(bucket, "k")).version_id == existing.version_id
    assert parts[1].blob_id not in await garbage(meta_store)

    upload2, parts2 = await _upload_with_parts(meta_store, bucket, "fresh", (1,))
    with pytest.raises(errors.NoSuchKey):
        await meta_store.complete_upload(upload2.upload_id, _completed(upload2, [parts2[1]]), [1],
                                         WriteCondition(if_match=existing.etag))

    replaced = await meta_store.complete_upload(upload.upload_id, final, [1], WriteCondition(if_match=existing.etag))
    assert replaced.version_id == existing.version_id


async def test_abort_upload(meta_store):
    with pytest.raises(errors.NoSuchUpload):
        await meta_store.abort_upload("nope")
    bucket = await new_bucket(meta_store)
    upload, parts = await _upload_with_parts(meta_store, bucket, "k")
    await meta_store.abort_upload(upload.upload_id)
    assert await meta_store.get_upload(upload.upload_id) is None
    assert await meta_store.list_parts(upload.upload_id) == []
    assert {p.blob_id for p in parts.values()} <= await garbage(meta_store)
    with pytest.raises(errors.NoSuchUpload):
        await meta_store.abort_upload(upload.upload_id)
    with pytest.raises(errors.NoSuchUpload):
        await meta_store.put_part(part(upload.upload_id, 1))


# garbage and fsck ------------------------------------------------------------------------------------------
async def test_take_and_forget_garbage(meta_store):
    bucket = await new_bucket(meta_store)
    before = time.time()
    versions = [version(bucket, f"k{i}") for i in range(5)]
    for v in versions:
        await meta_store.put_object(v)
        await meta_store.delete_object(bucket, v.key)
    expected = set().union(*(blob_ids(v) for v in versions))
    assert await meta_store.take_garbage(before - 1, 100) == [], "garbage younger than older_than is not due"
    assert set(await meta_store.take_garbage(time.time() + 1, 100)) == expected
    assert len(await meta_store.take_garbage(time.time() + 1, 2)) == 2
    assert set(await meta_store.take_garbage(time.time() + 1, 100)) == expected, "take does not remove"

    forgotten = sorted(expected)[:3]
    await meta_store.forget_garbage(forgotten)
    assert set(await meta_store.take_garbage(time.time() + 1, 100)) == expected - set(forgotten)
    await meta_store.forget_garbage(forgotten)  # forgetting twice is harmless
    await meta_store.forget_garbage([])


async def test_referenced_blobs(meta_store):
    bucket = await new_bucket(meta_store)
    live = version(bucket, "live", blobs=2)
    dead = version(bucket, "dead")
    await meta_store.put_object(live)
    await meta_store.put_object(dead)
    await meta_store.delete_object(bucket, "dead")
    upload, parts = await _upload_with_parts(meta_store, bucket, "up", (1, 2))
    referenced = await meta_store.referenced_blobs()
    assert referenced == blob_ids(live) | blob_ids(dead) | {p.blob_id for p in parts.values()}
    await meta_store.forget_garbage(list(blob_ids(dead)))
    assert not blob_ids(dead) & await meta_store.referenced_blobs()


# concurrency -----------------------------------------------------------------------------------------------
async def test_concurrent_conditional_creates_have_one_winner(meta_store):
    bucket = await new_bucket(meta_store)
    candidates = [version(bucket, "lock") for _ in range(50)]
    results = await asyncio.gather(*(meta_store.put_object(v, WriteCondition(if_none_match=True))
                                     for v in candidates), return_exceptions=True)
    winners = [v for v, r in zip(candidates, results) if r is None]
    losers = [r for r in results if r is not None]
    assert len(winners) == 1
    assert len(losers) == 49 and all(isinstance(r, errors.PreconditionFailed) for r in losers), losers[:3]
    assert (await meta_store.get_object(bucket, "lock")).version_id == winners[0].version_id
    assert await garbage(meta_store) == set()


async def test_one_failing_write_does_not_undo_its_neighbours(meta_store):
    bucket = await new_bucket(meta_store)
    await meta_store.put_object(version(bucket, "taken"))
    ops, expected_ok = [], []
    for i in range(60):
        if i % 10 == 3:
            ops.append(meta_store.put_object(version("no-such-bucket", f"k{i}")))
        elif i % 10 == 7:
            ops.append(meta_store.put_object(version(bucket, "taken"), WriteCondition(if_none_match=True)))
        else:
            ops.append(meta_store.put_object(version(bucket, f"k{i:02d}")))
            expected_ok.append(f"k{i:02d}")
    results = await asyncio.gather(*ops, return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    assert len(failures) == 12
    assert all(isinstance(r, (errors.NoSuchBucket, errors.PreconditionFailed)) for r in failures), failures[:3]
    listed = [e.key for e in await meta_store.list_objects(bucket, "", True, None, 1000)]
    assert listed == sorted(expected_ok + ["taken"])
