"""Eviction against real cold stores (moto S3 and Azurite): a warm tier of 4 MiB (watermarks 0.9/0.5) holding
objects of 256 KiB, so sixteen fill it.

Whether an object is still warm is observed from outside: a GET of an evicted object asks the cold store again
(counted at the proxy), a warm one does not. The tier's resident bytes are read from the server's metadata
(read-only). Dirty data (write-back writes not drained: the drain is paused, or the cold store is down) and
pinned data must survive any pressure; when only such data is left, writes are refused with 503 SlowDown and
reads go on.
"""

from __future__ import annotations

import time

import pytest
from botocore.exceptions import ClientError

from tierutil import (BLOCK, COLD_KINDS, ColdSite, client, emulator, link_buckets, pattern, residency,
                      resident_bytes, serving)

pytestmark = pytest.mark.timeout(180)

MiB = 1 << 20
CAPACITY = 4 * MiB
OBJECT = 4 * BLOCK  # 256 KiB: sixteen objects fill the tier
SETTINGS = {"warm_capacity": CAPACITY, "high_watermark": 0.9, "low_watermark": 0.5}


def body_of(name: str) -> bytes:
    return pattern(OBJECT, name)


@pytest.fixture(params=COLD_KINDS)
def kind(request):
    return request.param


@pytest.fixture
def site(request, kind):
    with ColdSite(kind, emulator(request, kind), "evict") as made:
        yield made


@pytest.fixture
def server(tmp_path):
    yield from serving(str(tmp_path), **SETTINGS)


