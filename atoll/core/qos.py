"""QoS: request and byte rate limits per tenant and per bucket (token buckets), node-wide across workers.

Every request of an authenticated identity is admitted here after authentication and before its handler runs:

- a request token (``requests_per_second``, depth ``request_burst``) from the identity's tenant and, when the
  request names a bucket with limits of its own, from that bucket;
- bytes (``bytes_per_second``, depth ``bytes_burst``): a body the client sends is charged at admission by its
  declared length; a body the answer sends is charged when the handler has it (its length), without a check.
  Either may take the bucket into debt by that one request's bytes; while a byte bucket is not above zero, the
  requests that move bytes (a body in either direction) are refused. Large objects are never refused outright,
  and the long-run rate is exact: what was admitted over T seconds is at most burst + rate × T + one request.

A refused request raises ``errors.Throttled`` (503 SlowDown / ServerBusy with Retry-After) and takes no token.

Node-wide: the token buckets and the counters live in one memory-mapped file under the data directory's run dir
(``run/qos.shm``), fixed slots of 128 bytes, one per tenant or bucket that has been seen, taken in order of first
use and found by name. Workers take an fcntl record lock on it for each update (the kernel drops a dead worker's
lock, so a SIGKILLed worker cannot wedge the others); a single-process server skips the lock. Limits come from the
metadata store, re-read at most once a second per name and process, so a change made with ``atoll qos set``
holds everywhere within a second. A tenant and bucket without limits cost a dict lookup per request: their
counters are kept per process and added to the shared file (and to the Prometheus counters) once a second.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import math
import mmap
import os
import struct
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from atoll import errors, metrics
from atoll.core import cluster
from atoll.core.models import Limits

if TYPE_CHECKING:
    from atoll.core.namespace import Namespace

log = logging.getLogger("atoll.qos")

FILE_NAME = "qos.shm"
SLOTS = 65536
SLOT_SIZE = 128
HEADER_SIZE = 64
NAME_BYTES = 64
FILE_SIZE = HEADER_SIZE + SLOTS * SLOT_SIZE  # 8 MiB
LIMITS_TTL = 1.0  # seconds a process trusts the limits it read
FLUSH_INTERVAL = 1.0  # seconds between moves of per-process counters into the shared file

_COUNT = struct.Struct("<Q")  # header: slots in use
# slot: name (kind byte + UTF-8 name, NUL padded), request tokens, byte tokens, refill time (0: never), then the
# counters requests, bytes in, bytes out, throttled.
_STATE = struct.Struct("<ddd")
_COUNTERS = struct.Struct("<QQQQ")
_STATE_AT = NAME_BYTES
_COUNTERS_AT = NAME_BYTES + _STATE.size


@dataclass(frozen=True, slots=True)
class Rates:
    """A token-bucket configuration; a rate of 0 means no limit on that dimension."""

    requests: float = 0.0
    request_burst: float = 0.0
    bytes: float = 0.0
    bytes_burst: float = 0.0

    @classmethod
    def of(cls, limits: Limits | None) -> "Rates":
        if limits is None:
            return _NO_RATES
        rps, bps = max(limits.requests_per_second, 0.0), max(limits.bytes_per_second, 0.0)
        # Burst 0 is one second of the rate; a bucket must hold at least one request or it could never admit one.
        request_burst = max(limits.request_burst or rps, 1.0) if rps else 0.0
        bytes_burst = max(limits.bytes_burst or bps, 1.0) if bps else 0.0
        return cls(rps, request_burst, bps, bytes_burst)

    @property
    def limited(self) -> bool:
        return bool(self.requests or self.bytes)

    def shared(self, share: float) -> "Rates":
        """This node's part of cluster-wide limits (``share`` = 1 / live nodes; atoll.core.cluster)."""
        if share >= 1.0 or not self.limited:
            return self
        return Rates(self.requests * share, max(self.request_burst * share, 1.0) if self.requests else 0.0,
                     self.bytes * share, max(self.bytes_burst * share, 1.0) if self.bytes else 0.0)


_NO_RATES = Rates()


