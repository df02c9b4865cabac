"""The drain: journaled writes and deletes of write-back buckets travel to their cold stores.

The journal is the ``drain`` table: one entry per key, written in the same transaction as the object row, so an
acknowledged write is never without its entry. A newer write replaces the entry (only the newest bytes cross the
WAN) but keeps its claim, so bytes of two versions of a key are never in flight at once and the older can never
land last. An upload is idempotent (the same key gets the same bytes), so a drainer that crashed mid-way is
simply redone after its claim lapses; start-up voids every claim at once.

Partitions: entries of buckets whose cold endpoint is unreachable (breaker open) are not taken at all, so a
long partition costs no attempts and no database churn; when the link returns, the drain restarts at one upload
and widens by one per success up to ``drain_concurrency`` (halving on each failure), so a healed link is not
hit by a thundering herd. Claims are renewed while an upload runs, so a slow upload is never taken twice.

Tenants: each claim shares the free upload slots between the tenants with due entries in proportion to their WAN
weights, counting the uploads each already has running, so one tenant's 5 TB backlog never holds every slot and
the link's bytes (shared per connection) follow the weights.

Checkpoint groups: a key under a group's prefix whose basename is one of the group's markers waits until no
other entry of its directory is pending, so a reader of the cold store sees the marker only after every other
file of that checkpoint is there.
"""

from __future__ import annotations

import asyncio
import logging
import posixpath
import random
import time
from typing import TYPE_CHECKING

from atoll import errors, metrics
from atoll.core import cluster
from atoll.core.models import CheckpointGroup, DrainEntry
from atoll.stores.cold.store import Traffic

if TYPE_CHECKING:
    from atoll.core.tiering.tier import Tiering

log = logging.getLogger("atoll.drain")

CLAIM_SECONDS = 300.0
_RENEW_EVERY = CLAIM_SECONDS / 3
_IDLE_POLL = 1.0
_OWNERS_EVERY = 2.0  # seconds between looks for claims of dead owners (in a cluster)
_GROUP_TTL = 2.0
DEFAULT_MARKERS = (".metadata", "_SUCCESS", "_COMMITTED")


def marker_directory(key: str, groups: list[CheckpointGroup]) -> str | None:
    """The directory (prefix ending in '/', or '' at the top) that ``key`` closes, if it is a group marker."""
    name = posixpath.basename(key)
    for group in groups:
        if key.startswith(group.prefix) and name in group.markers:
            return key[: len(key) - len(name)]
    return None


