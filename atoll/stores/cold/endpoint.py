"""One cold endpoint (an Azure account, an S3 endpoint, a GCS service) as the WAN sees it: its health, its
circuit breaker and the sharing of its link between traffic classes.

Every link to the same endpoint shares one ``Endpoint``: a partition cuts the network path, not one bucket, so
one bucket's failures open the breaker for all of them, and a drain to one container competes for the same
WAN as a miss in another.

Breaker::

    closed --(``failures`` consecutive failures)--> open --(cooldown)--> half-open --(probe ok)--> closed
                                                     ^------------------(probe failed, cooldown x2)-----'

While open, calls fail at once (the caller answers 503 with Retry-After), so a dead link costs one timeout,
not one per request. The cooldown starts at ``cooldown`` seconds and doubles per failed probe up to
``max_cooldown``, with jitter so that workers and nodes do not probe in step.

Priorities: demand (a client waits) > stage > drain. Each class has its own concurrency limit, so a busy drain
never takes a miss's slot; between chunks, a transfer of a lower class yields while a higher class is moving
bytes, for at most ``aging`` seconds per chunk, so a long run of misses slows staging down but never stops it,
and staging never starves the drain. Inside each class, tenants share the slots and the bandwidth cap by weight
(``fairness``).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, AsyncIterator, Iterator

from atoll import errors
from atoll.stores.cold.fairness import FairSlots, FairTokenBucket, WeightOf
from atoll.stores.cold.traffic import Traffic

if TYPE_CHECKING:
    from atoll.stores.cold.store import Timeouts, Transfer

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"
WINDOW_SECONDS = 60.0
_BUCKET_SECONDS = 5.0


@dataclass(slots=True)
class BreakerSettings:
    failures: int = 3  # consecutive failed requests that open the breaker
    cooldown: float = 2.0  # seconds open before the first probe
    max_cooldown: float = 10.0


class Breaker:
    def __init__(self, settings: BreakerSettings | None = None) -> None:
        self.settings = settings or BreakerSettings()
        self.state = CLOSED
        self.consecutive_failures = 0
        self.opened_at = 0.0  # wall clock, for status
        self.opens = 0
        self._cooldown = self.settings.cooldown
        self._retry_at = 0.0  # monotonic
        self._probing = False

    def retry_after(self) -> float:
        """Seconds until the next probe may run (0 when closed)."""
        if self.state == CLOSED:
            return 0.0
        return max(0.0, self._retry_at - time.monotonic())

    def admit(self, probe_ok: bool = True) -> bool:
        """May a request go out now? When open and due, the first caller becomes the half-open probe (if
        ``probe_ok``: a transfer that would hold the probe for minutes is no probe); the rest are refused."""
        if self.state == CLOSED:
            return True
        if self._probing or not probe_ok or time.monotonic() < self._retry_at:
            return False
        self.state = HALF_OPEN
        self._probing = True
        return True

    def succeeded(self) -> bool:
        """Record a success; True if it closed the breaker."""
        self.consecutive_failures = 0
        was_open = self.state != CLOSED
        self.state = CLOSED
        self._probing = False
        self._cooldown = self.settings.cooldown
        return was_open

    def failed(self) -> bool:
        """Record a failure; True if it opened the breaker (or kept it open after a failed probe)."""
        self.consecutive_failures += 1
        if self.state == HALF_OPEN or (self.state == CLOSED and
                                       self.consecutive_failures >= self.settings.failures):
            if self.state == HALF_OPEN:
                self._cooldown = min(self.settings.max_cooldown, self._cooldown * 2)
            else:
                self.opened_at = time.time()
                self.opens += 1
            self.state = OPEN
            self._probing = False
            self._retry_at = time.monotonic() + self._cooldown * random.uniform(0.8, 1.2)
            return True
        return False

    def abandoned(self) -> None:
        """The probe ended without an answer (cancelled): let another caller probe."""
        if self.state == HALF_OPEN:
            self.state = OPEN
            self._probing = False


class Window:
    """Event counts and sums over the last ``WINDOW_SECONDS``, in 5-second buckets: rates for status."""

    def __init__(self) -> None:
        self._buckets: deque[list[float]] = deque()  # [start, requests, failures, bytes_in, bytes_out, latency]

    def _current(self) -> list[float]:
        now = time.monotonic()
        start = now - now % _BUCKET_SECONDS
        if not self._buckets or self._buckets[-1][0] != start:
            self._buckets.append([start, 0, 0, 0, 0, 0.0])
            while self._buckets and self._buckets[0][0] <= now - WINDOW_SECONDS - _BUCKET_SECONDS:
                self._buckets.popleft()
        return self._buckets[-1]

    def request(self, ok: bool, latency: float = 0.0) -> None:
        bucket = self._current()
        bucket[1] += 1
        if not ok:
            bucket[2] += 1
        bucket[5] += latency

    def moved(self, bytes_in: int = 0, bytes_out: int = 0) -> None:
        bucket = self._current()
        bucket[3] += bytes_in
        bucket[4] += bytes_out

    def totals(self) -> dict[str, float]:
        now = time.monotonic()
        live = [b for b in self._buckets if b[0] > now - WINDOW_SECONDS - _BUCKET_SECONDS]
        span = max(_BUCKET_SECONDS, min(WINDOW_SECONDS, now - live[0][0])) if live else WINDOW_SECONDS
        requests = sum(b[1] for b in live)
        failures = sum(b[2] for b in live)
        return {"requests": requests, "failures": failures,
                "error_rate": round(failures / requests, 4) if requests else 0.0,
                "bytes_in_per_second": round(sum(b[3] for b in live) / span, 1),
                "bytes_out_per_second": round(sum(b[4] for b in live) / span, 1),
                "mean_latency": round(sum(b[5] for b in live) / (requests - failures), 6)
                if requests > failures else 0.0}


@dataclass(slots=True)
class ClassStats:
    requests: int = 0
    failures: int = 0
    rejected: int = 0  # refused at once by an open breaker: never reached the WAN
    bytes_in: int = 0
    bytes_out: int = 0
    window: Window = field(default_factory=Window)


@dataclass(slots=True)
class Health:
    degraded_latency: float = 1.0  # seconds of mean request latency above which the link counts as slow
    breaker: Breaker = field(default_factory=Breaker)
    last_success: float = 0.0
    last_failure: float = 0.0
    last_error: str = ""
    latency_ewma: float = 0.0
    retries: int = 0
    window: Window = field(default_factory=Window)
    per_class: dict[str, ClassStats] = field(default_factory=lambda: {t.value: ClassStats() for t in Traffic})

    @property
    def consecutive_failures(self) -> int:
        return self.breaker.consecutive_failures

    @property
    def state(self) -> str:
        if self.breaker.state != CLOSED:
            return "partitioned"
        if self.breaker.consecutive_failures or self.latency_ewma > self.degraded_latency:
            return "degraded"
        if self.window.totals()["failures"] and time.time() - self.last_failure < 10.0:
            return "degraded"
        return "healthy"

    def succeeded(self, traffic: Traffic | None, latency: float) -> bool:
        self.last_success = time.time()
        self.latency_ewma = 0.8 * self.latency_ewma + 0.2 * latency if self.latency_ewma else latency
        self.window.request(True, latency)
        if traffic is not None:
            stats = self.per_class[traffic.value]
            stats.requests += 1
            stats.window.request(True, latency)
        return self.breaker.succeeded()

    def failed(self, traffic: Traffic | None, kind: str) -> bool:
        self.last_failure = time.time()
        self.last_error = kind
        self.window.request(False)
        if traffic is not None:
            stats = self.per_class[traffic.value]
            stats.requests += 1
            stats.failures += 1
            stats.window.request(False)
        return self.breaker.failed()

    def moved(self, traffic: Traffic, bytes_in: int = 0, bytes_out: int = 0) -> None:
        stats = self.per_class[traffic.value]
        stats.bytes_in += bytes_in
        stats.bytes_out += bytes_out
        stats.window.moved(bytes_in, bytes_out)
        self.window.moved(bytes_in, bytes_out)


@dataclass(slots=True)
class TrafficPolicy:
    """Per class: concurrent transfers and bytes/s (0 = no cap); ``aging``: the longest a transfer of a lower
    class yields to a higher one per chunk."""

    concurrency: dict[str, int] = field(default_factory=lambda: {"demand": 64, "stage": 16, "drain": 8})
    bandwidth: dict[str, int] = field(default_factory=lambda: {"demand": 0, "stage": 0, "drain": 0})
    aging: float = 5.0


class WanScheduler:
    """Slots and pacing per traffic class on one endpoint's link."""

    ORDER = (Traffic.DEMAND, Traffic.STAGE, Traffic.DRAIN)

    def __init__(self, policy: TrafficPolicy | None = None, weight_of: WeightOf | None = None) -> None:
        self.policy = policy or TrafficPolicy()
        # Inside each class, tenants share slots and bandwidth by weight (``weight_of(tenant)``).
        self._slots = {t: FairSlots(self.policy.concurrency.get(t.value, 8), weight_of) for t in self.ORDER}
        self._buckets = {t: FairTokenBucket(self.policy.bandwidth.get(t.value, 0), weight_of) for t in self.ORDER}
        self.active = {t: 0 for t in self.ORDER}  # transfers holding a slot
        self.yielded = {t: 0.0 for t in self.ORDER}  # seconds spent yielding to higher classes, for status
        self._quiet: dict[Traffic, asyncio.Event] = {}
        self._busy: dict[Traffic, asyncio.Event] = {}
        self.preempted = {t: 0 for t in self.ORDER}  # background GETs closed to give the link to a higher class

    @asynccontextmanager
    async def slot(self, traffic: Traffic, tenant: str = "") -> AsyncIterator[None]:
        slots = self._slots[traffic]
        await slots.acquire(tenant)
        try:
            with self.busy(traffic):
                yield
        finally:
            slots.release(tenant)

    @contextmanager
    def busy(self, traffic: Traffic, linger: float = 0.0) -> Iterator[None]:
        """Mark the class as using the link (lower classes yield to it) without taking a slot: a request
        that is not a transfer, such as a miss's HEAD. ``linger``: seconds the mark outlasts the request
        (a miss's HEAD is followed by its GET; lower classes must not start a request in between)."""
        self.active[traffic] += 1
        self._quiet_event(traffic).clear()
        self._busy_event(traffic).set()
        try:
            yield
        finally:
            if linger > 0:
                asyncio.get_running_loop().call_later(linger, self._release, traffic)
            else:
                self._release(traffic)

    def _release(self, traffic: Traffic) -> None:
        self.active[traffic] -= 1
        if not self.active[traffic]:
            self._quiet[traffic].set()
            self._busy[traffic].clear()

    def _quiet_event(self, traffic: Traffic) -> asyncio.Event:
        event = self._quiet.get(traffic)
        if event is None:
            event = self._quiet[traffic] = asyncio.Event()
            event.set()
        return event

    def _busy_event(self, traffic: Traffic) -> asyncio.Event:
        event = self._busy.get(traffic)
        if event is None:
            event = self._busy[traffic] = asyncio.Event()
        return event

    async def higher_busy(self, traffic: Traffic) -> None:
        """Returns once a higher class is using the link."""
        higher = self.ORDER[: self.ORDER.index(traffic)]
        if not higher:
            await asyncio.Event().wait()  # nothing outranks the top class
        waits = [asyncio.ensure_future(self._busy_event(other).wait()) for other in higher]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    def busier(self, traffic: Traffic) -> list[Traffic]:
        """Higher classes with transfers in progress."""
        return [t for t in self.ORDER[: self.ORDER.index(traffic)] if self.active[t]]

    async def pace(self, traffic: Traffic, amount: int, tenant: str = "") -> bool:
        """Before moving ``amount`` more bytes: the class's bandwidth cap (shared by tenants by weight), then
        yield to busier classes, for at most the aging time. True when it stopped yielding because of the aging
        time (a higher class is still busy and this one goes ahead anyway)."""
        await self._buckets[traffic].take(amount, tenant)
        higher = self.busier(traffic)
        if not higher:
            return False
        started = time.monotonic()
        waits = [asyncio.ensure_future(self._quiet_event(other).wait()) for other in higher]
        try:
            done, _ = await asyncio.wait(waits, timeout=self.policy.aging, return_when=asyncio.ALL_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
        self.yielded[traffic] += time.monotonic() - started
        return len(done) < len(waits)


class Endpoint:
    """What every link to one cold endpoint shares in a process: health and breaker, the WAN scheduler, and
    the watchdog over transfers in flight."""

    WATCH_INTERVAL = 0.5

    def __init__(self, key: str, *, breaker: BreakerSettings | None = None, policy: TrafficPolicy | None = None,
                 degraded_latency: float = 1.0, weight_of: WeightOf | None = None) -> None:
        self.key = key
        self.health = Health(degraded_latency=degraded_latency, breaker=Breaker(breaker))
        self.wan = WanScheduler(policy, weight_of)
        self.transfers: set["Transfer"] = set()
        self._watchdog: asyncio.Task | None = None
        self._fast_limit = 3.0
        self.probe: asyncio.Task | None = None  # the half-open or liveness probe in flight

    def refuse(self, traffic: Traffic) -> errors.ColdStoreUnavailable:
        self.health.per_class[traffic.value].rejected += 1
        wait = max(1, round(self.health.breaker.retry_after() + 0.5))
        return errors.ColdStoreUnavailable("The cold store of this bucket is unreachable (the link is down); "
                                           "retry later.", retry_after=wait)

    @contextmanager
    def watch(self, transfer: "Transfer", timeouts: "Timeouts") -> Iterator[None]:
        self._fast_limit = timeouts.first_byte
        self.transfers.add(transfer)
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = asyncio.get_running_loop().create_task(self._watch())
        try:
            yield
        finally:
            self.transfers.discard(transfer)

    async def _watch(self) -> None:
        """Cut transfers whose bytes stopped: after their idle limit, or after the first-byte time once the
        breaker says the link is down (a partition freezes open connections; they would hang for good)."""
        while self.transfers:
            await asyncio.sleep(self.WATCH_INTERVAL)
            now = time.monotonic()
            down = self.health.breaker.state != CLOSED
            for transfer in list(self.transfers):
                if transfer.paused:
                    continue
                limit = min(transfer.idle_limit, self._fast_limit) if down else transfer.idle_limit
                if now - transfer.last > limit:
                    transfer.expire()

    def quiet_for(self) -> float:
        """Seconds the oldest stuck-looking transfer has not moved (0 when none): a link to check."""
        now = time.monotonic()
        return max((now - t.last for t in self.transfers if not t.paused), default=0.0)
