"""Crash safety of the packed store (#8): SIGKILL during a storm of small PUTs, overwrites and deletes from many
threads (so many PUTs share each group commit), and during compaction; restart on the same data directory.

The model and its judge are test_kill9's: a history of operations per key with the time each was sent and
acknowledged (None if the kill cut it off); after a restart a key must hold the result of an operation that no
acknowledged later one supersedes — the last acknowledged write's bytes, or those of a write still in flight
when the kill came, never an older generation, and never a resurrected delete. Content derives from (key,
generation), which travels in the object's metadata, so torn or mixed records show.

After each restart, beyond what clients see: every packed extent lies inside its segment file behind a record
header whose length and CRC match, the reverse index and live counters agree with the objects, and ``atoll
fsck`` reports clean. The writers use a lean SigV4 client (tests/packed/packutil.py), not boto3, so that two
cores can keep a few hundred small PUTs per second in flight. Seeded (ATOLL_CRASH_SEED).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import random
import subprocess
import threading
import time

import pytest

from harness import ATOLL, AtollProcess, meta_query
from packed.packutil import KiB, LeanS3, MiB, check_packed_references, packed_env, segment_sizes
from test_kill9 import Model, Op, content, judge, list_all, make_client

SEED = int(os.environ.get("ATOLL_CRASH_SEED", "4242"))
ROUNDS = int(os.environ.get("ATOLL_CRASH_ROUNDS", "10"))
COMPACTION_ROUNDS = int(os.environ.get("ATOLL_CRASH_COMPACTION_ROUNDS", "6"))  # 16 kills in all, with ROUNDS
THREADS = 16
OWNED_KEYS = 6  # per thread: only that thread writes them, so the expected state is exact
SHARED_KEYS = 8  # every thread writes these concurrently
PACKED_MAX = 64 * KiB
BUCKET = "storm"


# the storm -------------------------------------------------------------------------------------------------------
class Writer(threading.Thread):
    """PUTs (new keys and overwrites), DELETEs and read-your-writes checks of small objects, until stopped."""

    def __init__(self, tid: int, server: AtollProcess, model: Model, rng: random.Random, stop: threading.Event,
                 killed: threading.Event) -> None:
        super().__init__(daemon=True, name=f"packed-writer-{tid}")
        self.client = LeanS3(server, timeout=30)
        self.model = model
        self.rng = rng
        self.stop = stop
        self.killed = killed
        self.owned = [f"own/{tid}/{i}" for i in range(OWNED_KEYS)]
        self.acked = {"put": 0, "delete": 0}

    def _size(self) -> int:
        roll = self.rng.random()
        if roll < 0.05:
            return 0
        if roll < 0.60:
            return self.rng.randint(1, 4 * KiB)
        if roll < 0.97:
            return self.rng.randint(4 * KiB + 1, PACKED_MAX)
        return self.rng.randint(PACKED_MAX + 1, 200 * KiB)  # now and then a file: the same key crosses over

    def _key(self) -> str:
        if self.rng.random() < 0.3:
            return f"shared/{self.rng.randrange(SHARED_KEYS)}"
        return self.rng.choice(self.owned)

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                roll = self.rng.random()
                key = self._key()
                if roll < 0.65:
                    self.put(key)
                elif roll < 0.85:
                    self.delete(key)
                else:
                    self.check_owned(self.rng.choice(self.owned))
        except (OSError, http.client.HTTPException) as exc:  # what a kill looks like to http.client
            if not self.killed.is_set():
                self.model.problem(f"{self.name}: request failed before the kill: {exc!r}")
        except AssertionError as exc:
            self.model.problem(str(exc))
        finally:
            self.client.close()

    def put(self, key: str) -> None:
        gen = self.model.new_gen()
        data = content(key, gen, self._size())
        op = Op("put", gen, time.monotonic(), size=len(data), etag=hashlib.md5(data).hexdigest())
        self.model.record(key, op)
        answer = self.client.request("PUT", BUCKET, key, data, {"x-amz-meta-gen": str(gen)})
        assert answer.status == 200, f"{key}: PUT gen {gen} answered {answer.status}: {answer.body[:300]!r}"
        op.end = time.monotonic()
        self.acked["put"] += 1
        assert answer.headers["etag"].strip('"') == op.etag, f"{key}: PUT gen {gen} ETag {answer.headers['etag']}"

    def delete(self, key: str) -> None:
        op = Op("delete", self.model.new_gen(), time.monotonic(), present=False)
        self.model.record(key, op)
        answer = self.client.request("DELETE", BUCKET, key)
        assert answer.status == 204, f"{key}: DELETE answered {answer.status}: {answer.body[:300]!r}"
        op.end = time.monotonic()
        self.acked["delete"] += 1

    def check_owned(self, key: str) -> None:
        """Read-your-writes while the server runs: only this thread writes ``key``, so its state is exact."""
        history = self.model.ops.get(key, [])
        if not history or history[-1].end is None:
            return
        verdict = judge(key, read_state(self.client, key), [history[-1]])
        assert not verdict, f"during load: {verdict}"


def read_state(client: LeanS3, key: str) -> tuple[int, bytes, str] | None:
    """(generation, body, ETag) of ``key``, or None if it does not exist."""
    answer = client.request("GET", BUCKET, key)
    assert answer.status in (200, 404), f"{key}: GET answered {answer.status}: {answer.body[:300]!r}"
    if answer.status == 404:
        return None
    return int(answer.headers.get("x-amz-meta-gen", "-1")), answer.body, answer.headers["etag"].strip('"')


def run_storm(server: AtollProcess, model: Model, rng: random.Random, kill_when) -> dict:
    """Start the writers, SIGKILL the server when ``kill_when(acked)`` says so, wait for the writers."""
    stop, killed = threading.Event(), threading.Event()
    writers = [Writer(t, server, model, random.Random(rng.random()), stop, killed) for t in range(THREADS)]
    for writer in writers:
        writer.start()
    started = time.monotonic()
    detail = kill_when(lambda: sum(sum(w.acked.values()) for w in writers))
    killed.set()
    server.kill()
    stop.set()
    for writer in writers:
        writer.join(60)
        assert not writer.is_alive(), "a writer thread hung after the kill"
    assert not model.problems, "\n".join(model.problems[:20])
    return {"seconds": round(time.monotonic() - started, 2), "put": sum(w.acked["put"] for w in writers),
            "delete": sum(w.acked["delete"] for w in writers),
            "cut_off": sum(1 for ops in model.ops.values() for op in ops if op.end is None), **detail}


def after_some_work(rng: random.Random, acked_at_least: int = 100):
    """A kill moment: once the round has some acknowledged operations, after a random further while."""
    def kill_when(acked) -> dict:
        deadline = time.monotonic() + 20  # a loaded machine can be slow to get going
        while acked() < acked_at_least and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 1.0))
        return {}
    return kill_when


# after a restart ---------------------------------------------------------------------------------------------------
def start_fsck(server: AtollProcess) -> subprocess.Popen:
    """``atoll fsck --json --checksums`` on the running server, in the background (it reads only)."""
    return subprocess.Popen([ATOLL, "fsck", "--json", "--checksums", "--data-dir", server.data_dir],
                            env=server.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def verify_after_restart(server: AtollProcess, model: Model, label: str) -> int:
    """Every key against the model, the listing against the GETs, the segments against the index, fsck; then what
    was observed becomes the next round's baseline. Returns how many objects exist."""
    fsck = start_fsck(server)  # beside the checks below, which only read
    # The compactor may move a record between the metadata snapshot and the file read (and delete the old file
    # after its grace): what a second look no longer finds was such a race, not damage.
    found = check_packed_references(server)
    if found:
        found = check_packed_references(server)
    problems = [f"{label}: {p}" for p in found]
    listed = list_all(make_client(server, attempts=3), BUCKET)
    reader = LeanS3(server)
    seen: dict[str, tuple[int, str]] = {}
    now = time.monotonic()
    for key in sorted(model.ops):
        observed = read_state(reader, key)
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
    reader.close()
    if listed != seen:
        problems.append(f"{label}: listing disagrees with GETs: listed {sorted(set(listed) ^ set(seen))[:10]}")
    out, err = fsck.communicate(timeout=120)
    assert fsck.returncode in (0, 1) and "Traceback" not in err, f"{label}: fsck failed: {err}{out}"
    if fsck.returncode:
        problems.append(f"{label}: fsck is not clean: {out[:3000]}")
    assert not problems, "\n".join(problems)
    return len(seen)


