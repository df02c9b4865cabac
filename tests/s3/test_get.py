"""GetObject/HeadObject semantics: byte ranges, partNumber, read conditions and response-* overrides, checked
against what AWS documents (and what s3transfer, CRT and Mountpoint rely on)."""

from __future__ import annotations

import datetime
import os
from email.utils import formatdate, parsedate_to_datetime

import pytest
from s3util import failure, key_path, signed_request, status_of

DATA = bytes(range(256)) * 4  # 1024 bytes, every offset recognisable


@pytest.fixture
def obj(s3, bucket):
    s3.put_object(Bucket=bucket, Key="obj", Body=DATA)
    s3.put_object(Bucket=bucket, Key="empty", Body=b"")
    return bucket


@pytest.mark.parametrize("header, start, end", [
    ("bytes=0-0", 0, 0), ("bytes=10-19", 10, 19), ("bytes=1000-", 1000, 1023), ("bytes=-24", 1000, 1023),
    ("bytes=1020-5000", 1020, 1023), ("bytes=-5000", 0, 1023), ("bytes=0-1023", 0, 1023),
])
def test_satisfiable_ranges_are_206_with_exact_content_range(s3, obj, header, start, end):
    got = s3.get_object(Bucket=obj, Key="obj", Range=header)
    assert status_of(got) == 206
    assert got["ContentRange"] == f"bytes {start}-{end}/{len(DATA)}"
    assert got["ContentLength"] == end - start + 1
    assert got["Body"].read() == DATA[start:end + 1]
    head = s3.head_object(Bucket=obj, Key="obj", Range=header)
    assert status_of(head) == 206 and head["ContentRange"] == got["ContentRange"]
    assert head["ContentLength"] == end - start + 1


@pytest.mark.parametrize("key, header", [("obj", "bytes=1024-"), ("obj", "bytes=5000-6000"), ("empty", "bytes=0-"),
                                         ("empty", "bytes=0-0"), ("empty", "bytes=-1")])
def test_unsatisfiable_ranges_are_416_with_the_size(s3, obj, key, header):
    size = len(DATA) if key == "obj" else 0
    error = failure(s3.get_object, Bucket=obj, Key=key, Range=header)
    assert (error.code, error.status) == ("InvalidRange", 416)
    assert error.headers.get("content-range") == f"bytes */{size}"
    error = failure(s3.head_object, Bucket=obj, Key=key, Range=header)
    assert error.status == 416 and error.headers.get("content-range") == f"bytes */{size}"


def test_several_ranges_or_a_malformed_one_return_the_whole_object(atoll, s3, obj):
    for header in ("bytes=0-1,5-6", "bytes=5-2", "bytes=x-y", "pages=1-2"):
        raw = signed_request(atoll, "GET", key_path(obj, "obj"), headers={"Range": header})
        assert raw.status == 200, header
        assert raw.body == DATA and "content-range" not in raw.headers


def test_part_number_one_of_a_single_part_object(s3, obj):
    # AWS answers like a range covering the whole object: 206 with Content-Range, and no parts count.
    got = s3.get_object(Bucket=obj, Key="obj", PartNumber=1)
    assert status_of(got) == 206
    assert got["ContentRange"] == f"bytes 0-{len(DATA) - 1}/{len(DATA)}"
    assert got["Body"].read() == DATA
    assert "PartsCount" not in got
    # An empty object has no range to name: 200 and no body (what CRT retries with after a 416).
    empty = s3.get_object(Bucket=obj, Key="empty", PartNumber=1)
    assert status_of(empty) == 200 and empty["ContentLength"] == 0 and empty["Body"].read() == b""
    assert status_of(s3.head_object(Bucket=obj, Key="empty", PartNumber=1)) == 200
    error = failure(s3.get_object, Bucket=obj, Key="obj", PartNumber=2)
    assert (error.code, error.status) == ("InvalidPartNumber", 416)
    error = failure(s3.get_object, Bucket=obj, Key="obj", PartNumber=1, Range="bytes=0-1")
    assert (error.code, error.status) == ("InvalidRequest", 400)


def test_part_numbers_of_a_multipart_object(s3, bucket):
    sizes = [5 << 20, 5 << 20, 777]
    parts_data = [os.urandom(n) for n in sizes]
    upload = s3.create_multipart_upload(Bucket=bucket, Key="mp")["UploadId"]
    etags = [s3.upload_part(Bucket=bucket, Key="mp", UploadId=upload, PartNumber=i + 1, Body=d)["ETag"]
             for i, d in enumerate(parts_data)]
    s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=upload, MultipartUpload={
        "Parts": [{"PartNumber": i + 1, "ETag": e} for i, e in enumerate(etags)]})
    whole = b"".join(parts_data)
    start = 0
    for number, data in enumerate(parts_data, 1):
        got = s3.get_object(Bucket=bucket, Key="mp", PartNumber=number)
        assert status_of(got) == 206
        assert got["PartsCount"] == 3
        assert got["ContentRange"] == f"bytes {start}-{start + len(data) - 1}/{len(whole)}"
        assert got["Body"].read() == data
        head = s3.head_object(Bucket=bucket, Key="mp", PartNumber=number)
        assert head["PartsCount"] == 3 and head["ContentLength"] == len(data)
        start += len(data)
    across = s3.get_object(Bucket=bucket, Key="mp", Range=f"bytes={sizes[0] - 3}-{sizes[0] + sizes[1] + 2}")
    assert across["Body"].read() == whole[sizes[0] - 3:sizes[0] + sizes[1] + 3]  # spans all three parts
    assert "PartsCount" not in across
    plain = s3.get_object(Bucket=bucket, Key="mp")
    assert status_of(plain) == 200 and "PartsCount" not in plain and plain["ContentLength"] == len(whole)
    plain["Body"].close()
    error = failure(s3.get_object, Bucket=bucket, Key="mp", PartNumber=4)
    assert (error.code, error.status) == ("InvalidPartNumber", 416)


