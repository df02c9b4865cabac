"""Tiering: what a bucket linked to a cold store adds to the namespace.

The namespace asks this module three things: *what is this key* (the index, else one single-flight cold lookup,
with 404s remembered briefly), *give me these bytes* (local when resident, else a read-through fill), and *how
does a write on this bucket travel* (refused on a cache, journaled on write-back, sent first on write-through).
The object row (residency, cold identity, pins, SIEVE order) is the one truth; this module keeps only caches
and in-flight work in memory, all of which a restart may lose without losing anything else.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Awaitable, Callable, Mapping, TypeVar

from atoll import errors
from atoll import metrics
from atoll.core import cluster
from atoll.core.models import ABSENT, RESIDENT, STORED_HEADERS, Link, ObjectVersion
from atoll.core.tasks import cancel_and_wait
from atoll.core.tiering.readthrough import Filler
from atoll.stores.cold import links as cold_links
from atoll.stores.cold.endpoint import CLOSED, BreakerSettings, Endpoint, TrafficPolicy
from atoll.stores.cold.store import ColdObject, ColdStore, Timeouts, Traffic
from atoll.stores.data.base import DataStore
from atoll.stores.meta.base import MetaStore

log = logging.getLogger("atoll.tiering")

_LINK_TTL = 1.0
T = TypeVar("T")

_HEADER_NAMES = {canonical.lower(): lower for canonical, lower in STORED_HEADERS}


# Cold multipart uploads in progress are owned through a cluster lease row each (atoll.core.cluster); the row
# outlives any upload (the owner's liveness decides, not the expiry) and goes with the record.
COLD_UPLOAD_LEASE = "cold-upload:"
COLD_UPLOAD_OWNERSHIP = 7 * 86400.0
COLD_UPLOAD_UNCLAIMED = 5.0


@dataclass(slots=True)
class TierSettings:
    fill_block_size: int = 8 << 20
    fill_parallelism: int = 8
    negative_ttl: float = 5.0
    warm_capacity: int = 0
    high_watermark: float = 0.90
    low_watermark: float = 0.80
    drain_concurrency: int = 8
    drain_bandwidth: int = 0
    stage_concurrency: int = 16
    timeouts: Timeouts = field(default_factory=Timeouts)
    breaker: BreakerSettings = field(default_factory=BreakerSettings)
    traffic: TrafficPolicy = field(default_factory=TrafficPolicy)
    degraded_latency: float = 1.0
    writethrough_on_partition: str = "refuse"  # refuse | writeback
    cold_defaults: Mapping[str, str] = field(default_factory=dict)
    secrets_path: str = ""


def warm_seq_now() -> int:
    """Insertion order for SIEVE: microseconds, so rows written by several processes interleave sensibly."""
    return time.time_ns() // 1000


def split_attributes(attributes: Mapping[str, str] | None) -> tuple[dict[str, str], dict[str, str]]:
    """obstore attributes of a cold object -> (stored headers, user metadata) as S3 keeps them."""
    headers: dict[str, str] = {}
    user_meta: dict[str, str] = {}
    for name, value in (attributes or {}).items():
        lower = name.lower()
        if lower in _HEADER_NAMES:
            headers[_HEADER_NAMES[lower]] = value
        elif lower == "storage-class":
            continue
        else:
            user_meta[lower] = value
    return headers, user_meta


def join_attributes(version: ObjectVersion) -> dict[str, str]:
    """The inverse, for uploads: stored headers by their canonical names, user metadata by its own."""
    attributes = {canonical: version.headers[lower] for canonical, lower in STORED_HEADERS
                  if lower in version.headers and canonical != "Expires"}
    attributes.update(version.user_meta)
    return attributes


class SingleFlight:
    """Concurrent callers with the same key share one call's outcome."""

    def __init__(self) -> None:
        self._calls: dict[object, asyncio.Future] = {}

    async def run(self, key: object, call: Callable[[], Awaitable[T]]) -> T:
        pending = self._calls.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future = asyncio.get_running_loop().create_future()
        self._calls[key] = future
        try:
            result = await call()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning when nobody else waited
            raise
        else:
            future.set_result(result)
            return result
        finally:
            del self._calls[key]


