"""Storage quotas (#7) on a real server: refusal exactly at the limit for bytes and objects, single PUTs, multipart
(parts count; Complete reconciles), Put Block + Put Block List, bucket and tenant quotas, shrinking overwrites and
deletes that always pass, 16 writers racing a quota across two worker processes, and ``atoll fsck`` checking the
counters. Refusals are 403 QuotaExceeded with an XML error body on both endpoints, and the connection survives.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import sqlite3
import threading
import urllib.parse

import pytest
from azure.core.exceptions import HttpResponseError
from azure.storage.blob import BlobServiceClient
from botocore.exceptions import ClientError

from harness import AtollProcess, first_answer_client, meta_query, stop_cleanly

MIB = 1 << 20


def _name(hint: str) -> str:
    return f"{hint}-{secrets.token_hex(4)}"


def _usage(server: AtollProcess, bucket: str) -> tuple[int, int]:
    """(bytes, objects) of a bucket as its counters say (``atoll quota show`` prints the same)."""
    return tuple(meta_query(server, "SELECT bytes, objects FROM usage WHERE bucket = ?", (bucket,))[0])


def _refused(call, message: str) -> None:
    with pytest.raises(ClientError) as caught:
        call()
    error = caught.value.response
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 403, error
    assert error["Error"]["Code"] == "QuotaExceeded", error
    assert message in error["Error"]["Message"], error


def _tenant_user(server: AtollProcess, hint: str) -> dict:
    """A key of a tenant of its own (named after the key), with a Blob account."""
    user = json.loads(server.cli("key", "create", "--name", hint, "--account", hint + secrets.token_hex(4),
                                 "--json").stdout)
    user["tenant"] = user["access_key_id"].lower()
    return user


def test_bucket_quota_bytes_and_objects_exactly_at_the_limit(atoll):
    s3 = first_answer_client(atoll)
    bucket = _name("quota")
    s3.create_bucket(Bucket=bucket)
    atoll.cli("quota", "set", "root", "--bucket", bucket, "--max-bytes", "10000", "--max-objects", "3")
    s3.put_object(Bucket=bucket, Key="a", Body=b"a" * 6000)
    s3.put_object(Bucket=bucket, Key="b", Body=b"b" * 4000)  # exactly at the byte limit
    _refused(lambda: s3.put_object(Bucket=bucket, Key="c", Body=b"c"), f"bucket {bucket}: 10000 bytes byte quota")
    s3.put_object(Bucket=bucket, Key="a", Body=b"a" * 5000)  # a shrinking overwrite passes
    s3.put_object(Bucket=bucket, Key="c", Body=b"c" * 1000)  # and frees exactly that much: 3 objects, 10000 bytes
    s3.head_bucket(Bucket=bucket)  # the connection pool survived the refusals
    _refused(lambda: s3.copy_object(Bucket=bucket, Key="d", CopySource={"Bucket": bucket, "Key": "c"}),
             "quota exceeded")
    s3.delete_object(Bucket=bucket, Key="c")  # a delete frees room: bytes and an object
    s3.put_object(Bucket=bucket, Key="d", Body=b"d" * 1000)
    _refused(lambda: s3.put_object(Bucket=bucket, Key="e", Body=b""), f"bucket {bucket}: 3 object quota exceeded")
    assert _usage(atoll, bucket) == (10000, 3)
    assert s3.head_object(Bucket=bucket, Key="d")["ContentLength"] == 1000
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == ["a", "b", "d"]


def test_refusal_before_the_body_is_read_keeps_the_connection(atoll):
    """A declared size that cannot fit is refused on the request head: with Expect: 100-continue the body is
    never sent; the XML error names the quota, and the same connection serves the next request."""
    s3 = first_answer_client(atoll)
    bucket = _name("quota-early")
    s3.create_bucket(Bucket=bucket)
    atoll.cli("quota", "set", "root", "--bucket", bucket, "--max-bytes", "1MiB")
    url = s3.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "big"}, ExpiresIn=300)
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    conn.putrequest("PUT", f"{parts.path}?{parts.query}")
    conn.putheader("Content-Length", str(64 * MIB))
    conn.putheader("Expect", "100-continue")
    conn.endheaders()
    answer = conn.getresponse()  # no body sent: the answer comes before any 100 Continue
    body = answer.read().decode()
    assert answer.status == 403 and "<Code>QuotaExceeded</Code>" in body, body
    assert f"bucket {bucket}: 1 MiB byte quota exceeded" in body, body
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0
    raw = os.urandom(MIB + 1)  # without Expect the body comes anyway; the answer is the same
    _refused(lambda: s3.put_object(Bucket=bucket, Key="big", Body=raw), "1 MiB byte quota exceeded")
    s3.put_object(Bucket=bucket, Key="fits", Body=raw[:MIB])
    assert _usage(atoll, bucket) == (MIB, 1)


def test_multipart_parts_count_and_complete_reconciles(atoll):
    s3 = first_answer_client(atoll)
    bucket = _name("quota-mp")
    s3.create_bucket(Bucket=bucket)
    atoll.cli("quota", "set", "root", "--bucket", bucket, "--max-bytes", "12MiB", "--max-objects", "1")
    upload = s3.create_multipart_upload(Bucket=bucket, Key="model.bin")["UploadId"]
    five = os.urandom(5 * MIB)
    etags = [s3.upload_part(Bucket=bucket, Key="model.bin", UploadId=upload, PartNumber=n, Body=five)["ETag"]
             for n in (1, 2)]
    _refused(lambda: s3.upload_part(Bucket=bucket, Key="model.bin", UploadId=upload, PartNumber=3, Body=five),
             f"bucket {bucket}: 12 MiB byte quota exceeded")
    etags.append(s3.upload_part(Bucket=bucket, Key="model.bin", UploadId=upload, PartNumber=3,
                                Body=five[:2 * MIB])["ETag"])  # exactly at the limit
    assert _usage(atoll, bucket) == (12 * MIB, 0)
    # A part sent again at a full quota replaces the earlier one: no growth, admitted (early and at commit).
    etags[2] = s3.upload_part(Bucket=bucket, Key="model.bin", UploadId=upload, PartNumber=3,
                              Body=five[:2 * MIB])["ETag"]
    assert _usage(atoll, bucket) == (12 * MIB, 0)
    s3.complete_multipart_upload(Bucket=bucket, Key="model.bin", UploadId=upload, MultipartUpload={
        "Parts": [{"PartNumber": n, "ETag": e} for n, e in zip((1, 2, 3), etags)]})
    assert _usage(atoll, bucket) == (12 * MIB, 1)
    other = s3.create_multipart_upload(Bucket=bucket, Key="second")["UploadId"]
    _refused(lambda: s3.upload_part(Bucket=bucket, Key="second", UploadId=other, PartNumber=1, Body=b"x"),
             "byte quota exceeded")
    s3.abort_multipart_upload(Bucket=bucket, Key="second", UploadId=other)
    assert s3.get_object(Bucket=bucket, Key="model.bin")["ContentLength"] == 12 * MIB


def test_tenant_quota_across_buckets_and_blob_blocks(atoll):
    user = _tenant_user(atoll, "qt")
    tenant = user["tenant"]
    s3 = atoll.client(user["access_key_id"], user["secret_access_key"])
    first, second = _name("qt-a"), _name("qt-b")
    s3.create_bucket(Bucket=first)
    s3.create_bucket(Bucket=second)
    atoll.cli("quota", "set", tenant, "--max-bytes", "3000", "--max-objects", "2")
    blob = BlobServiceClient(f"http://127.0.0.1:{atoll.blob_port}/{user['account_name']}",
                             credential={"account_name": user["account_name"], "account_key": user["account_key"]})
    client = blob.get_blob_client(first, "blocks.bin")
    client.stage_block("AAAA", b"1" * 2000)
    client.stage_block("AAAB", b"2" * 1000)  # uncommitted blocks count: 3000 bytes, exactly at the limit
    with pytest.raises(HttpResponseError) as caught:
        client.stage_block("AAAC", b"3")
    answer = caught.value.response
    assert answer.status_code == 403 and caught.value.error_code == "QuotaExceeded"
    assert "<Code>QuotaExceeded</Code>" in answer.text() and f"tenant {tenant}: 3000 bytes byte quota" in answer.text()
    client.commit_block_list(["AAAA", "AAAB"])  # the blocks become the blob: no growth
    assert client.download_blob().readall() == b"1" * 2000 + b"2" * 1000
    with pytest.raises(HttpResponseError) as caught:
        blob.get_blob_client(second, "one-more").upload_blob(b"x")
    assert caught.value.status_code == 403 and caught.value.error_code == "QuotaExceeded"
    _refused(lambda: s3.put_object(Bucket=second, Key="x", Body=b"x"), f"tenant {tenant}: 3000 bytes byte quota")
    client.upload_blob(b"small", overwrite=True)  # a shrinking overwrite through Put Blob passes
    s3.put_object(Bucket=second, Key="x", Body=b"x" * 2995)
    _refused(lambda: s3.put_object(Bucket=second, Key="y", Body=b""), f"tenant {tenant}: 2 object quota exceeded")
    usage = json.loads(atoll.cli("quota", "show", tenant, "--json").stdout)
    assert (usage["bytes"], usage["objects"], usage["max_bytes"], usage["max_objects"]) == (3000, 2, 3000, 2)
    assert {name: (u["bytes"], u["objects"]) for name, u in usage["buckets"].items()} == {first: (5, 1),
                                                                                      second: (2995, 1)}


def test_concurrent_writers_across_workers_fit_exactly_and_fsck_checks_counters(workdir):
    server = AtollProcess(data_dir=os.path.join(workdir, _name("quota-race")), workers=2).start()
    try:
        bucket = _name("race")
        server.client().create_bucket(Bucket=bucket)
        server.cli("quota", "set", "root", "--bucket", bucket, "--max-bytes", "20000")
        outcomes: list[str] = []

        def writer(n: int) -> None:
            s3 = first_answer_client(server)
            for i in range(3):  # 48 writes of 1000 bytes for room of 20
                try:
                    s3.put_object(Bucket=bucket, Key=f"w{n}-{i}", Body=os.urandom(1000))
                    outcomes.append("ok")
                except ClientError as exc:
                    outcomes.append(exc.response["Error"]["Code"])

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sorted(set(outcomes)) == ["QuotaExceeded", "ok"] and len(outcomes) == 48, outcomes
        assert outcomes.count("ok") == 20
        assert _usage(server, bucket) == (20000, 20)
        assert server.client().list_objects_v2(Bucket=bucket)["KeyCount"] == 20
    finally:
        stop_cleanly(server)
    conn = sqlite3.connect(os.path.join(server.data_dir, "meta.sqlite3"))
    conn.execute("UPDATE usage SET bytes = bytes + 7, objects = 0 WHERE bucket = ?", (bucket,))
    conn.execute("UPDATE warm SET bytes = bytes - 5 WHERE bucket = ?", (bucket,))  # eviction's per-tenant input
    conn.commit()
    conn.close()
    done = server.cli("fsck", "--json", check=False)
    found = [f for f in json.loads(done.stdout)["findings"] if f["kind"] == "usage"]
    assert done.returncode == 1 and len(found) == 1 and found[0]["bucket"] == bucket, done.stdout
    assert "20007 bytes in 0 objects" in found[0]["detail"] and "20000 bytes in 20 objects" in found[0]["detail"]
    warm = [f for f in json.loads(done.stdout)["findings"] if f["kind"] == "warm"]
    assert len(warm) == 1 and warm[0]["bucket"] == bucket and "says 19995 bytes" in warm[0]["detail"], done.stdout
    done = server.cli("fsck", "--json", "--repair", check=False)
    assert sorted((f["kind"], f["repaired"]) for f in json.loads(done.stdout)["findings"]
                  if f["kind"] in ("usage", "warm")) == [("usage", True), ("warm", True)]
    assert server.cli("fsck", "--json", check=False).returncode == 0
    assert _usage(server, bucket) == (20000, 20)
    assert meta_query(server, "SELECT bytes FROM warm WHERE bucket = ?", (bucket,)) == [(20000,)]
