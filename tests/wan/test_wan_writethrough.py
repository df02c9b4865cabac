"""Write-through buckets during a partition of their cold store, under both settings of
``writethrough_on_partition``:

* ``refuse`` (the default): a write that cannot reach the cold store answers 503 with Retry-After and leaves
  nothing behind: no object (local or cold), no journal entry, no data file, and, for a large write cut in the
  middle of its multipart upload, no half-finished upload in the cold store once the link is back. (On Azure
  the staged blocks of the refused write stay uncommitted: known, xfail with raises=LeftBehind.) Once the
  breaker is open, refusals are immediate (< 1 s); the write that finds the link down waits at most until the
  partition is detected, or, for a single-request upload, its first-byte time plus its size at 256 KiB/s.
* ``writeback``: the same writes are acknowledged (journaled like write-back), counted in
  ``atoll_writethrough_degraded_writes_total{bucket}``, and drained after the heal: the cold store then holds every one
  byte-exact, and again no half-finished upload.

In both, a large PUT is under way (its upload half sent over a slowed link) when the cold store is black-holed,
and then small PUTs follow during the partition. After the heal a new write goes through as write-through again.
"""

from __future__ import annotations

import os
import re
import threading
import time
import urllib.request

import pytest
from botocore.exceptions import ClientError

from wanutil import (COLD_KINDS, FAST_FAILURE_ENV, KiB, MiB, LeftBehind, backlog, cold_state, link, meta_query,
                     no_retry_client, sha256, start_server, stop_server, wait_drained, wait_no_leftovers, wait_until)

pytestmark = [pytest.mark.timeout(180), pytest.mark.serial]  # asserts latency and time bounds: no neighbours

BIG = 12 * MiB  # a multipart upload in the cold store (the upload part size is 8 MiB)
SMALL_WRITES = 8
DETECTION_BOUND = 12.0  # s: quiet transfer noticed (2 s), three failed 1 s probes 0.5 s apart, plus slack
AZURE_BLOCKS_LEFT = ("a refused write-through write to Azure leaves its staged blocks uncommitted; nothing commits "
                     "or removes them (Azure drops them after 7 days)")


@pytest.fixture(scope="module", params=["refuse", "writeback"])
def policy_server(request, tmp_path_factory):
    env = {**FAST_FAILURE_ENV, "ATOLL_WRITETHROUGH_ON_PARTITION": request.param}
    proc = start_server(str(tmp_path_factory.mktemp(f"wan-wt-{request.param}")), env)
    yield request.param, proc
    stop_server(proc)


def data_files(server) -> set[str]:
    found = set()
    for sub in ("blobs", "tmp"):
        for root, _, files in os.walk(os.path.join(server.data_dir, sub)):
            found.update(os.path.join(root, name) for name in files)
    return found


