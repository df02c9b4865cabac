"""``/metrics``: the counters of ``atoll.metrics`` summed over all workers, plus gauges read at scrape time.

Counters and histograms are per process; under ``atoll serve`` every worker writes them to files in
``PROMETHEUS_MULTIPROC_DIR`` and ``MultiProcessCollector`` sums them here. Gauges that describe shared state
(warm usage, drain backlog, per-bucket resident and pinned bytes) are read from the metadata store when
Prometheus scrapes, so they are never stale; cold-endpoint health is every worker's view merged (see
atoll.admin.endpoints and atoll.admin.peerhealth); hit ratios come from the summed hit and miss counters.

Scraping is two steps: the async part reads the store and the workers' health into a ``Snapshot`` on the
event loop, then ``render`` (which reads the workers' counter files) runs in a thread.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from atoll import __version__
from atoll.admin import status
from atoll.admin.nodes import count_by_state, nodes_status
from atoll.admin.bucketcounts import bucket_counts, collect_families, hit_ratio

if TYPE_CHECKING:
    from atoll.core.tiering.tier import Tiering

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
JOB_KINDS = ("stage", "sync-index")


@dataclass(slots=True)
class Snapshot:
    started: float = 0.0
    warm: dict = field(default_factory=dict)
    drain_paused: bool = False
    backlog: dict[str, dict] = field(default_factory=dict)  # bucket -> backlog_view
    resident: dict[str, int] = field(default_factory=dict)  # bucket -> resident bytes
    pinned: dict[str, int] = field(default_factory=dict)  # bucket -> pinned bytes
    endpoints: list[dict] = field(default_factory=list)  # merged views of the links' endpoints
    stores: list[dict] = field(default_factory=list)  # status.cold_stores: each link with its endpoint's numbers
    packed: dict = field(default_factory=dict)  # status.packed_status
    nodes: dict[str, int] = field(default_factory=dict)  # cluster nodes by state (atoll.admin.nodes)
    dirty: int = 0  # bytes waiting to drain, every bucket
    links: dict[str, tuple[str, str]] = field(default_factory=dict)  # linked bucket -> (tenant, mode)
    tenants: dict[str, dict[str, int]] = field(default_factory=dict)  # tenant -> warm resident/pinned/dirty bytes
    jobs: dict[tuple[str, str], int] = field(default_factory=dict)  # (kind, state) -> active jobs
    stage_remaining: int = 0  # bytes active staging jobs have listed and not fetched yet


async def take_snapshot(tier: "Tiering", started: float, peers_dir: str | None = None) -> Snapshot:
    meta = tier.meta
    snapshot = Snapshot(started=started, drain_paused=bool(await meta.get_flag("drain_paused")))
    capacity = tier.capacity()
    snapshot.warm = {"capacity": capacity, "resident": await meta.resident_bytes(),
                     "pinned": await meta.pinned_bytes()}
    health = await status.cold_health(tier, peers_dir)
    for link in health.links:
        snapshot.backlog[link.bucket] = status.backlog_view(*await meta.drain_backlog(link.bucket))
        snapshot.resident[link.bucket] = await meta.resident_bytes(link.bucket)
        snapshot.pinned[link.bucket] = await meta.pinned_bytes(link.bucket)
    snapshot.endpoints = health.endpoints
    snapshot.packed = await status.packed_status(tier)
    snapshot.stores = [view for view in status.cold_stores(health) if view["endpoint"] is not None]
    snapshot.nodes = count_by_state(await nodes_status(meta))
    await _tenants_and_jobs(meta, snapshot)
    return snapshot


async def _tenants_and_jobs(meta, snapshot: Snapshot) -> None:
    """Per tenant warm bytes (resident from the store's per-tenant counter; pinned and dirty summed over the
    tenant's linked buckets, the only ones that have either), each link's tenant and mode, and active jobs."""
    snapshot.dirty = (await meta.drain_backlog())[1]
    snapshot.tenants = {tenant.name: {"resident": 0, "pinned": 0, "dirty": 0} for tenant in await meta.list_tenants()}
    for tenant, size in (await meta.warm_bytes_by_tenant()).items():
        snapshot.tenants.setdefault(tenant, {"resident": 0, "pinned": 0, "dirty": 0})["resident"] = size
    for link in await meta.list_links():
        bucket = await meta.get_bucket(link.bucket)
        if bucket is None:  # deleted since the links were listed
            continue
        snapshot.links[link.bucket] = (bucket.tenant, link.mode)
        usage = snapshot.tenants.setdefault(bucket.tenant, {"resident": 0, "pinned": 0, "dirty": 0})
        usage["pinned"] += snapshot.pinned.get(link.bucket, 0)
        usage["dirty"] += snapshot.backlog.get(link.bucket, {}).get("bytes", 0)
    snapshot.jobs = {(kind, state): 0 for kind in JOB_KINDS for state in ("queued", "running")}
    for job in await meta.list_jobs(limit=10_000, active_only=True):
        snapshot.jobs[(job.kind, job.state)] = snapshot.jobs.get((job.kind, job.state), 0) + 1
        if job.kind == "stage" and job.state == "running":
            total, done = int(job.progress.get("bytes_total", 0)), int(job.progress.get("bytes_done", 0))
            snapshot.stage_remaining += max(total - done, 0)


class TierGauges(Collector):
    """The snapshot as Prometheus families (names carry their units, label sets are bounded by the links:
    bucket names of linked buckets, endpoint keys of their endpoints; and by the tenant table: docs/metrics.md).
    ``counts``: per-bucket read counts summed over the workers (atoll.admin.bucketcounts)."""

    def __init__(self, snapshot: Snapshot, counts: dict[str, dict[str, int]] | None = None) -> None:
        self.snapshot = snapshot
        self.counts = counts or {}

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
        if s.packed:
            segments = GaugeMetricFamily("atoll_packed_segments", "Segment files of the packed store, by state",
                                         labels=["state"])
            for state, count in sorted(s.packed["segments"].items()):
                segments.add_metric([state], count)
            yield segments
            packed_bytes = GaugeMetricFamily("atoll_packed_bytes", "Bytes in segment files: live (objects point at "
                                             "them) and dead (left for compaction)", labels=["kind"])
            packed_bytes.add_metric(["live"], s.packed["live_bytes"])
            packed_bytes.add_metric(["dead"], s.packed["dead_bytes"])
            yield packed_bytes
        if s.nodes:
            nodes = GaugeMetricFamily("atoll_cluster_nodes", "Nodes of the cluster by state (alive, dead: no "
                                      "heartbeat within cluster.node_timeout, stopped)", labels=["state"])
            for state, count in sorted(s.nodes.items()):
                nodes.add_metric([state], count)
            yield nodes
        yield GaugeMetricFamily("atoll_drain_paused", "1 while the drain is paused by an operator",
                                value=int(s.drain_paused))

        objects = GaugeMetricFamily("atoll_drain_backlog_objects", "Writes and deletes waiting to drain",
                                    labels=["bucket"])
        size = GaugeMetricFamily("atoll_drain_backlog_bytes", "Bytes waiting to drain", labels=["bucket"])
        age = GaugeMetricFamily("atoll_drain_backlog_oldest_age_seconds",
                                "Age of the oldest undrained write (the recovery point); 0 when none",
                                labels=["bucket"])
        recovery = GaugeMetricFamily("atoll_drain_recovery_point_seconds",
                                     "Age of the oldest write not yet in the cold store: what losing the warm "
                                     "tier would cost; 0 when none", labels=["bucket"])
        resident = GaugeMetricFamily("atoll_bucket_resident_bytes", "Bytes of the bucket held by the warm tier",
                                     labels=["bucket"])
        pinned = GaugeMetricFamily("atoll_bucket_pinned_bytes", "Resident bytes of the bucket pinned against "
                                   "eviction", labels=["bucket"])
        hits = GaugeMetricFamily("atoll_bucket_hit_ratio", "Reads answered from the warm tier / all reads, since "
                                 "the server started (absent before the first read)", labels=["bucket"])
        for bucket, backlog in sorted(s.backlog.items()):
            objects.add_metric([bucket], backlog["objects"])
            size.add_metric([bucket], backlog["bytes"])
            age.add_metric([bucket], backlog["oldest_age_seconds"])
            recovery.add_metric([bucket], backlog["oldest_age_seconds"])
            resident.add_metric([bucket], s.resident.get(bucket, 0))
            pinned.add_metric([bucket], s.pinned.get(bucket, 0))
            ratio = hit_ratio(self.counts.get(bucket))
            if ratio is not None:
                hits.add_metric([bucket], ratio)
        yield from (objects, size, age, recovery, resident, pinned, hits)
        yield from self._tenants_and_jobs()
        yield from self._endpoints()

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

    def _tenants_and_jobs(self) -> Iterator[Metric]:
        s = self.snapshot
        yield GaugeMetricFamily("atoll_warm_dirty_bytes", "Bytes written on the island and not yet in the cold "
                                "store (the drain backlog of every bucket): never evicted", value=s.dirty)
        info = GaugeMetricFamily("atoll_bucket_info", "1 per linked bucket: its tenant and link mode (join on "
                                 "bucket to sum per-bucket families by tenant)", labels=["bucket", "tenant", "mode"])
        for bucket, (tenant, mode) in sorted(s.links.items()):
            info.add_metric([bucket, tenant, mode], 1)
        yield info
        families = {kind: GaugeMetricFamily(f"atoll_tenant_warm_{kind}_bytes", help_text, labels=["tenant"])
                    for kind, help_text in (("resident", "Bytes of the tenant's buckets held by the warm tier"),
                                            ("pinned", "Resident bytes of the tenant's linked buckets pinned "
                                             "against eviction"),
                                            ("dirty", "Bytes of the tenant's linked buckets waiting to drain"))}
        for tenant, usage in sorted(s.tenants.items()):
            for kind, family in families.items():
                family.add_metric([tenant], usage[kind])
        yield from families.values()
        jobs = GaugeMetricFamily("atoll_jobs", "Background jobs waiting (queued) or running, by kind (stage, "
                                 "sync-index)", labels=["kind", "state"])
        for (kind, state), count in sorted(s.jobs.items()):
            jobs.add_metric([kind, state], count)
        yield jobs
        yield GaugeMetricFamily("atoll_stage_remaining_bytes", "Bytes running staging jobs have listed and not "
                                "fetched yet", value=s.stage_remaining)

    def _endpoints(self) -> Iterator[Metric]:
        labels = ["endpoint"]
        state = GaugeMetricFamily("atoll_cold_endpoint_state", "0 healthy, 1 degraded, 2 partitioned (breaker "
                                  "open in any worker)", labels=labels)
        failures = GaugeMetricFamily("atoll_cold_endpoint_consecutive_failures",
                                     "Failed calls since the last success (the worst worker's)", labels=labels)
        last_ok = GaugeMetricFamily("atoll_cold_endpoint_last_success_timestamp_seconds",
                                    "Unix time of the last successful call (0: none yet)", labels=labels)
        latency = GaugeMetricFamily("atoll_cold_endpoint_latency_seconds",
                                    "Moving average of call latency (the slowest worker's)", labels=labels)
        error_ratio = GaugeMetricFamily("atoll_cold_endpoint_error_ratio",
                                        "Failed calls / calls over the last minute", labels=labels)
        active = GaugeMetricFamily("atoll_cold_endpoint_active_transfers", "Transfers in flight by traffic class",
                                   labels=[*labels, "traffic"])
        rate = GaugeMetricFamily("atoll_cold_endpoint_bytes_per_second", "Bytes per second to and from the endpoint "
                                 "over the last minute, by traffic class", labels=[*labels, "traffic", "direction"])
        for view in self.snapshot.endpoints:
            key = [view["endpoint"]]
            state.add_metric(key, status.STATE_CODES.get(view["state"], 2))
            failures.add_metric(key, view["consecutive_failures"])
            last_ok.add_metric(key, view["last_success"] or 0)
            latency.add_metric(key, view["latency_ewma"])
            error_ratio.add_metric(key, view["last_minute"]["error_rate"])
            for traffic, stats in view["traffic"].items():
                active.add_metric([*key, traffic], stats["active"])
                rate.add_metric([*key, traffic, "read"], stats["bytes_in_per_second"])
                rate.add_metric([*key, traffic, "written"], stats["bytes_out_per_second"])
        yield from (state, failures, last_ok, latency, error_ratio, active, rate)


class _Collected(Collector):
    """Families collected beforehand (so the bucket counts and the exposition come from one read of the files)."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def render(snapshot: Snapshot) -> bytes:
    """The text exposition (reads the workers' metric files: call it off the event loop)."""
    families = collect_families()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collected(families))
    registry.register(TierGauges(snapshot, bucket_counts(families)))
    return generate_latest(registry)
