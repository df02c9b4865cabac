"""Objects crossing the packing threshold (#8): one key overwritten small → large → small on a server that packs
bodies of at most 64 KiB, through every way of writing it, on both endpoints.

S3: PutObject (with Content-MD5 and a CRC32C checksum), the threshold's both sides (65,536 and 65,537 bytes),
CopyObject from packed and from file sources, multipart (parts stay files, however small). Blob: Put Blob, Put
Block List. After every write the bytes, ETag, stored checksum, ranges, HEAD size and the listing are checked,
and where the bytes live (a segment record or blob files) is read from the metadata: small single writes must be
packed, the rest must not. Deletes work from either store; quotas count the object's size whichever store holds
it; a linked write-back bucket drains packed objects to a moto S3 bucket bit-exact. Each test ends with the
segments' records checked against the index and a clean ``atoll fsck --checksums``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import secrets
import time

import botocore.exceptions
import pytest
from awscrt import checksums as crt_checksums
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import BlobBlock

from blob.blobutil import blob_service_for
from coldside import Cold
from harness import AtollProcess, meta_query
from packutil import KiB, assert_fsck_clean, check_packed_references, store_of

pytestmark = pytest.mark.timeout(180)

THRESHOLD = 64 * KiB
MIN_PART = 64 * KiB  # the server's minimum part size here, so multipart uploads stay small
SIZES = {"tiny": 1, "small": 3000, "edge": THRESHOLD, "over": THRESHOLD + 1, "large": 300 * KiB}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc = AtollProcess(data_dir=str(tmp_path_factory.mktemp("threshold") / "data"),
                        extra_args=["--packed-max-size", str(THRESHOLD)],
                        extra_env={"ATOLL_MIN_PART_SIZE": str(MIN_PART), "ATOLL_ADMIN_ADDRESS": "off"}).start()
    yield proc
    proc.kill()
    assert "Traceback" not in proc.log_text(), proc.log_text()[-5000:]


@pytest.fixture
def s3(server):
    return server.client()


@pytest.fixture
def bucket(s3):
    name = f"thr-{secrets.token_hex(4)}"
    s3.create_bucket(Bucket=name)
    return name


def data_of(size: int, seed: str) -> bytes:
    return random.Random(seed).randbytes(size)


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def crc32c_of(data: bytes) -> str:
    return b64(crt_checksums.crc32c(data).to_bytes(4, "big"))


def multipart_etag(parts: list[bytes]) -> str:
    return hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest() + f"-{len(parts)}"


def expected_stores(data: bytes, single_write: bool = True) -> set[str]:
    """Where the bytes of ``data`` may live: a single write (PUT, Put Blob) up to the threshold is packed, and an
    empty one may have no bytes at all; anything else (larger, multipart, blocks) is blob files."""
    if single_write and len(data) <= THRESHOLD:
        return {"packed", "none"} if not data else {"packed"}
    return {"files"}


def check_s3_object(server: AtollProcess, s3, bucket: str, key: str, data: bytes, stores: set[str],
                    etag: str | None = None, crc32c: str | None = None) -> None:
    """What every client sees of ``key`` is ``data``, and its bytes live in one of ``stores``."""
    etag = etag or hashlib.md5(data).hexdigest()
    assert store_of(server, bucket, key) in stores, (key, len(data), stores)
    got = s3.get_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")  # botocore checks a stored checksum
    assert got["Body"].read() == data, (key, len(data))
    assert got["ETag"].strip('"') == etag and got["ContentLength"] == len(data)
    head = s3.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    assert head["ContentLength"] == len(data) and head["ETag"].strip('"') == etag
    if crc32c:
        assert head["ChecksumCRC32C"] == crc32c and got["ChecksumCRC32C"] == crc32c
    if data:
        middle = len(data) // 2
        for spec, want in (("bytes=0-0", data[:1]), (f"bytes={middle}-{middle + 99}", data[middle:middle + 100]),
                           ("bytes=-7", data[-7:]), (f"bytes={len(data) - 1}-", data[-1:])):
            ranged = s3.get_object(Bucket=bucket, Key=key, Range=spec)
            assert ranged["Body"].read() == want, (key, spec)
            assert ranged["ContentRange"].endswith(f"/{len(data)}"), ranged["ContentRange"]
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=key)["Contents"]
    assert [(o["Key"], o["Size"], o["ETag"].strip('"')) for o in listed] == [(key, len(data), etag)]


def check_gone(s3, bucket: str, key: str) -> None:
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        s3.get_object(Bucket=bucket, Key=key)
    assert caught.value.response["Error"]["Code"] == "NoSuchKey"
    assert s3.list_objects_v2(Bucket=bucket, Prefix=key).get("KeyCount") == 0


def finish(server: AtollProcess) -> None:
    """Every packed record where the index says, whole; fsck clean."""
    problems = check_packed_references(server)
    assert not problems, "\n".join(problems)
    assert_fsck_clean(server, "--checksums")


# S3 --------------------------------------------------------------------------------------------------------------

def put_checked(server, s3, bucket: str, key: str, data: bytes) -> None:
    """PutObject with Content-MD5 and a CRC32C checksum, then every check."""
    reply = s3.put_object(Bucket=bucket, Key=key, Body=data, ContentMD5=b64(hashlib.md5(data).digest()),
                          ChecksumAlgorithm="CRC32C")
    assert reply["ETag"].strip('"') == hashlib.md5(data).hexdigest()
    assert reply["ChecksumCRC32C"] == crc32c_of(data)
    check_s3_object(server, s3, bucket, key, data, expected_stores(data), crc32c=crc32c_of(data))


def test_put_object_across_the_threshold_and_back(server, s3, bucket):
    key = "cross/put"
    for step, name in enumerate(["small", "large", "small", "edge", "over", "edge", "tiny", "large", "small"]):
        put_checked(server, s3, bucket, key, data_of(SIZES[name], f"{key}{step}"))
    put_checked(server, s3, bucket, key, b"")  # an empty object has no bytes anywhere
    put_checked(server, s3, bucket, key, data_of(SIZES["small"], "after empty"))
    # A wrong Content-MD5 stores nothing: the small version stays.
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        s3.put_object(Bucket=bucket, Key=key, Body=b"x" * 10, ContentMD5=b64(hashlib.md5(b"y").digest()))
    assert caught.value.response["Error"]["Code"] == "BadDigest"
    check_s3_object(server, s3, bucket, key, data_of(SIZES["small"], "after empty"), {"packed"})
    s3.delete_object(Bucket=bucket, Key=key)
    check_gone(s3, bucket, key)
    put_checked(server, s3, bucket, key, data_of(SIZES["large"], "large to delete"))
    s3.delete_object(Bucket=bucket, Key=key)
    check_gone(s3, bucket, key)
    finish(server)


def copied_stores(data: bytes) -> set[str]:
    """A copy of a small object may be packed or a file (the design leaves it open); a large one is files."""
    return {"packed", "files"} if len(data) <= THRESHOLD else {"files"}


def test_copy_object_across_the_threshold(server, s3, bucket):
    sources = {}
    for name in ("small", "large", "edge"):
        sources[name] = data_of(SIZES[name], f"source {name}")
        s3.put_object(Bucket=bucket, Key=f"src/{name}", Body=sources[name], Metadata={"from": name})
    key = "cross/copy"
    s3.put_object(Bucket=bucket, Key=key, Body=data_of(SIZES["small"], "copy start"))
    for name in ("large", "small", "large", "edge", "small"):
        reply = s3.copy_object(Bucket=bucket, Key=key, CopySource={"Bucket": bucket, "Key": f"src/{name}"})
        assert reply["CopyObjectResult"]["ETag"].strip('"') == hashlib.md5(sources[name]).hexdigest()
        check_s3_object(server, s3, bucket, key, sources[name], copied_stores(sources[name]))
        assert s3.head_object(Bucket=bucket, Key=key)["Metadata"] == {"from": name}
    # A metadata-replacing copy onto itself keeps the bytes where they are readable.
    s3.copy_object(Bucket=bucket, Key=key, CopySource={"Bucket": bucket, "Key": key}, Metadata={"step": "replaced"},
                   MetadataDirective="REPLACE")
    check_s3_object(server, s3, bucket, key, sources["small"], copied_stores(sources["small"]))
    assert s3.head_object(Bucket=bucket, Key=key)["Metadata"] == {"step": "replaced"}
    # Deleting a copy's source leaves the copy whole, from either store.
    for name in ("small", "large", "edge"):
        s3.copy_object(Bucket=bucket, Key=f"copy/{name}", CopySource={"Bucket": bucket, "Key": f"src/{name}"})
        s3.delete_object(Bucket=bucket, Key=f"src/{name}")
        check_s3_object(server, s3, bucket, f"copy/{name}", sources[name], copied_stores(sources[name]))
    finish(server)


def test_multipart_across_the_threshold(server, s3, bucket):
    key = "cross/multipart"

    def multipart(parts: list[bytes]) -> None:
        upload = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        etags = [s3.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=n, Body=part)["ETag"]
                 for n, part in enumerate(parts, 1)]
        reply = s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={
            "Parts": [{"PartNumber": n, "ETag": etag} for n, etag in enumerate(etags, 1)]})
        assert reply["ETag"].strip('"') == multipart_etag(parts)
        data = b"".join(parts)
        # Parts are files whatever their size: Complete copies no bytes.
        check_s3_object(server, s3, bucket, key, data, {"files"}, etag=multipart_etag(parts))

    put_checked(server, s3, bucket, key, data_of(SIZES["small"], "mp start"))
    multipart([data_of(MIN_PART, "p1"), data_of(100, "p2")])
    put_checked(server, s3, bucket, key, data_of(SIZES["edge"], "mp edge"))
    multipart([data_of(1000, "one small part")])  # a one-part upload below the threshold
    put_checked(server, s3, bucket, key, data_of(SIZES["tiny"], "mp tiny"))
    # A part copied from a packed object (UploadPartCopy) reads the record.
    upload = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    copied = s3.upload_part_copy(Bucket=bucket, Key=key, UploadId=upload, PartNumber=1,
                                 CopySource={"Bucket": bucket, "Key": key})["CopyPartResult"]["ETag"]
    s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload,
                                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": copied}]})
    tiny = data_of(SIZES["tiny"], "mp tiny")
    check_s3_object(server, s3, bucket, key, tiny, {"files"}, etag=multipart_etag([tiny]))
    s3.delete_object(Bucket=bucket, Key=key)
    check_gone(s3, bucket, key)
    finish(server)


# Blob -------------------------------------------------------------------------------------------------------------

def check_blob(server, s3, container, bucket: str, key: str, data: bytes, stores: set[str], md5: bool) -> None:
    """What Blob and S3 clients see of ``key`` is ``data``; its bytes live in one of ``stores``."""
    assert store_of(server, bucket, key) in stores, (key, len(data), stores)
    blob = container.get_blob_client(key)
    assert blob.download_blob().readall() == data
    props = blob.get_blob_properties()
    assert props.size == len(data)
    if md5:
        assert props.content_settings.content_md5 == bytearray(hashlib.md5(data).digest())
    head = s3.head_object(Bucket=bucket, Key=key)
    assert props.etag == head["ETag"] and head["ContentLength"] == len(data)
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == data
    if len(data) > 10:
        assert blob.download_blob(offset=3, length=len(data) - 5, validate_content=len(data) - 5 <= 4 << 20
                                  ).readall() == data[3:-2]
    assert [(b.name, b.size) for b in container.list_blobs(name_starts_with=key)] == [(key, len(data))]


def test_blob_put_blob_and_block_lists_across_the_threshold(server, s3, bucket):
    container = blob_service_for(server).get_container_client(bucket)
    key = "cross/blob"
    blob = container.get_blob_client(key)

    def put_blob(name: str, step: int) -> None:
        data = data_of(SIZES[name], f"blob {name} {step}")
        blob.upload_blob(data, overwrite=True, validate_content=True)  # one Put Blob, with Content-MD5
        check_blob(server, s3, container, bucket, key, data, expected_stores(data), md5=True)

    def put_blocks(sizes: list[int], step: int) -> None:
        blocks = [data_of(size, f"block {step}.{i}") for i, size in enumerate(sizes)]
        ids = [base64.b64encode(f"{step:04d}-{i:04d}".encode()).decode() for i in range(len(blocks))]
        for block_id, block in zip(ids, blocks):
            blob.stage_block(block_id, block)
        blob.commit_block_list([BlobBlock(block_id) for block_id in ids])
        check_blob(server, s3, container, bucket, key, b"".join(blocks), {"files"}, md5=False)

    put_blob("small", 0)
    put_blocks([40 * KiB, 40 * KiB], 1)  # blocks are files, even when the blob would fit a record
    put_blob("edge", 2)
    put_blob("over", 3)
    put_blob("tiny", 4)
    put_blocks([1000], 5)
    put_blob("large", 6)
    put_blob("small", 7)
    blob.delete_blob()
    with pytest.raises(ResourceNotFoundError):
        blob.get_blob_properties()
    check_gone(s3, bucket, key)
    finish(server)


# quotas ----------------------------------------------------------------------------------------------------------

def usage(server: AtollProcess, bucket: str) -> tuple[int, int]:
    return tuple(meta_query(server, "SELECT bytes, objects FROM usage WHERE bucket = ?", (bucket,))[0])


def refused(call, message: str) -> None:
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        call()
    error = caught.value.response
    assert (error["ResponseMetadata"]["HTTPStatusCode"], error["Error"]["Code"]) == (403, "QuotaExceeded"), error
    assert message in error["Error"]["Message"], error


def test_quotas_count_sizes_whichever_store_holds_the_bytes(server, s3, bucket):
    limit = 200_000
    server.cli("quota", "set", "root", "--bucket", bucket, "--max-bytes", str(limit), "--max-objects", "3")

    def put(key: str, size: int) -> None:
        data = data_of(size, f"quota {key} {size}")
        s3.put_object(Bucket=bucket, Key=key, Body=data)
        assert store_of(server, bucket, key) in expected_stores(data)

    put("a", 1000)
    assert usage(server, bucket) == (1000, 1)
    put("a", 150_000)  # small -> large
    assert usage(server, bucket) == (150_000, 1)
    put("a", 2000)  # large -> small
    assert usage(server, bucket) == (2000, 1)
    put("b", THRESHOLD)
    room = limit - 2000 - THRESHOLD
    refused(lambda: put("c", room + 1), f"bucket {bucket}:")
    put("c", room)  # a large object exactly at the limit
    assert usage(server, bucket) == (limit, 3)
    refused(lambda: put("d", 0), f"bucket {bucket}: 3 object quota exceeded")
    refused(lambda: put("b", THRESHOLD + 1), f"bucket {bucket}:")  # a packed object growing into a file
    put("c", 10)  # shrinking (large -> small) always passes
    put("a", 2000 + room - 10)  # small -> large, exactly at the limit again
    assert usage(server, bucket) == (limit, 3)
    refused(lambda: put("c", 11), f"bucket {bucket}:")  # one byte of growth of a packed object
    shown = json.loads(server.cli("quota", "show", "root", "--json").stdout)["buckets"][bucket]
    assert (shown["bytes"], shown["objects"]) == (limit, 3), shown
    s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in ("a", "b", "c")]})
    assert usage(server, bucket) == (0, 0)
    finish(server)


# a linked write-back bucket --------------------------------------------------------------------------------------

def drain_backlog(server: AtollProcess, bucket: str) -> int:
    return meta_query(server, "SELECT count(*) FROM drain WHERE bucket = ?", (bucket,))[0][0]


def test_writeback_drains_packed_objects_bit_exact(server, s3, moto_s3, s3_cold_bucket, cold_proxy):
    cold = Cold("s3", moto_s3, s3_cold_bucket, cold_proxy(moto_s3), "packed/wb")
    bucket = f"wb-{secrets.token_hex(4)}"
    s3.create_bucket(Bucket=bucket)
    linked = server.cli("bucket", "link", bucket, cold.url, "--mode", "writeback", *cold.link_options(),
                        check=False)
    assert linked.returncode == 0, linked.stderr + linked.stdout

    rng = random.Random(88)
    expected: dict[str, bytes] = {}
    for i in range(40):
        key = f"kv/model@{i % 4}@{i}"
        expected[key] = data_of(rng.choice([0, 1, 100, 4 * KiB, 32 * KiB, THRESHOLD]), key)
        s3.put_object(Bucket=bucket, Key=key, Body=expected[key], Metadata={"n": str(i)})
    for i in range(0, 40, 4):  # overwrites: small with small, small with large, and back
        key = f"kv/model@{i % 4}@{i}"
        size = SIZES["large"] if i % 8 == 0 else SIZES["small"]
        expected[key] = data_of(size, f"{key} again")
        s3.put_object(Bucket=bucket, Key=key, Body=expected[key], Metadata={"n": f"{i}b"})
    for i in range(1, 40, 10):
        key = f"kv/model@{i % 4}@{i}"
        s3.delete_object(Bucket=bucket, Key=key)
        del expected[key]
    for key, data in expected.items():
        assert store_of(server, bucket, key) in expected_stores(data), key

    deadline = time.monotonic() + 60
    while drain_backlog(server, bucket):
        assert time.monotonic() < deadline, f"the drain did not finish: {drain_backlog(server, bucket)} left"
        time.sleep(0.1)
    assert cold.keys() == {key: len(data) for key, data in expected.items()}
    for key, data in expected.items():
        body, _, metadata = cold.get_object(key)
        assert body == data, f"{key}: the cold copy differs ({len(body)} bytes, expected {len(data)})"
        assert metadata["n"] == s3.head_object(Bucket=bucket, Key=key)["Metadata"]["n"]
    finish(server)
