"""One cold store behind a link: obstore calls with Atoll's timeouts, health and error mapping in one place.

Every call names its traffic class (a reader's miss, a staging job, the drain), so priorities and per-class
limits are a change here, not in the callers. Errors leave this module as core errors only:

    not found            -> None / FileNotFoundError is never raised to callers; ``head`` returns None
    changed (If-Match)   -> errors.ColdObjectChanged
    anything else        -> errors.ColdStoreUnavailable, with no URL, key or credential in the message
                            (obstore's messages carry request URLs; they go to the debug log only)

Timeouts: obstore's ``connect_timeout`` bounds connects, its own ``timeout`` is set generously as a last resort,
and this module bounds the wait for the first byte and for each further chunk (a stalled transfer is one whose
bytes stop moving, whatever its total length).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, AsyncIterator

import obstore

from atoll import errors, metrics

log = logging.getLogger("atoll.cold")

MIN_UPLOAD_RATE = 256 << 10  # bytes/s: an upload slower than this over its whole length is given up and retried


class Traffic(enum.Enum):
    DEMAND = "demand"  # a client waits on it
    STAGE = "stage"
    DRAIN = "drain"


@dataclass(slots=True, frozen=True)
class ColdObject:
    key: str  # relative to the link's prefix
    size: int
    etag: str  # unquoted
    mtime: float
    attributes: dict[str, str] | None = None  # from GET/HEAD-with-body only; listings carry none


@dataclass(slots=True)
class Timeouts:
    connect: float = 5.0
    first_byte: float = 10.0
    stall: float = 30.0


@dataclass(slots=True)
class ClassStats:
    requests: int = 0
    failures: int = 0
    bytes_in: int = 0
    bytes_out: int = 0


@dataclass(slots=True)
class Health:
    """What #4's status and circuit breaker read: per-class counters, last success and failure, latency."""

    last_success: float = 0.0
    last_failure: float = 0.0
    last_error: str = ""
    consecutive_failures: int = 0
    latency_ewma: float = 0.0
    per_class: dict[str, ClassStats] = field(default_factory=lambda: {t.value: ClassStats() for t in Traffic})

    @property
    def state(self) -> str:
        if self.consecutive_failures >= 3:
            return "partitioned"
        if self.consecutive_failures or self.latency_ewma > 2.0:
            return "degraded"
        return "healthy"


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


