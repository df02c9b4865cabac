"""Which source a copy URL names (atoll.core.fromurl): a key in a linked bucket's own cold store, under its
prefix, on the configured endpoint or Azure's/AWS's public host names; the source range and MD5 headers; and
that no signature survives into what is stored or shown."""

from __future__ import annotations

import base64
import hashlib
from urllib.parse import urlsplit

import pytest

from atoll import errors
from atoll.core import fromurl
from atoll.core.models import Link


def key_of(link_url: str, source: str, **options: str) -> str | None:
    return fromurl.cold_key(Link(bucket="b", url=link_url, mode="cache", options=options), {}, urlsplit(source))


def test_azure_link_with_an_endpoint_matches_urls_under_its_prefix():
    endpoint = "http://127.0.0.1:10000/devstoreaccount1"
    assert key_of("az://cold/pre", f"{endpoint}/cold/pre/a/b.bin?sv=1&sig=x", endpoint=endpoint) == "a/b.bin"
    assert key_of("az://cold/pre", f"{endpoint}/cold/pre/a%20b?sig=x", endpoint=endpoint) == "a b"
    assert key_of("az://cold/pre", f"{endpoint}/cold/other/a", endpoint=endpoint) is None
    assert key_of("az://cold/pre", f"{endpoint}/cold2/pre/a", endpoint=endpoint) is None
    assert key_of("az://cold/pre", "http://127.0.0.1:10001/devstoreaccount1/cold/pre/a", endpoint=endpoint) is None
    assert key_of("az://cold", f"{endpoint}/cold/x", endpoint=endpoint) == "x"
    assert key_of("az://cold", f"{endpoint}/cold/", endpoint=endpoint) is None


def test_azure_and_s3_public_host_names():
    assert key_of("az://cold/p", "https://acct.blob.core.windows.net/cold/p/k?sig=1", account_name="acct") == "k"
    assert key_of("az://cold/p", "https://other.blob.core.windows.net/cold/p/k", account_name="acct") is None
    assert key_of("s3://bkt/p", "https://bkt.s3.amazonaws.com/p/k?X-Amz-Signature=1") == "k"
    assert key_of("s3://bkt/p", "https://s3.eu-west-1.amazonaws.com/bkt/p/k", region="eu-west-1") == "k"
    assert key_of("s3://bkt", "http://127.0.0.1:5000/bkt/dir/k", endpoint="http://127.0.0.1:5000") == "dir/k"
    assert key_of("file:///srv/cold", "http://127.0.0.1:5000/srv/cold/k") is None


def test_source_range_and_md5_headers():
    assert fromurl.parse_range(None) is None
    assert fromurl.parse_range("bytes=0-9") == (0, 9)
    assert fromurl.parse_range("bytes=5-5") == (5, 5)
    for bad in ("bytes=9-0", "bytes=-5", "bytes=5-", "items=0-1", "bytes=a-b", "0-1"):
        with pytest.raises(errors.InvalidArgument):
            fromurl.parse_range(bad)
    digest = hashlib.md5(b"x").digest()
    assert fromurl.md5_header(base64.b64encode(digest).decode()) == digest
    assert fromurl.md5_header(None) is None
    for bad in ("not base64!", base64.b64encode(b"short").decode()):
        with pytest.raises(errors.InvalidDigest):
            fromurl.md5_header(bad)


def test_source_urls_are_checked_and_stored_without_signatures():
    assert fromurl.redacted("https://user:pw@h.example:8443/c/b?sv=1&sig=SECRET#f") == "https://h.example:8443/c/b"
    for bad in ("", "ftp://h/x", "file:///etc/passwd", "http://", "x" * 9000, "http://[::1/x"):
        with pytest.raises(errors.InvalidArgument):
            fromurl.parse_source_url(bad)
    for forbidden in ("http://169.254.169.254/latest/meta-data", "http://0.0.0.0/x", "http://[fe80::1]/x"):
        with pytest.raises(fromurl.CopySourceError):
            fromurl.parse_source_url(forbidden)
    assert fromurl.parse_source_url("http://127.0.0.1:9/c/b?sig=1").path == "/c/b"
