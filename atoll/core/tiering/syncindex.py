"""The sync-index job: import a cold store's listing into the index, so listings stop touching the WAN.

The cold listing is walked in key order, a page (~1,000 keys) at a time, while the next page is already on its
way. Each page is compared with the index rows of the same key range, read in one go:

    only in the cold store                  -> an absent row (metadata only; bytes come on first read)
    in both, another cold ETag, row clean   -> replaced by an absent row of the new cold object
    in both, same cold ETag                 -> unchanged (not rewritten: a re-run costs reads only)
    only in the index, with a cold identity -> removed when clean (the cold store no longer has it)
    rows without a cold identity            -> never touched: local writes not drained yet, or local objects
    keys with a pending delete              -> not re-imported: the cold copy is on its way out

Additions and updates are applied per page, one transaction each. Removals wait until the walk has ended and
proved the listing was in ascending order: a key range is only known to be complete when the listing is sorted,
so an unordered one (a local directory, or a store that sorts differently) removes nothing that run. Every
change is conditional on the row the decision was made from (``apply_cold_listing``), so a write racing the
import wins. When the whole bucket has been imported, the bucket is marked synced and listings come from the
index alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import asdict, dataclass
from typing import AsyncIterator, Awaitable, Callable

from atoll import errors
from atoll.core.listing import prefix_successor
from atoll.core.models import Link, ObjectVersion
from atoll.core.namespace import MAX_KEY_BYTES
from atoll.core.tiering.listing import cold_directory, cold_offset, listing_is_ordered, mark_synced
from atoll.stores.cold.store import ColdObject, Traffic

log = logging.getLogger("atoll.syncindex")

PAGE = 1000
_INDEX_READ = 2000
_REMOVALS_PER_TRANSACTION = 1000


@dataclass(slots=True)
class SyncCounts:
    listed: int = 0
    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    kept_local: int = 0  # rows without a cold identity, or dirty ones, that the cold store also has
    skipped: int = 0  # cold keys with a pending delete here, or too long to be S3 keys
    conflicts: int = 0  # rows that changed while the import looked at them; left as they are
    ordered: bool = True


async def run_sync_index(ctx) -> None:
    """Job handler for kind "sync-index" (``ctx``: the job runner's JobContext)."""
    tier, job = ctx.tier, ctx.job
    spec = job.spec or {}
    prefix = str(spec.get("prefix") or "")
    link = await tier.meta.get_link(job.bucket)
    if link is None:
        raise errors.InvalidRequest(f"bucket {job.bucket} is not linked to a cold store")
    bucket = await tier.meta.get_bucket(job.bucket)
    if bucket is None:
        raise errors.NoSuchBucket(bucket=job.bucket)
    importer = IndexImport(tier, link, bucket.owner_id, prefix, ctx.report)
    await importer.run()
    if not prefix:
        current = await tier.meta.get_link(job.bucket)
        if current is not None and current.url == link.url:  # not re-linked elsewhere meanwhile
            await mark_synced(tier.meta, job.bucket)


class IndexImport:
    def __init__(self, tier, link: Link, owner_id: str, prefix: str,
                 report: Callable[..., Awaitable[None]]) -> None:
        self.tier = tier
        self.meta = tier.meta
        self.link = link
        self.bucket = link.bucket
        self.owner_id = owner_id
        self.prefix = prefix
        self.end = prefix_successor(prefix) if prefix else None
        self.report = report
        self.counts = SyncCounts()
        self._removals: list[tuple[str, str]] = []
        self._started = 0.0
        # One page's changes are committed while the next page is compared (they touch disjoint key ranges).
        self._applying: tuple[asyncio.Task, int] | None = None

    async def run(self) -> SyncCounts:
        self._started = time.monotonic()
        directory = cold_directory(self.prefix)
        store = self.tier.store(self.link)
        self.counts.ordered = listing_is_ordered(store)
        if not self.counts.ordered:
            log.warning("sync-index of bucket %s: its cold store does not list in key order; keys the cold store "
                        "no longer has are not removed from the index", self.bucket)
        # Where the index range of the next page starts: the prefix itself, then just after each page.
        self._lower, self._lower_inclusive = self.prefix, True
        self._last_key: str | None = None
        if directory is not None:
            offset = cold_offset(self.prefix, True) if self.counts.ordered else ""
            pages = store.list(directory, Traffic.STAGE, offset=offset or None, page_size=PAGE)
            try:
                async with contextlib.aclosing(_read_ahead(pages)) as ahead:
                    async for page in ahead:
                        objects = [o for o in page if o.key.startswith(self.prefix)]
                        self.counts.listed += len(objects)
                        if objects:
                            await self._import_page(objects)
                        await self._progress()
                        if self.counts.ordered and self.end is not None and page and page[-1].key >= self.end:
                            break  # sorted: nothing further can start with the prefix
            finally:
                await self._applied()
        if self.counts.ordered:
            await self._read_index(self._lower, self._lower_inclusive, self.end)
            for at in range(0, len(self._removals), _REMOVALS_PER_TRANSACTION):
                chunk = self._removals[at:at + _REMOVALS_PER_TRANSACTION]
                self.counts.removed += await self.meta.apply_cold_listing(self.bucket, [], chunk)
        self._removals = []
        await self._progress(final=True)
        return self.counts

    async def _import_page(self, objects: list[ColdObject]) -> None:
        if self.counts.ordered and not _ascending(objects, self._last_key):
            self.counts.ordered = False
            self._removals = []
            log.warning("sync-index of bucket %s: the cold listing is not in key order; keys the cold store no "
                        "longer has are not removed from the index in this run", self.bucket)
        if self.counts.ordered:
            high = objects[-1].key
            # Every index row in (previous page's last key, this page's last key]: the cold store listed all of
            # its keys in that range, so a row with a cold identity that it did not list is gone from there.
            rows = await self._read_index(self._lower, self._lower_inclusive, high + "\0",
                                          listed={o.key for o in objects})
            self._lower, self._lower_inclusive, self._last_key = high, False, high
        else:
            rows = {}
            for obj in objects:
                row = await self.meta.get_object(self.bucket, obj.key)
                if row is not None:
                    rows[obj.key] = row
        # Journaled writes are rare next to imported keys: look them up one by one only where a page has any.
        # (apply_cold_listing re-checks inside its transaction; this is for exact counts.)
        keys = sorted(rows.keys() | {o.key for o in objects})
        dirty_here = await self.meta.drain_pending_in(self.bucket, os.path.commonprefix([keys[0], keys[-1]]), "")
        upserts: list[tuple[ObjectVersion, str | None]] = []
        for obj in objects:
            row = rows.get(obj.key)
            if row is not None and row.cold_etag == obj.etag:
                self.counts.unchanged += 1
            elif len(obj.key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
                self.counts.skipped += 1
            elif row is None:
                if dirty_here and await self.meta.get_drain(self.bucket, obj.key) is not None:
                    self.counts.skipped += 1  # deleted here; the delete has not reached the cold store yet
                    continue
                upserts.append((self.tier.version_from_cold(self.bucket, self.owner_id, obj), None))
                self.counts.added += 1
            elif not row.cold_etag or (dirty_here and await self.meta.get_drain(self.bucket, obj.key) is not None):
                self.counts.kept_local += 1
            else:
                upserts.append((self.tier.version_from_cold(self.bucket, self.owner_id, obj), row.version_id))
                self.counts.updated += 1
        if upserts:
            await self._applied()
            task = asyncio.get_running_loop().create_task(self.meta.apply_cold_listing(self.bucket, upserts, []))
            self._applying = (task, len(upserts))

    async def _applied(self) -> None:
        """Wait for the page being committed, if any."""
        if self._applying is None:
            return
        task, planned = self._applying
        self._applying = None
        applied = await task
        self.counts.conflicts += planned - applied

    async def _read_index(self, start: str, inclusive: bool, end: str | None,
                          listed: set[str] | None = None) -> dict[str, ObjectVersion]:
        """The index rows of the range whose keys the cold store ``listed``; the others that carry a cold
        identity become removal candidates."""
        kept: dict[str, ObjectVersion] = {}
        while True:
            rows = await self.meta.list_versions(self.bucket, start, inclusive, end, _INDEX_READ)
            for row in rows:
                if listed is not None and row.key in listed:
                    kept[row.key] = row
                elif row.cold_etag:
                    self._removals.append((row.key, row.version_id))
            if len(rows) < _INDEX_READ:
                return kept
            start, inclusive = rows[-1].key, False

    async def _progress(self, final: bool = False) -> None:
        elapsed = max(time.monotonic() - self._started, 1e-6)
        progress = asdict(self.counts)
        progress["rate"] = round(self.counts.listed / elapsed, 1)
        if final:
            progress["seconds"] = round(elapsed, 3)
        await self.report(**progress)


def _ascending(objects: list[ColdObject], after: str | None) -> bool:
    previous = after
    for obj in objects:
        if previous is not None and obj.key <= previous:
            return False
        previous = obj.key
    return True


async def _read_ahead(pages: AsyncIterator[list[ColdObject]], depth: int = 2) -> AsyncIterator[list[ColdObject]]:
    """The pages of ``pages``, the next ones fetched while the caller works on the current one."""
    queue: asyncio.Queue = asyncio.Queue(depth)
    done = object()

    async def produce() -> None:
        try:
            async for page in pages:
                await queue.put(page)
        except Exception as exc:  # noqa: BLE001 - handed to the consumer
            await queue.put(exc)
            return
        await queue.put(done)

    producer = asyncio.get_running_loop().create_task(produce())
    try:
        while True:
            item = await queue.get()
            if item is done:
                return
            if isinstance(item, Exception):
                raise item
            yield item
    finally:
        while not producer.done():
            producer.cancel()
            # A cancellation can be lost (asyncio.wait_for in the cold store's listing may swallow it when its
            # page arrives at the same moment): never leave the producer stuck on a full queue.
            with contextlib.suppress(asyncio.QueueEmpty):
                queue.get_nowait()
            await asyncio.wait({producer}, timeout=0.05)
        await pages.aclose()  # type: ignore[attr-defined]
