"""Helpers of the packed-store tests (#8): servers with packing settings, where an object's bytes live, segment
files as the disk holds them, and ``atoll fsck``.

A packed object's extent names a segment (``s`` + 31 hex digits) and points at the payload of a record
``b"AtP1" + u32 LE length + u32 LE zlib.crc32(payload)``; a blob file's id is 32 hex digits under ``blobs/``.
Everything here reads the data directory and the metadata read-only, so it may run beside a live server.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import http.client
import json
import os
import sqlite3
import struct
import zlib
from contextlib import closing
from dataclasses import dataclass
from urllib.parse import quote

from harness import AtollProcess, meta_query

KiB = 1 << 10
MiB = 1 << 20
RECORD_HEADER = struct.Struct("<4sII")
RECORD_MAGIC = b"AtP1"


def packed_env(**settings: object) -> dict[str, str]:
    """ATOLL_* environment from config names: ``segment_size=1 << 20`` -> ATOLL_SEGMENT_SIZE=1048576."""
    return {f"ATOLL_{name.upper()}": str(value) for name, value in settings.items()}


# a lean S3 client for bulk work ---------------------------------------------------------------------------------

@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # by lower-case name
    body: bytes


class LeanS3:
    """One keep-alive connection sending SigV4-signed (UNSIGNED-PAYLOAD) PUT, GET, HEAD and DELETE of one key.

    For filling buckets with thousands of small objects and for write storms: boto3 spends milliseconds of CPU
    per request, which on two cores caps a test at a few hundred requests per second. Not thread-safe: one per
    thread. A failed connection is not retried (a test must know whether a request was answered)."""

    def __init__(self, server: AtollProcess, timeout: float = 30.0) -> None:
        self.port = server.port
        self.host = f"127.0.0.1:{server.port}"
        self.access_key = server.access_key
        self.secret_key = server.secret_key
        self.timeout = timeout
        self.conn: http.client.HTTPConnection | None = None
        self._keys: dict[str, bytes] = {}

    def _signing_key(self, date: str) -> bytes:
        if date not in self._keys:
            key = ("AWS4" + self.secret_key).encode()
            for part in (date, "us-east-1", "s3", "aws4_request"):
                key = hmac.digest(key, part.encode(), "sha256")
            self._keys = {date: key}
        return self._keys[date]

    def request(self, method: str, bucket: str, key: str, body: bytes = b"",
                headers: dict[str, str] | None = None) -> Answer:
        path = f"/{bucket}/{quote(key, safe='/~')}"
        now = dt.datetime.now(dt.timezone.utc)
        stamp, date = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
        sent = {"host": self.host, "x-amz-content-sha256": "UNSIGNED-PAYLOAD", "x-amz-date": stamp,
                **{name.lower(): value for name, value in (headers or {}).items()}}
        names = sorted(sent)
        canonical = "\n".join([method, path, "", *(f"{n}:{sent[n].strip()}" for n in names), "",
                               ";".join(names), "UNSIGNED-PAYLOAD"])
        scope = f"{date}/us-east-1/s3/aws4_request"
        to_sign = f"AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        signature = hmac.new(self._signing_key(date), to_sign.encode(), "sha256").hexdigest()
        sent["authorization"] = (f"AWS4-HMAC-SHA256 Credential={self.access_key}/{scope}, "
                                 f"SignedHeaders={';'.join(names)}, Signature={signature}")
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        try:
            self.conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            for name, value in sent.items():
                self.conn.putheader(name, value)
            if method in ("PUT", "POST") or body:
                self.conn.putheader("content-length", str(len(body)))
            self.conn.endheaders(body or None)
            response = self.conn.getresponse()
            answer = Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
        except BaseException:
            self.close()
            raise
        if answer.headers.get("connection", "").lower() == "close":
            self.close()
        return answer

    def put(self, bucket: str, key: str, body: bytes, headers: dict[str, str] | None = None) -> Answer:
        answer = self.request("PUT", bucket, key, body, headers)
        assert answer.status == 200, (key, answer.status, answer.body[:500])
        return answer

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def put_many(server: AtollProcess, bucket: str, bodies: dict[str, bytes], threads: int = 8) -> None:
    """PUT every key of ``bodies``, from ``threads`` lean connections."""
    import threading

    items = list(bodies.items())
    failures: list[BaseException] = []

    def work(share: list[tuple[str, bytes]]) -> None:
        client = LeanS3(server)
        try:
            for key, body in share:
                client.put(bucket, key, body)
        except BaseException as exc:  # noqa: BLE001 - reported by the caller's thread
            failures.append(exc)
        finally:
            client.close()

    workers = [threading.Thread(target=work, args=(items[i::threads],)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if failures:
        raise failures[0]


# where an object lives --------------------------------------------------------------------------------------------

def extents_of(server: AtollProcess, bucket: str, key: str) -> list[tuple[str, int, int]] | None:
    """The (blob id, offset, length) extents of the current version of ``key``; None if there is no such key."""
    rows = meta_query(server, "SELECT extents FROM objects WHERE bucket = ? AND key = ?", (bucket, key))
    return [tuple(e) for e in json.loads(rows[0][0])] if rows else None


def is_segment_id(blob_id: str) -> bool:
    return blob_id.startswith("s")


def store_of(server: AtollProcess, bucket: str, key: str) -> str:
    """"packed" (one record in a segment), "files" (blob files only) or "none" (no bytes: an empty object)."""
    extents = extents_of(server, bucket, key)
    assert extents is not None, f"{bucket}/{key} has no metadata row"
    kinds = {is_segment_id(blob) for blob, _, _ in extents}
    if not extents:
        return "none"
    assert len(kinds) == 1, f"{bucket}/{key} mixes segments and files: {extents}"
    if kinds == {True}:
        assert len(extents) == 1, f"{bucket}/{key}: a packed object is one record, not {extents}"
        return "packed"
    return "files"


# segment files -----------------------------------------------------------------------------------------------------

def segments_dir(data_dir: str) -> str:
    return os.path.join(data_dir, "segments")


def segment_sizes(data_dir: str) -> dict[str, int]:
    """Segment file -> size on disk, right now. A missing directory fails: packing must have made it."""
    root = segments_dir(data_dir)
    assert os.path.isdir(root), f"no {root}: nothing was packed"
    sizes = {}
    for name in os.listdir(root):
        try:
            sizes[name] = os.stat(os.path.join(root, name)).st_size
        except FileNotFoundError:  # deleted by the compactor between the listing and the stat
            continue
    return sizes


def segment_states(server: AtollProcess) -> dict[str, int]:
    """How many segments the metadata has in each state."""
    return dict(meta_query(server, "SELECT state, count(*) FROM segments GROUP BY state"))


def check_packed_references(server: AtollProcess) -> list[str]:
    """Every packed extent of every object, read from its segment file: inside the file, behind a record header
    whose length and CRC match the payload; the reverse index and the live counters agree with the objects.
    Returns the problems found (the server may run: segments are append-only and referenced ones stay)."""
    problems = []
    refs: dict[str, list[tuple[int, int, str]]] = {}
    objects, states, indexed, counted = metadata_snapshot(server)
    for bucket, key, extents in objects:
        for blob, offset, length in json.loads(extents):
            if is_segment_id(blob):
                refs.setdefault(blob, []).append((offset, length, f"{bucket}/{key}"))
    for segment, records in sorted(refs.items()):
        if states.get(segment) not in ("open", "sealed", "compacting"):
            problems.append(f"segment {segment} is referenced but its state is {states.get(segment)}")
        path = os.path.join(segments_dir(server.data_dir), segment)
        try:
            with open(path, "rb") as f:
                for offset, length, name in records:
                    f.seek(offset - RECORD_HEADER.size)
                    head = f.read(RECORD_HEADER.size)
                    payload = f.read(length)
                    if len(head) < RECORD_HEADER.size or len(payload) < length:
                        problems.append(f"{name}: record at {segment}@{offset} runs past the end of the file")
                        continue
                    magic, size, crc = RECORD_HEADER.unpack(head)
                    if (magic, size) != (RECORD_MAGIC, length) or zlib.crc32(payload) != crc:
                        problems.append(f"{name}: record at {segment}@{offset} has header {(magic, size, crc)}, "
                                        f"payload of {length} bytes with CRC {zlib.crc32(payload)}")
        except FileNotFoundError:
            problems.append(f"segment {segment} is referenced by {len(records)} objects but has no file")
    expected = {s: (len(r), sum(length for _, length, _ in r)) for s, r in refs.items()}
    if {s: (n, b) for s, n, b in indexed} != expected:
        problems.append(f"packed_refs disagrees with the objects' extents: {sorted(indexed)[:5]} vs "
                        f"{sorted(expected.items())[:5]}")
    if {s: (n, b) for s, n, b in counted} != expected:
        problems.append(f"segments' live counters disagree with the objects' extents: {sorted(counted)[:5]} vs "
                        f"{sorted(expected.items())[:5]}")
    return problems


def metadata_snapshot(server: AtollProcess) -> tuple[list, dict[str, str], list, list]:
    """One read transaction's view (the compactor may move records meanwhile): objects (bucket, key, extents),
    segment states, the reverse index per segment and the live counters per segment."""
    path = os.path.join(server.data_dir, "meta.sqlite3")
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30, isolation_level=None)) as conn:
        conn.execute("BEGIN")
        objects = conn.execute("SELECT bucket, key, extents FROM objects").fetchall()
        states = dict(conn.execute("SELECT segment_id, state FROM segments").fetchall())
        indexed = conn.execute("SELECT segment_id, count(*), sum(length) FROM packed_refs "
                               "GROUP BY segment_id").fetchall()
        counted = conn.execute("SELECT segment_id, live_count, live_bytes FROM segments "
                               "WHERE live_count != 0 OR live_bytes != 0").fetchall()
        conn.execute("COMMIT")
    return objects, states, indexed, counted


# fsck ---------------------------------------------------------------------------------------------------------------

def fsck_report(server: AtollProcess, *args: str) -> tuple[int, dict]:
    """``atoll fsck --json`` (a read-only check unless ``--repair`` is given): exit status and report."""
    done = server.cli("fsck", "--json", *args, check=False)
    assert done.returncode in (0, 1), f"fsck failed ({done.returncode}): {done.stderr}{done.stdout}"
    assert "Traceback" not in done.stderr, done.stderr
    report = json.loads(done.stdout)
    assert report["clean"] == (done.returncode == 0), report
    return done.returncode, report


def assert_fsck_clean(server: AtollProcess, *args: str, label: str = "") -> dict:
    code, report = fsck_report(server, *args)
    assert code == 0, f"{label} fsck is not clean: {report['findings'][:20]}"
    return report
