"""SigV2 verification (atoll.auth.sigv2, reached through atoll.auth.sigv4.verify_request as the server does)
against AWS's published examples and real botocore signers: ``HmacV1Auth`` (a boto3 client with
``signature_version="s3"``) and ``HmacV1QueryAuth`` (boto3's default ``generate_presigned_url`` in us-east-1).

The last tests drive the live ``atoll`` server with those URLs and clients over real sockets (urllib, http.client,
boto3).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import time
import urllib.error
import urllib.request
from urllib.parse import quote, urlsplit
from xml.etree import ElementTree

import boto3
import pytest
from botocore.auth import HmacV1Auth
from botocore.config import Config
from botocore.exceptions import ClientError

from atoll.auth import sigv2
from atoll.auth.sigv4 import AuthContext, AuthError, verify_request

ACCESS_KEY = "AKIDEXAMPLE"
SECRET = "wJalr/XUtn+FEMI=K7MD ENG~bPxRfi!CY@EX#AMPLE$KEY%^&*()é"  # odd characters on purpose
SECRETS = {ACCESS_KEY: SECRET, "AKIDOTHER": "other-secret"}
ENDPOINT = "http://127.0.0.1:9000"

ODD_KEYS = [
    "plain.txt",
    "with space/and more spaces.bin",
    "unicode/ünï©ødé/日本語/🎉",
    "plus+sign+",
    "percent%20literal%",
    "sub-delims!$&'()*+,;=:@",
    "query?chars#hash",
    "double//slash/",
]


# --- capturing what a real client sends -------------------------------------------------------------------------

class Wire:
    """A request as the server sees it: method, raw path, raw query, lower-case latin-1 headers."""

    def __init__(self, method: str, url: str, headers=None) -> None:
        parts = urlsplit(url)
        self.method = method
        self.url = url
        self.path = parts.path or "/"
        self.query = parts.query
        self.host = parts.netloc
        self.headers: dict[str, str] = {"host": parts.netloc}
        for name, value in (headers or {}).items():
            self.headers[name.lower()] = value.decode("latin-1") if isinstance(value, bytes) else str(value)

    def verify(self, now: float | None = None, vhost: str | None = None, **changes) -> AuthContext | None:
        method = changes.pop("method", self.method)
        path = changes.pop("path", self.path)
        query = changes.pop("query", self.query)
        headers = changes.pop("headers", self.headers)
        assert not changes
        return verify_request(method, path, query, headers, SECRETS.get, time.time() if now is None else now,
                              900.0, vhost)

    def with_headers(self, **changes) -> dict[str, str]:
        headers = dict(self.headers)
        for name, value in changes.items():
            name = name.replace("_", "-")
            if value is None:
                headers.pop(name, None)
            else:
                headers[name] = value
        return headers


class _Captured(Exception):
    pass


def sigv2_client(endpoint: str = ENDPOINT, access_key: str = ACCESS_KEY, secret: str = SECRET, **s3_config):
    """A boto3 client that signs requests with SigV2 headers (HmacV1Auth) and stops them at before-send."""
    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=access_key, aws_secret_access_key=secret,
                          region_name="us-east-1",
                          config=Config(signature_version="s3", retries={"max_attempts": 0}, s3=s3_config or None))

    def capture(request, **_):
        raise _Captured(Wire(request.method, request.url, request.headers))

    client.meta.events.register("before-send", capture)
    return client


def capture(call, *args, **kwargs) -> Wire:
    with pytest.raises(_Captured) as caught:
        call(*args, **kwargs)
    return caught.value.args[0]


def presigning_client(endpoint: str = ENDPOINT, access_key: str = ACCESS_KEY, secret: str = SECRET, **s3_config):
    """boto3 exactly as users get it: no signature_version, region us-east-1 (SigV2 presigned URLs)."""
    config = Config(s3=s3_config) if s3_config else None
    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=access_key, aws_secret_access_key=secret,
                        region_name="us-east-1", config=config)


def sign(string: str, secret: str = SECRET) -> str:
    return base64.b64encode(hmac.digest(secret.encode(), string.encode(), "sha1")).decode()


def assert_auth_error(code: str, call, *args, **kwargs) -> AuthError:
    with pytest.raises(AuthError) as caught:
        call(*args, **kwargs)
    error = caught.value
    assert error.code == code, error.message
    text = f"{error} {error.details}"
    assert SECRET not in text
    if "StringToSign" in error.details:  # never the signature the server expected
        assert sign(error.details["StringToSign"]) not in text
    return error


# --- AWS's published examples -----------------------------------------------------------------------------------

DOC_KEY, DOC_SECRET = "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"

# (method, raw path, raw query, headers, virtual-host bucket, StringToSign, signature), from "Signing and
# authenticating REST requests (AWS signature version 2)" in the S3 documentation.
DOC_EXAMPLES = {
    "object-get": ("GET", "/photos/puppy.jpg", "", {"date": "Tue, 27 Mar 2007 19:36:42 +0000"}, "awsexamplebucket1",
                   "GET\n\n\nTue, 27 Mar 2007 19:36:42 +0000\n/awsexamplebucket1/photos/puppy.jpg",
                   "qgk2+6Sv9/oM7G3qLEjTH1a1l1g="),
    "object-get-path-style": ("GET", "/johnsmith/photos/puppy.jpg", "", {"date": "Tue, 27 Mar 2007 19:36:42 +0000"},
                              None, "GET\n\n\nTue, 27 Mar 2007 19:36:42 +0000\n/johnsmith/photos/puppy.jpg",
                              "bWq2s1WEIj+Ydj0vQ697zp+IXMU="),
    "object-put": ("PUT", "/photos/puppy.jpg", "",
                   {"content-type": "image/jpeg", "content-length": "94328",
                    "date": "Tue, 27 Mar 2007 21:15:45 +0000"}, "johnsmith",
                   "PUT\n\nimage/jpeg\nTue, 27 Mar 2007 21:15:45 +0000\n/johnsmith/photos/puppy.jpg",
                   "MyyxeRY7whkBe+bq8fHCL/2kKUg="),
    "list": ("GET", "/", "prefix=photos&max-keys=50&marker=puppy",
             {"user-agent": "Mozilla/5.0", "date": "Tue, 27 Mar 2007 19:42:41 +0000"}, "johnsmith",
             "GET\n\n\nTue, 27 Mar 2007 19:42:41 +0000\n/johnsmith/", "htDYFYduRNen8P9ZfE/s9SuKy0U="),
    "fetch-acl": ("GET", "/", "acl", {"date": "Tue, 27 Mar 2007 19:44:46 +0000"}, "johnsmith",
                  "GET\n\n\nTue, 27 Mar 2007 19:44:46 +0000\n/johnsmith/?acl", "c2WLPFtWHVgbEmeEG93a4cG37dM="),
    "upload-cname": ("PUT", "/db-backup.dat.gz", "",
                     {"user-agent": "curl/7.15.5", "date": "Tue, 27 Mar 2007 21:06:08 +0000",
                      "x-amz-acl": "public-read", "content-type": "application/x-download",
                      "content-md5": "4gJE4saaMU4BqNR0kLY+lw==",
                      "x-amz-meta-reviewedby": "joe@johnsmith.net,jane@johnsmith.net",  # two headers, joined
                      "x-amz-meta-filechecksum": "0x02661779", "x-amz-meta-checksumalgorithm": "crc32",
                      "content-disposition": "attachment; filename=database.dat", "content-encoding": "gzip",
                      "content-length": "5913339"}, "static.johnsmith.net",
                     "PUT\n4gJE4saaMU4BqNR0kLY+lw==\napplication/x-download\nTue, 27 Mar 2007 21:06:08 +0000\n"
                     "x-amz-acl:public-read\nx-amz-meta-checksumalgorithm:crc32\nx-amz-meta-filechecksum:0x02661779\n"
                     "x-amz-meta-reviewedby:joe@johnsmith.net,jane@johnsmith.net\n"
                     "/static.johnsmith.net/db-backup.dat.gz",
                     "ilyl83RwaSoYIEdixDQcA4OnAnc="),
    "list-buckets": ("GET", "/", "", {"date": "Wed, 28 Mar 2007 01:29:59 +0000"}, None,
                     "GET\n\n\nWed, 28 Mar 2007 01:29:59 +0000\n/", "qGdzdERIC03wnaRNKh6OqZehG9s="),
    # The path is signed exactly as sent: upper- and lower-case percent-escapes both survive.
    "unicode-keys": ("GET", "/dictionary/fran%C3%A7ais/pr%c3%a9f%c3%a8re", "",
                     {"date": "Wed, 28 Mar 2007 01:49:49 +0000"}, None,
                     "GET\n\n\nWed, 28 Mar 2007 01:49:49 +0000\n/dictionary/fran%C3%A7ais/pr%c3%a9f%c3%a8re",
                     "DNEZGsoieTZ92F3bUfSPQcbGmlM="),
}


@pytest.mark.parametrize("name", DOC_EXAMPLES)
def test_aws_documentation_examples(name):
    method, path, query, headers, vhost, expected_sts, signature = DOC_EXAMPLES[name]
    assert sigv2.string_to_sign(method, path, query, headers, headers["date"],
                                virtual_host_bucket=vhost) == expected_sts
    assert sign(expected_sts, DOC_SECRET) == signature
    signed = {**headers, "authorization": f"AWS {DOC_KEY}:{signature}"}
    when = sigv2._parse_date(headers["date"])
    context = verify_request(method, path, query, signed, {DOC_KEY: DOC_SECRET}.get, when + 60, 900.0, vhost)
    assert context == AuthContext(DOC_KEY, "unsigned", None, b"", "", "", "", False)
    with pytest.raises(AuthError, match="SignatureDoesNotMatch"):
        verify_request(method, path, query, signed, {DOC_KEY: DOC_SECRET + "x"}.get, when, 900.0, vhost)


def test_aws_documentation_query_string_example():
    query = f"AWSAccessKeyId={DOC_KEY}&Signature=NpgCjnDzrM%2BWFzoENXmpNDUsSn8%3D&Expires=1175139620"
    headers = {"host": "johnsmith.s3.amazonaws.com"}
    context = verify_request("GET", "/photos/puppy.jpg", query, headers, {DOC_KEY: DOC_SECRET}.get, 1175139000,
                             900.0, "johnsmith")
    assert context == AuthContext(DOC_KEY, "unsigned", None, b"", "", "", "", True)
    error = assert_auth_error("AccessDenied", verify_request, "GET", "/photos/puppy.jpg", query, headers,
                              {DOC_KEY: DOC_SECRET}.get, 1175139621, 900.0, "johnsmith")
    assert error.message == "Request has expired"


# --- the string to sign -----------------------------------------------------------------------------------------

def test_string_to_sign_parts():
    headers = {"host": "h", "date": "Wed, 25 Nov 2026 12:00:00 GMT", "content-type": " text/plain ",
               "content-md5": "1B2M2Y8AsgTpgAmY7PhCfg==", "x-amz-meta-b": "  two ", "X-Ignored": "x",
               "x-amz-acl": "private", "x-amz-meta-a": "one,uno", "range": "bytes=0-1"}
    query = ("versionId=a%2Bb%2Fc&list-type=2&acl&uploads=&response-content-type=text%2Fplain%3B%20charset%3Dutf-8"
             "&prefix=p&partNumber=3")
    assert sigv2.string_to_sign("PUT", "/b/k%20ey", query, headers, headers["date"]) == (
        "PUT\n1B2M2Y8AsgTpgAmY7PhCfg==\ntext/plain\nWed, 25 Nov 2026 12:00:00 GMT\n"
        "x-amz-acl:private\nx-amz-meta-a:one,uno\nx-amz-meta-b:two\n"
        "/b/k%20ey?acl&partNumber=3&response-content-type=text/plain; charset=utf-8&uploads=&versionId=a+b/c")
    # Virtual-hosted style signs the bucket too; an empty path is "/". A path-style bucket URI ends with "/".
    assert sigv2.string_to_sign("GET", "/", "", {}, "1700000000", virtual_host_bucket="bkt") == \
        "GET\n\n\n1700000000\n/bkt/"
    assert sigv2.string_to_sign("GET", "/bkt", "uploads", {}, "1").endswith("\n1\n/bkt/?uploads")


@pytest.mark.parametrize("url", [
    "http://h/b/k?acl",
    "http://h/b/k?uploadId=abc%2Fdef&partNumber=10",
    "http://h/b/?list-type=2&prefix=a%2Bb&delimiter=%2F&encoding-type=url",
    "http://h/b/k?versionId=v%20w&response-content-disposition=attachment%3B%20filename%3D%22%C3%A9.txt%22",
    "http://h/b/?delete",
    "http://h/b/k?tagging&versionId=3",
    "http://h/b/k%C3%A9?response-expires=Thu%2C%2001%20Dec%201994%2016%3A00%3A00%20GMT&response-cache-control=no",
])
def test_canonical_resource_matches_botocore(url):
    parts = urlsplit(url)
    ours = sigv2.string_to_sign("GET", parts.path, parts.query, {}, "").split("\n")[-1]
    assert ours == HmacV1Auth(None).canonical_resource(parts)


def test_x_amz_date_replaces_the_date_line():
    amz_date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())
    headers = {"host": "h", "x-amz-date": amz_date, "date": "whatever the proxy says"}
    sts = sigv2.string_to_sign("DELETE", "/b/k", "", headers, "")
    assert sts == f"DELETE\n\n\n\nx-amz-date:{amz_date}\n/b/k"
    headers["authorization"] = f"AWS {ACCESS_KEY}:{sign(sts)}"
    assert verify_request("DELETE", "/b/k", "", headers, SECRETS.get, time.time()).access_key == ACCESS_KEY
    # x-amz-date is the timestamp that counts, in either format.
    headers["x-amz-date"] = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() - 3600))
    headers["authorization"] = f"AWS {ACCESS_KEY}:{sign(sigv2.string_to_sign('DELETE', '/b/k', '', headers, ''))}"
    assert_auth_error("RequestTimeTooSkewed", verify_request, "DELETE", "/b/k", "", headers, SECRETS.get,
                      time.time())
    assert verify_request("DELETE", "/b/k", "", headers, SECRETS.get, time.time() - 3600).presigned is False


# --- header auth from a real client -----------------------------------------------------------------------------

@pytest.mark.parametrize("key", ODD_KEYS)
def test_boto3_sigv2_client_requests_verify(key):
    client = sigv2_client()
    requests = [
        capture(client.put_object, Bucket="bkt", Key=key, Body=b"data", ContentType="text/plain; charset=utf-8",
                Metadata={"colour": "blue  green", "n": "1"}, ContentMD5=base64.b64encode(
                    hashlib.md5(b"data").digest()).decode()),
        capture(client.get_object, Bucket="bkt", Key=key, VersionId="v+1", ResponseContentType="a/b c",
                ResponseContentDisposition='attachment; filename="ü.txt"', Range="bytes=0-3"),
        capture(client.upload_part, Bucket="bkt", Key=key, UploadId="u/+=", PartNumber=7, Body=b"part"),
        capture(client.create_multipart_upload, Bucket="bkt", Key=key),
        capture(client.copy_object, Bucket="bkt", Key=key, CopySource={"Bucket": "src", "Key": key}),
        capture(client.list_objects_v2, Bucket="bkt", Prefix=key, Delimiter="/"),
        capture(client.delete_objects, Bucket="bkt", Delete={"Objects": [{"Key": key}]}),
    ]
    for wire in requests:
        assert wire.headers["authorization"].startswith(f"AWS {ACCESS_KEY}:")
        context = wire.verify()
        assert context == AuthContext(ACCESS_KEY, "unsigned", None, b"", "", "", "", False), wire.url


def test_virtual_hosted_style_signs_the_bucket():
    client = sigv2_client("http://s3.atoll.test:9000", addressing_style="virtual")
    wire = capture(client.get_object, Bucket="my-bucket", Key="a b+c/ü", ResponseContentType="x/y")
    assert wire.host == "my-bucket.s3.atoll.test:9000" and wire.path == "/a%20b%2Bc/%C3%BC"
    assert wire.verify(vhost="my-bucket").access_key == ACCESS_KEY
    assert_auth_error("SignatureDoesNotMatch", wire.verify)
    assert_auth_error("SignatureDoesNotMatch", wire.verify, vhost="other-bucket")
    listing = capture(client.list_objects_v2, Bucket="my-bucket")
    assert listing.path == "/" and listing.verify(vhost="my-bucket").access_key == ACCESS_KEY


@pytest.fixture
def signed_put() -> Wire:
    return capture(sigv2_client().put_object, Bucket="bkt", Key="k", Body=b"data", ContentType="text/plain",
                   Metadata={"a": "1"})


@pytest.mark.parametrize("change", [
    {"method": "POST"},
    {"path": "/bkt/other"},
    {"path": "/bkt/%6B"},  # the same key, encoded differently: the signature covers the bytes sent
    {"query": "acl"},
    {"query": "uploadId=1&partNumber=1"},
    {"query": "respon%73e-content-type=text/html"},  # a sub-resource in disguise is still a sub-resource
    {"headers": {"x-amz-meta-a": "2"}},
    {"headers": {"x-amz-acl": "public-read"}},
    {"headers": {"content-type": "text/html"}},
    {"headers": {"content-type": None}},
    {"headers": {"content-md5": "1B2M2Y8AsgTpgAmY7PhCfg=="}},
])
def test_header_tampering_fails(signed_put, change):
    if "headers" in change:
        change = {"headers": signed_put.with_headers(**change["headers"])}
    assert_auth_error("SignatureDoesNotMatch", signed_put.verify, **change)


def test_header_auth_errors(signed_put):
    assert signed_put.verify().access_key == ACCESS_KEY
    # What S3 does not sign in SigV2 may change: ordinary query parameters and headers.
    assert signed_put.verify(query="x-id=PutObject&prefix=p", headers=signed_put.with_headers(range="bytes=1-"))
    auth = signed_put.headers["authorization"]
    assert_auth_error("SignatureDoesNotMatch", signed_put.verify,
                      headers=signed_put.with_headers(authorization=auth[:-6] + "AAAAA="))
    assert_auth_error("SignatureDoesNotMatch", signed_put.verify,
                      headers=signed_put.with_headers(authorization=auth.replace(ACCESS_KEY, "AKIDOTHER")))
    assert_auth_error("InvalidAccessKeyId", signed_put.verify,
                      headers=signed_put.with_headers(authorization=auth.replace(ACCESS_KEY, "AKIDNOBODY")))
    for malformed in (f"AWS {ACCESS_KEY}", f"AWS {ACCESS_KEY}:", "AWS :abc=", "AWS "):
        error = assert_auth_error("InvalidArgument", signed_put.verify,
                                  headers=signed_put.with_headers(authorization=malformed))
        assert "AwsAccessKeyId:signature" in error.message
    assert_auth_error("RequestTimeTooSkewed", signed_put.verify, now=time.time() + 905)
    assert_auth_error("RequestTimeTooSkewed", signed_put.verify, now=time.time() - 905)
    assert signed_put.verify(now=time.time() + 850).access_key == ACCESS_KEY
    for date in (None, "", "yesterday"):
        error = assert_auth_error("AccessDenied", signed_put.verify, headers=signed_put.with_headers(date=date))
        assert "Date" in error.message
    presigned_query = "AWSAccessKeyId=AKIDEXAMPLE&Expires=2000000000&Signature=abc%3D"
    assert_auth_error("InvalidArgument", signed_put.verify, query=presigned_query)
    error = assert_auth_error("InvalidRequest", signed_put.verify, headers=signed_put.with_headers(
        x_amz_content_sha256="STREAMING-UNSIGNED-PAYLOAD-TRAILER"))
    assert "Signature Version 4" in error.message


def test_header_values_sent_as_raw_utf8_verify():
    # botocore signs non-ASCII header text as UTF-8 but cannot send it; a client that sends raw UTF-8 bytes signs
    # those same bytes. The server hands the headers over decoded as latin-1.
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())
    sts = f"PUT\n\n\n{date}\nx-amz-meta-name:café\n/b/k"
    headers = {"date": date, "x-amz-meta-name": "café".encode().decode("latin-1"),
               "authorization": f"AWS {ACCESS_KEY}:{sign(sts)}"}
    assert verify_request("PUT", "/b/k", "", headers, SECRETS.get, time.time()).access_key == ACCESS_KEY


# --- presigned URLs ---------------------------------------------------------------------------------------------

def test_boto3_default_presign_is_sigv2_and_verifies():
    client = presigning_client()
    for key in ODD_KEYS:
        url = client.generate_presigned_url("get_object", Params={
            "Bucket": "bkt", "Key": key, "ResponseContentType": "text/x+y; a=b", "VersionId": "1/2",
            "ResponseContentDisposition": 'inline; filename="naïve.txt"'}, ExpiresIn=600)
        parts = urlsplit(url)
        names = {pair.partition("=")[0] for pair in parts.query.split("&")}
        assert {"AWSAccessKeyId", "Signature", "Expires"} <= names and "X-Amz-Algorithm" not in names
        context = Wire("GET", url).verify()
        assert context == AuthContext(ACCESS_KEY, "unsigned", None, b"", "", "", "", True)
    head = client.generate_presigned_url("head_object", Params={"Bucket": "bkt", "Key": "k"})
    assert Wire("HEAD", head).verify().presigned
    listing = client.generate_presigned_url("list_objects_v2", Params={"Bucket": "bkt", "Prefix": "a b"})
    assert Wire("GET", listing).verify().presigned


def test_presigned_put_with_signed_headers_in_the_query():
    # botocore moves Content-Type and x-amz-* headers into a SigV2 presigned URL's query; the request may send
    # them again as headers (the same values) or not at all.
    url = presigning_client().generate_presigned_url("put_object", Params={
        "Bucket": "bkt", "Key": "k", "ContentType": "text/plain", "Metadata": {"owner": "me"}, "ACL": "private"})
    assert "content-type=text%2Fplain" in url and "x-amz-meta-owner=me" in url
    wire = Wire("PUT", url)
    assert wire.verify().presigned
    assert wire.verify(headers=wire.with_headers(content_type="text/plain", x_amz_meta_owner="me")).presigned
    assert_auth_error("SignatureDoesNotMatch", wire.verify, headers=wire.with_headers(content_type="text/html"))
    assert_auth_error("SignatureDoesNotMatch", wire.verify, headers=wire.with_headers(x_amz_acl="public-read"))
    assert_auth_error("SignatureDoesNotMatch", wire.verify, query=wire.query.replace("x-amz-meta-owner=me",
                                                                                     "x-amz-meta-owner=you"))


@pytest.fixture
def presigned_get() -> Wire:
    return Wire("GET", presigning_client().generate_presigned_url(
        "get_object", Params={"Bucket": "bkt", "Key": "a b", "ResponseContentType": "text/plain"}, ExpiresIn=300))


def test_presigned_tampering_fails(presigned_get):
    wire = presigned_get
    expires = dict(pair.split("=", 1) for pair in wire.query.split("&"))["Expires"]
    for change in ({"method": "PUT"}, {"path": "/bkt/a%20c"}, {"path": "/bkt/a+b"},
                   {"query": wire.query.replace("text%2Fplain", "text%2Fhtml")},
                   {"query": wire.query.replace("response-content-type=text%2Fplain&", "")},
                   {"query": wire.query + "&response-content-disposition=attachment"},
                   {"query": wire.query + "&respon%73e-content-disposition=attachment"},
                   {"query": wire.query + "&versionId=1"},
                   {"query": wire.query.replace(f"Expires={expires}", f"Expires={int(expires) + 1}")},
                   {"headers": wire.with_headers(x_amz_acl="public-read")},
                   {"headers": wire.with_headers(content_type="text/plain")}):
        assert_auth_error("SignatureDoesNotMatch", wire.verify, **change)
    # Parameters SigV2 does not sign may be added, as on S3.
    assert wire.verify(query=wire.query + "&x-id=GetObject").presigned


def test_presigned_errors(presigned_get):
    wire = presigned_get
    params = dict(pair.split("=", 1) for pair in wire.query.split("&"))
    error = assert_auth_error("AccessDenied", wire.verify, now=int(params["Expires"]) + 1)
    assert error.message == "Request has expired"
    assert wire.verify(now=int(params["Expires"])).presigned  # valid up to and including that second

    def query_with(**changes):
        merged = {**params, **changes}
        return "&".join(f"{name}={value}" for name, value in merged.items() if value is not None)

    assert_auth_error("InvalidAccessKeyId", wire.verify, query=query_with(AWSAccessKeyId="AKIDNOBODY"))
    assert_auth_error("SignatureDoesNotMatch", wire.verify, query=query_with(AWSAccessKeyId="AKIDOTHER"))
    for missing in ("Expires", "Signature", "AWSAccessKeyId"):
        error = assert_auth_error("AccessDenied", wire.verify, query=query_with(**{missing: None}))
        assert "requires the Signature, Expires and AWSAccessKeyId" in error.message
    assert_auth_error("AccessDenied", wire.verify, query=query_with(Expires="soon"))
    assert_auth_error("InvalidArgument", wire.verify, query=wire.query + "&Signature=abc")
    # "X-Amz-" elsewhere in the query does not turn it into SigV4.
    assert wire.verify(query=wire.query + "&prefix=X-Amz-Date").presigned
    # The request must not also carry an Authorization header.
    assert_auth_error("InvalidArgument", wire.verify, headers=wire.with_headers(authorization=f"AWS {ACCESS_KEY}:x"))


# --- against the live server ------------------------------------------------------------------------------------

def _call(method: str, url: str, body: bytes | None = None, headers=None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


def _error_code(body: bytes) -> str:
    return ElementTree.fromstring(body).findtext("Code")


LIVE_KEYS = ["with space.txt", "ünï/日本語 🎉.bin", "a+b+c", "mixed +/é ~!'()*.dat"]


def test_live_presigned_get_and_put(atoll, bucket):
    client = atoll.client()  # boto3 as users have it: region us-east-1, no signature_version
    for key in LIVE_KEYS:
        body = f"body of {key}".encode()
        put_url = client.generate_presigned_url("put_object", Params={
            "Bucket": bucket, "Key": key, "ContentType": "application/x-atoll"}, ExpiresIn=300)
        assert "AWSAccessKeyId=" in put_url and "X-Amz-" not in put_url
        status, _, answer = _call("PUT", put_url, body, {"Content-Type": "text/html"})
        assert (status, _error_code(answer)) == (403, "SignatureDoesNotMatch")
        status, _, answer = _call("PUT", put_url, body, {"Content-Type": "application/x-atoll"})
        assert status == 200, answer

        get_url = client.generate_presigned_url("get_object", Params={
            "Bucket": bucket, "Key": key, "ResponseContentType": "text/x-override",
            "ResponseContentDisposition": 'attachment; filename="x.txt"'}, ExpiresIn=300)
        status, headers, answer = _call("GET", get_url)
        assert (status, answer) == (200, body)
        assert headers["content-type"] == "text/x-override"
        assert headers["content-disposition"] == 'attachment; filename="x.txt"'
        stored = atoll.client(signature_version="s3v4").head_object(Bucket=bucket, Key=key)
        assert stored["ContentType"] == "application/x-atoll" and stored["ContentLength"] == len(body)

        tampered = get_url.replace("text%2Fx-override", "text%2Fhtml")
        status, _, answer = _call("GET", tampered)
        assert (status, _error_code(answer)) == (403, "SignatureDoesNotMatch")
        status, _, answer = _call("GET", get_url.replace(quote(key, safe="/~"), quote(key + "x", safe="/~")))
        assert (status, _error_code(answer)) == (403, "SignatureDoesNotMatch")

    expired = client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": LIVE_KEYS[0]},
                                            ExpiresIn=-5)
    status, _, answer = _call("GET", expired)
    assert (status, _error_code(answer)) == (403, "AccessDenied")
    assert b"Request has expired" in answer
    stranger = atoll.client(access_key="AKIDNOBODY", secret_key="nope")
    status, _, answer = _call("GET", stranger.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": LIVE_KEYS[0]}))
    assert (status, _error_code(answer)) == (403, "InvalidAccessKeyId")


def test_live_sigv2_header_client(atoll, bucket):
    client = atoll.client(signature_version="s3")  # HmacV1Auth: "Authorization: AWS AKID:signature"
    key = "dir/ä b+c.txt"
    client.put_object(Bucket=bucket, Key=key, Body=b"hello", ContentType="text/plain", Metadata={"k": "v"})
    got = client.get_object(Bucket=bucket, Key=key, ResponseContentType="x/y")
    assert got["Body"].read() == b"hello" and got["ContentType"] == "x/y" and got["Metadata"] == {"k": "v"}
    assert client.head_object(Bucket=bucket, Key=key)["ContentLength"] == 5
    client.copy_object(Bucket=bucket, Key="copy", CopySource={"Bucket": bucket, "Key": key})
    upload = client.create_multipart_upload(Bucket=bucket, Key="multi")["UploadId"]
    etag = client.upload_part(Bucket=bucket, Key="multi", UploadId=upload, PartNumber=1, Body=b"x" * 10)["ETag"]
    assert [part["PartNumber"] for part in client.list_parts(Bucket=bucket, Key="multi", UploadId=upload)["Parts"]] \
        == [1]
    client.complete_multipart_upload(Bucket=bucket, Key="multi", UploadId=upload,
                                     MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]})
    listed = client.list_objects_v2(Bucket=bucket, Prefix="")
    assert sorted(item["Key"] for item in listed["Contents"]) == ["copy", key, "multi"]
    deleted = client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "copy"}, {"Key": "multi"}]})
    assert len(deleted["Deleted"]) == 2
    client.delete_object(Bucket=bucket, Key=key)
    assert client.list_objects_v2(Bucket=bucket)["KeyCount"] == 0

    for access_key, secret, code in ((atoll.access_key, "wrong", "SignatureDoesNotMatch"),
                                     ("AKIDNOBODY", "nope", "InvalidAccessKeyId")):
        with pytest.raises(ClientError) as caught:
            atoll.client(access_key, secret, signature_version="s3").head_bucket(Bucket=bucket)
        assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
        with pytest.raises(ClientError) as caught:
            atoll.client(access_key, secret, signature_version="s3").list_objects_v2(Bucket=bucket)
        assert caught.value.response["Error"]["Code"] == code


def test_live_virtual_hosted_style(new_server):
    server = new_server(extra_args=["--s3-domain", "s3.atoll.test"])
    server.client(signature_version="s3v4").create_bucket(Bucket="vhost-bucket")
    endpoint = f"http://s3.atoll.test:{server.port}"
    key = "a b+c/ü.txt"

    def send(wire: Wire, body: bytes = b"") -> tuple[int, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        try:
            target = wire.path + (f"?{wire.query}" if wire.query else "")
            headers = {name: value for name, value in wire.headers.items() if name != "expect"}
            connection.request(wire.method, target, body=body, headers=headers)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    signer = sigv2_client(endpoint, server.access_key, server.secret_key, addressing_style="virtual")
    put = capture(signer.put_object, Bucket="vhost-bucket", Key=key, Body=b"virtual")
    assert put.host == f"vhost-bucket.s3.atoll.test:{server.port}"
    assert send(put, b"virtual")[0] == 200

    url = presigning_client(endpoint, server.access_key, server.secret_key, addressing_style="virtual") \
        .generate_presigned_url("get_object", Params={"Bucket": "vhost-bucket", "Key": key})
    assert urlsplit(url).hostname == "vhost-bucket.s3.atoll.test" and "AWSAccessKeyId=" in url
    assert send(Wire("GET", url)) == (200, b"virtual")
    other_bucket = Wire("GET", url)
    other_bucket.headers["host"] = f"other-bucket.s3.atoll.test:{server.port}"
    status, answer = send(other_bucket)
    assert (status, _error_code(answer)) == (403, "SignatureDoesNotMatch")
