"""Write-back buckets against real cold stores (moto S3 and Azurite), each behind a counting FaultProxy.

What is asserted, not assumed: writes made while the drain is paused reach the cold store byte-exact with their
metadata once it runs (PUT, multipart, copy, metadata-replacing self-copy, DeleteObject, DeleteObjects); ten
overwrites cause one upload; the journal's backlog is exact; a server killed mid-drain loses nothing and leaves no
stray key; a checkpoint group's marker is never visible in the cold store before all its shards; a metadata
replace made while the older bytes are on their way still reaches the cold store; unlink waits for the backlog.

The cold store is read *directly* (not through the proxy), so the proxy counts only what Atoll sends.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import sqlite3
import threading
import time

import pytest

from atoll.core.tiering.upload import PART_SIZE
from coldside import COLD_KINDS, Cold, emulator
from harness import AtollProcess, meta_query

pytestmark = pytest.mark.timeout(120)

KiB = 1 << 10
MiB = 1 << 20
PART = 256 * KiB  # the server's minimum part size here (ATOLL_MIN_PART_SIZE), so multipart stays small
DRAIN_CONCURRENCY = 8
# A cold store that comes back is noticed within a second (the breaker's probe), not after the default 2-30 s.
SERVER_ENV = {"ATOLL_MIN_PART_SIZE": str(PART), "ATOLL_DRAIN_CONCURRENCY": str(DRAIN_CONCURRENCY),
              "ATOLL_FILL_BLOCK_SIZE": str(64 * KiB), "ATOLL_BREAKER_COOLDOWN": "0.3",
              "ATOLL_BREAKER_MAX_COOLDOWN": "1"}


# --- the server, links and the drain switch ------------------------------------------------------------------

def module_server(tmp_path_factory, name: str, env: dict[str, str]):
    """A module's server, for its fixture to ``yield from``: killed at the end, with no traceback in its log."""
    proc = AtollProcess(data_dir=str(tmp_path_factory.mktemp(name) / "data"), extra_env=env).start()
    yield proc
    proc.kill()
    assert "Traceback" not in proc.log_text(), proc.log_text()[-5000:]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One write-back server for the module; each test links fresh buckets to fresh cold containers."""
    yield from module_server(tmp_path_factory, "wb", SERVER_ENV)


@pytest.fixture(params=COLD_KINDS)
def cold(request) -> Cold:
    return make_cold(request.param, request)


@pytest.fixture
def paused(server):
    """The drain is paused for the test's first writes; always resumed at the end."""
    set_drain_paused(server, True)
    yield
    set_drain_paused(server, False)


def link(server: AtollProcess, cold: Cold, mode: str = "writeback") -> str:
    """A new bucket linked to ``cold`` by the CLI, as an operator does it. No write has looked the bucket up yet,
    so the server has no cached "unlinked" answer and the first write already sees the link."""
    name = f"wb-{secrets.token_hex(5)}"
    server.client().create_bucket(Bucket=name)
    done = server.cli("bucket", "link", name, cold.url, "--mode", mode, *cold.link_options(), check=False)
    assert done.returncode == 0, done.stderr + done.stdout
    cold.proxy.reset_counts()  # the link check listed the cold store once
    return name


def set_drain_paused(server: AtollProcess, paused: bool) -> None:
    """The drainer reads the ``drain_paused`` flag before each round of claims."""
    path = os.path.join(server.data_dir, "meta.sqlite3")
    conn = sqlite3.connect(path, timeout=30)
    try:
        conn.execute("INSERT INTO counters VALUES ('drain_paused', ?) ON CONFLICT (name) DO UPDATE SET "
                     "value = excluded.value", (int(paused),))
        conn.commit()
    finally:
        conn.close()
    if paused:
        time.sleep(0.2)  # a drain round that read the flag just before has finished claiming by now


def backlog(server: AtollProcess, bucket: str) -> tuple[int, int]:
    """(entries, bytes) of the bucket's drain journal, read-only."""
    n, size = meta_query(server, "SELECT count(*), coalesce(sum(size), 0) FROM drain WHERE bucket = ?",
                         (bucket,))[0]
    return int(n), int(size)


