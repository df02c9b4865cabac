"""The circuit breaker and the WAN scheduler of a cold endpoint: pure logic, on a real event loop and clock."""

from __future__ import annotations

import asyncio
import time

import pytest

from atoll.stores.cold.endpoint import (CLOSED, HALF_OPEN, OPEN, Breaker, BreakerSettings, Health, TrafficPolicy,
                                        WanScheduler)
from atoll.stores.cold.traffic import Traffic

pytestmark = pytest.mark.serial  # the WAN scheduler's waits are asserted to tens of milliseconds


def test_breaker_opens_after_consecutive_failures_and_a_success_resets_the_count():
    breaker = Breaker(BreakerSettings(failures=3, cooldown=0.05, max_cooldown=0.2))
    assert not breaker.failed() and not breaker.failed()
    breaker.succeeded()
    assert breaker.consecutive_failures == 0
    assert not breaker.failed() and not breaker.failed()
    assert breaker.failed()  # the third in a row opens it
    assert breaker.state == OPEN and breaker.opens == 1
    assert not breaker.admit()  # refused at once while cooling down
    assert 0 < breaker.retry_after() <= 0.05 * 1.2


def test_half_open_admits_one_probe_and_its_outcome_decides():
    breaker = Breaker(BreakerSettings(failures=1, cooldown=0.05, max_cooldown=0.4))
    breaker.failed()
    time.sleep(0.07)
    assert not breaker.admit(probe_ok=False)  # a long upload is no probe
    assert breaker.admit()  # the probe
    assert breaker.state == HALF_OPEN
    assert not breaker.admit()  # everyone else still fails fast
    breaker.failed()  # the probe failed: open again, for twice as long
    assert breaker.state == OPEN and breaker.opens == 1
    assert breaker.retry_after() > 0.05 * 1.2
    time.sleep(0.13)
    assert breaker.admit()
    assert breaker.succeeded()  # closes it
    assert breaker.state == CLOSED and breaker.admit()


def test_an_abandoned_probe_lets_the_next_caller_probe():
    breaker = Breaker(BreakerSettings(failures=1, cooldown=0.01))
    breaker.failed()
    time.sleep(0.02)
    assert breaker.admit()
    breaker.abandoned()
    assert breaker.state == OPEN
    assert breaker.admit()


def test_health_state_follows_the_breaker_and_latency():
    health = Health(degraded_latency=0.5, breaker=Breaker(BreakerSettings(failures=2)))
    health.succeeded(Traffic.DEMAND, 0.01)
    assert health.state == "healthy"
    health.failed(Traffic.DRAIN, "timed out")
    assert health.state == "degraded"
    health.failed(Traffic.DRAIN, "timed out")
    assert health.state == "partitioned"
    totals = health.per_class["drain"].window.totals()
    assert (totals["requests"], totals["failures"], totals["error_rate"]) == (2, 2, 1.0)
    health.succeeded(Traffic.DEMAND, 2.0)
    health.succeeded(Traffic.DEMAND, 2.0)
    assert health.breaker.state == CLOSED
    assert health.state == "degraded"  # reachable but slow (and failing a moment ago)


def test_lower_classes_yield_to_busy_higher_ones_for_at_most_the_aging_time():
    async def scenario() -> None:
        wan = WanScheduler(TrafficPolicy(aging=0.3))
        # Nothing busier: no wait at all.
        started = time.monotonic()
        await wan.pace(Traffic.DRAIN, 1 << 20)
        assert time.monotonic() - started < 0.05

        async def demand_for(seconds: float) -> None:
            async with wan.slot(Traffic.DEMAND):
                await asyncio.sleep(seconds)

        # A short miss: staging waits until it is done, not longer.
        miss = asyncio.ensure_future(demand_for(0.1))
        await asyncio.sleep(0)
        started = time.monotonic()
        await wan.pace(Traffic.STAGE, 1 << 20)
        waited = time.monotonic() - started
        assert 0.08 <= waited < 0.25, waited
        await miss

        # Misses without end: staging still moves one chunk per aging period (never starved).
        endless = asyncio.ensure_future(demand_for(5))
        await asyncio.sleep(0)
        started = time.monotonic()
        await wan.pace(Traffic.STAGE, 1 << 20)
        waited = time.monotonic() - started
        assert 0.28 <= waited < 0.5, waited
        assert wan.yielded[Traffic.STAGE] >= 0.38
        # The drain yields to staging as staging yields to misses.
        async with wan.slot(Traffic.STAGE):
            assert wan.busier(Traffic.DRAIN) == [Traffic.DEMAND, Traffic.STAGE]
        endless.cancel()
        await asyncio.gather(endless, return_exceptions=True)
        assert wan.busier(Traffic.DRAIN) == []

    asyncio.run(scenario())


def test_a_class_bandwidth_cap_paces_its_transfers():
    async def scenario() -> None:
        wan = WanScheduler(TrafficPolicy(bandwidth={"demand": 0, "stage": 0, "drain": 1 << 20}))
        started = time.monotonic()
        for _ in range(6):
            await wan.pace(Traffic.DRAIN, 256 << 10)  # 1.5 MiB at 1 MiB/s, the first MiB as a burst
        assert 0.4 <= time.monotonic() - started < 0.9
        started = time.monotonic()
        await wan.pace(Traffic.DEMAND, 8 << 20)  # other classes are not capped by the drain's limit
        assert time.monotonic() - started < 0.05

    asyncio.run(scenario())


def test_a_miss_lookup_holds_lower_classes_back_until_a_moment_after_it():
    async def scenario() -> None:
        wan = WanScheduler(TrafficPolicy(aging=2.0))
        with wan.busy(Traffic.DEMAND, linger=0.2):
            assert wan.busier(Traffic.STAGE) == [Traffic.DEMAND]
        # The lookup is over, but its GET is about to follow: staging still holds back for the linger.
        assert wan.busier(Traffic.STAGE) == [Traffic.DEMAND]
        started = time.monotonic()
        await wan.pace(Traffic.STAGE, 0)
        assert 0.15 <= time.monotonic() - started < 0.5
        assert wan.busier(Traffic.STAGE) == []

    asyncio.run(scenario())


def test_a_background_transfer_learns_at_once_that_a_higher_class_needs_the_link():
    async def scenario() -> None:
        wan = WanScheduler(TrafficPolicy(aging=0.2))
        waiter = asyncio.ensure_future(wan.higher_busy(Traffic.STAGE))
        async with wan.slot(Traffic.DRAIN):  # a lower class does not outrank staging
            await asyncio.sleep(0.05)
        assert not waiter.done()
        async with wan.slot(Traffic.DEMAND):
            await asyncio.wait_for(waiter, 0.05)
            # Yielding for the aging time and no more, and saying so.
            started = time.monotonic()
            assert await wan.pace(Traffic.STAGE, 0) is True
            assert 0.18 <= time.monotonic() - started < 0.4
        assert await wan.pace(Traffic.STAGE, 0) is False

    asyncio.run(scenario())
