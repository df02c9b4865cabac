"""boto3 with default settings (CRC checksums, aws-chunked trailers where it uses them) against a live Atoll."""

import io
import os

import botocore
import pytest


def test_put_get_roundtrip_with_metadata(s3, bucket):
    r = s3.put_object(Bucket=bucket, Key="a/b.txt", Body=b"hello", Metadata={"k": "v"}, ContentType="text/plain")
    assert r["ETag"] == '"5d41402abc4b2a76b9719d911017c592"'
    got = s3.get_object(Bucket=bucket, Key="a/b.txt")
    assert got["Body"].read() == b"hello"
    assert got["Metadata"] == {"k": "v"}
    assert got["ContentType"] == "text/plain"


def test_missing_key_is_nosuchkey(s3, bucket):
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="missing")
    assert exc.value.response["Error"]["Code"] == "NoSuchKey"
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_multipart_upload_download(s3, bucket):
    data = os.urandom(17 << 20)
    s3.upload_fileobj(io.BytesIO(data), bucket, "big")
    head = s3.head_object(Bucket=bucket, Key="big")
    assert head["ContentLength"] == len(data)
    assert head["ETag"].endswith('-3"')
    out = io.BytesIO()
    s3.download_fileobj(bucket, "big", out)
    assert out.getvalue() == data
