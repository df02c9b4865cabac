"""Conditional PutObject and CompleteMultipartUpload (If-None-Match: * and If-Match), as AWS documents them:
412 PreconditionFailed when the condition is false, 404 NoSuchKey for If-Match on a missing key."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from s3util import failure, status_of


def _one_part_upload(s3, bucket, key, body=b"multipart body"):
    upload = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    etag = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=1, Body=body)["ETag"]
    return upload, {"Parts": [{"PartNumber": 1, "ETag": etag}]}


def test_put_if_none_match_creates_only_once(s3, bucket):
    first = s3.put_object(Bucket=bucket, Key="k", Body=b"first", IfNoneMatch="*")
    assert status_of(first) == 200
    error = failure(s3.put_object, Bucket=bucket, Key="k", Body=b"second", IfNoneMatch="*")
    assert (error.code, error.status) == ("PreconditionFailed", 412)
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"first"


def test_put_if_match(s3, bucket):
    etag = s3.put_object(Bucket=bucket, Key="k", Body=b"v1")["ETag"]
    error = failure(s3.put_object, Bucket=bucket, Key="k", Body=b"v2", IfMatch='"00000000000000000000000000000000"')
    assert (error.code, error.status) == ("PreconditionFailed", 412)
    new_etag = s3.put_object(Bucket=bucket, Key="k", Body=b"v2", IfMatch=etag)["ETag"]
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"v2"
    assert failure(s3.put_object, Bucket=bucket, Key="k", Body=b"v3", IfMatch=etag).status == 412  # stale now
    assert s3.put_object(Bucket=bucket, Key="k", Body=b"v3", IfMatch=new_etag)["ETag"] != new_etag

    error = failure(s3.put_object, Bucket=bucket, Key="missing", Body=b"x", IfMatch=etag)
    assert (error.code, error.status) == ("NoSuchKey", 404)
    assert failure(s3.head_object, Bucket=bucket, Key="missing").status == 404


def test_concurrent_create_if_absent_has_exactly_one_winner(atoll, bucket):
    clients = [atoll.client() for _ in range(4)]

    def attempt(i):
        try:
            clients[i % 4].put_object(Bucket=bucket, Key="lock", Body=f"writer {i}".encode(), IfNoneMatch="*")
            return i
        except Exception as exc:  # noqa: BLE001 - the losers' errors are inspected below
            return exc

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(attempt, range(16)))
    winners = [o for o in outcomes if isinstance(o, int)]
    assert len(winners) == 1, outcomes
    for loser in outcomes:
        if not isinstance(loser, int):
            assert loser.response["ResponseMetadata"]["HTTPStatusCode"] in (409, 412), loser
    assert clients[0].get_object(Bucket=bucket, Key="lock")["Body"].read() == f"writer {winners[0]}".encode()


def test_complete_multipart_if_none_match(s3, bucket):
    upload, parts = _one_part_upload(s3, bucket, "mp")
    s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=upload, MultipartUpload=parts, IfNoneMatch="*")
    assert s3.get_object(Bucket=bucket, Key="mp")["Body"].read() == b"multipart body"

    upload, parts = _one_part_upload(s3, bucket, "mp", b"again")
    error = failure(s3.complete_multipart_upload, Bucket=bucket, Key="mp", UploadId=upload, MultipartUpload=parts,
                    IfNoneMatch="*")
    assert (error.code, error.status) == ("PreconditionFailed", 412)
    assert s3.get_object(Bucket=bucket, Key="mp")["Body"].read() == b"multipart body"
    # The upload survives a failed condition: it can still be completed unconditionally or aborted.
    assert [p["PartNumber"] for p in s3.list_parts(Bucket=bucket, Key="mp", UploadId=upload)["Parts"]] == [1]
    s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=upload, MultipartUpload=parts)
    assert s3.get_object(Bucket=bucket, Key="mp")["Body"].read() == b"again"


def test_complete_multipart_if_match(s3, bucket):
    current = s3.put_object(Bucket=bucket, Key="mp", Body=b"plain")["ETag"]
    upload, parts = _one_part_upload(s3, bucket, "mp")
    error = failure(s3.complete_multipart_upload, Bucket=bucket, Key="mp", UploadId=upload, MultipartUpload=parts,
                    IfMatch='"ffffffffffffffffffffffffffffffff"')
    assert (error.code, error.status) == ("PreconditionFailed", 412)
    done = s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=upload, MultipartUpload=parts,
                                        IfMatch=current)
    assert done["ETag"].endswith('-1"')

    upload, parts = _one_part_upload(s3, bucket, "fresh")
    error = failure(s3.complete_multipart_upload, Bucket=bucket, Key="fresh", UploadId=upload, MultipartUpload=parts,
                    IfMatch=current)
    assert (error.code, error.status) == ("NoSuchKey", 404)
