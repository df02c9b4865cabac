"""Staging jobs against real cold stores (moto S3 and Azurite), with every cold request counted at a proxy.

Staging makes objects resident ahead of reads: one streaming GET per object, verified, committed whole. The
tests drive it as an operator would (``atoll stage``, ``atoll jobs``) against a running server and check what
the cold store saw (one GET per object; nothing at all when the staged objects are read afterwards), the
numbers in the job row, pins, cancellation, and a job that survives its server being killed.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import time

import pytest

from harness import ATOLL, wait_until
from tierutil import (COLD_KINDS, ColdSite, emulator, link_bucket, meta_query, pattern, residency, serving,
                      start_server)

pytestmark = pytest.mark.timeout(180)

KiB, MiB = 1 << 10, 1 << 20
PIN_FOREVER = 253402300799.0


def cli(server, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([ATOLL, *args, "--data-dir", server.data_dir], env=server.env(), capture_output=True,
                          text=True, timeout=timeout)


def job_row(server, job_id: str) -> tuple[str, dict, str]:
    rows = meta_query(server, "SELECT state, progress, error FROM jobs WHERE job_id = ?", (job_id,))
    assert rows, f"no job {job_id}"
    return rows[0][0], json.loads(rows[0][1]), rows[0][2]


def stage_no_wait(server, bucket: str, *args: str) -> str:
    out = cli(server, "stage", bucket, *args, "--no-wait", "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["id"]


@pytest.fixture(scope="module")
def tier_server(tmp_path_factory):
    yield from serving(str(tmp_path_factory.mktemp("staging")), stage_concurrency=4)


@pytest.fixture(params=COLD_KINDS)
def site(request):
    with ColdSite(request.param, emulator(request, request.param), "staging") as site:
        yield site


@pytest.fixture
def s3_site(request):
    with ColdSite("s3", emulator(request, "s3"), "staging") as site:
        yield site


# --- a prefix staged, then read without the cold store -----------------------------------------------------------

def test_stage_prefix_makes_every_object_resident_and_pinned(tier_server, site):
    cold = site.cold()
    objects = {f"data/obj-{i:02d}": pattern(1 * KiB + 97 * i, f"{cold.prefix}/{i}") for i in range(50)}
    objects["data/big.bin"] = pattern(3 * MiB + 12345, f"{cold.prefix}/big")
    for key, body in objects.items():
        cold.put(key, body, content_type="application/x-test" if key.endswith("07") else None)
    cold.put("other/outside.bin", b"not staged")
    bucket = link_bucket(tier_server, cold)

    out = cli(tier_server, "stage", bucket, "--prefix", "data/", "--pin")
    assert out.returncode == 0, out.stdout + out.stderr
    job_id = re.search(r"staging job ([0-9a-f]+)", out.stdout).group(1)
    assert f"stage {job_id} [" in out.stdout  # progress lines (not a terminal: plain lines)
    assert "51 objects staged, 0 already warm, 0 failed, of 51" in out.stdout

    # One whole-object GET per object (the 3 MiB one too, for all the 64 KiB fill blocks), and one listing.
    for key in objects:
        assert cold.gets(key) == 1, key
        assert cold.lookups(key) == 0, key
    assert cold.requests("other/outside.bin") == 0
    assert len(cold.proxy.requests()) == len(objects) + 1

    listed = cli(tier_server, "jobs", "--json")
    assert listed.returncode == 0, listed.stderr
    [record] = [j for j in json.loads(listed.stdout) if j["id"] == job_id]
    progress = record["progress"]
    total_bytes = sum(len(b) for b in objects.values())
    assert record["state"] == "done" and record["kind"] == "stage" and record["bucket"] == bucket
    assert progress["objects_total"] == progress["objects_done"] == progress["objects_staged"] == 51
    assert progress["bytes_total"] == progress["bytes_done"] == progress["bytes_fetched"] == total_bytes
    assert progress["objects_skipped"] == 0 and progress["failed"] == 0 and progress["phase"] == "done"
    if site.kind == "s3":
        assert (progress["verified"], progress["verified_by_size"]) == (51, 0)  # single-part ETags are MD5s
    else:
        assert (progress["verified"], progress["verified_by_size"]) == (0, 51)  # Azure ETags are not

    pins = dict(meta_query(tier_server, "SELECT key, pinned_until FROM objects WHERE bucket = ?", (bucket,)))
    assert set(pins) == set(objects)
    assert all(until == PIN_FOREVER for until in pins.values())
    assert all(residency(tier_server, bucket, key) == "resident" for key in objects)

    # Reading everything back costs the cold store nothing at all.
    cold.proxy.reset_counts()
    s3 = tier_server.client()
    for key, body in objects.items():
        got = s3.get_object(Bucket=bucket, Key=key)
        assert got["Body"].read() == body, key
        if key.endswith("07"):
            assert got["ContentType"] == "application/x-test"
    assert cold.proxy.requests() == []
    # ... while an object that was not staged is still fetched from it (the count is live).
    assert s3.get_object(Bucket=bucket, Key="other/outside.bin")["Body"].read() == b"not staged"
    assert cold.requests("other/outside.bin") >= 1

    # Staging again transfers nothing: a listing, and every object is already warm. (A prefix is a string
    # prefix, as in S3, not a directory: data/obj-0 is obj-00 to obj-09.)
    cold.proxy.reset_counts()
    again = cli(tier_server, "stage", bucket, "--prefix", "data/obj-0", "--json")
    assert again.returncode == 0, again.stderr
    progress = json.loads(again.stdout)["progress"]
    assert progress["objects_skipped"] == progress["objects_total"] == 10 and progress["objects_staged"] == 0
    assert progress["bytes_fetched"] == 0
    assert all(cold.requests(key) == 0 for key in objects)
    assert len(cold.proxy.requests()) == 1  # the listing


# --- cancel, keys, failures ----------------------------------------------------------------------------------------

def test_cancel_stops_the_transfers_and_the_runner_goes_on(tier_server, s3_site):
    cold = s3_site.cold()
    objects = {f"slow/{i:02d}.bin": pattern(64 * KiB, f"{cold.prefix}/slow{i}") for i in range(30)}
    for key, body in objects.items():
        cold.put(key, body)
    bucket = link_bucket(tier_server, cold)
    cold.proxy.bandwidth = 128 * KiB  # ~15 s for everything: time to cancel in the middle

    job_id = stage_no_wait(tier_server, bucket, "--prefix", "slow/")
    wait_until(lambda: job_row(tier_server, job_id)[1].get("objects_done", 0) >= 2, 30, "two objects staged")
    out = cli(tier_server, "jobs", "cancel", job_id)
    assert out.returncode == 0 and f"cancelled job {job_id}" in out.stdout, out.stdout + out.stderr

    def settled() -> bool:
        before = len(cold.proxy.requests("GET"))
        time.sleep(1.5)
        return len(cold.proxy.requests("GET")) == before
    wait_until(settled, 15, "the cancelled job to stop fetching")
    state, progress, _ = job_row(tier_server, job_id)
    assert state == "cancelled"
    assert 2 <= progress["objects_done"] < 30
    resident = [k for k in objects if residency(tier_server, bucket, k) == "resident"]
    assert 2 <= len(resident) < 30
    assert len(cold.proxy.requests("GET", path_contains="/slow/")) < 30
    again = cli(tier_server, "jobs", "cancel", job_id)
    assert again.returncode == 0 and "already ended (cancelled)" in again.stdout

    # The runner is free for the next job: a list of keys, one of which the cold store does not have.
    cold.proxy.heal()
    keys_file = f"{tier_server.data_dir}-logs/keys.txt"
    missing = [k for k in objects if k not in resident][:2]
    with open(keys_file, "w") as f:
        f.write("\n".join([*missing, resident[0], "slow/nope.bin"]) + "\n")
    out = cli(tier_server, "stage", bucket, "--keys-from", keys_file, "--pin-for", "600", "--json")
    assert out.returncode == 1, out.stdout + out.stderr
    record = json.loads(out.stdout)
    progress = record["progress"]
    assert record["state"] == "failed" and "slow/nope.bin" in record["error"]
    assert (progress["objects_total"], progress["objects_staged"], progress["objects_skipped"],
            progress["failed"]) == (4, 2, 1, 1)
    assert progress["errors"] == [{"key": "slow/nope.bin", "error": "not found in the cold store"}]
    s3 = tier_server.client()
    for key in [*missing, resident[0]]:
        assert residency(tier_server, bucket, key) == "resident"
        until = meta_query(tier_server, "SELECT pinned_until FROM objects WHERE bucket = ? AND key = ?",
                           (bucket, key))[0][0]
        assert time.time() + 500 < until < time.time() + 700
    cold.proxy.reset_counts()
    for key in [*missing, resident[0]]:
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == objects[key]
    assert cold.proxy.requests() == []
    shown = cli(tier_server, "jobs", "show", record["id"])
    assert shown.returncode == 0 and "failed: slow/nope.bin: not found in the cold store" in shown.stdout

    out = cli(tier_server, "pin", bucket, "--prefix", "slow/", "--remove")
    assert out.returncode == 0 and "unpinned: " in out.stdout, out.stdout + out.stderr
    assert meta_query(tier_server, "SELECT count(*) FROM objects WHERE bucket = ? AND pinned_until > 0",
                      (bucket,)) == [(0,)]


def test_unlinked_bucket_and_bad_arguments_are_refused(tier_server):
    s3 = tier_server.client()
    s3.create_bucket(Bucket="staging-local")
    out = cli(tier_server, "stage", "staging-local", "--no-wait")
    assert out.returncode == 1 and "not linked to a cold store" in out.stderr
    out = cli(tier_server, "stage", "staging-local", "--prefix", "a", "--keys-from", "-")
    assert out.returncode == 1 and "not both" in out.stderr
    out = cli(tier_server, "jobs", "cancel", "0123456789abcdef")
    assert out.returncode == 1 and "no job" in out.stderr


# --- a full warm tier ----------------------------------------------------------------------------------------------

def test_pinned_staging_stops_at_capacity_and_pins_hold_against_eviction(tmp_path, s3_site):
    server = start_server(str(tmp_path), warm_capacity=1 * MiB, stage_concurrency=4)
    try:
        cold = s3_site.cold()
        objects = {f"big/{i}.bin": pattern(256 * KiB, f"{cold.prefix}/big{i}") for i in range(6)}
        for key, body in objects.items():
            cold.put(key, body)
        bucket = link_bucket(server, cold)

        out = cli(server, "stage", bucket, "--pin", "--json")
        assert out.returncode == 1, out.stdout + out.stderr
        record = json.loads(out.stdout)
        progress = record["progress"]
        # Room is made for transfers in flight too: four fit exactly, none overshoots the capacity.
        assert (progress["objects_staged"], progress["failed"]) == (4, 2), progress
        assert "no room" in record["error"] and "pinned" in record["error"]
        warm = [k for k in objects if residency(server, bucket, k) == "resident"]
        assert len(warm) == 4
        time.sleep(2.5)  # the evictor runs every second: above the high watermark, but nothing is evictable
        assert [k for k in objects if residency(server, bucket, k) == "resident"] == warm

        out = cli(server, "pin", bucket, "--remove")
        assert out.returncode == 0 and "unpinned: 4 objects" in out.stdout, out.stdout + out.stderr
        wait_until(lambda: sum(residency(server, bucket, k) == "resident" for k in objects) <= 3, 15,
                 "unpinned objects to be evicted down to the low watermark")
    finally:
        code = server.stop()
        log = server.log_text()
    assert code == 0, log[-3000:]


# --- a job survives its server being killed --------------------------------------------------------------------------

@pytest.mark.single_node  # stops and kills its one server; tests/cluster/test_failover.py kills a node mid-job
def test_job_resumes_after_a_stop_and_after_a_kill(tmp_path, s3_site):
    server = start_server(str(tmp_path), stage_concurrency=2)
    try:
        cold = s3_site.cold()
        objects = {f"ckpt/{i:02d}.bin": pattern(128 * KiB + i, f"{cold.prefix}/ckpt{i}") for i in range(24)}
        for key, body in objects.items():
            cold.put(key, body)
        bucket = link_bucket(server, cold)
        cold.proxy.bandwidth = 512 * KiB  # ~6 s in all

        def resident() -> int:
            return sum(residency(server, bucket, k) == "resident" for k in objects)

        # A graceful stop hands the job back; the next start takes it up.
        job_id = stage_no_wait(server, bucket, "--prefix", "ckpt/")
        wait_until(lambda: job_row(server, job_id)[1].get("objects_done", 0) >= 3, 30, "three objects staged")
        assert server.stop() == 0
        assert job_row(server, job_id)[0] == "queued"
        server.start()

        def staged_again() -> bool:
            progress = job_row(server, job_id)[1]
            return progress["attempt"] == 2 and progress["objects_staged"] >= 3
        wait_until(staged_again, 30, "three more staged")

        # A kill -9 leaves it running under a dead owner: the next start requeues it at once.
        server.kill()
        state, progress, _ = job_row(server, job_id)
        assert state == "running" and progress["attempt"] == 2 and progress["objects_done"] < 24
        done_before = resident()
        assert done_before >= 6
        cold.proxy.heal()
        cold.proxy.reset_counts()
        server.start()
        out = cli(server, "jobs", "wait", job_id, "--json")
        assert out.returncode == 0, out.stdout + out.stderr
        progress = json.loads(out.stdout)["progress"]
        assert progress["attempt"] == 3
        assert progress["objects_total"] == progress["objects_done"] == 24 and progress["failed"] == 0
        # Objects made resident before the kill are skipped, not fetched again.
        assert progress["objects_skipped"] == done_before
        assert progress["objects_staged"] == 24 - done_before
        assert len(cold.proxy.requests("GET", path_contains="/ckpt/")) == 24 - done_before

        cold.proxy.reset_counts()
        s3 = server.client()
        for key, body in objects.items():
            assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == body, key
        assert cold.proxy.requests() == []
    finally:
        code = server.stop()
        log = server.log_text()
    assert code == 0, log[-3000:]
    assert "was left running by" in log  # requeued at once, not after the lease lapsed
    assert "Traceback" not in log, log[-5000:]


# --- verification ----------------------------------------------------------------------------------------------------

def test_verification_of_transferred_bytes():
    from atoll.core.tiering.jobs import VerificationFailed, verify_transfer

    data = b"staged bytes"
    md5 = hashlib.md5(data).digest()
    assert verify_transfer(md5.hex(), len(data), len(data), md5) == "md5"
    assert verify_transfer(f'"{md5.hex().upper()}"', len(data), len(data), md5) == "md5"
    assert verify_transfer("0x8DCBA0123456789", len(data), len(data), md5) == "size"  # an Azure ETag
    assert verify_transfer(f"{md5.hex()}-3", len(data), len(data), md5) == "size"  # multipart: not a digest
    assert verify_transfer("0x8DCBA0123456789", len(data), len(data), md5, content_md5=md5) == "md5"
    # A store whose ETags may look like MD5s without being one (a web server, a file:// store): size only.
    assert verify_transfer(hashlib.md5(b"x").hexdigest(), len(data), len(data), md5, etag_is_md5=False) == "size"
    corrupt = hashlib.md5(b"other bytes").digest()
    with pytest.raises(VerificationFailed, match="ETag"):
        verify_transfer(md5.hex(), len(data), len(data), corrupt)
    with pytest.raises(VerificationFailed, match="Content-MD5"):
        verify_transfer("0x8DCBA0123456789", len(data), len(data), corrupt, content_md5=md5)
    with pytest.raises(VerificationFailed, match="received 11 bytes"):
        verify_transfer("0x8DCBA0123456789", len(data), len(data) - 1, md5)
