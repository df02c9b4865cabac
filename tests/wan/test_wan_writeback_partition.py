"""Scenario 2 of the WAN faults: a partition during write-back PUTs loses nothing and leaves nothing behind.

A writer PUTs (and now and then overwrites or deletes) objects into a write-back bucket at a steady rate. The
link is slowed so that the upload of a 12 MiB object (a multipart upload in the cold store) is cut with one part
complete: the cold store is black-holed for PARTITION_SECONDS while the writer carries on (another 12 MiB object
among its writes), then healed.

Asserted: every PUT and DELETE is acknowledged, during the partition too; the backlog grows by what was written
during the partition and its recovery point (the age of the oldest undrained write) by the partition's length;
after the heal the backlog drains to zero within DRAIN_DEADLINE; the cold store then holds exactly the newest
acknowledged bytes of every key (SHA-256 compared, read directly from the emulator), nothing for deleted keys,
nothing outside the link's prefix, and no half-finished upload: no open S3 multipart upload, no uncommitted Azure
block list.
"""

from __future__ import annotations

import os
import random
import threading
import time

import pytest

from wanutil import (COLD_KINDS, FAST_FAILURE_ENV, KiB, MiB, backlog, cold_state, link, meta_query,
                     no_retry_client, sha256, start_server, stop_server, wait_drained, wait_no_leftovers, wait_until)

pytestmark = [pytest.mark.timeout(180), pytest.mark.serial]  # asserts latency and time bounds: no neighbours

PARTITION_SECONDS = 10.0
WRITE_EVERY = 0.1
BIG = 12 * MiB  # above the drain's 8 MiB part size: a multipart upload in the cold store
DRAIN_DEADLINE = 30.0


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc = start_server(str(tmp_path_factory.mktemp("wan-writeback")), FAST_FAILURE_ENV)
    yield proc
    stop_server(proc)


class Writes:
    """A writer thread: new keys, overwrites and deletes, in order; ``expected`` is the newest acknowledged
    state of every key (its SHA-256, or absent after a delete)."""

    SIZES = (0, 1 * KiB, 16 * KiB, 100 * KiB, 300 * KiB)

    def __init__(self, server, bucket: str, seed: str) -> None:
        self.s3 = no_retry_client(server)
        self.bucket = bucket
        self.rng = random.Random(seed)
        self.expected: dict[str, str] = {}
        self.acked = 0
        self.failures: list[str] = []
        self.slowest = 0.0
        self.big_n = -1
        self._stop = threading.Event()
        self._big = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Writes":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(60)

    def big_one_next(self) -> None:
        self._big.set()

    def _run(self) -> None:
        n = 0
        while not self._stop.wait(WRITE_EVERY):
            n += 1
            known = sorted(k for k in self.expected if k.startswith("obj/"))
            if self._big.is_set():
                self._big.clear()
                self.big_n = n
                self._put(f"big/during-{n}", os.urandom(BIG))
            elif known and n % 10 == 0:
                self._delete(self.rng.choice(known))
            elif known and n % 4 == 0:
                self._put(self.rng.choice(known), os.urandom(self.rng.choice(self.SIZES)))
            else:
                self._put(f"obj/{n:05d}", os.urandom(self.rng.choice(self.SIZES)))

    def _timed(self, what: str, call) -> bool:
        started = time.monotonic()
        try:
            call()
        except Exception as exc:  # noqa: BLE001 - every failure is reported by the test
            self.failures.append(f"{what}: {exc}")
            return False
        self.slowest = max(self.slowest, time.monotonic() - started)
        self.acked += 1
        return True

    def _put(self, key: str, body: bytes) -> None:
        if self._timed(f"PUT {key}", lambda: self.s3.put_object(Bucket=self.bucket, Key=key, Body=body)):
            self.expected[key] = sha256(body)

    def _delete(self, key: str) -> None:
        if self._timed(f"DELETE {key}", lambda: self.s3.delete_object(Bucket=self.bucket, Key=key)):
            self.expected.pop(key, None)


