"""Scenario 1 of the WAN faults: warm reads do not notice a partition of the cold store.

A write-back bucket holds warm objects (some written through Atoll, some filled from the cold store by a first
read). A steady, paced load of warm GETs runs throughout, next to a writer that PUTs a small object every 100 ms
into the same bucket, so the drain is busy: in the healthy phase it uploads, in the partition its uploads hang,
the breaker opens, and the backlog grows. The cold store is black-holed for PARTITION_SECONDS, then healed.

Asserted: no read error and no failed write in any phase; the warm-read p99 during the partition is at most
1.1 x the healthy p99 + 2 ms. The healthy reads are taken before the partition and again after the heal once
the backlog has drained, so that the reference brackets the partition in time (load from elsewhere on the
machine drifts; a reference taken only before would compare two different machines). The 2 ms floor: these
GETs take ~1-3 ms on loopback, where a single scheduling delay on a shared 2-core machine (another process, the
drain's own work) moves a p99 by a millisecond or two without any cause in Atoll; a read that waited on the WAN
would cost at least a cold round trip, and a read blocked by a hung cold call seconds. A cycle that misses the
p99 bound is measured once more: a read path that waits on the WAN misses it every time, while a burst of load
from other processes rarely hits two cycles. The partition must also really be one: the server reports the
cold store partitioned before the heal, and the backlog has grown; after the heal it drains, and every
acknowledged write reaches the cold store.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

import pytest

from wanutil import (COLD_KINDS, FAST_FAILURE_ENV, KiB, WarmReaders, backlog, cold_state, link, no_retry_client,
                     percentile, sha256, start_server, stop_server, wait_until)

pytestmark = [pytest.mark.timeout(150), pytest.mark.serial]  # asserts latency and time bounds: no neighbours

HEALTHY_SECONDS = 5.0
PARTITION_SECONDS = 10.0
WRITE_EVERY = 0.1
AFTER_SECONDS = 3.0
P99_RATIO, P99_FLOOR = 1.1, 0.002


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc = start_server(str(tmp_path_factory.mktemp("wan-warm")), FAST_FAILURE_ENV)
    yield proc
    stop_server(proc)


class Writer:
    """PUTs a fresh 32 KiB object every WRITE_EVERY seconds; records every acknowledged key and every failure."""

    def __init__(self, server, bucket: str) -> None:
        self.s3 = no_retry_client(server)
        self.bucket = bucket
        self.acked: dict[str, str] = {}
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Writer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(60)

    def _run(self) -> None:
        n = 0
        while not self._stop.wait(WRITE_EVERY):
            key, body = f"written/{n:05d}", os.urandom(32 * KiB)
            n += 1
            try:
                self.s3.put_object(Bucket=self.bucket, Key=key, Body=body)
                self.acked[key] = sha256(body)
            except Exception as exc:  # noqa: BLE001 - every failure is reported by the test
                self.failures.append(f"{key}: {exc}")


@dataclass
class Cycle:
    """One healthy -> partition -> heal cycle under load, as measured."""

    before: list[float]
    partition: list[float]
    catching_up: list[float]
    after: list[float]
    errors: list[str]
    written_during: int
    backlog_at_end: int
    state_at_end: str
    drained_after: float

    @property
    def healthy(self) -> list[float]:
        return self.before + self.after

    def p99_holds(self) -> bool:
        return percentile(self.partition, 99) <= P99_RATIO * percentile(self.healthy, 99) + P99_FLOOR

    def summary(self, kind: str) -> str:
        def ms(values: list[float], q: float) -> str:
            return f"{percentile(values, q) * 1e3:.2f}"

        return (f"{kind}: warm GET p50/p99 healthy {ms(self.healthy, 50)}/{ms(self.healthy, 99)} ms "
                f"({len(self.healthy)} reads; before {ms(self.before, 99)}, after {ms(self.after, 99)}), partitioned "
                f"{ms(self.partition, 50)}/{ms(self.partition, 99)} ms ({len(self.partition)} reads), while "
                f"draining {ms(self.catching_up, 50)}/{ms(self.catching_up, 99)} ms; writes during the partition "
                f"{self.written_during}, backlog at its end {self.backlog_at_end}, drained "
                f"{self.drained_after:.1f} s after the heal")


def partition_cycle(server, cold, bucket: str, urls: dict[str, str], expected: dict[str, str],
                    writer: Writer) -> Cycle:
    with WarmReaders(urls, expected) as readers:
        time.sleep(0.5)
        readers.phase = "healthy"
        time.sleep(HEALTHY_SECONDS)
        written_before = len(writer.acked)
        readers.phase = "partition"
        cold.proxy.blackhole()
        time.sleep(PARTITION_SECONDS)
        state_at_end = cold_state(server, bucket)
        backlog_at_end = backlog(server, bucket)[0]
        written_during = len(writer.acked) - written_before
        readers.phase = "healed"
        cold.proxy.heal()
        healed = time.monotonic()
        # The writer goes on writing, so "drained" is the partition's backlog gone (a write or two may wait).
        drained = wait_until(lambda: backlog(server, bucket)[0] <= 2 and time.monotonic(), 30,
                             "the backlog to drain after the heal")
        readers.phase = "after"
        time.sleep(AFTER_SECONDS)
    phases = {phase: readers.take(phase) for phase in ("healthy", "partition", "healed", "after")}
    return Cycle(before=phases["healthy"][0], partition=phases["partition"][0], catching_up=phases["healed"][0],
                 after=phases["after"][0], errors=[e for _, errors in phases.values() for e in errors],
                 written_during=written_during, backlog_at_end=backlog_at_end, state_at_end=state_at_end,
                 drained_after=drained - healed)


@pytest.mark.parametrize("kind", COLD_KINDS)
def test_warm_reads_keep_their_latency_through_a_partition(server, cold_sites, kind):
    cold = cold_sites.make(kind)
    bucket = link(server, cold, "writeback")
    s3 = no_retry_client(server)
    bodies = {f"warm/put-{i:02d}": os.urandom(64 * KiB) for i in range(24)}
    filled = {f"warm/filled-{i:02d}": os.urandom(64 * KiB) for i in range(24)}
    for key, body in filled.items():
        cold.put(key, body)
    for key, body in bodies.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    for key in filled:
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == filled[key]  # the fill makes it warm
    bodies.update(filled)
    wait_until(lambda: backlog(server, bucket)[0] == 0, 30, "the first writes to drain")
    urls = {key: s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=3600)
            for key in bodies}
    expected = {key: sha256(body) for key, body in bodies.items()}

    with Writer(server, bucket) as writer:
        for attempt in (1, 2):
            cycle = partition_cycle(server, cold, bucket, urls, expected, writer)
            summary = cycle.summary(kind)
            print(summary)
            assert not cycle.errors, cycle.errors[:5]
            assert not writer.failures, writer.failures[:5]
            assert len(cycle.before) >= 300 and len(cycle.partition) >= 500, summary  # enough for a p99
            assert cycle.state_at_end == "partitioned", summary
            assert cycle.backlog_at_end >= cycle.written_during * 0.8, summary  # the drain really stopped
            if cycle.p99_holds():
                break
            # A p99 of a few ms is one burst of load from elsewhere away from a miss on a shared 2-core
            # machine: measure once more. A read path that waits on the WAN misses both times.
        assert cycle.p99_holds(), summary

    wait_until(lambda: backlog(server, bucket)[0] == 0, 10, "the last writes to drain")
    # Every acknowledged write reached the cold store after the heal.
    landed = cold.keys()
    missing = [key for key in writer.acked if key not in landed]
    assert not missing, missing[:10]