def wait_drained(server: AtollProcess, bucket: str, timeout: float = 40.0) -> None:
    deadline = time.monotonic() + timeout
    while backlog(server, bucket)[0]:
        if time.monotonic() > deadline:
            rows = meta_query(server, "SELECT key, op, attempts, last_error FROM drain WHERE bucket = ?", (bucket,))
            raise AssertionError(f"drain not finished after {timeout}s: {rows[:10]}\n{server.log_text()[-3000:]}")
        time.sleep(0.05)


# --- the cold store, seen directly --------------------------------------------------------------------------

PREFIX = "tier/data"  # links point below the top of the container, so key mapping under a prefix is exercised


def make_cold(kind: str, request) -> Cold:
    """A fresh container/bucket on one of the session's emulators, behind its own counting proxy."""
    server = emulator(request, kind)
    container = request.getfixturevalue("s3_cold_bucket" if kind == "s3" else "azure_container")
    return Cold(kind, server, container, request.getfixturevalue("cold_proxy")(server), PREFIX)


def uploads(cold: Cold, key: str) -> int:
    """Requests that put a whole object at ``key``: a single PUT, or the request that completes a multipart
    upload (S3 CompleteMultipartUpload, Azure Put Block List). Parts and blocks are not counted."""
    count = 0
    for request in cold.proxy.requests():
        path, _, query = request.path.partition("?")
        if path != cold.path(key):
            continue
        if cold.kind == "s3":
            count += (request.method == "PUT" and not query) or (request.method == "POST" and "uploadId=" in query)
        else:
            count += request.method == "PUT" and (not query or "comp=blocklist" in query)
    return count


def delete_requests(cold: Cold) -> int:
    """Delete requests sent to the cold store. obstore deletes one key with a batch request (S3 DeleteObjects,
    Azure Blob Batch) addressed to the bucket or container, so they are counted as a whole, not by path."""
    def is_delete(request) -> bool:
        query = request.path.partition("?")[2]
        return request.method == "DELETE" or (request.method == "POST" and (query.startswith("delete")
                                                                             or "comp=batch" in query))
    return len([r for r in cold.proxy.requests() if is_delete(r)])


def body(size: int) -> bytes:
    return os.urandom(size)


# --- tests ------------------------------------------------------------------------------------------------------

