"""Object metadata and keys: x-amz-meta-* and the stored content headers round-trip exactly; odd keys (spaces,
unicode, dots, slashes, the 1024-byte limit) are stored, read and listed as they were written."""

from __future__ import annotations

import datetime

import pytest
from s3util import failure, key_path, signed_request, status_of


def test_user_metadata_round_trips_with_lower_case_names(atoll, s3, bucket):
    s3.put_object(Bucket=bucket, Key="m", Body=b"x",
                  Metadata={"Author": "Ada Lovelace", "checkpoint-step": "1200", "Mixed-CASE-Name": "v",
                            "spaces": "inner  spaces", "symbols": "a=b; c,d \"e\" (f) /g?", "empty": ""})
    got = s3.head_object(Bucket=bucket, Key="m")["Metadata"]
    assert got == {"author": "Ada Lovelace", "checkpoint-step": "1200", "mixed-case-name": "v",
                   "spaces": "inner  spaces", "symbols": "a=b; c,d \"e\" (f) /g?", "empty": ""}
    assert s3.get_object(Bucket=bucket, Key="m")["Metadata"] == got
    # Header names on the wire are lower-case x-amz-meta-*, whatever case the client used.
    raw = signed_request(atoll, "HEAD", key_path(bucket, "m"))
    assert raw.headers["x-amz-meta-author"] == "Ada Lovelace"
    assert raw.headers["x-amz-meta-mixed-case-name"] == "v"


def test_metadata_size_limit(s3, bucket):
    s3.put_object(Bucket=bucket, Key="ok", Body=b"", Metadata={"k": "v" * 2000})
    error = failure(s3.put_object, Bucket=bucket, Key="big", Body=b"", Metadata={"k": "v" * 2100})
    assert (error.code, error.status) == ("MetadataTooLarge", 400)


def test_content_headers_round_trip(s3, bucket):
    expires = datetime.datetime(2031, 5, 6, 7, 8, 9, tzinfo=datetime.timezone.utc)
    s3.put_object(Bucket=bucket, Key="doc.json.gz", Body=b"\x1f\x8b", ContentType="application/json; charset=utf-8",
                  ContentEncoding="gzip", ContentDisposition='attachment; filename="doc.json"',
                  ContentLanguage="en-GB", CacheControl="public, max-age=3600", Expires=expires)
    for response in (s3.head_object(Bucket=bucket, Key="doc.json.gz"), s3.get_object(Bucket=bucket, Key="doc.json.gz")):
        assert response["ContentType"] == "application/json; charset=utf-8"
        assert response["ContentEncoding"] == "gzip"
        assert response["ContentDisposition"] == 'attachment; filename="doc.json"'
        assert response["ContentLanguage"] == "en-GB"
        assert response["CacheControl"] == "public, max-age=3600"
        assert response["ResponseMetadata"]["HTTPHeaders"]["expires"] == "Tue, 06 May 2031 07:08:09 GMT"
    s3.put_object(Bucket=bucket, Key="plain", Body=b"x")
    plain = s3.head_object(Bucket=bucket, Key="plain")
    assert plain["ContentType"] == "binary/octet-stream"  # S3's default
    assert "ContentEncoding" not in plain and "CacheControl" not in plain and plain["Metadata"] == {}


def test_overwrite_replaces_metadata_entirely(s3, bucket):
    s3.put_object(Bucket=bucket, Key="k", Body=b"1", Metadata={"a": "1"}, CacheControl="no-store")
    s3.put_object(Bucket=bucket, Key="k", Body=b"2", Metadata={"b": "2"})
    head = s3.head_object(Bucket=bucket, Key="k")
    assert head["Metadata"] == {"b": "2"} and "CacheControl" not in head


ODD_KEYS = [
    "with space", " leading-space", "trailing-space ", "ünïcødé/ファイル.txt", "emoji-\U0001F680", "../escape",
    "a/../b", "./dot", "dir//double//slash", "/leading-slash", "trailing-slash/", "percent%2Fencoded", "plus+sign",
    "question?mark", "hash#tag", "amp&ersand", "equals=sign", "semi;colon", "quote\"s'", "<angle>", "back\\slash",
    "tab\tinside", "~tilde", "*star", "[brackets]", "{braces}", "$dollar", "@at", "`tick`", "|pipe|", "^caret",
    "x" * 1024,
    "é" * 512,  # 1024 bytes in UTF-8
]


def test_odd_keys_round_trip_and_list(s3, bucket):
    for key in ODD_KEYS:
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    for key in ODD_KEYS:
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == key.encode(), key
        assert s3.head_object(Bucket=bucket, Key=key)["ContentLength"] == len(key.encode()), key
    listed = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, PaginationConfig={"PageSize": 7}):
        listed += [o["Key"] for o in page.get("Contents", [])]
    assert listed == sorted(ODD_KEYS, key=str.encode)
    # Deleting by the same odd names empties the bucket.
    result = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in ODD_KEYS]})
    assert sorted(d["Key"] for d in result["Deleted"]) == sorted(ODD_KEYS) and "Errors" not in result
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0


def test_dot_segments_are_not_normalised_on_the_wire(atoll, s3, bucket):
    # A raw path with ../ must name the key literally (S3 never resolves dot segments), not another bucket.
    raw = signed_request(atoll, "PUT", f"/{bucket}/x/../y", body=b"dots")
    assert raw.status == 200, raw.body
    assert s3.get_object(Bucket=bucket, Key="x/../y")["Body"].read() == b"dots"
    assert failure(s3.head_object, Bucket=bucket, Key="y").status == 404


def test_key_length_limit(s3, bucket):
    error = failure(s3.put_object, Bucket=bucket, Key="x" * 1025, Body=b"")
    assert (error.code, error.status) == ("KeyTooLongError", 400)
    error = failure(s3.put_object, Bucket=bucket, Key="é" * 512 + "x", Body=b"")  # 1025 bytes
    assert error.code == "KeyTooLongError"
    assert failure(s3.create_multipart_upload, Bucket=bucket, Key="y" * 1025).code == "KeyTooLongError"
    assert failure(s3.copy_object, Bucket=bucket, Key="z" * 1025,
                   CopySource={"Bucket": bucket, "Key": "nope"}).status in (400, 404)


def test_a_key_with_a_nul_character_is_a_client_error(s3, bucket):
    # Neither a listing's XML nor PostgreSQL's text type can carry U+0000: refused up front, on every engine.
    error = failure(s3.put_object, Bucket=bucket, Key="a\x00b", Body=b"")
    assert (error.code, error.status) == ("InvalidArgument", 400)
    assert failure(s3.create_multipart_upload, Bucket=bucket, Key="a\x00b").status == 400


def test_delete_is_idempotent_and_reports_missing_keys_as_deleted(s3, bucket):
    assert status_of(s3.delete_object(Bucket=bucket, Key="never-existed")) == 204
    s3.put_object(Bucket=bucket, Key="there", Body=b"x")
    result = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "there"}, {"Key": "not-there"}]})
    assert sorted(d["Key"] for d in result["Deleted"]) == ["not-there", "there"]
    quiet = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "x"}], "Quiet": True})
    assert "Deleted" not in quiet and "Errors" not in quiet


@pytest.mark.parametrize("key", ["dir/", "dir"])
def test_head_on_a_directory_like_key_is_a_plain_404(s3, bucket, key):
    s3.put_object(Bucket=bucket, Key="dir/file", Body=b"x")
    error = failure(s3.head_object, Bucket=bucket, Key=key)
    assert error.status == 404 and error.code in ("404", "NoSuchKey")
