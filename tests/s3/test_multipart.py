"""Multipart upload rules: part sizes, part lists on Complete, upload lifecycle, ListParts and
ListMultipartUploads pagination, UploadPartCopy ranges, part replacement and completing with a subset."""

from __future__ import annotations

import hashlib
import os

import pytest
from s3util import failure

MIB = 1 << 20
BIG = os.urandom(5 * MIB)  # the minimum size of a part that is not the last


def create(s3, bucket, key="mp", **kwargs) -> str:
    return s3.create_multipart_upload(Bucket=bucket, Key=key, **kwargs)["UploadId"]


def put_part(s3, bucket, upload, number, body, key="mp") -> dict:
    etag = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=number, Body=body)["ETag"]
    return {"PartNumber": number, "ETag": etag}


def complete(s3, bucket, upload, parts, key="mp"):
    return s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": parts})


def expected_etag(*bodies) -> str:
    joined = b"".join(hashlib.md5(b).digest() for b in bodies)
    return f'"{hashlib.md5(joined).hexdigest()}-{len(bodies)}"'


def test_entity_too_small_for_a_small_part_that_is_not_last(s3, bucket):
    upload = create(s3, bucket)
    parts = [put_part(s3, bucket, upload, 1, b"tiny"), put_part(s3, bucket, upload, 2, b"last")]
    error = failure(complete, s3, bucket, upload, parts)
    assert (error.code, error.status) == ("EntityTooSmall", 400)
    # A small *last* part is fine.
    parts = [put_part(s3, bucket, upload, 1, BIG), parts[1]]
    done = complete(s3, bucket, upload, parts)
    assert done["ETag"] == expected_etag(BIG, b"last")
    assert s3.head_object(Bucket=bucket, Key="mp")["ContentLength"] == len(BIG) + 4


def test_invalid_part_and_part_order(s3, bucket):
    upload = create(s3, bucket)
    one = put_part(s3, bucket, upload, 1, BIG)
    two = put_part(s3, bucket, upload, 2, b"end")
    cases = [
        ([one, {"PartNumber": 2, "ETag": '"0123456789abcdef0123456789abcdef"'}], "InvalidPart"),
        ([one, {"PartNumber": 3, "ETag": two["ETag"]}], "InvalidPart"),  # never uploaded
        ([two, one], "InvalidPartOrder"),
        ([one, one], "InvalidPartOrder"),  # a repeated number is not ascending either
    ]
    for parts, code in cases:
        error = failure(complete, s3, bucket, upload, parts)
        assert (error.code, error.status) == (code, 400), parts
    # Quotes around the ETag are optional.
    done = complete(s3, bucket, upload, [one, {"PartNumber": 2, "ETag": two["ETag"].strip('"')}])
    assert done["ETag"] == expected_etag(BIG, b"end")


def test_no_such_upload_after_abort_and_after_complete(s3, bucket):
    aborted = create(s3, bucket)
    put_part(s3, bucket, aborted, 1, b"x")
    s3.abort_multipart_upload(Bucket=bucket, Key="mp", UploadId=aborted)
    for call, kwargs in [(s3.upload_part, dict(PartNumber=1, Body=b"y")), (s3.list_parts, {}),
                         (s3.abort_multipart_upload, {}),
                         (s3.complete_multipart_upload, dict(MultipartUpload={"Parts": [{"PartNumber": 1,
                                                                                         "ETag": '"x"'}]}))]:
        error = failure(call, Bucket=bucket, Key="mp", UploadId=aborted, **kwargs)
        assert (error.code, error.status) == ("NoSuchUpload", 404), call

    completed = create(s3, bucket)
    parts = [put_part(s3, bucket, completed, 1, b"z")]
    complete(s3, bucket, completed, parts)
    error = failure(s3.upload_part, Bucket=bucket, Key="mp", UploadId=completed, PartNumber=2, Body=b"late")
    assert (error.code, error.status) == ("NoSuchUpload", 404)
    # An upload id is bound to its key.
    other = create(s3, bucket)
    error = failure(s3.upload_part, Bucket=bucket, Key="another-key", UploadId=other, PartNumber=1, Body=b"q")
    assert error.code == "NoSuchUpload"


def test_list_parts_pagination(s3, bucket):
    upload = create(s3, bucket)
    for number in (1, 2, 3, 5, 8):
        put_part(s3, bucket, upload, number, f"part {number}".encode())
    seen, marker, pages = [], 0, 0
    while True:
        pages += 1
        page = s3.list_parts(Bucket=bucket, Key="mp", UploadId=upload, MaxParts=2, PartNumberMarker=marker)
        seen += [(p["PartNumber"], p["Size"], p["ETag"]) for p in page["Parts"]]
        assert page["MaxParts"] == 2
        if not page["IsTruncated"]:
            break
        marker = page["NextPartNumberMarker"]
        assert pages < 10
    assert pages == 3
    assert [(n, s) for n, s, _ in seen] == [(1, 6), (2, 6), (3, 6), (5, 6), (8, 6)]
    assert seen[0][2] == f'"{hashlib.md5(b"part 1").hexdigest()}"'
    tail = s3.list_parts(Bucket=bucket, Key="mp", UploadId=upload, PartNumberMarker=5)
    assert [p["PartNumber"] for p in tail["Parts"]] == [8] and not tail["IsTruncated"]


