"""Eviction: keep the warm tier under its capacity with SIEVE, among clean and unpinned copies only.

SIEVE (Zhang et al., NSDI '24) keeps objects in insertion order with one "visited" bit each. A hand walks from the
oldest towards the newest: a visited object has its bit cleared and stays, an unvisited one is evicted. One
pass of a scan (a dataset read once) leaves objects unvisited, so it cannot flush the objects that are read
again and again; and a hit costs no reordering, only a bit, which readers set in memory and flush in batches.

Insertion order is the row's ``warm_seq``; the hand is a position in it. Dirty (not yet drained) and pinned
versions are skipped, never evicted; evicting makes a version ``absent`` (still listed, read through again on
the next GET) and hands its blob to the garbage collector.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from atoll import errors, metrics

if TYPE_CHECKING:
    from atoll.core.tiering.tier import Tiering

log = logging.getLogger("atoll.evict")

_BATCH = 256
_INTERVAL = 1.0
FRUITLESS_COOLDOWN = 2.0


class Evictor:
    def __init__(self, tier: "Tiering") -> None:
        self.tier = tier
        self.hand = 0
        self._lock = asyncio.Lock()
        self.evicted = 0
        self._fruitless_at = -FRUITLESS_COOLDOWN

    async def run(self) -> None:
        while True:
            try:
                await self.tier.flush_visited()
                capacity = self.tier.capacity()
                used = await self.tier.meta.resident_bytes()
                if used > capacity * self.tier.settings.high_watermark:
                    await self.evict_until(int(capacity * self.tier.settings.low_watermark))
            except asyncio.CancelledError:
                raise
            except errors.Unavailable as exc:  # the metadata store is out of space (or busy): next round
                log.warning("eviction round postponed: %s", exc.message)
            except Exception:  # noqa: BLE001
                log.exception("eviction round failed")
            await asyncio.sleep(_INTERVAL)

    async def make_room(self, size: int) -> None:
        """Evict now so that ``size`` more bytes fit (a write or a fill waiting on space).

        When a walk just found nothing to evict (a tier full of dirty or pinned data), writes refused meanwhile
        do not walk the whole index again: they wait for the cooldown, which the background round also ends."""
        if time.monotonic() - self._fruitless_at < FRUITLESS_COOLDOWN:
            return
        await self.tier.flush_visited()
        target = min(self.tier.capacity() - size, int(self.tier.capacity() * self.tier.settings.low_watermark))
        if not await self.evict_until(max(target, 0)) and await self.tier.meta.resident_bytes() > target:
            self._fruitless_at = time.monotonic()

    async def evict_until(self, target: int) -> int:
        async with self._lock:
            meta = self.tier.meta
            used = await meta.resident_bytes()
            freed_total = 0
            wraps = 0
            while used > target and wraps < 3:
                batch = await meta.eviction_candidates(self.hand, _BATCH)
                if not batch:
                    self.hand = 0
                    wraps += 1
                    continue
                keep: list[tuple[str, str, str]] = []
                for bucket, key, version_id, seq, visited, size, evictable in batch:
                    self.hand = seq
                    if not evictable:
                        continue
                    if visited:
                        keep.append((bucket, key, version_id))
                        continue
                    freed = await meta.evict(bucket, key, version_id)
                    if freed:
                        used -= freed
                        freed_total += freed
                        self.evicted += 1
                        metrics.EVICTIONS.inc()
                        metrics.EVICTED_BYTES.inc(freed)
                    if used <= target:
                        break
                await meta.set_visited(keep, False)
            if freed_total:
                log.info("evicted %d bytes from the warm tier", freed_total)
            return freed_total
