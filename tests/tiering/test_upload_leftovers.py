"""Multipart uploads to a cold store that a partition or a crash cuts short leave nothing behind.

An S3 multipart upload that is never completed or aborted keeps its parts, billed, until someone aborts it.
obstore aborts uploads that fail inside it, but not one cut by Atoll's watchdog or by kill -9. Atoll records each
multipart upload before it starts and the drain settles the record: these tests cut real uploads to a real S3
server (moto, behind the fault proxy) and check that no unfinished upload remains once the drain is done, and
that the object arrives whole, once. Azure needs no cleanup (uncommitted blocks are discarded by the next
commit): its variant checks that no uncommitted block is left once the redone upload is committed.
"""

from __future__ import annotations

import time

import pytest

from harness import AtollProcess
from tierutil import ColdSite, client, emulator, link_bucket, meta_query, pattern

pytestmark = pytest.mark.timeout(180)

MiB = 1 << 20
SIZE = 20 * MiB  # three 8 MiB parts: a multipart upload (parts of at least 5 MiB, as S3 requires)
ENV = {"ATOLL_COLD_FIRST_BYTE_TIMEOUT": "1", "ATOLL_COLD_CONNECT_TIMEOUT": "1", "ATOLL_BREAKER_COOLDOWN": "0.3",
       "ATOLL_BREAKER_MAX_COOLDOWN": "1", "ATOLL_ADMIN_ADDRESS": "off"}


@pytest.fixture(params=["s3", "azure"])
def site(request):
    made = ColdSite(request.param, emulator(request, request.param), hint="leftover")
    yield made
    made.close()


def unfinished(cold) -> list[str]:
    """Unfinished multipart uploads (S3) or uncommitted blocks (Azure) under the link's prefix."""
    if cold.kind == "s3":
        listed = cold.direct().list_multipart_uploads(Bucket=cold.container, Prefix=cold.prefix + "/")
        return [u["Key"] for u in listed.get("Uploads", [])]
    container = cold.direct().get_container_client(cold.container)
    leftover = []
    for name in ("big.bin",):
        blob = container.get_blob_client(f"{cold.prefix}/{name}")
        try:
            _, uncommitted = blob.get_block_list("uncommitted")
        except Exception:  # noqa: BLE001 - no blob at all: Azurite answers 404 for a blob with no blocks
            continue
        leftover += [f"{name}:{b.id}" for b in uncommitted]
    return leftover


def recorded(cold) -> list[tuple[str]]:
    """The upload records expected while an upload is cut: S3 only (Azure leaves nothing billable)."""
    return [("big.bin",)] if cold.kind == "s3" else []


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def drained(server: AtollProcess, bucket: str) -> bool:
    return not meta_query(server, "SELECT 1 FROM drain WHERE bucket = ?", (bucket,))


def test_an_upload_cut_by_a_partition_is_aborted_and_redone(site, tmp_path):
    cold = site.cold()
    server = AtollProcess(data_dir=str(tmp_path / "data"), extra_env=ENV).start()
    try:
        bucket = link_bucket(server, cold, mode="writeback")
        body = pattern(SIZE, "cut")
        cold.proxy.bandwidth = 2 * MiB  # ten seconds of upload: time to cut it half-way
        client(server).put_object(Bucket=bucket, Key="big.bin", Body=body)
        wait_until(lambda: cold.proxy.bytes_up > 6 * MiB, 30, "the drain did not start uploading")
        cold.proxy.blackhole()
        # The watchdog cuts the frozen upload once the probes find the link down; the record stays.
        wait_until(lambda: meta_query(server, "SELECT last_error FROM drain WHERE bucket = ? AND attempts > 0",
                                      (bucket,)), 30, "the cut upload was not noticed")
        assert meta_query(server, "SELECT key FROM cold_uploads") == recorded(cold)
        if cold.kind == "s3":
            assert unfinished(cold) == [f"{cold.prefix}/big.bin"]  # what a cut upload leaves: billed parts
        cold.proxy.heal()
        wait_until(lambda: drained(server, bucket), 60, "the drain did not finish after the heal")
        assert cold.get("big.bin") == body
        wait_until(lambda: not meta_query(server, "SELECT key FROM cold_uploads"), 40,
                   "the upload record was not settled")
        assert unfinished(cold) == []
    finally:
        server.stop()


def test_an_upload_cut_by_a_crash_is_aborted_after_the_restart(site, tmp_path):
    cold = site.cold()
    server = AtollProcess(data_dir=str(tmp_path / "data"), extra_env=ENV).start()
    try:
        bucket = link_bucket(server, cold, mode="writeback")
        body = pattern(SIZE, "crash")
        cold.proxy.bandwidth = 2 * MiB
        client(server).put_object(Bucket=bucket, Key="big.bin", Body=body)
        wait_until(lambda: cold.proxy.bytes_up > 6 * MiB, 30, "the drain did not start uploading")
        server.kill()
        assert meta_query(server, "SELECT key FROM cold_uploads") == recorded(cold)
        if cold.kind == "s3":
            assert unfinished(cold) == [f"{cold.prefix}/big.bin"]
        cold.proxy.heal()
        server.start()
        wait_until(lambda: drained(server, bucket), 60, "the drain did not finish after the restart")
        assert cold.get("big.bin") == body
        wait_until(lambda: not meta_query(server, "SELECT key FROM cold_uploads"), 40,
                   "the upload record was not settled")
        assert unfinished(cold) == []
    finally:
        server.stop()