def test_list_multipart_uploads_prefix_and_markers(s3, bucket):
    made = {}
    for key in ["a/1", "a/2", "b", "a/1", "c d"]:
        made.setdefault(key, []).append(create(s3, bucket, key))
    listing = s3.list_multipart_uploads(Bucket=bucket)
    pairs = [(u["Key"], u["UploadId"]) for u in listing["Uploads"]]
    expected = sorted((k, u) for k, ids in made.items() for u in ids)
    assert pairs == expected and not listing["IsTruncated"]

    assert [u["Key"] for u in s3.list_multipart_uploads(Bucket=bucket, Prefix="a/")["Uploads"]] == ["a/1", "a/1", "a/2"]
    collected, kwargs = [], {}
    for _ in range(10):
        page = s3.list_multipart_uploads(Bucket=bucket, MaxUploads=2, **kwargs)
        collected += [(u["Key"], u["UploadId"]) for u in page.get("Uploads", [])]
        if not page["IsTruncated"]:
            break
        kwargs = dict(KeyMarker=page["NextKeyMarker"], UploadIdMarker=page["NextUploadIdMarker"])
    assert collected == expected
    after_a = s3.list_multipart_uploads(Bucket=bucket, KeyMarker="a/2")
    assert [u["Key"] for u in after_a["Uploads"]] == ["b", "c d"]
    for key, ids in made.items():
        for upload in ids:
            s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload)
    assert "Uploads" not in s3.list_multipart_uploads(Bucket=bucket)


def test_upload_part_copy_with_ranges(s3, bucket):
    source = os.urandom(6 * MIB)
    s3.put_object(Bucket=bucket, Key="source", Body=source)
    upload = create(s3, bucket, "assembled")
    src = {"Bucket": bucket, "Key": "source"}
    first = s3.upload_part_copy(Bucket=bucket, Key="assembled", UploadId=upload, PartNumber=1, CopySource=src,
                                CopySourceRange=f"bytes=0-{5 * MIB - 1}")["CopyPartResult"]
    second = s3.upload_part_copy(Bucket=bucket, Key="assembled", UploadId=upload, PartNumber=2, CopySource=src,
                                 CopySourceRange="bytes=100-199")["CopyPartResult"]
    assert first["ETag"] == f'"{hashlib.md5(source[:5 * MIB]).hexdigest()}"'
    assert second["ETag"] == f'"{hashlib.md5(source[100:200]).hexdigest()}"'
    for bad in ["bytes=0-", f"bytes=0-{len(source)}", "bytes=5-4", "0-10"]:
        error = failure(s3.upload_part_copy, Bucket=bucket, Key="assembled", UploadId=upload, PartNumber=3,
                        CopySource=src, CopySourceRange=bad)
        assert error.status == 400 and error.code in ("InvalidArgument", "InvalidRange"), bad
    whole = s3.upload_part_copy(Bucket=bucket, Key="assembled", UploadId=upload, PartNumber=3, CopySource=src)
    assert whole["CopyPartResult"]["ETag"] == f'"{hashlib.md5(source).hexdigest()}"'
    complete(s3, bucket, upload, [{"PartNumber": 1, "ETag": first["ETag"]},
                                  {"PartNumber": 2, "ETag": second["ETag"]}], key="assembled")
    assert s3.get_object(Bucket=bucket, Key="assembled")["Body"].read() == source[:5 * MIB] + source[100:200]


def test_reuploading_a_part_replaces_it(s3, bucket):
    upload = create(s3, bucket)
    stale = put_part(s3, bucket, upload, 1, b"first version")
    fresh = put_part(s3, bucket, upload, 1, b"second version")
    parts = s3.list_parts(Bucket=bucket, Key="mp", UploadId=upload)["Parts"]
    assert [(p["PartNumber"], p["ETag"], p["Size"]) for p in parts] == [(1, fresh["ETag"], 14)]
    assert failure(complete, s3, bucket, upload, [stale]).code == "InvalidPart"
    complete(s3, bucket, upload, [fresh])
    assert s3.get_object(Bucket=bucket, Key="mp")["Body"].read() == b"second version"


def test_complete_with_a_subset_of_parts(s3, bucket):
    upload = create(s3, bucket, ContentType="application/x-parts", Metadata={"who": "subset"})
    one = put_part(s3, bucket, upload, 1, BIG)
    put_part(s3, bucket, upload, 2, b"skipped")
    three = put_part(s3, bucket, upload, 3, b"tail")
    done = complete(s3, bucket, upload, [one, three])
    assert done["ETag"] == expected_etag(BIG, b"tail")
    got = s3.get_object(Bucket=bucket, Key="mp")
    assert got["Body"].read() == BIG + b"tail"
    assert got["ContentType"] == "application/x-parts" and got["Metadata"] == {"who": "subset"}
    assert s3.head_object(Bucket=bucket, Key="mp", PartNumber=1)["PartsCount"] == 2


@pytest.mark.parametrize("number", [0, 10001])
def test_part_number_bounds(s3, bucket, number):
    upload = create(s3, bucket)
    error = failure(s3.upload_part, Bucket=bucket, Key="mp", UploadId=upload, PartNumber=number, Body=b"x")
    assert (error.code, error.status) == ("InvalidArgument", 400)
