"""Two stores on one database, as two nodes of a cluster have (#9): races between them resolve as on one store.

On PostgreSQL each store has its own connection pool and runs its writes on its threads, so the writes below truly
overlap; on SQLite the two stores are two writers of one file (as ``--workers`` processes are)."""

from __future__ import annotations

import asyncio
import time

from atoll import errors
from atoll.core.leases import LEASED, Lease
from atoll.core.models import Job, Limits
from atoll.stores.meta.base import WriteCondition
from tests.contract.test_metastore import blob, new_bucket, version
from tests.contract.test_metastore_quota import tenant_bucket


async def _outcomes(calls) -> tuple[list, list[BaseException]]:
    results = await asyncio.gather(*calls, return_exceptions=True)
    return [r for r in results if not isinstance(r, BaseException)], [r for r in results if isinstance(r, BaseException)]


async def test_exactly_one_if_none_match_create_wins_across_nodes(meta_store_pair):
    a, b = meta_store_pair
    bucket = await new_bucket(a)
    create = WriteCondition(if_none_match=True)
    for round_no in range(10):
        key = f"race-{round_no}"
        contenders = [version(bucket, key) for _ in range(8)]
        won, lost = await _outcomes([(a if i % 2 else b).put_object(v, create) for i, v in enumerate(contenders)])
        assert won == [None], "exactly one create succeeds, replacing nothing"
        assert len(lost) == 7 and all(isinstance(e, errors.PreconditionFailed) for e in lost), lost
        current = await b.get_object(bucket, key)
        assert current.version_id in {v.version_id for v in contenders}
        assert await a.get_object(bucket, key) == current
    assert await a.bucket_usage(bucket) == (30, 10)


async def test_if_match_overwrites_serialise_across_nodes(meta_store_pair):
    a, b = meta_store_pair
    bucket = await new_bucket(a)
    first = version(bucket, "k")
    await a.put_object(first)
    # Every writer names the first version's ETag: one replaces it, the rest find another ETag.
    contenders = [version(bucket, "k") for _ in range(8)]
    won, lost = await _outcomes([(a if i % 2 else b).put_object(v, WriteCondition(if_match=first.etag))
                                 for i, v in enumerate(contenders)])
    assert [w.version_id for w in won] == [first.version_id]
    assert all(isinstance(e, errors.PreconditionFailed) for e in lost) and len(lost) == 7


async def test_drain_claims_from_two_nodes_never_overlap(meta_store_pair):
    a, b = meta_store_pair
    bucket = await new_bucket(a)
    keys = {f"d/{i:03}" for i in range(60)}
    for key in keys:
        await a.put_object(version(bucket, key), journal=True)
    claimed: list[str] = []
    while True:
        batches = await asyncio.gather(*((a if i % 2 else b).take_drain(4, 300.0) for i in range(6)))
        got = [e.key for batch in batches for e in batch]
        if not got:
            break
        claimed += got
    assert len(claimed) == len(set(claimed)), "no entry claimed twice"
    assert set(claimed) == keys


async def test_job_claims_from_two_nodes_never_overlap(meta_store_pair):
    a, b = meta_store_pair
    bucket = await new_bucket(a)
    now = time.time()
    jobs = [Job(job_id=blob(), kind="stage", bucket=bucket, spec={}, priority=i % 3, created=now + i, updated=now)
            for i in range(20)]
    for job in jobs:
        await a.create_job(job)
    claims = await asyncio.gather(*((a if i % 2 else b).claim_job(f"node-{i % 2}:1:1", 300.0) for i in range(30)))
    taken = [j.job_id for j in claims if j is not None]
    assert len(taken) == len(set(taken)) == 20
    assert await a.claim_job("node-x:1:1", 300.0) is None


async def test_compaction_claims_from_two_nodes_never_overlap(meta_store_pair):
    a, b = meta_store_pair
    segments = [f"s{blob()[:20]}" for _ in range(6)]
    for segment in segments:
        await a.register_segment(segment, "node-a:1:1")
        assert await a.seal_segment(segment, 1000)  # no live record: compactable whatever its size
    await asyncio.sleep(0.01)
    claims = await asyncio.gather(*((a if i % 2 else b).claim_compaction(f"c{i}:1:1", 300.0, 0.5, 0.0)
                                    for i in range(12)))
    taken = [s.segment_id for s in claims if s is not None]
    assert len(taken) == len(set(taken)) == len(segments)


async def test_quota_is_exact_under_eight_writers_on_two_nodes(meta_store_pair):
    a, b = meta_store_pair
    bucket = await tenant_bucket(a, "capped", limits=Limits(max_bytes=1000, max_objects=25))
    refused = 0

    async def writer(store, n: int) -> None:
        nonlocal refused
        for i in range(10):
            try:
                await store.put_object(version(bucket, f"w{n}-{i}", size=30))
            except errors.QuotaExceeded:
                refused += 1

    await asyncio.gather(*(writer(a if n % 2 else b, n) for n in range(8)))
    assert await a.bucket_usage(bucket) == (750, 25), "exactly up to the object limit, never past it"
    assert refused == 80 - 25
    assert await b.count_usage() == []


async def test_read_after_write_across_nodes(meta_store_pair):
    a, b = meta_store_pair
    bucket = await new_bucket(a)
    for i in range(30):
        writer, reader = (a, b) if i % 2 else (b, a)
        assert await reader.get_object(bucket, "k") is None  # read first, so that any cache holds the miss
        put = version(bucket, "k")
        await writer.put_object(put)
        assert (await reader.get_object(bucket, "k")).version_id == put.version_id
        await writer.delete_object(bucket, "k")
        assert await reader.get_object(bucket, "k") is None
        lease = Lease(LEASED, f"lease-{i}", 60, time.time() + 60)
        await writer.apply_lease(bucket, "", lambda old: (lease, None))
        assert (await reader.get_lease(bucket, "")).lease_id == lease.lease_id
    assert (await b.get_bucket(bucket)).name == bucket
    await a.delete_bucket(bucket)
    assert await b.get_bucket(bucket) is None