def test_writes_made_while_paused_reach_the_cold_store(server, cold, paused):
    bucket = link(server, cold)
    s3 = server.client()

    # Objects that are already in the cold store, for the deletes to remove there.
    set_drain_paused(server, False)
    for key in ("old/gone-1", "old/gone-2", "old/gone-3", "old/kept"):
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode(), ContentType="text/plain")
    wait_drained(server, bucket)
    assert set(cold.keys()) == {"old/gone-1", "old/gone-2", "old/gone-3", "old/kept"}
    set_drain_paused(server, True)
    cold.proxy.reset_counts()

    expected: dict[str, tuple[bytes, dict[str, str], dict[str, str]]] = {}

    def put(key: str, data: bytes, content_type: str, meta: dict[str, str], **extra) -> None:
        s3.put_object(Bucket=bucket, Key=key, Body=data, ContentType=content_type, Metadata=meta, **extra)
        expected[key] = (data, {"content-type": content_type}, meta)

    put("plain/empty", b"", "application/x-empty", {})
    put("plain/small.txt", b"hello cold world\n", "text/plain", {"origin": "atoll", "n": "1"})
    put("plain/blob.bin", body(300 * KiB + 7), "application/octet-stream", {"kind": "random"},
        ContentDisposition='attachment; filename="blob.bin"', CacheControl="max-age=60")
    expected["plain/blob.bin"][1].update({"content-disposition": 'attachment; filename="blob.bin"',
                                          "cache-control": "max-age=60"})

    # Multipart: three parts of the (lowered) minimum size and a short last part.
    parts = [body(PART), body(PART), body(PART), body(1234)]
    upload = s3.create_multipart_upload(Bucket=bucket, Key="multi/obj", ContentType="application/x-multi",
                                        Metadata={"parts": "4"})
    done = [{"PartNumber": n, "ETag": s3.upload_part(Bucket=bucket, Key="multi/obj", UploadId=upload["UploadId"],
                                                     PartNumber=n, Body=p)["ETag"]}
            for n, p in enumerate(parts, 1)]
    s3.complete_multipart_upload(Bucket=bucket, Key="multi/obj", UploadId=upload["UploadId"],
                                 MultipartUpload={"Parts": done})
    expected["multi/obj"] = (b"".join(parts), {"content-type": "application/x-multi"}, {"parts": "4"})

    # Copies: metadata kept, metadata replaced, and a metadata-replacing self-copy of a journaled object.
    s3.copy_object(Bucket=bucket, Key="copy/kept-meta", CopySource={"Bucket": bucket, "Key": "plain/small.txt"})
    expected["copy/kept-meta"] = expected["plain/small.txt"]
    s3.copy_object(Bucket=bucket, Key="copy/new-meta", CopySource={"Bucket": bucket, "Key": "plain/blob.bin"},
                   MetadataDirective="REPLACE", ContentType="application/x-copied", Metadata={"copied": "yes"})
    expected["copy/new-meta"] = (expected["plain/blob.bin"][0], {"content-type": "application/x-copied"},
                                 {"copied": "yes"})
    put("self/obj", body(40 * KiB), "text/x-before", {"stage": "before"})
    s3.copy_object(Bucket=bucket, Key="self/obj", CopySource={"Bucket": bucket, "Key": "self/obj"},
                   MetadataDirective="REPLACE", ContentType="text/x-after", Metadata={"stage": "after"})
    expected["self/obj"] = (expected["self/obj"][0], {"content-type": "text/x-after"}, {"stage": "after"})
    # A self-copy of a clean object (already drained) must travel too.
    s3.copy_object(Bucket=bucket, Key="old/kept", CopySource={"Bucket": bucket, "Key": "old/kept"},
                   MetadataDirective="REPLACE", ContentType="text/x-recast", Metadata={"recast": "1"})
    expected["old/kept"] = (b"old/kept", {"content-type": "text/x-recast"}, {"recast": "1"})

    # Deletes: of a drained object, of one written while paused (never in the cold store), and in bulk.
    s3.delete_object(Bucket=bucket, Key="old/gone-1")
    put("plain/short-lived", b"never drained", "text/plain", {})
    s3.delete_object(Bucket=bucket, Key="plain/short-lived")
    expected.pop("plain/short-lived")
    result = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "old/gone-2"}, {"Key": "old/gone-3"},
                                                                   {"Key": "never/existed"}]})
    assert not result.get("Errors")

    # Nothing has crossed the WAN; the journal holds one entry per touched key, bytes of the newest writes.
    time.sleep(1.2)  # longer than the drainer's idle poll: a paused drainer had its chance to misbehave
    assert cold.proxy.requests() == []
    touched = set(expected) | {"old/gone-1", "old/gone-2", "old/gone-3", "plain/short-lived", "never/existed"}
    journal = {row[0]: (row[1], row[2]) for row in
               meta_query(server, "SELECT key, op, size FROM drain WHERE bucket = ?", (bucket,))}
    assert set(journal) == touched
    assert {k for k, (op, _) in journal.items() if op == "delete"} == touched - set(expected)
    assert backlog(server, bucket) == (len(touched), sum(len(v[0]) for v in expected.values()))
    assert set(cold.keys()) == {"old/gone-1", "old/gone-2", "old/gone-3", "old/kept"}

    set_drain_paused(server, False)
    wait_drained(server, bucket)

    assert backlog(server, bucket) == (0, 0)
    assert set(cold.names()) == {f"{PREFIX}/{k}" for k in expected}  # under the prefix, and nothing else
    for key, (data, headers, meta) in expected.items():
        got_data, got_headers, got_meta = cold.get_object(key)
        assert hashlib.sha256(got_data).hexdigest() == hashlib.sha256(data).hexdigest(), key
        assert len(got_data) == len(data), key
        assert {k: v for k, v in got_headers.items() if k in headers} == headers, key
        assert got_meta == meta, key
        assert uploads(cold, key) == 1, (key, cold.proxy.requests())
    for key in ("old/gone-1", "old/gone-2", "old/gone-3", "plain/short-lived", "never/existed"):
        assert uploads(cold, key) == 0, key  # written and deleted before a drain: only a delete travels
    assert delete_requests(cold) == 5, [r for r in cold.proxy.requests() if "/plain/" not in r.path]

    # The local copies are untouched by draining.
    for key, (data, headers, meta) in expected.items():
        got = s3.get_object(Bucket=bucket, Key=key)
        assert got["Body"].read() == data
        assert got["ContentType"] == headers["content-type"] and got["Metadata"] == meta


