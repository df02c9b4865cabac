"""Hostile input: more than 1,000 malformed or hostile requests against a live Atoll, each with the exact S3 error
code and status it must get; afterwards the server still serves, logged no traceback, answered no 5xx (other than
the 501 NotImplemented that S3 itself uses for features a server lacks), stored nothing it rejected, and wrote no
file outside its data directory.

Requests are built byte by byte and sent over raw sockets, so broken framing is possible. Where the point is not
the signature, a request is signed with botocore's own S3 signer or presigner and exactly one thing is corrupted
afterwards. Everything random comes from generators seeded per test, so a failure reproduces.

Rejected writes all target one bucket (``NOSTORE``) and one multipart upload in it; the last test checks that both
are still empty. The tests share one private server (module scope) and run in file order; the last one checks the
server's state after all the others.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import os
import random
import re
import socket
import tempfile
import time
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from urllib.parse import quote, unquote
from xml.etree import ElementTree as ET

import pytest

from harness import REPO, AtollProcess
from fuzzwire import (CHECKSUM_BYTES, REGION, SIGV4_TIMESTAMP, SOCKET_TIMEOUT, Reply, Req, Signer, Wire, b64,
                      crc32_b64, key_path, md5_b64, set_query_param, signing_key, utcnow)

MAIN = "fz-main"  # holds the fixture objects the read cases use
NOSTORE = "fz-nostore"  # every rejected write goes here; it must stay empty
MPU_KEY = "mpu-target"
NS = "http://s3.amazonaws.com/doc/2006-03-01/"
ESCAPE_MARKER = "atoll-escape-marker"

pytestmark = pytest.mark.timeout(240)


# --- the server under attack ------------------------------------------------------------------------------------

@dataclass
class World:
    server: AtollProcess
    signer: Signer
    root: str  # everything the server may write is under root/cell
    objects: dict[str, bytes]
    upload_id: str
    sent: int = 0
    expected_501: int = 0
    categories_run: set[str] = field(default_factory=set)

    @property
    def port(self) -> int:
        return self.server.port


CATEGORIES = (
    "malformed_xml", "xml_bombs", "bad_signatures", "unknown_access_key", "skewed_dates", "presigned",
    "malformed_authorization", "content_md5", "checksums", "content_sha256", "aws_chunked", "truncated_bodies",
    "invalid_bucket_names", "key_too_long", "odd_keys", "huge_headers", "ranges", "bad_parameters",
    "header_injection", "unknown_subresources", "wrong_methods", "invalid_http", "smuggling", "pipelining",
    "head_errors",
)


@pytest.fixture(scope="module")
def world(workdir):
    root = tempfile.mkdtemp(prefix="fuzz-", dir=workdir)
    server = AtollProcess(data_dir=os.path.join(root, "cell", "data"))
    server.start()
    s3 = server.client()
    s3.create_bucket(Bucket=MAIN)
    s3.create_bucket(Bucket=NOSTORE)
    rng = random.Random(1)
    objects = {"small": rng.randbytes(1000), "empty": b"", "a": b"first object " * 10, "b": b"second " * 30}
    for key, data in objects.items():
        s3.put_object(Bucket=MAIN, Key=key, Body=data)
    upload_id = s3.create_multipart_upload(Bucket=NOSTORE, Key=MPU_KEY)["UploadId"]
    yield World(server, Signer(server.port, server.access_key, server.secret_key), root, objects, upload_id)
    server.kill()


class Run:
    """Sends the cases of one category and collects every mismatch, so a test reports all its failures at once."""

    def __init__(self, world: World, category: str) -> None:
        self.world = world
        self.category = category
        self.failures: list[str] = []
        world.categories_run.add(category)

    def send(self, request: Req | bytes, method: str | None = None, *, then_shutdown: bool = False) -> Reply | None:
        raw = request.raw() if isinstance(request, Req) else request
        method = method or (request.method if isinstance(request, Req) else raw.split(b" ", 1)[0].decode("latin-1"))
        wire = Wire(self.world.port)
        try:
            wire.send(raw)
            if then_shutdown:
                try:
                    wire.sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
            return wire.reply(method)
        finally:
            wire.close()
            self.world.sent += 1

    def expect(self, label: str, request: Req | bytes, status: int, code: str | None = None, *,
               method: str | None = None, then_shutdown: bool = False) -> Reply | None:
        """Send one case; record a failure unless the answer is ``status`` with S3 error ``code``."""
        method = method or (request.method if isinstance(request, Req) else None)
        try:
            reply = self.send(request, method, then_shutdown=then_shutdown)
        except (socket.timeout, TimeoutError):
            self.failures.append(f"{label}: no answer within {SOCKET_TIMEOUT}s")
            return None
        problem = mismatch(reply, status, code, head=method == "HEAD")
        if problem:
            self.failures.append(f"{label}: {problem}")
        if status == 501:
            self.world.expected_501 += 1
        return reply

    def fail(self, label: str, problem: str) -> None:
        self.failures.append(f"{label}: {problem}")

    def check(self) -> None:
        assert not self.failures, (f"{self.category}: {len(self.failures)} cases went wrong:\n"
                                   + "\n".join(self.failures[:40]))


def mismatch(reply: Reply | None, status: int, code: str | None, *, head: bool) -> str | None:
    if reply is None:
        return f"connection closed without an answer (want {status} {code})"
    got = f"{reply.status} {reply.code}"
    if reply.status != status:
        return f"got {got}, want {status} {code}; body {reply.body[:300]!r}"
    if reply.status >= 400:
        if "x-amz-request-id" not in reply.headers:
            return f"{got} without x-amz-request-id"
        if not head:
            if not reply.body.startswith(b"<?xml") or b"<RequestId>" not in reply.body:
                return f"{got} is not an S3 XML error: {reply.body[:300]!r}"
            if reply.code != code:
                return f"got {got}, want {status} {code}; body {reply.body[:300]!r}"
    return None


# --- 1. request documents ---------------------------------------------------------------------------------------

DELETE_DOC = (f'<Delete xmlns="{NS}"><Object><Key>k1</Key></Object><Object><Key>dir/k2</Key></Object>'
              "<Quiet>true</Quiet></Delete>")
COMPLETE_DOC = ("<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>0123456789abcdef</ETag></Part>"
                "<Part><PartNumber>2</PartNumber><ETag>fedcba9876543210</ETag></Part></CompleteMultipartUpload>")
CREATE_DOC = (f'<CreateBucketConfiguration xmlns="{NS}"><LocationConstraint>us-east-1</LocationConstraint>'
              "</CreateBucketConfiguration>")


def malformed_variants(doc: str, rng: random.Random, count: int) -> list[tuple[str, bytes]]:
    """Mutations of a well-formed document (no ';' in it, root closing at the last byte) that can never be
    well-formed: a proper prefix, a bare '&' or '<' inserted anywhere, invalid UTF-8, an unclosed or crossed tag."""
    out = []
    for i in range(count):
        kind = i % 6
        if kind == 0:
            cut = rng.randrange(1, len(doc))
            out.append((f"prefix[:{cut}]", doc[:cut].encode()))
        elif kind in (1, 2):
            at = rng.randrange(0, len(doc) + 1)
            char = "&" if kind == 1 else "<"
            out.append((f"{char!r} at {at}", (doc[:at] + char + doc[at:]).encode()))
        elif kind == 3:
            at = doc.index(">") + 1 + rng.randrange(0, 5)
            out.append((f"invalid utf-8 at {at}", doc[:at].encode() + b"\xff\xfe\xc3" + doc[at:].encode()))
        elif kind == 4:
            closing = doc.rindex("</")
            out.append(("root never closed", doc[:closing].encode()))
        else:
            out.append(("random bytes", rng.randbytes(rng.randrange(1, 400))))
    return out


def schema_invalid_delete() -> list[tuple[str, bytes]]:
    many = "".join(f"<Object><Key>k{i}</Key></Object>" for i in range(1001))
    return [
        ("no Object", f'<Delete xmlns="{NS}"><Quiet>true</Quiet></Delete>'.encode()),
        ("Object without Key", f'<Delete xmlns="{NS}"><Object><VersionId>x</VersionId></Object></Delete>'.encode()),
        ("1001 keys", f'<Delete xmlns="{NS}">{many}</Delete>'.encode()),
        ("wrong root", b"<Remove><Object><Key>k</Key></Object></Remove>"),
        ("empty body", b""),
        ("just a declaration", b'<?xml version="1.0" encoding="UTF-8"?>'),
    ]


def schema_invalid_complete() -> list[tuple[str, bytes]]:
    return [
        ("Part without PartNumber", b"<CompleteMultipartUpload><Part><ETag>x</ETag></Part></CompleteMultipartUpload>"),
        ("Part without ETag", b"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber></Part>"
                              b"</CompleteMultipartUpload>"),
        ("PartNumber not a number", b"<CompleteMultipartUpload><Part><PartNumber>one</PartNumber><ETag>x</ETag>"
                                    b"</Part></CompleteMultipartUpload>"),
        ("superscript PartNumber", "<CompleteMultipartUpload><Part><PartNumber>\u00b2</PartNumber><ETag>x</ETag>"
                                   "</Part></CompleteMultipartUpload>".encode()),
        ("negative PartNumber", b"<CompleteMultipartUpload><Part><PartNumber>-1</PartNumber><ETag>x</ETag>"
                                b"</Part></CompleteMultipartUpload>"),
        ("wrong root", b"<CompleteUpload><Part><PartNumber>1</PartNumber><ETag>x</ETag></Part></CompleteUpload>"),
        ("empty body", b""),
    ]


def schema_invalid_create() -> list[tuple[str, bytes]]:
    return [
        ("wrong root", b"<BucketConfiguration><LocationConstraint>x</LocationConstraint></BucketConfiguration>"),
        ("text only", b"us-east-1"),
        ("two roots", CREATE_DOC.encode() * 2),
    ]


def xml_document_targets(world: World, index: int):
    """(name, method, path, query) of the three operations that take a request document."""
    return [
        ("DeleteObjects", "POST", f"/{NOSTORE}", "delete="),
        ("CompleteMultipartUpload", "POST", f"/{NOSTORE}/{MPU_KEY}", f"uploadId={world.upload_id}"),
        ("CreateBucket", "PUT", f"/fz-never-created-{index}", ""),
    ]


def test_malformed_xml_is_malformedxml(world):
    run = Run(world, "malformed_xml")
    rng = random.Random(101)
    docs = {"DeleteObjects": (DELETE_DOC, schema_invalid_delete()),
            "CompleteMultipartUpload": (COMPLETE_DOC, schema_invalid_complete()),
            "CreateBucket": (CREATE_DOC, schema_invalid_create())}
    index = 0
    for name, (doc, invalid) in docs.items():
        for label, body in malformed_variants(doc, rng, 48) + invalid:
            index += 1
            target = {t[0]: t for t in xml_document_targets(world, index)}[name]
            req = world.signer.sign(target[1], target[2], target[3], body=body)
            run.expect(f"{name} {label}", req, 400, "MalformedXML")
    run.check()


BOMBS = {
    "billion laughs": ('<!DOCTYPE {root} [<!ENTITY a "aaaaaaaaaa">'
                       + "".join(f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">' for i in range(8))
                       + "]>", "&i;"),
    "quadratic blowup": ('<!DOCTYPE {root} [<!ENTITY q "' + "q" * 50_000 + '">]>', "&q;" * 2000),
    "external file entity": ('<!DOCTYPE {root} [<!ENTITY x SYSTEM "file:///etc/passwd">]>', "&x;"),
    "external http entity": ('<!DOCTYPE {root} [<!ENTITY x SYSTEM "http://127.0.0.1:9/secret">]>', "&x;"),
    "public external entity": ('<!DOCTYPE {root} [<!ENTITY x PUBLIC "-//X//Y" "file:///etc/hostname">]>', "&x;"),
    "parameter entity": ('<!DOCTYPE {root} [<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;]>', "k"),
    "internal entity": ('<!DOCTYPE {root} [<!ENTITY e "expanded">]>', "&e;"),
}


def test_xml_bombs_and_external_entities_are_refused(world):
    run = Run(world, "xml_bombs")
    bodies = {
        "DeleteObjects": lambda dtd, text: f'{dtd}<Delete><Object><Key>{text}</Key></Object></Delete>',
        "CompleteMultipartUpload": lambda dtd, text: (f"{dtd}<CompleteMultipartUpload><Part><PartNumber>1"
                                                      f"</PartNumber><ETag>{text}</ETag></Part>"
                                                      "</CompleteMultipartUpload>"),
        "CreateBucket": lambda dtd, text: (f"{dtd}<CreateBucketConfiguration><LocationConstraint>{text}"
                                           "</LocationConstraint></CreateBucketConfiguration>"),
    }
    roots = {"DeleteObjects": "Delete", "CompleteMultipartUpload": "CompleteMultipartUpload",
             "CreateBucket": "CreateBucketConfiguration"}
    index = 0
    for declaration in ("", '<?xml version="1.0" encoding="UTF-8"?>\n'):
        for bomb, (dtd, text) in BOMBS.items():
            for op, build in bodies.items():
                index += 1
                target = {t[0]: t for t in xml_document_targets(world, 1000 + index)}[op]
                body = (declaration + build(dtd.replace("{root}", roots[op]), text)).encode()
                req = world.signer.sign(target[1], target[2], target[3], body=body)
                run.expect(f"{op} {bomb}", req, 400, "MalformedXML")
    nested = "<a>" * 5000 + "</a>" * 5000  # deep, but inside every size limit
    for op, doc in (("DeleteObjects", f"<Delete>{nested}</Delete>"),
                    ("CompleteMultipartUpload", f"<CompleteMultipartUpload>{nested}</CompleteMultipartUpload>")):
        target = {t[0]: t for t in xml_document_targets(world, 0)}[op]
        run.expect(f"{op} deep nesting", world.signer.sign(target[1], target[2], target[3], body=doc.encode()), 400,
                   "MalformedXML")
    limits = {"DeleteObjects": 2 << 20, "CompleteMultipartUpload": 4 << 20, "CreateBucket": 64 << 10}
    for op, limit in limits.items():
        target = {t[0]: t for t in xml_document_targets(world, 2000)}[op]
        body = b"<x>" + b" " * (limit - 6) + b"</x>" + b" " * 10
        run.expect(f"{op} document over {limit} bytes", world.signer.sign(target[1], target[2], target[3],
                                                                          body=body), 400, "MaxMessageLengthExceeded")
    run.check()


# --- 2. authentication ------------------------------------------------------------------------------------------

def base_requests(world: World, rng: random.Random) -> list[Req]:
    """Valid signed requests of several shapes; the auth cases corrupt one thing in each."""
    sign = world.signer.sign
    body = rng.randbytes(rng.randrange(1, 3000))
    return [
        sign("GET", f"/{MAIN}/small"),
        sign("HEAD", f"/{MAIN}/small"),
        sign("GET", f"/{MAIN}", "list-type=2&prefix=a"),
        sign("GET", "/"),
        sign("PUT", f"/{NOSTORE}/signed-{rng.randrange(10**6)}", body=body, headers={"Content-Type": "text/x"}),
        sign("DELETE", f"/{NOSTORE}/whatever"),
        sign("POST", f"/{NOSTORE}", "delete=", body=DELETE_DOC.encode()),
        sign("GET", f"/{MAIN}/small", headers={"Range": "bytes=0-9"}),
    ]


def corrupt_signature(req: Req, rng: random.Random) -> tuple[str, Req]:
    auth = req.header("Authorization")
    signature = auth.rsplit("Signature=", 1)[1]
    kind = rng.randrange(9)
    if kind == 0:
        at = rng.randrange(len(signature))
        flipped = signature[:at] + ("0" if signature[at] != "0" else "1") + signature[at + 1:]
        return "one signature digit changed", req.replace("Authorization", auth.replace(signature, flipped))
    if kind == 1:
        return "signature cut short", req.replace("Authorization", auth.replace(signature, signature[:-1]))
    if kind == 2:
        path, sep, query = req.target.partition("?")
        return "path changed after signing", req.but(target=path + "x" + sep + query)
    if kind == 3:
        sep = "&" if "?" in req.target else "?"
        return "query parameter added after signing", req.but(target=req.target + sep + "prefix=zz")
    if kind == 4:
        other = {"GET": "DELETE", "HEAD": "GET", "PUT": "POST", "DELETE": "GET", "POST": "PUT"}[req.method]
        return f"method changed to {other}", req.but(method=other)
    if kind == 5:
        stamp = dt.datetime.strptime(req.header("X-Amz-Date"), SIGV4_TIMESTAMP)
        moved = stamp + dt.timedelta(seconds=1)
        if moved.date() != stamp.date():
            moved = stamp - dt.timedelta(seconds=1)
        return "x-amz-date moved by a second", req.replace("X-Amz-Date", moved.strftime(SIGV4_TIMESTAMP))
    if kind == 6:
        return "host changed", req.replace("Host", "localhost:" + req.header("Host").rsplit(":", 1)[1])
    if kind == 7:
        other = hashlib.sha256(rng.randbytes(8)).hexdigest()
        return "x-amz-content-sha256 changed after signing", req.replace("X-Amz-Content-SHA256", other)
    # The same instant moved from the signed X-Amz-Date to an unsigned Date header.
    stamp = dt.datetime.strptime(req.header("X-Amz-Date"), SIGV4_TIMESTAMP).replace(tzinfo=dt.timezone.utc)
    return "signed x-amz-date replaced by Date", req.replace("X-Amz-Date", None).replace(
        "Date", formatdate(stamp.timestamp(), usegmt=True))


def test_bad_signatures_are_signaturedoesnotmatch(world):
    run = Run(world, "bad_signatures")
    rng = random.Random(202)
    for round_ in range(15):
        for base in base_requests(world, rng):
            label, req = corrupt_signature(base, rng)
            run.expect(f"{base.method} {base.target}: {label}", req, 403, "SignatureDoesNotMatch")
    for i, base in enumerate(base_requests(world, rng)):
        wrong_secret = world.signer.sign(base.method, base.target.partition("?")[0], base.target.partition("?")[2],
                                         body=base.body, secret_key="wrong-" + world.server.secret_key)
        run.expect(f"{base.method} {base.target}: wrong secret", wrong_secret, 403, "SignatureDoesNotMatch")
    run.check()


def test_unknown_access_key_is_invalidaccesskeyid(world):
    run = Run(world, "unknown_access_key")
    rng = random.Random(303)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0234567"
    for i in range(30):
        access_key = "AK" + "".join(rng.choice(alphabet) for _ in range(rng.randrange(8, 30)))
        secret = base64.b64encode(rng.randbytes(30)).decode()
        method, path = rng.choice([("GET", f"/{MAIN}/small"), ("PUT", f"/{NOSTORE}/k{i}"), ("GET", "/"),
                                   ("DELETE", f"/{MAIN}/small"), ("GET", f"/{MAIN}")])
        req = world.signer.sign(method, path, body=b"x" if method == "PUT" else b"", access_key=access_key,
                                secret_key=secret)
        run.expect(f"{method} {path} as {access_key}", req, 403, "InvalidAccessKeyId")
    for i in range(6):
        access_key = "AKNOBODY" + str(i)
        req = world.signer.presign("GET", f"/{MAIN}/small", access_key=access_key, secret_key="s" * 40)
        run.expect(f"presigned as {access_key}", req, 403, "InvalidAccessKeyId")
    run.check()


def test_skewed_dates_are_requesttimetooskewed(world):
    run = Run(world, "skewed_dates")
    rng = random.Random(404)
    for i in range(40):
        offset = rng.choice((-1, 1)) * rng.uniform(16 * 60, 5 * 365 * 86400)
        when = utcnow() + dt.timedelta(seconds=offset)
        date_header = i % 3 == 0
        req = world.signer.sign("GET", f"/{MAIN}/small", when=when, date_header=date_header)
        run.expect(f"signed {offset:+.0f}s off ({'Date' if date_header else 'X-Amz-Date'})", req, 403,
                   "RequestTimeTooSkewed")
    for offset in (-600, -120, 120, 600):  # inside the 15-minute window S3 allows
        when = utcnow() + dt.timedelta(seconds=offset)
        run.expect(f"signed {offset:+d}s off", world.signer.sign("GET", f"/{MAIN}/small", when=when), 200)
    run.check()


def test_presigned_urls_expired_tampered_or_malformed(world):
    run = Run(world, "presigned")
    rng = random.Random(505)
    presign = world.signer.presign
    path = f"/{MAIN}/small"
    for i in range(24):
        expires = rng.randrange(1, 3600)
        age = expires + rng.randrange(5, 6 * 86400)
        method = rng.choice(("GET", "PUT", "HEAD", "DELETE"))
        req = presign(method, path if method != "PUT" else f"/{NOSTORE}/presigned-{i}", expires=expires,
                      when=utcnow() - dt.timedelta(seconds=age))
        if method == "PUT":
            req = req.but(body=b"late")
        run.expect(f"{method} presigned {age}s ago for {expires}s", req, 403, "AccessDenied")
    for i in range(6):
        ahead = rng.randrange(16 * 60, 30 * 86400)
        req = presign("GET", path, expires=3600, when=utcnow() + dt.timedelta(seconds=ahead))
        run.expect(f"presigned {ahead}s in the future", req, 403, "AccessDenied")
    for i in range(8):
        req = presign("GET", path, expires=600)
        path_part, _, query = req.target.partition("?")
        signature = re.search(r"X-Amz-Signature=([0-9a-f]+)", query).group(1)
        at = rng.randrange(64)
        bad = signature[:at] + ("a" if signature[at] != "a" else "b") + signature[at + 1:]
        run.expect("presigned signature digit changed", req.but(target=req.target.replace(signature, bad)), 403,
                   "SignatureDoesNotMatch")
        run.expect("presigned path changed", req.but(target=f"/{MAIN}/a?{query}"), 403, "SignatureDoesNotMatch")
        run.expect("presigned method changed", req.but(method="DELETE"), 403, "SignatureDoesNotMatch")
    for expires in ("604801", "999999999", "abc", "-5", "1e3"):
        req = presign("GET", path, expires=600)
        run.expect(f"X-Amz-Expires={expires}", req.but(target=set_query_param(req.target, "X-Amz-Expires", expires)),
                   400, "InvalidArgument")
    for name in ("X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires", "X-Amz-SignedHeaders", "X-Amz-Signature"):
        req = presign("GET", path, expires=600)
        run.expect(f"{name} missing", req.but(target=set_query_param(req.target, name, None)), 400,
                   "AuthorizationQueryParametersError")
        run.expect(f"{name} twice", req.but(target=set_query_param(req.target, name, "x", duplicate=True)), 400,
                   "AuthorizationQueryParametersError")
    for value in ("2024-01-01T00:00:00Z", "20240101", "20241301T000000Z", "garbage"):
        req = presign("GET", path, expires=600)
        run.expect(f"X-Amz-Date={value}", req.but(target=set_query_param(req.target, "X-Amz-Date", value)), 400,
                   "AuthorizationQueryParametersError")
    req = presign("GET", path, expires=600)
    run.expect("X-Amz-Algorithm=AWS4-HMAC-SHA1",
               req.but(target=set_query_param(req.target, "X-Amz-Algorithm", "AWS4-HMAC-SHA1")), 400,
               "AuthorizationQueryParametersError")
    both = world.signer.sign("GET", path)
    run.expect("header and query auth together", both.but(target=req.target), 400, "InvalidArgument")
    reply = run.expect("a valid presigned GET still works", presign("GET", path, expires=600), 200)
    if reply is not None and reply.body != world.objects["small"]:
        run.fail("valid presigned GET", "wrong body")
    run.check()


GARBAGE_CHARS = [chr(c) for c in range(33, 256) if c != 127]  # what HTTP allows in a header value, bar spaces


def test_malformed_authorization_headers(world):
    run = Run(world, "malformed_authorization")
    rng = random.Random(606)
    base = world.signer.sign("GET", f"/{MAIN}/small")
    auth = base.header("Authorization")
    credential = re.search(r"Credential=([^,]+)", auth).group(1)
    access_key, date, region, _, _ = credential.split("/")
    signature = auth.rsplit("Signature=", 1)[1]
    malformed = {
        "scheme only": "AWS4-HMAC-SHA256",
        "no SignedHeaders": f"AWS4-HMAC-SHA256 Credential={credential}, Signature={signature}",
        "no Signature": f"AWS4-HMAC-SHA256 Credential={credential}, SignedHeaders=host",
        "no Credential": f"AWS4-HMAC-SHA256 SignedHeaders=host, Signature={signature}",
        "credential is only a key": f"AWS4-HMAC-SHA256 Credential={access_key}, SignedHeaders=host, "
                                    f"Signature={signature}",
        "credential service ec2": auth.replace("/s3/", "/ec2/"),
        "credential terminator": auth.replace("aws4_request", "aws5_request"),
        "credential date short": auth.replace(f"/{date}/", f"/{date[:7]}/"),
        "credential date not digits": auth.replace(f"/{date}/", "/2024AB01/"),
        "credential empty region": auth.replace(f"/{region}/", "//"),
        "credential date differs from x-amz-date": auth.replace(f"/{date}/", "/20000101/"),
        "host not signed": re.sub(r"SignedHeaders=[^,]+", "SignedHeaders=x-amz-date", auth),
    }
    for label, value in malformed.items():
        run.expect(label, base.replace("Authorization", value), 400, "AuthorizationHeaderMalformed")
    unsupported = {
        "Bearer": "Bearer abc.def.ghi",
        "Basic": "Basic " + base64.b64encode(b"user:pass").decode(),
        "empty": "",
        "lower-case scheme": auth.replace("AWS4-HMAC-SHA256", "aws4-hmac-sha256"),
        "SHA512 scheme": auth.replace("AWS4-HMAC-SHA256", "AWS4-HMAC-SHA512"),
    }
    for label, value in unsupported.items():
        run.expect(label, base.replace("Authorization", value), 400, "InvalidRequest")
    sigv2 = f"AWS {access_key}:{base64.b64encode(rng.randbytes(20)).decode()}"  # SigV2 is verified, and fails
    run.expect("SigV2 with a made-up signature", base.replace("Authorization", sigv2), 403, "SignatureDoesNotMatch")
    for i in range(24):
        garbage = "".join(rng.choice(GARBAGE_CHARS) for _ in range(rng.randrange(1, 300)))
        if garbage.startswith("AWS4-HMAC-SHA256"):
            garbage = "X" + garbage
        run.expect(f"garbage authorization #{i}", base.replace("Authorization", garbage), 400, "InvalidRequest")
    for value in ("2024-01-01T00:00:00Z", "20240101T000000", "20241301T000000Z", "20240101T250000Z", "now", ""):
        run.expect(f"x-amz-date {value!r}", base.replace("X-Amz-Date", value), 403, "AccessDenied")
    run.expect("no x-amz-content-sha256", base.replace("X-Amz-Content-SHA256", None), 400, "InvalidRequest")
    for value in ("abc", "UNSIGNED", "0" * 63, "g" * 64, "STREAMING-AWS4-HMAC-SHA256"):
        run.expect(f"x-amz-content-sha256 {value!r}", base.replace("X-Amz-Content-SHA256", value), 400,
                   "InvalidArgument")
    for name in ("x-amz-meta-added", "x-amz-copy-source", "x-amz-acl"):
        run.expect(f"unsigned {name}", base.replace(name, "x"), 403, "AccessDenied")
    run.check()


# --- 3. body integrity ------------------------------------------------------------------------------------------

def body_of(rng: random.Random) -> bytes:
    """Mostly small bodies; some past the 256 KiB that ingest writes in one hop, to take the pipelined path."""
    return rng.randbytes(rng.choice((rng.randrange(0, 5000), rng.randrange(300_000, 1_200_000))))


def upload_targets(world: World, key: str) -> list[tuple[str, str, str]]:
    """(label, path, query) for PutObject and UploadPart into the no-store bucket."""
    return [("PutObject", key_path(NOSTORE, key), ""),
            ("UploadPart", key_path(NOSTORE, MPU_KEY), f"partNumber=7&uploadId={world.upload_id}")]


def test_content_md5_wrong_or_invalid(world):
    run = Run(world, "content_md5")
    rng = random.Random(707)
    invalid_md5 = ["abc", "!!!!", b64(b"x" * 15), b64(b"x" * 17), hashlib.md5(b"x").hexdigest(), "", "====",
                   b64(b"x" * 16)[:-2]]
    for i in range(24):
        body = body_of(rng)
        for label, path, query in upload_targets(world, f"md5-{i}"):
            wrong = md5_b64(body + b"!")
            req = world.signer.sign("PUT", path, query, {"Content-MD5": wrong}, body)
            run.expect(f"{label} wrong Content-MD5 ({len(body)} bytes)", req, 400, "BadDigest")
        invalid = invalid_md5[i % len(invalid_md5)]
        label, path, query = upload_targets(world, f"md5-invalid-{i}")[i % 2]
        req = world.signer.sign("PUT", path, query, {"Content-MD5": invalid}, body)
        run.expect(f"{label} invalid Content-MD5 {invalid!r}", req, 400, "InvalidDigest")
    for i, invalid in enumerate(invalid_md5):
        doc = DELETE_DOC.encode()
        run.expect("DeleteObjects wrong Content-MD5",
                   world.signer.sign("POST", f"/{NOSTORE}", "delete=", {"Content-MD5": md5_b64(doc[:-1])}, doc),
                   400, "BadDigest")
        run.expect(f"DeleteObjects invalid Content-MD5 {invalid!r}",
                   world.signer.sign("POST", f"/{NOSTORE}", "delete=", {"Content-MD5": invalid}, doc),
                   400, "InvalidDigest")
    run.check()


def test_checksum_headers_wrong_or_invalid(world):
    run = Run(world, "checksums")
    rng = random.Random(808)
    for i in range(30):
        algorithm = list(CHECKSUM_BYTES)[i % 5]
        body = body_of(rng)
        label, path, query = upload_targets(world, f"checksum-{i}")[i % 2]
        header = f"x-amz-checksum-{algorithm}"
        wrong = b64(rng.randbytes(CHECKSUM_BYTES[algorithm]))
        run.expect(f"{label} wrong {algorithm} ({len(body)} bytes)",
                   world.signer.sign("PUT", path, query, {header: wrong}, body), 400, "BadDigest")
        invalid = rng.choice(("abc", b64(rng.randbytes(CHECKSUM_BYTES[algorithm] + 1)), "!!!!", ""))
        run.expect(f"{label} invalid {algorithm} {invalid!r}",
                   world.signer.sign("PUT", path, query, {header: invalid}, body), 400, "InvalidRequest")
    for i in range(6):
        body = rng.randbytes(100)
        headers = {"x-amz-checksum-crc32": crc32_b64(body), "x-amz-checksum-sha1": b64(hashlib.sha1(body).digest())}
        run.expect("two checksum headers", world.signer.sign("PUT", key_path(NOSTORE, f"two-{i}"), "", headers, body),
                   400, "InvalidRequest")
        headers = {"Content-MD5": md5_b64(body), "x-amz-checksum-crc32": crc32_b64(body + b"x")}
        run.expect("right Content-MD5, wrong crc32",
                   world.signer.sign("PUT", key_path(NOSTORE, f"mix-{i}"), "", headers, body), 400, "BadDigest")
    run.check()


def test_content_sha256_mismatch(world):
    run = Run(world, "content_sha256")
    rng = random.Random(909)
    for i in range(30):
        body = body_of(rng)
        label, path, query = upload_targets(world, f"sha-{i}")[i % 2]
        claimed = hashlib.sha256(body + b"tampered").hexdigest()
        req = world.signer.sign("PUT", path, query, body=body, payload=claimed)
        run.expect(f"{label} body differs from x-amz-content-sha256 ({len(body)} bytes)", req, 400,
                   "XAmzContentSHA256Mismatch")
    run.check()


# --- 4. aws-chunked ---------------------------------------------------------------------------------------------

def frame_unsigned(chunks: list[bytes], trailer: str) -> bytes:
    out = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks if c) + b"0\r\n"
    return out + (trailer.encode() + b"\r\n" if trailer else b"") + b"\r\n"


def frame_signed(req: Req, secret: str, chunks: list[bytes]) -> tuple[bytes, list[str]]:
    """The body of a STREAMING-AWS4-HMAC-SHA256-PAYLOAD request, chunk signatures chained from the request's."""
    amz_date = req.header("X-Amz-Date")
    scope = f"{amz_date[:8]}/{REGION}/s3/aws4_request"
    key = signing_key(secret, amz_date[:8])
    previous = req.header("Authorization").rsplit("Signature=", 1)[1]
    empty = hashlib.sha256(b"").hexdigest()
    out, signatures = [], []
    for data in [c for c in chunks if c] + [b""]:
        string_to_sign = (f"AWS4-HMAC-SHA256-PAYLOAD\n{amz_date}\n{scope}\n{previous}\n{empty}\n"
                          f"{hashlib.sha256(data).hexdigest()}")
        previous = hmac.new(key, string_to_sign.encode(), "sha256").hexdigest()
        signatures.append(previous)
        out.append(b"%x;chunk-signature=%s\r\n%s\r\n" % (len(data), previous.encode(), data))
    return b"".join(out), signatures


