"""What the admin API, ``/metrics`` and ``atoll status`` report about tiering, as plain dicts.

Three sources: the metadata store (warm usage, links, backlog, resident and pinned bytes, jobs), which any
process can read; the cold endpoints' health, which lives in the memory of each server process that talks to
them (the primary worker's own view merged with the other workers' published views, atoll.admin.peerhealth);
and the per-bucket read counters of every worker (atoll.admin.bucketcounts). No secret is ever part of an
answer: link options are the plain ones (secret ones are in the secret file and only their names are shown),
cold-store names are URLs that cannot carry credentials, endpoint keys are account names and host URLs.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from atoll import errors
from atoll.admin import bucketcounts
from atoll.admin.nodes import nodes_status
from atoll.admin.endpoints import STATES, endpoint_view, merge_views, public_key
from atoll.admin.peerhealth import read_peer_views
from atoll.core.ingest import run_io
from atoll.core.models import Job, Link
from atoll.core.tiering import admin
from atoll.stores.cold.store import ColdStore

if TYPE_CHECKING:
    from atoll.core.tiering.tier import Tiering

STATE_CODES = {state: code for code, state in enumerate(STATES)}  # misconfigured links count as partitioned
PRIORITY_NAMES = {0: "high", 1: "normal", 2: "low"}


def backlog_view(entries: int, size: int, oldest: float | None, now: float | None = None) -> dict:
    """A drain backlog; ``oldest_age_seconds`` is the recovery point (how much recent writing a loss of the
    warm tier would cost), 0 when nothing waits."""
    now = time.time() if now is None else now
    return {"objects": entries, "bytes": size,
            "oldest_age_seconds": round(max(0.0, now - oldest), 3) if oldest else 0.0}


async def warm_status(tier: "Tiering") -> dict:
    capacity = tier.capacity()
    resident = await tier.meta.resident_bytes()
    return {"capacity": capacity, "resident_bytes": resident, "pinned_bytes": await tier.meta.pinned_bytes(),
            "used_fraction": round(resident / capacity, 4) if capacity else 0.0,
            "high_watermark": tier.settings.high_watermark, "low_watermark": tier.settings.low_watermark}


async def packed_status(tier: "Tiering") -> dict:
    """The packed store (#8): segments by state, and their bytes — live (objects point at them), dead (overwritten,
    deleted or never committed: what compaction reclaims) and on disk. An open segment's size is its file's."""
    from atoll.core.ingest import run_io
    from atoll.stores.data.segments import RECORD_HEADER

    segments = await tier.meta.list_segments()
    by_state = {state: 0 for state in ("open", "sealed", "compacting", "retired")}
    on_disk = live = records = 0
    for segment in segments:
        by_state[segment.state] = by_state.get(segment.state, 0) + 1
        size = segment.size
        if segment.state == "open":
            size = await run_io(tier.data.segments.size, segment.segment_id) or 0
        on_disk += size
        if segment.state != "retired":
            live += segment.live_bytes
            records += segment.live_count
    return {"segments": by_state, "bytes_on_disk": on_disk, "live_bytes": live, "live_records": records,
            "dead_bytes": max(on_disk - live - RECORD_HEADER.size * records, 0)}


async def drain_status(tier: "Tiering") -> dict:
    paused = bool(await tier.meta.get_flag("drain_paused"))
    return {"paused": paused, "backlog": backlog_view(*await tier.meta.drain_backlog())}


async def secret_option_names(tier: "Tiering", bucket: str) -> list[str]:
    """Names (never values) of the link's options kept in the secret file."""
    if tier.secrets is None:
        return []
    return sorted(await run_io(tier.secrets.get, bucket))


async def bucket_status(tier: "Tiering", bucket: str) -> dict:
    """One bucket's tiering view: link (without secrets), objects, backlog, checkpoint groups, resident and
    pinned bytes. Costs a scan of the bucket's rows (counts and resident bytes)."""
    if await tier.meta.get_bucket(bucket) is None:
        raise errors.NoSuchBucket(f"no bucket named {bucket}", bucket=bucket)
    status = await admin.bucket_tiering_status(tier, bucket)
    if status["link"] is not None:
        status["link"]["secret_options"] = await secret_option_names(tier, bucket)
    status["resident_bytes"] = await tier.meta.resident_bytes(bucket)
    status["pinned_bytes"] = await tier.meta.pinned_bytes(bucket)
    return status


def store_of(tier: "Tiering", link: Link) -> ColdStore | None:
    """The link's ColdStore in this process (made now if nothing used it yet; that costs no request)."""
    try:
        return tier.store(link)
    except errors.AtollError:
        return None


@dataclass(slots=True)
class ColdHealth:
    """The cold endpoints of the linked buckets, each merged over the workers, and which bucket uses which."""

    links: list[Link] = field(default_factory=list)
    endpoints: list[dict] = field(default_factory=list)  # merged endpoint views, each with its "buckets"
    of_bucket: dict[str, dict | None] = field(default_factory=dict)  # bucket -> its endpoint's view (None:
    # the link's options no longer build a client)