def test_overwrites_coalesce_into_one_upload_of_the_newest_bytes(server, cold, paused):
    bucket = link(server, cold)
    s3 = server.client()
    versions = [body(20 * KiB + i) for i in range(10)]
    before_first = time.time()
    s3.put_object(Bucket=bucket, Key="hot/key", Body=versions[0], ContentType="text/v0")
    after_first = time.time()
    for i, data in enumerate(versions[1:], 1):
        s3.put_object(Bucket=bucket, Key="hot/key", Body=data, ContentType=f"text/v{i}", Metadata={"v": str(i)})
    s3.put_object(Bucket=bucket, Key="hot/other", Body=b"x" * 100)

    rows = meta_query(server, "SELECT op, size, since, attempts FROM drain WHERE bucket = ? AND key = ?",
                      (bucket, "hot/key"))
    assert len(rows) == 1
    op, size, since, attempts = rows[0]
    assert (op, size, attempts) == ("put", len(versions[-1]), 0)
    # The recovery point is the oldest undrained write, not the newest.
    assert before_first - 0.01 <= since <= after_first + 0.01
    assert backlog(server, bucket) == (2, len(versions[-1]) + 100)
    oldest = meta_query(server, "SELECT min(since) FROM drain WHERE bucket = ?", (bucket,))[0][0]
    assert oldest == since
    shown = server.cli("bucket", "show", bucket, check=False)
    assert shown.returncode == 0 and re.search(r"backlog:\s+2 objects", shown.stdout), shown.stdout + shown.stderr

    set_drain_paused(server, False)
    wait_drained(server, bucket)
    assert uploads(cold, "hot/key") == 1, cold.proxy.requests()
    assert len(cold.proxy.requests(path_contains="/hot/key")) == 1  # no HEAD, no retry, nothing else
    data, headers, meta = cold.get_object("hot/key")
    assert data == versions[-1]
    assert headers["content-type"] == "text/v9" and meta == {"v": "9"}
    assert backlog(server, bucket) == (0, 0)
    assert set(cold.keys()) == {"hot/key", "hot/other"}


def test_metadata_replaced_while_older_bytes_are_in_flight_still_reaches_the_cold_store(server, cold):
    """A self-copy with REPLACE keeps the version id; it must not be mistaken for the write already on its way."""
    bucket = link(server, cold)
    s3 = server.client()
    data = body(300 * KiB)
    cold.proxy.bandwidth = 200 * KiB  # about a second and a half for the upload
    s3.put_object(Bucket=bucket, Key="meta/obj", Body=data, ContentType="text/x-old", Metadata={"gen": "old"})
    deadline = time.monotonic() + 10
    while not uploads(cold, "meta/obj"):
        assert time.monotonic() < deadline, "the drain never started"
        time.sleep(0.01)
    s3.copy_object(Bucket=bucket, Key="meta/obj", CopySource={"Bucket": bucket, "Key": "meta/obj"},
                   MetadataDirective="REPLACE", ContentType="text/x-new", Metadata={"gen": "new"})
    assert backlog(server, bucket)[0] == 1
    cold.proxy.bandwidth = None
    wait_drained(server, bucket)
    got_data, headers, meta = cold.get_object("meta/obj")
    assert got_data == data
    assert (headers["content-type"], meta) == ("text/x-new", {"gen": "new"})
    assert uploads(cold, "meta/obj") == 2  # the old upload finished, then the new metadata went up once


def test_unlink_is_refused_while_the_backlog_is_not_empty(server, cold):
    bucket = link(server, cold)
    try:
        _unlink_waits_for_the_backlog(server, cold, bucket)
    finally:
        set_drain_paused(server, False)


