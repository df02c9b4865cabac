"""What the dashboard's charts plot: a sample of numbers every ``dashboard_sample_interval`` seconds, the last
``dashboard_history`` seconds of them kept in memory (``GET /api/v1/dashboard/history?since=``).

The sampler runs in the process that serves the admin port, as an asyncio task started and stopped with it. It
reads Python objects, never ``/metrics`` text: cold-endpoint views (every worker's, merged: atoll.admin.status),
the metadata store (warm usage, drain backlog), the QoS governor's node-wide tenant counters, and the workers'
per-bucket read counters (prometheus_client's files, read off the event loop). Counters become rates from the
difference to the previous sample (0 when a counter went backwards: a worker restarted).

A sample (numbers only; every map is bounded by the links, endpoints and tenants that exist):

    {"time": 1795640484.4,
     "warm": {"resident": bytes, "pinned": bytes, "dirty": bytes},
     "traffic": {"demand_in": B/s, "demand_out": B/s, "stage_in": ..., "drain_out": ...},   # all endpoints
     "cold": {endpoint: {"state": 0|1|2, "latency": s, "error_rate": 0..1, "demand_in": B/s, ...}},
     "buckets": {bucket: {"backlog_objects": n, "backlog_bytes": bytes, "recovery_point": s,
                          "hit_ratio": 0..1 | null (no reads in the interval)}},
     "tenants": {tenant: {"requests": req/s, "throttled": req/s, "bytes_in": B/s, "bytes_out": B/s}}}
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Callable

from atoll.admin import status
from atoll.admin.bucketcounts import bucket_counts, collect_families
from atoll.admin.endpoints import CLASSES
from atoll.core.ingest import run_io

if TYPE_CHECKING:
    from atoll.core.tiering.tier import Tiering

log = logging.getLogger("atoll.admin")

MIN_SLEEP = 0.1  # between samples even when sampling took longer than the interval


class History:
    """The newest samples, at most ``capacity`` of them, oldest first."""

    def __init__(self, interval: float, keep_seconds: float) -> None:
        self.interval = interval
        self.capacity = max(2, math.ceil(keep_seconds / interval) + 1)
        self._samples: deque[dict[str, Any]] = deque(maxlen=self.capacity)

    def add(self, sample: dict[str, Any]) -> None:
        self._samples.append(sample)

    def since(self, after: float) -> list[dict[str, Any]]:
        """Samples taken after ``after`` (epoch seconds), oldest first."""
        newer: list[dict[str, Any]] = []
        for sample in reversed(self._samples):
            if sample["time"] <= after:
                break
            newer.append(sample)
        newer.reverse()
        return newer

    def __len__(self) -> int:
        return len(self._samples)


def _rate(now: float, before: float | None, seconds: float) -> float:
    if before is None or seconds <= 0:
        return 0.0
    return round(max(now - before, 0.0) / seconds, 3)


class Sampler:
    """Takes a sample every ``history.interval`` seconds into ``history``."""

    def __init__(self, tier: "Tiering", history: History, *, started: float, peers_dir: str | None = None,
                 governor: Callable[[], Any] = lambda: None) -> None:
        self.tier = tier
        self.history = history
        self.peers_dir = peers_dir
        self._governor = governor
        # Counters start at 0 with the server: its start is the first "previous sample".
        self._previous: tuple[float, dict[str, float]] = (started, {})
        self._task: asyncio.Task | None = None
        self._failing = False

    def start(self) -> "Sampler":
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - stopping anyway
                pass
            self._task = None

    async def _run(self) -> None:
        while True:
            began = time.monotonic()
            try:
                self.history.add(await self.sample())
                self._failing = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a busy store or a vanished file: the next sample retries
                if not self._failing:
                    log.warning("dashboard sample failed: %s", type(exc).__name__)
                self._failing = True
            await asyncio.sleep(max(self.history.interval - (time.monotonic() - began), MIN_SLEEP))

    async def sample(self) -> dict[str, Any]:
        """One sample now (also advances the rates' baseline)."""
        tier, meta = self.tier, self.tier.meta
        governor = self._governor()
        # On the event loop: it also moves this process's latest counts into the node-wide table.
        tenants = governor.snapshot()["tenants"] if governor is not None else {}
        counts = bucket_counts(await run_io(collect_families))
        health = await status.cold_health(tier, self.peers_dir)
        now = time.time()
        previous_time, previous = self._previous
        seconds = now - previous_time
        counters: dict[str, float] = {}

        def rate(key: str, value: float) -> float:
            counters[key] = value
            return _rate(value, previous.get(key, 0.0), seconds)

        traffic = {f"{kind}_{way}": 0.0 for kind in CLASSES for way in ("in", "out")}
        cold: dict[str, dict[str, float]] = {}
        for view in health.endpoints:
            key = view["endpoint"]
            entry = {"state": status.STATE_CODES.get(view["state"], 2), "latency": view["latency_ewma"],
                     "error_rate": view["last_minute"]["error_rate"]}
            for kind in CLASSES:
                stats = view["traffic"].get(kind, {})
                for way, field in (("in", "bytes_in"), ("out", "bytes_out")):
                    value = rate(f"cold\0{key}\0{kind}\0{way}", float(stats.get(field, 0)))
                    entry[f"{kind}_{way}"] = value
                    traffic[f"{kind}_{way}"] = round(traffic[f"{kind}_{way}"] + value, 3)
            cold[key] = entry
        buckets: dict[str, dict[str, Any]] = {}
        dirty = 0
        for link in health.links:
            objects, size, oldest = await meta.drain_backlog(link.bucket)
            backlog = status.backlog_view(objects, size, oldest, now)
            dirty += size
            mine = counts.get(link.bucket) or {"hits": 0, "misses": 0}
            hits = mine["hits"] - previous.get(f"hits\0{link.bucket}", 0.0)
            reads = hits + mine["misses"] - previous.get(f"misses\0{link.bucket}", 0.0)
            counters[f"hits\0{link.bucket}"] = mine["hits"]
            counters[f"misses\0{link.bucket}"] = mine["misses"]
            buckets[link.bucket] = {"backlog_objects": objects, "backlog_bytes": size,
                                    "recovery_point": backlog["oldest_age_seconds"],
                                    "hit_ratio": round(hits / reads, 4) if reads > 0 and hits >= 0 else None}
        people = {name: {field: rate(f"tenant\0{name}\0{field}", float(numbers[field]))
                         for field in ("requests", "throttled", "bytes_in", "bytes_out")}
                  for name, numbers in sorted(tenants.items())}
        self._previous = (now, counters)
        return {"time": round(now, 3),
                "warm": {"resident": await meta.resident_bytes(), "pinned": await meta.pinned_bytes(),
                         "dirty": dirty},
                "traffic": traffic, "cold": cold, "buckets": buckets, "tenants": people}
