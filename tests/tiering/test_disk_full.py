"""A full disk (ENOSPC) under every write path, on a real small filesystem: the server's data directory (blobs,
tmp/ and meta.sqlite3) is a 48 MiB tmpfs.

What is asserted: writes are refused with 503 SlowDown and Retry-After (single PUTs, UploadPart, CopyObject,
UploadPartCopy, and metadata-only writes once the disk is full to the last byte); nothing is left in tmp/ and no
blob file is unreferenced; every acknowledged object reads back byte-exact; CompleteMultipartUpload, which copies
no data, still succeeds on a disk full of blobs; writes succeed again without a restart once space returns
(another file removed, or objects deleted through S3); a read-through fill that cannot keep its blocks still
answers byte-exact and fills properly later; a staging job fails cleanly and succeeds when rerun; the access
log thread survives.

As root the tmpfs is mounted directly; otherwise (or with ATOLL_TEST_UNSHARE=1) the server runs in a user and
mount namespace of its own (``unshare``) with the tmpfs mounted there: the test then reads and writes files
through ``/proc/<server pid>/root`` and runs SQLite and the CLI inside the namespace (``nsenter``), as SQLite
resolves that magic link to a path where the tmpfs is not mounted. Either way the test does the same, and it
fails if neither can be set up.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from harness import ATOLL, AtollProcess
from tierutil import ColdSite, client, pattern, tier_env

pytestmark = pytest.mark.timeout(120)

KiB = 1 << 10
MiB = 1 << 20
DISK = 48 * MiB
OBJECT = 2 * MiB
PART = 1 * MiB  # the server's minimum part size here
NEARLY_FULL = 2 * MiB  # free space below any blob reserve (at least 4 MiB), above what metadata needs
GC_WAIT = 25.0  # replaced blobs are collected after a 10 s grace, by a loop that runs every 2-3 s


# --- a small filesystem for the server --------------------------------------------------------------------------

class SmallDisk:
    """A tmpfs of DISK bytes mounted on ``mountpoint``, the server's data directory."""

    def __init__(self, mountpoint: str) -> None:
        self.mountpoint = mountpoint
        self.mounted = False
        self.server: AtollProcess | None = None
        os.makedirs(mountpoint, exist_ok=True)
        if os.geteuid() == 0 and not os.environ.get("ATOLL_TEST_UNSHARE"):
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK // MiB}m", "tmpfs", mountpoint],
                                  capture_output=True, text=True)
            self.mounted = done.returncode == 0
        if not self.mounted:
            probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                                    'mount -t tmpfs -o size=1m tmpfs "$0"', mountpoint],
                                   capture_output=True, text=True)
            if probe.returncode != 0:
                pytest.fail("cannot make a small filesystem: not root (or mount failed), and unshare --user "
                            f"--map-root-user --mount cannot mount a tmpfs either: {probe.stderr.strip()}",
                            pytrace=False)

    def wrap(self, argv: list[str]) -> list[str]:
        """The server's command line: as is on a directly mounted tmpfs, else inside a namespace that mounts it."""
        if self.mounted:
            return argv
        script = f'mount -t tmpfs -o size={DISK // MiB}m tmpfs "$0" && exec "$@"'
        return ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, self.mountpoint, *argv]

    def run(self, argv: list[str]) -> subprocess.CompletedProcess:
        """Run ``argv`` where the data directory is the tmpfs (inside the server's namespaces if need be)."""
        if not self.mounted:
            assert self.server is not None and self.server.proc is not None
            argv = ["nsenter", "--target", str(self.server.proc.pid), "--user", "--mount", "--preserve-credentials",
                    *argv]
        return subprocess.run(argv, env=self.server.env(), capture_output=True, text=True, timeout=60)

    def path(self, *parts: str) -> str:
        """A path in the data directory as the server sees it, for plain file access."""
        if self.mounted:
            return os.path.join(self.mountpoint, *parts)
        assert self.server is not None and self.server.proc is not None
        return os.path.join(f"/proc/{self.server.proc.pid}/root{self.mountpoint}", *parts)

    def free(self) -> int:
        st = os.statvfs(self.path())
        return st.f_bavail * st.f_frsize

    def fill(self, leave: int = 0) -> None:
        """Take the free space down to ``leave`` bytes with a file of the test's own (not Atoll's)."""
        with open(self.path("filler.bin"), "ab") as f:
            if leave:
                if self.free() > leave:
                    os.posix_fallocate(f.fileno(), f.seek(0, os.SEEK_END), self.free() - leave)
                return
            for chunk in (64 * KiB, 4 * KiB, 512):
                try:
                    while True:
                        os.write(f.fileno(), b"\0" * chunk)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc

    def unfill(self) -> None:
        try:
            os.unlink(self.path("filler.bin"))
        except FileNotFoundError:
            pass

    def close(self) -> None:
        if self.mounted and subprocess.run(["umount", self.mountpoint], capture_output=True).returncode != 0:
            subprocess.run(["umount", "--lazy", self.mountpoint], capture_output=True)