def split(data: bytes, rng: random.Random) -> list[bytes]:
    cuts = sorted(rng.sample(range(1, len(data)), min(3, len(data) - 1))) if len(data) > 1 else []
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]


def unsigned_trailer_case(world: World, rng: random.Random, path: str, query: str, kind: str):
    data = body_of(rng) or b"z"
    chunks = split(data, rng)
    trailer = f"x-amz-checksum-crc32:{crc32_b64(data)}"
    decoded = len(data)
    body = frame_unsigned(chunks, trailer)
    expected = (400, "IncompleteBody")
    declared_trailer = "x-amz-checksum-crc32"
    if kind == "cut inside data":
        first = b"%x\r\n" % len(chunks[0])
        body = body[: len(first) + rng.randrange(0, len(chunks[0]))]
    elif kind == "cut after final chunk":
        body = body[: body.rindex(b"0\r\n") + 3]
    elif kind == "chunk size not hex":
        body = b"zz" + body[body.index(b"\r\n"):]
        expected = (400, "InvalidRequest")
    elif kind == "no CRLF after chunk data":
        first = len(b"%x\r\n" % len(chunks[0])) + len(chunks[0])
        body = body[:first] + b"XX" + body[first + 2:]
        expected = (400, "InvalidRequest")
    elif kind == "decoded length too large":
        decoded += rng.randrange(1, 1000)
    elif kind == "decoded length too small":
        decoded -= 1
        expected = (400, "InvalidRequest")
    elif kind == "wrong trailer checksum":
        body = frame_unsigned(chunks, f"x-amz-checksum-crc32:{crc32_b64(data + b'x')}")
        expected = (400, "BadDigest")
    elif kind == "trailer not name:value":
        body = frame_unsigned(chunks, "this is not a header")
        expected = (400, "MalformedTrailerError")
    elif kind == "other trailer than declared":
        body = frame_unsigned(chunks, f"x-amz-checksum-sha1:{b64(hashlib.sha1(data).digest())}")
        expected = (400, "InvalidRequest")
    elif kind == "bytes after the end":
        body += b"5\r\nextra\r\n"
        expected = (400, "InvalidRequest")
    elif kind == "no decoded length":
        decoded = None
        expected = (411, "MissingContentLength")
    headers = {"Content-Encoding": "aws-chunked", "x-amz-trailer": declared_trailer}
    if decoded is not None:
        headers["x-amz-decoded-content-length"] = str(decoded)
    req = world.signer.sign("PUT", path, query, headers, body, payload="STREAMING-UNSIGNED-PAYLOAD-TRAILER")
    return req, expected


