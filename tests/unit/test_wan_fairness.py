"""Weighted sharing of a cold link's class between tenants (atoll/stores/cold/fairness.py)."""

from __future__ import annotations

import asyncio
import time

from atoll.stores.cold.fairness import FairSlots, FairTokenBucket


def test_freed_slots_go_to_tenants_by_weight():
    async def run():
        weights = {"a": 3.0, "b": 1.0}
        slots = FairSlots(8, weights.get)
        for _ in range(8):
            await slots.acquire("a")  # one tenant alone takes every slot
        waiters = [asyncio.ensure_future(slots.acquire(t)) for t in ["a"] * 8 + ["b"] * 8]
        await asyncio.sleep(0)
        for _ in range(8):
            slots.release("a")
            await asyncio.sleep(0)
        assert slots.held == {"a": 6, "b": 2}
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
        assert slots.in_use == 8
    asyncio.run(run())


def test_token_bucket_grants_bytes_by_weight_and_all_to_one_tenant():
    async def run():
        weights = {"a": 3.0, "b": 1.0}
        bucket = FairTokenBucket(4 << 20, lambda t: weights.get(t, 1.0))
        moved = {"a": 0, "b": 0}

        async def sender(tenant: str, until: float) -> None:
            while time.monotonic() < until:
                await bucket.take(64 << 10, tenant)
                moved[tenant] += 64 << 10

        await bucket.take(4 << 20)  # the burst is spent: from here on the senders queue
        until = time.monotonic() + 1.0
        await asyncio.gather(sender("a", until), sender("a", until), sender("b", until), sender("b", until))
        share = moved["a"] / (moved["a"] + moved["b"])
        assert 0.70 <= share <= 0.80, share
        moved.update(a=0, b=0)
        await sender("b", time.monotonic() + 0.5)
        assert moved["b"] >= 1 << 20  # alone: the whole rate (about 2 MiB in 0.5 s, plus the burst)
    asyncio.run(run())
