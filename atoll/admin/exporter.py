"""``/metrics``: the counters of ``atoll.metrics`` summed over all workers, plus gauges read at scrape time.

Counters and histograms are per process; under ``atoll serve`` every worker writes them to files in
``PROMETHEUS_MULTIPROC_DIR`` and ``MultiProcessCollector`` sums them here. Gauges that describe shared state
(warm usage, drain backlog) are read from the metadata store when Prometheus scrapes, so they are never stale;
cold-store health is the primary worker's view (it runs the drain and the jobs; see atoll.admin.status).

Scraping is two steps: the async part reads the store into a ``Snapshot`` on the event loop, then
``render`` (which reads the workers' files) runs in a thread.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from atoll import __version__
from atoll.admin import status
from atoll.admin.multiproc import ENV as MULTIPROC_ENV

if TYPE_CHECKING:
    from atoll.core.tiering.tier import Tiering

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(slots=True)
class Snapshot:
    started: float = 0.0
    warm: dict = field(default_factory=dict)
    drain_paused: bool = False
    backlog: dict[str, dict] = field(default_factory=dict)  # bucket -> backlog_view
    stores: list[dict] = field(default_factory=list)  # status.store_view of each link


async def take_snapshot(tier: "Tiering", started: float) -> Snapshot:
    meta = tier.meta
    snapshot = Snapshot(started=started, drain_paused=bool(await meta.get_flag("drain_paused")))
    capacity = tier.capacity()
    snapshot.warm = {"capacity": capacity, "resident": await meta.resident_bytes(),
                     "pinned": await meta.pinned_bytes()}
    for link in await meta.list_links():
        snapshot.backlog[link.bucket] = status.backlog_view(*await meta.drain_backlog(link.bucket))
        store = status.store_of(tier, link)
        if store is not None:
            snapshot.stores.append(status.store_view(link.bucket, store))
    return snapshot


class TierGauges(Collector):
    """The snapshot as Prometheus families (names carry their units, label sets are bounded by the links)."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        s = self.snapshot
        info = GaugeMetricFamily("atoll_build_info", "Atoll version", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        yield GaugeMetricFamily("atoll_start_time_seconds", "When the server started (Unix time)", value=s.started)
        yield GaugeMetricFamily("atoll_warm_capacity_bytes", "Bytes the warm tier may hold",
                                value=s.warm["capacity"])
        yield GaugeMetricFamily("atoll_warm_resident_bytes", "Bytes held by the warm tier",
                                value=s.warm["resident"])
        yield GaugeMetricFamily("atoll_warm_pinned_bytes", "Resident bytes pinned against eviction",
                                value=s.warm["pinned"])
        yield GaugeMetricFamily("atoll_drain_paused", "1 while the drain is paused by an operator",
                                value=int(s.drain_paused))

        objects = GaugeMetricFamily("atoll_drain_backlog_objects", "Writes and deletes waiting to drain",
                                    labels=["bucket"])
        size = GaugeMetricFamily("atoll_drain_backlog_bytes", "Bytes waiting to drain", labels=["bucket"])
        age = GaugeMetricFamily("atoll_drain_backlog_oldest_age_seconds",
                                "Age of the oldest undrained write (the recovery point); 0 when none",
                                labels=["bucket"])
        for bucket, backlog in sorted(s.backlog.items()):
            objects.add_metric([bucket], backlog["objects"])
            size.add_metric([bucket], backlog["bytes"])
            age.add_metric([bucket], backlog["oldest_age_seconds"])
        yield from (objects, size, age)

        labels = ["bucket", "store"]
        state = GaugeMetricFamily("atoll_cold_store_state", "0 healthy, 1 degraded, 2 partitioned", labels=labels)
        failures = GaugeMetricFamily("atoll_cold_store_consecutive_failures",
                                     "Failed cold-store calls since the last success", labels=labels)
        latency = GaugeMetricFamily("atoll_cold_store_latency_seconds",
                                    "Moving average of cold-store call latency", labels=labels)
        last_ok = GaugeMetricFamily("atoll_cold_store_last_success_timestamp_seconds",
                                    "Unix time of the last successful cold-store call (0: none yet)",
                                    labels=labels)
        by_class = [*labels, "traffic"]
        requests = CounterMetricFamily("atoll_cold_store_requests", "Cold-store calls by traffic class",
                                       labels=by_class)
        failed = CounterMetricFamily("atoll_cold_store_request_failures", "Failed cold-store calls by traffic "
                                     "class", labels=by_class)
        moved = CounterMetricFamily("atoll_cold_store_transferred_bytes", "Bytes to and from the cold store by "
                                    "traffic class", labels=[*by_class, "direction"])
        for view in s.stores:
            key = [view["bucket"], view["name"]]
            state.add_metric(key, status.STATE_CODES.get(view["state"], 2))
            failures.add_metric(key, view["consecutive_failures"])
            latency.add_metric(key, view["latency_ewma"])
            last_ok.add_metric(key, view["last_success"] or 0)
            for traffic, stats in view["traffic"].items():
                requests.add_metric([*key, traffic], stats["requests"])
                failed.add_metric([*key, traffic], stats["failures"])
                moved.add_metric([*key, traffic, "read"], stats["bytes_in"])
                moved.add_metric([*key, traffic, "written"], stats["bytes_out"])
        yield from (state, failures, latency, last_ok, requests, failed, moved)


class _Delegate(Collector):
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        return self.registry.collect()


def render(snapshot: Snapshot) -> bytes:
    """The text exposition (reads the workers' metric files: call it off the event loop)."""
    registry = CollectorRegistry(auto_describe=False)
    if os.environ.get(MULTIPROC_ENV):
        MultiProcessCollector(registry)
    else:  # a server started without ``atoll serve`` (run_worker called directly): one process, its registry
        registry.register(_Delegate(REGISTRY))
    registry.register(TierGauges(snapshot))
    return generate_latest(registry)
