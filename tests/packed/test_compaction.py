"""Compaction reclaims the space of dead records while readers and writers run (#8).

A server with 1 MiB segments, a 0.2 dead-fraction threshold and a 0.5 s pass: 600 small objects are written, then
half are overwritten and a fifth of the rest deleted, so the first segments are mostly dead but still hold live
records that must be moved. Then, while 4 reader threads check every byte they read and 4 writer threads keep
overwriting and deleting keys of their own, the total size of ``<data dir>/segments/*`` must drop well below its
peak and the segments of the first phase must go. At the end: every object reads back exactly, the records
agree with the index, fsck is clean, and the admin API and /metrics report what happened.
"""

from __future__ import annotations

import hashlib
import http.client
import random
import threading
import time

import pytest

from harness import AtollProcess, admin_status, meta_query, metric, metrics_text
from packutil import (KiB, LeanS3, MiB, assert_fsck_clean, check_packed_references, packed_env, put_many,
                      segment_sizes, store_of)

pytestmark = pytest.mark.timeout(180)

BUCKET = "compact"
KEYS = 600
READERS = 4
WRITERS = 4
WRITER_KEYS = 10


def body(key: str, gen: int, size: int) -> bytes:
    head = f"{key}|{gen}|".encode()
    return (head + random.Random(f"{key}|{gen}").randbytes(max(0, size - len(head))))[:size]


@pytest.fixture
def server(new_server):
    # A segment sealed less than the compactor's settle delay ago is left alone (2 s here, 10 s by default), so the
    # first compaction comes a few seconds after the first segments fill.
    env = packed_env(segment_size=1 * MiB, compaction_threshold=0.2, compaction_interval=0.5, compaction_grace=1,
                     compaction_settle=2)
    return new_server(extra_env=env)


class Reader(threading.Thread):
    """GETs random keys: stable ones must be exactly ``expected`` (or absent), writers' keys must be whole
    versions (content derived from the generation in their metadata)."""

    def __init__(self, server, expected: dict[str, bytes | None], writer_keys: list[str], seed: int,
                 stop: threading.Event) -> None:
        super().__init__(daemon=True, name=f"reader-{seed}")
        self.client = LeanS3(server)
        self.expected = expected
        self.keys = list(expected)
        self.writer_keys = writer_keys
        self.rng = random.Random(seed)
        self.stop = stop
        self.reads = 0
        self.problems: list[str] = []

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                if self.rng.random() < 0.8:
                    key = self.rng.choice(self.keys)
                    answer = self.client.request("GET", BUCKET, key)
                    want = self.expected[key]
                    if want is None:
                        assert answer.status == 404, f"{key}: deleted, but GET answered {answer.status}"
                    else:
                        assert answer.status == 200, f"{key}: GET answered {answer.status}: {answer.body[:200]!r}"
                        assert answer.body == want, f"{key}: {len(answer.body)} bytes read, not the {len(want)} written"
                        assert answer.headers["etag"].strip('"') == hashlib.md5(want).hexdigest(), key
                else:
                    key = self.rng.choice(self.writer_keys)
                    answer = self.client.request("GET", BUCKET, key)
                    assert answer.status in (200, 404), f"{key}: GET answered {answer.status}"
                    if answer.status == 200:
                        gen = int(answer.headers["x-amz-meta-gen"])
                        assert answer.body == body(key, gen, len(answer.body)), f"{key}: generation {gen} is torn"
                self.reads += 1
        except (AssertionError, OSError, http.client.HTTPException) as exc:
            self.problems.append(repr(exc))
        finally:
            self.client.close()


class Writer(threading.Thread):
    """Overwrites and deletes keys of its own, some tens a second: new garbage for the compactor (a trickle next
    to what the first phases left), and PUTs committing beside its moves."""

    def __init__(self, server, tid: int, stop: threading.Event) -> None:
        super().__init__(daemon=True, name=f"writer-{tid}")
        self.client = LeanS3(server)
        self.keys = [f"w/{tid}/{i}" for i in range(WRITER_KEYS)]
        self.rng = random.Random(tid)
        self.stop = stop
        self.gen = 0
        self.writes = 0
        self.problems: list[str] = []

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                key = self.rng.choice(self.keys)
                if self.rng.random() < 0.85:
                    self.gen += 1
                    data = body(key, self.gen, self.rng.randint(100, 4 * KiB))
                    answer = self.client.request("PUT", BUCKET, key, data, {"x-amz-meta-gen": str(self.gen)})
                    assert answer.status == 200, f"{key}: PUT answered {answer.status}: {answer.body[:200]!r}"
                else:
                    answer = self.client.request("DELETE", BUCKET, key)
                    assert answer.status == 204, f"{key}: DELETE answered {answer.status}"
                self.writes += 1
                time.sleep(0.02)
        except (AssertionError, OSError, http.client.HTTPException) as exc:
            self.problems.append(repr(exc))
        finally:
            self.client.close()


