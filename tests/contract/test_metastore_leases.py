"""MetaStore lease contract: apply_lease is one atomic read-modify-write; leases die with their object or bucket."""

from __future__ import annotations

import asyncio
import time

import pytest

from atoll import errors
from atoll.core.leases import BROKEN, INFINITE, LEASED, Lease
from atoll.core.models import Bucket
from atoll.stores.meta.base import WriteCondition

from tests.contract.test_metastore import OWNER, version
from tests.contract.test_metastore_tiering import cold_only

HELD = Lease(LEASED, "11111111-1111-1111-1111-111111111111", INFINITE)


async def setup(store, *keys: str) -> None:
    await store.create_bucket(Bucket("lb", OWNER, time.time(), "us-east-1"))
    for key in keys:
        await store.put_object(version("lb", key))


def put(lease):
    return lambda current: (lease, current)


async def test_apply_lease_stores_replaces_and_removes(meta_store):
    await setup(meta_store, "k")
    assert await meta_store.apply_lease("lb", "k", put(HELD)) is None
    assert await meta_store.get_lease("lb", "k") == HELD
    broken = Lease(BROKEN, HELD.lease_id, INFINITE, 0.0, 12.5)
    assert await meta_store.apply_lease("lb", "k", put(broken)) == HELD
    assert await meta_store.get_lease("lb", "k") == broken
    await meta_store.apply_lease("lb", "k", put(None))
    assert await meta_store.get_lease("lb", "k") is None


async def test_a_failing_change_leaves_the_lease(meta_store):
    await setup(meta_store, "k")
    await meta_store.apply_lease("lb", "k", put(HELD))

    def refuse(current):
        raise errors.LeaseAlreadyPresent()
    with pytest.raises(errors.LeaseAlreadyPresent):
        await meta_store.apply_lease("lb", "k", refuse)
    assert await meta_store.get_lease("lb", "k") == HELD


async def test_apply_lease_needs_the_bucket_and_the_object(meta_store):
    with pytest.raises(errors.NoSuchBucket):
        await meta_store.apply_lease("lb", "", put(HELD))
    await setup(meta_store)
    with pytest.raises(errors.NoSuchKey):
        await meta_store.apply_lease("lb", "missing", put(HELD))
    await meta_store.apply_lease("lb", "", put(HELD))  # the bucket's own lease
    assert await meta_store.get_lease("lb", "") == HELD


async def test_concurrent_acquires_are_serialised(meta_store):
    await setup(meta_store, "k")

    def acquire_if_free(lease_id):
        def change(current):
            if current is not None:
                raise errors.LeaseAlreadyPresent()
            return Lease(LEASED, lease_id, INFINITE), lease_id
        return change
    ids = [f"{n:08d}-0000-0000-0000-000000000000" for n in range(8)]
    results = await asyncio.gather(*(meta_store.apply_lease("lb", "k", acquire_if_free(i)) for i in ids),
                                   return_exceptions=True)
    winners = [r for r in results if isinstance(r, str)]
    assert len(winners) == 1 and all(isinstance(r, errors.LeaseAlreadyPresent) for r in results if r not in winners)
    assert (await meta_store.get_lease("lb", "k")).lease_id == winners[0]


async def test_overwrite_keeps_the_lease_delete_drops_it(meta_store):
    await setup(meta_store, "k", "other")
    await meta_store.apply_lease("lb", "k", put(HELD))
    await meta_store.put_object(version("lb", "k"))
    assert await meta_store.get_lease("lb", "k") == HELD
    await meta_store.delete_object("lb", "k")
    assert await meta_store.get_lease("lb", "k") is None
    await meta_store.put_object(version("lb", "k"))
    assert await meta_store.get_lease("lb", "k") is None  # a new blob of the same name is not leased
    await meta_store.apply_lease("lb", "other", put(HELD))
    await meta_store.delete_objects("lb", ["other"])
    assert await meta_store.get_lease("lb", "other") is None


async def test_list_leases_covers_a_key_range_without_the_bucket_lease(meta_store):
    await setup(meta_store, "a", "b", "c", "d")
    for key in ("", "b", "d"):
        await meta_store.apply_lease("lb", key, put(HELD))
    assert await meta_store.list_leases("lb", "a", "c") == {"b": HELD}
    assert sorted(await meta_store.list_leases("lb", "", "\U0010ffff")) == ["b", "d"]


async def test_deleting_the_bucket_drops_its_leases(meta_store):
    await setup(meta_store)
    await meta_store.apply_lease("lb", "", put(HELD))
    await meta_store.delete_bucket("lb")
    await setup(meta_store)
    assert await meta_store.get_lease("lb", "") is None


async def test_a_lease_guarded_write_is_checked_in_its_transaction(meta_store):
    await setup(meta_store, "k")
    await meta_store.apply_lease("lb", "k", put(HELD))
    with pytest.raises(errors.LeaseIdMissing):
        await meta_store.put_object(version("lb", "k"), WriteCondition(guard_lease=True))
    with pytest.raises(errors.LeaseIdMismatchWithBlobOperation):
        await meta_store.put_object(version("lb", "k"), WriteCondition(guard_lease=True,
                                                                       lease_id="22222222-2222-2222-2222-222222222222"))
    written = version("lb", "k")
    await meta_store.put_object(written, WriteCondition(guard_lease=True, lease_id=HELD.lease_id))
    assert (await meta_store.get_object("lb", "k")).version_id == written.version_id
    await meta_store.put_object(version("lb", "k"))  # unguarded writes (tiering, recovery) are not checked
    with pytest.raises(errors.LeaseNotPresentWithBlobOperation):
        await meta_store.put_object(version("lb", "free"), WriteCondition(guard_lease=True, lease_id=HELD.lease_id))
    await meta_store.put_object(version("lb", "free"), WriteCondition(guard_lease=True))


async def test_a_stale_lease_does_not_outlive_its_object(meta_store):
    """Rows can go without a delete (unlinking a bucket drops its cold-only rows): a guarded write of a new object
    of that name ignores and removes a lease left behind."""
    await setup(meta_store)
    await meta_store.record_cold_version(cold_only("lb", "k"), None)
    await meta_store.apply_lease("lb", "k", put(HELD))
    await meta_store.delete_link("lb")  # drops the cold-only row
    assert await meta_store.get_object("lb", "k") is None
    await meta_store.put_object(version("lb", "k"), WriteCondition(guard_lease=True))
    assert await meta_store.get_lease("lb", "k") is None