def recovery_point(server, bucket: str) -> float:
    """Seconds since the oldest write still waiting for the drain (0 when none waits)."""
    oldest = meta_query(server, "SELECT min(since) FROM drain WHERE bucket = ?", (bucket,))[0][0]
    return time.time() - oldest if oldest else 0.0


@pytest.mark.parametrize("kind", COLD_KINDS)
def test_partition_during_writeback_puts_loses_nothing(server, cold_sites, kind):
    cold = cold_sites.make(kind)
    bucket = link(server, cold, "writeback")
    s3 = no_retry_client(server)
    big_before = os.urandom(BIG)

    with Writes(server, bucket, cold.prefix) as writes:
        time.sleep(2.0)
        # A big object whose multipart upload the partition cuts with one part complete.
        cold.proxy.bandwidth = 4 * MiB
        s3.put_object(Bucket=bucket, Key="big/before", Body=big_before)
        wait_until(lambda: cold.proxy.requests(path_contains="/big/before"), 20, "the big upload to start")
        started_at = cold.proxy.bytes_up
        # Past 10 MiB (the small writes' uploads share the link), the upload's second part (4 MiB, sent
        # alongside the first) is complete in the cold store.
        wait_until(lambda: cold.proxy.bytes_up > started_at + 10 * MiB, 20, "the big upload to be under way")
        cold.proxy.blackhole()
        cut_at = time.monotonic()
        acked_before = writes.acked
        entries_at_cut = backlog(server, bucket)[0]
        time.sleep(PARTITION_SECONDS / 2)
        writes.big_one_next()
        samples = []
        while time.monotonic() - cut_at < PARTITION_SECONDS:
            samples.append(backlog(server, bucket))
            time.sleep(0.5)
        state = cold_state(server, bucket)
        rp_at_end = recovery_point(server, bucket)
        entries_at_end, bytes_at_end = backlog(server, bucket)
        big_waiting = [key for (key,) in meta_query(server, "SELECT key FROM drain WHERE bucket = ? AND size = ?",
                                                      (bucket, BIG))]
        acked_during = writes.acked - acked_before
        cold.proxy.heal()
        healed = time.monotonic()
        time.sleep(2.0)
    drained = wait_drained(server, bucket, DRAIN_DEADLINE)
    summary = (f"{kind}: {acked_during} writes acknowledged during the {PARTITION_SECONDS:.0f} s partition "
               f"(slowest write {writes.slowest * 1000:.0f} ms), backlog {entries_at_cut} -> {entries_at_end} "
               f"entries ({bytes_at_end / MiB:.1f} MiB), recovery point {rp_at_end:.1f} s, cold store {state}; "
               f"drained {drained - healed:.1f} s after the heal")
    print(summary)

    assert not writes.failures, writes.failures[:5]
    assert state == "partitioned", summary
    assert acked_during >= 20, summary  # the writer carried on through the partition
    # Nothing drained during the partition: the backlog only grew.
    counts = [n for n, _ in samples]
    assert all(b >= a for a, b in zip(counts, counts[1:])), counts
    assert sorted(big_waiting) == ["big/before", f"big/during-{writes.big_n}"], summary  # the cut one too
    assert entries_at_end > entries_at_cut, summary
    assert rp_at_end >= PARTITION_SECONDS * 0.9, summary

    expected = dict(writes.expected)
    expected["big/before"] = sha256(big_before)
    landed = cold.keys()
    assert set(landed) == set(expected), (sorted(set(landed) ^ set(expected))[:10], summary)
    for key, digest in expected.items():
        assert sha256(cold.get(key)) == digest, key
    assert set(cold.names()) == {f"{cold.prefix}/{key}" for key in expected}  # nothing outside the prefix
    # The upload cut by the partition is aborted once the link is back (S3); Azure drops uncommitted blocks
    # when the redone upload commits.
    big = [k for k in expected if k.startswith("big/")]
    wait_no_leftovers(cold, big, 10)
