"""CopyObject: metadata directives, content headers, self-copy rules, copy-source conditions, multipart sources,
cross-bucket copies and URL-encoded source keys."""

from __future__ import annotations

import datetime
import os
from urllib.parse import quote

import pytest
from s3util import failure, key_path, signed_request, status_of


@pytest.fixture
def source(s3, bucket):
    s3.put_object(Bucket=bucket, Key="src", Body=b"source bytes", ContentType="text/plain", CacheControl="no-cache",
                  ContentDisposition="inline", ContentLanguage="fr", Metadata={"origin": "test", "n": "1"})
    return bucket


def test_copy_keeps_metadata_by_default(s3, source):
    src_etag = s3.head_object(Bucket=source, Key="src")["ETag"]
    result = s3.copy_object(Bucket=source, Key="dst", CopySource={"Bucket": source, "Key": "src"},
                            Metadata={"ignored": "because COPY"})
    assert result["CopyObjectResult"]["ETag"] == src_etag
    head = s3.head_object(Bucket=source, Key="dst")
    assert head["ETag"] == src_etag
    assert head["Metadata"] == {"origin": "test", "n": "1"}
    assert (head["ContentType"], head["CacheControl"], head["ContentDisposition"], head["ContentLanguage"]) == \
           ("text/plain", "no-cache", "inline", "fr")
    assert s3.get_object(Bucket=source, Key="dst")["Body"].read() == b"source bytes"


def test_copy_with_replace_takes_the_request_headers(s3, source):
    s3.copy_object(Bucket=source, Key="dst", CopySource={"Bucket": source, "Key": "src"}, MetadataDirective="REPLACE",
                   Metadata={"fresh": "yes"}, ContentType="application/x-new", ContentEncoding="gzip")
    head = s3.head_object(Bucket=source, Key="dst")
    assert head["Metadata"] == {"fresh": "yes"}
    assert head["ContentType"] == "application/x-new" and head["ContentEncoding"] == "gzip"
    assert "CacheControl" not in head and "ContentLanguage" not in head  # REPLACE drops what is not restated


def test_self_copy(s3, source):
    error = failure(s3.copy_object, Bucket=source, Key="src", CopySource={"Bucket": source, "Key": "src"})
    assert (error.code, error.status) == ("InvalidRequest", 400)
    before = s3.head_object(Bucket=source, Key="src")
    result = s3.copy_object(Bucket=source, Key="src", CopySource={"Bucket": source, "Key": "src"},
                            MetadataDirective="REPLACE", Metadata={"edited": "1"}, ContentType="text/markdown")
    assert result["CopyObjectResult"]["ETag"] == before["ETag"]
    after = s3.head_object(Bucket=source, Key="src")
    assert after["ETag"] == before["ETag"]
    assert after["Metadata"] == {"edited": "1"} and after["ContentType"] == "text/markdown"
    assert after["LastModified"] >= before["LastModified"]
    assert s3.get_object(Bucket=source, Key="src")["Body"].read() == b"source bytes"


def test_copy_source_conditions(s3, source):
    head = s3.head_object(Bucket=source, Key="src")
    etag, modified = head["ETag"], head["LastModified"]
    earlier, later = modified - datetime.timedelta(hours=1), modified + datetime.timedelta(hours=1)
    src = {"Bucket": source, "Key": "src"}
    for conditions in [dict(CopySourceIfMatch=etag), dict(CopySourceIfNoneMatch='"00"'),
                       dict(CopySourceIfModifiedSince=earlier), dict(CopySourceIfUnmodifiedSince=later)]:
        assert status_of(s3.copy_object(Bucket=source, Key="ok", CopySource=src, **conditions)) == 200, conditions
    for conditions in [dict(CopySourceIfMatch='"00"'), dict(CopySourceIfNoneMatch=etag),
                       dict(CopySourceIfModifiedSince=later), dict(CopySourceIfUnmodifiedSince=earlier)]:
        error = failure(s3.copy_object, Bucket=source, Key="no", CopySource=src, **conditions)
        assert (error.code, error.status) == ("PreconditionFailed", 412), conditions
    assert failure(s3.head_object, Bucket=source, Key="no").status == 404


def test_copy_missing_source(s3, bucket):
    error = failure(s3.copy_object, Bucket=bucket, Key="dst", CopySource={"Bucket": bucket, "Key": "nope"})
    assert (error.code, error.status) == ("NoSuchKey", 404)
    error = failure(s3.copy_object, Bucket=bucket, Key="dst", CopySource={"Bucket": "no-such-bucket-x1", "Key": "k"})
    assert (error.code, error.status) == ("NoSuchBucket", 404)


def test_copy_of_a_multipart_object_across_buckets(s3, bucket):
    parts = [os.urandom(5 << 20), os.urandom(1000)]
    upload = s3.create_multipart_upload(Bucket=bucket, Key="mp", Metadata={"kind": "mp"})["UploadId"]
    etags = [s3.upload_part(Bucket=bucket, Key="mp", UploadId=upload, PartNumber=i + 1, Body=p)["ETag"]
             for i, p in enumerate(parts)]
    done = s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=upload, MultipartUpload={
        "Parts": [{"PartNumber": i + 1, "ETag": e} for i, e in enumerate(etags)]})
    other = bucket[:50] + "-dst"
    s3.create_bucket(Bucket=other)
    result = s3.copy_object(Bucket=other, Key="copied/mp", CopySource={"Bucket": bucket, "Key": "mp"})
    assert result["CopyObjectResult"]["ETag"] == done["ETag"]  # S3 keeps the multipart ETag on copy
    got = s3.get_object(Bucket=other, Key="copied/mp")
    assert got["Body"].read() == b"".join(parts)
    assert got["Metadata"] == {"kind": "mp"}
    # The copy is independent of its source.
    s3.delete_object(Bucket=bucket, Key="mp")
    assert s3.get_object(Bucket=other, Key="copied/mp", Range="bytes=-10")["Body"].read() == parts[1][-10:]


@pytest.mark.parametrize("key", ["with space.txt", "plus+sign", "percent%20literal", "ünï/cødé 😀", "q?x=1&y#z",
                                 "semi;colon,comma"])
def test_copy_source_with_special_characters(atoll, s3, bucket, key):
    s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    s3.copy_object(Bucket=bucket, Key="copy-" + key, CopySource={"Bucket": bucket, "Key": key})
    assert s3.get_object(Bucket=bucket, Key="copy-" + key)["Body"].read() == key.encode()
    # The header form with a leading slash, as older SDKs send it.
    raw = signed_request(atoll, "PUT", key_path(bucket, "raw-" + key),
                         headers={"x-amz-copy-source": "/" + quote(f"{bucket}/{key}", safe="/")})
    assert raw.status == 200, raw.body
    assert b"<CopyObjectResult" in raw.body
    assert s3.get_object(Bucket=bucket, Key="raw-" + key)["Body"].read() == key.encode()