@pytest.fixture
def disk(tmp_path):
    small = SmallDisk(str(tmp_path / "data"))
    yield small
    small.close()


@pytest.fixture
def server(disk):
    """A server of its own per test, on a disk of its own: a test that fills it needs no cleaning up."""
    proc = AtollProcess(data_dir=disk.mountpoint, wrap=disk.wrap,
                        extra_env=tier_env(warm_capacity=1 << 40, min_part_size=PART))
    disk.server = proc
    proc.start()
    yield proc
    code = proc.stop()
    log = proc.log_text()
    assert code == 0, log[-3000:]
    assert "Traceback" not in log, log[-5000:]


@pytest.fixture
def s3(server, disk):
    yield client(server)
    disk.unfill()


# --- looking at the data directory ------------------------------------------------------------------------------

_QUERY = ("import json, sqlite3, sys; c = sqlite3.connect(f'file:{sys.argv[1]}?mode=ro', uri=True, timeout=10); "
          "print(json.dumps(c.execute(sys.argv[2], json.loads(sys.argv[3])).fetchall()))")


def meta_query(disk: SmallDisk, sql: str, params: tuple = ()) -> list[tuple]:
    """A read-only query of the running server's metadata (text and numbers only)."""
    done = disk.run([sys.executable, "-c", _QUERY, os.path.join(disk.mountpoint, "meta.sqlite3"), sql,
                     json.dumps(params)])
    assert done.returncode == 0, done.stderr
    return [tuple(row) for row in json.loads(done.stdout)]


def strays(disk: SmallDisk) -> list[str]:
    """Files in tmp/, and blob files no metadata row refers to (the metadata is read first: a blob the collector
    deletes meanwhile is then simply not on disk)."""
    referenced = {extent[0] for (extents,) in meta_query(disk, "SELECT extents FROM objects")
                  for extent in json.loads(extents)}
    referenced |= {blob for (blob,) in meta_query(disk, "SELECT blob_id FROM parts UNION SELECT blob_id FROM garbage")}
    blobs = Path(disk.path("blobs"))
    on_disk = {f.name for sub in blobs.iterdir() for f in sub.iterdir()}
    return [f"tmp/{name}" for name in os.listdir(disk.path("tmp"))] + sorted(on_disk - referenced)


def refused(call) -> ClientError:
    """``call`` must fail with 503 SlowDown and a Retry-After."""
    with pytest.raises(ClientError) as caught:
        call()
    response = caught.value.response
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 503, response
    assert response["Error"]["Code"] == "SlowDown", response
    assert int(response["ResponseMetadata"]["HTTPHeaders"]["retry-after"]) >= 1, response
    return caught.value


