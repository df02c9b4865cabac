"""Multipart uploads to a cold store that a partition or a crash cuts short leave nothing behind.

An S3 multipart upload that is never completed or aborted keeps its parts, billed, until someone aborts it.
obstore aborts uploads that fail inside it, but not one cut by Atoll's watchdog or by kill -9. Atoll records each
multipart upload before it starts and the drain settles the record: these tests cut real uploads to a real S3
server (moto, behind the fault proxy) and check that no unfinished upload remains once the drain is done, and
that the object arrives whole, once. Azure needs no cleanup (uncommitted blocks are discarded by the next
commit): its variant checks that no uncommitted block is left once the redone upload is committed.
"""

from __future__ import annotations

import contextlib

import pytest

from harness import AtollProcess, meta_query, wait_until
from tierutil import ColdSite, client, emulator, link_bucket, pattern

pytestmark = pytest.mark.timeout(180)

MiB = 1 << 20
SIZE = 20 * MiB  # three 8 MiB parts: a multipart upload (parts of at least 5 MiB, as S3 requires)
ENV = {"ATOLL_COLD_FIRST_BYTE_TIMEOUT": "1", "ATOLL_COLD_CONNECT_TIMEOUT": "1", "ATOLL_BREAKER_COOLDOWN": "0.3",
       "ATOLL_BREAKER_MAX_COOLDOWN": "1", "ATOLL_ADMIN_ADDRESS": "off"}


@pytest.fixture(params=["s3", "azure"])
def site(request):
    with ColdSite(request.param, emulator(request, request.param), hint="leftover") as made:
        yield made


def unfinished(cold) -> list[str]:
    """Unfinished multipart uploads (S3) or uncommitted blocks (Azure) under the link's prefix."""
    if cold.kind == "s3":
        listed = cold.direct().list_multipart_uploads(Bucket=cold.container, Prefix=cold.prefix + "/")
        return [u["Key"] for u in listed.get("Uploads", [])]
    leftover = []
    for name in ("big.bin",):
        blob = cold.container_client().get_blob_client(f"{cold.prefix}/{name}")
        try:
            _, uncommitted = blob.get_block_list("uncommitted")
        except Exception:  # noqa: BLE001 - no blob at all: Azurite answers 404 for a blob with no blocks
            continue
        leftover += [f"{name}:{b.id}" for b in uncommitted]
    return leftover


def drained(server: AtollProcess, bucket: str) -> bool:
    return not meta_query(server, "SELECT 1 FROM drain WHERE bucket = ?", (bucket,))


@contextlib.contextmanager
def uploading(site, tmp_path, seed: str):
    """(server, cold, bucket, body): a write-back server whose drain is a third of the way through uploading
    big.bin (a multipart upload, slowed down) to a fresh cold prefix. The server is stopped at the end."""
    cold = site.cold()
    server = AtollProcess(data_dir=str(tmp_path / "data"), extra_env=ENV).start()
    try:
        bucket = link_bucket(server, cold, mode="writeback")
        body = pattern(SIZE, seed)
        cold.proxy.bandwidth = 2 * MiB  # ten seconds of upload: time to cut it half-way
        client(server).put_object(Bucket=bucket, Key="big.bin", Body=body)
        wait_until(lambda: cold.proxy.bytes_up > 6 * MiB, 30, "the drain to start uploading")
        yield server, cold, bucket, body
    finally:
        server.stop()


def assert_cut_upload_left(server: AtollProcess, cold) -> None:
    """What a cut upload leaves: its record (S3 only: Azure leaves nothing billable) and, on S3, billed parts."""
    assert meta_query(server, "SELECT key FROM cold_uploads") == ([("big.bin",)] if cold.kind == "s3" else [])
    if cold.kind == "s3":
        assert unfinished(cold) == [f"{cold.prefix}/big.bin"]


def assert_redone_and_settled(server: AtollProcess, cold, bucket: str, body: bytes, after: str) -> None:
    wait_until(lambda: drained(server, bucket), 60, f"the drain to finish after the {after}")
    assert cold.get("big.bin") == body
    wait_until(lambda: not meta_query(server, "SELECT key FROM cold_uploads"), 40, "the upload record to settle")
    assert unfinished(cold) == []


def test_an_upload_cut_by_a_partition_is_aborted_and_redone(site, tmp_path):
    with uploading(site, tmp_path, "cut") as (server, cold, bucket, body):
        cold.proxy.blackhole()
        # The watchdog cuts the frozen upload once the probes find the link down; the record stays.
        wait_until(lambda: meta_query(server, "SELECT last_error FROM drain WHERE bucket = ? AND attempts > 0",
                                      (bucket,)), 30, "the cut upload to be noticed")
        assert_cut_upload_left(server, cold)
        cold.proxy.heal()
        assert_redone_and_settled(server, cold, bucket, body, "heal")


def test_an_upload_cut_by_a_crash_is_aborted_after_the_restart(site, tmp_path):
    with uploading(site, tmp_path, "crash") as (server, cold, bucket, body):
        server.kill()
        assert_cut_upload_left(server, cold)
        cold.proxy.heal()
        server.start()
        assert_redone_and_settled(server, cold, bucket, body, "restart")