def signed_case(world: World, rng: random.Random, path: str, query: str, kind: str):
    data = body_of(rng) or b"z"
    chunks = split(data, rng)
    headers = {"Content-Encoding": "aws-chunked", "x-amz-decoded-content-length": str(len(data))}
    if kind == "decoded length too large":
        headers["x-amz-decoded-content-length"] = str(len(data) + 10)
    # botocore signs the request without the body (the payload hash is the STREAMING literal).
    req = world.signer.sign("PUT", path, query, headers, b"", payload="STREAMING-AWS4-HMAC-SHA256-PAYLOAD")
    body, signatures = frame_signed(req, world.server.secret_key, chunks)
    expected = (403, "SignatureDoesNotMatch")
    if kind == "chunk signature changed":
        victim = rng.choice(signatures)
        body = body.replace(victim.encode(), victim[:-1].encode() + (b"0" if victim[-1] != "0" else b"1"))
    elif kind == "chunk signature missing":
        body = re.sub(rb";chunk-signature=[0-9a-f]{64}", b"", body, count=1)
    elif kind == "chunk data changed":
        at = body.index(b"\r\n") + 2 + rng.randrange(len(chunks[0]))
        body = body[:at] + bytes([body[at] ^ 0x55]) + body[at + 1:]
    elif kind == "chunks reordered" and len(chunks) > 1:
        framed = [b"%x;chunk-signature=%s\r\n%s\r\n" % (len(c), s.encode(), c) for c, s in zip(chunks, signatures)]
        body = framed[1] + framed[0] + b"".join(framed[2:]) + body[body.rindex(b"0;chunk-signature="):]
    elif kind == "chunks reordered":  # one chunk only: give it the final chunk's signature instead
        body = body.replace(signatures[0].encode(), signatures[-1].encode(), 1)
    elif kind == "cut inside data":
        at = body.index(b"\r\n") + 2 + rng.randrange(len(chunks[0]))
        body = body[:at]
        expected = (400, "IncompleteBody")
    elif kind == "decoded length too large":
        expected = (400, "IncompleteBody")
    elif kind == "final chunk missing":
        body = body[: body.rindex(b"0;chunk-signature=")]
        expected = (400, "IncompleteBody")
    return req.but(body=body).replace("Content-Length", str(len(body))), expected


