"""Read-through against real cold stores (moto S3 and Azurite), with every cold request counted at a proxy.

What is asserted is what the cold store sees: one lookup (HEAD) per missing key, one ranged GET per fill block
however many readers want it, nothing at all for a warm hit, only the missing blocks after a crash, and the
revalidation policy of the bucket's link. One Atoll server serves the module (and a second one, quick to give up,
the unreachable-store test); each bucket links to its own cold prefix behind its own proxy, and each test counts
requests for its own keys only, so no test sees another's requests.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import threading
import time
import urllib.parse
from dataclasses import dataclass

import botocore.exceptions
import pytest
from botocore.exceptions import ClientError

from tierutil import (BLOCK, COLD_KINDS, Cold, ColdSite, client, emulator, link_buckets, pattern, residency,
                      start_server)

pytestmark = pytest.mark.timeout(120)

NEGATIVE_TTL = 2.0
TTL = 2.0  # the revalidation TTL of the ``ttl`` bucket
GENEROUS = 15.0  # a failing cold store must produce an answer well before this (not a latency target: #5)


def blob(blocks: float, seed: str) -> bytes:
    return pattern(int(blocks * BLOCK), seed)


def nblocks(body: bytes) -> int:
    return (len(body) + BLOCK - 1) // BLOCK


@dataclass
class Linked:
    bucket: str
    cold: Cold


@dataclass
class Rig:
    kind: str
    server: object
    fast_fail_server: object  # ``down`` is linked there
    cache: Linked  # mode cache, revalidate never
    always: Linked  # mode cache, revalidate always
    ttl: Linked  # mode cache, revalidate ttl=TTL
    down: Linked  # mode writeback, on the fast-fail server; its proxy is broken by the tests that use it

    def client(self):
        return self.server.client()


def _stop_cleanly(server) -> None:
    code = server.stop()
    log = server.log_text()
    assert code == 0, f"atoll did not shut down cleanly ({code}):\n{log[-3000:]}"
    assert "Traceback" not in log, log[-5000:]


@pytest.fixture(scope="module")
def tier_server(tmp_path_factory):
    server = start_server(str(tmp_path_factory.mktemp("readthrough")), negative_ttl=NEGATIVE_TTL)
    yield server
    _stop_cleanly(server)


@pytest.fixture(scope="module")
def fast_fail_server(tmp_path_factory):
    """A server that gives up on an unreachable cold store after a second, probes a down one every second at
    most, and fills two blocks at a time."""
    server = start_server(str(tmp_path_factory.mktemp("fastfail")), cold_connect_timeout=1,
                          cold_first_byte_timeout=1, cold_stall_timeout=1, fill_parallelism=2,
                          breaker_cooldown=0.3, breaker_max_cooldown=1)
    yield server
    _stop_cleanly(server)


@pytest.fixture(scope="module", params=COLD_KINDS)
def rig(request, tier_server, fast_fail_server):
    site = ColdSite(request.param, emulator(request, request.param), "readthrough")
    specs = {"cache": ("cache", "never"), "always": ("cache", "always"), "ttl": ("cache", f"ttl={TTL:g}"),
             "down": ("writeback", "never", fast_fail_server)}
    colds = {name: site.cold(name) for name in specs}
    buckets = link_buckets(tier_server, [(colds[name], *specs[name]) for name in specs])
    linked = {name: Linked(bucket, colds[name]) for name, bucket in zip(specs, buckets)}
    yield Rig(request.param, tier_server, fast_fail_server, **linked)
    site.close()


def get(client, bucket: str, key: str, **kwargs) -> bytes:
    return client.get_object(Bucket=bucket, Key=key, **kwargs)["Body"].read()


def error_of(call, *args, **kwargs) -> ClientError:
    with pytest.raises(ClientError) as caught:
        call(*args, **kwargs)
    return caught.value


# --- read-through basics ----------------------------------------------------------------------------------------

def test_first_get_fills_and_later_reads_touch_nothing_cold(rig):
    s3, (bucket, cold) = rig.client(), (rig.cache.bucket, rig.cache.cold)
    body = blob(3.5, "first")
    cold.put("ds/first.bin", body, content_type="application/x-tensor", metadata={"epoch": "7", "owner": "lab"})

    first = s3.get_object(Bucket=bucket, Key="ds/first.bin")
    assert first["Body"].read() == body
    assert first["ContentType"] == "application/x-tensor"
    assert first["Metadata"] == {"epoch": "7", "owner": "lab"}
    assert cold.lookups("ds/first.bin") == 1
    assert cold.gets("ds/first.bin") == nblocks(body) == 4
    assert residency(rig.server, bucket, "ds/first.bin") == "resident"

    cold.proxy.reset_counts()
    second = s3.get_object(Bucket=bucket, Key="ds/first.bin")
    assert second["Body"].read() == body
    head = s3.head_object(Bucket=bucket, Key="ds/first.bin")
    ranged = get(s3, bucket, "ds/first.bin", Range="bytes=1000-70000")
    assert ranged == body[1000:70001]
    assert cold.proxy.requests() == []
    assert first["ETag"] == second["ETag"] == head["ETag"]
    assert head["ContentLength"] == len(body) and head["Metadata"] == {"epoch": "7", "owner": "lab"}
    assert head["ContentType"] == "application/x-tensor"


def test_head_of_a_cold_object_fetches_no_bytes(rig):
    s3, (bucket, cold) = rig.client(), (rig.cache.bucket, rig.cache.cold)
    body = blob(2, "head-first")
    cold.put("head-first.bin", body)
    head = s3.head_object(Bucket=bucket, Key="head-first.bin")
    assert head["ContentLength"] == len(body)
    assert cold.lookups("head-first.bin") == 1 and cold.gets("head-first.bin") == 0
    assert get(s3, bucket, "head-first.bin") == body
    assert cold.lookups("head-first.bin") == 1  # the index answered; only the blocks were fetched
    assert cold.gets("head-first.bin") == 2
    assert s3.head_object(Bucket=bucket, Key="head-first.bin")["ETag"] == head["ETag"]


def test_32_concurrent_readers_cause_one_lookup_and_one_fetch_per_block(rig):
    bucket, cold = rig.cache.bucket, rig.cache.cold
    body = blob(5.5, "herd")
    cold.put("herd.bin", body)
    cold.proxy.reset_counts()  # bytes are counted per proxy, not per key
    url = urllib.parse.urlsplit(rig.client().generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": "herd.bin"}, ExpiresIn=300))
    target = f"{url.path}?{url.query}"
    start = threading.Barrier(32)

    def read() -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
        try:
            conn.connect()
            start.wait(30)  # all 32 are connected, then all ask at once
            conn.request("GET", target)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        results = list(pool.map(lambda _: read(), range(32)))
    assert [status for status, _ in results] == [200] * 32
    assert all(data == body for _, data in results)
    assert cold.lookups("herd.bin") == 1
    assert cold.gets("herd.bin") == nblocks(body) == 6  # each block fetched once, for all 32 readers
    assert cold.proxy.bytes_down < len(body) + 64 * 1024  # and no whole-object GET besides the blocks
    cold.proxy.reset_counts()
    assert get(rig.client(), bucket, "herd.bin") == body and cold.proxy.requests() == []


def test_ranged_get_fetches_only_its_blocks_and_a_full_get_the_rest(rig):
    s3, (bucket, cold) = rig.client(), (rig.cache.bucket, rig.cache.cold)
    body = blob(8, "ranged")
    cold.put("ranged.bin", body)
    lo, hi = 2 * BLOCK + 100, 4 * BLOCK - 1  # inside blocks 2 and 3
    assert get(s3, bucket, "ranged.bin", Range=f"bytes={lo}-{hi}") == body[lo:hi + 1]
    assert cold.lookups("ranged.bin") == 1 and cold.gets("ranged.bin") == 2
    assert residency(rig.server, bucket, "ranged.bin") == "partial"

    assert get(s3, bucket, "ranged.bin", Range=f"bytes={2 * BLOCK}-{3 * BLOCK + 5}") == body[2 * BLOCK:3 * BLOCK + 6]
    assert cold.gets("ranged.bin") == 2  # blocks 2 and 3 are warm already

    assert get(s3, bucket, "ranged.bin") == body
    assert cold.gets("ranged.bin") == 8  # the six others
    assert cold.lookups("ranged.bin") == 1
    assert residency(rig.server, bucket, "ranged.bin") == "resident"
    cold.proxy.reset_counts()
    assert get(s3, bucket, "ranged.bin") == body and cold.proxy.requests() == []


def test_partly_filled_object_resumes_after_kill_9(rig):
    s3, (bucket, cold) = rig.client(), (rig.cache.bucket, rig.cache.cold)
    body = blob(7.25, "resume")  # 8 blocks, the last one short
    cold.put("resume.bin", body)
    assert get(s3, bucket, "resume.bin", Range=f"bytes=0-{3 * BLOCK - 1}") == body[:3 * BLOCK]
    assert get(s3, bucket, "resume.bin", Range=f"bytes={7 * BLOCK}-") == body[7 * BLOCK:]
    assert cold.gets("resume.bin") == 4  # blocks 0, 1, 2 and 7

    rig.server.restart()  # SIGKILL, then start again on the same data directory
    cold.proxy.reset_counts()
    s3 = rig.client()
    assert residency(rig.server, bucket, "resume.bin") == "partial"
    assert get(s3, bucket, "resume.bin") == body
    assert cold.gets("resume.bin") == 4  # only blocks 3 to 6: the block map survived the crash
    assert cold.lookups("resume.bin") == 0  # and so did the cold identity
    assert residency(rig.server, bucket, "resume.bin") == "resident"


def test_empty_cold_object(rig):
    s3, (bucket, cold) = rig.client(), (rig.cache.bucket, rig.cache.cold)
    cold.put("empty", b"")
    assert get(s3, bucket, "empty") == b""
    assert get(s3, bucket, "empty") == b""
    assert cold.lookups("empty") == 1 and cold.gets("empty") == 0


# --- revalidation and negative caching --------------------------------------------------------------------------

def test_revalidate_always_sees_a_changed_cold_object(rig):
    s3, (bucket, cold) = rig.client(), (rig.always.bucket, rig.always.cold)
    old, new = blob(2, "always-old"), blob(3, "always-new")
    cold.put("obj", old)
    assert get(s3, bucket, "obj") == old
    cold.proxy.reset_counts()
    assert get(s3, bucket, "obj") == old
    assert cold.lookups("obj") == 1 and cold.gets("obj") == 0  # a conditional check, no bytes

    cold.put("obj", new, metadata={"v": "2"})
    replaced = s3.get_object(Bucket=bucket, Key="obj")
    assert replaced["Body"].read() == new and replaced["Metadata"] == {"v": "2"}
    assert cold.gets("obj") == nblocks(new)


def test_revalidate_never_keeps_serving_the_warm_copy(rig):
    s3, (bucket, cold) = rig.client(), (rig.cache.bucket, rig.cache.cold)
    old = blob(1.5, "never-old")
    cold.put("never.bin", old)
    assert get(s3, bucket, "never.bin") == old
    cold.put("never.bin", blob(1.5, "never-new"))
    cold.proxy.reset_counts()
    for _ in range(3):
        assert get(s3, bucket, "never.bin") == old
    assert cold.proxy.requests() == []


def test_revalidate_ttl_sees_the_change_only_after_the_ttl(rig):
    s3, (bucket, cold) = rig.client(), (rig.ttl.bucket, rig.ttl.cold)
    old, new = blob(1.5, "ttl-old"), blob(1.5, "ttl-new")
    cold.put("obj", old)
    asking = time.monotonic()  # the lookup (which counts as a check) happens after this...
    assert get(s3, bucket, "obj") == old
    asked = time.monotonic()  # ...and before this
    cold.put("obj", new)
    assert get(s3, bucket, "obj") == old  # within the TTL of the lookup: served warm, not checked
    assert time.monotonic() - asking < TTL, "too slow to observe the TTL; the assertion above proves nothing"
    assert cold.lookups("obj") == 1
    time.sleep(max(0.0, TTL + 0.1 - (time.monotonic() - asked)))
    assert get(s3, bucket, "obj") == new
    assert cold.lookups("obj") == 2


def test_cold_404_is_remembered_for_the_negative_ttl(rig):
    s3, (bucket, cold) = rig.client(), (rig.cache.bucket, rig.cache.cold)
    asking = time.monotonic()
    assert error_of(s3.get_object, Bucket=bucket, Key="late.bin").response["Error"]["Code"] == "NoSuchKey"
    asked = time.monotonic()
    assert cold.lookups("late.bin") == 1
    body = blob(1, "late")
    cold.put("late.bin", body)  # appears in the cold store within the negative TTL
    assert error_of(s3.get_object, Bucket=bucket, Key="late.bin").response["Error"]["Code"] == "NoSuchKey"
    assert error_of(s3.head_object, Bucket=bucket, Key="late.bin").response["Error"]["Code"] == "404"
    assert time.monotonic() - asking < NEGATIVE_TTL, "too slow to observe the negative TTL"
    assert cold.lookups("late.bin") == 1 and cold.gets("late.bin") == 0

    time.sleep(max(0.0, NEGATIVE_TTL + 0.1 - (time.monotonic() - asked)))
    assert get(s3, bucket, "late.bin") == body
    assert cold.lookups("late.bin") == 2


def test_a_reader_of_the_old_copy_finishes_it_after_the_cold_object_changed(rig):
    s3, (bucket, cold) = rig.client(), (rig.always.bucket, rig.always.cold)
    old, new = blob(32, "stream-old"), blob(2, "stream-new")  # 2 MiB: more than the socket buffers hold
    cold.put("stream.bin", old)
    assert get(s3, bucket, "stream.bin") == old
    reading = s3.get_object(Bucket=bucket, Key="stream.bin")["Body"]
    head = reading.read(BLOCK)
    cold.put("stream.bin", new)
    other = rig.client()
    assert get(other, bucket, "stream.bin") == new  # revalidated: the new object is filled and served
    time.sleep(0.2)
    assert head + reading.read() == old  # while the first reader streams its old copy to the end


# --- what linked buckets refuse ---------------------------------------------------------------------------------

def test_cache_bucket_refuses_writes(rig):
    s3, (bucket, cold) = rig.client(), (rig.cache.bucket, rig.cache.cold)
    cold.put("ro.bin", b"cold bytes")
    calls = [
        lambda: s3.put_object(Bucket=bucket, Key="new.bin", Body=b"x"),
        lambda: s3.put_object(Bucket=bucket, Key="ro.bin", Body=b"x"),
        lambda: s3.delete_object(Bucket=bucket, Key="ro.bin"),
        lambda: s3.create_multipart_upload(Bucket=bucket, Key="mp.bin"),
        lambda: s3.copy_object(Bucket=bucket, Key="copy.bin", CopySource={"Bucket": bucket, "Key": "ro.bin"}),
    ]
    for call in calls:
        exc = error_of(call)
        assert exc.response["ResponseMetadata"]["HTTPStatusCode"] == 403
        assert exc.response["Error"]["Code"] == "AccessDenied"
        assert "read-only cache" in exc.response["Error"]["Message"]
    exc = error_of(s3.delete_objects, Bucket=bucket, Delete={"Objects": [{"Key": "ro.bin"}]})
    assert exc.response["Error"]["Code"] == "AccessDenied"
    assert get(s3, bucket, "ro.bin") == b"cold bytes"
    assert cold.get("new.bin") is None and cold.get("ro.bin") == b"cold bytes"
    assert not cold.proxy.requests("PUT") and not cold.proxy.requests("DELETE")


def test_writeback_bucket_refuses_keys_the_cold_store_cannot_hold(rig):
    s3, bucket = rig.fast_fail_server.client(), rig.down.bucket
    for key in ("a//b", "dir/", "x/./y", "x/../y"):
        exc = error_of(s3.put_object, Bucket=bucket, Key=key, Body=b"x")
        assert exc.response["Error"]["Code"] == "InvalidArgument", key
        assert exc.response["ResponseMetadata"]["HTTPStatusCode"] == 400
        assert "cold store" in exc.response["Error"]["Message"]
    s3.put_object(Bucket=bucket, Key="a/b", Body=b"fine")
    assert get(s3, bucket, "a/b") == b"fine"


# --- an unreachable cold store ----------------------------------------------------------------------------------

def test_unreachable_cold_store_fails_misses_with_503_and_serves_warm_objects(rig):
    s3 = client(rig.fast_fail_server)  # no retries: each call is one request
    bucket, cold = rig.down.bucket, rig.down.cold
    warm, missing = blob(2, "warm"), blob(2, "missing")
    cold.put("warm.bin", warm)
    cold.put("miss-refused.bin", missing)
    cold.put("miss-blackholed.bin", missing)
    assert get(rig.fast_fail_server.client(), bucket, "warm.bin") == warm  # (retried if a loaded host is slow)
    assert rig.fast_fail_server.client().head_object(Bucket=bucket, Key="warm.bin")

    def refuse() -> None:  # a host that went down: open (keep-alive) connections reset, new ones refused
        cold.proxy.refuse()
        cold.proxy.reset_all()

    for fault, key in ((refuse, "miss-refused.bin"), (cold.proxy.blackhole, "miss-blackholed.bin")):
        fault()
        for call in (s3.get_object, s3.head_object):
            started = time.monotonic()
            exc = error_of(call, Bucket=bucket, Key=key)
            assert time.monotonic() - started < GENEROUS, (fault.__name__, call)
            assert exc.response["ResponseMetadata"]["HTTPStatusCode"] == 503
            if call is s3.get_object:
                assert exc.response["Error"]["Code"] == "ServiceUnavailable"
                assert "cold store" in exc.response["Error"]["Message"]
                assert exc.response["ResponseMetadata"]["HTTPHeaders"].get("retry-after")
        assert get(s3, bucket, "warm.bin") == warm  # warm objects do not need the cold store
        assert residency(rig.fast_fail_server, bucket, key) is None  # a failed lookup records nothing
        cold.proxy.heal()

    # healed: once a probe has found the link back (within the breaker's cooldown), the misses that failed
    # were not remembered as missing
    deadline = time.monotonic() + 5
    while True:
        try:
            assert get(s3, bucket, "miss-refused.bin") == missing
            break
        except botocore.exceptions.ClientError as exc:
            assert exc.response["ResponseMetadata"]["HTTPStatusCode"] == 503
            assert time.monotonic() < deadline, "the breaker did not close after the link healed"
            time.sleep(0.2)


def test_a_cold_failure_mid_response_cuts_it_short_and_a_later_get_resumes(rig):
    server, bucket, cold = rig.fast_fail_server, rig.down.bucket, rig.down.cold
    body = blob(24, "cut")
    cold.put("cut.bin", body)
    url = urllib.parse.urlsplit(server.client().generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": "cut.bin"}, ExpiresIn=300))
    cold.proxy.latency = 0.1  # two blocks at a time, each a round trip: the fill takes over a second
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=GENEROUS)
    try:
        conn.request("GET", f"{url.path}?{url.query}")
        response = conn.getresponse()
        assert response.status == 200
        assert response.read(BLOCK) == body[:BLOCK]
        cold.proxy.blackhole()
        started = time.monotonic()
        with pytest.raises(http.client.IncompleteRead):  # the head is out: the response is cut short, not hung
            response.read()
        assert time.monotonic() - started < GENEROUS
    finally:
        conn.close()
    cold.proxy.heal()
    assert "a read-through response was cut short" in server.log_text()

    deadline = time.monotonic() + GENEROUS
    while True:  # fetches started during the blackhole may still fail the first reader after the heal
        try:
            data = get(client(server), bucket, "cut.bin")
            break
        except Exception:  # noqa: BLE001 - a cut-short response again, until those fetches have timed out
            assert time.monotonic() < deadline, "the object is not served after the cold store came back"
            time.sleep(0.5)
    assert data == body
    assert residency(server, bucket, "cut.bin") == "resident"
