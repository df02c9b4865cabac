"""boto3/botocore 1.43 with default settings against a live Atoll: both checksum wire paths, every checksum
algorithm, presigned URLs, s3transfer's multipart and ranged If-Match downloads, managed copy, DeleteObjects
without Content-MD5, wrong secrets, and a second user's isolation.

Which wire path botocore takes is asserted on the bytes it sent (the ``plain_tap``/``tls_tap`` relays record
them): over plain HTTP PutObject/UploadPart carry a hex x-amz-content-sha256 and an x-amz-checksum-crc32 header;
over HTTPS the same calls are aws-chunked (inside Transfer-Encoding: chunked) with the CRC in a trailer after
the last chunk, signed STREAMING-UNSIGNED-PAYLOAD-TRAILER.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import os
import re
import time
import urllib.error
import urllib.request
import zlib
from urllib.parse import urlsplit

import boto3
import pytest
from awscrt import checksums as crt_checksums
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

MiB = 1 << 20
_REQUEST_LINE = re.compile(rb"(GET|PUT|POST|DELETE|HEAD) (/\S*) HTTP/1\.1\r\n")


def request_heads(raw: bytes) -> list[tuple[str, str, dict[str, str]]]:
    """(method, target, lower-cased headers) of every request head in captured client bytes."""
    heads = []
    for match in _REQUEST_LINE.finditer(raw):
        end = raw.find(b"\r\n\r\n", match.end() - 2)
        if end < 0 or end - match.end() > 65536:
            continue
        headers = {}
        for line in raw[match.end():end].split(b"\r\n"):
            name, sep, value = line.partition(b":")
            if sep:
                headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
        heads.append((match.group(1).decode(), match.group(2).decode("latin-1"), headers))
    return heads


def client_for(endpoint: str, atoll, access_key=None, secret_key=None, verify=None, **config_kwargs):
    config = Config(retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=10, read_timeout=120,
                    **config_kwargs)
    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=access_key or atoll.access_key,
                        aws_secret_access_key=secret_key or atoll.secret_key, region_name="us-east-1",
                        config=config, verify=verify)


def http_request(method: str, url: str, body: bytes | None = None) -> tuple[int, bytes]:
    """One request with exactly the headers http.client needs (Host, Content-Length), as curl would send."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request(method, f"{parts.path}?{parts.query}", body=body)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def expected_checksum(algorithm: str, data: bytes) -> str:
    if algorithm == "CRC32":
        return b64(zlib.crc32(data).to_bytes(4, "big"))
    if algorithm == "CRC32C":
        return b64(crt_checksums.crc32c(data).to_bytes(4, "big"))
    if algorithm == "CRC64NVME":
        return b64(crt_checksums.crc64nvme(data).to_bytes(8, "big"))
    return b64(hashlib.new(algorithm.lower(), data).digest())


def error_code(exc: pytest.ExceptionInfo) -> tuple[str, int]:
    response = exc.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


@pytest.fixture(scope="module")
def http_client(plain_tap, atoll):
    return client_for(plain_tap.endpoint, atoll)


@pytest.fixture(scope="module")
def https_client(tls_tap, atoll):
    return client_for(tls_tap.endpoint, atoll, verify=tls_tap.cert_path)


