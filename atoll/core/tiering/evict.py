"""Eviction: keep the warm tier under its capacity with SIEVE, among clean and unpinned copies only.

SIEVE (Zhang et al., NSDI '24) keeps objects in insertion order with one "visited" bit each. A hand walks from the
oldest towards the newest: a visited object has its bit cleared and stays, an unvisited one is evicted. One
pass of a scan (a dataset read once) leaves objects unvisited, so it cannot flush the objects that are read
again and again; and a hit costs no reordering, only a bit, which readers set in memory and flush in batches.

Insertion order is the row's ``warm_seq``; the hand is a position in it. Dirty (not yet drained) and pinned
versions are skipped, never evicted; evicting makes a version ``absent`` (still listed, read through again on
the next GET) and hands its blob to the garbage collector.

Tenants (#7): a tenant's ``warm_reserved`` bytes are never evicted to make room for another tenant's data (the
hand passes over a version whose eviction would take its tenant below its reservation, unless the room is for that
tenant itself), and a tenant above its ``warm_cap`` is evicted first, down to its cap, by a walk over its own
versions only (with a hand of its own, so other tenants' SIEVE bits are left alone); its fills make room from its
own data (``make_room(size, bucket)``). Warm bytes per tenant come from the metadata store's exact counters.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from atoll import errors, metrics
from atoll.core import cluster

if TYPE_CHECKING:
    from atoll.core.tiering.tier import Tiering

log = logging.getLogger("atoll.evict")

_BATCH = 256
_INTERVAL = 1.0
FRUITLESS_COOLDOWN = 2.0


@dataclass(slots=True)
class _Shares:
    """One walk's view of the tenants: warm bytes (kept up to date as the walk evicts), reservations, caps."""

    warm: dict[str, int]
    reserved: dict[str, int] = field(default_factory=dict)
    caps: dict[str, int] = field(default_factory=dict)


