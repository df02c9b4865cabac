"""What each tenant and bucket uses: stored bytes and objects, warm bytes, request and byte rates, throttled
requests and its share of the WAN (``GET /api/v1/usage``, ``atoll usage``).

Stored bytes and objects come from the metadata store's exact counters (``tenant_usage``, ``bucket_usage``) and
warm bytes from ``warm_bytes_by_tenant``. Rates come from the node-wide Prometheus counters every worker keeps
(``atoll_tenant_requests_total``, ``atoll_tenant_throttled_requests_total``, ``atoll_tenant_bytes_total``,
``atoll_cold_tenant_bytes_total``; summed over the workers' files like ``/metrics``), per bucket from the QoS
governor's node-wide counters (``Governor.snapshot``): ``RateWindow`` samples them every few seconds once asked, and a rate is the counters' growth since the newest sample at least
``WINDOW`` seconds old (since the server started, before it has been up that long; counters start at 0 with the
server). A counter nobody has incremented yet reads as 0.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any, Callable

from atoll.core.ingest import run_io
from atoll.core.models import Limits, Tenant

WINDOW = 30.0  # seconds over which rates are measured
SAMPLE_PERIOD = 5.0

# counter family -> (field, label naming the direction or traffic class, or None)
_FAMILIES = {"atoll_tenant_requests": ("requests", None), "atoll_tenant_throttled_requests": ("throttled", None),
             "atoll_tenant_bytes": ("bytes", "direction"), "atoll_cold_tenant_bytes": ("wan", "traffic")}

Counters = dict[tuple[str, str, str], float]  # (field, tenant, direction or traffic class or "") -> count
_BUCKET_FIELDS = ("requests", "throttled", "bytes_in", "bytes_out")


def quota_view(limits: Limits) -> dict[str, int]:
    return {"max_bytes": limits.max_bytes, "max_objects": limits.max_objects}


def qos_view(limits: Limits) -> dict[str, float]:
    return {"requests_per_second": limits.requests_per_second, "request_burst": limits.request_burst,
            "bytes_per_second": limits.bytes_per_second, "bytes_burst": limits.bytes_burst}


def read_counters() -> Counters:
    """The tenant counters summed over every worker (reads the workers' files: call it off the event loop)."""
    from atoll.admin.bucketcounts import collect_families  # imports prometheus_client; see atoll.admin.multiproc

    counters: Counters = {}
    for family in collect_families():
        found = _FAMILIES.get(family.name)
        if found is None:
            continue
        field, label = found
        for sample in family.samples:
            tenant = sample.labels.get("tenant")
            if sample.name != family.name + "_total" or tenant is None:
                continue
            key = (field, tenant, sample.labels.get(label, "") if label else "")
            counters[key] = counters.get(key, 0.0) + sample.value
    return counters


class RateWindow:
    """Samples of the tenant counters over the last ``WINDOW`` seconds, taken every ``SAMPLE_PERIOD`` seconds
    from the first request on (the admin API is idle most of the time; sampling starts when someone looks)."""

    def __init__(self, started: float, governor: Callable[[], Any] = lambda: None) -> None:
        # The server's start is a sample of zeros: counters start at 0 with it.
        self._samples: deque[tuple[float, Counters]] = deque([(time.monotonic() - (time.time() - started), {})])
        self._sampler: asyncio.Task | None = None
        self._governor = governor  # the serving process's atoll.core.qos.Governor, if it has one

    async def _sample(self) -> None:
        governor = self._governor()
        # On the event loop, and first: it also moves this process's latest counts into the Prometheus counters.
        buckets = governor.snapshot()["buckets"] if governor is not None else {}
        counters = await run_io(read_counters)
        for bucket, counts in buckets.items():
            for field in _BUCKET_FIELDS:
                counters[("bucket", bucket, field)] = float(counts[field])
        now = time.monotonic()
        self._samples.append((now, counters))
        while len(self._samples) > 2 and self._samples[1][0] <= now - WINDOW:
            self._samples.popleft()

    async def _sample_forever(self) -> None:
        while True:
            await asyncio.sleep(SAMPLE_PERIOD)
            try:
                await self._sample()
            except OSError:
                pass  # a worker's file vanished mid-read; the next sample reads again

    async def current(self) -> tuple[Counters, Counters, float]:
        """(totals since start, growth per second over the window, the window's length in seconds)."""
        if self._sampler is None or self._sampler.done():
            self._sampler = asyncio.get_running_loop().create_task(self._sample_forever())
        await self._sample()
        (then, old), (now, latest) = self._samples[0], self._samples[-1]
        seconds = max(now - then, 1e-3)
        rates = {key: max(value - old.get(key, 0.0), 0.0) / seconds for key, value in latest.items()}
        return latest, rates, round(seconds, 3)


def _tenant_rates(name: str, totals: Counters, rates: Counters) -> dict[str, Any]:
    def total(field: str, detail: str = "") -> int:
        return int(totals.get((field, name, detail), 0))

    def rate(field: str, detail: str = "") -> float:
        return round(rates.get((field, name, detail), 0.0), 3)

    return {"requests": total("requests"), "throttled": total("throttled"), "bytes_in": total("bytes", "in"),
            "bytes_out": total("bytes", "out"),
            "rates": {"requests_per_second": rate("requests"), "throttled_per_second": rate("throttled"),
                      "bytes_in_per_second": rate("bytes", "in"), "bytes_out_per_second": rate("bytes", "out")}}


def _bucket_rates(name: str, totals: Counters, rates: Counters) -> dict[str, Any]:
    def rate(field: str) -> float:
        return round(rates.get(("bucket", name, field), 0.0), 3)

    return {**{field: int(totals.get(("bucket", name, field), 0)) for field in _BUCKET_FIELDS},
            "rates": {"requests_per_second": rate("requests"), "throttled_per_second": rate("throttled"),
                      "bytes_in_per_second": rate("bytes_in"), "bytes_out_per_second": rate("bytes_out")}}


def wan_shares(totals: Counters, rates: Counters) -> dict[str, dict[str, Any]]:
    """tenant -> its cold-link traffic: bytes since start, bytes per second over the window, and its share of all
    tenants' bytes over the window (null while nobody moved any), overall and per traffic class."""
    per_class: dict[str, dict[str, float]] = {}  # traffic -> tenant -> bytes/s
    for (field, tenant, traffic), value in rates.items():
        if field == "wan":
            per_class.setdefault(traffic, {})[tenant] = value
    moved: dict[str, int] = {}
    for (field, tenant, _), value in totals.items():
        if field == "wan":
            moved[tenant] = moved.get(tenant, 0) + int(value)
    everyone = sum(sum(by_tenant.values()) for by_tenant in per_class.values())
    views: dict[str, dict[str, Any]] = {}
    for tenant in moved:
        mine = sum(by_tenant.get(tenant, 0.0) for by_tenant in per_class.values())
        traffic = {}
        for name, by_tenant in sorted(per_class.items()):
            class_total = sum(by_tenant.values())
            traffic[name] = {"bytes_per_second": round(by_tenant.get(tenant, 0.0), 3),
                             "share": round(by_tenant.get(tenant, 0.0) / class_total, 4) if class_total else None}
        views[tenant] = {"bytes": moved[tenant], "bytes_per_second": round(mine, 3),
                         "share": round(mine / everyone, 4) if everyone else None, "traffic": traffic}
    return views


def _no_wan() -> dict[str, Any]:
    return {"bytes": 0, "bytes_per_second": 0.0, "share": None, "traffic": {}}


async def stored_usage(meta, tenants: list[Tenant]) -> list[dict[str, Any]]:
    """Per tenant (and each of its buckets): stored bytes and objects, warm bytes, limits. What the metadata
    store knows, with or without a server."""
    warm = await meta.warm_bytes_by_tenant()
    views = []
    for tenant in tenants:
        stored, objects = await meta.tenant_usage(tenant.name)
        buckets = []
        for bucket in await meta.list_buckets(tenant.name):
            bucket_bytes, bucket_objects = await meta.bucket_usage(bucket.name)
            buckets.append({"bucket": bucket.name, "bytes": bucket_bytes, "objects": bucket_objects,
                            "quota": quota_view(bucket.limits), "qos": qos_view(bucket.limits)})
        views.append({"tenant": tenant.name, "bytes": stored, "objects": objects,
                      "warm_bytes": int(warm.get(tenant.name, 0)), "warm_reserved": tenant.warm_reserved,
                      "warm_cap": tenant.warm_cap, "quota": quota_view(tenant.limits), "qos": qos_view(tenant.limits),
                      "buckets": buckets})
    return views


async def usage_document(meta, tenants: list[Tenant], window: RateWindow) -> dict[str, Any]:
    """The ``GET /api/v1/usage`` answer: ``stored_usage`` with each tenant's rates and WAN share."""
    totals, rates, seconds = await window.current()
    wan = wan_shares(totals, rates)
    views = await stored_usage(meta, tenants)
    for view in views:
        view.update(_tenant_rates(view["tenant"], totals, rates))
        view["wan"] = wan.get(view["tenant"]) or _no_wan()
        for bucket in view["buckets"]:
            bucket.update(_bucket_rates(bucket["bucket"], totals, rates))
        view["buckets"] = view.pop("buckets")  # last: tenant fields first when read by eye
    return {"window_seconds": seconds, "tenants": views}
