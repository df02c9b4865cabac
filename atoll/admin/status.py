"""What the admin API, ``/metrics`` and ``atoll status`` report about tiering, as plain dicts.

Two sources: the metadata store (warm usage, links, backlog, pins, jobs), which any process can read, and the
cold stores' health, which lives in the memory of the server process that talks to them (the primary worker
runs the drain and the jobs; demand misses of other workers count in their own processes). No secret is ever
part of an answer: link options are the plain ones (secret ones are in the secret file and only their names
are shown), cold-store names are URLs that cannot carry credentials.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from atoll import errors
from atoll.core.ingest import run_io
from atoll.core.models import Job, Link
from atoll.core.tiering import admin
from atoll.stores.cold.store import ColdStore

if TYPE_CHECKING:
    from atoll.core.tiering.tier import Tiering

STATE_CODES = {"healthy": 0, "degraded": 1, "partitioned": 2}
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


async def drain_status(tier: "Tiering") -> dict:
    paused = bool(await tier.meta.get_flag("drain_paused"))
    return {"paused": paused, "backlog": backlog_view(*await tier.meta.drain_backlog())}


async def secret_option_names(tier: "Tiering", bucket: str) -> list[str]:
    """Names (never values) of the link's options kept in the secret file."""
    if tier.secrets is None:
        return []
    return sorted(await run_io(tier.secrets.get, bucket))


async def bucket_status(tier: "Tiering", bucket: str) -> dict:
    """One bucket's tiering view: link (without secrets), objects, backlog, checkpoint groups, pinned bytes."""
    if await tier.meta.get_bucket(bucket) is None:
        raise errors.NoSuchBucket(f"no bucket named {bucket}", bucket=bucket)
    status = await admin.bucket_tiering_status(tier, bucket)
    if status["link"] is not None:
        status["link"]["secret_options"] = await secret_option_names(tier, bucket)
    status["pinned_bytes"] = await tier.meta.pinned_bytes(bucket)
    return status


async def linked_buckets(tier: "Tiering") -> list[dict]:
    return [await bucket_status(tier, link.bucket) for link in await tier.meta.list_links()]


def store_view(bucket: str, store: ColdStore) -> dict:
    h = store.health
    return {
        "bucket": bucket, "name": store.name, "state": h.state,
        "contacted": bool(h.last_success or h.last_failure),
        "last_success": h.last_success or None, "last_failure": h.last_failure or None,
        "last_error": h.last_error or None, "consecutive_failures": h.consecutive_failures,
        "latency_ewma": round(h.latency_ewma, 6),
        "traffic": {name: {"requests": s.requests, "failures": s.failures, "bytes_in": s.bytes_in,
                           "bytes_out": s.bytes_out} for name, s in h.per_class.items()},
    }


def store_of(tier: "Tiering", link: Link) -> ColdStore | None:
    """The link's ColdStore in this process (made now if nothing used it yet; that costs no request)."""
    try:
        return tier.store(link)
    except errors.AtollError:
        return None


async def cold_stores(tier: "Tiering") -> list[dict]:
    """Health of every linked bucket's cold store as this process sees it."""
    views = []
    for link in await tier.meta.list_links():
        store = store_of(tier, link)
        if store is None:
            views.append({"bucket": link.bucket, "name": link.url, "state": "misconfigured", "contacted": False,
                          "last_error": "the link's options no longer build a cold-store client"})
        else:
            views.append(store_view(link.bucket, store))
    return views


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
