"""GET and HEAD answers of hot objects are built from headers cached per object version (atoll.s3.objects): what a
client sees must stay exactly what the version says, whatever was asked before: every header once, the request's
own extras (checksums, overrides, ranges) on top, and a new version's headers as soon as it exists."""

from __future__ import annotations

import http.client

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from s3util import key_path

BODY = b"cached-head-" * 100


def _raw(server, method: str, path: str, query: str = "", headers: dict[str, str] | None = None):
    """(status, header pairs exactly as sent, body): repeated headers stay visible."""
    host = f"127.0.0.1:{server.port}"
    request = AWSRequest(method=method, url=f"http://{host}{path}" + (f"?{query}" if query else ""),
                         headers={"Host": host, **(headers or {})})
    S3SigV4Auth(Credentials(server.access_key, server.secret_key), "s3", "us-east-1").add_auth(request)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.putrequest(method, path + (f"?{query}" if query else ""), skip_host=True, skip_accept_encoding=True)
        for name, value in request.headers.items():
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, [(k.lower(), v) for k, v in response.getheaders()], response.read()
    finally:
        conn.close()


def _once(pairs: list[tuple[str, str]]) -> dict[str, str]:
    names = [name for name, _ in pairs]
    assert len(names) == len(set(names)), f"a header was sent twice: {names}"
    return dict(pairs)


def test_get_and_head_send_the_versions_headers_once_each(atoll, s3, bucket):
    s3.put_object(Bucket=bucket, Key="k", Body=BODY, ContentType="text/plain", CacheControl="max-age=60",
                  Metadata={"colour": "blue"})
    path = key_path(bucket, "k")
    for _ in range(3):  # the first answer fills the cache, the others come from it
        status, pairs, body = _raw(atoll, "GET", path)
        got = _once(pairs)
        assert status == 200 and body == BODY
        assert got["content-type"] == "text/plain" and got["cache-control"] == "max-age=60"
        assert got["x-amz-meta-colour"] == "blue" and got["content-length"] == str(len(BODY))
        assert got["etag"].startswith('"') and got["last-modified"].endswith("GMT") and got["x-amz-request-id"]
        status, pairs, body = _raw(atoll, "HEAD", path)
        head = _once(pairs)
        assert status == 200 and body == b""
        assert {k: v for k, v in head.items() if k not in ("date", "x-amz-request-id", "x-amz-id-2")} == \
            {k: v for k, v in got.items() if k not in ("date", "x-amz-request-id", "x-amz-id-2")}


def test_extras_asked_after_a_cached_answer_are_added(atoll, s3, bucket):
    s3.put_object(Bucket=bucket, Key="k", Body=BODY, ContentType="text/plain", ChecksumAlgorithm="CRC32")
    path = key_path(bucket, "k")
    _raw(atoll, "GET", path)  # cache the version's head
    status, pairs, _ = _raw(atoll, "GET", path, headers={"x-amz-checksum-mode": "ENABLED"})
    assert status == 200 and "x-amz-checksum-crc32" in _once(pairs)
    status, pairs, body = _raw(atoll, "GET", path, headers={"Range": "bytes=0-9"})
    got = _once(pairs)
    assert status == 206 and body == BODY[:10] and got["content-range"] == f"bytes 0-9/{len(BODY)}"
    got = s3.get_object(Bucket=bucket, Key="k", ResponseContentType="application/x-test")
    assert got["ContentType"] == "application/x-test"
    status, pairs, _ = _raw(atoll, "GET", path, query="response-content-type=application%2Fx-test")
    got = _once(pairs)
    assert status == 200 and got["content-type"] == "application/x-test"


def test_a_new_version_is_served_with_its_own_headers(atoll, s3, bucket):
    path = key_path(bucket, "k")
    s3.put_object(Bucket=bucket, Key="k", Body=BODY, ContentType="text/plain", Metadata={"v": "1"})
    _, pairs, _ = _raw(atoll, "HEAD", path)
    first = _once(pairs)
    # A metadata REPLACE onto itself keeps the bytes and the ETag: the headers must still change.
    s3.copy_object(Bucket=bucket, Key="k", CopySource={"Bucket": bucket, "Key": "k"}, MetadataDirective="REPLACE",
                   ContentType="text/csv", Metadata={"v": "2"})
    _, pairs, _ = _raw(atoll, "GET", path)
    second = _once(pairs)
    assert second["content-type"] == "text/csv" and second["x-amz-meta-v"] == "2"
    s3.put_object(Bucket=bucket, Key="k", Body=b"other", ContentType="text/html")
    _, pairs, body = _raw(atoll, "GET", path)
    third = _once(pairs)
    assert body == b"other" and third["content-type"] == "text/html" and "x-amz-meta-v" not in third
    assert len({first["etag"], third["etag"]}) == 2