class Evictor:
    def __init__(self, tier: "Tiering") -> None:
        self.tier = tier
        self.hand = 0
        self._hands: dict[str, int] = {}  # a capped tenant's own walk
        self._lock = asyncio.Lock()
        self.evicted = 0
        self._fruitless_at = -FRUITLESS_COOLDOWN
        self._tenant_of: dict[str, str] = {}  # bucket -> tenant, for one walk

    async def _shares(self) -> _Shares:
        shares = _Shares(await self.tier.meta.warm_bytes_by_tenant())
        for tenant in await self.tier.meta.list_tenants():
            if tenant.warm_reserved > 0:
                shares.reserved[tenant.name] = tenant.warm_reserved
            if tenant.warm_cap > 0:
                shares.caps[tenant.name] = tenant.warm_cap
        return shares

    async def _tenant(self, bucket: str) -> str:
        tenant = self._tenant_of.get(bucket)
        if tenant is None:
            row = await self.tier.meta.get_bucket(bucket)
            tenant = self._tenant_of[bucket] = row.tenant if row is not None else ""
        return tenant

    async def enforce_caps(self, shares: _Shares | None = None) -> int:
        """Evict tenants above their warm caps down to them; the bytes freed."""
        shares = shares or await self._shares()
        freed = 0
        for tenant, cap in shares.caps.items():
            if shares.warm.get(tenant, 0) > cap:
                freed += await self.evict_until(0, only=tenant, only_target=cap, shares=shares)
        return freed

    async def run(self) -> None:
        while True:
            try:
                await self.tier.flush_visited()
                if not await cluster.hold_singleton("evict"):  # another node runs the rounds of the cluster
                    await asyncio.sleep(_INTERVAL)
                    continue
                shares = await self._shares()
                if shares.caps:
                    await self.enforce_caps(shares)
                capacity = self.tier.capacity()
                used = await self.tier.meta.resident_bytes()
                if used > capacity * self.tier.settings.high_watermark:
                    await self.evict_until(int(capacity * self.tier.settings.low_watermark), shares=shares)
            except asyncio.CancelledError:
                raise
            except errors.Unavailable as exc:  # the metadata store is out of space (or busy): next round
                log.warning("eviction round postponed: %s", exc.message)
            except Exception:  # noqa: BLE001
                log.exception("eviction round failed")
            await asyncio.sleep(_INTERVAL)

    async def make_room(self, size: int, bucket: str | None = None) -> None:
        """Evict now so that ``size`` more bytes fit (a write or a fill waiting on space); for a fill of
        ``bucket``, within its tenant's warm cap too, and at the expense of other tenants' reservations never.

        When a walk just found nothing to evict (a tier full of dirty or pinned data), writes refused meanwhile
        do not walk the whole index again: they wait for the cooldown, which the background round also ends."""
        if time.monotonic() - self._fruitless_at < FRUITLESS_COOLDOWN:
            return
        await self.tier.flush_visited()
        shares = await self._shares()
        tenant = await self._tenant(bucket) if bucket is not None else None
        cap = shares.caps.get(tenant or "", 0)
        if cap and shares.warm.get(tenant or "", 0) + size > cap:
            await self.evict_until(0, only=tenant, only_target=max(cap - size, 0), shares=shares)
        target = min(self.tier.capacity() - size, int(self.tier.capacity() * self.tier.settings.low_watermark))
        if await self.tier.meta.resident_bytes() <= target:
            return
        if not await self.evict_until(max(target, 0), room_for=tenant, shares=shares) and \
                await self.tier.meta.resident_bytes() > target:
            self._fruitless_at = time.monotonic()

    async def evict_until(self, target: int, *, only: str | None = None, only_target: int = 0,
                          room_for: str | None = None, shares: _Shares | None = None) -> int:
        """Evict until the tier holds at most ``target`` bytes or, with ``only``, until that tenant holds at most
        ``only_target`` (evicting its versions alone). Versions whose eviction would take their tenant below its
        reservation stay, unless the room is for that tenant (``room_for``) or the walk is its own."""
        async with self._lock:
            meta = self.tier.meta
            shares = shares or await self._shares()
            self._tenant_of.clear()  # a bucket deleted and created again may belong to another tenant now
            used = await meta.resident_bytes()

            def done() -> bool:
                return shares.warm.get(only, 0) <= only_target if only is not None else used <= target

            hand = self._hands.get(only, 0) if only is not None else self.hand
            freed_total = 0
            wraps = 0
            while not done() and wraps < 3:
                batch = await meta.eviction_candidates(hand, _BATCH)
                if not batch:
                    hand = 0
                    wraps += 1
                    continue
                keep: list[tuple[str, str, str]] = []
                for bucket, key, version_id, seq, visited, size, evictable in batch:
                    hand = seq
                    if not evictable:
                        continue
                    tenant = await self._tenant(bucket)
                    if only is not None and tenant != only:
                        continue  # another tenant's version: not this walk's to judge
                    if only is None and tenant != room_for and \
                            shares.warm.get(tenant, 0) - size < shares.reserved.get(tenant, 0):
                        continue  # within its tenant's reservation
                    if visited:
                        keep.append((bucket, key, version_id))
                        continue
                    freed = await meta.evict(bucket, key, version_id)
                    if freed:
                        used -= freed
                        shares.warm[tenant] = shares.warm.get(tenant, 0) - freed
                        freed_total += freed
                        self.evicted += 1
                        metrics.EVICTIONS.inc()
                        metrics.EVICTED_BYTES.inc(freed)
                    if done():
                        break
                await meta.set_visited(keep, False)
            if only is not None:
                self._hands[only] = hand
            else:
                self.hand = hand
            if freed_total:
                log.info("evicted %d bytes from the warm tier%s", freed_total,
                         " (a tenant above its warm cap)" if only is not None else "")
            return freed_total