class _Entry:
    """One tenant's or bucket's view in this process: its limits (re-read every LIMITS_TTL seconds), its slot in
    the shared file, and counts not yet added to it."""

    __slots__ = ("label", "key", "scope", "tenant", "rates", "expires", "slot", "requests", "bytes_in",
                 "bytes_out", "throttled", "is_tenant")

    def __init__(self, label: str, is_tenant: bool, tenant: str, rates: Rates, expires: float) -> None:
        self.label = label
        self.is_tenant = is_tenant
        self.key = (b"t" if is_tenant else b"b") + label.encode()[: NAME_BYTES - 1]
        self.scope = f"tenant {label!r}" if is_tenant else f"bucket {label!r}"
        self.tenant = tenant
        self.rates = rates
        self.expires = expires
        self.slot = -1
        self.requests = self.bytes_in = self.bytes_out = self.throttled = 0


class Ticket:
    """What ``Governor.admit`` let through; ``sent`` charges the bytes its answer sends."""

    __slots__ = ("governor", "tenant", "bucket")

    def __init__(self, governor: "Governor", tenant: _Entry, bucket: _Entry | None) -> None:
        self.governor = governor
        self.tenant = tenant
        self.bucket = bucket

    def sent(self, nbytes: int) -> None:
        if nbytes > 0:
            self.governor._charge_out(self.tenant, self.bucket, nbytes)


class SharedTable:
    """The slots of ``run/qos.shm``. Every method that touches slots must run inside ``locked()``."""

    def __init__(self, path: str, shared: bool = True) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if os.fstat(fd).st_size < FILE_SIZE:
                # Allocated, not sparse: a store into a hole of a mapping on a full disk is a SIGBUS.
                os.posix_fallocate(fd, 0, FILE_SIZE)
            self._map = mmap.mmap(fd, FILE_SIZE)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._shared = shared
        self._slots: dict[bytes, int] = {}
        self._known = 0  # slots below this index are in ``_slots``
        self._full_warned = False

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)

    # locking ------------------------------------------------------------------------------------------
    def __enter__(self) -> "SharedTable":
        if self._shared:
            fcntl.lockf(self._fd, fcntl.LOCK_EX, 1, 0)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._shared:
            fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, 0)

    def locked(self) -> "SharedTable":
        return self

    # slots --------------------------------------------------------------------------------------------
    def slot_of(self, key: bytes) -> int:
        """The slot named ``key``, taken now if no process took it yet; -1 when the table is full."""
        found = self._slots.get(key)
        if found is not None:
            return found
        used = _COUNT.unpack_from(self._map, 0)[0]
        for index in range(self._known, used):
            at = HEADER_SIZE + index * SLOT_SIZE
            self._slots[bytes(self._map[at:at + NAME_BYTES]).rstrip(b"\0")] = index
        self._known = used
        found = self._slots.get(key)
        if found is not None:
            return found
        if used >= SLOTS:
            if not self._full_warned:
                self._full_warned = True
                log.warning("the QoS table is full (%d tenants and buckets): newer ones have no node-wide limits "
                            "or counters until the server restarts", SLOTS)
            return -1
        at = HEADER_SIZE + used * SLOT_SIZE
        self._map[at:at + NAME_BYTES] = key.ljust(NAME_BYTES, b"\0")
        _COUNT.pack_into(self._map, 0, used + 1)
        self._slots[key] = used
        self._known = used + 1
        return used

    def refilled(self, slot: int, rates: Rates, now: float) -> list[float]:
        """[request tokens, byte tokens] of ``slot`` as of ``now``."""
        requests, nbytes, stamp = _STATE.unpack_from(self._map, HEADER_SIZE + slot * SLOT_SIZE + _STATE_AT)
        if stamp == 0.0:
            return [rates.request_burst, rates.bytes_burst]
        elapsed = max(now - stamp, 0.0)
        return [min(rates.request_burst, requests + elapsed * rates.requests),
                min(rates.bytes_burst, nbytes + elapsed * rates.bytes)]

    def store(self, slot: int, tokens: list[float], now: float) -> None:
        _STATE.pack_into(self._map, HEADER_SIZE + slot * SLOT_SIZE + _STATE_AT, tokens[0], tokens[1], now)

    def add_counts(self, slot: int, requests: int, bytes_in: int, bytes_out: int, throttled: int) -> None:
        at = HEADER_SIZE + slot * SLOT_SIZE + _COUNTERS_AT
        old = _COUNTERS.unpack_from(self._map, at)
        _COUNTERS.pack_into(self._map, at, old[0] + requests, old[1] + bytes_in, old[2] + bytes_out,
                            old[3] + throttled)

    def counters(self) -> list[tuple[bytes, tuple[int, int, int, int]]]:
        used = min(_COUNT.unpack_from(self._map, 0)[0], SLOTS)
        out = []
        for index in range(used):
            at = HEADER_SIZE + index * SLOT_SIZE
            out.append((bytes(self._map[at:at + NAME_BYTES]).rstrip(b"\0"),
                        _COUNTERS.unpack_from(self._map, at + _COUNTERS_AT)))
        return out