def _unlink_waits_for_the_backlog(server: AtollProcess, cold: Cold, bucket: str) -> None:
    # The operator's switch this time, not the flag underneath it.
    paused = server.cli("drain", "pause", check=False)
    assert paused.returncode == 0, paused.stderr
    assert meta_query(server, "SELECT value FROM counters WHERE name = 'drain_paused'") == [(1,)]
    time.sleep(0.2)
    server.client().put_object(Bucket=bucket, Key="pending", Body=b"not yet drained")
    refused = server.cli("bucket", "unlink", bucket, check=False)
    assert refused.returncode != 0
    message = refused.stderr + refused.stdout
    assert ("drain" in message or "backlog" in message) and "Traceback" not in message, message
    assert meta_query(server, "SELECT mode FROM links WHERE bucket = ?", (bucket,)) == [("writeback",)]

    # Nor may the mode change away from write-back while writes wait.
    switched = server.cli("bucket", "link", bucket, cold.url, "--mode", "cache", *cold.link_options(), check=False)
    assert switched.returncode != 0 and "Traceback" not in switched.stderr, switched.stderr
    assert meta_query(server, "SELECT mode FROM links WHERE bucket = ?", (bucket,)) == [("writeback",)]

    resumed = server.cli("drain", "resume", check=False)
    assert resumed.returncode == 0, resumed.stderr
    wait_drained(server, bucket)
    assert cold.get("pending") == b"not yet drained"
    done = server.cli("bucket", "unlink", bucket, check=False)
    assert done.returncode == 0, done.stderr
    assert meta_query(server, "SELECT count(*) FROM links WHERE bucket = ?", (bucket,)) == [(0,)]


# --- checkpoint groups ------------------------------------------------------------------------------------------

SHARDS = 20
SHARD_SIZE = 150 * KiB


@pytest.mark.parametrize("marker_order", ["last", "first"])
def test_checkpoint_marker_is_never_visible_before_all_shards(server, cold, marker_order):
    bucket = link(server, cold)
    grouped = server.cli("bucket", "group", bucket, "ckpt/", check=False)
    assert grouped.returncode == 0 and ".metadata" in grouped.stdout, grouped.stderr + grouped.stdout
    s3 = server.client()
    shards = {f"ckpt/step-1/shard-{i}": body(SHARD_SIZE) for i in range(SHARDS)}
    marker = "ckpt/step-1/.metadata"
    marker_body = b'{"step": 1}'

    # About two seconds of shard uploads, so the drain is visibly under way while the cold store is watched.
    cold.proxy.bandwidth = 1.5 * MiB
    watch = ColdWatcher(cold, marker, set(shards))
    watch.start()
    try:
        if marker_order == "first":
            # A marker written before its shards only makes sense to the drainer if they all wait together.
            set_drain_paused(server, True)
            s3.put_object(Bucket=bucket, Key=marker, Body=marker_body)
            for key, data in shards.items():
                s3.put_object(Bucket=bucket, Key=key, Body=data)
            set_drain_paused(server, False)
        else:
            # The drain runs while the trainer writes; the marker comes last, with shards still on the way.
            for key, data in shards.items():
                s3.put_object(Bucket=bucket, Key=key, Body=data)
            s3.put_object(Bucket=bucket, Key=marker, Body=marker_body)
            assert len(set(cold.keys()) & set(shards)) < SHARDS, "the drain finished before the marker came"
        wait_drained(server, bucket)
    finally:
        watch.stop()

    assert watch.error is None, repr(watch.error)
    assert watch.violations == [], watch.violations[:3]
    assert watch.partial_sightings > 0, "the cold store was never seen mid-checkpoint: the test proved nothing"
    assert set(cold.keys()) == set(shards) | {marker}
    assert cold.get(marker) == marker_body
    for key, data in list(shards.items())[:3]:
        assert cold.get(key) == data
    # The marker went up once, after every shard had.
    requests = cold.proxy.requests()
    marker_at = [i for i, r in enumerate(requests) if r.path.partition("?")[0] == cold.path(marker)]
    shard_at = [i for i, r in enumerate(requests) if r.path.partition("?")[0] in {cold.path(k) for k in shards}]
    assert uploads(cold, marker) == 1 and marker_at[0] > max(shard_at)


class ColdWatcher(threading.Thread):
    """Lists the cold store directly every few tens of milliseconds and records any listing that shows the
    marker while a shard is missing."""

    def __init__(self, cold: Cold, marker: str, shards: set[str]) -> None:
        super().__init__(daemon=True)
        self.cold, self.marker, self.shards = cold, marker, shards
        self.violations: list[str] = []
        self.partial_sightings = 0
        self.error: BaseException | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            self._watch()
        except BaseException as exc:  # noqa: BLE001 - reported by the test, not lost with the thread
            self.error = exc

    def _watch(self) -> None:
        while not self._halt.is_set():
            seen = set(self.cold.keys())
            present = seen & self.shards
            if self.marker in seen and present != self.shards:
                self.violations.append(f"marker visible with {len(present)}/{len(self.shards)} shards")
            if 0 < len(present) < len(self.shards):
                self.partial_sightings += 1
            time.sleep(0.03)

    def stop(self) -> None:
        self._halt.set()
        self.join(10)