class Tiering:
    def __init__(self, meta: MetaStore, data: DataStore, settings: TierSettings) -> None:
        self.meta = meta
        self.data = data
        self.settings = settings
        self.secrets = cold_links.SecretFile(settings.secrets_path) if settings.secrets_path else None
        self._links: dict[str, tuple[Link | None, float]] = {}
        self._stores: dict[tuple, ColdStore] = {}
        self._negative: dict[tuple[str, str], float] = {}
        self._lookups = SingleFlight()
        self._revalidated: dict[str, float] = {}
        self._visited: set[tuple[str, str, str]] = set()
        self.endpoints: dict[str, Endpoint] = {}
        self._uploading: set[tuple[str, str]] = set()
        self._leftovers_due = 0.0
        self._probers: dict[str, ColdStore] = {}  # endpoint key -> a store to probe it with
        self._bucket_tenants: dict[str, str] = {}  # bucket -> tenant, refreshed with the link
        self._wan_weights: dict[str, float] = {}  # tenant -> its weight on cold links, refreshed with the links
        self._warm_caps: dict[str, int] = {}  # tenant -> its warm cap (0: none), refreshed with the links
        self.filler = Filler(self)
        self._capacity_seen = (0, -1.0)  # (capacity, when): statvfs at most once a second
        self._resident_seen = (0, -1.0)  # (resident bytes, when), for admissions far from the capacity

    # links ---------------------------------------------------------------------------------------------
    async def link(self, bucket: str) -> Link | None:
        now = time.monotonic()
        cached = self._links.get(bucket)
        if cached is not None and now - cached[1] < _LINK_TTL:
            return cached[0]
        link = await self.meta.get_link(bucket)
        if len(self._links) > 10000:
            self._links.clear()
        self._links[bucket] = (link, now)
        if link is not None:
            await self._note_tenant(bucket)
        return link

    async def _note_tenant(self, bucket: str) -> None:
        """Whose share of the WAN the bucket's transfers use, and that tenant's weight."""
        row = await self.meta.get_bucket(bucket)
        if row is None:
            return
        if len(self._bucket_tenants) > 10000:
            self._bucket_tenants.clear()
        self._bucket_tenants[bucket] = row.tenant
        tenant = await self.meta.get_tenant(row.tenant)
        self._wan_weights[row.tenant] = tenant.wan_weight if tenant is not None and tenant.wan_weight > 0 else 1.0
        self._warm_caps[row.tenant] = tenant.warm_cap if tenant is not None else 0

    def wan_weight(self, tenant: str) -> float:
        return self._wan_weights.get(tenant, 1.0)

    def forget_link(self, bucket: str) -> None:
        self._links.pop(bucket, None)

    def store(self, link: Link) -> ColdStore:
        # Every (re-)link stamps ``created``, so a link's row identifies its settings, secrets included: the
        # secret file is read only when a store is built, not on every cold call.
        cache_key = (link.bucket, link.url, tuple(sorted(link.options.items())), link.created)
        store = self._stores.get(cache_key)
        if store is None:
            newer = [(k[3], v) for k, v in self._stores.items() if k[0] == link.bucket and k[3] > link.created]
            if newer:
                # A link row older than a store already built (this worker's link cache lags a re-link by up
                # to _LINK_TTL): the secret file now holds the new link's secrets, so building the old link
                # would mix them with its options. The bucket's newest store is where it is linked now.
                return max(newer, key=lambda item: item[0])[1]
            secrets = self.secrets.get(link.bucket) if self.secrets else {}
            store = cold_links.build(link.url, {**link.options, **secrets}, self.settings.cold_defaults or {},
                                     self.settings.timeouts, self._endpoint)
            self._stores = {k: v for k, v in self._stores.items() if k[0] != link.bucket}
            self._stores[cache_key] = store
            self._probers[store.endpoint.key] = store
        store.tenant = self._bucket_tenants.get(link.bucket, "")
        return store

    def stores(self) -> list[ColdStore]:
        return list(self._stores.values())

    def _endpoint(self, key: str) -> Endpoint:
        endpoint = self.endpoints.get(key)
        if endpoint is None:
            s = self.settings
            endpoint = self.endpoints[key] = Endpoint(key, breaker=s.breaker, policy=s.traffic,
                                                      degraded_latency=s.degraded_latency, weight_of=self.wan_weight)
        return endpoint

    def reachable(self, link: Link) -> bool:
        """False while the breaker of the link's endpoint is open (calls would fail at once)."""
        try:
            return self.store(link).health.breaker.state == CLOSED
        except errors.AtollError:
            return True  # a misconfigured link fails on use, with its own message

    def check_endpoints(self) -> None:
        """Probe endpoints whose breaker is due for a half-open probe, and quiet links with transfers that
        stopped moving (a partition freezes open connections without an error): a dead link is found, and a
        healed one noticed, without waiting for client traffic."""
        for key, endpoint in list(self.endpoints.items()):
            store = self._probers.get(key)
            if store is None:
                continue
            breaker = endpoint.health.breaker
            if breaker.state != CLOSED:
                due = breaker.retry_after() == 0.0
            else:
                # Compared with the limit, not with ``quiet``: a success that landed after the stuck transfer
                # last moved would otherwise keep the probe away for as long as the transfer stays stuck.
                limit = max(2.0, store.timeouts.first_byte)
                due = endpoint.quiet_for() > limit and time.time() - endpoint.health.last_success > limit
            if due and endpoint.probe is None:
                endpoint.probe = asyncio.get_running_loop().create_task(store.probe())
                endpoint.probe.add_done_callback(lambda _task, e=endpoint: setattr(e, "probe", None))

    # lookups -------------------------------------------------------------------------------------------
    def version_from_cold(self, bucket: str, owner_id: str, cold: ColdObject, *, residency: str = ABSENT,
                          version_id: str | None = None) -> ObjectVersion:
        headers, user_meta = split_attributes(cold.attributes)
        return ObjectVersion(
            bucket=bucket, key=cold.key, version_id=version_id or self.data.new_blob_id(), size=cold.size,
            etag=cold.etag, last_modified=cold.mtime, headers=headers, user_meta=user_meta, owner_id=owner_id,
            residency=residency, cold_etag=cold.etag, cold_mtime=cold.mtime,
            warm_seq=warm_seq_now() if residency != ABSENT else 0,
        )

    async def resolve(self, link: Link, owner_id: str, key: str,
                      version: ObjectVersion | None) -> ObjectVersion | None:
        """The version to serve for ``key`` of a linked bucket, given what the index holds (``version``)."""
        if version is None:
            return await self._lookup(link, owner_id, key)
        ttl = link.revalidate_seconds
        if ttl is None or version.residency == ABSENT or not version.cold_etag:
            return version
        checked = self._revalidated.get(version.version_id, 0.0)
        if ttl and time.monotonic() - checked < ttl:
            return version
        return await self._revalidate(link, owner_id, version)

    async def _lookup(self, link: Link, owner_id: str, key: str) -> ObjectVersion | None:
        negative_key = (link.bucket, key)
        until = self._negative.get(negative_key)
        if until is not None:
            if time.monotonic() < until:
                return None
            del self._negative[negative_key]

        async def ask() -> ObjectVersion | None:
            pending = await self.meta.get_drain(link.bucket, key)
            if pending is not None and pending.op == "delete":
                return None  # deleted here; the cold copy is on its way out
            cold = await self.store(link).head_with_attributes(key, Traffic.DEMAND)
            if cold is None:
                if len(self._negative) > 100000:
                    self._negative.clear()
                self._negative[negative_key] = time.monotonic() + self.settings.negative_ttl
                return None
            return self._checked(cold, await self.meta.record_cold_version(
                self.version_from_cold(link.bucket, owner_id, cold), None))

        return await self._lookups.run(negative_key, ask)

    def _checked(self, cold: ColdObject, version: ObjectVersion | None) -> ObjectVersion | None:
        """Note that ``version`` matches what the cold store just answered: a ttl= link need not ask again
        before its TTL (the lookup was that check)."""
        if version is not None and version.cold_etag == cold.etag:
            if len(self._revalidated) > 100000:
                self._revalidated.clear()
            self._revalidated[version.version_id] = time.monotonic()
        return version

    async def _revalidate(self, link: Link, owner_id: str, version: ObjectVersion) -> ObjectVersion | None:
        if not self.reachable(link):
            return dataclasses.replace(version, stale=True)  # not even asked: the breaker is open

        async def ask() -> ObjectVersion | None:
            try:
                cold = await self.store(link).head_with_attributes(version.key, Traffic.DEMAND)
            except errors.ColdStoreUnavailable:
                # stale-if-error: the warm copy keeps serving while the cold store is away, and is checked
                # again on its next read (nothing records this as a revalidation).
                return dataclasses.replace(version, stale=True)
            self._revalidated[version.version_id] = time.monotonic()
            if len(self._revalidated) > 100000:
                self._revalidated.clear()
            if cold is not None and cold.etag == version.cold_etag:
                return version
            current = await self.meta.get_object(link.bucket, version.key)
            if current is None or current.version_id != version.version_id:
                return current
            if cold is None:
                # Deleted in the cold store: a clean copy goes too (a dirty one is newer and will drain).
                removed = await self.meta.apply_cold_listing(link.bucket, [], [(version.key, version.version_id)])
                return None if removed else await self.meta.get_object(link.bucket, version.key)
            return self._checked(cold, await self.meta.record_cold_version(
                self.version_from_cold(link.bucket, owner_id, cold), version.version_id))

        return await self._lookups.run(("revalidate", version.version_id), ask)

    async def with_attributes(self, link: Link, version: ObjectVersion) -> ObjectVersion:
        """An absent version imported from a listing has no content type or user metadata (listings carry
        none): before its first GET answers, read them with one cold HEAD and record them. HEADs of such keys
        stay index-only."""
        # warm_seq > 0: warm once (written here, or filled), then evicted; its row is whole, and replacing it with
        # the cold object's would change its ETag and Last-Modified (an Azure ETag is no MD5) and drop checksums.
        if version.residency != ABSENT or "content-type" in version.headers or version.warm_seq > 0:
            return version

        async def ask() -> ObjectVersion:
            cold = await self.store(link).head_with_attributes(version.key, Traffic.DEMAND)
            if cold is None or cold.etag != version.cold_etag:
                # Gone or changed: the fill's If-Match will find out and record what the cold store has now.
                return version
            recorded = await self.meta.record_cold_version(
                self.version_from_cold(link.bucket, version.owner_id, cold, version_id=version.version_id),
                version.version_id)
            return recorded if recorded is not None and recorded.version_id == version.version_id else version

        return await self._lookups.run(("attributes", version.version_id), ask)

    async def replace_changed(self, link: Link, version: ObjectVersion) -> None:
        """A fill found the cold object changed under it: record what the cold store has now."""
        self._revalidated.pop(version.version_id, None)
        try:
            await self._revalidate(link, version.owner_id, version)
        except errors.AtollError:
            log.warning("could not re-read a changed cold object of bucket %s", link.bucket)

    # uploads -------------------------------------------------------------------------------------------
    async def upload(self, link: Link, version: ObjectVersion, traffic: Traffic) -> ColdObject:
        """Send a wholly warm version to the link's cold store under its key. A multipart upload is recorded
        before it starts, so that whatever a failure or a crash leaves in the cold store is found and aborted
        (``clean_leftovers``), never left to cost money."""
        from atoll.core.tiering.upload import PART_SIZE, upload_version

        store = self.store(link)
        record = None
        if version.size > PART_SIZE and store.leaves_uploads:
            record = await self.meta.note_cold_upload(link.bucket, version.key, time.time())
            # Whose upload it is, for the other nodes' clean_leftovers (which must leave a live one alone).
            await self.meta.claim_cluster_lease(f"{COLD_UPLOAD_LEASE}{record}", cluster.process_owner(),
                                                COLD_UPLOAD_OWNERSHIP)
        self._uploading.add((link.bucket, version.key))
        try:
            cold = await upload_version(store, self.data, version, traffic, attributes=join_attributes(version))
        except BaseException:
            self._uploading.discard((link.bucket, version.key))
            if record is not None:  # no longer anyone's: the record is a leftover now
                await self._disown_cold_upload(record)
            self._leftovers_due = 0.0  # clean up at the drainer's next turn
            raise
        finally:
            self._uploading.discard((link.bucket, version.key))
        if record is not None:
            await self.meta.forget_cold_upload(record)
            await self.meta.release_cluster_lease(f"{COLD_UPLOAD_LEASE}{record}", cluster.process_owner())
        return cold

    async def clean_leftovers(self) -> int:
        """Abort what recorded multipart uploads that never finished left in their cold stores; a record stays
        until its cold store could be asked. Returns how many records were settled."""
        if time.monotonic() < self._leftovers_due:
            return 0
        self._leftovers_due = time.monotonic() + 30.0
        if not await cluster.hold_singleton("cold-leftovers"):
            return 0
        settled = 0
        records = await self.meta.list_cold_uploads()
        live = await self._live_cold_uploads(records)
        live_keys = {(bucket, key) for record, bucket, key, _ in records if record in live}
        for record, bucket, key, _started in records:
            if (bucket, key) in self._uploading or (bucket, key) in live_keys:
                continue  # still running here or on a live node (a record is only for uploads that may have died)
            link = await self.link(bucket)
            try:
                if link is not None and self.reachable(link):
                    aborted = await self.store(link).abort_leftovers(key)
                    if aborted:
                        log.info("aborted %d unfinished multipart upload(s) in the cold store of bucket %s",
                                 aborted, bucket)
                elif link is not None:
                    # Its cold store is down: look again within a second, so the abort follows the heal
                    # instead of the next 30 s round.
                    self._leftovers_due = min(self._leftovers_due, time.monotonic() + 1.0)
                    continue
            except errors.AtollError as exc:
                log.warning("cannot clean up an unfinished multipart upload in bucket %s yet (%s)", bucket,
                            exc.message)
                continue
            await self.meta.forget_cold_upload(record)
            await self.meta.release_cluster_lease(f"{COLD_UPLOAD_LEASE}{record}", None)
            settled += 1
        return settled

    async def _live_cold_uploads(self, records) -> set[int]:
        """The records whose upload still runs in another process (alive by its pid on this node, by its node's
        heartbeat elsewhere); this process's own are in ``_uploading``. A record without an owner is a leftover
        unless it is a moment old (its uploader is about to claim it)."""
        live: set[int] = set()
        now = time.time()
        me = cluster.process_owner()
        for record, _bucket, _key, started in records:
            lease = await self.meta.get_cluster_lease(f"{COLD_UPLOAD_LEASE}{record}")
            if lease is None:
                if now - started < COLD_UPLOAD_UNCLAIMED:
                    live.add(record)
                    self._leftovers_due = min(self._leftovers_due, time.monotonic() + COLD_UPLOAD_UNCLAIMED)
            elif lease.owner != me and await cluster.owner_alive(lease.owner):
                live.add(record)
        return live

    async def _disown_cold_upload(self, record: int) -> None:
        try:
            await self.meta.release_cluster_lease(f"{COLD_UPLOAD_LEASE}{record}", cluster.process_owner())
        except errors.AtollError:
            pass  # the record stays owned by this process, which clean_leftovers treats as not running

    def after_write(self, link: Link, key: str) -> None:
        self._negative.pop((link.bucket, key), None)
        drainer = getattr(self, "drainer", None)
        if drainer is not None and link.mode == "writeback":
            drainer.wake()

    # reads ---------------------------------------------------------------------------------------------
    def touch(self, version: ObjectVersion) -> None:
        """Note a warm hit for SIEVE; flushed to the index in batches (a write per read would cost more than
        the read)."""
        if version.warm_seq > 0 and len(self._visited) < 200000:
            self._visited.add((version.bucket, version.key, version.version_id))
        metrics.TIER_HITS.labels(version.bucket).inc()

    async def flush_visited(self) -> None:
        if self._visited:
            batch, self._visited = list(self._visited), set()
            await self.meta.set_visited(batch, True)

    async def read(self, link: Link, version: ObjectVersion, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes [start, end) of a version that is not (wholly) resident, filling the warm copy on the way."""
        metrics.TIER_MISSES.labels(version.bucket).inc()
        return await self.filler.read(link, version, start, end)

    # background work ---------------------------------------------------------------------------------
    def start_background(self, primary: bool) -> None:
        """Drain, eviction and jobs run in the primary worker; every worker flushes its SIEVE hits."""
        from atoll.core.tiering.drain import Drainer
        from atoll.core.tiering.evict import Evictor

        loop = asyncio.get_running_loop()
        self.evictor = Evictor(self)
        self._tasks: list[asyncio.Task] = [loop.create_task(self._health_loop())]
        if primary:
            self.drainer = Drainer(self)
            self._tasks += [loop.create_task(self.drainer.run()), loop.create_task(self.evictor.run())]
            runner = getattr(self, "job_runner", None)
            if runner is not None:
                self._tasks.append(loop.create_task(runner.run()))
        else:
            self._tasks.append(loop.create_task(self._flush_loop()))

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            try:
                self.check_endpoints()
            except Exception:  # noqa: BLE001
                log.exception("checking cold endpoints failed")

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(2.0)
            try:
                await self.flush_visited()
            except Exception:  # noqa: BLE001
                log.exception("flushing read hits failed")

    async def stop_background(self) -> None:
        drainer = getattr(self, "drainer", None)
        if drainer is not None:
            await drainer.stop()
        for endpoint in self.endpoints.values():
            if endpoint.probe is not None:
                endpoint.probe.cancel()
        await cancel_and_wait(*getattr(self, "_tasks", []))
        try:
            await self.flush_visited()
        except Exception:  # noqa: BLE001
            pass

    # capacity ------------------------------------------------------------------------------------------
    def capacity(self) -> int:
        if self.settings.warm_capacity:
            return self.settings.warm_capacity
        capacity, when = self._capacity_seen
        now = time.monotonic()
        if now - when > 1.0:
            import os

            st = os.statvfs(getattr(self.data, "root", "."))
            capacity = int(st.f_blocks * st.f_frsize * 0.9)
            self._capacity_seen = (capacity, now)
        return capacity

    async def has_room(self, size: int, bucket: str | None = None) -> bool:
        """Whether ``size`` more bytes fit in the warm tier, and (for a fill of ``bucket``) within its tenant's
        warm cap. Far from the capacity (more than 1% of it, at least 64 MiB, to spare) the resident bytes read
        up to 50 ms ago are good enough: a storm of small PUTs does not pay a counter read each; near it, every
        admission reads the counter."""
        capacity = self.capacity()
        resident, when = self._resident_seen
        now = time.monotonic()
        if now - when > 0.05 or resident + size + max(capacity // 100, 64 << 20) > capacity:
            resident = await self.meta.resident_bytes()
            self._resident_seen = (resident, now)
        if resident + size > capacity:
            return False
        tenant = self._bucket_tenants.get(bucket) if bucket is not None else None
        cap = self._warm_caps.get(tenant, 0) if tenant is not None else 0
        return not cap or (await self.meta.warm_bytes_by_tenant()).get(tenant, 0) + size <= cap

    def is_resident(self, version: ObjectVersion) -> bool:
        return version.residency == RESIDENT
