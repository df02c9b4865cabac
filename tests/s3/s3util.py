"""Helpers for the S3 semantics suite: error details from boto3 and raw SigV4-signed requests (for what boto3
will not send: several ranges, a Host header naming a virtual-hosted bucket, an unnormalised path...).
A module of its own, not conftest.py: ``from conftest import`` is ambiguous once several directories have one."""

from __future__ import annotations

import http.client
from dataclasses import dataclass
from urllib.parse import quote

import botocore.exceptions
import pytest


@dataclass
class Failure:
    code: str
    status: int
    headers: dict[str, str]
    message: str


def failure(call, *args, **kwargs) -> Failure:
    """Run a boto3 call that must fail; return its S3 error code, HTTP status and response headers."""
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        call(*args, **kwargs)
    response = exc.value.response
    return Failure(code=response["Error"].get("Code", ""), status=response["ResponseMetadata"]["HTTPStatusCode"],
                   headers=response["ResponseMetadata"].get("HTTPHeaders", {}),
                   message=response["Error"].get("Message", ""))


def status_of(response) -> int:
    return response["ResponseMetadata"]["HTTPStatusCode"]


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes


def signed_request(server, method: str, path: str, *, query: str = "", headers: dict[str, str] | None = None,
                   body: bytes = b"", host: str | None = None, access_key: str | None = None,
                   secret_key: str | None = None) -> RawResponse:
    """Send one SigV4-signed request to 127.0.0.1 with exactly this path (already URL-encoded), query and
    Host header; return status, lower-cased headers and body."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    host = host or f"127.0.0.1:{server.port}"
    url = f"http://{host}{path}" + (f"?{query}" if query else "")
    request = AWSRequest(method=method, url=url, data=body, headers={"Host": host, **(headers or {})})
    credentials = Credentials(access_key or server.access_key, secret_key or server.secret_key)
    S3SigV4Auth(credentials, "s3", "us-east-1").add_auth(request)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.putrequest(method, path + (f"?{query}" if query else ""), skip_host=True, skip_accept_encoding=True)
        for name, value in request.headers.items():
            conn.putheader(name, value)
        if body or method in ("PUT", "POST"):
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body or None)
        response = conn.getresponse()
        return RawResponse(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        conn.close()


def key_path(bucket: str, key: str) -> str:
    return f"/{bucket}/{quote(key, safe='/~')}"