def crash_rounds(server: AtollProcess, rounds: int, seed: int, kill_moment, label: str,
                 enough=lambda stats: True, most: int = 0) -> list[dict]:
    """At least ``rounds`` rounds, then more (up to ``most``) until ``enough(stats)``: kill moments that depend
    on the server's timing are reached by trying again, not by hoping for a lucky run."""
    rng = random.Random(seed)
    server.client().create_bucket(Bucket=BUCKET)
    model = Model()
    stats: list[dict] = []
    while len(stats) < rounds or (len(stats) < most and not enough(stats)):
        where = f"{label} round {len(stats)} (seed {seed})"
        round_stats = run_storm(server, model, rng, kill_moment(rng, stats))
        server.start()
        round_stats["objects"] = verify_after_restart(server, model, where)
        stats.append(round_stats)
    return stats


def assert_meaningful(stats: list[dict], label: str) -> None:
    """The rounds did what they claim: many acknowledged PUTs and deletes, kills that cut operations off."""
    totals = {k: sum(s[k] for s in stats) for k in ("put", "delete", "cut_off")}
    assert totals["put"] >= 100 * len(stats) and totals["delete"] >= 20 * len(stats), (label, totals)
    assert totals["cut_off"] >= 2 * len(stats), f"{label}: kills rarely interrupted an operation: {totals}"
    assert any(s["objects"] for s in stats), stats


