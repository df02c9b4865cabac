"""Overwrites are atomic for readers: a GET that started keeps reading the old bytes to the end, even after the
garbage collector has removed the old blob; a GET that starts after an overwrite was acknowledged sees the new
object; no reader ever gets a mix. Replaced blobs are reclaimed once the grace period has passed.

Every version carries its generation in its first bytes and its content is derived from it, so a reader can tell
exactly which version it got and whether every byte belongs to it.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import os
import random
import threading
import time
from urllib.parse import urlsplit

import pytest

MIN_PART = 64 << 10
GC_WAIT = 25.0  # GC_GRACE_SECONDS (10 s) + a GC loop interval (2-3 s) + slack for a loaded machine


def content(gen: int, size: int) -> bytes:
    head = f"gen={gen:08d};".encode()
    return (head + random.Random(gen).randbytes(max(0, size - len(head))))[:size]


def big_content(gen: int, size: int) -> bytes:
    """Large versions: a random MiB repeated with the generation and block number stamped on each copy, cheap to
    make and still different at every MiB, in every version."""
    block = bytearray(random.Random(gen).randbytes(1 << 20))
    out = bytearray()
    for i in range(size >> 20):
        block[:24] = f"gen={gen:08d};blk={i:06d};".encode()[:24]
        out += block
    return bytes(out)


def blob_count(data_dir: str) -> int:
    root = os.path.join(data_dir, "blobs")
    return sum(len(os.listdir(os.path.join(root, d))) for d in os.listdir(root))


def wait_for_blob_count(data_dir: str, expected: int, timeout: float = GC_WAIT) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if blob_count(data_dir) == expected:
            return time.monotonic() - started
        time.sleep(0.25)
    raise AssertionError(f"{blob_count(data_dir)} blobs on disk {timeout}s after the last overwrite; "
                         f"expected {expected} (replaced blobs are not being collected)")


def presigned(server, method: str, bucket: str, key: str) -> str:
    client = server.client(signature_version="s3v4")
    url = client.generate_presigned_url(method, Params={"Bucket": bucket, "Key": key}, ExpiresIn=600)
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def get_all(client, bucket: str, key: str) -> tuple[bytes, str]:
    got = client.get_object(Bucket=bucket, Key=key)
    return got["Body"].read(), got["ETag"].strip('"')


@pytest.mark.timeout(120)
def test_slow_reader_keeps_old_bytes_through_overwrites_and_gc(new_server):
    size = 64 << 20
    server = new_server()
    s3 = server.client()
    s3.create_bucket(Bucket="atomic")
    versions = {gen: big_content(gen, size) for gen in range(4)}
    s3.put_object(Bucket="atomic", Key="big", Body=versions[0])
    assert blob_count(server.data_dir) == 1

    # Start a GET of version 0 and read only its first 4 MiB: the server is now blocked mid-response.
    slow = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    slow.request("GET", presigned(server, "get_object", "atomic", "big"))
    response = slow.getresponse()
    assert response.status == 200
    assert response.getheader("ETag").strip('"') == hashlib.md5(versions[0]).hexdigest()
    slow_hash = hashlib.sha256()
    received = 0
    for _ in range(16):
        chunk = response.read(256 << 10)
        slow_hash.update(chunk)
        received += len(chunk)

    for gen in (1, 2, 3):
        reply = s3.put_object(Bucket="atomic", Key="big", Body=versions[gen])
        assert reply["ETag"].strip('"') == hashlib.md5(versions[gen]).hexdigest()
        body, etag = get_all(s3, "atomic", "big")
        assert body[:24] == versions[gen][:24], f"a GET after overwrite {gen} was acknowledged got {body[:24]!r}"
        assert body == versions[gen] and etag == hashlib.md5(versions[gen]).hexdigest()

    # Versions 0-2 are garbage now; wait until the collector has unlinked their blobs, with the slow GET of
    # version 0 still open, then let it finish: it must get exactly version 0.
    wait_for_blob_count(server.data_dir, 1)
    while True:
        chunk = response.read(1 << 20)
        if not chunk:
            break
        slow_hash.update(chunk)
        received += len(chunk)
    slow.close()
    assert received == size
    assert slow_hash.hexdigest() == hashlib.sha256(versions[0]).hexdigest(), "the slow reader got mixed bytes"
    body, _ = get_all(s3, "atomic", "big")
    assert body == versions[3]
    assert "Traceback" not in server.log_text(), server.log_text()[-3000:]


@pytest.mark.timeout(120)
def test_concurrent_readers_never_see_mixed_versions(new_server):
    """One writer overwrites a key 80 times (inline-sized, cached-size, sendfile-sized and multipart versions);
    four readers GET it in a loop. Every read is one whole version with its own ETag, never older than the last
    overwrite acknowledged before the read started, and never older than what that reader saw before."""
    server = new_server(extra_env={"ATOLL_MIN_PART_SIZE": str(MIN_PART)})
    s3 = server.client()
    s3.create_bucket(Bucket="atomic")
    rng = random.Random(5)
    sizes = [13, 1000, 40 << 10, 64 << 10, (64 << 10) + 1, 300 << 10, 2 << 20]
    expected: dict[int, tuple[bytes, str]] = {}
    acked: list[tuple[float, int]] = [(0.0, 0)]  # (monotonic time of acknowledgement, generation)
    gen0 = content(0, 5000)
    expected[0] = (gen0, hashlib.md5(gen0).hexdigest())
    s3.put_object(Bucket="atomic", Key="k", Body=gen0)
    done = threading.Event()
    problems: list[str] = []
    reads = [0] * 4

    def reader(slot: int) -> None:
        client = server.client()
        last = 0
        while not done.is_set() and len(problems) < 10:
            floor = acked[-1][1]
            got = client.get_object(Bucket="atomic", Key="k")
            body, etag = got["Body"].read(), got["ETag"].strip('"')
            reads[slot] += 1
            try:
                gen = int(body[4:12])  # every version is at least its 13-byte stamp long
            except ValueError:
                gen = -1
            if gen not in expected or expected[gen][0] != body:
                problems.append(f"reader {slot}: {len(body)} bytes that are no single version: {body[:24]!r}")
            elif expected[gen][1] != etag:
                problems.append(f"reader {slot}: version {gen} served with ETag {etag}, expected {expected[gen][1]}")
            elif gen < floor or gen < last:
                problems.append(f"reader {slot}: got version {gen} after version {max(floor, last)} was "
                                f"acknowledged or seen")
            last = max(last, gen)

    threads = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(4)]
    for t in threads:
        t.start()
    try:
        for gen in range(1, 81):
            if gen % 8 == 0:
                parts_sizes = [MIN_PART, MIN_PART + rng.randint(0, 4096), rng.randint(1, 9000)]
                data = content(gen, sum(parts_sizes))
                upload = s3.create_multipart_upload(Bucket="atomic", Key="k")
                listed, offset, digests = [], 0, []
                for number, part_size in enumerate(parts_sizes, 1):
                    piece = data[offset:offset + part_size]
                    offset += part_size
                    digests.append(hashlib.md5(piece).digest())
                    r = s3.upload_part(Bucket="atomic", Key="k", UploadId=upload["UploadId"], PartNumber=number,
                                       Body=piece)
                    listed.append({"PartNumber": number, "ETag": r["ETag"]})
                etag = hashlib.md5(b"".join(digests)).hexdigest() + "-3"
                expected[gen] = (data, etag)
                s3.complete_multipart_upload(Bucket="atomic", Key="k", UploadId=upload["UploadId"],
                                             MultipartUpload={"Parts": listed})
            else:
                data = content(gen, rng.choice(sizes))
                expected[gen] = (data, hashlib.md5(data).hexdigest())
                s3.put_object(Bucket="atomic", Key="k", Body=data)
            acked.append((time.monotonic(), gen))
            time.sleep(rng.uniform(0, 0.02))
    finally:
        done.set()
        for t in threads:
            t.join(30)
    assert not problems, "\n".join(problems)
    assert min(reads) >= 20, f"readers made too few reads to mean anything: {reads}"
    final = expected[80]
    assert get_all(s3, "atomic", "k") == final
    # The last version is a multipart object of 3 parts, each its own blob; everything else gets collected.
    wait_for_blob_count(server.data_dir, 3)


@pytest.mark.timeout(120)
def test_ranged_parallel_downloads_during_overwrites_are_whole_or_fail(new_server):
    """boto3's download_fileobj reads a large object as parallel ranged GETs carrying If-Match with the ETag of
    its first response. Overwrites racing with it must make it fail (412), never assemble parts of two
    versions."""
    import botocore.exceptions
    from boto3.s3.transfer import TransferConfig
    from s3transfer.exceptions import S3DownloadFailedError

    size = 24 << 20
    server = new_server()
    s3 = server.client()
    s3.create_bucket(Bucket="atomic")
    versions = [big_content(gen, size) for gen in range(3)]
    s3.put_object(Bucket="atomic", Key="big", Body=versions[0])
    done = threading.Event()
    writes = [0]

    def overwrite() -> None:
        writer = server.client()
        while not done.is_set() and writes[0] < 200:
            writes[0] += 1
            writer.put_object(Bucket="atomic", Key="big", Body=versions[writes[0] % 3])
            time.sleep(0.05)

    config = TransferConfig(multipart_threshold=8 << 20, multipart_chunksize=4 << 20, max_concurrency=4)
    thread = threading.Thread(target=overwrite, daemon=True)
    thread.start()
    outcomes = {"whole": 0, "refused": 0}
    try:
        attempts = 0
        while attempts < 12 or (writes[0] < 8 and attempts < 40):
            attempts += 1
            sink = io.BytesIO()
            try:
                s3.download_fileobj("atomic", "big", sink, Config=config)
            except botocore.exceptions.ClientError as exc:
                assert exc.response["Error"]["Code"] in ("PreconditionFailed", "412"), exc.response
                outcomes["refused"] += 1
                continue
            except S3DownloadFailedError as exc:  # s3transfer's wording for the same 412
                assert "did not match expected ETag" in str(exc), exc
                outcomes["refused"] += 1
                continue
            got = sink.getvalue()
            assert got in versions, f"a download assembled {len(got)} bytes from more than one version: " \
                                    f"{[got[i:i + 24] for i in range(0, len(got), 4 << 20)]}"
            outcomes["whole"] += 1
    finally:
        done.set()
        thread.join(60)
    assert writes[0] >= 3 and outcomes["whole"] + outcomes["refused"] == attempts, (writes, outcomes)
    print(f"downloads during {writes[0]} overwrites: {outcomes}")