# conditional reads -----------------------------------------------------------------------------------------
def _dates(s3, bucket):
    head = s3.head_object(Bucket=bucket, Key="obj")
    modified = head["LastModified"]
    return head["ETag"], modified - datetime.timedelta(hours=1), modified, modified + datetime.timedelta(hours=1)


def test_conditional_get(s3, obj):
    etag, before, at, after = _dates(s3, obj)
    ok = [dict(IfMatch=etag), dict(IfMatch="*"), dict(IfNoneMatch='"0000"'), dict(IfModifiedSince=before),
          dict(IfUnmodifiedSince=at), dict(IfUnmodifiedSince=after), dict(IfMatch=etag, IfUnmodifiedSince=before),
          dict(IfMatch=f'"nope", {etag}')]
    for conditions in ok:
        got = s3.get_object(Bucket=obj, Key="obj", **conditions)
        assert status_of(got) == 200 and got["Body"].read() == DATA, conditions
    for conditions in [dict(IfMatch='"0000"'), dict(IfUnmodifiedSince=before)]:
        error = failure(s3.get_object, Bucket=obj, Key="obj", **conditions)
        assert (error.code, error.status) == ("PreconditionFailed", 412), conditions
    for conditions in [dict(IfNoneMatch=etag), dict(IfNoneMatch="*"), dict(IfModifiedSince=at),
                       dict(IfModifiedSince=after), dict(IfNoneMatch=etag, IfModifiedSince=before)]:
        error = failure(s3.get_object, Bucket=obj, Key="obj", **conditions)
        assert error.status == 304, conditions
        assert error.headers.get("etag") == etag


def test_conditional_head(s3, obj):
    etag, before, at, after = _dates(s3, obj)
    assert status_of(s3.head_object(Bucket=obj, Key="obj", IfMatch=etag, IfModifiedSince=before)) == 200
    assert failure(s3.head_object, Bucket=obj, Key="obj", IfMatch='"0000"').status == 412
    assert failure(s3.head_object, Bucket=obj, Key="obj", IfUnmodifiedSince=before).status == 412
    assert failure(s3.head_object, Bucket=obj, Key="obj", IfNoneMatch=etag).status == 304
    assert failure(s3.head_object, Bucket=obj, Key="obj", IfModifiedSince=after).status == 304


def test_ranged_get_with_if_match_as_s3transfer_sends_it(s3, obj):
    etag = s3.head_object(Bucket=obj, Key="obj")["ETag"]
    got = s3.get_object(Bucket=obj, Key="obj", Range="bytes=0-99", IfMatch=etag)
    assert status_of(got) == 206 and got["Body"].read() == DATA[:100]
    s3.put_object(Bucket=obj, Key="obj", Body=b"changed")
    error = failure(s3.get_object, Bucket=obj, Key="obj", Range="bytes=100-199", IfMatch=etag)
    assert error.status == 412


def test_last_modified_is_an_http_date_in_gmt(atoll, obj):
    raw = signed_request(atoll, "HEAD", key_path(obj, "obj"))
    assert raw.status == 200
    value = raw.headers["last-modified"]
    assert value.endswith(" GMT") and parsedate_to_datetime(value).tzinfo is not None
    assert raw.headers["etag"].startswith('"') and raw.headers["accept-ranges"] == "bytes"
    assert raw.headers["content-length"] == str(len(DATA))


# response-* overrides --------------------------------------------------------------------------------------
def test_response_header_overrides(s3, bucket):
    s3.put_object(Bucket=bucket, Key="doc", Body=b"{}", ContentType="application/json", CacheControl="no-cache")
    expires = datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    got = s3.get_object(Bucket=bucket, Key="doc", ResponseContentType="text/plain; charset=utf-8",
                        ResponseContentDisposition='attachment; filename="a b.json"', ResponseCacheControl="max-age=60",
                        ResponseContentLanguage="de-CH", ResponseContentEncoding="identity", ResponseExpires=expires)
    assert got["ContentType"] == "text/plain; charset=utf-8"
    assert got["ContentDisposition"] == 'attachment; filename="a b.json"'
    assert got["CacheControl"] == "max-age=60"
    assert got["ContentLanguage"] == "de-CH"
    assert got["ContentEncoding"] == "identity"
    assert got["ResponseMetadata"]["HTTPHeaders"]["expires"] == formatdate(expires.timestamp(), usegmt=True)
    assert got["Body"].read() == b"{}"
    # Overrides change that response only.
    head = s3.head_object(Bucket=bucket, Key="doc")
    assert head["ContentType"] == "application/json" and head["CacheControl"] == "no-cache"
