"""Raw HTTP/1.1 over sockets and botocore-signed requests, for tests that need to send what no client would:
broken framing, one corrupted byte in an otherwise valid request, a body that stops half way."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import re
import socket
import zlib
from dataclasses import dataclass
from urllib.parse import quote

from botocore.auth import SIGV4_TIMESTAMP, S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

REGION = "us-east-1"
SOCKET_TIMEOUT = 10.0


# --- wire -------------------------------------------------------------------------------------------------------

@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def code(self) -> str | None:
        found = re.search(rb"<Code>([^<]*)</Code>", self.body)
        return found.group(1).decode() if found else None


def read_reply(stream, method: str) -> Reply | None:
    """One HTTP response from a buffered socket stream; None if the server closed before sending one."""
    try:
        line = stream.readline(70000)
        while line.startswith(b"HTTP/1.1 100"):
            while stream.readline(70000) not in (b"\r\n", b""):
                pass
            line = stream.readline(70000)
    except ConnectionResetError:
        return None
    if not line:
        return None
    status = int(line.split(b" ", 2)[1])
    headers: dict[str, str] = {}
    while True:
        header = stream.readline(70000)
        if header in (b"\r\n", b""):
            break
        name, _, value = header.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    if method == "HEAD" or status in (204, 304) or status < 200:
        return Reply(status, headers, b"")
    length = int(headers["content-length"])  # Atoll always frames responses with Content-Length
    body = stream.read(length)
    assert len(body) == length, f"response body cut short: {len(body)} of {length} bytes"
    return Reply(status, headers, body)


class Wire:
    """One raw TCP connection."""

    def __init__(self, port: int, timeout: float = SOCKET_TIMEOUT) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.stream = self.sock.makefile("rb")

    def send(self, data: bytes) -> bool:
        try:
            self.sock.sendall(data)
            return True
        except (BrokenPipeError, ConnectionResetError):
            return False  # the server refused early and closed; its answer may still be readable

    def reply(self, method: str = "GET") -> Reply | None:
        return read_reply(self.stream, method)

    def closed_by_server(self, wait: float) -> bool:
        self.sock.settimeout(wait)
        try:
            return self.stream.read(1) == b""
        except ConnectionResetError:
            return True
        except (socket.timeout, TimeoutError):
            return False

    def close(self) -> None:
        self.stream.close()
        self.sock.close()


# --- requests and signing ---------------------------------------------------------------------------------------

@dataclass
class Req:
    method: str
    target: str  # path and query exactly as sent
    headers: list[tuple[str, str]]
    body: bytes = b""

    def raw(self) -> bytes:
        names = {name.lower() for name, _ in self.headers}
        lines = [f"{self.method} {self.target} HTTP/1.1", *(f"{n}: {v}" for n, v in self.headers)]
        if not names & {"content-length", "transfer-encoding"} and (self.body or self.method in ("PUT", "POST")):
            lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body

    def header(self, name: str) -> str | None:
        for n, v in self.headers:
            if n.lower() == name.lower():
                return v
        return None

    def replace(self, name: str, value: str | None) -> "Req":
        """A copy with header ``name`` set to ``value`` (added if absent, removed if None)."""
        headers = [(n, v) for n, v in self.headers if n.lower() != name.lower()]
        if value is not None:
            headers.append((name, value))
        return Req(self.method, self.target, headers, self.body)

    def but(self, **changes) -> "Req":
        return Req(**{"method": self.method, "target": self.target, "headers": list(self.headers),
                      "body": self.body, **changes})


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class _Clocked:
    """botocore's add_auth with the signing time chosen by the test (skewed and expired requests)."""

    when: dt.datetime

    def add_auth(self, request):
        request.context["timestamp"] = self.when.strftime(SIGV4_TIMESTAMP)
        self._modify_request_before_signing(request)
        string_to_sign = self.string_to_sign(request, self.canonical_request(request))
        self._inject_signature_to_request(request, self.signature(string_to_sign, request))


class HeaderSigner(_Clocked, S3SigV4Auth):
    def __init__(self, credentials, when: dt.datetime, payload: str | None) -> None:
        super().__init__(credentials, "s3", REGION)
        self.when = when
        self._payload = payload

    def payload(self, request):
        return self._payload if self._payload is not None else super().payload(request)


class Presigner(_Clocked, S3SigV4QueryAuth):
    def __init__(self, credentials, when: dt.datetime, expires: int) -> None:
        super().__init__(credentials, "s3", REGION, expires=expires)
        self.when = when


def signing_key(secret: str, date: str) -> bytes:
    key = ("AWS4" + secret).encode()
    for part in (date, REGION, "s3", "aws4_request"):
        key = hmac.digest(key, part.encode(), "sha256")
    return key


class Signer:
    def __init__(self, port: int, access_key: str, secret_key: str) -> None:
        self.host = f"127.0.0.1:{port}"
        self.access_key = access_key
        self.secret_key = secret_key

    def _request(self, method, path, query, headers, body) -> AWSRequest:
        url = f"http://{self.host}{path}" + (f"?{query}" if query else "")
        return AWSRequest(method=method, url=url, data=body, headers=dict(headers))

    def sign(self, method: str, path: str, query: str = "", headers=(), body: bytes = b"", *,
             payload: str | None = None, when: dt.datetime | None = None, access_key: str | None = None,
             secret_key: str | None = None, date_header: bool = False) -> Req:
        request = self._request(method, path, query, headers, body)
        if date_header:
            request.headers["Date"] = "placeholder"  # botocore then signs Date instead of X-Amz-Date
        credentials = Credentials(access_key or self.access_key, secret_key or self.secret_key)
        HeaderSigner(credentials, when or utcnow(), payload).add_auth(request)
        sent = [("Host", self.host), *((k, v) for k, v in request.headers.items())]
        return Req(method, path + (f"?{query}" if query else ""), sent, body)

    def presign(self, method: str, path: str, query: str = "", *, expires: int = 900,
                when: dt.datetime | None = None, access_key: str | None = None,
                secret_key: str | None = None) -> Req:
        request = self._request(method, path, query, {}, b"")
        credentials = Credentials(access_key or self.access_key, secret_key or self.secret_key)
        Presigner(credentials, when or utcnow(), expires).add_auth(request)
        target = request.url.split(self.host, 1)[1]
        return Req(method, target, [("Host", self.host)])


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def md5_b64(data: bytes) -> str:
    return b64(hashlib.md5(data).digest())


def crc32_b64(data: bytes) -> str:
    return b64(zlib.crc32(data).to_bytes(4, "big"))


CHECKSUM_BYTES = {"crc32": 4, "crc32c": 4, "crc64nvme": 8, "sha1": 20, "sha256": 32}


def key_path(bucket: str, key: str) -> str:
    return f"/{bucket}/{quote(key, safe='/~')}"


def set_query_param(target: str, name: str, value: str | None, *, duplicate: bool = False) -> str:
    """``target`` with query parameter ``name`` replaced (removed if None, added again if ``duplicate``)."""
    path, _, query = target.partition("?")
    pairs = [p for p in query.split("&") if p]
    if duplicate:
        pairs.append(f"{name}={value}")
    else:
        pairs = [p for p in pairs if p.partition("=")[0] != name]
        if value is not None:
            pairs.append(f"{name}={value}")
    return path + "?" + "&".join(pairs)
