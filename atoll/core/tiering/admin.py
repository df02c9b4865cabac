"""Operator actions on tiering, shared by the CLI and the admin HTTP API (neither holds logic of its own)."""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Mapping

from atoll import errors
from atoll.core import ingest
from atoll.core.models import CheckpointGroup, Job, Link
from atoll.core.tiering.drain import DEFAULT_MARKERS
from atoll.core.tiering.listing import clear_synced
from atoll.core.tiering.tier import Tiering
from atoll.stores.cold import links as cold_links
from atoll.stores.cold.store import Traffic

REVALIDATE_HELP = "never | always | ttl=SECONDS"


def parse_revalidate(value: str) -> str:
    value = value.strip().lower()
    if value in ("never", "always"):
        return value
    if value.startswith("ttl="):
        try:
            seconds = float(value[4:])
        except ValueError:
            seconds = -1
        if seconds > 0:
            return f"ttl={seconds:g}"
    raise errors.InvalidArgument(f"revalidation must be {REVALIDATE_HELP}, got {value!r}")


def parse_options(pairs: list[str]) -> dict[str, str]:
    options: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise errors.InvalidArgument(f"--option takes KEY=VALUE, got {name.strip() or pair!r}")
        options[name.strip().lower()] = value
    return options


async def link_bucket(tier: Tiering, bucket: str, url: str, mode: str, *, revalidate: str = "never",
                      options: Mapping[str, str] | None = None, check: bool = True) -> Link:
    """Link (or re-link) ``bucket`` to a cold store. With ``check``, the cold store is asked for one listing
    entry first, so a wrong endpoint, container or credential is reported now rather than on the first miss."""
    if mode not in cold_links.MODES:
        raise errors.InvalidArgument(f"mode must be one of {', '.join(cold_links.MODES)}, got {mode!r}")
    scheme, _, _ = cold_links.parse_url(url)
    if scheme in ("http", "https") and mode != "cache":
        raise errors.InvalidArgument(f"{scheme}:// cold stores are read-only: only --mode cache is possible")
    if await tier.meta.get_bucket(bucket) is None:
        raise errors.NoSuchBucket(f"no bucket named {bucket}", bucket=bucket)
    existing = await tier.meta.get_link(bucket)
    if existing is not None and existing.mode == "writeback" and mode != "writeback":
        pending, _, _ = await tier.meta.drain_backlog(bucket)
        if pending:
            raise errors.InvalidRequest(f"bucket {bucket} still has {pending} writes to drain; change its mode "
                                        "when the backlog is empty")
    plain, secret = cold_links.split_options(options or {})
    link = Link(bucket=bucket, url=url.rstrip("/"), mode=mode, revalidate=parse_revalidate(revalidate),
                options=plain, created=time.time())
    store = cold_links.build(link.url, {**plain, **secret}, tier.settings.cold_defaults or {},
                             tier.settings.timeouts)
    if check:
        try:
            async for _ in store.list("", Traffic.DEMAND, page_size=1):
                break
        except errors.ColdStoreUnavailable as exc:
            raise errors.InvalidArgument(f"the cold store {link.url} cannot be listed ({exc.message.split('(')[-1]}"
                                         " check the URL, endpoint and credentials") from None
    if tier.secrets is not None:
        await ingest.run_io(tier.secrets.put, bucket, secret)
    if existing is None or existing.url != link.url:
        await clear_synced(tier.meta, bucket)  # an index imported from another cold store says nothing of this one
    await tier.meta.put_link(link)
    tier.forget_link(bucket)
    return link


async def unlink_bucket(tier: Tiering, bucket: str) -> bool:
    removed = await tier.meta.delete_link(bucket)
    if tier.secrets is not None:
        await ingest.run_io(tier.secrets.put, bucket, None)
    tier.forget_link(bucket)
    return removed


async def add_group(tier: Tiering, bucket: str, prefix: str, markers: list[str] | None) -> CheckpointGroup:
    markers = [m for m in (markers or list(DEFAULT_MARKERS)) if m]
    if any("/" in m for m in markers):
        raise errors.InvalidArgument("a marker is a file name, without '/'")
    group = CheckpointGroup(bucket=bucket, prefix=prefix, markers=markers)
    await tier.meta.put_group(group)
    return group


async def create_job(tier: Tiering, kind: str, bucket: str, spec: dict, priority: str = "normal") -> Job:
    priorities = {"high": 0, "normal": 1, "low": 2}
    if priority not in priorities:
        raise errors.InvalidArgument(f"priority must be high, normal or low, got {priority!r}")
    if kind not in ("stage", "sync-index"):
        raise errors.InvalidArgument(f"unknown job kind {kind!r}")
    if await tier.meta.get_link(bucket) is None:
        raise errors.InvalidRequest(f"bucket {bucket} is not linked to a cold store")
    now = time.time()
    job = Job(job_id=secrets.token_hex(8), kind=kind, bucket=bucket, spec=spec, priority=priorities[priority],
              created=now, updated=now)
    await tier.meta.create_job(job)
    return job


async def cancel_job(tier: Tiering, job_id: str) -> str:
    job = await tier.meta.get_job(job_id)
    if job is None:
        raise errors.NotFound(f"no job {job_id}")
    if job.state in ("done", "failed", "cancelled"):
        return job.state
    return await tier.meta.update_job(job_id, state="cancelled")


async def bucket_tiering_status(tier: Tiering, bucket: str) -> dict:
    link = await tier.meta.get_link(bucket)
    objects, size = await tier.meta.count_objects(bucket)
    pending, pending_bytes, oldest = await tier.meta.drain_backlog(bucket)
    status = {
        "bucket": bucket, "objects": objects, "bytes": size,
        "link": None if link is None else {"url": link.url, "mode": link.mode, "revalidate": link.revalidate,
                                           "options": dict(link.options)},
        "backlog": {"objects": pending, "bytes": pending_bytes,
                    "oldest_age_seconds": round(time.time() - oldest, 3) if oldest else 0.0},
        "groups": [{"prefix": g.prefix, "markers": g.markers} for g in await tier.meta.list_groups(bucket)],
    }
    return status


async def pin_prefix(tier: Tiering, bucket: str, prefix: str, until: float) -> tuple[int, int]:
    """Pin every object under ``prefix`` until ``until`` (epoch seconds; 0 unpins). Returns (objects, bytes)."""
    if await tier.meta.get_bucket(bucket) is None:
        raise errors.NoSuchBucket(f"no bucket named {bucket}", bucket=bucket)
    end = prefix + "\U0010ffff" if prefix else None
    start, inclusive = prefix, True
    objects = size = 0
    while True:
        batch = await tier.meta.list_versions(bucket, start, inclusive, end, 1000)
        if not batch:
            return objects, size
        # Concurrent pins share the metadata store's group commits: a few transactions per batch, not 1000.
        await asyncio.gather(*(tier.meta.pin(bucket, v.key, until) for v in batch))
        objects += len(batch)
        size += sum(v.size for v in batch)
        start, inclusive = batch[-1].key, False