# the tests ---------------------------------------------------------------------------------------------------------
@pytest.mark.timeout(300)
def test_kill9_during_a_storm_of_small_writes_loses_nothing_acknowledged(new_server):
    server = new_server(extra_env={**packed_env(packed_max_size=PACKED_MAX), "ATOLL_ADMIN_ADDRESS": "off"})
    started = time.monotonic()
    stats = crash_rounds(server, ROUNDS, SEED, lambda rng, _stats: after_some_work(rng), "storm")
    assert_meaningful(stats, "storm")
    assert segment_sizes(server.data_dir), "nothing was packed"
    print(f"{ROUNDS} rounds in {time.monotonic() - started:.1f}s: {stats}")


def compaction_underway(server: AtollProcess, rng: random.Random, retired_too: bool, timeout: float = 20.0):
    """A kill moment, once the round has some acknowledged operations: as soon as a segment is being compacted
    (a ``compacting`` row claimed or renewed since the round began: a lease left by the last kill does not
    count), or, if ``retired_too``, shortly after one was retired (its file about to be deleted); at the latest
    after ``timeout`` seconds (the round is a miss)."""
    def kill_when(acked) -> dict:
        stale = compacting(server)
        retired_before = retired(server)
        deadline = time.monotonic() + timeout
        while acked() < 50 and time.monotonic() < deadline:
            time.sleep(0.01)
        while time.monotonic() < deadline:
            if compacting(server) - stale:
                time.sleep(rng.uniform(0, 0.02))
                return {"during": "compacting"}
            if retired_too and retired(server) - retired_before:
                time.sleep(rng.uniform(0, 0.3))
                return {"during": "retired"}
            time.sleep(0.01)
        return {"during": "none"}
    return kill_when


def compacting(server: AtollProcess) -> set[tuple[str, float]]:
    """Segments under compaction, with their leases (renewed by every batch of moves)."""
    return set(meta_query(server, "SELECT segment_id, lease_until FROM segments WHERE state = 'compacting'"))


def retired(server: AtollProcess) -> set[str]:
    """Segments compacted and not yet forgotten (their files are deleted after the grace, then their rows)."""
    return {r[0] for r in meta_query(server, "SELECT segment_id FROM segments WHERE state = 'retired'")}


@pytest.mark.timeout(600)
def test_kill9_during_compaction_loses_nothing_acknowledged(new_server):
    # Small segments seal quickly; a low threshold and a short interval keep the compactor busy; a short grace
    # deletes retired files while the storm runs, so kills land around deletions too.
    env = packed_env(packed_max_size=PACKED_MAX, segment_size=1 * MiB, compaction_threshold=0.2,
                     compaction_interval=0.5, compaction_grace=1, compaction_settle=2)
    server = new_server(extra_env={**env, "ATOLL_ADMIN_ADDRESS": "off"})
    started = time.monotonic()
    # Odd rounds wait for a compaction in progress only; a compaction of a 1 MiB segment is short, so a round may
    # see only retirements, and the rounds go on (at most twice as many) until two kills cut a compaction.
    def kill_moment(rng, stats):
        return compaction_underway(server, rng, retired_too=len(stats) % 2 == 0)
    stats = crash_rounds(server, COMPACTION_ROUNDS, SEED + 1, kill_moment, "compaction",
                         enough=lambda stats: [s["during"] for s in stats].count("compacting") >= 2,
                         most=2 * COMPACTION_ROUNDS)
    assert_meaningful(stats, "compaction")
    hits = [s["during"] for s in stats]
    assert sum(h != "none" for h in hits) >= len(stats) // 2, f"few kills landed during compaction: {hits}"
    assert hits.count("compacting") >= 2, f"too few kills while a segment was being compacted: {hits}"
    print(f"{len(stats)} rounds in {time.monotonic() - started:.1f}s: {stats}")
