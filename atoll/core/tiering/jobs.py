"""Background jobs (staging, index sync): a runner in the primary worker claims them from the ``jobs`` table.

A job row is the whole truth about a job: what to do (``spec``), its state and its progress. The runner holds
a lease on the row and renews it while it works; a server killed mid-job leaves a lease that lapses (or, on
the same host, a dead owner that the next runner notices at once), and the job is claimed again and starts
over. Starting over is cheap because every job kind is idempotent: staging skips objects already warm.

Cancelling is a state change made by anyone (CLI, admin API); the runner learns of it when it next writes
progress, which it does at least every second, and stops the job's work where it is.

Staging (``run_stage``) makes a prefix or a list of keys resident: each object is fetched with a streaming GET
(closed when a miss needs the link, resumed by range after it) pinned to the cold ETag, written to a new blob
while its MD5 is computed, verified against the cold store's checksum where it has one, and committed in one
metadata transaction that replaces whatever the index held for the key, unless a write raced it.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import re
import time
from typing import TYPE_CHECKING, AsyncIterator, Awaitable, Callable

from atoll import errors, metrics
from atoll.core import cluster, ingest
from atoll.core.listing import prefix_successor
from atoll.core.models import RESIDENT, Extent, Job, ObjectVersion
from atoll.core.tiering.listing import cold_directory, cold_offset, listing_is_ordered
from atoll.stores.cold.store import ColdObject, ColdStore, Traffic

if TYPE_CHECKING:
    from atoll.core.tiering.tier import Tiering

log = logging.getLogger("atoll.jobs")

LEASE = 30.0  # seconds a claim holds without renewal; renewed every _HEARTBEAT
_HEARTBEAT = 1.0
_REPORT_INTERVAL = 0.5
_IDLE_POLL = 0.5
_ORPHAN_CHECK = 5.0  # seconds between an idle runner's looks for jobs of dead processes
PIN_FOREVER = 253402300799.0  # 9999-12-31: "pinned until unpinned"
_STOP_STATES = ("cancelled", "lost", "gone")
_MAX_ERRORS = 10
_OBJECT_ATTEMPTS = 3
_QUEUE_DEPTH = 2000


class JobCancelled(Exception):
    """The job was cancelled, or another runner took it over (``reason``: cancelled | lost | gone)."""

    def __init__(self, reason: str = "cancelled") -> None:
        super().__init__(reason)
        self.reason = reason


class JobFailed(Exception):
    """The job cannot complete; the message is shown to operators, so it carries no secret or URL."""


class JobContext:
    """What a job handler gets: the tier, its job row (whose ``progress`` it fills in) and ``report``."""

    def __init__(self, tier: "Tiering", job: Job, owner: str) -> None:
        self.tier = tier
        self.job = job
        self.owner = owner
        self.stop_reason: str | None = None
        self.refresh: Callable[[], dict] | None = None  # derived numbers (rate, ETA) brought up to date on persist
        self._last_persist = 0.0

    def check(self) -> None:
        """Raise JobCancelled if the runner has learned the job must stop."""
        if self.stop_reason is not None:
            raise JobCancelled(self.stop_reason)

    async def report(self, final: bool = False, **fields) -> None:
        """Merge ``fields`` into the progress; persist it (renewing the lease) at most every 0.5 s, always
        when ``final``. Raises JobCancelled once the job was cancelled or taken over."""
        self.job.progress.update(fields)
        self.check()
        if final or time.monotonic() - self._last_persist >= _REPORT_INTERVAL:
            await self.persist()
            self.check()

    async def persist(self) -> str:
        self._last_persist = time.monotonic()
        if self.refresh is not None:
            self.job.progress.update(self.refresh())
        state = await self.tier.meta.update_job(self.job.job_id, owner=self.owner, lease=LEASE,
                                                progress=copy.deepcopy(self.job.progress))
        if state in _STOP_STATES and self.stop_reason is None:
            self.stop_reason = state
        return state

    def seconds_since_persist(self) -> float:
        return time.monotonic() - self._last_persist


Handler = Callable[[JobContext], Awaitable[None]]


def _load_sync_index() -> Handler:
    from atoll.core.tiering.syncindex import run_sync_index

    return run_sync_index


# kind -> a loader of its handler (imported when first needed, so a kind's module is optional)
HANDLERS: dict[str, Callable[[], Handler]] = {"stage": lambda: run_stage, "sync-index": _load_sync_index}


class JobRunner:
    """Runs queued jobs one at a time, most urgent first."""

    def __init__(self, tier: "Tiering") -> None:
        self.tier = tier
        self.owner = ""
        self.current: JobContext | None = None

    async def run(self) -> None:
        self.owner = cluster.process_owner()
        await self._requeue_orphans()
        orphans_checked = time.monotonic()
        while True:
            try:
                job = await self.tier.meta.claim_job(self.owner, LEASE) if await self._claimable() else None
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the loop must outlive any one failure
                log.exception("claiming a job failed; retrying")
                await asyncio.sleep(1.0)
                continue
            if job is None:
                if time.monotonic() - orphans_checked >= _ORPHAN_CHECK:
                    # A node that died mid-job: its job is queued again once the node is seen dead, not only
                    # when its lease lapses or when some runner starts.
                    await self._requeue_orphans()
                    orphans_checked = time.monotonic()
                await asyncio.sleep(_IDLE_POLL)
                continue
            try:
                await self.run_job(job)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - its lease lapses and it is taken up again
                log.exception("running job %s failed", job.job_id)
                await asyncio.sleep(1.0)

    async def _claimable(self) -> bool:
        """Whether a claim could find anything: a read, so an idle server takes no write lock twice a second."""
        return any(job.state == "queued" or job.owner != self.owner
                   for job in await self.tier.meta.list_jobs(limit=100, active_only=True))

    async def _requeue_orphans(self) -> None:
        """Jobs left running by a process that died (kill -9, a crashed worker, a node whose heartbeat stopped) are
        queued again now rather than after their lease lapses."""
        try:
            for job in await self.tier.meta.list_jobs(limit=10000, active_only=True):
                if job.state == "running" and job.owner and not await cluster.owner_alive(job.owner):
                    log.info("job %s was left running by %s, which is gone: queued again", job.job_id, job.owner)
                    # Conditional on the dead owner still holding it: another runner may have requeued and
                    # claimed it since the listing.
                    await self.tier.meta.update_job(job.job_id, owner=job.owner, state="queued")
        except Exception:  # noqa: BLE001 - their leases lapse anyway
            log.exception("could not requeue jobs of a dead process")

    async def run_job(self, job: Job) -> None:
        ctx = JobContext(self.tier, job, self.owner)
        self.current = ctx
        log.info("job %s (%s of bucket %s) started", job.job_id, job.kind, job.bucket)
        work = asyncio.get_running_loop().create_task(self._dispatch(ctx))
        heartbeat = asyncio.get_running_loop().create_task(self._heartbeat(ctx, work))
        state, message = "done", ""
        try:
            try:
                await work
            except asyncio.CancelledError:
                if ctx.stop_reason is None or asyncio.current_task().cancelling():
                    raise  # the server is stopping
                state = ctx.stop_reason
            except JobCancelled as exc:
                state = exc.reason
            except JobFailed as exc:
                state, message = "failed", str(exc)
            except errors.AtollError as exc:
                state, message = "failed", exc.message
            except Exception as exc:  # noqa: BLE001
                log.exception("job %s failed", job.job_id)
                state, message = "failed", f"internal error ({type(exc).__name__}); see the server log"
        except asyncio.CancelledError:
            # Stopping: hand the job back so the next start takes it up at once (a cancelled one stays so).
            try:
                await asyncio.shield(self.tier.meta.update_job(job.job_id, owner=self.owner, state="queued"))
                log.info("job %s stopped with the server; queued again", job.job_id)
            except Exception:  # noqa: BLE001 - then its lease lapses
                log.exception("could not hand job %s back", job.job_id)
            raise
        finally:
            heartbeat.cancel()
            await asyncio.gather(heartbeat, return_exceptions=True)
            self.current = None
        await self._finish(ctx, state, message)

    async def _finish(self, ctx: JobContext, state: str, message: str) -> None:
        job = ctx.job
        if state in ("lost", "gone"):
            log.warning("job %s was taken over or removed while running (%s)", job.job_id, state)
            return
        if state == "done":
            job.progress["phase"] = "done"
        try:
            final = await self.tier.meta.update_job(job.job_id, owner=self.owner, state=state,
                                                    progress=copy.deepcopy(job.progress),
                                                    error=message if state == "failed" else None)
        except Exception:  # noqa: BLE001
            log.exception("could not record the end of job %s", job.job_id)
            return
        log.info("job %s %s%s", job.job_id, final, f": {message}" if message else "")

    async def _dispatch(self, ctx: JobContext) -> None:
        loader = HANDLERS.get(ctx.job.kind)
        if loader is None:
            raise JobFailed(f"unknown job kind {ctx.job.kind!r}")
        try:
            handler = loader()
        except ImportError:
            log.exception("the handler of %s jobs cannot be loaded", ctx.job.kind)
            raise JobFailed(f"{ctx.job.kind} jobs are not available in this build") from None
        await handler(ctx)

    async def _heartbeat(self, ctx: JobContext, work: asyncio.Task) -> None:
        """Renew the lease and learn of cancellation even while a handler is deep in one long transfer."""
        while True:
            await asyncio.sleep(_HEARTBEAT)
            if ctx.seconds_since_persist() < _HEARTBEAT:
                if ctx.stop_reason is not None:
                    work.cancel()
                continue
            try:
                await ctx.persist()
            except Exception:  # noqa: BLE001 - the next beat tries again; the lease is long
                log.exception("renewing the lease of job %s failed", ctx.job.job_id)
            if ctx.stop_reason is not None:
                work.cancel()


# --- staging -------------------------------------------------------------------------------------------------

_MD5_HEX = re.compile(r"^[0-9a-f]{32}$")
_MD5_ETAG_SCHEMES = ("s3", "gs")  # stores whose single-part ETags are the MD5 of the bytes


class VerificationFailed(Exception):
    """The bytes received do not match what the cold store says the object holds."""


def verify_transfer(cold_etag: str, expected_size: int, received_size: int, md5: bytes, *,
                    etag_is_md5: bool = True, content_md5: bytes | None = None) -> str:
    """How the transferred bytes were verified: "md5" (against the cold ETag when it is a plain MD5, as for an
    S3 or GCS single-part upload, or against a Content-MD5 the store reported) or "size" (multipart ETags and
    Azure's are not digests of the bytes, and obstore does not report Azure's Content-MD5). ``etag_is_md5``
    is false for stores whose 32-hex ETags need not be MD5s (Azure, file://, plain HTTP servers). Raises
    VerificationFailed on a mismatch."""
    if received_size != expected_size:
        raise VerificationFailed(f"received {received_size} bytes, the cold store lists {expected_size}")
    etag = cold_etag.strip('"').lower()
    if etag_is_md5 and _MD5_HEX.match(etag):
        if md5.hex() != etag:
            raise VerificationFailed("MD5 of the received bytes does not match the cold store's ETag")
        return "md5"
    if content_md5 is not None:
        if md5 != content_md5:
            raise VerificationFailed("MD5 of the received bytes does not match the cold store's Content-MD5")
        return "md5"
    return "size"


class _Skip(Exception):
    """The object needs no transfer (already warm, or newer local data)."""


class _Stager:
    """The state of one run of a staging job: counters, the pin, the cold store, the workers."""

    def __init__(self, ctx: JobContext) -> None:
        self.ctx = ctx
        self.tier = ctx.tier
        self.meta = ctx.tier.meta
        self.bucket = ctx.job.bucket
        spec = ctx.job.spec
        self.prefix: str = spec.get("prefix") or ""
        self.keys: list[str] | None = spec.get("keys")
        self.pin_until = 0.0
        if spec.get("pin"):
            seconds = spec.get("pin_seconds")
            self.pin_until = PIN_FOREVER if seconds is None else time.time() + float(seconds)
        self.started = time.time()
        self._started_monotonic = time.monotonic()
        self.store: ColdStore | None = None
        self.owner_id = ""
        self._commits: set[asyncio.Future] = set()
        self._reserved = 0  # bytes of transfers in flight: room is made for them before they are resident
        self.etag_is_md5 = False
        attempt = int(ctx.job.progress.get("attempt", 0)) + 1
        ctx.job.progress = {
            "phase": "listing", "listing_done": False, "attempt": attempt, "started": self.started,
            "objects_total": 0, "objects_done": 0, "objects_staged": 0, "objects_skipped": 0,
            "bytes_total": 0, "bytes_done": 0, "bytes_fetched": 0, "failed": 0, "verified": 0,
            "verified_by_size": 0, "rate_bytes_per_s": 0.0, "eta_seconds": None, "errors": [],
            "waiting_for_cold_store": False,
        }
        self.progress = ctx.job.progress
        ctx.refresh = self._rates

    async def _wait_for_link(self) -> bool:
        """While the link's cold store is unreachable (its breaker open), the job waits instead of failing its
        objects one by one; progress says so. True if it waited."""
        if self.store is None or self.store.health.breaker.state == "closed":
            return False
        self.progress["waiting_for_cold_store"] = True
        await self.report()
        while self.store.health.breaker.state != "closed":
            self.ctx.check()
            await asyncio.sleep(0.5)
        self.progress["waiting_for_cold_store"] = False
        return True

    # progress ---------------------------------------------------------------------------------------------
    def _rates(self) -> dict:
        elapsed = max(time.monotonic() - self._started_monotonic, 1e-3)
        rate = self.progress["bytes_fetched"] / elapsed
        eta = None
        if self.progress["listing_done"] and rate > 0:
            remaining = max(self.progress["bytes_total"] - self.progress["bytes_done"], 0)
            eta = round(remaining / rate, 1)
        return {"rate_bytes_per_s": round(rate, 1), "eta_seconds": eta}

    async def report(self, final: bool = False) -> None:
        await self.ctx.report(final=final)

    def _failed(self, key: str, message: str) -> None:
        self.progress["failed"] += 1
        self.progress["objects_done"] += 1
        if len(self.progress["errors"]) < _MAX_ERRORS:
            self.progress["errors"].append({"key": key[:1024], "error": message[:300]})
        log.warning("staging %s/%s failed: %s", self.bucket, key[:200], message)

    # enumeration ------------------------------------------------------------------------------------------
    async def _listing(self, queue: asyncio.Queue) -> None:
        """Feed the queue with what to stage: the cold listing under the prefix (the truth for staging), or
        the given keys resolved through the index, else a HEAD."""
        if self.keys is not None:
            await self._resolve_keys(queue)
        else:
            await self._list_prefix(queue)
        self.progress["listing_done"] = True
        self.progress["phase"] = "transferring"
        await self.report()

    async def _list_prefix(self, queue: asyncio.Queue) -> None:
        """The cold listing under the prefix. obstore lists whole path segments, so the prefix's directory is
        listed and filtered; in a store that lists in key order the walk starts at the prefix, stops past it,
        and resumes after the last key seen when a page fails."""
        directory = cold_directory(self.prefix)
        if directory is None:
            return  # no valid cold path starts with this prefix
        ordered = listing_is_ordered(self.store)
        end = prefix_successor(self.prefix) if self.prefix else None
        after: str | None = None
        failures = 0
        while True:
            if after is not None:
                offset = cold_offset(after, False)
            else:
                offset = cold_offset(self.prefix, True) if ordered and self.prefix else ""
            try:
                async for batch in self.store.list(directory, Traffic.STAGE, offset=offset or None):
                    for cold in batch:
                        if ordered and end is not None and cold.key >= end:
                            return
                        if not cold.key.startswith(self.prefix) or (after is not None and cold.key <= after):
                            continue
                        await self._enqueue(queue, cold)
                        if ordered:
                            after = cold.key
                    failures = 0
                    self.ctx.check()
                return
            except errors.ColdStoreUnavailable as exc:
                if await self._wait_for_link():
                    continue  # the link came back: the walk resumes after the last key seen
                failures += 1
                if failures >= _OBJECT_ATTEMPTS or (not ordered and self.progress["objects_total"]):
                    raise JobFailed(f"listing the cold store failed: {exc.message}") from None
                await asyncio.sleep(failures)

    async def _resolve_keys(self, queue: asyncio.Queue) -> None:
        limit = asyncio.Semaphore(max(self.tier.settings.stage_concurrency, 1))

        async def resolve(key: str) -> ColdObject | None:
            async with limit:
                row = await self.meta.get_object(self.bucket, key)
                if row is not None and row.cold_etag:
                    return ColdObject(key=key, size=row.size, etag=row.cold_etag, mtime=row.cold_mtime)
                try:
                    cold = await self.store.head(key, Traffic.STAGE)
                except errors.AtollError as exc:
                    self.progress["objects_total"] += 1
                    self._failed(key, exc.message)
                    return None
                if cold is None:
                    if row is not None:  # a local object the cold store does not have (yet): it is warm
                        return ColdObject(key=key, size=row.size, etag="", mtime=row.last_modified)
                    self.progress["objects_total"] += 1
                    self._failed(key, "not found in the cold store")
                return cold

        keys = self.keys or []
        for at in range(0, len(keys), 1000):
            for cold in await asyncio.gather(*(resolve(k) for k in keys[at:at + 1000])):
                if cold is not None:
                    await self._enqueue(queue, cold)
            self.ctx.check()

    async def _enqueue(self, queue: asyncio.Queue, cold: ColdObject) -> None:
        self.progress["objects_total"] += 1
        self.progress["bytes_total"] += cold.size
        await queue.put(cold)

    # transfer ---------------------------------------------------------------------------------------------
    async def _worker(self, queue: asyncio.Queue) -> None:
        while True:
            cold = await queue.get()
            if cold is None:
                return
            self.ctx.check()
            await self._stage_object(cold)
            await self.report()

    async def _stage_object(self, cold: ColdObject) -> None:
        attempt = -1
        while attempt + 1 < _OBJECT_ATTEMPTS:
            attempt += 1
            try:
                await self._transfer(cold)
                return
            except _Skip:
                self.progress["objects_skipped"] += 1
                self.progress["objects_done"] += 1
                self.progress["bytes_done"] += cold.size
                return
            except errors.ColdObjectChanged:
                # Replaced in the cold store since it was listed (or the index row moved): look again.
                fresh = await self._head_again(cold)
                if fresh is None:
                    return
                self.progress["bytes_total"] += fresh.size - cold.size
                cold = fresh
            except errors.ColdStoreUnavailable as exc:
                if await self._wait_for_link():
                    attempt -= 1  # the partition, not the object: this attempt does not count
                    continue
                if attempt == _OBJECT_ATTEMPTS - 1:
                    self._failed(cold.key, exc.message)
                    return
                await asyncio.sleep(attempt + 1)
            except VerificationFailed as exc:
                self._failed(cold.key, f"checksum verification failed: {exc}")
                return
            except errors.AtollError as exc:
                self._failed(cold.key, exc.message)
                return
            except (JobCancelled, asyncio.CancelledError):
                raise
            except Exception as exc:  # noqa: BLE001 - one object's bug must not end the job
                log.exception("staging %s/%s failed", self.bucket, cold.key[:200])
                self._failed(cold.key, f"internal error ({type(exc).__name__})")
                return
        self._failed(cold.key, "the object kept changing in the cold store")

    async def _head_again(self, cold: ColdObject) -> ColdObject | None:
        try:
            fresh = await self.store.head(cold.key, Traffic.STAGE)
        except errors.AtollError as exc:
            self._failed(cold.key, exc.message)
            return None
        if fresh is None:
            self._failed(cold.key, "deleted from the cold store while staging")
        return fresh

    async def _transfer(self, cold: ColdObject) -> None:
        """Make one object resident. Raises _Skip when it needs no transfer."""
        bucket, key = self.bucket, cold.key
        if await self.meta.get_drain(bucket, key) is not None:
            raise _Skip()  # written or deleted here and not drained yet: the local state is newer
        row = await self.meta.get_object(bucket, key)
        if row is not None and row.residency == RESIDENT and (row.cold_etag == cold.etag or not row.cold_etag):
            # Warm already (a local object without a cold identity is never replaced by staging).
            if self.pin_until > row.pinned_until:
                await self.meta.pin(bucket, key, self.pin_until)
            raise _Skip()
        await self._make_room(cold.size)
        self._reserved += cold.size
        try:
            await self._fetch(cold, row)
        finally:
            self._reserved -= cold.size

    async def _fetch(self, cold: ColdObject, row: ObjectVersion | None) -> None:
        """One streaming GET (preempted by misses and resumed where it stopped) into a new blob, verified, committed as
        the key's resident version."""
        fetched, chunks = await self.store.open_preemptible(cold.key, Traffic.STAGE, if_match=cold.etag or None)
        received = 0

        async def counted() -> AsyncIterator[bytes]:
            nonlocal received
            async for chunk in chunks:
                received += len(chunk)
                self.progress["bytes_done"] += len(chunk)
                self.progress["bytes_fetched"] += len(chunk)
                metrics.COLD_BYTES_READ.labels(Traffic.STAGE.value).inc(len(chunk))
                yield chunk

        # An MD5 costs ~1.4 CPU-s/GiB here: compute it only when there is a digest to check it against.
        check_md5 = self.etag_is_md5 and bool(_MD5_HEX.match(fetched.etag.strip('"').lower()))
        try:
            staged = await ingest.stage(self.tier.data, counted(), ["md5"] if check_md5 else [])
            try:
                method = verify_transfer(fetched.etag, fetched.size, staged.size, staged.digests.get("md5", b""),
                                         etag_is_md5=check_md5)
            except VerificationFailed:
                await staged.abort()
                raise
            # From here the blob and its row must both happen or neither: a cancel must not cut in between.
            commit = asyncio.ensure_future(self._commit(row, fetched, staged))
            self._commits.add(commit)
            commit.add_done_callback(self._commits.discard)
            committed = await asyncio.shield(commit)
        except BaseException:
            self.progress["bytes_done"] -= received
            raise
        if not committed:
            self.progress["bytes_done"] -= received
            raise _Skip()
        self.progress["bytes_total"] += fetched.size - cold.size  # unpinned GETs (no cold ETag) may differ
        self.progress["objects_staged"] += 1
        self.progress["objects_done"] += 1
        self.progress["verified" if method == "md5" else "verified_by_size"] += 1
        metrics.STAGED.inc()
        metrics.STAGED_BYTES.inc(fetched.size)

    async def _commit(self, row: ObjectVersion | None, fetched: ColdObject, staged: ingest.StagedBlob) -> bool:
        """Commit the blob and make it the key's resident version; False (blob discarded) if a write raced
        and left a warm version, raises ColdObjectChanged if something else now stands in the index."""
        await staged.commit()
        version = self.tier.version_from_cold(self.bucket, self.owner_id, fetched, residency=RESIDENT,
                                              version_id=staged.blob_id)
        version.extents = [Extent(staged.blob_id, 0, staged.size)]
        version.pinned_until = max(self.pin_until, row.pinned_until if row is not None else 0.0)
        try:
            result = await self.meta.record_cold_version(version, row.version_id if row is not None else None)
        except BaseException:
            await ingest.run_io(self.tier.data.delete, staged.blob_id)
            raise
        if result is not None and result.version_id == version.version_id:
            return True
        await ingest.run_io(self.tier.data.delete, staged.blob_id)
        if result is not None and result.residency == RESIDENT:
            if self.pin_until > result.pinned_until:
                await self.meta.pin(self.bucket, result.key, self.pin_until)
            return False
        if result is None:
            raise errors.NoSuchKey(key=fetched.key)  # the bucket is gone
        raise errors.ColdObjectChanged(key=fetched.key)

    async def _make_room(self, size: int) -> None:
        """Room for ``size`` more bytes besides the transfers in flight (which are not resident yet), evicting
        if need be; raises InsufficientStorage when the tier is full of what may not be evicted."""
        needed = size + self._reserved
        if await self.tier.has_room(needed, self.bucket):
            return
        evictor = getattr(self.tier, "evictor", None)
        if evictor is not None:
            await evictor.make_room(needed, self.bucket)
            if await self.tier.has_room(needed, self.bucket):
                return
        raise errors.InsufficientStorage(f"the warm tier has no room for {size} more bytes: it is full of data "
                                         "that may not be evicted (pinned, not yet drained, or within a tenant's "
                                         "warm reservation or cap)")

    # the run ----------------------------------------------------------------------------------------------
    async def run(self) -> None:
        link = await self.tier.link(self.bucket)
        if link is None:
            raise JobFailed(f"bucket {self.bucket} is no longer linked to a cold store")
        bucket = await self.meta.get_bucket(self.bucket)
        if bucket is None:
            raise JobFailed(f"bucket {self.bucket} no longer exists")
        self.owner_id = bucket.owner_id
        self.store = self.tier.store(link)
        self.etag_is_md5 = link.url.split("://", 1)[0].lower() in _MD5_ETAG_SCHEMES
        await self.report(final=True)
        concurrency = max(self.tier.settings.stage_concurrency, 1)
        queue: asyncio.Queue = asyncio.Queue(_QUEUE_DEPTH)

        async def listing() -> None:
            try:
                await self._listing(queue)
            finally:
                for _ in range(concurrency):  # workers stop once the queue is drained
                    await queue.put(None)

        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(listing())] + [loop.create_task(self._worker(queue)) for _ in range(concurrency)]
        try:
            # Not gather: it would cancel the tasks a second time below, cutting short their own clean-up.
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)
            if self._commits:  # commits a cancel did not interrupt: done before the job is said to have ended
                await asyncio.wait(self._commits)
        for task in tasks:
            if task in done and not task.cancelled() and task.exception() is not None:
                raise task.exception()
        self.progress["phase"] = "done"
        await self.report(final=True)
        if self.progress["failed"]:
            first = self.progress["errors"][0] if self.progress["errors"] else {"key": "?", "error": "?"}
            raise JobFailed(f"{self.progress['failed']} of {self.progress['objects_total']} objects could not be "
                            f"staged; first: {first['key']}: {first['error']}")


async def run_stage(ctx: JobContext) -> None:
    """Make the objects of a prefix (or a list of keys) resident, verified, optionally pinned.

    spec: {"prefix": str, "keys": [str] | None, "pin": bool, "pin_seconds": float | None (None: until
    unpinned), "priority": str}."""
    await _Stager(ctx).run()