def succeeds(call, timeout: float):
    """``call``'s result once it stops being refused for want of space (within ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "SlowDown" or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def read(s3, bucket: str, key: str, **kwargs) -> bytes:
    return s3.get_object(Bucket=bucket, Key=key, **kwargs)["Body"].read()


def upload_parts(s3, bucket: str, key: str, seed: str) -> tuple[str, list[dict], bytes]:
    """A multipart upload with two parts uploaded: (upload id, parts for Complete, the object's bytes). Aborted
    if a part is refused."""
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    parts, body = [], b""
    try:
        for number in (1, 2):
            data = pattern(PART, f"{seed}-{number}")
            etag = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data)["ETag"]
            parts.append({"PartNumber": number, "ETag": etag})
            body += data
    except ClientError:
        s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        raise
    return upload_id, parts, body


# --- the tests --------------------------------------------------------------------------------------------------

def test_full_disk_refuses_writes_cleanly_keeps_acknowledged_data_and_recovers_without_restart(server, disk, s3):
    bucket = f"full-{secrets.token_hex(3)}"
    s3.create_bucket(Bucket=bucket)
    pid = server.proc.pid
    acked: dict[str, bytes] = {}
    # Uploaded before the disk fills; completed after: Complete writes no data, only metadata.
    pending_id, pending_parts, pending_body = upload_parts(s3, bucket, "pending-mpu", "pending")

    # Fill the disk with single and multipart PUTs until both are refused.
    single_refused = part_refused = None
    for i in range(100):
        if single_refused and part_refused:
            break
        key = f"obj-{i:03d}"
        if i % 3 == 2:
            try:
                upload_id, parts, body = upload_parts(s3, bucket, key, key)
            except ClientError as exc:
                part_refused = exc
                continue
            s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id,
                                         MultipartUpload={"Parts": parts})
            acked[key] = body
        else:
            body = pattern(OBJECT, key)
            try:
                s3.put_object(Bucket=bucket, Key=key, Body=body)
            except ClientError as exc:
                single_refused = exc
                continue
            acked[key] = body
    assert single_refused and part_refused, "the disk never filled"
    assert len(acked) >= 10, sorted(acked)
    for exc in (single_refused, part_refused):
        response = exc.response
        assert (response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Code"]) == (503, "SlowDown")
        assert response["ResponseMetadata"]["HTTPHeaders"]["retry-after"] == "5"

    # Topped up with small PUTs until one is refused: no write of 256 KiB or more fits any more.
    for i in range(20):
        key, body = f"top-{i:02d}", pattern(256 * KiB, f"top-{i}")
        try:
            s3.put_object(Bucket=bucket, Key=key, Body=body)
        except ClientError as exc:
            assert exc.response["Error"]["Code"] == "SlowDown", exc.response
            break
        acked[key] = body
    else:
        raise AssertionError("small PUTs were never refused")

    # Every other path that writes data is refused the same way; Complete (no data) is not.
    source = next(iter(acked))
    refused(lambda: s3.put_object(Bucket=bucket, Key="bigger", Body=pattern(2 * OBJECT, "bigger")))
    refused(lambda: s3.copy_object(Bucket=bucket, Key="copy", CopySource={"Bucket": bucket, "Key": source}))
    copy_upload = s3.create_multipart_upload(Bucket=bucket, Key="part-copy")["UploadId"]
    refused(lambda: s3.upload_part_copy(Bucket=bucket, Key="part-copy", UploadId=copy_upload, PartNumber=1,
                                        CopySource={"Bucket": bucket, "Key": source}))
    s3.complete_multipart_upload(Bucket=bucket, Key="pending-mpu", UploadId=pending_id,
                                 MultipartUpload={"Parts": pending_parts})
    acked["pending-mpu"] = pending_body
    assert strays(disk) == []
    for key, body in acked.items():
        assert read(s3, bucket, key) == body, key

    # Full to the last byte (a file of someone else's): metadata-only writes are refused too, once the
    # metadata store's WAL has no room left; reads go on.
    disk.fill()
    refusal = None
    for i in range(5000):
        try:
            s3.put_object(Bucket=bucket, Key=f"empty-{i:04d}", Body=b"")
        except ClientError as exc:
            refusal = exc
            break
        acked[f"empty-{i:04d}"] = b""
    assert refusal is not None, "zero-byte PUTs never ran out of metadata space"
    # A zero-byte PUT writes no blob data: what ran out is SQLite's room (SQLITE_FULL), mapped like a full disk.
    assert refusal.response["Error"]["Code"] == "SlowDown" and "metadata" in refusal.response["Error"]["Message"] \
        and refusal.response["ResponseMetadata"]["HTTPHeaders"]["retry-after"] == "5", refusal.response
    refused(lambda: s3.create_multipart_upload(Bucket=bucket, Key="needs-metadata"))
    assert read(s3, bucket, source) == acked[source]
    for _ in range(40):  # more access-log lines than fit in the last page of its file
        s3.head_object(Bucket=bucket, Key=source)
    time.sleep(1.0)  # flushed (every 0.5 s): the write fails

    # The other file goes: metadata writes work again on the same connection, no restart.
    disk.unfill()
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="needs-metadata")["UploadId"]
    s3.abort_multipart_upload(Bucket=bucket, Key="needs-metadata", UploadId=upload_id)
    s3.put_object(Bucket=bucket, Key="empty-after", Body=b"")
    acked["empty-after"] = b""

    # Deleting objects through S3 frees space for new PUTs once the garbage collector has run.
    for key in [k for k in acked if k.startswith("obj-")][:4]:
        s3.delete_object(Bucket=bucket, Key=key)
        del acked[key]
    body = pattern(OBJECT, "after-delete")
    succeeds(lambda: s3.put_object(Bucket=bucket, Key="after-delete", Body=body), GC_WAIT)
    acked["after-delete"] = body
    # The copy needs a second object's room: the collector may not have freed all four deleted blobs in one pass.
    copied = succeeds(lambda: s3.copy_object(Bucket=bucket, Key="copy",
                                             CopySource={"Bucket": bucket, "Key": "after-delete"}), GC_WAIT)
    assert copied["CopyObjectResult"]["ETag"]
    acked["copy"] = body
    request_id = s3.head_object(Bucket=bucket, Key="copy")["ResponseMetadata"]["RequestId"]

    assert server.proc.pid == pid and server.proc.poll() is None
    assert strays(disk) == []
    for key, data in acked.items():
        assert read(s3, bucket, key) == data, key
    assert meta_query(disk, "PRAGMA integrity_check") == [("ok",)]
    # The access log thread outlived its failed writes.
    deadline = time.monotonic() + 5
    while request_id not in Path(disk.path("logs", "access.log")).read_text(errors="replace"):
        assert time.monotonic() < deadline, "the access log stopped being written"
        time.sleep(0.2)
    assert "access log" in server.log_text() and "lines were lost" in server.log_text()


@pytest.fixture
def linked(server, disk, azurite):
    """A bucket linked (cache mode) to a fresh Azurite container prefix holding three 1 MiB objects."""
    site = ColdSite("azure", azurite, "diskfull")
    cold = site.cold()
    bodies = {f"data/{name}.bin": pattern(MiB, f"{cold.prefix}-{name}") for name in ("a", "b", "c")}
    for key, body in bodies.items():
        cold.put(key, body)
    bucket = f"linked-{secrets.token_hex(3)}"
    client(server).create_bucket(Bucket=bucket)
    done = disk.run([ATOLL, "bucket", "link", bucket, cold.url, "--mode", "cache", *cold.link_options(),
                     "--data-dir", disk.mountpoint])
    assert done.returncode == 0, done.stdout + done.stderr
    cold.proxy.reset_counts()
    yield bucket, cold, bodies
    site.close()


def residency(disk: SmallDisk, bucket: str, key: str) -> str | None:
    rows = meta_query(disk, "SELECT residency FROM objects WHERE bucket = ? AND key = ?", (bucket, key))
    return {0: "absent", 1: "partial", 2: "resident"}[rows[0][0]] if rows else None


def test_read_through_on_a_full_disk_answers_and_fills_later(server, disk, s3, linked):
    bucket, cold, bodies = linked
    a, b = "data/a.bin", "data/b.bin"

    # Room for metadata but not for blocks: the fill starts, every block is served and none is kept.
    disk.fill(leave=NEARLY_FULL)
    assert read(s3, bucket, a) == bodies[a]
    assert read(s3, bucket, a, Range="bytes=70000-200000") == bodies[a][70000:200001]
    assert residency(disk, bucket, a) == "partial"
    recorded = meta_query(disk, "SELECT f.blocks != zeroblob(length(f.blocks)) FROM fills f JOIN objects o "
                                "ON o.version_id = f.version_id WHERE o.bucket = ? AND o.key = ?", (bucket, a))
    assert recorded == [(0,)], "a block that could not be written was recorded"

    # No room at all: a partial object still answers; a new key answers or is refused cleanly (its lookup must
    # record the key, which needs metadata space).
    disk.fill()
    assert read(s3, bucket, a) == bodies[a]
    try:
        assert read(s3, bucket, b) == bodies[b]
    except ClientError as exc:
        assert exc.response["ResponseMetadata"]["HTTPStatusCode"] == 503, exc.response
        assert "retry-after" in exc.response["ResponseMetadata"]["HTTPHeaders"], exc.response
    assert strays(disk) == []

    # Space returns: both fill properly, and the next reads are warm.
    disk.unfill()
    assert read(s3, bucket, a) == bodies[a]
    assert read(s3, bucket, b) == bodies[b]
    assert residency(disk, bucket, a) == residency(disk, bucket, b) == "resident"
    before = cold.gets(a) + cold.gets(b)
    assert read(s3, bucket, a) == bodies[a] and read(s3, bucket, b) == bodies[b]
    assert cold.gets(a) + cold.gets(b) == before
    assert strays(disk) == []


def stage(server: AtollProcess, disk: SmallDisk, bucket: str) -> tuple[int, dict]:
    done = disk.run([ATOLL, "stage", bucket, "--prefix", "data/", "--json", "--data-dir", disk.mountpoint])
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout)


def test_staging_on_a_full_disk_fails_cleanly_and_succeeds_when_rerun(server, disk, s3, linked):
    bucket, cold, bodies = linked
    disk.fill(leave=NEARLY_FULL)
    code, job = stage(server, disk, bucket)
    assert code == 1 and job["state"] == "failed", job
    assert job["progress"]["failed"] == len(bodies), job
    assert "out of space" in job["error"], job
    assert strays(disk) == []
    assert all(residency(disk, bucket, key) != "resident" for key in bodies)

    disk.unfill()
    code, job = stage(server, disk, bucket)
    assert code == 0 and job["state"] == "done", job
    assert job["progress"]["objects_staged"] == len(bodies), job
    assert all(residency(disk, bucket, key) == "resident" for key in bodies)
    for key, body in bodies.items():
        assert read(s3, bucket, key) == body
    assert strays(disk) == []
