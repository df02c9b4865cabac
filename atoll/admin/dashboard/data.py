"""``GET /api/v1/dashboard``: one document with everything the dashboard's pages show, current values only.

Built from the same Python objects as the status API and /metrics (atoll.admin.status, usage, nodes), never from
``/metrics`` text. Lists the pages address by name are JSON objects keyed by that name (buckets, tenants, cold
endpoints, jobs, nodes), so that ``data-field`` paths stay stable while rows come and go (see the package
docstring for the path syntax). The document is rebuilt at most once a second (every open page polls it), and
the per-bucket resident and pinned bytes, which cost a scan of the bucket's rows, at most once per sample
interval.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from atoll import __version__, errors
from atoll.admin import status
from atoll.admin.bucketcounts import hit_ratio
from atoll.admin.dashboard.units import format_bytes, format_count
from atoll.admin.nodes import nodes_status
from atoll.admin.usage import usage_document
from atoll.core import cluster

if TYPE_CHECKING:
    from atoll.admin.app import AdminApp

log = logging.getLogger("atoll.admin")

DOCUMENT_TTL = 1.0  # seconds a built document is reused
RECENT_JOBS = 20  # finished jobs shown besides the active ones
MAX_ACTIVE_JOBS = 200
AUDIT_ENTRIES = 50


def job_entry(view: dict) -> dict:
    progress = dict(view.get("progress") or {})
    fraction = None
    if progress.get("bytes_total"):
        fraction = progress.get("bytes_done", 0) / progress["bytes_total"]
    elif progress.get("objects_total"):
        fraction = progress.get("objects_done", 0) / progress["objects_total"]
    elif view["state"] == "done":
        fraction = 1.0
    progress["fraction"] = round(min(max(fraction, 0.0), 1.0), 4) if fraction is not None else 0.0
    spec = view.get("spec") or {}
    return {"id": view["id"], "kind": view["kind"], "bucket": view["bucket"], "state": view["state"],
            "priority": view["priority"], "prefix": spec.get("prefix", ""), "pin": bool(spec.get("pin")),
            "created": view["created"], "updated": view["updated"], "progress": progress, "error": view["error"]}


def banner(endpoints: dict[str, dict], drain: dict, nodes: dict[str, dict]) -> dict:
    """The line at the top of every page: red while a cold store is partitioned, amber while one is degraded,
    the drain is paused or a node is dead, green otherwise."""
    backlog = drain["backlog"]
    waiting = f"{format_count(backlog['objects'])} writes / {format_bytes(backlog['bytes'])} waiting"
    partitioned = {key: view for key, view in endpoints.items() if view["state"] == "partitioned"}
    degraded = [key for key, view in endpoints.items() if view["state"] == "degraded"]
    dead = [name for name, node in nodes.items() if node["state"] == "dead"]
    since = None
    if partitioned:
        opened = [view["partitioned_since"] for view in partitioned.values() if view["partitioned_since"]]
        since = min(opened) if opened else None
        where = "WAN" if len(partitioned) == len(endpoints) else \
            f"{len(partitioned)} of {len(endpoints)} cold endpoints"
        when = f" since {time.strftime('%H:%M', time.localtime(since))}" if since else ""
        return {"level": "critical", "text": f"{where} partitioned{when} — writes are journaled, {waiting}",
                "partitioned_since": since, "waiting": {"objects": backlog["objects"], "bytes": backlog["bytes"]}}
    if degraded:
        text = f"WAN degraded ({len(degraded)} of {len(endpoints)} cold endpoints) — {waiting}"
        level = "warning"
    elif drain["paused"]:
        text, level = f"Drain paused by an operator — {waiting}", "warning"
    elif dead:
        text, level = f"Node {', '.join(sorted(dead))} is not answering (no heartbeat)", "warning"
    elif endpoints:
        text, level = f"All cold stores healthy — {waiting}", "ok"
    else:
        text, level = "No bucket is linked to a cold store", "ok"
    return {"level": level, "text": text, "partitioned_since": since,
            "waiting": {"objects": backlog["objects"], "bytes": backlog["bytes"]}}


class DashboardData:
    def __init__(self, app: "AdminApp", scan_ttl: float = 5.0) -> None:
        self.app = app
        self.scan_ttl = scan_ttl
        self._document: tuple[float, dict] | None = None
        self._building: asyncio.Lock | None = None
        self._scans: dict[str, tuple[float, int, int]] = {}  # bucket -> (when, resident, pinned)

    async def document(self) -> dict:
        if self._building is None:
            self._building = asyncio.Lock()
        async with self._building:  # concurrent pages share one build
            cached = self._document
            if cached is not None and time.monotonic() - cached[0] < DOCUMENT_TTL:
                return cached[1]
            document = await self._build()
            self._document = (time.monotonic(), document)
            return document

    def forget(self) -> None:
        """Drop the built document and the per-bucket scans: an action changed what they show, and the page that
        made it reads the document next."""
        self._document = None
        self._scans.clear()

    async def _scanned(self, bucket: str) -> tuple[int, int]:
        meta = self.app.tier.meta
        found = self._scans.get(bucket)
        if found is None or time.monotonic() - found[0] >= self.scan_ttl:
            found = (time.monotonic(), await meta.resident_bytes(bucket), await meta.pinned_bytes(bucket))
            self._scans[bucket] = found
        return found[1], found[2]

    async def _build(self) -> dict:
        app, tier = self.app, self.app.tier
        meta = tier.meta
        now = time.time()
        health = await status.cold_health(tier, app.peers_dir)
        counts = await status.bucket_counts()
        drain = await status.drain_status(tier)
        warm = await status.warm_status(tier)
        endpoints = {view["endpoint"]: self._endpoint(view) for view in health.endpoints}
        buckets: dict[str, dict] = {}
        linked = {link.bucket for link in health.links}
        for link in health.links:
            entry = await self._bucket(link, health, counts, now)
            if entry is not None:
                buckets[link.bucket] = entry
        for gone in set(self._scans) - linked:
            del self._scans[gone]
        reads = {"hits": sum(b["hits"] for b in buckets.values()),
                 "misses": sum(b["misses"] for b in buckets.values())}
        total = reads["hits"] + reads["misses"]
        reads["hit_ratio"] = round(reads["hits"] / total, 4) if total else None
        warm["dirty_bytes"] = drain["backlog"]["bytes"]
        nodes = {view["node"]: self._node(view) for view in await nodes_status(meta, now)}
        return {
            "time": round(now, 3), "version": __version__, "node": cluster.node_name(),
            "started": app.started, "uptime_seconds": round(now - app.started, 3), "workers": app.workers,
            "banner": banner(endpoints, drain, nodes),
            "warm": warm, "drain": drain, "reads": reads, "cold": endpoints, "buckets": buckets,
            "jobs": await self._jobs(), "tenants": await self._tenants(buckets), "nodes": nodes,
            "audit": await self._audit(),
            "sampling": {"interval": app.dashboard.history.interval,
                         "history_seconds": app.dashboard.history.interval * (app.dashboard.history.capacity - 1)},
        }

    @staticmethod
    def _endpoint(view: dict) -> dict:
        return {
            "state": view["state"], "buckets": view.get("buckets", []), "contacted": view["contacted"],
            "breaker": view["breaker"]["state"],
            "partitioned_since": view["breaker"]["opened_at"] if view["state"] == "partitioned" else None,
            "consecutive_failures": view["consecutive_failures"], "latency_ewma": view["latency_ewma"],
            "last_success": view["last_success"], "last_failure": view["last_failure"],
            "last_error": view["last_error"], "error_rate": view["last_minute"]["error_rate"],
            "requests_last_minute": view["last_minute"]["requests"], "transfers": view["transfers"],
            "traffic": {kind: {"bytes_in_per_second": stats["bytes_in_per_second"],
                               "bytes_out_per_second": stats["bytes_out_per_second"], "active": stats["active"],
                               "requests": stats["requests"], "failures": stats["failures"]}
                        for kind, stats in view["traffic"].items()},
        }

    async def _bucket(self, link, health: status.ColdHealth, counts: dict, now: float) -> dict | None:
        meta = self.app.tier.meta
        record = await meta.get_bucket(link.bucket)
        if record is None:
            return None  # deleted since the links were listed
        stored, objects = await meta.bucket_usage(link.bucket)
        resident, pinned = await self._scanned(link.bucket)
        backlog = status.backlog_view(*await meta.drain_backlog(link.bucket), now)
        view = health.of_bucket.get(link.bucket)
        reads = counts.get(link.bucket) or {"hits": 0, "misses": 0, "writethrough_degraded": 0}
        return {"tenant": record.tenant, "url": link.url, "mode": link.mode,
                "endpoint": view["endpoint"] if view else None,
                "endpoint_state": view["state"] if view else "misconfigured",
                "objects": objects, "bytes": stored, "resident_bytes": resident, "pinned_bytes": pinned,
                "dirty_bytes": backlog["bytes"], "backlog": backlog,
                "recovery_point_seconds": backlog["oldest_age_seconds"],
                "hits": reads["hits"], "misses": reads["misses"],
                "hit_ratio": hit_ratio(reads),
                "writethrough_degraded": reads.get("writethrough_degraded", 0)}

    async def _jobs(self) -> dict[str, dict]:
        meta = self.app.tier.meta
        active = await meta.list_jobs(MAX_ACTIVE_JOBS, active_only=True)
        recent = await meta.list_jobs(RECENT_JOBS)
        jobs: dict[str, dict] = {}
        for job in [*active, *recent]:
            if job.job_id not in jobs:
                jobs[job.job_id] = job_entry(status.job_view(job))
        return jobs

    async def _tenants(self, buckets: dict[str, dict]) -> dict[str, dict]:
        """Usage per tenant; pinned and dirty warm bytes summed over its linked buckets (only those have any)."""
        meta = self.app.tier.meta
        held: dict[str, dict[str, int]] = {}
        for bucket in buckets.values():
            mine = held.setdefault(bucket["tenant"], {"pinned": 0, "dirty": 0})
            mine["pinned"] += bucket["pinned_bytes"]
            mine["dirty"] += bucket["dirty_bytes"]
        usage = await usage_document(meta, await meta.list_tenants(), self.app.governance.window)
        tenants = {}
        for view in usage["tenants"]:
            tenants[view["tenant"]] = {
                "bytes": view["bytes"], "objects": view["objects"], "warm_bytes": view["warm_bytes"],
                "warm_pinned_bytes": held.get(view["tenant"], {}).get("pinned", 0),
                "warm_dirty_bytes": held.get(view["tenant"], {}).get("dirty", 0),
                "warm_reserved": view["warm_reserved"], "warm_cap": view["warm_cap"],
                "requests": view["requests"], "throttled": view["throttled"], "rates": view["rates"],
                "wan": {"bytes_per_second": view["wan"]["bytes_per_second"], "share": view["wan"]["share"]},
                "quota": view["quota"], "qos": view["qos"], "buckets": [b["bucket"] for b in view["buckets"]],
            }
        return tenants

    @staticmethod
    def _node(view: dict) -> dict:
        return {"state": view["state"], "address": view["address"], "version": view["version"],
                "heartbeat_age_seconds": view["heartbeat_age_seconds"], "started": view["started"],
                "pid": view["pid"], "workers": view["workers"], "leases": view["leases"], "fills": view["fills"],
                "cold_uploads": view["cold_uploads"], "drain_claims": view["drain_claims"],
                "jobs": len(view["jobs"]), "connections": view["info"].get("connections")}

    async def _audit(self) -> dict:
        """The newest entries of the audit log (atoll.admin.audit), as ``GET /api/v1/audit`` shows them."""
        try:
            entries = await self.app.tier.meta.list_audit(AUDIT_ENTRIES)
        except errors.AtollError as exc:
            log.warning("dashboard: reading the audit log failed: %s", type(exc).__name__)
            return {"available": False, "entries": []}
        return {"available": True, "entries": [entry.view() for entry in entries]}