def get(s3, bucket: str, key: str) -> bytes:
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def wait_until(predicate, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def cli_ok(server, *args: str) -> str:
    done = server.cli(*args, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_reading_past_capacity_evicts_clean_copies_but_never_dirty_or_pinned_ones(server, site):
    cache_cold, wb_cold = site.cold("cache"), site.cold("wb")
    cache, writeback = link_buckets(server, [(cache_cold, "cache", "never"), (wb_cold, "writeback", "never")])
    s3 = server.client()
    cli_ok(server, "drain", "pause")  # the drainer reads the flag before each batch it takes

    dirty = {f"dirty/{i}.bin": body_of(f"dirty-{site.kind}-{i}") for i in range(4)}  # 1 MiB
    for key, data in dirty.items():
        s3.put_object(Bucket=writeback, Key=key, Body=data)
    scan = [f"scan/{i:02d}.bin" for i in range(20)]  # 5 MiB: more than the whole tier
    for key in ["pinned/p.bin", *scan]:
        cache_cold.put(key, body_of(f"{site.kind}-{key}"))

    assert get(s3, cache, "pinned/p.bin") == body_of(f"{site.kind}-pinned/p.bin")
    assert "pinned" in cli_ok(server, "pin", cache, "--prefix", "pinned/")
    assert resident_bytes(server) == 5 * OBJECT

    most = 0
    for key in scan:
        assert get(s3, cache, key) == body_of(f"{site.kind}-{key}")
        most = max(most, resident_bytes(server))
        assert most <= CAPACITY, f"{most} bytes warm after reading {key}"
    wait_until(lambda: resident_bytes(server) <= 0.9 * CAPACITY, what="the background evictor")

    # the early scan objects are gone from the warm tier: reading one asks the cold store again
    cache_cold.proxy.reset_counts()
    assert get(s3, cache, scan[0]) == body_of(f"{site.kind}-{scan[0]}")
    assert cache_cold.gets(scan[0]) == OBJECT // BLOCK
    # the pinned object is warm: no cold request
    assert get(s3, cache, "pinned/p.bin") == body_of(f"{site.kind}-pinned/p.bin")
    assert cache_cold.requests("pinned/p.bin") == 0
    # the dirty objects are warm, and nowhere else yet
    for key, data in dirty.items():
        assert residency(server, writeback, key) == "resident"
        assert get(s3, writeback, key) == data
        assert wb_cold.get(key) is None
    assert wb_cold.proxy.requests() == []


def test_a_tier_full_of_undrained_writes_refuses_puts_with_slowdown_and_keeps_serving_reads(server, site):
    wb_cold, cache_cold = site.cold("wb"), site.cold("cache")
    writeback, cache = link_buckets(server, [(wb_cold, "writeback", "never"), (cache_cold, "cache", "never")])
    wb_cold.proxy.refuse()  # nothing can drain: every write stays dirty
    wb_cold.proxy.reset_all()
    s3 = client(server)  # no retries: botocore would retry a SlowDown

    written: dict[str, bytes] = {}
    refused = None
    for i in range(CAPACITY // OBJECT + 4):
        key, data = f"ckpt/{i:02d}.bin", body_of(f"full-{site.kind}-{i}")
        try:
            s3.put_object(Bucket=writeback, Key=key, Body=data)
        except ClientError as exc:
            refused = exc
            break
        written[key] = data
    assert refused is not None, f"{len(written)} objects ({resident_bytes(server)} bytes) written past capacity"
    assert refused.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert refused.response["Error"]["Code"] == "SlowDown"
    assert int(refused.response["ResponseMetadata"]["HTTPHeaders"]["retry-after"]) > 0
    assert CAPACITY <= resident_bytes(server) <= CAPACITY + OBJECT  # full, give or take the write that filled it
    upload = s3.create_multipart_upload(Bucket=writeback, Key="ckpt/mp.bin")["UploadId"]  # costs no space
    for call in (lambda: s3.upload_part(Bucket=writeback, Key="ckpt/mp.bin", UploadId=upload, PartNumber=1,
                                        Body=b"x" * 1000),
                 lambda: s3.put_object(Bucket=writeback, Key="ckpt/small", Body=b"x"),
                 lambda: s3.copy_object(Bucket=writeback, Key="ckpt/copy.bin",
                                        CopySource={"Bucket": writeback, "Key": next(iter(written))})):
        with pytest.raises(ClientError) as again:
            call()
        assert again.value.response["Error"]["Code"] == "SlowDown"
    s3.abort_multipart_upload(Bucket=writeback, Key="ckpt/mp.bin", UploadId=upload)

    for key, data in written.items():  # reads of what is warm keep working
        assert get(s3, writeback, key) == data
    cold_only = body_of(f"passthrough-{site.kind}")
    cache_cold.put("cold-only.bin", cold_only)
    assert get(s3, cache, "cold-only.bin") == cold_only  # a miss is served from the cold store, not cached
    assert residency(server, cache, "cold-only.bin") == "absent"
    assert all(residency(server, writeback, key) == "resident" for key in written)  # and nothing was evicted

    wb_cold.proxy.heal()  # the cold store is back: the backlog drains, becomes clean, and writes go on
    wait_until(lambda: all(wb_cold.get(key) == data for key, data in written.items()), 60, "the drain")

    def put_accepted() -> bool:
        try:
            s3.put_object(Bucket=writeback, Key="after.bin", Body=b"after")
            return True
        except ClientError as exc:
            assert exc.response["Error"]["Code"] == "SlowDown"
            return False

    wait_until(put_accepted, 10, "a write to be accepted once the tier holds clean data")
    assert resident_bytes(server) <= CAPACITY


def test_sieve_keeps_an_object_read_again_through_a_scan(server, site):
    cold = site.cold("cache")
    (bucket,) = link_buckets(server, [(cold, "cache", "never")])
    s3 = server.client()
    scan = [f"scan/{i:02d}.bin" for i in range(20)]  # 5 MiB, read once each: more than the tier holds
    for key in ["control.bin", "hot.bin", *scan]:
        cold.put(key, body_of(f"{site.kind}-{key}"))

    assert get(s3, bucket, "control.bin") == body_of(f"{site.kind}-control.bin")
    for _ in range(2):  # the second read is a warm hit: SIEVE marks it visited
        assert get(s3, bucket, "hot.bin") == body_of(f"{site.kind}-hot.bin")
    cold.proxy.reset_counts()
    for key in scan:
        assert get(s3, bucket, key) == body_of(f"{site.kind}-{key}")
        assert resident_bytes(server) <= CAPACITY
    wait_until(lambda: resident_bytes(server) <= 0.9 * CAPACITY, what="the background evictor")
    assert cold.requests("hot.bin") == 0 and cold.requests("control.bin") == 0

    # control and hot arrived together, before the scan; FIFO or LRU would have evicted both, SIEVE keeps hot
    assert get(s3, bucket, "hot.bin") == body_of(f"{site.kind}-hot.bin")
    assert cold.requests("hot.bin") == 0
    assert residency(server, bucket, "control.bin") == "absent"
    assert get(s3, bucket, "control.bin") == body_of(f"{site.kind}-control.bin")
    assert cold.gets("control.bin") == OBJECT // BLOCK
    assert residency(server, bucket, scan[0]) == "absent"
    assert residency(server, bucket, scan[-1]) == "resident"
