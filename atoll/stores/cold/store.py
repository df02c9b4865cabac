"""One cold store behind a link: obstore calls with Atoll's timeouts, retries, circuit breaker, traffic classes
and error mapping in one place.

Every call names its traffic class (a reader's miss, a staging job, the drain); the link's ``Endpoint`` (shared
by every link to the same account or endpoint) holds the breaker, the health counters and the WAN scheduler.
Errors leave this module as core errors only:

    not found            -> None from ``head``; NoSuchKey from ``open``
    changed (If-Match)   -> errors.ColdObjectChanged
    anything else        -> errors.ColdStoreUnavailable (Retry-After), with no URL, key or credential in the
                            message (obstore's messages carry request URLs; they go to the debug log only)

Time bounds: obstore bounds connects; this module bounds each attempt's wait for its first byte and the whole
of a call's attempts (for demand traffic that is the client's deadline: ``first_byte``); idempotent calls are
retried with full-jitter exponential backoff inside that deadline. Transfers already flowing are watched by
their endpoint: one whose bytes stop moving for ``stall`` seconds, or for ``first_byte`` once the breaker has
declared the link down, is cut (a stalled transfer is one whose bytes stop, whatever its total length).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from contextlib import aclosing, asynccontextmanager, nullcontext
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar

import obstore

from atoll import errors, metrics
from atoll.stores.cold.endpoint import Endpoint, Health
from atoll.stores.cold.traffic import Traffic

__all__ = ["ColdObject", "ColdStore", "Timeouts", "Traffic", "cold_path", "client_options", "retry_config"]

log = logging.getLogger("atoll.cold")

T = TypeVar("T")
MIN_UPLOAD_RATE = 256 << 10
# Chunks of a preemptible GET: a cancelled read still completes its chunk in obstore's runtime before the stream
# (and its connection) is dropped, so this bounds what a preempted stream takes in after the preemption.
PREEMPT_CHUNK = 256 << 10  # bytes/s: an upload slower than this over its whole length is given up and retried
_REACHABLE = (obstore.exceptions.PermissionDeniedError, obstore.exceptions.UnauthenticatedError,
              obstore.exceptions.InvalidPathError, obstore.exceptions.NotSupportedError,
              obstore.exceptions.AlreadyExistsError, obstore.exceptions.NotModifiedError)
_PROBE_KEY = ".atoll-probe/absent"


@dataclass(slots=True, frozen=True)
class ColdObject:
    key: str  # relative to the link's prefix
    size: int
    etag: str  # unquoted
    mtime: float
    attributes: dict[str, str] | None = None  # from GET/HEAD-with-body only; listings carry none


@dataclass(slots=True)
class Timeouts:
    connect: float = 3.0
    first_byte: float = 3.0  # per attempt, and a client's whole wait on the WAN for a miss
    stall: float = 30.0  # a flowing transfer whose bytes stop this long is cut
    retries: int = 2  # extra attempts for idempotent calls
    background_deadline: float = 30.0  # all attempts of a stage or drain call (excluding the transfer itself)


def _unquote(etag: str | None) -> str:
    return (etag or "").strip().strip('"')


def _meta_to_object(meta: dict, key: str | None = None, attributes: dict | None = None) -> ColdObject:
    return ColdObject(key=key if key is not None else meta["path"], size=int(meta["size"]),
                      etag=_unquote(meta.get("e_tag")), mtime=meta["last_modified"].timestamp(),
                      attributes=attributes)


def cold_path(key: str) -> str:
    """The object_store path of ``key``. object_store paths have no empty, '.' or '..' segments and no leading
    or trailing '/': such S3 keys cannot round-trip through a cold store, so they are refused, not mangled."""
    if not key or key.startswith("/") or key.endswith("/"):
        raise errors.InvalidArgument("This key cannot be stored in the bucket's cold store: cold-store paths "
                                     "cannot begin or end with '/'.", key=key[:64])
    if any(ord(c) < 0x20 or c == "\x7f" for c in key):
        raise errors.InvalidArgument("This key cannot be stored in the bucket's cold store: cold-store paths "
                                     "have no control characters.", key=key[:64])
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise errors.InvalidArgument("This key cannot be stored in the bucket's cold store: cold-store "
                                         "paths have no empty, '.' or '..' segments.", key=key[:64])
    return key


class _StreamHandle:
    """The one owner of an obstore byte stream, so that closing drops the stream and its connection at once. A
    cut or preempted read leaves an exception whose traceback (in a reference cycle with its task) holds every
    frame it passed through: had one of them held the stream, the connection would stay open, its sender still
    sending, until the cyclic garbage collector ran."""

    __slots__ = ("_iterator",)

    def __init__(self, stream: Any) -> None:
        self._iterator = stream.__aiter__()

    def next(self) -> Awaitable[bytes]:
        if self._iterator is None:
            raise StopAsyncIteration
        return self._iterator.__anext__()

    def close(self) -> None:
        self._iterator = None


class _Answered(Exception):
    """An obstore outcome that proves the link works (not found, precondition failed): carries the core error."""

    def __init__(self, error: BaseException | None) -> None:
        self.error = error


class Transfer:
    """A transfer in flight, watched by its endpoint. Its waits on the WAN go through ``guard``, which the
    watchdog's ``expire`` interrupts (TimeoutError); ``progress()`` on every chunk. While the transfer's
    consumer holds a chunk (``paused``), a slow consumer is not mistaken for a stalled link."""

    __slots__ = ("traffic", "last", "idle_limit", "expired", "paused", "_waiting", "_interrupted")

    def __init__(self, traffic: Traffic, idle_limit: float) -> None:
        self.traffic = traffic
        self.last = time.monotonic()
        self.idle_limit = idle_limit
        self.expired = False
        self.paused = False
        self._waiting: asyncio.Task | None = None  # the task blocked in ``guard`` right now
        self._interrupted = False

    def progress(self) -> None:
        self.last = time.monotonic()

    def expire(self) -> None:
        """Cut the transfer: a task blocked in ``guard`` gets TimeoutError now, a later ``guard`` at once. Only
        a task blocked inside ``guard`` is interrupted, never its consumer's own awaits (as asyncio.timeout
        does, with the cancel counted and taken back)."""
        if self.expired:
            return
        self.expired = True
        if self._waiting is not None:
            self._interrupted = True
            self._waiting.cancel()

    async def guard(self, awaitable: Awaitable[T]) -> T:
        if self.expired:
            raise TimeoutError
        task = asyncio.current_task()
        self._waiting = task
        try:
            result = await awaitable
            if self._interrupted and task is not None:  # the awaitable swallowed our cancel
                self._interrupted = False
                task.uncancel()
                raise TimeoutError
            return result
        except asyncio.CancelledError:
            if self._interrupted and task is not None and task.uncancel() == 0:
                self._interrupted = False
                raise TimeoutError from None
            raise
        finally:
            self._waiting = None


class ColdStore:
    """``store`` is an obstore store already scoped to the link's prefix; ``name`` is safe to log (no secrets);
    ``endpoint`` is shared with every other link to the same account or endpoint."""

    def __init__(self, store: Any, name: str, timeouts: Timeouts | None = None,
                 endpoint: Endpoint | None = None, leftovers: Any = None) -> None:
        self.store = store
        self.name = name
        self.timeouts = timeouts or Timeouts()
        self.endpoint = endpoint or Endpoint(name)
        self.leftovers = leftovers  # S3Leftovers for S3; None where a failed upload leaves nothing billable
        self.tenant = ""  # the tenant of the link's bucket: whose share of the endpoint's link its transfers use

    @property
    def leaves_uploads(self) -> bool:
        """Whether a multipart upload cut short can leave parts behind that must be aborted."""
        return self.leftovers is not None

    async def abort_leftovers(self, key: str) -> int:
        """Abort the multipart uploads of ``key`` that never completed; how many."""
        if self.leftovers is None:
            return 0
        if not self.health.breaker.admit(probe_ok=False):
            raise self.endpoint.refuse(Traffic.DRAIN)
        return await asyncio.to_thread(self.leftovers.abort, cold_path(key))

    @property
    def health(self) -> Health:
        return self.endpoint.health

    def _moved(self, traffic: Traffic, bytes_in: int = 0, bytes_out: int = 0) -> None:
        self.health.moved(traffic, bytes_in=bytes_in, bytes_out=bytes_out)
        metrics.COLD_TENANT_BYTES.labels(self.tenant, traffic.value).inc(bytes_in + bytes_out)

    # one request, with breaker, deadline and retries ---------------------------------------------------
    def _failure(self, traffic: Traffic | None, exc: BaseException) -> errors.ColdStoreUnavailable:
        kind = "timed out" if isinstance(exc, (asyncio.TimeoutError, TimeoutError)) else type(exc).__name__
        if self.health.failed(traffic, kind):
            log.warning("cold endpoint %s is unreachable (%s); failing fast for %.0f s", self.endpoint.key, kind,
                        self.health.breaker.retry_after())
        if traffic is not None:
            metrics.COLD_REQUESTS.labels(traffic.value, "error").inc()
        log.debug("cold store %s: %s: %s", self.name, kind, exc)
        return errors.ColdStoreUnavailable(f"The cold store of this bucket is unavailable ({kind}); retry later.",
                                           retry_after=2)

    def _success(self, traffic: Traffic | None, started: float) -> None:
        if self.health.succeeded(traffic, time.monotonic() - started):
            log.warning("cold endpoint %s is reachable again", self.endpoint.key)
        if traffic is not None:
            metrics.COLD_REQUESTS.labels(traffic.value, "ok").inc()

    def _deadline(self, traffic: Traffic) -> float:
        return self.timeouts.first_byte if traffic is Traffic.DEMAND else self.timeouts.background_deadline

    async def _request(self, traffic: Traffic | None, call: Callable[[], Awaitable[T]], *,
                       retry: bool = True, deadline: float | None = None, transfer: Transfer | None = None) -> T:
        """``call()`` once, or again after a transient failure while ``deadline`` allows. Each attempt's wait is
        bounded by ``first_byte`` (and by what is left of the deadline). With ``transfer`` (an upload, whose
        first answer comes only after its body is sent), an attempt is bounded by the endpoint's watchdog
        instead (its bytes must keep moving), whose cut propagates as TimeoutError, and it is never the
        half-open probe."""
        breaker = self.health.breaker
        budget = deadline if deadline is not None else self._deadline(traffic or Traffic.DRAIN)
        # A client's miss is never the half-open probe: it would wait out a dead link's first-byte timeout while
        # every other miss fails at once. The health loop probes instead.
        probe_ok = traffic is not Traffic.DEMAND and transfer is None
        begun = time.monotonic()
        attempt = 0
        while True:
            if not breaker.admit(probe_ok=probe_ok):
                raise self.endpoint.refuse(traffic or Traffic.DRAIN)
            started = time.monotonic()
            left = budget - (started - begun)
            try:
                if transfer is not None:
                    result = await transfer.guard(call())
                else:
                    with self._using_link(traffic):
                        result = await asyncio.wait_for(call(), max(0.05, min(self.timeouts.first_byte, left)))
            except asyncio.CancelledError:
                if probe_ok:
                    breaker.abandoned()
                raise
            except _REACHABLE as exc:
                self._success(traffic, started)  # the link answered; the request itself was refused
                raise errors.ColdStoreUnavailable(f"The cold store refused the request ({type(exc).__name__}); "
                                                  "check the link's settings.", retry_after=30) from None
            except _Answered as answered:
                self._success(traffic, started)
                if answered.error is None:
                    return None  # type: ignore[return-value]
                raise answered.error from None
            except Exception as exc:  # noqa: BLE001 - mapped to one error kind
                if transfer is not None and isinstance(exc, TimeoutError):
                    raise  # the watchdog cut the transfer: its owner reports it
                failure = self._failure(traffic, exc)
                attempt += 1
                left = budget - (time.monotonic() - begun) if transfer is None else float("inf")
                pause = random.uniform(0, min(2.0, 0.1 * 2 ** attempt))  # full jitter
                if not retry or attempt > self.timeouts.retries or breaker.state != "closed" or pause >= left:
                    raise failure from None
                self.health.retries += 1
                await asyncio.sleep(pause)
                if transfer is not None and traffic is not Traffic.DEMAND:
                    transfer.progress()  # the pause is not a stall (a client's upload: its bound is for all tries)
                continue
            self._success(traffic, started)
            return result

    def _using_link(self, traffic: Traffic | None) -> Any:
        # A miss's lookups make staging and the drain hold back their next requests, as its transfers do.
        return self.endpoint.wan.busy(traffic, linger=0.2) if traffic is Traffic.DEMAND else nullcontext()

    @asynccontextmanager
    async def _transfer(self, traffic: Traffic, idle_limit: float | None = None) -> AsyncIterator[Transfer]:
        """A flowing transfer: holds a class slot; the endpoint's watchdog cuts it when its bytes stop."""
        async with self.endpoint.wan.slot(traffic, self.tenant):
            transfer = Transfer(traffic, idle_limit or self.timeouts.stall)
            with self.endpoint.watch(transfer, self.timeouts):
                try:
                    yield transfer
                except TimeoutError:
                    if not transfer.expired:
                        raise
                    raise self._failure(traffic, TimeoutError()) from None

    # calls ---------------------------------------------------------------------------------------------
    async def head(self, key: str, traffic: Traffic) -> ColdObject | None:
        path = cold_path(key)

        async def call() -> dict:
            try:
                return await obstore.head_async(self.store, path)
            except FileNotFoundError:
                raise _Answered(None) from None

        meta = await self._request(traffic, call)
        return None if meta is None else _meta_to_object(meta, key)

    async def head_with_attributes(self, key: str, traffic: Traffic) -> ColdObject | None:
        """HEAD with the object's attributes (content type, user metadata), which a plain head omits."""
        path = cold_path(key)

        async def call() -> Any:
            try:
                return await obstore.get_async(self.store, path, options={"head": True})
            except FileNotFoundError:
                raise _Answered(None) from None

        result = await self._request(traffic, call)
        return None if result is None else _meta_to_object(result.meta, key, dict(result.attributes))

    async def probe(self) -> bool:
        """One cheap request that needs an answer from the endpoint (a HEAD of a key that does not exist):
        the half-open breaker's probe, and the watchdog's check of a quiet link."""
        async def call() -> None:
            try:
                await obstore.head_async(self.store, _PROBE_KEY)
            except FileNotFoundError:
                pass
        try:
            await self._request(None, call, retry=False, deadline=self.timeouts.first_byte)
        except errors.AtollError:
            return False
        return True

    async def open(self, key: str, traffic: Traffic, *, start: int | None = None, end: int | None = None,
                   if_match: str | None = None, chunk_size: int = 1 << 20) -> tuple[ColdObject, AsyncIterator[bytes]]:
        """GET (a range of) ``key``: its cold identity and an iterator over its bytes (a class slot is held
        until the iterator ends or is closed). Raises NoSuchKey when absent, ColdObjectChanged when
        ``if_match`` no longer holds."""
        path = cold_path(key)
        options: dict[str, Any] = {}
        if start is not None:
            options["range"] = (start, end) if end is not None else {"offset": start}
        if if_match:
            options["if_match"] = f'"{if_match}"'

        async def call() -> Any:
            try:
                return await obstore.get_async(self.store, path, options=options or None)
            except FileNotFoundError:
                raise _Answered(errors.NoSuchKey(key=key)) from None
            except obstore.exceptions.PreconditionError:
                raise _Answered(errors.ColdObjectChanged(key=key)) from None

        result = await self._request(traffic, call)
        cold = _meta_to_object(result.meta, key, dict(result.attributes))
        return cold, self._chunks(result.stream(min_chunk_size=chunk_size), traffic)

    async def _chunks(self, stream: Any, traffic: Traffic) -> AsyncIterator[bytes]:
        handle = _StreamHandle(stream)
        del stream
        guarded = self._guarded_chunks(handle, traffic)
        try:
            async for chunk in guarded:
                yield chunk
        finally:
            # Closed here, in order, rather than left to the garbage collector: a reader that stops early would
            # otherwise leave the transfer (its class slot, its watchdog entry) to be finalized together with
            # the context manager's own generator, in either order, and an athrow into an already finalized
            # generator fails with "generator didn't stop after athrow()".
            await guarded.aclose()
            handle.close()

    async def _guarded_chunks(self, handle: "_StreamHandle", traffic: Traffic) -> AsyncIterator[bytes]:
        wan = self.endpoint.wan
        async with self._transfer(traffic) as transfer:
            while True:
                try:
                    chunk = await transfer.guard(handle.next())
                except StopAsyncIteration:
                    return
                except (errors.AtollError, asyncio.CancelledError, TimeoutError):
                    raise
                except Exception as exc:  # noqa: BLE001
                    raise self._failure(traffic, exc) from None
                self._moved(traffic, bytes_in=len(chunk))
                transfer.paused = True
                try:
                    yield chunk
                finally:
                    transfer.paused = False
                    transfer.progress()
                if traffic is not Traffic.DEMAND:
                    await wan.pace(traffic, len(chunk), self.tenant)  # before asking the link for more
                    transfer.progress()

    async def open_preemptible(self, key: str, traffic: Traffic, *,
                               if_match: str | None = None) -> tuple[ColdObject, AsyncIterator[bytes]]:
        """GET ``key`` for a background class, giving the link up to a higher class at once. When a miss starts
        using the link, the GET is closed and later resumed with a ranged GET from where it stopped, pinned to
        the same ETag, once the miss is done (or once the aging time has passed; a GET resumed that way is not
        preempted again). Closing is what frees the link: a paused stream keeps receiving what the sender
        has in flight for it (measured through a proxy: 4.6 MiB for one stream). On a quiet link this is one
        GET. Raises as ``open``."""
        aged = await self.endpoint.wan.pace(traffic, 0, self.tenant)
        first, chunks = await self.open(key, traffic, if_match=if_match, chunk_size=PREEMPT_CHUNK)
        etag = if_match or first.etag
        if not etag:
            return first, chunks  # nothing to pin a resumed GET to: it could mix two versions' bytes
        return first, self._preemptible(key, traffic, first.size, etag, chunks, aged)

    async def _preemptible(self, key: str, traffic: Traffic, size: int, etag: str, chunks: AsyncIterator[bytes],
                           aged: bool) -> AsyncIterator[bytes]:
        wan = self.endpoint.wan
        offset = 0
        while True:
            following: asyncio.Future | None = None
            preempted = False
            try:
                while True:
                    following = asyncio.ensure_future(anext(chunks, None))
                    if not aged:
                        outranked = asyncio.ensure_future(wan.higher_busy(traffic))
                        try:
                            await asyncio.wait((following, outranked), return_when=asyncio.FIRST_COMPLETED)
                        finally:
                            outranked.cancel()
                        if not following.done():
                            preempted = True
                            break
                    chunk = await following
                    following = None
                    if chunk is None:
                        break
                    offset += len(chunk)
                    yield chunk
            finally:
                # A read still in flight (preempted, or this generator cancelled or closed) must end before the
                # stream can be closed; its traceback must then be let go (see _StreamHandle).
                if following is not None:
                    following.cancel()
                    await asyncio.gather(following, return_exceptions=True)
                    following = None
                await chunks.aclose()  # type: ignore[attr-defined]
            if not preempted:
                if offset != size:
                    raise errors.ColdObjectChanged("The cold object ended before its listed size.", key=key)
                return
            wan.preempted[traffic] += 1
            aged = await wan.pace(traffic, 0, self.tenant)
            _, chunks = await self.open(key, traffic, start=offset, if_match=etag, chunk_size=PREEMPT_CHUNK)

    async def read_range(self, key: str, start: int, end: int, traffic: Traffic,
                         if_match: str | None = None) -> bytes:
        """Bytes [start, end) in memory: for fill blocks, which are bounded (a few MiB)."""
        _, chunks = await self.open(key, traffic, start=start, end=end, if_match=if_match, chunk_size=256 << 10)
        buffer = bytearray()
        async for chunk in chunks:
            buffer += chunk
        if len(buffer) != end - start:
            raise errors.ColdObjectChanged("The cold object is shorter than its listed size.", key=key)
        return bytes(buffer)

    async def put(self, key: str, source: Any, size: int, traffic: Traffic, *,
                  attributes: dict[str, str] | None = None, part_size: int = 8 << 20,
                  concurrency: int = 8) -> ColdObject:
        """Upload ``source`` (bytes, or an async iterable of buffers); objects larger than one part go up as a
        multipart upload, which obstore aborts on failure. Returns the new cold identity. Bytes are retried
        within the deadline; a stream is not (the caller redoes the whole upload)."""
        path = cold_path(key)
        multipart = size > part_size
        # obstore pulls a few parts ahead, then sends: idle time between pulls covers that many parts' sending.
        idle = self.timeouts.stall + (part_size * (concurrency + 1) if multipart else size) / MIN_UPLOAD_RATE
        if traffic is Traffic.DEMAND and not multipart:
            # A client waits on this one request (write-through): bounded like a miss, by the first-byte time,
            # plus the body's sending at the slowest rate accepted. A stalled link is not waited out for the
            # stall timeout, nor through obstore's own connect retries.
            idle = self.timeouts.first_byte + size / MIN_UPLOAD_RATE
        async with self._transfer(traffic, idle_limit=idle) as transfer:
            body = source if isinstance(source, (bytes, bytearray, memoryview)) else \
                self._pulled(source, transfer, traffic)

            async def call() -> dict:
                return await obstore.put_async(self.store, path, body, attributes=attributes or None,
                                               use_multipart=multipart, chunk_size=part_size,
                                               max_concurrency=concurrency)

            result = await self._request(traffic, call, retry=body is source, transfer=transfer)
            if body is source:
                self._moved(traffic, bytes_out=size)
        return ColdObject(key=key, size=size, etag=_unquote(result.get("e_tag")), mtime=time.time())

    async def _pulled(self, source: Any, transfer: Transfer, traffic: Traffic) -> AsyncIterator[Any]:
        """The upload's chunks, counted and paced as obstore pulls them."""
        wan = self.endpoint.wan
        async for chunk in source:
            await wan.pace(traffic, len(chunk), self.tenant)
            transfer.progress()
            self._moved(traffic, bytes_out=len(chunk))
            yield chunk

    async def delete(self, key: str, traffic: Traffic) -> None:
        path = cold_path(key)

        async def call() -> None:
            try:
                await obstore.delete_async(self.store, path)
            except FileNotFoundError:
                pass

        await self._request(traffic, call)

    async def list(self, prefix: str, traffic: Traffic, *, offset: str | None = None,
                   page_size: int = 1000) -> AsyncIterator[list[ColdObject]]:
        """Batches of cold objects under ``prefix`` in key order, after ``offset`` when given. Each page is
        one request; a failed page is retried from where the listing stands."""
        last = offset or None
        retried = False
        while True:
            iterator = obstore.list(self.store, prefix or None, offset=last, chunk_size=page_size).__aiter__()

            async def page() -> Any:
                try:
                    return await iterator.__anext__()
                except StopAsyncIteration:
                    raise _Answered(None) from None

            try:
                while (batch := await self._request(traffic, page, retry=False)) is not None:
                    objects = [_meta_to_object(m) for m in batch]
                    if objects:
                        last = objects[-1].key
                        yield objects
                    retried = False
                return
            except errors.ColdStoreUnavailable:
                if retried or self.health.breaker.state != "closed":
                    raise
                retried = True  # one fresh listing from the last key seen


def client_options(timeouts: Timeouts, allow_http: bool) -> dict[str, Any]:
    # obstore's whole-request timeout would cut long streams; our first-byte checks and the watchdog do that.
    return {"connect_timeout": timedelta(seconds=timeouts.connect), "timeout": timedelta(hours=6),
            "allow_http": allow_http, "pool_idle_timeout": timedelta(seconds=50)}


def retry_config(max_retries: int = 2) -> dict[str, Any]:
    # obstore's own retries cover the parts of multipart uploads (which this module cannot retry one by one);
    # every other call is bounded by this module's deadlines, which cut obstore's retries short.
    return {"max_retries": max_retries, "retry_timeout": timedelta(seconds=10),
            "backoff": {"init_backoff": timedelta(milliseconds=100), "max_backoff": timedelta(seconds=2),
                        "base": 2}}