class Drainer:
    def __init__(self, tier: "Tiering") -> None:
        self.tier = tier
        self.limit = max(1, tier.settings.drain_concurrency)
        self.window = self.limit  # uploads allowed at once now: halved on failure, +1 per success
        self._wake = asyncio.Event()
        self._groups: dict[str, tuple[list[CheckpointGroup], float]] = {}
        self._active: dict[asyncio.Task, DrainEntry] = {}
        self._renewed = time.monotonic()
        self._owners_checked = 0.0

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        meta = self.tier.meta
        while True:
            try:
                if await meta.get_flag("drain_paused"):
                    await self._sleep(_IDLE_POLL)
                    continue
                await self._renew_claims()
                await self._void_dead_claims()
                await self.tier.clean_leftovers()
                free = int(self.window) - len(self._active)
                entries = await meta.take_drain(free, CLAIM_SECONDS, await self._unreachable(),
                                                self._busy_buckets()) if free > 0 else []
                if entries and not self._alone():
                    await meta.note_drain_claims(entries, cluster.process_owner())
                for entry in entries:
                    task = asyncio.get_running_loop().create_task(self._drain_one(entry))
                    self._active[task] = entry
                    task.add_done_callback(self._done)
                if not entries:
                    await self._sleep(_IDLE_POLL)
            except asyncio.CancelledError:
                raise
            except errors.Unavailable as exc:  # the metadata store is out of space (or busy): next round
                log.warning("drain round postponed: %s", exc.message)
                await asyncio.sleep(1.0)
            except Exception:  # noqa: BLE001 - the loop must outlive any one failure
                log.exception("drain loop failed; retrying")
                await asyncio.sleep(1.0)

    def _busy_buckets(self) -> dict[str, int]:
        """Entries being drained now, per bucket: the claim weighs tenants by what they already have."""
        busy: dict[str, int] = {}
        for entry in self._active.values():
            busy[entry.bucket] = busy.get(entry.bucket, 0) + 1
        return busy

    def _done(self, task: asyncio.Task) -> None:
        self._active.pop(task, None)
        self._wake.set()

    async def _unreachable(self) -> list[str]:
        """Buckets whose cold endpoint is down: their entries wait, untouched, until it is back."""
        if all(endpoint.health.breaker.state == "closed" for endpoint in self.tier.endpoints.values()):
            return []  # the usual case: no need to read every link on every turn of the loop
        return [link.bucket for link in await self.tier.meta.list_links() if not self.tier.reachable(link)]

    async def _renew_claims(self) -> None:
        if self._active and time.monotonic() - self._renewed > _RENEW_EVERY:
            self._renewed = time.monotonic()
            await self.tier.meta.renew_drain(list(self._active.values()), CLAIM_SECONDS)

    def _alone(self) -> bool:
        current = cluster.current()
        return current is None or current.alone()

    async def _void_dead_claims(self) -> None:
        """Claims named on a process that is gone (a killed node, a crashed worker) are voided now rather than
        when they lapse. Looked at every few seconds; alone, start-up voided every earlier claim already."""
        if self._alone() or time.monotonic() - self._owners_checked < _OWNERS_EVERY:
            return
        self._owners_checked = time.monotonic()
        me = cluster.process_owner()
        for owner in await self.tier.meta.drain_claim_owners():
            if owner != me and not await cluster.owner_alive(owner):
                voided = await self.tier.meta.release_drain_claims(owner)
                if voided:
                    log.info("%d drain claim(s) of %s, which is gone, are due again", voided, owner)

    def _succeeded(self) -> None:
        self.window = min(self.limit, self.window + 1)

    def _failed(self) -> None:
        self.window = max(1, self.window // 2)

    async def _sleep(self, seconds: float) -> None:
        self._wake.clear()
        # Not asyncio.wait_for: on Python 3.11 it swallows a cancel that arrives as the wait ends, which
        # stop() makes likely (a cancelled upload wakes this), and run() would then loop on forever.
        try:
            async with asyncio.timeout(seconds):
                await self._wake.wait()
        except TimeoutError:
            pass

    async def stop(self) -> None:
        for task in list(self._active):
            task.cancel()
        if self._active:
            await asyncio.gather(*self._active, return_exceptions=True)

    async def _groups_of(self, bucket: str) -> list[CheckpointGroup]:
        cached = self._groups.get(bucket)
        now = time.monotonic()
        if cached is None or now - cached[1] > _GROUP_TTL:
            cached = (await self.tier.meta.list_groups(bucket), now)
            self._groups[bucket] = cached
        return cached[0]

    async def _drain_one(self, entry: DrainEntry) -> None:
        meta = self.tier.meta
        try:
            link = await self.tier.link(entry.bucket)
            if link is None or link.mode == "cache":
                # writethrough too: writes journaled while its cold store was unreachable drain from here
                await meta.release_drain(entry, 30.0, "the bucket is no longer linked in a writable mode")
                return
            store = self.tier.store(link)
            if entry.op == "delete":
                await store.delete(entry.key, Traffic.DRAIN)
                await meta.finish_drain(entry)
                self._succeeded()
                metrics.DRAINED.labels("delete").inc()
                return
            directory = marker_directory(entry.key, await self._groups_of(entry.bucket))
            if directory is not None and await meta.drain_pending_in(entry.bucket, directory, entry.key):
                await meta.release_drain(entry, 0.2)  # the rest of its checkpoint goes first
                return
            version = await meta.get_object(entry.bucket, entry.key)
            if version is None or version.version_id != entry.version_id:
                await meta.finish_drain(entry)  # replaced meanwhile: makes the newer entry due
                return
            if version.residency != "resident":
                # A metadata-only change (self-copy) of a copy that was evicted just before it: bring the
                # bytes back from the cold store (pinned to their cold ETag), then upload bytes and metadata.
                stream = await self.tier.read(link, version, 0, version.size)
                if stream is not None:
                    async for _ in stream:
                        pass
                version = await meta.get_object(entry.bucket, entry.key)
                if version is None or version.version_id != entry.version_id:
                    await meta.finish_drain(entry)
                    return
            cold = await self.tier.upload(link, version, Traffic.DRAIN)
            await meta.set_cold_identity(entry.bucket, entry.key, entry.version_id, cold.etag, cold.mtime)
            # A self-copy during the upload kept the version id but not the metadata just sent: redo it.
            await meta.finish_drain(entry, uploaded_modified=version.last_modified)
            self._succeeded()
            metrics.DRAINED.labels("put").inc()
            metrics.DRAINED_BYTES.inc(version.size)
            metrics.COLD_BYTES_WRITTEN.labels(Traffic.DRAIN.value).inc(version.size)
        except asyncio.CancelledError:
            raise
        except FileNotFoundError:
            await meta.finish_drain(entry)  # its blob was replaced and collected: a newer entry exists
        except (errors.AtollError, OSError) as exc:
            metrics.DRAIN_FAILURES.inc()
            self._failed()
            if isinstance(exc, errors.ColdStoreUnavailable):
                # The link, not the object: retried soon (and not at all while the breaker is open).
                delay = min(10.0, 0.5 * 2 ** min(entry.attempts, 5)) * random.uniform(0.5, 1.5)
            else:
                delay = min(60.0, 0.5 * 2 ** min(entry.attempts, 7)) * random.uniform(0.5, 1.5)
            message = exc.message if isinstance(exc, errors.AtollError) else type(exc).__name__
            log.warning("drain of an object in bucket %s failed (%s); retry in %.1fs", entry.bucket, message,
                        delay)
            await meta.release_drain(entry, delay, message)