class ColdStore:
    """``store`` is an obstore store already scoped to the link's prefix; ``name`` is safe to log (no secrets)."""

    def __init__(self, store: Any, name: str, timeouts: Timeouts | None = None) -> None:
        self.store = store
        self.name = name
        self.timeouts = timeouts or Timeouts()
        self.health = Health()

    # bookkeeping ---------------------------------------------------------------------------------------
    def _ok(self, traffic: Traffic, started: float, bytes_in: int = 0, bytes_out: int = 0) -> None:
        h = self.health
        now = time.monotonic()
        h.last_success = time.time()
        h.consecutive_failures = 0
        h.latency_ewma = 0.8 * h.latency_ewma + 0.2 * (now - started) if h.latency_ewma else now - started
        stats = h.per_class[traffic.value]
        stats.requests += 1
        stats.bytes_in += bytes_in
        stats.bytes_out += bytes_out
        metrics.COLD_REQUESTS.labels(traffic.value, "ok").inc()

    def _failed(self, traffic: Traffic, exc: BaseException) -> errors.AtollError:
        h = self.health
        h.last_failure = time.time()
        h.consecutive_failures += 1
        stats = h.per_class[traffic.value]
        stats.requests += 1
        stats.failures += 1
        metrics.COLD_REQUESTS.labels(traffic.value, "error").inc()
        kind = "timed out" if isinstance(exc, (asyncio.TimeoutError, TimeoutError)) else type(exc).__name__
        h.last_error = kind
        log.debug("cold store %s: %s: %s", self.name, kind, exc)
        return errors.ColdStoreUnavailable(f"The cold store of this bucket is unavailable ({kind}); retry later.",
                                           retry_after=2)

    def count_bytes(self, traffic: Traffic, bytes_in: int = 0, bytes_out: int = 0) -> None:
        stats = self.health.per_class[traffic.value]
        stats.bytes_in += bytes_in
        stats.bytes_out += bytes_out

    # calls ---------------------------------------------------------------------------------------------
    async def head(self, key: str, traffic: Traffic) -> ColdObject | None:
        path = cold_path(key)
        started = time.monotonic()
        try:
            meta = await asyncio.wait_for(obstore.head_async(self.store, path), self.timeouts.first_byte)
        except FileNotFoundError:
            self._ok(traffic, started)
            return None
        except Exception as exc:  # noqa: BLE001 - mapped to one error kind
            raise self._failed(traffic, exc) from None
        self._ok(traffic, started)
        return _meta_to_object(meta, key)

    async def head_with_attributes(self, key: str, traffic: Traffic) -> ColdObject | None:
        """HEAD with the object's attributes (content type, user metadata), which a plain head omits."""
        path = cold_path(key)
        started = time.monotonic()
        try:
            result = await asyncio.wait_for(obstore.get_async(self.store, path, options={"head": True}),
                                            self.timeouts.first_byte)
        except FileNotFoundError:
            self._ok(traffic, started)
            return None
        except Exception as exc:  # noqa: BLE001
            raise self._failed(traffic, exc) from None
        self._ok(traffic, started)
        return _meta_to_object(result.meta, key, dict(result.attributes))

    async def open(self, key: str, traffic: Traffic, *, start: int | None = None, end: int | None = None,
                   if_match: str | None = None, chunk_size: int = 1 << 20) -> tuple[ColdObject, AsyncIterator[bytes]]:
        """GET (a range of) ``key``: its cold identity and an iterator over its bytes, each chunk bounded by the
        stall timeout. Raises NoSuchKey when absent, ColdObjectChanged when ``if_match`` no longer holds."""
        path = cold_path(key)
        options: dict[str, Any] = {}
        if start is not None:
            options["range"] = (start, end) if end is not None else {"offset": start}
        if if_match:
            options["if_match"] = f'"{if_match}"'
        started = time.monotonic()
        try:
            result = await asyncio.wait_for(obstore.get_async(self.store, path, options=options or None),
                                            self.timeouts.first_byte)
        except FileNotFoundError:
            self._ok(traffic, started)
            raise errors.NoSuchKey(key=key) from None
        except obstore.exceptions.PreconditionError:
            self._ok(traffic, started)
            raise errors.ColdObjectChanged(key=key) from None
        except Exception as exc:  # noqa: BLE001
            raise self._failed(traffic, exc) from None
        meta = result.meta
        attributes = dict(result.attributes)
        cold = _meta_to_object(meta, key, attributes)
        self._ok(traffic, started)
        return cold, self._chunks(result.stream(min_chunk_size=chunk_size), traffic)

    async def _chunks(self, stream: Any, traffic: Traffic) -> AsyncIterator[bytes]:
        iterator = stream.__aiter__()
        stats = self.health.per_class[traffic.value]
        while True:
            try:
                chunk = await asyncio.wait_for(iterator.__anext__(), self.timeouts.stall)
            except StopAsyncIteration:
                return
            except Exception as exc:  # noqa: BLE001
                raise self._failed(traffic, exc) from None
            stats.bytes_in += len(chunk)
            yield chunk

    async def read_range(self, key: str, start: int, end: int, traffic: Traffic,
                         if_match: str | None = None) -> bytes:
        """Bytes [start, end) in memory: for fill blocks, which are bounded (a few MiB)."""
        _, chunks = await self.open(key, traffic, start=start, end=end, if_match=if_match, chunk_size=end - start)
        parts = [chunk async for chunk in chunks]
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        if len(data) != end - start:
            raise errors.ColdObjectChanged("The cold object is shorter than its listed size.", key=key)
        return data

    async def put(self, key: str, source: Any, size: int, traffic: Traffic, *,
                  attributes: dict[str, str] | None = None, part_size: int = 8 << 20,
                  concurrency: int = 8) -> ColdObject:
        """Upload ``source`` (an iterable or async iterable of buffers, or a path); objects larger than one part
        go up as a multipart upload, which obstore aborts on failure. Returns the new cold identity."""
        path = cold_path(key)
        started = time.monotonic()
        # A blackholed link must not hold an upload (and a client's write-through PUT) for obstore's own,
        # hours-long timeout: allow the first-byte and stall times plus the size at a floor rate.
        deadline = self.timeouts.first_byte + self.timeouts.stall + size / MIN_UPLOAD_RATE
        try:
            result = await asyncio.wait_for(
                obstore.put_async(self.store, path, source, attributes=attributes or None,
                                  use_multipart=size > part_size, chunk_size=part_size,
                                  max_concurrency=concurrency),
                deadline)
        except Exception as exc:  # noqa: BLE001
            raise self._failed(traffic, exc) from None
        self._ok(traffic, started, bytes_out=size)
        etag = _unquote(result.get("e_tag"))
        return ColdObject(key=key, size=size, etag=etag, mtime=time.time())

    async def delete(self, key: str, traffic: Traffic) -> None:
        path = cold_path(key)
        started = time.monotonic()
        try:
            await asyncio.wait_for(obstore.delete_async(self.store, path), self.timeouts.first_byte * 3)
        except FileNotFoundError:
            pass
        except Exception as exc:  # noqa: BLE001
            raise self._failed(traffic, exc) from None
        self._ok(traffic, started)

    async def list(self, prefix: str, traffic: Traffic, *, offset: str | None = None,
                   page_size: int = 1000) -> AsyncIterator[list[ColdObject]]:
        """Batches of cold objects under ``prefix`` in key order, after ``offset`` when given."""
        started = time.monotonic()
        try:
            stream = obstore.list(self.store, prefix or None, offset=offset or None, chunk_size=page_size)
            iterator = stream.__aiter__()
            while True:
                try:
                    batch = await asyncio.wait_for(iterator.__anext__(), self.timeouts.first_byte * 3)
                except StopAsyncIteration:
                    break
                self._ok(traffic, started)
                started = time.monotonic()
                yield [_meta_to_object(m) for m in batch]
        except errors.AtollError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise self._failed(traffic, exc) from None


def client_options(timeouts: Timeouts, allow_http: bool) -> dict[str, Any]:
    # obstore's whole-request timeout would cut long streams; our stall and first-byte checks do that job.
    return {"connect_timeout": timedelta(seconds=timeouts.connect), "timeout": timedelta(hours=6),
            "allow_http": allow_http, "pool_idle_timeout": timedelta(seconds=50)}


def retry_config(max_retries: int = 3) -> dict[str, Any]:
    return {"max_retries": max_retries, "retry_timeout": timedelta(seconds=20),
            "backoff": {"init_backoff": timedelta(milliseconds=100), "max_backoff": timedelta(seconds=5),
                        "base": 2}}

