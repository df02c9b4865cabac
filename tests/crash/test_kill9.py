"""Crash safety: SIGKILL the server at random moments during concurrent PUTs, multipart completes and deletes,
restart it on the same data directory, and check that every acknowledged write survived whole.

The model is a history of operations per key, each with the client-side time it was sent and the time it was
acknowledged (None if the kill cut it off). After a restart the state of a key must be the result of one of its
operations ``j`` such that no acknowledged operation started after ``j`` was acknowledged (that one would have
to come later and be durable): never an older generation, never an unacknowledged one that is not whole. Content
is derived from (key, generation), and the generation travels in the object's metadata, so any mixing of bytes
between versions, or a torn write, shows up as a content or ETag mismatch.

Beyond what a client can see, the test checks the on-disk invariants after each restart: the temp directory is
empty, every blob the metadata references exists, no referenced blob is queued for garbage collection, and
unreferenced blobs (cut-off writes; there is no fsck yet to reclaim them) stay within one per writer per kill.

Seeded (ATOLL_CRASH_SEED) so a failing round can be replayed.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sqlite3
import threading
import time
from dataclasses import dataclass, field

import botocore.exceptions
import pytest

SEED = int(os.environ.get("ATOLL_CRASH_SEED", "917"))
ROUNDS = int(os.environ.get("ATOLL_CRASH_ROUNDS", "10"))
WORKER_ROUNDS = 2  # extra rounds against a --workers 2 server
THREADS = 6
OWNED_KEYS = 5  # per thread: only that thread writes them, so the expected state is exact
SHARED_KEYS = 3  # every thread writes these concurrently
MIN_PART = 64 << 10
ENV = {"ATOLL_MIN_PART_SIZE": str(MIN_PART)}


# content ---------------------------------------------------------------------------------------------------
def content(key: str, gen: int, size: int) -> bytes:
    head = f"{key}|{gen}|".encode()
    body = random.Random(f"{key}|{gen}").randbytes(max(0, size - len(head)))
    return (head + body)[:size]


def multipart_etag(parts: list[bytes]) -> str:
    return hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest() + f"-{len(parts)}"


@dataclass
class Op:
    kind: str  # "put", "mpu" or "delete"; "initial" for the state verified before a round
    gen: int
    start: float
    end: float | None = None  # None: not acknowledged (cut off by the kill)
    size: int = 0
    etag: str = ""
    present: bool = True  # False for deletes (and an initial "absent")


@dataclass
class Model:
    ops: dict[str, list[Op]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    problems: list[str] = field(default_factory=list)
    next_gen: int = 1

    def new_gen(self) -> int:
        with self.lock:
            self.next_gen += 1
            return self.next_gen

    def record(self, key: str, op: Op) -> None:
        with self.lock:
            self.ops.setdefault(key, []).append(op)

    def problem(self, text: str) -> None:
        with self.lock:
            self.problems.append(text)

    def allowed(self, key: str) -> list[Op]:
        """The operations whose result may legitimately be the state of ``key`` now."""
        history = self.ops.get(key, [])
        if not history or history[0].kind != "initial":
            # Never seen before this round: absent, until an acknowledged write says otherwise.
            history = [Op("initial", 0, float("-inf"), float("-inf"), present=False), *history]
        acked_starts = [op.start for op in history if op.end is not None]
        latest_start = max(acked_starts, default=float("-inf"))
        return [op for op in history if op.end is None or op.end >= latest_start]


def make_client(server, attempts: int):
    """boto3 without retries for the writers: a retried request would blur which attempt was acknowledged."""
    import boto3
    from botocore.config import Config

    config = Config(retries={"max_attempts": attempts, "mode": "standard"}, connect_timeout=5, read_timeout=30,
                    max_pool_connections=2)
    return boto3.client("s3", endpoint_url=server.endpoint, aws_access_key_id=server.access_key,
                        aws_secret_access_key=server.secret_key, region_name="us-east-1", config=config)


# the workload ----------------------------------------------------------------------------------------------
class Writer(threading.Thread):
    def __init__(self, tid: int, server, bucket: str, model: Model, rng: random.Random, stop: threading.Event,
                 killed: threading.Event) -> None:
        super().__init__(daemon=True, name=f"crash-writer-{tid}")
        self.tid = tid
        self.client = make_client(server, attempts=1)
        self.bucket = bucket
        self.model = model
        self.rng = rng
        self.stop = stop
        self.killed = killed
        self.owned = [f"own/{tid}/{i}" for i in range(OWNED_KEYS)]
        self.acked = {"put": 0, "mpu": 0, "delete": 0}

    def _size(self) -> int:
        roll = self.rng.random()
        if roll < 0.05:
            return 0
        if roll < 0.30:
            return self.rng.randint(1, 1024)
        if roll < 0.65:
            return self.rng.randint(1025, 256 << 10)
        return self.rng.randint((256 << 10) + 1, 3 << 20)

    def _key(self) -> str:
        if self.rng.random() < 0.25:
            return f"shared/{self.rng.randrange(SHARED_KEYS)}"
        return self.rng.choice(self.owned)

    def run(self) -> None:
        while not self.stop.is_set():
            roll = self.rng.random()
            key = self._key()
            try:
                if roll < 0.45:
                    self.put(key)
                elif roll < 0.65:
                    self.multipart(key)
                elif roll < 0.80:
                    self.delete(key)
                else:
                    self.check_owned(self.rng.choice(self.owned))
            except botocore.exceptions.ClientError as exc:
                # The server answered with an error: never expected from this workload, killed or not.
                self.model.problem(f"{key}: unexpected error response {exc.response['Error']} "
                                   f"({'after' if self.killed.is_set() else 'before'} the kill)")
            except Exception as exc:  # noqa: BLE001 - connection failures are what a kill looks like
                if not self.killed.is_set():
                    self.model.problem(f"{key}: request failed before the kill: {exc!r}")
                return

    def put(self, key: str) -> None:
        gen = self.model.new_gen()
        data = content(key, gen, self._size())
        op = Op("put", gen, time.monotonic(), size=len(data), etag=hashlib.md5(data).hexdigest())
        self.model.record(key, op)
        reply = self.client.put_object(Bucket=self.bucket, Key=key, Body=data, Metadata={"gen": str(gen)})
        op.end = time.monotonic()
        self.acked["put"] += 1
        if reply["ETag"].strip('"') != op.etag:
            self.model.problem(f"{key}: PUT gen {gen} acknowledged with ETag {reply['ETag']}, expected {op.etag}")

    def multipart(self, key: str) -> None:
        gen = self.model.new_gen()
        count = self.rng.randint(2, 4)
        sizes = [MIN_PART + self.rng.randint(0, 96 << 10) for _ in range(count - 1)] + [self.rng.randint(1, 200 << 10)]
        data = content(key, gen, sum(sizes))
        parts, offset = [], 0
        for size in sizes:
            parts.append(data[offset:offset + size])
            offset += size
        upload = self.client.create_multipart_upload(Bucket=self.bucket, Key=key, Metadata={"gen": str(gen)})
        upload_id = upload["UploadId"]
        listed = []
        for number, part in enumerate(parts, 1):
            reply = self.client.upload_part(Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number,
                                            Body=part)
            listed.append({"PartNumber": number, "ETag": reply["ETag"]})
        # The object can only appear during Complete: that is where this operation starts.
        op = Op("mpu", gen, time.monotonic(), size=len(data), etag=multipart_etag(parts))
        self.model.record(key, op)
        reply = self.client.complete_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id,
                                                      MultipartUpload={"Parts": listed})
        op.end = time.monotonic()
        self.acked["mpu"] += 1
        if reply["ETag"].strip('"') != op.etag:
            self.model.problem(f"{key}: Complete gen {gen} acknowledged with ETag {reply['ETag']}, expected {op.etag}")

    def delete(self, key: str) -> None:
        op = Op("delete", self.model.new_gen(), time.monotonic(), present=False)
        self.model.record(key, op)
        self.client.delete_object(Bucket=self.bucket, Key=key)
        op.end = time.monotonic()
        self.acked["delete"] += 1

    def check_owned(self, key: str) -> None:
        """Read-your-writes while the server runs: only this thread writes ``key``, so its state is exact."""
        expected = self.model.ops.get(key, [])
        if not expected or expected[-1].end is None:
            return
        observed = read_state(self.client, self.bucket, key)
        verdict = judge(key, observed, [expected[-1]])
        if verdict:
            self.model.problem(f"during load: {verdict}")


def read_state(client, bucket: str, key: str) -> tuple[int, bytes, str] | None:
    """(generation, body, ETag) of ``key``, or None if it does not exist."""
    try:
        got = client.get_object(Bucket=bucket, Key=key)
    except botocore.exceptions.ClientError as exc:
        if exc.response["Error"]["Code"] == "NoSuchKey":
            return None
        raise
    body = got["Body"].read()
    gen = int(got["Metadata"].get("gen", "-1"))
    return gen, body, got["ETag"].strip('"')


def judge(key: str, observed: tuple[int, bytes, str] | None, allowed: list[Op]) -> str:
    """"" if ``observed`` is the result of one of ``allowed``, else what is wrong."""
    if observed is None:
        if any(not op.present for op in allowed):
            return ""
        return f"{key}: missing, but it must hold one of generations {[op.gen for op in allowed]}"
    gen, body, etag = observed
    match = [op for op in allowed if op.present and op.gen == gen]
    if not match:
        return (f"{key}: holds generation {gen} ({len(body)} bytes), allowed are "
                f"{[(op.kind, op.gen, 'acked' if op.end else 'in flight') for op in allowed]}")
    op = match[0]
    if body != content(key, gen, op.size):
        return f"{key}: generation {gen} has wrong bytes ({len(body)} bytes, expected {op.size}): torn or mixed"
    if etag != op.etag:
        return f"{key}: generation {gen} has ETag {etag}, expected {op.etag}"
    return ""


# on-disk invariants ----------------------------------------------------------------------------------------
def check_disk(data_dir: str) -> tuple[list[str], int]:
    """Problems with the on-disk state, and how many committed blobs nothing refers to (left by writes the
    kill cut off between the blob's commit and the metadata's; only an fsck can reclaim them)."""
    problems = []
    leftovers = os.listdir(os.path.join(data_dir, "tmp"))
    if leftovers:
        problems.append(f"{len(leftovers)} temp files survived the restart: {leftovers[:5]}")
    conn = sqlite3.connect(f"file:{os.path.join(data_dir, 'meta.sqlite3')}?mode=ro", uri=True, timeout=30)
    try:
        object_blobs = set()
        for (extents,) in conn.execute("SELECT extents FROM objects"):
            object_blobs.update(e[0] for e in json.loads(extents))
        part_blobs = {r[0] for r in conn.execute("SELECT blob_id FROM parts")}
        garbage = {r[0] for r in conn.execute("SELECT blob_id FROM garbage")}
    finally:
        conn.close()
    for blob in sorted(object_blobs | part_blobs):
        # Small objects are records in segment files (#8): their blob id names the segment.
        where = os.path.join(data_dir, "segments", blob) if blob.startswith("s") else \
            os.path.join(data_dir, "blobs", blob[:3], blob)
        if not os.path.exists(where):
            problems.append(f"blob {blob} is referenced by metadata but missing on disk")
    doomed = (object_blobs | part_blobs) & garbage
    if doomed:
        problems.append(f"{len(doomed)} blobs are both referenced and queued for garbage collection: {sorted(doomed)[:3]}")
    # Listed after the metadata was read: the collector deletes a blob before it forgets its garbage row.
    root = os.path.join(data_dir, "blobs")
    on_disk = {name for sub in os.listdir(root) for name in os.listdir(os.path.join(root, sub))}
    return problems, len(on_disk - object_blobs - part_blobs - garbage)


def list_all(client, bucket: str) -> dict[str, tuple[int, str]]:
    found: dict[str, tuple[int, str]] = {}
    kwargs = {"Bucket": bucket, "MaxKeys": 7}
    for _ in range(1000):
        page = client.list_objects_v2(**kwargs)
        for item in page.get("Contents", []):
            assert item["Key"] not in found, f"listing returned {item['Key']} twice"
            found[item["Key"]] = (item["Size"], item["ETag"].strip('"'))
        if not page.get("IsTruncated"):
            return found
        kwargs["ContinuationToken"] = page["NextContinuationToken"]
    raise AssertionError("listing did not end")


def verify_after_restart(server, bucket: str, model: Model, label: str) -> tuple[int, int]:
    """Check every key against the model; then make what was observed the baseline of the next round. Returns
    (objects present, unreferenced blobs)."""
    disk_problems, leaked = check_disk(server.data_dir)
    problems = [f"{label}: {p}" for p in disk_problems]
    client = make_client(server, attempts=3)
    listed = list_all(client, bucket)
    seen: dict[str, tuple[int, str]] = {}
    now = time.monotonic()
    for key in sorted(model.ops):
        try:
            observed = read_state(client, bucket, key)
        except botocore.exceptions.ClientError as exc:
            problems.append(f"{label}: {key}: GET failed after the restart: {exc.response['Error']}")
            continue
        verdict = judge(key, observed, model.allowed(key))
        if verdict:
            history = [(op.kind, op.gen, round(op.start, 3), op.end and round(op.end, 3)) for op in model.ops[key]]
            problems.append(f"{label}: {verdict}; history (kind, gen, sent, acknowledged): {history}")
            continue
        if observed is None:
            model.ops[key] = [Op("initial", 0, now, now, present=False)]
        else:
            gen, body, etag = observed
            seen[key] = (len(body), etag)
            model.ops[key] = [Op("initial", gen, now, now, size=len(body), etag=etag)]
    if listed != seen:
        extra = {k: v for k, v in listed.items() if seen.get(k) != v}
        missing = {k: v for k, v in seen.items() if listed.get(k) != v}
        problems.append(f"{label}: listing disagrees with GETs: listed-only {extra}, got-only {missing}")
    assert not problems, "\n".join(problems)
    return len(seen), leaked


def run_round(server, bucket: str, model: Model, rng: random.Random, label: str) -> dict:
    stop, killed = threading.Event(), threading.Event()
    writers = [Writer(t, server, bucket, model, random.Random(rng.random()), stop, killed) for t in range(THREADS)]
    for w in writers:
        w.start()
    # Kill at a random moment, once the round has done some work (a loaded machine can be slow to start).
    warm_up = time.monotonic() + 20
    while sum(sum(w.acked.values()) for w in writers) < 8 and time.monotonic() < warm_up:
        time.sleep(0.01)
    time.sleep(rng.uniform(0, 1.5))
    killed.set()
    server.kill()
    stop.set()
    for w in writers:
        w.join(60)
        assert not w.is_alive(), f"{label}: a writer thread hung after the kill"
    cut_off = sum(1 for ops in model.ops.values() for op in ops if op.end is None)
    stats = {"cut_off": cut_off}
    for kind in ("put", "mpu", "delete"):
        stats[kind] = sum(w.acked[kind] for w in writers)
    assert not model.problems, f"{label}:\n" + "\n".join(model.problems[:20])
    server.start()
    stats["objects"], stats["leaked"] = verify_after_restart(server, bucket, model, label)
    return stats


def crash_rounds(server, rounds: int, seed: int, label: str) -> list[dict]:
    rng = random.Random(seed)
    bucket = "crash"
    server.client().create_bucket(Bucket=bucket)
    model = Model()
    stats = []
    for r in range(rounds):
        stats.append(run_round(server, bucket, model, rng, f"{label} round {r} (seed {seed})"))
        # Each writer has at most one blob being staged when the kill comes; anything beyond that is a leak
        # of some other path (an aborted or failed write that did not remove its blob).
        assert stats[-1]["leaked"] <= THREADS * (r + 1), f"{label}: unreferenced blobs pile up: {stats}"
    return stats


def assert_meaningful(stats: list[dict]) -> None:
    """The rounds must have exercised what they claim: acknowledged writes of every kind, and kills that cut
    operations off mid-flight."""
    totals = {k: sum(s[k] for s in stats) for k in ("put", "mpu", "delete", "cut_off")}
    assert totals["put"] >= 5 * len(stats) and totals["mpu"] >= len(stats) and totals["delete"] >= len(stats), totals
    assert totals["cut_off"] >= len(stats), f"kills rarely interrupted an operation: {totals}"
    assert any(s["objects"] for s in stats), stats


@pytest.mark.timeout(240)
def test_kill9_during_concurrent_writes_loses_nothing_acknowledged(new_server):
    server = new_server(extra_env=ENV)
    started = time.monotonic()
    stats = crash_rounds(server, ROUNDS, SEED, "1 worker")
    assert_meaningful(stats)
    print(f"{ROUNDS} rounds in {time.monotonic() - started:.1f}s: {stats}")


@pytest.mark.timeout(120)
def test_kill9_with_two_workers(new_server):
    server = new_server(workers=2, extra_env=ENV)
    stats = crash_rounds(server, WORKER_ROUNDS, SEED + 1, "2 workers")
    assert_meaningful(stats)
