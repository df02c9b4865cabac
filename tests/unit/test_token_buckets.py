"""Token-bucket logic of atoll.core.qos on a real shared file and a real SQLite metadata store (the limits' source):
bursts, refusals that take nothing, byte debt, two processes' views of one table, counters."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest

from atoll import errors
from atoll.core import qos
from atoll.core.models import Bucket, Limits, Tenant
from atoll.stores.meta.sqlite import SqliteMetaStore


def test_rates_default_bursts_are_one_second_and_at_least_one_request():
    assert qos.Rates.of(Limits()) == qos.Rates() and not qos.Rates.of(Limits()).limited
    assert qos.Rates.of(Limits(requests_per_second=50)) == qos.Rates(50, 50, 0, 0)
    assert qos.Rates.of(Limits(requests_per_second=0.5)).request_burst == 1.0
    assert qos.Rates.of(Limits(bytes_per_second=4 << 20, bytes_burst=1 << 20)) == qos.Rates(0, 0, 4 << 20, 1 << 20)


def test_table_refills_at_the_rate_up_to_the_burst(tmp_path):
    table = qos.SharedTable(str(tmp_path / "q"), shared=False)
    rates = qos.Rates(10, 5, 1000, 2000)
    slot = table.slot_of(b"tteam")
    assert table.refilled(slot, rates, 100.0) == [5, 2000]  # never used: full
    table.store(slot, [0.0, -500.0], 100.0)
    assert table.refilled(slot, rates, 100.2) == pytest.approx([2.0, -300.0])
    assert table.refilled(slot, rates, 200.0) == [5, 2000]
    table.close()


def test_two_tables_on_one_file_share_slots_by_name(tmp_path):
    first = qos.SharedTable(str(tmp_path / "q"))
    second = qos.SharedTable(str(tmp_path / "q"))
    with first.locked():
        a, b = first.slot_of(b"ta"), first.slot_of(b"bx")
    with second.locked():
        assert second.slot_of(b"bx") == b and second.slot_of(b"ta") == a
        c = second.slot_of(b"tc")
    with first.locked():
        assert first.slot_of(b"tc") == c and len({a, b, c}) == 3
        first.add_counts(c, 1, 2, 3, 4)
    with second.locked():
        second.add_counts(c, 1, 1, 1, 1)
        assert dict(second.counters())[b"tc"] == (2, 3, 4, 5)


@pytest.fixture
def meta(tmp_path):
    store = SqliteMetaStore(str(tmp_path / "meta.sqlite3"))
    asyncio.run(store.open())
    yield store
    store.close_sync()


def _governors(meta, run_dir, n=1):
    ns = SimpleNamespace(meta=meta)
    return [qos.Governor(ns, str(run_dir)) for _ in range(n)]


def test_burst_then_refusal_with_retry_after_and_refusals_take_nothing(meta, tmp_path):
    async def run():
        await meta.put_tenant(Tenant("team-a", time.time(), Limits(requests_per_second=2, request_burst=3)))
        await meta.put_tenant(Tenant("team-b", time.time()))
        one, two = _governors(meta, tmp_path / "run", 2)  # two workers' views of one node-wide bucket
        assert await one.admit("team-a", None) and await two.admit("team-a", None) and await one.admit("team-a", None)
        for governor in (one, two):
            with pytest.raises(errors.Throttled) as refused:
                await governor.admit("team-a", None)
            assert refused.value.retry_after == 1 and "tenant 'team-a'" in refused.value.message
            assert "2 requests per second" in refused.value.message
        for _ in range(50):  # another tenant is not limited by it
            await two.admit("team-b", None)
        await asyncio.sleep(0.55)  # 1.1 tokens: one more request, the refusals above took none
        await one.admit("team-a", None)
        with pytest.raises(errors.Throttled):
            await two.admit("team-a", None)
        snap = one.snapshot()
        assert snap["tenants"]["team-a"]["requests"] == 4  # this process's own; the other's moves when it flushes
        two.flush()
        snap = one.snapshot()
        assert snap["tenants"]["team-a"] == {"requests": 7, "bytes_in": 0, "bytes_out": 0, "throttled": 3}
        assert snap["tenants"]["team-b"]["requests"] == 50
        one.close()
        two.close()

    asyncio.run(run())


def test_bucket_limit_refuses_without_taking_the_tenants_tokens(meta, tmp_path):
    async def run():
        await meta.put_tenant(Tenant("team-c", time.time(), Limits(requests_per_second=1, request_burst=2)))
        await meta.create_bucket(Bucket("slow-bucket", "owner", time.time(), tenant="team-c"))
        await meta.set_bucket_limits("slow-bucket", Limits(requests_per_second=1, request_burst=1))
        (governor,) = _governors(meta, tmp_path / "run")
        await governor.admit("team-c", "slow-bucket")
        with pytest.raises(errors.Throttled) as refused:
            await governor.admit("team-c", "slow-bucket")
        assert "bucket 'slow-bucket'" in refused.value.message
        await governor.admit("team-c", None)  # the tenant's second token is still there
        with pytest.raises(errors.Throttled) as refused:
            await governor.admit("team-c", None)
        assert "tenant 'team-c'" in refused.value.message
        await meta.put_tenant(Tenant("team-x", time.time()))
        for _ in range(5):  # another tenant naming the bucket neither spends nor meets its tokens
            await governor.admit("team-x", "slow-bucket")
        snap = governor.snapshot()
        assert snap["buckets"]["slow-bucket"] == {"requests": 2, "bytes_in": 0, "bytes_out": 0, "throttled": 1}
        assert snap["tenants"]["team-x"]["requests"] == 5
        with pytest.raises(errors.Throttled):  # counted for the tenant; a bucket that does not exist takes no slot
            await governor.admit("team-c", "no-such-bucket")
        assert "no-such-bucket" not in governor.snapshot()["buckets"]
        governor.close()

    asyncio.run(run())


def test_bytes_go_into_debt_by_one_request_then_refuse_transfers_only(meta, tmp_path):
    async def run():
        await meta.put_tenant(Tenant("team-d", time.time(), Limits(bytes_per_second=1000, bytes_burst=1000)))
        (governor,) = _governors(meta, tmp_path / "run")
        ticket = await governor.admit("team-d", None, bytes_in=5000)  # larger than the burst: admitted, in debt
        with pytest.raises(errors.Throttled) as refused:
            await governor.admit("team-d", None, bytes_in=10)
        assert refused.value.retry_after in (4, 5)  # 4000 bytes of debt at 1000/s
        with pytest.raises(errors.Throttled):
            await governor.admit("team-d", None, sends_body=True)  # a GET waits too
        await governor.admit("team-d", None)  # a HEAD or DELETE moves no body: not held back by bytes
        ticket.sent(300)
        snap = governor.snapshot()["tenants"]["team-d"]
        assert snap == {"requests": 4, "bytes_in": 5000, "bytes_out": 300, "throttled": 2}
        governor.close()

    asyncio.run(run())


def test_unlimited_tenant_admission_is_cheap(meta, tmp_path):
    async def run():
        await meta.put_tenant(Tenant("free", time.time()))
        (governor,) = _governors(meta, tmp_path / "run")
        await governor.admit("free", None)
        n = 20000
        started = time.perf_counter()
        for _ in range(n):
            await governor.admit("free", None)
        per_request = (time.perf_counter() - started) / n
        await meta.put_tenant(Tenant("capped", time.time(), Limits(requests_per_second=1e9)))
        await governor.admit("capped", None)
        started = time.perf_counter()
        for _ in range(n):
            await governor.admit("capped", None)
        limited = (time.perf_counter() - started) / n
        print(f"admission: unlimited {per_request * 1e6:.2f} µs, limited {limited * 1e6:.2f} µs per request")
        assert per_request < 20e-6, per_request  # generous: a 4 KiB GET costs ~100 µs in all
        governor.close()

    asyncio.run(run())
