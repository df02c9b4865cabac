"""Weighted sharing of one traffic class of a cold link between tenants.

Two places on a link are scarce and can be queued for, so those are where tenants are weighed:

* ``FairSlots``: a class's concurrent transfers. When every slot is taken, a freed slot goes to the waiting
  tenant that holds the fewest slots for its weight. A link whose bottleneck is the network itself shares its
  bytes per connection, so slots held in proportion to weight are bytes in proportion to weight.
* ``FairTokenBucket``: a class's bandwidth cap. Requests for tokens are served by start-time fair queueing on
  bytes (each tenant's virtual time advances by bytes / weight), so backlogged tenants get bytes by weight
  whatever their number of transfers.

Both are work-conserving: a tenant alone gets all of it, and nobody waits while there is room.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections import deque
from typing import Callable

WeightOf = Callable[[str], float]


def _unit_weight(_tenant: str) -> float:
    return 1.0


def _positive(weight: float) -> float:
    return weight if weight > 0 else 1.0


class FairSlots:
    """``capacity`` slots; ``acquire(tenant)`` waits for one, ``release(tenant)`` gives it back."""

    def __init__(self, capacity: int, weight_of: WeightOf | None = None) -> None:
        self.capacity = max(1, capacity)
        self.weight_of = weight_of or _unit_weight
        self.held: dict[str, int] = {}
        self.in_use = 0
        self._waiting: dict[str, deque[asyncio.Future]] = {}

    async def acquire(self, tenant: str) -> None:
        if self.in_use < self.capacity and not self._waiting:
            self._take(tenant)
            return
        granted = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(tenant, deque()).append(granted)
        self._grant()  # a slot may be free with only other tenants' waiters ahead
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self.release(tenant)  # granted just as the waiter was cancelled: pass it on
            else:
                queue = self._waiting.get(tenant)
                if queue is not None and granted in queue:
                    queue.remove(granted)
                    if not queue:
                        del self._waiting[tenant]
            raise

    def release(self, tenant: str) -> None:
        self.in_use -= 1
        left = self.held.get(tenant, 0) - 1
        if left > 0:
            self.held[tenant] = left
        else:
            self.held.pop(tenant, None)
        self._grant()

    def _take(self, tenant: str) -> None:
        self.in_use += 1
        self.held[tenant] = self.held.get(tenant, 0) + 1

    def _grant(self) -> None:
        while self.in_use < self.capacity and self._waiting:
            tenant = min(self._waiting, key=lambda t: ((self.held.get(t, 0) + 1) / _positive(self.weight_of(t)), t))
            queue = self._waiting[tenant]
            granted = queue.popleft()
            if not queue:
                del self._waiting[tenant]
            if granted.done():
                continue
            self._take(tenant)
            granted.set_result(None)


def _node_share() -> float:
    from atoll.core.cluster import share

    return share()


class FairTokenBucket:
    """A bandwidth cap (bytes/s, 0 = none) shared by tenants by weight: start-time fair queueing of token
    requests. A request larger than one second of the rate waits for a full bucket and takes it all (the debt
    is paid by the requests after it), as the plain token bucket did."""

    def __init__(self, rate: int, weight_of: WeightOf | None = None) -> None:
        self.cap = rate  # cluster-wide: each node of a cluster takes its share (atoll.core.cluster.share)
        self.weight_of = weight_of or _unit_weight
        self._tokens = float(rate)
        self._stamp = time.monotonic()
        self._queue: list[tuple[float, int, int, asyncio.Future]] = []  # (start tag, order, amount, grant)
        self._finish: dict[str, float] = {}  # each tenant's last finish tag
        self._clock = 0.0  # virtual time: the start tag of the request served last
        self._order = itertools.count()
        self._server: asyncio.Task | None = None

    @property
    def rate(self) -> float:
        return self.cap * _node_share() if self.cap > 0 else 0

    async def take(self, amount: int, tenant: str = "") -> None:
        if self.rate <= 0:
            return
        start = max(self._clock, self._finish.get(tenant, 0.0))
        self._finish[tenant] = start + amount / _positive(self.weight_of(tenant))
        if len(self._finish) > 4096:  # tenants long gone: their tags no longer matter
            self._finish = {t: f for t, f in self._finish.items() if f > self._clock}
        granted = asyncio.get_running_loop().create_future()
        heapq.heappush(self._queue, (start, next(self._order), amount, granted))
        if self._server is None or self._server.done():
            self._server = asyncio.get_running_loop().create_task(self._serve())
        await granted  # a cancelled waiter's request is skipped (see _serve)

    async def _serve(self) -> None:
        while self._queue:
            start, _, amount, granted = self._queue[0]
            if granted.done():
                heapq.heappop(self._queue)
                continue
            rate = self.rate  # re-read each turn: the cluster's live nodes change this node's share
            wanted = min(amount, rate)
            now = time.monotonic()
            self._tokens = min(float(rate), self._tokens + (now - self._stamp) * rate)
            self._stamp = now
            if self._tokens < wanted:
                await asyncio.sleep((wanted - self._tokens) / rate)
                continue
            heapq.heappop(self._queue)
            if granted.done():
                continue
            self._tokens -= amount
            self._clock = start
            granted.set_result(None)