def degraded_count(server, bucket: str) -> float:
    request = urllib.request.Request(f"{server.admin_endpoint}/metrics",
                                     headers={"Authorization": f"Bearer {server.admin_token}"})
    text = urllib.request.urlopen(request, timeout=10).read().decode()
    found = re.search(rf'^atoll_writethrough_degraded_writes_total{{bucket="{re.escape(bucket)}"}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def put(s3, bucket: str, key: str, body: bytes) -> tuple[int, float, dict]:
    """(HTTP status, seconds, headers) of one PUT."""
    started = time.monotonic()
    try:
        s3.put_object(Bucket=bucket, Key=key, Body=body)
        return 200, time.monotonic() - started, {}
    except ClientError as exc:
        meta = exc.response["ResponseMetadata"]
        assert exc.response["Error"]["Code"] == "ServiceUnavailable", exc.response
        return meta["HTTPStatusCode"], time.monotonic() - started, meta["HTTPHeaders"]


@pytest.mark.parametrize("kind", COLD_KINDS)
def test_writethrough_during_a_partition(policy_server, cold_sites, kind, request):
    policy, server = policy_server
    if (policy, kind) == ("refuse", "azure"):
        request.applymarker(pytest.mark.xfail(raises=LeftBehind, strict=False, reason=AZURE_BLOCKS_LEFT))
    cold = cold_sites.make(kind)
    bucket = link(server, cold, "writethrough")
    s3 = no_retry_client(server)
    assert put(s3, bucket, "healthy", b"before the partition")[0] == 200
    assert cold.get("healthy") == b"before the partition"
    files_before = data_files(server)

    # A large write whose multipart upload to the cold store is cut half way by the partition.
    big = os.urandom(BIG)
    outcome: list[tuple] = []
    cold.proxy.bandwidth = 4 * MiB
    writer = threading.Thread(target=lambda: outcome.append(put(s3, bucket, "big", big)))
    writer.start()
    wait_until(lambda: cold.proxy.requests(path_contains="/big"), 20, "the big upload to start")
    started_at = cold.proxy.bytes_up
    # Past 9 MiB, the upload's second part (4 MiB, sent alongside the first) is complete in the cold store.
    wait_until(lambda: cold.proxy.bytes_up > started_at + 9 * MiB, 20, "the big upload to be under way")
    cold.proxy.blackhole()
    writer.join(DETECTION_BOUND + 5)
    assert outcome, "the big write never answered"
    big_status, big_seconds, big_headers = outcome[0]

    smalls = {f"small/{i}": os.urandom(64 * KiB) for i in range(SMALL_WRITES)}
    answers = {key: put(s3, bucket, key, body) for key, body in smalls.items()}
    summary = (f"{kind}, {policy}: big write {big_status} after {big_seconds:.2f} s; small writes "
               f"{sorted({a[0] for a in answers.values()})} in {max(a[1] for a in answers.values()):.3f} s at most")
    print(summary)
    assert big_seconds <= DETECTION_BOUND, summary
    assert max(seconds for _, seconds, _ in answers.values()) < 1.0, summary

    if policy == "refuse":
        for status, _, headers in [outcome[0], *answers.values()]:
            assert status == 503 and int(headers["retry-after"]) >= 1, (status, headers)
        # Nothing behind: no object, no journal entry, no data file. (Asked of the index directly: a HEAD of a
        # key the index lacks asks the cold store, which answers 503 during the partition.)
        assert meta_query(server, "SELECT key FROM objects WHERE bucket = ?", (bucket,)) == [("healthy",)]
        assert backlog(server, bucket) == (0, 0)
        assert data_files(server) == files_before
        expected = {"healthy": sha256(b"before the partition")}
    else:
        assert big_status == 200 and all(status == 200 for status, _, _ in answers.values()), summary
        assert backlog(server, bucket)[0] == 1 + SMALL_WRITES
        assert degraded_count(server, bucket) == 1 + SMALL_WRITES
        expected = {"healthy": sha256(b"before the partition"), "big": sha256(big),
                    **{key: sha256(body) for key, body in smalls.items()}}

    cold.proxy.heal()
    # Write-through again once the breaker has closed: the 200 means the cold store has it.
    wait_until(lambda: cold_state(server, bucket) != "partitioned", 10, "the breaker to close")
    assert put(s3, bucket, "after", b"after the heal")[0] == 200
    assert cold.get("after") == b"after the heal"
    if policy == "refuse":
        for key in ["big", *smalls]:
            with pytest.raises(ClientError) as missing:
                s3.head_object(Bucket=bucket, Key=key)
            assert missing.value.response["Error"]["Code"] in ("404", "NoSuchKey"), key
    expected["after"] = sha256(b"after the heal")
    wait_drained(server, bucket, 30)

    assert {key: sha256(cold.get(key)) for key in cold.keys()} == expected
    assert set(cold.names()) == {f"{cold.prefix}/{key}" for key in expected}
    wait_no_leftovers(cold, ["big"], 5)  # S3: aborted within a second or two of the heal