# the two checksum wire paths -------------------------------------------------------------------------------
def test_plain_http_put_and_upload_part_send_hex_sha256_and_crc32_header(http_client, plain_tap, s3, bucket):
    data = os.urandom(300_000)
    plain_tap.clear()
    put = http_client.put_object(Bucket=bucket, Key="plain/one", Body=data)
    upload = http_client.create_multipart_upload(Bucket=bucket, Key="plain/mp")
    part1 = os.urandom(5 * MiB)
    part2 = os.urandom(1000)
    etags = [http_client.upload_part(Bucket=bucket, Key="plain/mp", UploadId=upload["UploadId"], PartNumber=n,
                                     Body=body)["ETag"] for n, body in ((1, part1), (2, part2))]
    http_client.complete_multipart_upload(
        Bucket=bucket, Key="plain/mp", UploadId=upload["UploadId"],
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in ((1, etags[0]), (2, etags[1]))]})

    uploads = [(m, t, h) for m, t, h in request_heads(plain_tap.sent()) if m == "PUT" and "/plain/" in t]
    assert len(uploads) == 3
    for _, target, headers in uploads:
        assert re.fullmatch(r"[0-9a-f]{64}", headers["x-amz-content-sha256"]), (target, headers)
        assert "x-amz-checksum-crc32" in headers and "aws-chunked" not in headers.get("content-encoding", "")
        assert "x-amz-trailer" not in headers
    assert uploads[0][2]["x-amz-checksum-crc32"] == expected_checksum("CRC32", data)
    assert put["ChecksumCRC32"] == expected_checksum("CRC32", data)

    got = s3.get_object(Bucket=bucket, Key="plain/one", ChecksumMode="ENABLED")
    assert got["ChecksumCRC32"] == expected_checksum("CRC32", data)
    assert got["Body"].read() == data
    assert s3.get_object(Bucket=bucket, Key="plain/mp")["Body"].read() == part1 + part2


def test_https_put_and_multipart_are_aws_chunked_with_crc32_trailer(https_client, tls_tap, s3, bucket):
    small = os.urandom(200_000)
    big = os.urandom(9 * MiB)  # two 8 MiB s3transfer parts: UploadPart takes the trailer path too
    tls_tap.clear()
    put = https_client.put_object(Bucket=bucket, Key="tls/one", Body=small)
    https_client.upload_fileobj(io.BytesIO(big), bucket, "tls/big")

    raw = tls_tap.sent()
    uploads = [(m, t, h) for m, t, h in request_heads(raw) if m == "PUT" and "/tls/" in t]
    assert len(uploads) == 3  # PutObject + two UploadParts
    assert sum("partNumber=" in t for _, t, _ in uploads) == 2
    for target, headers in ((t, h) for _, t, h in uploads):
        assert headers["x-amz-content-sha256"] == "STREAMING-UNSIGNED-PAYLOAD-TRAILER", target
        assert "aws-chunked" in headers["content-encoding"]
        assert headers["transfer-encoding"] == "chunked"
        assert headers["x-amz-trailer"] == "x-amz-checksum-crc32"
        assert "x-amz-checksum-crc32" not in headers  # the value travels in the trailer, after the data
    assert int(uploads[0][2]["x-amz-decoded-content-length"]) == len(small)
    trailers = re.findall(rb"\r\n0\r\nx-amz-checksum-crc32:([A-Za-z0-9+/=]+)\r\n", raw)
    assert expected_checksum("CRC32", small).encode() in trailers
    assert len(trailers) >= 3

    assert put["ChecksumCRC32"] == expected_checksum("CRC32", small)
    got = s3.get_object(Bucket=bucket, Key="tls/one", ChecksumMode="ENABLED")
    assert got["Body"].read() == small and got["ChecksumCRC32"] == expected_checksum("CRC32", small)
    assert got["ContentLength"] == len(small) and "ContentEncoding" not in got  # aws-chunked is not stored
    head = s3.head_object(Bucket=bucket, Key="tls/big")
    assert head["ContentLength"] == len(big) and head["ETag"].endswith('-2"')
    assert s3.get_object(Bucket=bucket, Key="tls/big")["Body"].read() == big