def shared_path(run_dir: str) -> str:
    return os.path.join(run_dir, FILE_NAME)


def reset_shared(run_dir: str) -> None:
    """Start a server with empty token buckets and counters (called before any worker starts)."""
    try:
        os.unlink(shared_path(run_dir))
    except FileNotFoundError:
        pass


class Governor:
    """Admission by rate limits, and the request and byte counters per tenant and bucket (``snapshot``)."""

    def __init__(self, ns: "Namespace", run_dir: str, *, shared: bool = True) -> None:
        self.ns = ns
        os.makedirs(run_dir, mode=0o700, exist_ok=True)
        self.table = SharedTable(shared_path(run_dir), shared=shared)
        self._tenants: dict[str, _Entry] = {}
        self._buckets: dict[str, _Entry | None] = {}
        self._bucket_misses: dict[str, float] = {}
        self._flush_handle: asyncio.TimerHandle | None = None

    def close(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self.flush()
        self.table.close()

    # admission ----------------------------------------------------------------------------------------
    async def admit(self, tenant: str | None, bucket: str | None, bytes_in: int = 0,
                    sends_body: bool = False) -> Ticket | None:
        """Let a request through or raise Throttled. ``tenant``: the requesting identity's (None: the bucket's,
        for an anonymous read of a public container); ``bucket``: the bucket it names, if any; ``bytes_in``: the
        body's declared length; ``sends_body``: the answer may carry a body (GET), so a byte limit applies.
        None when there is nobody to charge (no tenant and no such bucket)."""
        now = time.monotonic()
        b = None
        if bucket is not None:
            b = self._buckets.get(bucket)
            if b is None or now >= b.expires:
                b = await self._refresh_bucket(bucket, now)
        if tenant is None:
            if b is None:
                return None
            tenant = b.tenant
        elif b is not None and b.tenant != tenant:
            # Another tenant's bucket (an operator, or a request the handler will refuse): charged to the caller's
            # tenant only, so nobody can spend another tenant's tokens by naming its buckets.
            b = None
        t = self._tenants.get(tenant)
        if t is None or now >= t.expires:
            t = await self._refresh_tenant(tenant, now)
        if t.rates.limited or (b is not None and b.rates.limited):
            self._take(t, b, bytes_in, sends_body or bytes_in > 0, now)
        t.requests += 1
        t.bytes_in += bytes_in
        if b is not None:
            b.requests += 1
            b.bytes_in += bytes_in
        self._schedule_flush()
        return Ticket(self, t, b)

    def _take(self, t: _Entry, b: _Entry | None, bytes_in: int, moves_bytes: bool, now: float) -> None:
        limited = [e for e in (b, t) if e is not None and e.rates.limited]
        refused: tuple[_Entry, str, float] | None = None
        with self.table.locked() as table:
            states = []
            for entry in limited:
                if entry.slot < 0:
                    entry.slot = table.slot_of(entry.key)
                if entry.slot < 0:
                    continue
                rates = entry.rates
                tokens = table.refilled(entry.slot, rates, now)
                if rates.requests and tokens[0] < 1.0:
                    refused = (entry, f"{_number(rates.requests)} requests per second",
                               (1.0 - tokens[0]) / rates.requests)
                    break
                if rates.bytes and moves_bytes and tokens[1] <= 0.0:
                    refused = (entry, f"{_number(rates.bytes)} bytes per second",
                               (1.0 - tokens[1]) / rates.bytes)
                    break
                states.append((entry, tokens))
            if refused is None:
                for entry, tokens in states:
                    if entry.rates.requests:
                        tokens[0] -= 1.0
                    if entry.rates.bytes:
                        tokens[1] -= bytes_in
                    table.store(entry.slot, tokens, now)
        if refused is None:
            return
        for entry in (t, b):
            if entry is not None:
                entry.requests += 1
                entry.throttled += 1
        self._schedule_flush()
        entry, limit, wait = refused
        retry_after = max(1, math.ceil(wait))
        raise errors.Throttled(f"Please reduce your request rate: {entry.scope} is limited to {limit}; retry in "
                               f"{retry_after} s.", retry_after=retry_after)

    def _charge_out(self, t: _Entry, b: _Entry | None, nbytes: int) -> None:
        t.bytes_out += nbytes
        if b is not None:
            b.bytes_out += nbytes
        if not (t.rates.bytes or (b is not None and b.rates.bytes)):
            return
        now = time.monotonic()
        with self.table.locked() as table:
            for entry in (t, b):
                if entry is None or not entry.rates.bytes:
                    continue
                if entry.slot < 0:
                    entry.slot = table.slot_of(entry.key)
                if entry.slot < 0:
                    continue
                tokens = table.refilled(entry.slot, entry.rates, now)
                tokens[1] -= nbytes  # may go into debt: the answer is ready, refusing it now would waste it
                table.store(entry.slot, tokens, now)

    async def _refresh_tenant(self, name: str, now: float) -> _Entry:
        tenant = await self.ns.meta.get_tenant(name)
        rates = Rates.of(tenant.limits if tenant is not None else None).shared(cluster.share())
        entry = self._tenants.get(name)
        if entry is None:
            entry = self._tenants[name] = _Entry(name, True, name, rates, now + LIMITS_TTL)
        else:
            entry.rates, entry.expires = rates, now + LIMITS_TTL
        return entry

    async def _refresh_bucket(self, name: str, now: float) -> _Entry | None:
        missed = self._bucket_misses.get(name)
        if missed is not None and now < missed:
            return None
        bucket = await self.ns.meta.get_bucket(name)
        if bucket is None:
            # Not remembered as an entry: names that do not exist must not take slots in the shared table.
            if len(self._bucket_misses) > 10000:
                self._bucket_misses.clear()
            self._bucket_misses[name] = now + LIMITS_TTL
            self._buckets.pop(name, None)
            return None
        self._bucket_misses.pop(name, None)
        rates = Rates.of(bucket.limits).shared(cluster.share())
        entry = self._buckets.get(name)
        if entry is None or entry.tenant != bucket.tenant:
            entry = self._buckets[name] = _Entry(name, False, bucket.tenant, rates, now + LIMITS_TTL)
        else:
            entry.rates, entry.expires = rates, now + LIMITS_TTL
        return entry

    # counters -----------------------------------------------------------------------------------------
    def _schedule_flush(self) -> None:
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_later(FLUSH_INTERVAL, self._flush_tick)

    def _flush_tick(self) -> None:
        self._flush_handle = None
        if self.flush():
            self._flush_handle = asyncio.get_running_loop().call_later(FLUSH_INTERVAL, self._flush_tick)

    def flush(self) -> bool:
        """Add this process's counts to the shared file and to the Prometheus counters; True if there were any."""
        pending = [e for entries in (self._tenants.values(), self._buckets.values()) for e in entries
                   if e is not None and (e.requests or e.bytes_in or e.bytes_out or e.throttled)]
        if not pending:
            return False
        with self.table.locked() as table:
            for entry in pending:
                if entry.slot < 0:
                    entry.slot = table.slot_of(entry.key)
                if entry.slot >= 0:
                    table.add_counts(entry.slot, entry.requests, entry.bytes_in, entry.bytes_out, entry.throttled)
        for entry in pending:
            if entry.is_tenant:
                label = entry.label
                if entry.requests:
                    metrics.TENANT_REQUESTS.labels(label).inc(entry.requests)
                if entry.throttled:
                    metrics.TENANT_THROTTLED.labels(label).inc(entry.throttled)
                if entry.bytes_in:
                    metrics.TENANT_BYTES.labels(label, "in").inc(entry.bytes_in)
                if entry.bytes_out:
                    metrics.TENANT_BYTES.labels(label, "out").inc(entry.bytes_out)
            entry.requests = entry.bytes_in = entry.bytes_out = entry.throttled = 0
        return True

    def snapshot(self) -> dict[str, dict[str, dict[str, int]]]:
        """Node-wide counters since the server started: {"tenants": {name: {"requests", "bytes_in", "bytes_out",
        "throttled"}}, "buckets": {...}}. ``requests`` counts throttled requests too; other workers' counts of
        the last second may not be in yet (they move once a second)."""
        self.flush()
        out: dict[str, dict[str, dict[str, int]]] = {"tenants": {}, "buckets": {}}
        with self.table.locked() as table:
            rows = table.counters()
        for key, (requests, bytes_in, bytes_out, throttled) in rows:
            group = out["tenants"] if key[:1] == b"t" else out["buckets"]
            group[key[1:].decode(errors="replace")] = {"requests": requests, "bytes_in": bytes_in,
                                                      "bytes_out": bytes_out, "throttled": throttled}
        return out


def _number(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:g}"