async def cold_health(tier: "Tiering", peers_dir: str | None = None) -> ColdHealth:
    """Health of the endpoints of every link: this process's view merged with the views other workers published
    in ``peers_dir`` (None: this is the only worker). Endpoints no link uses any more are left out."""
    health = ColdHealth(links=await tier.meta.list_links())
    peers = await run_io(read_peer_views, peers_dir, os.getpid()) if peers_dir else []
    used: dict[str, tuple] = {}  # public key -> (Endpoint, buckets)
    for link in health.links:
        store = store_of(tier, link)
        if store is None:
            health.of_bucket[link.bucket] = None
            continue
        entry = used.setdefault(public_key(store.endpoint.key), (store.endpoint, []))
        entry[1].append(link.bucket)
    for key, (endpoint, buckets) in sorted(used.items()):
        view = merge_views([endpoint_view(endpoint), *(v for peer in peers for v in peer if v["endpoint"] == key)])
        view["buckets"] = sorted(buckets)
        health.endpoints.append(view)
        for bucket in buckets:
            health.of_bucket[bucket] = view
    return health


def cold_stores(health: ColdHealth) -> list[dict]:
    """Per link, its endpoint's state and numbers (shared by every link to that endpoint)."""
    views = []
    for link in health.links:
        view = health.of_bucket.get(link.bucket)
        if view is None:
            views.append({"bucket": link.bucket, "name": link.url, "endpoint": None, "state": "misconfigured",
                          "contacted": False, "last_error": "the link's options no longer build a cold-store client"})
            continue
        views.append({
            "bucket": link.bucket, "name": link.url, "endpoint": view["endpoint"], "state": view["state"],
            "contacted": view["contacted"], "last_success": view["last_success"],
            "last_failure": view["last_failure"], "last_error": view["last_error"],
            "consecutive_failures": view["consecutive_failures"], "latency_ewma": view["latency_ewma"],
            "traffic": {name: {k: stats[k] for k in ("requests", "failures", "bytes_in", "bytes_out")}
                        for name, stats in view["traffic"].items()},
        })
    return views


async def bucket_counts() -> dict[str, dict[str, int]]:
    """Reads (hits, misses) and degraded write-through writes per bucket, summed over every worker."""
    return bucketcounts.bucket_counts(await run_io(bucketcounts.collect_families))


def with_health(status: dict, health: ColdHealth | None, counts: dict[str, dict[str, int]] | None) -> dict:
    """A bucket's status plus its endpoint and its endpoint's state (with ``health``) and its read counts (with
    ``counts``); fields stay null where that source is not at hand (the CLI without a server)."""
    bucket = status["bucket"]
    view = health.of_bucket.get(bucket) if health is not None else None
    misconfigured = health is not None and status["link"] is not None and view is None
    status["endpoint"] = view["endpoint"] if view else None
    status["endpoint_state"] = "misconfigured" if misconfigured else view["state"] if view else None
    mine = (counts or {}).get(bucket)
    linked = counts is not None and status["link"] is not None
    reads = (mine or dict.fromkeys(bucketcounts.FIELDS.values(), 0)) if linked else {}
    status["hits"], status["misses"] = reads.get("hits"), reads.get("misses")
    status["hit_ratio"] = bucketcounts.hit_ratio(mine)
    status["writethrough_degraded"] = reads.get("writethrough_degraded")
    return status


async def linked_buckets(tier: "Tiering", health: ColdHealth | None = None,
                         counts: dict[str, dict[str, int]] | None = None) -> list[dict]:
    views = []
    for link in health.links if health is not None else await tier.meta.list_links():
        try:
            views.append(with_health(await bucket_status(tier, link.bucket), health, counts))
        except errors.NoSuchBucket:
            continue  # deleted since the links were listed
    return views


async def server_status(tier: "Tiering", peers_dir: str | None = None) -> dict:
    """What the admin API's status answers (besides version and uptime)."""
    health = await cold_health(tier, peers_dir)
    counts = await bucket_counts()
    return {"warm": await warm_status(tier), "drain": await drain_status(tier),
            "packed": await packed_status(tier), "cold_endpoints": health.endpoints, "cold_stores": cold_stores(health),
            "buckets": await linked_buckets(tier, health, counts), "nodes": await nodes_status(tier.meta)}


def job_view(job: Job) -> dict:
    """A job with its progress numbers as the runner records them (objects, bytes, rate, ETA); a long key list
    is summarised by its length."""
    spec = dict(job.spec)
    keys = spec.pop("keys", None)
    if keys is not None:
        spec["key_count"] = len(keys)
    return {"id": job.job_id, "kind": job.kind, "bucket": job.bucket, "state": job.state,
            "priority": PRIORITY_NAMES.get(job.priority, str(job.priority)), "created": job.created,
            "updated": job.updated, "spec": spec, "progress": dict(job.progress), "error": job.error or None}