class NonSeekable(io.RawIOBase):
    """A pipe-like body: botocore can neither hash it up front nor learn its length."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        chunk = self._data.read(len(buffer))
        buffer[:len(chunk)] = chunk
        return len(chunk)


def test_https_non_seekable_body_streams_as_aws_chunked(https_client, tls_tap, s3, bucket):
    data = os.urandom(150_000)
    tls_tap.clear()
    https_client.put_object(Bucket=bucket, Key="stream", Body=NonSeekable(data), ContentLength=len(data))
    (_, _, headers), = [h for h in request_heads(tls_tap.sent()) if h[0] == "PUT"]
    assert headers["x-amz-content-sha256"] == "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
    assert headers["x-amz-decoded-content-length"] == str(len(data)) and "content-length" not in headers
    got = s3.get_object(Bucket=bucket, Key="stream", ChecksumMode="ENABLED")
    assert got["Body"].read() == data and got["ChecksumCRC32"] == expected_checksum("CRC32", data)

    # without a length botocore cannot send x-amz-decoded-content-length; S3 then answers 411, and so do we
    with pytest.raises(ClientError) as exc:
        https_client.put_object(Bucket=bucket, Key="stream-unsized", Body=NonSeekable(data))
    assert error_code(exc) == ("MissingContentLength", 411)
    assert s3.list_objects_v2(Bucket=bucket, Prefix="stream-")["KeyCount"] == 0


def test_checksums_off_when_required_gets_server_default_crc64nvme(atoll, plain_tap, s3, bucket):
    client = client_for(plain_tap.endpoint, atoll, request_checksum_calculation="when_required",
                        response_checksum_validation="when_required")
    data = os.urandom(10_000)
    plain_tap.clear()
    put = client.put_object(Bucket=bucket, Key="plain", Body=data)
    (_, _, headers), = [h for h in request_heads(plain_tap.sent()) if h[0] == "PUT"]
    assert not [name for name in headers if name.startswith("x-amz-checksum-")]
    assert re.fullmatch(r"[0-9a-f]{64}", headers["x-amz-content-sha256"])
    assert put["ChecksumCRC64NVME"] == expected_checksum("CRC64NVME", data)  # what S3 computes by default
    head = s3.head_object(Bucket=bucket, Key="plain", ChecksumMode="ENABLED")
    assert head["ChecksumCRC64NVME"] == expected_checksum("CRC64NVME", data)


@pytest.mark.parametrize("transport", ["http", "https"])
@pytest.mark.parametrize("algorithm", ["CRC32", "CRC32C", "CRC64NVME", "SHA1", "SHA256"])
def test_checksum_algorithm_put_then_validated_get(algorithm, transport, http_client, https_client, tls_tap,
                                                   plain_tap, s3, bucket):
    client, tap = (http_client, plain_tap) if transport == "http" else (https_client, tls_tap)
    data = os.urandom(70_000) + algorithm.encode()
    want = expected_checksum(algorithm, data)
    tap.clear()
    put = client.put_object(Bucket=bucket, Key=f"alg/{algorithm}", Body=data, ChecksumAlgorithm=algorithm)
    assert put[f"Checksum{algorithm}"] == want
    (_, _, headers), = [h for h in request_heads(tap.sent()) if h[0] == "PUT"]
    name = f"x-amz-checksum-{algorithm.lower()}"
    if transport == "http":
        assert headers[name] == want
    else:
        assert headers["x-amz-trailer"] == name and f"\r\n0\r\n{name}:{want}\r\n".encode() in tap.sent()

    # botocore validates the body against the returned checksum (and raises if they differ)
    got = client.get_object(Bucket=bucket, Key=f"alg/{algorithm}", ChecksumMode="ENABLED")
    assert got["Body"].read() == data
    assert got[f"Checksum{algorithm}"] == want
    head = s3.head_object(Bucket=bucket, Key=f"alg/{algorithm}", ChecksumMode="ENABLED")
    assert head[f"Checksum{algorithm}"] == want

    # a ranged read never carries the full-object checksum (botocore would validate the range against it)
    ranged = s3.get_object(Bucket=bucket, Key=f"alg/{algorithm}", Range="bytes=10-99", ChecksumMode="ENABLED")
    assert ranged["Body"].read() == data[10:100]
    assert f"Checksum{algorithm}" not in ranged


@pytest.mark.parametrize("algorithm,checksum_type", [("CRC32", "COMPOSITE"), ("CRC64NVME", "FULL_OBJECT"),
                                                     ("SHA256", "COMPOSITE")])
def test_multipart_with_checksum_algorithm(algorithm, checksum_type, s3, bucket):
    key = f"mpalg/{algorithm}"
    parts = [os.urandom(5 * MiB), os.urandom(123_457)]
    upload = s3.create_multipart_upload(Bucket=bucket, Key=key, ChecksumAlgorithm=algorithm)
    assert upload["ChecksumAlgorithm"] == algorithm
    done = []
    for n, body in enumerate(parts, 1):
        r = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload["UploadId"], PartNumber=n, Body=body,
                           ChecksumAlgorithm=algorithm)
        assert r[f"Checksum{algorithm}"] == expected_checksum(algorithm, body)
        done.append({"PartNumber": n, "ETag": r["ETag"], f"Checksum{algorithm}": r[f"Checksum{algorithm}"]})
    listed = s3.list_parts(Bucket=bucket, Key=key, UploadId=upload["UploadId"])
    assert [p.get(f"Checksum{algorithm}") for p in listed["Parts"]] == [d[f"Checksum{algorithm}"] for d in done]
    complete = s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload["UploadId"],
                                            MultipartUpload={"Parts": done})
    whole = b"".join(parts)
    if checksum_type == "FULL_OBJECT":
        assert complete[f"Checksum{algorithm}"] == expected_checksum(algorithm, whole)
    else:
        raw = b"".join(base64.b64decode(d[f"Checksum{algorithm}"]) for d in done)
        assert complete[f"Checksum{algorithm}"] == f"{expected_checksum(algorithm, raw)}-2"
    got = s3.get_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")  # botocore skips "-N" values
    assert got["Body"].read() == whole
    assert got["ChecksumType"] == checksum_type


def test_wrong_checksum_header_is_bad_digest_and_stores_nothing(s3, bucket):
    s3.put_object(Bucket=bucket, Key="k", Body=b"original")
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket=bucket, Key="k", Body=b"replacement", ChecksumCRC32=expected_checksum("CRC32", b"x"))
    assert error_code(exc) == ("BadDigest", 400)
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"original"


@pytest.mark.parametrize("transport", ["http", "https"])
def test_body_corrupted_in_transit_is_refused_and_stores_nothing(transport, http_client, https_client, plain_tap,
                                                                 tls_tap, s3, bucket):
    """The tap flips one byte after botocore computed its checksums: over HTTP the signed hex SHA-256 no longer
    matches, over HTTPS the CRC32 trailer does not; either way nothing is stored, old content stays."""
    client, tap = (http_client, plain_tap) if transport == "http" else (https_client, tls_tap)
    expected = ("XAmzContentSHA256Mismatch", 400) if transport == "http" else ("BadDigest", 400)
    marker = b"<<corrupt me in transit>>"
    body = os.urandom(100_000) + marker + os.urandom(100_000)
    s3.put_object(Bucket=bucket, Key="victim", Body=b"old content")
    upload = s3.create_multipart_upload(Bucket=bucket, Key="victim-mp")
    tap.rewrite = (marker, marker.replace(b"corrupt", b"CORRUPT"))
    try:
        with pytest.raises(ClientError) as exc:
            client.put_object(Bucket=bucket, Key="victim", Body=body)
        assert error_code(exc) == expected
        with pytest.raises(ClientError) as exc:
            client.put_object(Bucket=bucket, Key="victim-new", Body=body)
        assert error_code(exc) == expected
        with pytest.raises(ClientError) as exc:
            client.upload_part(Bucket=bucket, Key="victim-mp", UploadId=upload["UploadId"], PartNumber=1, Body=body)
        assert error_code(exc) == expected
    finally:
        tap.rewrite = None
    assert marker.replace(b"corrupt", b"CORRUPT") in tap.sent()  # the damage did reach the server
    assert s3.get_object(Bucket=bucket, Key="victim")["Body"].read() == b"old content"
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == ["victim"]
    assert s3.list_parts(Bucket=bucket, Key="victim-mp", UploadId=upload["UploadId"]).get("Parts", []) == []
    # the same client and connection pool still work afterwards
    client.put_object(Bucket=bucket, Key="victim", Body=body)
    assert s3.get_object(Bucket=bucket, Key="victim")["Body"].read() == body


# presigned URLs --------------------------------------------------------------------------------------------
def test_presigned_get_and_put_via_plain_http(atoll, bucket):
    signer = atoll.client(signature_version="s3v4")
    key = "pre signed/ü+plus.bin"
    data = os.urandom(100_000)
    put_url = signer.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=300)
    assert "X-Amz-Signature=" in put_url and "X-Amz-Credential=" in put_url
    status, answer = http_request("PUT", put_url, data)
    assert status == 200, answer

    get_url = signer.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=300)
    with urllib.request.urlopen(get_url, timeout=30) as r:
        assert r.status == 200 and r.read() == data
        assert r.headers["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'
    ranged = urllib.request.Request(get_url, headers={"Range": "bytes=5-14"})
    with urllib.request.urlopen(ranged, timeout=30) as r:
        assert r.status == 206 and r.read() == data[5:15]

    tampered = re.sub(r"X-Amz-Signature=([0-9a-f])", lambda m: "X-Amz-Signature=" + "0123456789abcdef"[
        (int(m.group(1), 16) + 1) % 16], get_url)
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(tampered, timeout=30)
    assert exc.value.code == 403 and b"<Code>SignatureDoesNotMatch</Code>" in exc.value.read()

    # the signature covers the method: the GET URL does not authorise a PUT
    status, answer = http_request("PUT", get_url, b"evil")
    assert status == 403 and b"<Code>SignatureDoesNotMatch</Code>" in answer, answer
    assert signer.get_object(Bucket=bucket, Key=key)["Body"].read() == data


def test_default_config_presigned_urls_are_sigv2_and_work(atoll, s3, bucket):
    """Without signature_version="s3v4" botocore presigns S3 URLs with SigV2 query auth (AWSAccessKeyId,
    Expires, Signature): what most scripts calling generate_presigned_url produce."""
    signer = atoll.client()
    key = "v2/ü +.bin"
    data = os.urandom(5000)
    put_url = signer.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=300)
    assert "AWSAccessKeyId=" in put_url and "X-Amz-Signature" not in put_url
    # http.client, not urllib: urllib adds a form Content-Type to a body, and SigV2 signs Content-Type
    status, answer = http_request("PUT", put_url, data)
    assert status == 200, answer
    get_url = signer.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=300)
    with urllib.request.urlopen(get_url, timeout=30) as r:
        assert r.read() == data
    tampered = get_url.replace("Expires=", "Expires=1", 1)  # a later expiry is not what was signed
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(tampered, timeout=30)
    assert exc.value.code == 403 and b"<Code>SignatureDoesNotMatch</Code>" in exc.value.read()
    expired = signer.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=-5)
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(expired, timeout=30)
    assert exc.value.code == 403 and b"<Code>AccessDenied</Code>" in exc.value.read()
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == data


def test_expired_presigned_url_is_access_denied(atoll, bucket, s3):
    s3.put_object(Bucket=bucket, Key="k", Body=b"v")
    signer = atoll.client(signature_version="s3v4")
    url = signer.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "k"}, ExpiresIn=1)
    put_url = signer.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "k"}, ExpiresIn=1)
    with urllib.request.urlopen(url, timeout=30) as r:  # valid at first (and now in the presigned cache)
        assert r.read() == b"v"
    time.sleep(2.1)
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(url, timeout=30)
    assert exc.value.code == 403
    assert b"<Code>AccessDenied</Code>" in exc.value.read()
    status, answer = http_request("PUT", put_url, b"overwritten")
    assert status == 403 and b"<Code>AccessDenied</Code>" in answer, answer
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"v"


# s3transfer: multipart upload, ranged If-Match download, managed copy --------------------------------------
def test_upload_file_download_file_multipart_with_if_match_ranges(http_client, plain_tap, bucket, tmp_path):
    data = os.urandom(20 * MiB + 12345)
    src, dst = tmp_path / "src.bin", tmp_path / "dst.bin"
    src.write_bytes(data)
    config = TransferConfig(multipart_threshold=8 * MiB, multipart_chunksize=8 * MiB, max_concurrency=4)
    http_client.upload_file(str(src), bucket, "dir/file.bin", Config=config)
    etag = http_client.head_object(Bucket=bucket, Key="dir/file.bin")["ETag"]
    assert etag.endswith('-3"')
    plain_tap.clear()
    http_client.download_file(bucket, "dir/file.bin", str(dst), Config=config)
    assert hashlib.sha256(dst.read_bytes()).digest() == hashlib.sha256(data).digest()

    gets = [h for m, t, h in request_heads(plain_tap.sent()) if m == "GET" and t.startswith(f"/{bucket}/dir/")]
    assert len(gets) == 3
    # s3transfer leaves the last range open-ended
    assert sorted(h["range"] for h in gets) == ["bytes=0-8388607", "bytes=16777216-", "bytes=8388608-16777215"]
    assert all(h["if-match"] == etag for h in gets)

    # what If-Match protects: a part read after the object changed fails instead of mixing two versions
    http_client.put_object(Bucket=bucket, Key="dir/file.bin", Body=b"replaced")
    with pytest.raises(ClientError) as exc:
        http_client.get_object(Bucket=bucket, Key="dir/file.bin", Range="bytes=0-3", IfMatch=etag)
    assert error_code(exc) == ("PreconditionFailed", 412)


def test_managed_copy_of_large_object_uses_upload_part_copy(http_client, plain_tap, s3, bucket):
    data = os.urandom(17 * MiB)
    s3.upload_fileobj(io.BytesIO(data), bucket, "copy/src", ExtraArgs={"Metadata": {"origin": "test"}})
    plain_tap.clear()
    http_client.copy({"Bucket": bucket, "Key": "copy/src"}, bucket, "copy/dst")
    heads = request_heads(plain_tap.sent())
    part_copies = [h for m, t, h in heads if m == "PUT" and "partNumber=" in t and "x-amz-copy-source" in h]
    assert len(part_copies) == 3
    assert sorted(h["x-amz-copy-source-range"] for h in part_copies) == [
        "bytes=0-8388607", "bytes=16777216-17825791", "bytes=8388608-16777215"]
    got = s3.get_object(Bucket=bucket, Key="copy/dst")
    assert got["Body"].read() == data
    assert got["ETag"].endswith('-3"') and got["Metadata"] == {"origin": "test"}

    # a small managed copy is one CopyObject; REPLACE swaps the metadata, COPY keeps the ETag
    s3.put_object(Bucket=bucket, Key="copy/small", Body=b"tiny", Metadata={"a": "1"}, ContentType="text/x-a")
    s3.copy_object(Bucket=bucket, Key="copy/small2", CopySource={"Bucket": bucket, "Key": "copy/small"})
    s3.copy_object(Bucket=bucket, Key="copy/small3", CopySource=f"{bucket}/copy/small", Metadata={"b": "2"},
                   MetadataDirective="REPLACE", ContentType="text/x-b")
    kept = s3.head_object(Bucket=bucket, Key="copy/small2")
    replaced = s3.head_object(Bucket=bucket, Key="copy/small3")
    assert kept["Metadata"] == {"a": "1"} and kept["ContentType"] == "text/x-a"
    assert replaced["Metadata"] == {"b": "2"} and replaced["ContentType"] == "text/x-b"
    assert kept["ETag"] == replaced["ETag"] == f'"{hashlib.md5(b"tiny").hexdigest()}"'
    with pytest.raises(ClientError) as exc:
        s3.copy_object(Bucket=bucket, Key="copy/small", CopySource={"Bucket": bucket, "Key": "copy/small"})
    assert error_code(exc) == ("InvalidRequest", 400)


def test_delete_objects_without_content_md5(http_client, plain_tap, s3, bucket):
    keys = [f"del/{i:03d}" for i in range(30)]
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    plain_tap.clear()
    result = http_client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[:20]] + [
        {"Key": "del/never-existed"}]})
    (_, _, headers), = [h for h in request_heads(plain_tap.sent()) if h[0] == "POST"]
    assert "content-md5" not in headers
    assert any(name.startswith("x-amz-checksum-") for name in headers)
    assert sorted(d["Key"] for d in result["Deleted"]) == sorted(keys[:20] + ["del/never-existed"])
    assert "Errors" not in result
    remaining = s3.list_objects_v2(Bucket=bucket, Prefix="del/")
    assert [o["Key"] for o in remaining["Contents"]] == keys[20:]
    quiet = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[20:]], "Quiet": True})
    assert "Deleted" not in quiet and s3.list_objects_v2(Bucket=bucket, Prefix="del/")["KeyCount"] == 0


# authentication and isolation ------------------------------------------------------------------------------
def test_wrong_secret_is_refused_and_changes_nothing(atoll, https_client, tls_tap, s3, bucket):
    original = os.urandom(50_000)
    s3.put_object(Bucket=bucket, Key="guarded", Body=original)
    wrong_secret = atoll.secret_key[:-1] + ("A" if atoll.secret_key[-1] != "A" else "B")
    forger = atoll.client(secret_key=wrong_secret)
    forger_tls = client_for(tls_tap.endpoint, atoll, secret_key=wrong_secret, verify=tls_tap.cert_path)

    attempts = [
        lambda: forger.put_object(Bucket=bucket, Key="guarded", Body=b"forged"),
        lambda: forger_tls.put_object(Bucket=bucket, Key="guarded", Body=os.urandom(2 * MiB)),  # aws-chunked
        lambda: forger.put_object(Bucket=bucket, Key="new-key", Body=b"forged"),
        lambda: forger.delete_object(Bucket=bucket, Key="guarded"),
        lambda: forger.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "guarded"}]}),
        lambda: forger.copy_object(Bucket=bucket, Key="guarded", CopySource=f"{bucket}/guarded",
                                   MetadataDirective="REPLACE", Metadata={"x": "y"}),
        lambda: forger.delete_bucket(Bucket=bucket),
        lambda: forger.get_object(Bucket=bucket, Key="guarded"),
        lambda: forger.list_objects_v2(Bucket=bucket),
        lambda: forger.create_multipart_upload(Bucket=bucket, Key="guarded"),
    ]
    for attempt in attempts:
        with pytest.raises(ClientError) as exc:
            attempt()
        assert error_code(exc) == ("SignatureDoesNotMatch", 403)

    got = s3.get_object(Bucket=bucket, Key="guarded")
    assert got["Body"].read() == original and got["Metadata"] == {}
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == ["guarded"]
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []

    stranger = atoll.client(access_key="AKNOSUCHKEY0000000000")
    with pytest.raises(ClientError) as exc:
        stranger.put_object(Bucket=bucket, Key="guarded", Body=b"x")
    assert error_code(exc) == ("InvalidAccessKeyId", 403)
    assert s3.get_object(Bucket=bucket, Key="guarded")["Body"].read() == original


def test_second_user_cannot_see_or_touch_first_users_bucket(atoll, s3, bucket):
    s3.put_object(Bucket=bucket, Key="private", Body=b"root's")
    user = atoll.create_user("client-tests-second-user")
    other = atoll.client(access_key=user["access_key_id"], secret_key=user["secret_access_key"])
    own = f"{bucket}-other"[:63]
    other.create_bucket(Bucket=own)
    other.put_object(Bucket=own, Key="mine", Body=b"user's")

    assert [b["Name"] for b in other.list_buckets()["Buckets"]] == [own]
    denied = [
        lambda: other.get_object(Bucket=bucket, Key="private"),
        lambda: other.list_objects_v2(Bucket=bucket),
        lambda: other.put_object(Bucket=bucket, Key="private", Body=b"overwrite"),
        lambda: other.delete_object(Bucket=bucket, Key="private"),
        lambda: other.copy_object(Bucket=own, Key="stolen", CopySource={"Bucket": bucket, "Key": "private"}),
        lambda: other.delete_bucket(Bucket=bucket),
        lambda: other.create_multipart_upload(Bucket=bucket, Key="x"),
    ]
    for attempt in denied:
        with pytest.raises(ClientError) as exc:
            attempt()
        assert error_code(exc) == ("AccessDenied", 403)
    with pytest.raises(ClientError) as exc:
        other.head_object(Bucket=bucket, Key="private")
    assert error_code(exc) == ("403", 403)
    with pytest.raises(ClientError) as exc:
        other.head_bucket(Bucket=bucket)
    assert error_code(exc) == ("403", 403)
    with pytest.raises(ClientError) as exc:
        other.create_bucket(Bucket=bucket)
    assert error_code(exc) == ("BucketAlreadyExists", 409)
    deleted = other.delete_objects(Bucket=own, Delete={"Objects": [{"Key": "mine"}]})
    assert [d["Key"] for d in deleted["Deleted"]] == ["mine"]

    assert s3.get_object(Bucket=bucket, Key="private")["Body"].read() == b"root's"
    with pytest.raises(ClientError):
        other.head_object(Bucket=own, Key="stolen")
    other.delete_bucket(Bucket=own)