UNSIGNED_KINDS = ("cut inside data", "cut after final chunk", "chunk size not hex", "no CRLF after chunk data",
                  "decoded length too large", "decoded length too small", "wrong trailer checksum",
                  "trailer not name:value", "other trailer than declared", "bytes after the end", "no decoded length")
SIGNED_KINDS = ("chunk signature changed", "chunk signature missing", "chunk data changed", "chunks reordered",
                "cut inside data", "decoded length too large", "final chunk missing")


def test_aws_chunked_bodies_truncated_or_garbled(world):
    run = Run(world, "aws_chunked")
    rng = random.Random(1010)
    for round_ in range(4):
        for kind in UNSIGNED_KINDS:
            label, path, query = upload_targets(world, f"chunked-{round_}")[rng.randrange(2)]
            req, (status, code) = unsigned_trailer_case(world, rng, path, query, kind)
            run.expect(f"{label} unsigned-trailer {kind}", req, status, code)
        for kind in SIGNED_KINDS:
            label, path, query = upload_targets(world, f"signed-{round_}")[rng.randrange(2)]
            req, (status, code) = signed_case(world, rng, path, query, kind)
            run.expect(f"{label} signed {kind}", req, status, code)
    # The framing the tests build is right: the same requests, uncorrupted, store the object (in MAIN).
    data = b"0123456789" * 1000
    req = world.signer.sign("PUT", f"/{MAIN}/chunked-control", "",
                            {"Content-Encoding": "aws-chunked", "x-amz-decoded-content-length": str(len(data))},
                            b"", payload="STREAMING-AWS4-HMAC-SHA256-PAYLOAD")
    body, _ = frame_signed(req, world.server.secret_key, split(data, rng))
    run.expect("signed aws-chunked control", req.but(body=body).replace("Content-Length", str(len(body))), 200)
    trailer = f"x-amz-checksum-crc32:{crc32_b64(data)}"
    req = world.signer.sign("PUT", f"/{MAIN}/chunked-control2", "",
                            {"Content-Encoding": "aws-chunked", "x-amz-decoded-content-length": str(len(data)),
                             "x-amz-trailer": "x-amz-checksum-crc32"},
                            frame_unsigned(split(data, rng), trailer), payload="STREAMING-UNSIGNED-PAYLOAD-TRAILER")
    run.expect("unsigned-trailer aws-chunked control", req, 200)
    for key in ("chunked-control", "chunked-control2"):
        reply = run.send(world.signer.sign("GET", f"/{MAIN}/{key}"))
        if reply is None or reply.body != data:
            run.fail(key, "did not read back what was written")
    run.check()


# --- 5. bodies cut off by the client ----------------------------------------------------------------------------

