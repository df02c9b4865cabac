"""An evicted object read again is the same object, against real cold stores (moto S3 and Azurite).

Two ways found by tests/crash/test_kill9_tiering.py (eviction family) to get this wrong, made deterministic here
with real eviction (a warm tier of 1.25 MiB, watermarks 0.9/0.5):
- a write-back object, drained and evicted, answered its next GET with the cold store's ETag and Last-Modified
  (an Azure ETag is no MD5) and lost its stored checksum;
- a version evicted while it was being filled, and read again before that fill ended, was filled into its new
  blob from the old fill's block map: blocks written to the old blob were recorded for the new one, and the
  object became "resident" with zeros in them.
"""

from __future__ import annotations

import threading
import time

import pytest

from tierutil import (BLOCK, COLD_KINDS, ColdSite, client, emulator, link_buckets, meta_query, pattern, residency,
                      serving)

pytestmark = pytest.mark.timeout(120)

KiB, MiB = 1 << 10, 1 << 20
SETTINGS = {"warm_capacity": 1280 * KiB, "high_watermark": 0.9, "low_watermark": 0.5}


@pytest.fixture(params=COLD_KINDS)
def site(request):
    with ColdSite(request.param, emulator(request, request.param), "refill") as made:
        yield made


@pytest.fixture
def server(tmp_path):
    yield from serving(str(tmp_path), **SETTINGS)


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_drained_write_read_after_eviction_keeps_its_etag_date_and_checksum(server, site):
    wb_cold, cache_cold = site.cold("wb"), site.cold("cache")
    writeback, cache = link_buckets(server, [(wb_cold, "writeback", "never"), (cache_cold, "cache", "never")])
    s3 = client(server)
    data = pattern(10 * KiB, f"written-{site.kind}")
    s3.put_object(Bucket=writeback, Key="w.bin", Body=data, ChecksumAlgorithm="CRC32")  # no content type
    before = s3.head_object(Bucket=writeback, Key="w.bin", ChecksumMode="ENABLED")
    wait_until(lambda: not meta_query(server, "SELECT count(*) FROM drain")[0][0], 30, "the drain")

    # Reading more than the tier holds evicts the oldest clean copy first: the drained write.
    for i in range(6):
        cache_cold.put(f"fill-{i}.bin", pattern(4 * BLOCK, f"fill-{i}"))
        s3.get_object(Bucket=cache, Key=f"fill-{i}.bin")["Body"].read()
    wait_until(lambda: residency(server, writeback, "w.bin") == "absent", 10, "the write to be evicted")

    got = s3.get_object(Bucket=writeback, Key="w.bin", ChecksumMode="ENABLED")
    assert got["Body"].read() == data
    assert got["ETag"] == before["ETag"]
    assert got["LastModified"] == before["LastModified"]
    assert got.get("ChecksumCRC32") == before["ChecksumCRC32"]
    after = s3.head_object(Bucket=writeback, Key="w.bin", ChecksumMode="ENABLED")
    assert (after["ETag"], after.get("ChecksumCRC32")) == (before["ETag"], before["ChecksumCRC32"])


def test_a_version_evicted_mid_fill_and_read_again_is_never_served_with_unfilled_blocks(server, site):
    cold = site.cold("cache")
    (bucket,) = link_buckets(server, [(cold, "cache", "never")])
    big, small = pattern(16 * BLOCK, f"big-{site.kind}"), pattern(5 * BLOCK, f"small-{site.kind}")
    cold.put("big.bin", big)
    cold.put("small.bin", small)
    s3 = client(server, max_pool_connections=4)
    s3.head_object(Bucket=bucket, Key="big.bin")
    s3.head_object(Bucket=bucket, Key="small.bin")
    cold.proxy.bandwidth = 384 * KiB  # about three seconds for big.bin

    reads: dict[str, bytes] = {}

    def read(name: str) -> None:
        reads[name] = s3.get_object(Bucket=bucket, Key="big.bin")["Body"].read()

    first = threading.Thread(target=read, args=("first",))
    first.start()
    wait_until(lambda: residency(server, bucket, "big.bin") == "partial", 10, "the fill of big.bin")
    time.sleep(0.5)
    # small.bin does not fit beside the partial big.bin: the evictor takes big.bin, mid-fill.
    assert s3.get_object(Bucket=bucket, Key="small.bin")["Body"].read() == small
    assert residency(server, bucket, "big.bin") == "absent", "big.bin was not evicted mid-fill: the test proves nothing"
    assert first.is_alive(), "the first fill ended before its eviction: the test proves nothing"
    second = threading.Thread(target=read, args=("second",))
    second.start()  # fills big.bin again, into a new blob, while the first fill still runs
    first.join(30)
    second.join(30)
    cold.proxy.bandwidth = None
    assert reads["first"] == big and reads["second"] == big

    third = s3.get_object(Bucket=bucket, Key="big.bin")["Body"].read()
    wrong = [i for i in range(16) if third[i * BLOCK:(i + 1) * BLOCK] != big[i * BLOCK:(i + 1) * BLOCK]]
    assert not wrong, f"blocks {wrong} of big.bin read back wrong after the refill (zeros: recorded, never written)"
    assert residency(server, bucket, "big.bin") == "resident"