def test_compaction_reclaims_space_while_readers_and_writers_run(server: AtollProcess):
    server.client().create_bucket(Bucket=BUCKET)
    rng = random.Random(2024)
    keys = [f"stable/{i:04d}" for i in range(KEYS)]
    first = {k: body(k, 1, rng.randint(4 * KiB, 24 * KiB)) for k in keys}
    put_many(server, BUCKET, first)
    # 70% overwritten with smaller bodies, half of the rest deleted: the first phase's segments are mostly, not
    # wholly, dead (about 15% of each is live and must be moved).
    overwritten = rng.sample(keys, KEYS * 7 // 10)
    second = {k: body(k, 2, rng.randint(1 * KiB, 4 * KiB)) for k in overwritten}
    put_many(server, BUCKET, second)
    deleted = rng.sample(sorted(set(keys) - set(overwritten)), KEYS * 3 // 20)
    s3 = server.client()
    s3.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": k} for k in deleted], "Quiet": True})
    expected: dict[str, bytes | None] = {**first, **second, **{k: None for k in deleted}}
    assert all(store_of(server, BUCKET, k) == "packed" for k in rng.sample(sorted(second), 20))

    peak_files = segment_sizes(server.data_dir)
    peak = sum(peak_files.values())
    live = sum(len(v) for v in expected.values() if v is not None)
    assert peak >= 3 * live, f"the load did not leave dead records: {peak} bytes of segments, {live} live"

    stop = threading.Event()
    writers = [Writer(server, t, stop) for t in range(WRITERS)]
    writer_keys = [k for w in writers for k in w.keys]
    readers = [Reader(server, expected, writer_keys, seed, stop) for seed in range(READERS)]
    for thread in writers + readers:
        thread.start()
    started = time.monotonic()
    low, gone = peak, 0
    try:
        # Reclaimed: the total is well below the peak, and most of the first phases' segment files are deleted.
        while time.monotonic() - started < 90:
            sizes = segment_sizes(server.data_dir)
            low = min(low, sum(sizes.values()))
            gone = len(set(peak_files) - set(sizes))
            if low <= 0.5 * peak and gone >= len(peak_files) // 2:
                break
            if any(t.problems for t in readers + writers):
                break
            time.sleep(0.25)
        time.sleep(1.0)  # reads and writes go on a moment after the last deletion too
    finally:
        stop.set()
        for thread in writers + readers:
            thread.join(30)
    seconds = time.monotonic() - started
    problems = [p for t in readers + writers for p in t.problems]
    assert not problems, problems[:10]
    assert low <= 0.5 * peak and gone >= len(peak_files) // 2, \
        (f"compaction did not reclaim space in {seconds:.0f}s: segments {peak} -> {low} bytes at least, "
         f"{gone} of {len(peak_files)} files deleted")
    reads = sum(r.reads for r in readers)
    writes = sum(w.writes for w in writers)
    assert reads >= 100 and writes >= 100, (reads, writes)

    # Afterwards: every stable object exactly, the records where the index says, fsck clean.
    reader = LeanS3(server)
    for key, want in expected.items():
        answer = reader.request("GET", BUCKET, key)
        assert (answer.status, answer.body) == ((404, answer.body) if want is None else (200, want)), key
    reader.close()
    problems = check_packed_references(server)
    assert not problems, "\n".join(problems)
    assert_fsck_clean(server, "--checksums")
    packed = admin_status(server)["packed"]
    text = metrics_text(server)
    assert metric(text, "atoll_compactions_total") >= 1, packed
    assert metric(text, "atoll_compaction_reclaimed_bytes_total") > 0, packed
    refs_bytes, refs = meta_query(server, "SELECT coalesce(sum(length), 0), count(*) FROM packed_refs")[0]
    assert (packed["live_bytes"], packed["live_records"]) == (refs_bytes, refs), packed
    print(f"segments {peak} -> {low} bytes ({gone} of {len(peak_files)} peak files deleted) in {seconds:.1f}s, "
          f"{reads} reads and {writes} writes meanwhile; status {packed}; "
          f"reclaimed {metric(text, 'atoll_compaction_reclaimed_bytes_total')} bytes")
