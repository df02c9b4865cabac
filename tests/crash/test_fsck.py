"""``atoll fsck`` against real damage, and the start-up reclamation of what a SIGKILL leaves behind.

Damage is made the way it happens: blob files deleted, truncated or with a flipped byte, a stray file and a temp
file dropped into the data directory, a hand-edited counter, journal entries planted with sqlite3. Each report is
checked finding by finding, then the repair, then what S3 clients see afterwards (a version the cold store has
is fetched again and is byte-exact; a lost one answers 404; a corrupt one with no other copy is kept).

The kill test SIGKILLs a server while PUTs, multipart uploads and write-through uploads (held in flight by a
stalled cold store, so their blobs are committed and their rows are not) are running, check that an offline
fsck sees the leftovers, and that after a restart fsck reports clean: the server reclaimed them on its own.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sqlite3
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import botocore.exceptions
import pytest

from harness import ATOLL, AtollProcess

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tiering"))
from tierutil import BLOCK, ColdSite, client, link_bucket, pattern, start_server  # noqa: E402

pytestmark = pytest.mark.timeout(180)

PART = 64 << 10
# One file per object (no packing): these tests damage blob files; tests/packed/test_fsck_segments.py damages
# segments.
MP_ENV = {"ATOLL_MIN_PART_SIZE": str(PART), "ATOLL_PACKED_MAX_SIZE": "0"}
GRACE = 3  # seconds: --grace of the online checks


# helpers ---------------------------------------------------------------------------------------------------
def fsck(server: AtollProcess, *args: str) -> tuple[int, dict]:
    done = server.cli("fsck", "--json", *args, check=False)
    assert done.returncode in (0, 1), f"fsck failed ({done.returncode}): {done.stderr}{done.stdout}"
    assert "Traceback" not in done.stderr, done.stderr
    report = json.loads(done.stdout)
    assert report["clean"] == (done.returncode == 0), report
    return done.returncode, report


def found(report: dict) -> set[tuple[str, str]]:
    """(kind, key, or the file for leftovers) of every finding."""
    return {(f["kind"], f.get("key") or f.get("where") or f.get("version_id", "")) for f in report["findings"]}


def finding(report: dict, kind: str, subject: str) -> dict:
    matches = [f for f in report["findings"] if f["kind"] == kind
               and subject in (f.get("key"), f.get("where"), f.get("version_id"))]
    assert len(matches) == 1, (kind, subject, report["findings"])
    return matches[0]


DRAIN_INSERT = "INSERT INTO drain (bucket, key, op, version_id, size, since, attempts, last_error, not_before) VALUES "


def incarnation(server: AtollProcess) -> str:
    """The server's marker of a run not yet stopped cleanly (under its node's run directory)."""
    return os.path.join(server.data_dir, "run", f"{socket.gethostname()}-{server.port}", "incarnation")


def meta(server: AtollProcess, sql: str, params: tuple = ()) -> list[tuple]:
    conn = sqlite3.connect(os.path.join(server.data_dir, "meta.sqlite3"), timeout=30)
    try:
        rows = conn.execute(sql, params).fetchall()
        conn.commit()
        return rows
    finally:
        conn.close()


def blob_file(server: AtollProcess, bucket: str, key: str, extent: int = 0) -> str:
    (extents,) = meta(server, "SELECT extents FROM objects WHERE bucket = ? AND key = ?", (bucket, key))[0]
    blob_id = json.loads(extents)[extent][0]
    return os.path.join(server.data_dir, "blobs", blob_id[:3], blob_id)


def flip_byte(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x40]))


def multipart(s3, bucket: str, key: str, parts: list[bytes]) -> None:
    upload = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    listed = [{"PartNumber": n, "ETag": s3.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=n,
                                                       Body=body)["ETag"]} for n, body in enumerate(parts, 1)]
    s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": listed})


def get(s3, bucket: str, key: str) -> bytes | None:
    try:
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except botocore.exceptions.ClientError as exc:
        assert exc.response["Error"]["Code"] == "NoSuchKey", exc.response
        return None


def plant(server: AtollProcess, where: str, content: bytes, age: float = 0.0) -> str:
    path = os.path.join(server.data_dir, where)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(content)
    if age:
        then = time.time() - age
        os.utime(path, (then, then))
    return path


def wait_drained(server: AtollProcess, bucket: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while meta(server, "SELECT count(*) FROM drain WHERE bucket = ?", (bucket,))[0][0]:
        assert time.monotonic() < deadline, meta(server, "SELECT * FROM drain")
        time.sleep(0.05)


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


# offline: a local bucket -------------------------------------------------------------------------------------
def test_offline_fsck_reports_and_repairs_damage(new_server):
    server = new_server(extra_env=MP_ENV)
    s3 = server.client()
    bucket = "fsck-local"
    s3.create_bucket(Bucket=bucket)
    bodies = {"gone": os.urandom(1000), "short": os.urandom(70_000), "flipped": os.urandom(5000),
              "fine": os.urandom(3000), "empty": b""}
    for key, body in bodies.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    mp = {key: [os.urandom(PART), os.urandom(1000)] for key in ("mp-flipped", "mp-fine")}
    for key, parts in mp.items():
        multipart(s3, bucket, key, parts)
    pending = s3.create_multipart_upload(Bucket=bucket, Key="pending")["UploadId"]
    for n in (1, 2):
        s3.upload_part(Bucket=bucket, Key="pending", UploadId=pending, PartNumber=n, Body=os.urandom(PART))
    assert server.stop() == 0
    code, report = fsck(server, "--checksums")
    assert code == 0 and report["mode"] == "offline" and report["findings"] == [], report
    assert report["counts"]["objects"] == 7 and report["counts"]["parts"] == 2
    assert report["counts"]["checksummed"] == 7 and report["counts"]["blob_files"] == 11

    os.unlink(blob_file(server, bucket, "gone"))
    os.truncate(blob_file(server, bucket, "short"), 100)
    flip_byte(blob_file(server, bucket, "flipped"), 17)
    flip_byte(blob_file(server, bucket, "mp-flipped", extent=1), 999)  # the second part
    (part_blob,) = meta(server, "SELECT blob_id FROM parts WHERE upload_id = ? AND part_number = 1", (pending,))[0]
    os.unlink(os.path.join(server.data_dir, "blobs", part_blob[:3], part_blob))
    orphan_id = secrets.token_hex(16)
    orphan = plant(server, f"blobs/{orphan_id[:3]}/{orphan_id}", b"cut off before its metadata commit")
    temp = plant(server, f"tmp/{secrets.token_hex(16)}.{dead_pid()}", b"half a write")
    stray = plant(server, "blobs/zzz/notes.txt", b"not a blob")
    meta(server, "UPDATE counters SET value = value + 4096 WHERE name = 'resident_bytes'")

    code, report = fsck(server)
    leftovers = {("orphan_blob", f"blobs/{orphan_id[:3]}/{orphan_id}"), ("temp_file", os.path.relpath(temp,
                 server.data_dir)), ("stray_file", "blobs/zzz/notes.txt"), ("resident_bytes", "")}
    damage = {("missing_blob", "gone"), ("short_blob", "short"), ("missing_blob", "pending")}
    assert code == 1 and found(report) == damage | leftovers, report["findings"]
    assert finding(report, "missing_blob", "gone")["lost"] and finding(report, "short_blob", "short")["lost"]
    assert finding(report, "missing_blob", "pending")["part_number"] == 1
    assert not any(f["repaired"] for f in report["findings"])

    human = server.cli("fsck", check=False)  # the table for people: same findings, same exit status
    assert human.returncode == 1 and "Traceback" not in human.stderr, human.stderr
    text = " ".join(human.stdout.split())
    assert "offline" in text and "missing_blob" in text and "7 problems remain, 2 objects lost" in text, text

    code, report = fsck(server, "--checksums")
    corrupt = {("checksum_mismatch", "flipped"), ("checksum_mismatch", "mp-flipped")}
    assert code == 1 and found(report) == damage | leftovers | corrupt, report["findings"]
    assert "parts' MD5s" in finding(report, "checksum_mismatch", "mp-flipped")["detail"]

    code, report = fsck(server, "--checksums", "--repair")
    assert code == 1 and found(report) == damage | leftovers | corrupt
    for f in report["findings"]:
        assert f["repaired"] == (f["kind"] != "checksum_mismatch"), f
    assert report["counts"]["lost"] == 2 and report["counts"]["unresolved"] == 4  # 2 lost, 2 corrupt kept
    assert not any(os.path.exists(p) for p in (orphan, temp, stray))

    code, report = fsck(server)
    assert code == 0 and report["findings"] == [], "without --checksums the corrupt bytes are not looked at"
    code, report = fsck(server, "--checksums")
    assert code == 1 and found(report) == corrupt

    server.start()
    assert get(s3, bucket, "gone") is None and get(s3, bucket, "short") is None
    assert get(s3, bucket, "fine") == bodies["fine"] and get(s3, bucket, "empty") == b""
    assert get(s3, bucket, "mp-fine") == b"".join(mp["mp-fine"])
    with pytest.raises(botocore.exceptions.FlexibleChecksumError):
        get(s3, bucket, "flipped")  # kept as it is (there is no other copy): the client sees it is corrupt
    parts = s3.list_parts(Bucket=bucket, Key="pending", UploadId=pending)["Parts"]
    assert [p["PartNumber"] for p in parts] == [2]
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        s3.complete_multipart_upload(Bucket=bucket, Key="pending", UploadId=pending, MultipartUpload={"Parts": [
            {"PartNumber": 1, "ETag": '"' + "0" * 32 + '"'}, {"PartNumber": 2, "ETag": parts[0]["ETag"]}]})
    assert refused.value.response["Error"]["Code"] == "InvalidPart"
    s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "flipped"}, {"Key": "mp-flipped"}]})
    assert server.stop() == 0
    code, report = fsck(server, "--checksums")
    assert code == 0, report["findings"]
    assert "Traceback" not in server.log_text()


# offline: a bucket linked to Azurite -------------------------------------------------------------------------
def test_fsck_gives_back_to_the_cold_store_what_it_has(workdir, azurite):
    server = start_server(workdir, packed_max_size=0)  # damages blob files
    site = ColdSite("azure", azurite, "fsck")
    try:
        cold = site.cold()
        bucket = link_bucket(server, cold, "writeback")
        s3 = client(server)
        s3.create_bucket(Bucket="fsck-plain")
        bodies = {"clean-gone": pattern(100_000, "a"), "clean-flipped": pattern(150_000, "b"),
                  "replaced": pattern(1000, "c")}
        for key, body in bodies.items():
            s3.put_object(Bucket=bucket, Key=key, Body=body)
        wait_drained(server, bucket)
        from_cold = pattern(5 * BLOCK, "d")
        cold.put("from-cold", from_cold)
        first = s3.get_object(Bucket=bucket, Key="from-cold", Range=f"bytes=0-{BLOCK - 1}")["Body"].read()
        assert first == from_cold[:BLOCK]
        assert server.cli("drain", "pause").returncode == 0
        dirty = {"dirty-gone": pattern(2000, "e"), "dirty-kept": pattern(3000, "f")}
        for key, body in dirty.items():
            s3.put_object(Bucket=bucket, Key=key, Body=body)
        assert server.stop() == 0
        code, report = fsck(server, "--checksums")
        assert code == 0, report["findings"]
        assert report["counts"]["partial"] == 1 and report["counts"]["drain_entries"] == 2

        os.unlink(blob_file(server, bucket, "clean-gone"))
        flip_byte(blob_file(server, bucket, "clean-flipped"), 100_001)
        os.unlink(blob_file(server, bucket, "dirty-gone"))
        # Block 3 of the partial object recorded as filled: it is a hole in the sparse blob.
        meta(server, "UPDATE fills SET blocks = x'09' WHERE version_id = (SELECT version_id FROM objects "
                     "WHERE bucket = ? AND key = 'from-cold')", (bucket,))
        now = time.time()
        meta(server, DRAIN_INSERT + "(?, 'replaced', 'put', 'an-older-version', 1000, ?, 0, '', 0)",
             (bucket, now))
        meta(server, DRAIN_INSERT + "(?, 'ghost', 'delete', '', 0, ?, 25, 'ColdStoreUnavailable: the "
                     "cold store did not answer', ?)", (bucket, now, now + 250))
        meta(server, DRAIN_INSERT + "('fsck-plain', 'k', 'put', 'v', 1, ?, 0, '', 0)", (now,))

        code, report = fsck(server, "--checksums")
        expected = {("missing_blob", "clean-gone"), ("checksum_mismatch", "clean-flipped"),
                    ("missing_blob", "dirty-gone"), ("bad_fill", "from-cold"), ("drain_replaced", "replaced"),
                    ("drain_failing", "ghost"), ("drain_claim", "ghost"), ("drain_unlinked", "k")}
        assert code == 1 and found(report) == expected, report["findings"]
        for key in ("clean-gone", "clean-flipped", "from-cold"):
            f = next(f for f in report["findings"] if f.get("key") == key)
            assert "cold store" in f["action"] and not f.get("lost"), f
        assert finding(report, "missing_blob", "dirty-gone")["lost"], "not in the cold store yet: lost"
        assert "did not answer" in finding(report, "drain_failing", "ghost")["detail"]
        assert finding(report, "drain_claim", "ghost")["severity"] == "info"

        code, report = fsck(server, "--checksums", "--repair")
        repaired = {(f["kind"], f.get("key")) for f in report["findings"] if f["repaired"]}
        assert repaired == {("missing_blob", "clean-gone"), ("checksum_mismatch", "clean-flipped"),
                            ("missing_blob", "dirty-gone"), ("bad_fill", "from-cold"),
                            ("drain_replaced", "replaced"), ("drain_claim", "ghost")}, report["findings"]
        assert code == 1 and {(f["kind"], f.get("key")) for f in report["findings"] if not f["repaired"] or
                              f.get("lost")} == {("missing_blob", "dirty-gone"), ("drain_failing", "ghost"),
                                                 ("drain_unlinked", "k")}
        meta(server, "DELETE FROM drain WHERE key IN ('ghost', 'k')")  # what only an operator can settle
        code, report = fsck(server, "--checksums")
        assert code == 0, report["findings"]

        server.start()
        s3 = client(server)
        for key, body in bodies.items():
            assert get(s3, bucket, key) == body, key
        assert get(s3, bucket, "from-cold") == from_cold
        assert get(s3, bucket, "dirty-gone") is None
        assert get(s3, bucket, "dirty-kept") == dirty["dirty-kept"]
        assert server.cli("drain", "resume").returncode == 0
        wait_drained(server, bucket)
        assert cold.get("dirty-kept") == dirty["dirty-kept"] and cold.get("dirty-gone") is None
        assert server.stop() == 0
        code, report = fsck(server, "--checksums")
        assert code == 0, report["findings"]
        assert "Traceback" not in server.log_text()
    finally:
        server.kill()
        site.close()


# online: beside a running server under load ---------------------------------------------------------------------
class Load(threading.Thread):
    """PUTs, overwrites, multipart uploads and deletes, nonstop: an online fsck must not take any of them for
    damage."""

    def __init__(self, server: AtollProcess, bucket: str) -> None:
        super().__init__(daemon=True)
        self.s3 = server.client()
        self.bucket = bucket
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.done = 0

    def run(self) -> None:
        rng = secrets.SystemRandom()
        while not self.stop.is_set():
            key = f"load/{rng.randrange(20)}"
            try:
                roll = rng.random()
                if roll < 0.5:
                    self.s3.put_object(Bucket=self.bucket, Key=key, Body=os.urandom(rng.randrange(1, 100_000)))
                elif roll < 0.7:
                    multipart(self.s3, self.bucket, key, [os.urandom(PART), os.urandom(10)])
                else:
                    self.s3.delete_object(Bucket=self.bucket, Key=key)
                self.done += 1
            except Exception as exc:  # noqa: BLE001 - reported by the test
                self.errors.append(repr(exc))


def test_online_fsck_beside_a_busy_server(new_server):
    server = new_server(extra_env=MP_ENV)
    s3 = server.client()
    bucket = "fsck-online"
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="victim", Body=b"v" * 5000)
    s3.put_object(Bucket=bucket, Key="bystander", Body=b"b" * 5000)
    os.unlink(blob_file(server, bucket, "victim"))
    old_id, young_id = secrets.token_hex(16), secrets.token_hex(16)
    old = plant(server, f"blobs/{old_id[:3]}/{old_id}", b"old")
    live_temp = plant(server, f"tmp/{secrets.token_hex(16)}.{server.proc.pid}", b"in flight")
    dead_temp = plant(server, f"tmp/{secrets.token_hex(16)}.{dead_pid()}", b"left behind")
    young = plant(server, f"blobs/{young_id[:3]}/{young_id}", b"")
    load = Load(server, bucket)
    load.start()
    writing = threading.Event()

    def slow_write() -> None:  # a write in flight keeps changing its file
        while not writing.wait(0.2):
            with open(young, "ab") as f:
                f.write(b"y")

    slow = threading.Thread(target=slow_write, daemon=True)
    slow.start()
    try:
        # File times cannot be set back (ctime), so the test waits for the planted files to age past --grace.
        time.sleep(GRACE + 1)
        code, report = fsck(server, "--grace", str(GRACE))
        assert report["mode"] == "online"
        expected = {("missing_blob", "victim"), ("orphan_blob", os.path.relpath(old, server.data_dir)),
                    ("temp_file", os.path.relpath(dead_temp, server.data_dir))}
        assert code == 1 and found(report) == expected, report["findings"]
        code, report = fsck(server, "--repair", "--checksums", "--grace", str(GRACE))
        assert found(report) == expected and all(f["repaired"] for f in report["findings"]), report["findings"]
        assert code == 1 and report["counts"]["lost"] == 1
        assert os.path.exists(young) and os.path.exists(live_temp)
        assert not os.path.exists(old) and not os.path.exists(dead_temp)
        assert get(s3, bucket, "victim") is None, "the server sees the row removed at once"
        assert get(s3, bucket, "bystander") == b"b" * 5000
        code, report = fsck(server, "--checksums", "--grace", str(GRACE))
        assert code == 0, report["findings"]
    finally:
        writing.set()
        load.stop.set()
        load.join(30)
    assert not load.errors and load.done > 10, (load.errors[:5], load.done)
    # One server per node name and data directory (other nodes may share it: docs/cluster.md).
    second = subprocess.run([ATOLL, "serve", "--data-dir", server.data_dir, "--s3-address",
                             f"127.0.0.1:{AtollProcess(server.data_dir).port}",
                             "--node", f"{socket.gethostname()}-{server.port}"], env=server.env(),
                            capture_output=True, text=True, timeout=60)
    assert second.returncode != 0 and "Traceback" not in second.stderr, second.stderr
    assert "in use by another Atoll process" in " ".join(second.stderr.split()), second.stderr
    assert server.stop() == 0
    assert not os.path.exists(incarnation(server)), "a clean stop says so"
    # Without a server every file counts: the young orphan is a leftover now (it never got a row).
    code, report = fsck(server, "--repair")
    assert found(report) == {("orphan_blob", os.path.relpath(young, server.data_dir)),
                             ("temp_file", os.path.relpath(live_temp, server.data_dir))}
    assert code == 0 and all(f["repaired"] for f in report["findings"])


# SIGKILL: the next start reclaims what the kill left ---------------------------------------------------------------
class Writer(threading.Thread):
    def __init__(self, server: AtollProcess, bucket: str, multipart_share: float, size: int) -> None:
        super().__init__(daemon=True)
        self.s3 = client(server, connect_timeout=5, read_timeout=60)
        self.bucket = bucket
        self.multipart_share = multipart_share
        self.size = size
        self.acked = 0

    def run(self) -> None:
        rng = secrets.SystemRandom()
        try:
            while True:
                key = f"k/{rng.randrange(50)}"
                if rng.random() < self.multipart_share:
                    multipart(self.s3, self.bucket, key, [os.urandom(PART), os.urandom(rng.randrange(1, PART))])
                else:
                    self.s3.put_object(Bucket=self.bucket, Key=key, Body=os.urandom(rng.randrange(self.size)))
                self.acked += 1
        except Exception:  # noqa: BLE001 - the kill ends every writer
            return


def test_kill9_leftovers_are_reclaimed_by_the_next_start(workdir, azurite):
    # One file per object: the leftovers a kill makes of those are what this is about (a packed record cut off
    # before its commit is dead space for compaction, tests/crash/test_kill9_packed.py).
    server = start_server(workdir, min_part_size=PART, packed_max_size=0)
    site = ColdSite("azure", azurite, "kill")
    try:
        cold = site.cold()
        through = link_bucket(server, cold, "writethrough")
        s3 = client(server)
        s3.create_bucket(Bucket="kill-local")
        before_restart = []
        for round_ in range(3):
            # A stalled cold store holds write-through PUTs after their local blob is committed, before their
            # row: a kill then leaves those blobs for certain, beside whatever the local writers leave.
            cold.proxy.stall()
            writers = [Writer(server, "kill-local", 0.3, 300_000) for _ in range(4)]
            writers += [Writer(server, through, 0.0, 200_000) for _ in range(2)]
            for w in writers:
                w.start()
            deadline = time.monotonic() + 20
            while sum(w.acked for w in writers[:4]) < 6 and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(secrets.SystemRandom().uniform(0.1, 0.6))
            server.kill()
            for w in writers:
                w.join(30)
            cold.proxy.heal()
            code, report = fsck(server)
            kinds = report["by_kind"]
            assert set(kinds) <= {"orphan_blob", "temp_file", "drain_claim"}, report["findings"]
            assert kinds.get("orphan_blob", 0) >= 1, f"round {round_}: the stalled write-through PUTs left none"
            before_restart.append(kinds)
            server.start()
            code, report = fsck(server)
            assert code == 0 and report["mode"] == "online", (round_, report["findings"])
            assert report["counts"]["temp_files"] == 0
            for item in s3.list_objects_v2(Bucket="kill-local").get("Contents", []):
                body = get(s3, "kill-local", item["Key"])
                assert len(body) == item["Size"]
                if "-" not in item["ETag"]:
                    assert hashlib.md5(body).hexdigest() == item["ETag"].strip('"'), item["Key"]
        reclaimed = server.log_text().count("the last server did not stop cleanly: removed")
        assert reclaimed == 3, server.log_text()[-3000:]
        assert server.stop() == 0
        code, report = fsck(server, "--checksums")
        assert code == 0, report["findings"]
        assert not os.path.exists(incarnation(server))
        print("leftovers found before each restart:", before_restart)
    finally:
        server.kill()
        site.close()
