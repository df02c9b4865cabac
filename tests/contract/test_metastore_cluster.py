"""Contract of the cluster rows (#9, atoll/stores/meta/sql_cluster.py) on SQLite and PostgreSQL: node heartbeats,
cluster leases taken by one owner at a time and taken over after expiry, and owners of drain claims. Two stores on
one database stand for two nodes."""

from __future__ import annotations

import asyncio
import time

from atoll.core.models import Bucket, Extent, ObjectVersion
from atoll.stores.meta.sql_cluster import NodeRecord


async def test_heartbeats_upsert_and_old_nodes_are_forgotten(meta_store):
    now = time.time()
    await meta_store.heartbeat_node(NodeRecord("a", "127.0.0.1:1", now - 5, now - 5, {"pid": 1}))
    await meta_store.heartbeat_node(NodeRecord("b", "127.0.0.1:2", now, now, {"stopped": True}))
    await meta_store.heartbeat_node(NodeRecord("a", "127.0.0.1:3", now - 5, now, {"pid": 2}))
    nodes = await meta_store.list_nodes()
    assert [(n.node, n.address, n.heartbeat, n.info) for n in nodes] == [
        ("a", "127.0.0.1:3", now, {"pid": 2}), ("b", "127.0.0.1:2", now, {"stopped": True})]
    assert not await meta_store.forget_node("a", now - 1), "a fresh heartbeat keeps the row"
    assert await meta_store.forget_node("b", now + 1)
    assert [n.node for n in await meta_store.list_nodes()] == ["a"]


async def test_a_lease_has_one_owner_until_released_or_expired(meta_store_pair):
    one, two = meta_store_pair
    assert await one.claim_cluster_lease("evict", "n1:1:1", 30.0)
    assert not await two.claim_cluster_lease("evict", "n2:2:2", 30.0), "held by another owner"
    assert await one.claim_cluster_lease("evict", "n1:1:1", 30.0), "renewed by its owner"
    lease = await two.get_cluster_lease("evict")
    assert lease.owner == "n1:1:1" and lease.lease_until > time.time() + 29
    assert not await two.release_cluster_lease("evict", "n2:2:2"), "only its owner releases it"
    assert await one.release_cluster_lease("evict", "n1:1:1")
    assert await two.claim_cluster_lease("evict", "n2:2:2", 0.2), "free again"
    assert not await one.claim_cluster_lease("evict", "n1:1:1", 30.0)
    await asyncio.sleep(0.3)
    assert await one.claim_cluster_lease("evict", "n1:1:1", 30.0), "taken over once it lapsed"
    assert [(le.name, le.owner) for le in await two.list_cluster_leases()] == [("evict", "n1:1:1")]
    assert await two.release_cluster_lease("evict", None), "None: whoever holds it"
    assert await one.get_cluster_lease("evict") is None


async def test_concurrent_claims_grant_a_lease_once(meta_store_pair):
    one, two = meta_store_pair
    for round_ in range(20):
        name = f"fill:b:{round_}"
        won = await asyncio.gather(*(store.claim_cluster_lease(name, f"n{i}:{i}:{i}", 30.0)
                                     for i, store in enumerate((one, two, one, two))))
        assert sum(won) == 1, won


async def test_prune_removes_lapsed_leases_only(meta_store):
    await meta_store.claim_cluster_lease("old", "n1:1:1", -120.0)
    await meta_store.claim_cluster_lease("new", "n1:1:1", 30.0)
    assert await meta_store.prune_cluster_leases(time.time() - 60.0) == 1
    assert [le.name for le in await meta_store.list_cluster_leases()] == ["new"]


async def test_drain_claims_of_a_dead_owner_are_voided(meta_store_pair):
    one, two = meta_store_pair
    now = time.time()
    await one.create_bucket(Bucket(name="claims", owner_id="owner", created=now))
    for key in ("a", "b", "c"):
        await one.put_object(ObjectVersion(bucket="claims", key=key, version_id=f"v-{key}", size=1, etag="e" * 32,
                                           last_modified=now, extents=[Extent(f"blob-{key}", 0, 1)],
                                           owner_id="owner", warm_seq=1), journal=True)
    taken = await one.take_drain(2, 300.0)
    assert len(taken) == 2
    await one.note_drain_claims(taken, "dead:1:1")
    assert await two.drain_claim_owners() == ["dead:1:1"]
    assert [e.key for e in await two.take_drain(10, 300.0)] == ["c"], "claimed entries are not due"
    assert await two.release_drain_claims("dead:1:1") == 2
    assert await two.drain_claim_owners() == []
    again = await two.take_drain(10, 300.0)
    assert sorted(e.key for e in again) == sorted(e.key for e in taken), "the dead owner's entries are due again"