def test_truncated_plain_bodies_store_nothing(world):
    run = Run(world, "truncated_bodies")
    rng = random.Random(1111)
    for i in range(20):
        key = f"truncated-{i}"
        body = rng.randbytes(rng.choice((1000, 100_000, 2_000_000)))
        payload = "UNSIGNED-PAYLOAD" if i % 2 else None
        extra = {"Expect": "100-continue"} if i % 4 == 1 else {}
        req = world.signer.sign("PUT", key_path(NOSTORE, key), body=body, payload=payload, headers=extra)
        raw = req.raw()
        cut = len(raw) - len(body) + rng.randrange(0, len(body))
        wire = Wire(world.port)
        try:
            wire.send(raw[:cut])
            world.sent += 1
            if i % 3 == 0:
                # Half-close: the server sees the end of the stream, so the body can never complete.
                wire.sock.shutdown(socket.SHUT_WR)
                started = time.monotonic()
                try:
                    reply = wire.reply("PUT")
                except (socket.timeout, TimeoutError):
                    reply = None
                if reply is not None and not 400 <= reply.status < 500:
                    run.fail(f"{key} half-closed after {cut} bytes", f"answered {reply.status}")
                if time.monotonic() - started > 5:
                    run.fail(f"{key} half-closed after {cut} bytes", "server held the connection past 5 s")
        finally:
            wire.close()
    time.sleep(0.3)  # the server notices the closed connections on its next loop turn
    for i in range(20):
        key = f"truncated-{i}"
        run.expect(f"HEAD {key} after the client gave up", world.signer.sign("HEAD", key_path(NOSTORE, key)), 404)
    # Truncated Transfer-Encoding: chunked bodies, the framing botocore uses for aws-chunked uploads.
    for i in range(6):
        key = f"truncated-te-{i}"
        data = rng.randbytes(5000)
        req = world.signer.sign("PUT", key_path(NOSTORE, key), body=b"", payload="UNSIGNED-PAYLOAD",
                                headers={"Transfer-Encoding": "chunked"})
        raw = req.raw() + b"%x\r\n%s\r\n" % (len(data), data)
        wire = Wire(world.port)
        try:
            wire.send(raw[: len(raw) - rng.randrange(1, 4000)])
            world.sent += 1
        finally:
            wire.close()
    time.sleep(0.3)
    for i in range(6):
        key = f"truncated-te-{i}"
        run.expect(f"HEAD {key}", world.signer.sign("HEAD", key_path(NOSTORE, key)), 404)
    run.check()


# --- 6. names ---------------------------------------------------------------------------------------------------

INVALID_BUCKET_NAMES = [
    "ab", "a", "a" * 64, "-abc", "abc-", "a..b", "a.-b", "a-.b", "192.168.5.4", "xn--abc", "sthree-abc",
    "abc-s3alias", "abc--ol-s3", "under_score", "UPPER", "MixedCase", "sp ace", "b\u00fccket", "tab\tname",
    "semi;colon", "dot.", ".dot", "a!b", "a~b", "a*b", "a'b", "a(b)", "quote\"d", "percent%d", "plus+b", "comma,b",
    "\u65e5\u672c\u8a9e", "null-\x01-byte", "at@b", "hash#b", "colon:b", "eq=b", "brace{b}", "dollar$b", "ab\u200b",
]


def test_invalid_bucket_names(world):
    run = Run(world, "invalid_bucket_names")
    for name in INVALID_BUCKET_NAMES:
        req = world.signer.sign("PUT", "/" + quote(name, safe=""))
        run.expect(f"CreateBucket {name!r}", req, 400, "InvalidBucketName")
    run.check()


def test_keys_longer_than_1024_bytes(world):
    run = Run(world, "key_too_long")
    rng = random.Random(1212)
    keys = ["k" * 1025, "k" * 2048, "\u00e9" * 513, "\u65e5" * 342, "a/" * 513, "x" * 4000]
    keys += ["".join(rng.choice("abc/-_") for _ in range(rng.randrange(1025, 3000))) for _ in range(4)]
    for key in keys:
        path = key_path(NOSTORE, key)
        run.expect(f"PutObject {len(key.encode())}-byte key", world.signer.sign("PUT", path, body=b"x"), 400,
                   "KeyTooLongError")
        run.expect(f"CreateMultipartUpload {len(key.encode())}-byte key", world.signer.sign("POST", path, "uploads="),
                   400, "KeyTooLongError")
        copy = world.signer.sign("PUT", path, headers={"x-amz-copy-source": f"/{MAIN}/small"})
        run.expect(f"CopyObject to a {len(key.encode())}-byte key", copy, 400, "KeyTooLongError")
    exactly = "e" * 1024
    run.expect("a 1024-byte key is fine", world.signer.sign("PUT", key_path(MAIN, exactly), body=b"ok"), 200)
    run.check()


ODD_KEYS = [
    f"../{ESCAPE_MARKER}-1", f"../../{ESCAPE_MARKER}-2", f"a/../../../{ESCAPE_MARKER}-3", f"./{ESCAPE_MARKER}-4",
    f"/{ESCAPE_MARKER}-5", f"..\\..\\{ESCAPE_MARKER}-6", "..", ".", "...", "a//b", "//double", "trailing/",
    "dir/./x", "dir/../x", "sp ace", "tab\tkey", "ctrl\x01\x02\x1f", "del\x7f", "new\nline", "cr\rkey",
    "unicode-\u65e5\u672c\u8a9e-\u2713-\u00e9", "emoji-\U0001F642", "percent%25%2F", "plus+sign", "question?mark",
    "hash#tag", "amp&eq=", "back\\slash", "semi;colon", "quote\"'", "<xml>&amp;", "~tilde", "CON", "nul.txt",
    "d/" * 300 + "deep", "k" * 1024, "\u00e9" * 512, "white space at end ", " leading", "*?[]{}",
]


def test_odd_keys_round_trip_and_stay_in_the_data_dir(world):
    run = Run(world, "odd_keys")
    rng = random.Random(1313)
    bucket = "fz-odd"
    run.expect("create the odd-keys bucket", world.signer.sign("PUT", f"/{bucket}"), 200)
    written = {}
    for key in ODD_KEYS:
        data = rng.randbytes(rng.randrange(0, 2000))
        written[key] = data
        path = key_path(bucket, key)
        run.expect(f"PUT {key!r}", world.signer.sign("PUT", path, body=data), 200)
        reply = run.expect(f"GET {key!r}", world.signer.sign("GET", path), 200)
        if reply is not None and reply.status == 200 and reply.body != data:
            run.fail(f"GET {key!r}", "returned other bytes than were written")
        reply = run.expect(f"HEAD {key!r}", world.signer.sign("HEAD", path), 200)
        if reply is not None and reply.headers.get("content-length") != str(len(data)):
            run.fail(f"HEAD {key!r}", f"Content-Length {reply.headers.get('content-length')}, want {len(data)}")
    listed: list[str] = []
    token = None
    for _ in range(10):
        query = "encoding-type=url&list-type=2&max-keys=17" + (f"&continuation-token={quote(token, safe='')}"
                                                               if token else "")
        reply = run.expect("ListObjectsV2 of odd keys", world.signer.sign("GET", f"/{bucket}", query), 200)
        if reply is None or reply.status != 200:
            break
        doc = ET.fromstring(reply.body)
        listed += [unquote(e.text or "") for e in doc.iter(f"{{{NS}}}Key")]
        token_elem = doc.find(f"{{{NS}}}NextContinuationToken")
        if token_elem is None:
            break
        token = token_elem.text
    if sorted(listed) != sorted(written):
        run.fail("listing", f"listed {len(listed)} keys, wrote {len(written)}: "
                            f"{sorted(set(written) ^ set(listed))[:10]!r}")
    if listed != sorted(listed, key=lambda k: k.encode()):
        run.fail("listing", "keys are not in UTF-8 binary order")
    run.expect("ListObjects without encoding-type", world.signer.sign("GET", f"/{bucket}"), 200)
    run.check()
    assert_nothing_outside_data_dir(world)


def assert_nothing_outside_data_dir(world: World) -> None:
    """Every file the server created is under <root>/cell/data (or the fixture's log dir next to it); no file
    anywhere nearby is named after an escaping key."""
    data_dir = Path(world.server.data_dir).resolve()
    allowed = (data_dir, Path(str(data_dir) + "-logs"))
    strays = []
    for dirpath, dirnames, filenames in os.walk(world.root):
        for name in filenames + dirnames:
            path = Path(dirpath, name).resolve()
            if not any(path == a or a in path.parents or path in a.parents for a in allowed):
                strays.append(str(path))
            if ESCAPE_MARKER in name:
                strays.append(str(path))
    for base in (Path(world.root).parent, REPO, Path(tempfile.gettempdir()), Path("/")):
        for entry in os.scandir(base):
            if ESCAPE_MARKER in entry.name:
                strays.append(entry.path)
    assert not strays, f"files outside the data directory: {strays[:20]}"


# --- 7. heads -----------------------------------------------------------------------------------------------------