# --- crash during a drain ---------------------------------------------------------------------------------------

def test_kill_during_drain_loses_nothing_and_leaves_no_stray_key(tmp_path, cold, record_property):
    server = AtollProcess(data_dir=str(tmp_path / "data"), extra_env=SERVER_ENV).start()
    try:
        bucket = link(server, cold)
        s3 = server.client()
        # Already in the cold store: one to overwrite, two to delete while the server dies.
        for key in ("pre/overwritten", "pre/deleted-1", "pre/deleted-2"):
            s3.put_object(Bucket=bucket, Key=key, Body=b"first " + key.encode())
        wait_drained(server, bucket)
        cold.proxy.reset_counts()

        set_drain_paused(server, True)
        expected: dict[str, bytes] = {}
        # Oldest first in the journal: an object the drain sends as a multipart upload, in flight at the kill.
        expected["big/multipart.bin"] = body(PART_SIZE + MiB)
        s3.put_object(Bucket=bucket, Key="big/multipart.bin", Body=expected["big/multipart.bin"],
                      ContentType="application/x-big")
        for i in range(16):
            key = f"small/obj-{i:02d}"
            expected[key] = body(64 * KiB + secrets.randbelow(192 * KiB))
            s3.put_object(Bucket=bucket, Key=key, Body=expected[key], Metadata={"i": str(i)})
        for i in range(0, 16, 5):  # overwritten before any drain: only the newest bytes are expected
            key = f"small/obj-{i:02d}"
            expected[key] = body(50 * KiB)
            s3.put_object(Bucket=bucket, Key=key, Body=expected[key], Metadata={"i": str(i)})
        expected["pre/overwritten"] = b"second version"
        s3.put_object(Bucket=bucket, Key="pre/overwritten", Body=expected["pre/overwritten"])
        s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "pre/deleted-1"}, {"Key": "pre/deleted-2"}]})

        cold.proxy.bandwidth = 1 * MiB
        set_drain_paused(server, False)
        deadline = time.monotonic() + 20
        while len(set(cold.keys()) & set(expected)) < 5:
            assert time.monotonic() < deadline, f"drain too slow: {cold.proxy.requests()[-5:]}"
            time.sleep(0.02)
        server.kill()  # SIGKILL, uploads in flight
        at_kill = backlog(server, bucket)[0]
        drained_at_kill = len(set(cold.keys()) & set(expected))
        assert at_kill > 0 and drained_at_kill < len(expected), (at_kill, drained_at_kill)

        cold.proxy.heal()
        server.start()
        wait_drained(server, bucket, timeout=60)

        assert set(cold.names()) == {f"{PREFIX}/{k}" for k in expected}
        for key, data in expected.items():
            got = cold.get(key)
            assert got is not None and hashlib.md5(got).digest() == hashlib.md5(data).digest(), key
            # And nothing was lost locally either.
            assert hashlib.md5(s3.get_object(Bucket=bucket, Key=key)["Body"].read()).digest() == \
                hashlib.md5(data).digest(), key
        for key in ("pre/deleted-1", "pre/deleted-2"):
            assert cold.get(key) is None
        assert delete_requests(cold) >= 2

        counts = {key: uploads(cold, key) for key in expected}
        assert all(n >= 1 for n in counts.values()), counts
        reuploads = sum(n - 1 for n in counts.values())
        record_property("reuploads_after_kill", reuploads)
        print(f"[{cold.kind}] kill -9 during drain: {at_kill} journal entries left, {drained_at_kill} objects "
              f"already drained, {reuploads} re-uploads after restart ({counts['big/multipart.bin']} uploads of "
              f"the multipart object)")
        # Only uploads in flight at the kill can be repeated, and no more of them run at once than the drain's
        # concurrency.
        assert reuploads <= DRAIN_CONCURRENCY, counts
    finally:
        server.kill()
    assert "Traceback" not in server.log_text(), server.log_text()[-5000:]
