"""The copy-state part of the metadata-store contract (Azure Copy Blob): one row per destination key, replaced by
the next copy; updates apply only to the key's current copy while it is pending, so a copy that was aborted, or
replaced by a newer one, can neither report progress nor claim success afterwards."""

from __future__ import annotations

import time

from atoll.core.models import CopyState


def pending(bucket: str = "c", key: str = "k", copy_id: str = "id-1") -> CopyState:
    return CopyState(bucket=bucket, key=key, copy_id=copy_id, source="http://src/x", status="pending",
                     started=time.time(), heartbeat=time.time())


async def test_put_get_and_replace(meta_store):
    assert await meta_store.get_copy("c", "k") is None
    first = pending()
    await meta_store.put_copy(first)
    assert await meta_store.get_copy("c", "k") == first
    assert await meta_store.get_copy("c", "other") is None
    second = pending(copy_id="id-2")
    await meta_store.put_copy(second)
    assert (await meta_store.get_copy("c", "k")).copy_id == "id-2"


async def test_updates_apply_only_to_the_pending_current_copy(meta_store):
    await meta_store.put_copy(pending())
    assert await meta_store.update_copy("c", "k", "id-1", copied=10, total=30, heartbeat=5.0)
    state = await meta_store.get_copy("c", "k")
    assert (state.copied, state.total, state.heartbeat, state.status) == (10, 30, 5.0, "pending")
    assert not await meta_store.update_copy("c", "k", "other-id", copied=20)
    assert await meta_store.update_copy("c", "k", "id-1")  # no fields: only asks whether it is still pending
    assert await meta_store.update_copy("c", "k", "id-1", status="aborted", completed=7.0, description="by user")
    assert not await meta_store.update_copy("c", "k", "id-1")
    # an aborted copy cannot finish afterwards
    assert not await meta_store.update_copy("c", "k", "id-1", status="success", version_id="v")
    state = await meta_store.get_copy("c", "k")
    assert (state.status, state.completed, state.description, state.version_id, state.copied) == \
        ("aborted", 7.0, "by user", "", 10)


async def test_a_replaced_copy_cannot_finish(meta_store):
    await meta_store.put_copy(pending(copy_id="old"))
    await meta_store.put_copy(pending(copy_id="new"))
    assert not await meta_store.update_copy("c", "k", "old", status="success", version_id="v-old")
    assert await meta_store.update_copy("c", "k", "new", status="success", version_id="v-new", copied=3, total=3)
    state = await meta_store.get_copy("c", "k")
    assert (state.copy_id, state.status, state.version_id) == ("new", "success", "v-new")


async def test_fail_pending_copies_at_start_up(meta_store):
    await meta_store.put_copy(pending(key="running"))
    done = pending(key="done")
    await meta_store.put_copy(done)
    assert await meta_store.update_copy("c", "done", "id-1", status="success")
    assert await meta_store.fail_pending_copies("interrupted", 9.0) == 1
    failed = await meta_store.get_copy("c", "running")
    assert (failed.status, failed.description, failed.completed) == ("failed", "interrupted", 9.0)
    assert (await meta_store.get_copy("c", "done")).status == "success"