def test_huge_and_too_many_headers(world):
    run = Run(world, "huge_headers")
    rng = random.Random(1414)
    host = world.signer.host
    for i in range(8):
        size = rng.choice((65 * 1024, 100_000, 1 << 20, 4 << 20))
        raw = f"GET /{MAIN}/small HTTP/1.1\r\nHost: {host}\r\nX-Big: ".encode() + b"a" * size + b"\r\n\r\n"
        run.expect(f"one {size}-byte header", raw, 400, "RequestHeaderSectionTooLarge", method="GET")
    for i in range(6):
        count = rng.randrange(70, 200)
        lines = b"".join(b"X-Pad-%d: %s\r\n" % (n, b"v" * 1000) for n in range(count))
        raw = f"GET /{MAIN}/small HTTP/1.1\r\nHost: {host}\r\n".encode() + lines + b"\r\n"
        run.expect(f"{count} headers of 1 KB", raw, 400, "RequestHeaderSectionTooLarge", method="GET")
    for count in (201, 300, 1000, 5000):
        lines = b"".join(b"X-H-%d: v\r\n" % n for n in range(count))
        raw = f"GET /{MAIN}/small HTTP/1.1\r\nHost: {host}\r\n".encode() + lines + b"\r\n"
        run.expect(f"{count} tiny headers", raw, 400, "RequestHeaderSectionTooLarge", method="GET")
    for size in (65 * 1024, 200_000):
        raw = f"GET /{MAIN}/{'u' * size} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
        run.expect(f"{size}-byte URL", raw, 400, "RequestHeaderSectionTooLarge", method="GET")
    # Just under the limit is still served (a signed request with a 60 KB unsigned header).
    req = world.signer.sign("GET", f"/{MAIN}/small").replace("X-Padding", "p" * 60_000)
    run.expect("60 KB of headers", req, 200)
    for size in (2049, 4000, 30_000):
        meta = {f"x-amz-meta-m{n}": "v" * 1000 for n in range(size // 1000)} | {"x-amz-meta-rest": "r" * (size % 1000)}
        run.expect(f"{size} bytes of user metadata",
                   world.signer.sign("PUT", key_path(NOSTORE, f"meta-{size}"), headers=meta, body=b"x"), 400,
                   "MetadataTooLarge")
    many = world.signer.sign("GET", f"/{MAIN}/small")
    for n in range(150):
        many = many.replace(f"X-Pad-{n}", "v")
    run.expect("150 extra headers", many, 200)
    run.check()


# --- 8. ranges and parameters -----------------------------------------------------------------------------------

def test_invalid_and_malformed_ranges(world):
    run = Run(world, "ranges")
    rng = random.Random(1515)
    size = len(world.objects["small"])
    unsatisfiable = [f"bytes={size}-", f"bytes={size}-{size + 10}", f"bytes={size * 5}-{size * 6}", "bytes=-0",
                     f"bytes={10**15}-"]
    for method in ("GET", "HEAD"):
        for spec in unsatisfiable:
            reply = run.expect(f"{method} Range {spec}", world.signer.sign(method, f"/{MAIN}/small",
                                                                           headers={"Range": spec}), 416,
                               "InvalidRange")
            if reply is not None and reply.headers.get("content-range") != f"bytes */{size}":
                run.fail(f"{method} Range {spec}", f"Content-Range {reply.headers.get('content-range')!r}, "
                                                   f"want 'bytes */{size}'")
        for spec in ("bytes=0-0", "bytes=0-", "bytes=-5", "bytes=5-10"):
            reply = run.expect(f"{method} empty object Range {spec}",
                               world.signer.sign(method, f"/{MAIN}/empty", headers={"Range": spec}), 416,
                               "InvalidRange")
            if reply is not None and reply.headers.get("content-range") != "bytes */0":
                run.fail(f"{method} empty object Range {spec}",
                         f"Content-Range {reply.headers.get('content-range')!r}, want 'bytes */0'")
    malformed = ["bytes=abc", "bytes=", "bytes=-", "bytes=5-2", "items=0-1", "bytes=0-1,2-3", "bytes 0-1",
                 "bytes=--1", "bytes=1-2-3", "bytes=0x10-0x20", "bytes=\u00bd-1", "=0-1", "bytes=1.5-2",
                 "bytes=+1-2", "bytes= - ", "BYTES=0-1", "bytes=\u00b2-5", "bytes=0-\u00b9", "bytes=-\u00b3"]
    for i in range(30):
        spec = malformed[i % len(malformed)] if i < len(malformed) else (
            "bytes=" + "".join(rng.choice("0123456789-,x ") for _ in range(rng.randrange(1, 12))))
        if re.fullmatch(r"bytes=\s*(\d+\s*-\s*\d*|-\s*\d+)\s*", spec):
            continue  # the random spelling happens to be a valid single range
        reply = run.expect(f"malformed Range {spec!r}", world.signer.sign("GET", f"/{MAIN}/small",
                                                                          headers={"Range": spec}), 200)
        if reply is not None and reply.status == 200 and reply.body != world.objects["small"]:
            run.fail(f"malformed Range {spec!r}", "did not return the whole object")
    garbage_dates = ["yesterday", "Mon, 99 Foo 2020 00:00:00 GMT", "Mon, 01 Jan 99999 00:00:00 GMT",
                     "Mon, 01 Jan 2020 00:00:00 +9999", "0", "\u00b2", "Sun Nov  6 08:49:37 99999"]
    for value in garbage_dates:  # an unparseable date is ignored (RFC 9110): the object comes back whole
        for header in ("If-Modified-Since", "If-Unmodified-Since"):
            reply = run.expect(f"{header}: {value!r}",
                               world.signer.sign("GET", f"/{MAIN}/small", headers={header: value}), 200)
    reply = run.expect("range past the end is clamped", world.signer.sign("GET", f"/{MAIN}/small",
                                                                          headers={"Range": "bytes=990-99999"}), 206)
    if reply is not None and reply.headers.get("content-range") != f"bytes 990-{size - 1}/{size}":
        run.fail("range past the end", f"Content-Range {reply.headers.get('content-range')!r}")
    run.check()


def test_bad_part_numbers_upload_ids_and_limits(world):
    run = Run(world, "bad_parameters")
    rng = random.Random(1616)
    sign = world.signer.sign
    uid = world.upload_id
    bad_numbers = ["0", "10001", "-1", "abc", "1.5", "", "99999999999999999999", "0x1", " 1", "1e3", "\u0661"]
    for value in bad_numbers:
        q = quote(value, safe="")
        if value != "":
            run.expect(f"GetObject partNumber={value!r}", sign("GET", f"/{MAIN}/small", f"partNumber={q}"), 400,
                       "InvalidArgument")
        run.expect(f"UploadPart partNumber={value!r}",
                   sign("PUT", key_path(NOSTORE, MPU_KEY), f"partNumber={q}&uploadId={uid}", body=b"part"), 400,
                   "InvalidArgument")
    run.expect("GetObject partNumber=2 of a single-part object",
               sign("GET", f"/{MAIN}/small", "partNumber=2"), 416, "InvalidPartNumber")
    for name in ("max-keys", "max-uploads", "max-parts", "part-number-marker"):
        for value in ("abc", "-1", "1.5", "0x10", "\u0661\u0662"):
            q = quote(value, safe="")
            if name == "max-keys":
                target = (f"/{MAIN}", f"list-type=2&max-keys={q}")
            elif name == "max-uploads":
                target = (f"/{NOSTORE}", f"uploads=&max-uploads={q}")
            else:
                target = (key_path(NOSTORE, MPU_KEY), f"uploadId={uid}&{name}={q}")
            run.expect(f"{name}={value!r}", sign("GET", *target), 400, "InvalidArgument")
    run.expect("ListObjects v1 max-keys=abc", sign("GET", f"/{MAIN}", "max-keys=abc"), 400, "InvalidArgument")
    for value in ("abc", "_w==", "%%%", "Zm9v"[:3]):
        run.expect(f"continuation-token {value!r}",
                   sign("GET", f"/{MAIN}", f"list-type=2&continuation-token={quote(value, safe='')}"), 400,
                   "InvalidArgument")
    for value in ("xml", "URL", "url2", "none"):
        run.expect(f"encoding-type={value}", sign("GET", f"/{MAIN}", f"list-type=2&encoding-type={value}"), 400,
                   "InvalidArgument")
    bogus_ids = ["nope", "../../etc/passwd", "%00", "x" * 2000, quote("\u65e5\u672c", safe=""), "' OR 1=1 --",
                 uid + "x", uid[:-1]]
    for bogus in bogus_ids:
        q = bogus if "%" in bogus else quote(bogus, safe="")
        run.expect(f"UploadPart uploadId={bogus[:30]!r}",
                   sign("PUT", key_path(NOSTORE, MPU_KEY), f"partNumber=1&uploadId={q}", body=b"p"), 404,
                   "NoSuchUpload")
        run.expect(f"ListParts uploadId={bogus[:30]!r}", sign("GET", key_path(NOSTORE, MPU_KEY), f"uploadId={q}"),
                   404, "NoSuchUpload")
        run.expect(f"AbortMultipartUpload uploadId={bogus[:30]!r}",
                   sign("DELETE", key_path(NOSTORE, MPU_KEY), f"uploadId={q}"), 404, "NoSuchUpload")
        run.expect(f"CompleteMultipartUpload uploadId={bogus[:30]!r}",
                   sign("POST", key_path(NOSTORE, MPU_KEY), f"uploadId={q}", body=COMPLETE_DOC.encode()), 404,
                   "NoSuchUpload")
    run.expect("upload id of another key",
               sign("PUT", key_path(NOSTORE, "other-key"), f"partNumber=1&uploadId={uid}", body=b"p"), 404,
               "NoSuchUpload")
    parts = {
        "a part never uploaded": ([(1, '"0123456789abcdef0123456789abcdef"')], "InvalidPart"),
        "part number 0": ([(0, '"x"')], "InvalidPart"),
        "part number 10001": ([(10001, '"x"')], "InvalidPart"),
        "part number past 64 bits": ([(10**25, '"x"')], "InvalidPart"),
        "descending part numbers": ([(2, '"x"'), (1, '"x"')], "InvalidPartOrder"),
        "a part listed twice": ([(1, '"x"'), (1, '"x"')], "InvalidPartOrder"),
    }
    for label, (listed, code) in parts.items():
        doc = "".join(f"<Part><PartNumber>{n}</PartNumber><ETag>{e}</ETag></Part>" for n, e in listed)
        run.expect(f"CompleteMultipartUpload with {label}",
                   sign("POST", key_path(NOSTORE, MPU_KEY), f"uploadId={uid}",
                        body=f"<CompleteMultipartUpload>{doc}</CompleteMultipartUpload>".encode()), 400, code)
    run.expect("partNumber without uploadId", sign("PUT", key_path(NOSTORE, "k"), "partNumber=1", body=b"p"), 400,
               "InvalidRequest")
    for value in ("bytes=5-1", "bytes=abc", "0-10", "bytes=-5"):
        copy = sign("PUT", key_path(NOSTORE, MPU_KEY), f"partNumber=1&uploadId={uid}",
                    headers={"x-amz-copy-source": f"/{MAIN}/small", "x-amz-copy-source-range": value})
        run.expect(f"x-amz-copy-source-range {value!r}", copy, 400, "InvalidArgument")
    headers = {
        "x-amz-metadata-directive": ("PUT", "", {"x-amz-copy-source": f"/{MAIN}/small",
                                                 "x-amz-metadata-directive": "MOVE"}, "InvalidArgument"),
        "x-amz-checksum-algorithm": ("POST", "uploads=", {"x-amz-checksum-algorithm": "MD4"}, "InvalidRequest"),
        "x-amz-checksum-type": ("POST", "uploads=", {"x-amz-checksum-algorithm": "CRC32",
                                                     "x-amz-checksum-type": "PARTIAL"}, "InvalidRequest"),
        "x-amz-trailer": ("PUT", "", {"x-amz-trailer": "x-amz-meta-evil"}, "InvalidRequest"),
    }
    for label, (method, query, extra, code) in headers.items():
        run.expect(f"bad {label}", sign(method, key_path(NOSTORE, f"hdr-{label}"), query, headers=extra,
                                        body=b"x" if method == "PUT" and "x-amz-copy-source" not in extra else b""),
                   400, code)
    for value in ("nobucket", "/", f"/{MAIN}", f"/{MAIN}/", "%ff%fe"):
        run.expect(f"x-amz-copy-source {value!r}",
                   sign("PUT", key_path(NOSTORE, f"copy-{rng.randrange(10**6)}"),
                        headers={"x-amz-copy-source": value}), 400, "InvalidArgument")
    run.check()


OVERRIDES = ("response-content-type", "response-content-disposition", "response-cache-control",
             "response-content-language", "response-expires", "response-content-encoding")


def test_response_header_overrides_cannot_inject_headers(world):
    """response-* query parameters become response headers; %0D%0A in one must not start a header of its own."""
    run = Run(world, "header_injection")
    injections = ("%0D%0AX-Injected:%20yes", "%0AX-Injected:%20yes", "%0DX-Injected:%20yes",
                  "%0D%0A%0D%0A%3Cscript%3E", "a%00b", "a%7Fb", "a%1Bb")
    for param in OVERRIDES:
        for injection in injections:
            for method in ("GET", "HEAD"):
                reply = run.expect(f"{method} {param}=x{injection}",
                                   world.signer.sign(method, f"/{MAIN}/small", f"{param}=x{injection}"), 400,
                                   "InvalidArgument")
                if reply is not None and ("x-injected" in reply.headers or b"<script>" in reply.body):
                    run.fail(f"{method} {param}=x{injection}", "the response carries the injected header")
        presigned = world.signer.presign("GET", f"/{MAIN}/small", f"{param}=x{injections[0]}")
        run.expect(f"presigned {param} with CRLF", presigned, 400, "InvalidArgument")
    disposition = quote('attachment; filename="report.txt"', safe="")
    reply = run.expect("a plain override still works",
                       world.signer.sign("GET", f"/{MAIN}/small", f"response-content-disposition={disposition}"), 200)
    if reply is not None and reply.headers.get("content-disposition") != 'attachment; filename="report.txt"':
        run.fail("a plain override", f"Content-Disposition {reply.headers.get('content-disposition')!r}")
    run.check()


# --- 9. operations Atoll does not have, methods no resource has ----------------------------------------------------

UNSUPPORTED = ["acl", "policy", "cors", "lifecycle", "tagging", "encryption", "website", "logging", "notification",
               "replication", "object-lock", "versions", "ownershipControls", "publicAccessBlock", "analytics"]
OBJECT_UNSUPPORTED = ["acl", "tagging", "retention", "legal-hold", "torrent", "restore", "select", "attributes"]


def test_unknown_subresources_are_notimplemented(world):
    run = Run(world, "unknown_subresources")
    sign = world.signer.sign
    for i, name in enumerate(UNSUPPORTED):
        method = ("GET", "PUT", "DELETE")[i % 3]
        run.expect(f"{method} bucket ?{name}", sign(method, f"/{MAIN}", f"{name}=",
                                                    body=b"<x/>" if method == "PUT" else b""), 501, "NotImplemented")
        run.expect(f"GET bucket ?{name} of a missing bucket", sign("GET", "/fz-no-such-bucket", f"{name}="), 501,
                   "NotImplemented")
    for i, name in enumerate(OBJECT_UNSUPPORTED):
        method = ("GET", "PUT", "POST")[i % 3]
        run.expect(f"{method} object ?{name}", sign(method, f"/{MAIN}/small", f"{name}=",
                                                    body=b"<x/>" if method != "GET" else b""), 501, "NotImplemented")
    run.expect("PutBucketVersioning", sign("PUT", f"/{MAIN}", "versioning=", body=b"<VersioningConfiguration/>"),
               501, "NotImplemented")
    run.expect("POST object upload", sign("POST", f"/{MAIN}", body=b"form"), 501, "NotImplemented")
    run.expect("POST to a key", sign("POST", f"/{MAIN}/small", body=b"x"), 501, "NotImplemented")
    run.check()


def test_wrong_methods_are_methodnotallowed(world):
    run = Run(world, "wrong_methods")
    sign = world.signer.sign
    for method in ("PATCH", "OPTIONS", "PROPFIND", "TRACE", "MKCOL", "LOCK", "UNLOCK", "SEARCH"):
        for path in ("/", f"/{MAIN}", f"/{MAIN}/small"):
            run.expect(f"{method} {path}", sign(method, path), 405, "MethodNotAllowed")
    for method in ("PUT", "POST", "DELETE", "HEAD"):
        run.expect(f"{method} /", sign(method, "/"), 405, "MethodNotAllowed")
    run.check()


# --- 10. broken HTTP --------------------------------------------------------------------------------------------

def canned_invalid_http(host: str) -> list[tuple[str, bytes, int | None, str | None]]:
    """(label, bytes, status, code): status None means the server may answer 400 or just close."""
    h = f"Host: {host}\r\n".encode()
    return [
        ("garbage request line", b"GARBAGE\r\n\r\n", 400, "BadRequest"),
        ("HTTP/9.9", b"GET / HTTP/9.9\r\n" + h + b"\r\n", 400, "BadRequest"),
        ("TLS client hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40, 400, "BadRequest"),
        ("unknown method", b"FOO / HTTP/1.1\r\n" + h + b"\r\n", 400, "BadRequest"),
        ("no version", b"GET /\r\n" + h + b"\r\n", None, None),
        ("bare LF", b"GET / HTTP/1.1\n" + h.replace(b"\r", b"") + b"\n", 400, "BadRequest"),
        ("NUL in header", b"GET / HTTP/1.1\r\n" + h + b"X-A: a\x00b\r\n\r\n", 400, "BadRequest"),
        ("obs-fold", b"GET / HTTP/1.1\r\n" + h + b"X-A: a\r\n b\r\n\r\n", 400, "BadRequest"),
        ("space before colon", b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400, "BadRequest"),
        ("header without colon", b"GET / HTTP/1.1\r\n" + h + b"NoColon\r\n\r\n", 400, "BadRequest"),
        ("Content-Length abc", b"PUT /b/k HTTP/1.1\r\n" + h + b"Content-Length: abc\r\n\r\n", 400, "BadRequest"),
        ("Content-Length -1", b"PUT /b/k HTTP/1.1\r\n" + h + b"Content-Length: -1\r\n\r\n", 400, "BadRequest"),
        ("Content-Length +1", b"PUT /b/k HTTP/1.1\r\n" + h + b"Content-Length: +1\r\n\r\na", 400, "BadRequest"),
        ("Content-Length overflow", b"PUT /b/k HTTP/1.1\r\n" + h + b"Content-Length: 99999999999999999999999\r\n\r\n",
         400, "BadRequest"),
        ("two Content-Lengths", b"PUT /b/k HTTP/1.1\r\n" + h + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\nab",
         400, "BadRequest"),
        ("chunk size not hex", b"PUT /b/k HTTP/1.1\r\n" + h + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n\r\n", None,
         None),
        ("chunk size overflow", b"PUT /b/k HTTP/1.1\r\n" + h + b"Transfer-Encoding: chunked\r\n\r\n"
                                b"fffffffffffffffffffff\r\n\r\n", None, None),
        ("chunk without CRLF", b"PUT /b/k HTTP/1.1\r\n" + h + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabcXY0\r\n\r\n",
         None, None),
        ("Transfer-Encoding identity", b"PUT /b/k HTTP/1.1\r\n" + h + b"Transfer-Encoding: identity\r\n\r\n", None,
         None),
        ("absolute URI", b"GET http://evil.example/ HTTP/1.1\r\n" + h + b"\r\n", 400, "InvalidURI"),
        ("asterisk target", b"GET * HTTP/1.1\r\n" + h + b"\r\n", 400, "InvalidURI"),
        ("invalid UTF-8 in path", b"GET /b/%C3%28 HTTP/1.1\r\n" + h + b"\r\n", 400, "InvalidURI"),
        ("invalid UTF-8 in query", b"GET /b?prefix=%ff HTTP/1.1\r\n" + h + b"\r\n", 400, "InvalidURI"),
        ("CONNECT", b"CONNECT 127.0.0.1:22 HTTP/1.1\r\n" + h + b"\r\n", None, None),
        ("Upgrade h2c", b"GET / HTTP/1.1\r\n" + h + b"Connection: Upgrade\r\nUpgrade: h2c\r\n\r\n", None, None),
        ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", None, None),
        ("only CRLFs", b"\r\n" * 50, None, None),
        ("binary junk", bytes(range(256)), 400, "BadRequest"),
    ]


def mutate(raw: bytes, rng: random.Random) -> tuple[str, bytes]:
    at = rng.randrange(len(raw))
    kind = rng.randrange(6)
    if kind == 0:
        return f"byte {at} deleted", raw[:at] + raw[at + 1:]
    if kind == 1:
        return f"byte {at} replaced", raw[:at] + bytes([rng.randrange(256)]) + raw[at + 1:]
    if kind == 2:
        return f"junk inserted at {at}", raw[:at] + rng.randbytes(rng.randrange(1, 20)) + raw[at:]
    if kind == 3:
        return "CRLF replaced by LF", raw.replace(b"\r\n", b"\n", rng.randrange(1, 4))
    if kind == 4:
        head_end = raw.index(b"\r\n\r\n")
        return f"cut at {at}", raw[: min(at, head_end)]
    line_start = raw.index(b"\r\n") + 2
    return "line duplicated", raw[:line_start] + raw[line_start:raw.index(b"\r\n", line_start) + 2] + raw[line_start:]


def test_invalid_http_never_crashes(world):
    run = Run(world, "invalid_http")
    rng = random.Random(1717)
    for label, raw, status, code in canned_invalid_http(world.signer.host):
        method = raw.split(b" ", 1)[0].decode("latin-1")
        if status is not None:
            run.expect(label, raw, status, code, method=method, then_shutdown=True)
            continue
        try:
            reply = run.send(raw, method, then_shutdown=True)
        except (socket.timeout, TimeoutError):
            run.fail(label, "no answer and no close")
            continue
        if reply is not None and reply.status not in (400, 405, 403):
            run.fail(label, f"answered {reply.status} {reply.code}")
    for i in range(6):  # Content-Length shorter than the body: the rest is read as the next request, and refused
        body = rng.randbytes(2000)
        req = world.signer.sign("PUT", f"/{NOSTORE}/cl-short-{i}", body=body)
        raw = req.replace("Content-Length", str(1000 + i * 100)).raw()
        wire = Wire(world.port)
        try:
            wire.send(raw)
            first = wire.reply("PUT")
            second = wire.reply("PUT") if first is not None else None
        except (socket.timeout, TimeoutError):
            run.fail(f"Content-Length short by {1000 - i * 100}", "no answer")
            continue
        finally:
            wire.close()
            world.sent += 1
        if first is None or (first.status, first.code) != (400, "XAmzContentSHA256Mismatch"):
            run.fail(f"Content-Length short #{i}", f"first answer {first and (first.status, first.code)}")
        if second is not None and (second.status, second.code) != (400, "BadRequest"):
            run.fail(f"Content-Length short #{i}", f"the left-over bytes got {second.status} {second.code}")
    for i in range(60):
        junk = rng.randbytes(rng.randrange(1, 300))
        if i % 2:
            junk = junk.replace(b"\r", b"").replace(b"\n", b"") + b"\r\n\r\n"
        try:
            reply = run.send(junk, "GET", then_shutdown=True)
        except (socket.timeout, TimeoutError):
            run.fail(f"random junk #{i}", "no answer and no close")
            continue
        if reply is not None and (reply.status != 400 or reply.code != "BadRequest"):
            run.fail(f"random junk #{i}", f"answered {reply.status} {reply.code}")
    for i in range(70):
        base = world.signer.sign(rng.choice(("GET", "HEAD", "PUT")), f"/{NOSTORE}/mutated-{i}",
                                 body=b"" if i % 3 else b"payload")
        label, raw = mutate(base.raw(), rng)
        try:
            reply = run.send(raw, base.method, then_shutdown=True)
        except (socket.timeout, TimeoutError):
            run.fail(f"mutated request #{i} ({label})", "no answer and no close")
            continue
        if reply is not None and reply.status >= 500:
            run.fail(f"mutated request #{i} ({label})", f"answered {reply.status} {reply.code}")
    run.check()


def test_request_smuggling_attempts_are_refused(world):
    run = Run(world, "smuggling")
    host = world.signer.host
    for i in range(5):
        smuggled = world.signer.sign("PUT", f"/{NOSTORE}/smuggled-{i}", body=b"smuggled").raw()
        chunked = b"0\r\n\r\n" + smuggled
        cases = [
            ("CL and TE", [f"Content-Length: {len(chunked)}", "Transfer-Encoding: chunked"], chunked),
            ("TE and CL", ["Transfer-Encoding: chunked", f"Content-Length: {len(chunked)}"], chunked),
            ("TE xchunked and CL", ["Transfer-Encoding: xchunked", "Content-Length: 5"], chunked),
            ("TE with tab and CL", ["Transfer-Encoding:\tchunked", "Content-Length: 4"], chunked),
            ("TE twice", ["Transfer-Encoding: chunked", "Transfer-Encoding: identity"], chunked),
            ("TE chunked, identity", ["Transfer-Encoding: chunked, identity"], chunked),
            ("TE space before colon", ["Transfer-Encoding : chunked", f"Content-Length: {len(chunked)}"], chunked),
            ("two Content-Lengths", ["Content-Length: 0", f"Content-Length: {len(smuggled)}"], smuggled),
        ]
        for label, headers, body in cases:
            raw = (f"POST /{MAIN} HTTP/1.1\r\nHost: {host}\r\n" + "".join(h + "\r\n" for h in headers)
                   + "\r\n").encode() + body
            wire = Wire(world.port)
            try:
                wire.send(raw)
                first = wire.reply("POST")
                second = wire.reply("PUT") if first is not None else None
            except (socket.timeout, TimeoutError):
                run.fail(label, "no answer")
                continue
            finally:
                wire.close()
                world.sent += 1
            if first is None or first.status != 400 or first.code != "BadRequest":
                run.fail(label, f"first answer {first and first.status} {first and first.code}, want 400 BadRequest")
            if second is not None:
                run.fail(label, f"a second (smuggled) request was answered: {second.status} {second.code}")
    for i in range(5):
        run.expect(f"HEAD smuggled-{i}", world.signer.sign("HEAD", f"/{NOSTORE}/smuggled-{i}"), 404)
    run.check()


def test_pipelined_requests_are_answered_in_order(world):
    run = Run(world, "pipelining")
    rng = random.Random(1818)
    names = ["small", "a", "b", "empty"]
    for i in range(20):
        picks = [(rng.choice(("GET", "HEAD", "GET")), rng.choice(names)) for _ in range(rng.randrange(2, 6))]
        raw = b"".join(world.signer.sign(m, f"/{MAIN}/{k}").raw() for m, k in picks)
        if i % 4 == 0:  # a write in the middle: later requests in the same write see it
            key = f"pipelined-{i}"
            data = rng.randbytes(300)
            raw = (world.signer.sign("PUT", f"/{MAIN}/{key}", body=data).raw()
                   + world.signer.sign("GET", f"/{MAIN}/{key}").raw() + raw)
            picks = [("PUT", None), ("GET", data)] + picks
        wire = Wire(world.port)
        try:
            wire.send(raw)
            world.sent += len(picks)
            for n, (method, name) in enumerate(picks):
                reply = wire.reply(method)
                want = name if isinstance(name, bytes) or name is None else world.objects[name]
                if reply is None or reply.status != 200:
                    run.fail(f"pipeline #{i} request {n} {method}", f"got {reply and reply.status}")
                    break
                if method == "GET" and reply.body != want:
                    run.fail(f"pipeline #{i} request {n}", "answered out of order or with the wrong body")
                if method == "HEAD" and reply.headers.get("content-length") != str(len(want)):
                    run.fail(f"pipeline #{i} request {n}", "HEAD with the wrong Content-Length")
        finally:
            wire.close()
    for i in range(6):  # a broken request behind good ones: the good ones are answered first, in order
        good = [rng.choice(names) for _ in range(1 + i % 3)]
        raw = b"".join(world.signer.sign("GET", f"/{MAIN}/{k}").raw() for k in good) + b"GET / HTTP/1.1\r\nBad\r\n\r\n"
        wire = Wire(world.port)
        try:
            wire.send(raw)
            world.sent += len(good) + 1
            replies = [wire.reply("GET") for _ in range(len(good) + 1)]
        finally:
            wire.close()
        for n, name in enumerate(good):
            if replies[n] is None or replies[n].body != world.objects[name]:
                run.fail(f"good request {n} before a broken one", f"got {replies[n] and replies[n].status}")
        last = replies[-1]
        if last is None or (last.status, last.code) != (400, "BadRequest"):
            run.fail("the broken request after good ones", f"got {last and (last.status, last.code)}")
    run.check()


def test_head_errors_have_no_body(world):
    run = Run(world, "head_errors")
    sign = world.signer.sign
    cases = [
        ("missing key", sign("HEAD", f"/{MAIN}/no-such-key"), 404),
        ("missing bucket", sign("HEAD", "/fz-no-such-bucket"), 404),
        ("missing bucket, key", sign("HEAD", "/fz-no-such-bucket/k"), 404),
        ("bad signature", sign("HEAD", f"/{MAIN}/small", secret_key="wrong"), 403),
        ("unknown access key", sign("HEAD", f"/{MAIN}/small", access_key="AKNOBODY", secret_key="x" * 40), 403),
        ("skewed", sign("HEAD", f"/{MAIN}/small", when=utcnow() - dt.timedelta(days=3)), 403),
        ("unsatisfiable range", sign("HEAD", f"/{MAIN}/small", headers={"Range": "bytes=5000-"}), 416),
        ("If-Match fails", sign("HEAD", f"/{MAIN}/small", headers={"If-Match": '"nope"'}), 412),
        ("If-None-Match *", sign("HEAD", f"/{MAIN}/small", headers={"If-None-Match": "*"}), 304),
        ("HEAD /", sign("HEAD", "/"), 405),
        ("bad partNumber", sign("HEAD", f"/{MAIN}/small", "partNumber=0"), 400),
        ("anonymous", Req("HEAD", f"/{MAIN}/small", [("Host", world.signer.host)]), 403),
        ("unsupported subresource", sign("HEAD", f"/{MAIN}/small", "acl="), 501),
    ]
    for round_ in range(3):
        for label, req, status in cases:
            # A GET pipelined behind the HEAD: if the HEAD answer carried body bytes, the GET's answer is garbage.
            follow = sign("GET", f"/{MAIN}/a")
            wire = Wire(world.port)
            try:
                wire.send(req.raw() + follow.raw())
                head = wire.reply("HEAD")
                after = wire.reply("GET") if head is not None and head.headers.get("connection") != "close" else None
            finally:
                wire.close()
                world.sent += 2
            if status == 501:
                world.expected_501 += 1
            if head is None or head.status != status:
                run.fail(f"HEAD {label}", f"got {head and head.status}, want {status}")
                continue
            if "x-amz-request-id" not in head.headers:
                run.fail(f"HEAD {label}", "no x-amz-request-id")
            if after is None or after.status != 200 or after.body != world.objects["a"]:
                run.fail(f"HEAD {label}", "the next answer on the connection is garbled: the HEAD sent a body")
    run.check()


# --- after the storm --------------------------------------------------------------------------------------------

def test_server_is_healthy_after_the_hostile_traffic(world):
    """Runs last (file order): the server still serves, logged no traceback, answered no 5xx but the expected 501s,
    and stored nothing that was rejected."""
    s3 = world.server.client()
    assert s3.get_object(Bucket=MAIN, Key="small")["Body"].read() == world.objects["small"]
    assert world.server.proc.poll() is None, "the server process died"
    listed = s3.list_objects_v2(Bucket=NOSTORE)
    assert listed["KeyCount"] == 0, f"rejected writes were stored: {[o['Key'] for o in listed.get('Contents', [])]}"
    parts = s3.list_parts(Bucket=NOSTORE, Key=MPU_KEY, UploadId=world.upload_id)
    assert not parts.get("Parts"), f"rejected parts were stored: {parts['Parts']}"
    buckets = {b["Name"] for b in s3.list_buckets()["Buckets"]}
    assert buckets <= {MAIN, NOSTORE, "fz-odd"}, f"rejected CreateBucket calls created {buckets}"
    time.sleep(1.2)  # the access log is flushed every 0.5 s
    log_path = Path(world.server.data_dir, "logs", "access.log")
    entries = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    server_errors = [e for e in entries if e["status"] >= 500 and e["status"] != 501]
    assert not server_errors, f"{len(server_errors)} 5xx answers, e.g. {server_errors[:5]}"
    not_implemented = [e for e in entries if e["status"] == 501]
    assert len(not_implemented) == world.expected_501, (
        f"{len(not_implemented)} 501 answers logged, {world.expected_501} expected")
    deadline = time.monotonic() + 5
    while os.listdir(Path(world.server.data_dir, "tmp")) and time.monotonic() < deadline:
        time.sleep(0.1)
    leftovers = os.listdir(Path(world.server.data_dir, "tmp"))
    assert not leftovers, f"temp files of rejected or abandoned uploads were left behind: {leftovers[:10]}"
    log = world.server.log_text()
    assert "Traceback" not in log, log[-5000:]
    if world.categories_run >= set(CATEGORIES):
        assert world.sent >= 1000, f"only {world.sent} hostile requests were sent"
        assert len(entries) >= 900, f"only {len(entries)} requests reached the access log"
    assert_nothing_outside_data_dir(world)


