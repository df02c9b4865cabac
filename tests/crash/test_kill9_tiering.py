"""Crash safety of tiering: SIGKILL the server at random moments while it works with real cold stores, restart it
on the same data directory, and check that nothing acknowledged was lost and nothing wrong was ever served.

One test per operation family: write-back PUTs and multipart completes with the drain running, read-through fills
of many-block cold objects, staging jobs, the drain of a backlog, and eviction under a tiny warm capacity. Each
test runs one server whose buckets are linked to Azurite *and* to a moto S3 server (each behind its own
FaultProxy, capped in bandwidth while the load runs so that transfers are in flight when the kill comes) and loads
both at once: every kill interrupts work against both cold stores. KILLS kills per family.

What is checked, per round:
- every GET that completed, before or after a kill, returned exactly the bytes and ETag of the cold object or of
  an allowed write: a half-filled object is never served as whole;
- writes follow the history model of test_kill9 (the state of a key is the result of one of its operations that
  no acknowledged operation superseded), read back through Atoll after the restart and, once the drain has
  emptied the journal, in the cold store, which holds nothing else;
- staging jobs resume and finish (every object resident, verified, pinned), the drain backlog reaches 0, fills
  resume from their block maps;
- ``atoll fsck --json`` is clean: run as soon as the server is up again (the state the kill left, as the start-up
  recovered it; it runs while the other checks do) with a grace that spares only files changed since the restart,
  and after the last round with the server stopped; and the on-disk state is sound (test_kill9.check_disk).
Each family also asserts that its kills did interrupt the operation (fills partial, jobs running, uploads claimed),
or it would prove nothing.

Seeded (ATOLL_CRASH_SEED) so a failing round can be replayed (timing still varies); ATOLL_CRASH_KILLS sets the
kills per family.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import random
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from typing import Callable

import botocore.exceptions
import pytest

from atoll.core.tiering.upload import PART_SIZE
from atoll.server.lifecycle import MALLOC_ENV
from coldside import COLD_KINDS, Cold, ColdSite, emulator, pattern
from coldstores import fresh_name
from harness import ATOLL, AtollProcess, first_answer_client, meta_query
from test_kill9 import MIN_PART, Model, Writer, check_disk, content, verify_after_restart

SEED = int(os.environ.get("ATOLL_CRASH_SEED", "5417"))
KILLS = int(os.environ.get("ATOLL_CRASH_KILLS", "10"))
KiB, MiB = 1 << 10, 1 << 20
BLOCK = 64 * KiB  # the smallest fill block: many blocks from small objects
PIN_FOREVER = 253402300799.0
# The malloc settings are given here, so a start does not re-exec itself to set them: one Python start-up less
# per restart, fifty restarts in this module.
SERVER_ENV = {"ATOLL_FILL_BLOCK_SIZE": str(BLOCK), "ATOLL_MIN_PART_SIZE": str(MIN_PART), **MALLOC_ENV}


# the rig: one server, buckets linked to both cold stores ----------------------------------------------------
@dataclass
class Rig:
    server: AtollProcess
    colds: dict[str, Cold]  # bucket -> its cold prefix
    buckets: dict[tuple[str, str], str]  # (role, cold kind) -> bucket
    started: float = 0.0  # time.time() of the server's last start

    def bucket(self, role: str, kind: str) -> str:
        return self.buckets[(role, kind)]

    def cold_of(self, role: str, kind: str) -> Cold:
        return self.colds[self.buckets[(role, kind)]]

    def throttle(self, bandwidth: float | None) -> None:
        for cold in self.colds.values():
            cold.proxy.bandwidth = bandwidth


@pytest.fixture
def make_rig(request, tmp_path):
    """``make_rig({role: mode}, **settings)``: a server with, for each role and each cold kind, a bucket linked to
    a fresh prefix of that kind's emulator. Killed at the end; its log must hold no traceback."""
    sites = {kind: ColdSite(kind, emulator(request, kind), "kill9") for kind in COLD_KINDS}
    made: list[AtollProcess] = []

    def make(roles: dict[str, str], **settings: object) -> Rig:
        env = {**SERVER_ENV, **{f"ATOLL_{name.upper()}": str(value) for name, value in settings.items()}}
        started = time.time()
        server = AtollProcess(data_dir=str(tmp_path / "data"), extra_env=env).start()
        made.append(server)
        rig = Rig(server, {}, {}, started)
        s3 = server.client()
        for role, mode in roles.items():
            for kind in COLD_KINDS:
                bucket, cold = fresh_name(f"{role}-{kind}"), sites[kind].cold(role)
                s3.create_bucket(Bucket=bucket)
                options = dict(o.split("=", 1) for o in cold.link_options()[1::2])
                # The admin API rather than ``atoll bucket link``: the same operation, without a Python start-up.
                admin_call(server, "PUT", f"/api/v1/buckets/{bucket}/link",
                           {"url": cold.url, "mode": mode, "options": options})
                rig.colds[bucket], rig.buckets[(role, kind)] = cold, bucket
        return rig

    yield make
    for server in made:
        server.kill()
        log = server.log_text()
        assert "Traceback" not in log, log[-5000:]
    for site in sites.values():
        site.close()


def admin_call(server: AtollProcess, method: str, path: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(server.admin_endpoint + path, method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {server.admin_token}",
                                              "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


# a round: load threads, a kill at a random moment, a restart --------------------------------------------------
class Round:
    """What the load threads of one round share: the kill switch, what they saw and counted."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.stop = threading.Event()
        self.killed = threading.Event()
        self.problems: list[str] = []
        self.counts: Counter = Counter()
        self._lock = threading.Lock()

    def problem(self, text: str) -> None:
        with self._lock:
            self.problems.append(f"{self.label}: {text}")

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counts[name] += n

    @contextlib.contextmanager
    def timed(self, phase: str):
        """Adds the wall time of the block to the counts (as ``<phase>_ms``), for the summary line."""
        started = time.monotonic()
        try:
            yield
        finally:
            self.count(f"{phase}_ms", int((time.monotonic() - started) * 1000))

    def failed_request(self, what: str, exc: BaseException) -> bool:
        """Sort out an exception of a load request; True if the thread should stop (the server is gone)."""
        if isinstance(exc, botocore.exceptions.ClientError):
            # The server answered with an error: never expected from this load, killed or not.
            self.problem(f"{what}: unexpected error response {exc.response['Error']} "
                         f"({'after' if self.killed.is_set() else 'before'} the kill)")
            return False
        if not self.killed.is_set():
            self.problem(f"{what}: request failed before the kill: {exc!r}")
        else:
            self.count("cut_off")
        return True


def kill_during(server: AtollProcess, rnd: Round, threads: list[threading.Thread], rng: random.Random,
                window: tuple[float, float], ready: Callable[[], bool] = lambda: True,
                last_look: Callable[[], None] = lambda: None) -> None:
    """Start ``threads``; once ``ready()`` (or after 20 s), wait a random time within ``window``, take a
    ``last_look()`` at the live server, and SIGKILL it; then stop the threads."""
    started = time.monotonic()
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 20
    while not ready() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(rng.uniform(*window))
    last_look()
    rnd.killed.set()
    server.kill()
    rnd.stop.set()
    for thread in threads:
        thread.join(60)
        assert not thread.is_alive(), f"{rnd.label}: a load thread hung after the kill"
    rnd.count("load_ms", int((time.monotonic() - started) * 1000))


def restart(rig: Rig, rnd: Round) -> None:
    """Heal the cold links and start the server again on the same data directory."""
    rig.throttle(None)
    rig.started = time.time()
    rig.server.start()
    rnd.counts["restart_ms"] = int((time.time() - rig.started) * 1000)


class Fsck:
    """``atoll fsck --json`` of the server's data directory in a child process, so that other checks run
    meanwhile; ``check()`` waits for it and requires a clean report (and exit 0), server running or not."""

    def __init__(self, rig: Rig, label: str) -> None:
        self.label = label
        running = rig.server.proc is not None and rig.server.proc.poll() is None
        self.where = "with the server running" if running else "with the server stopped"
        argv = [ATOLL, "fsck", "--data-dir", rig.server.data_dir, "--json"]
        if running:
            # Only files changed since the restart can belong to writes in flight; older ones are what the kill
            # left, which the start-up must have reclaimed (the default grace, 15 min, would hide them).
            argv += ["--grace", f"{time.time() - rig.started:.3f}"]
        self.started = time.monotonic()
        self.proc = subprocess.Popen(argv, env=rig.server.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)

    def check(self, rnd: Round | None = None) -> dict:
        out, err = self.proc.communicate(timeout=120)
        if rnd is not None:
            rnd.count("fsck_ms", int((time.monotonic() - self.started) * 1000))
        try:
            report = json.loads(out)
        except ValueError:
            raise AssertionError(f"{self.label}: atoll fsck --json {self.where} printed no report (exit "
                                 f"{self.proc.returncode}):\n{out[-2000:]}\n{err[-2000:]}") from None
        assert report.get("clean") is True and self.proc.returncode == 0, (
            f"{self.label}: atoll fsck {self.where} is not clean (exit {self.proc.returncode}): "
            f"{json.dumps(report.get('findings', [])[:10])[:4000]}")
        return report


def check_disk_sound(rig: Rig, label: str) -> None:
    problems, _ = check_disk(rig.server.data_dir)
    assert not problems, f"{label}: " + "\n".join(problems)


def finish(rig: Rig, label: str, stats: list[dict]) -> None:
    """After the last round: a graceful stop, and fsck of the stopped server's data directory."""
    assert rig.server.stop() == 0, rig.server.log_text()[-3000:]
    Fsck(rig, f"{label} (after the last round)").check()
    print(f"{label}: {len(stats)} kills: {stats}")


# cold objects and readers ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ColdObject:
    """An object put straight into the cold store: what every GET through Atoll must answer."""

    bucket: str
    key: str
    body: bytes
    etag: str  # the cold store's ETag, unquoted: Atoll serves read-through objects under it


def put_cold(cold: Cold, bucket: str, key: str, body: bytes) -> ColdObject:
    return ColdObject(bucket, key, body, cold.put(key, body))


def put_cold_many(rig: Rig, role: str, sizes: dict[str, int], tag: str) -> list[ColdObject]:
    """Put ``sizes`` (key -> size) into the cold prefix of ``role``'s bucket of every kind."""
    jobs = [(rig.cold_of(role, kind), rig.bucket(role, kind), key, size) for kind in COLD_KINDS
            for key, size in sizes.items()]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        return list(pool.map(lambda j: put_cold(j[0], j[1], j[2], pattern(j[3], f"{tag}/{j[1]}/{j[2]}")), jobs))


def first_difference(got: bytes, expected: bytes) -> int:
    return next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))


def judge_read(obj: ColdObject, body: bytes, etag: str, start: int | None = None, end: int | None = None) -> str:
    """"" if a GET of ``obj`` (of bytes [start, end] when ranged) answered right, else what is wrong."""
    expected = obj.body if start is None else obj.body[start:end + 1]
    what = f"GET {obj.bucket}/{obj.key}" + ("" if start is None else f" bytes={start}-{end}")
    if body != expected:
        at = first_difference(body, expected)
        chunk = body[at:at + 64]
        zeros = bool(chunk) and not any(chunk)
        return (f"{what}: {len(body)} bytes that differ from the cold object's {len(expected)} at offset {at}"
                f"{' (zeros: an unfilled block served as filled)' if zeros else ''}")
    if etag != obj.etag:
        return f"{what}: ETag {etag}, the cold object's is {obj.etag}"
    return ""


def read_and_judge(s3, obj: ColdObject, rng: random.Random | None = None) -> str:
    """One GET of ``obj`` (whole, or a random range if ``rng`` says so), judged."""
    if rng is not None and len(obj.body) > 1 and rng.random() < 0.3:
        start = rng.randrange(len(obj.body))
        end = min(len(obj.body) - 1, start + rng.randint(1, 3 * BLOCK))
        got = s3.get_object(Bucket=obj.bucket, Key=obj.key, Range=f"bytes={start}-{end}")
        return judge_read(obj, got["Body"].read(), got["ETag"].strip('"'), start, end)
    got = s3.get_object(Bucket=obj.bucket, Key=obj.key)
    return judge_read(obj, got["Body"].read(), got["ETag"].strip('"'))


class Reader(threading.Thread):
    """GETs (whole, sometimes ranged) of objects picked by ``pick`` until the kill; every completed answer is
    judged against the cold object."""

    def __init__(self, s3, rnd: Round, pick: Callable[[random.Random], ColdObject], rng: random.Random) -> None:
        super().__init__(daemon=True, name="kill9-reader")
        self.s3, self.rnd, self.pick, self.rng = s3, rnd, pick, rng

    def run(self) -> None:
        while not self.rnd.stop.is_set():
            obj = self.pick(self.rng)
            try:
                verdict = read_and_judge(self.s3, obj, self.rng)
            except Exception as exc:  # noqa: BLE001 - a cut-off GET is what a kill looks like
                if self.rnd.failed_request(f"GET {obj.bucket}/{obj.key}", exc):
                    return
                continue
            self.rnd.count("gets")
            if verdict:
                self.rnd.problem(f"{verdict} ({'after' if self.rnd.killed.is_set() else 'before'} the kill)")


def readers(server: AtollProcess, rnd: Round, count: int, pick: Callable[[random.Random], ColdObject],
            rng: random.Random) -> list[Reader]:
    """``count`` readers sharing one client (no retries; a client costs tens of milliseconds to make)."""
    s3 = first_answer_client(server, max_pool_connections=count)
    return [Reader(s3, rnd, pick, random.Random(rng.random())) for _ in range(count)]


def verify_cold_objects(rig: Rig, objects: list[ColdObject], label: str, resident: bool = True) -> None:
    """After a restart: every object reads back whole and exact, and (``resident``) is then wholly warm."""
    s3 = first_answer_client(rig.server, retries={"max_attempts": 2, "mode": "standard"})
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        verdicts = list(pool.map(lambda obj: read_and_judge(s3, obj), objects))
    problems = [v for v in verdicts if v]
    if resident and not problems:
        rows = dict(((b, k), r) for b, k, r in meta_query(rig.server, "SELECT bucket, key, residency FROM objects"))
        problems += [f"{o.bucket}/{o.key} read whole but residency {rows.get((o.bucket, o.key))}, not resident"
                     for o in objects if rows.get((o.bucket, o.key)) != 2]
    assert not problems, f"{label}:\n" + "\n".join(problems[:20])


# the journal and the cold copies of writes ----------------------------------------------------------------------
def backlog(server: AtollProcess, buckets: list[str]) -> int:
    marks = ",".join("?" * len(buckets))
    return meta_query(server, f"SELECT count(*) FROM drain WHERE bucket IN ({marks})", tuple(buckets))[0][0]


def claimed(server: AtollProcess, buckets: list[str]) -> int:
    """Journal entries a drainer had claimed (uploads in flight, or about to be)."""
    marks = ",".join("?" * len(buckets))
    return meta_query(server, f"SELECT count(*) FROM drain WHERE bucket IN ({marks}) AND not_before > ?",
                      (*buckets, time.time() + 60))[0][0]


def wait_drained(server: AtollProcess, buckets: list[str], label: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while backlog(server, buckets):
        if time.monotonic() > deadline:
            marks = ",".join("?" * len(buckets))
            rows = meta_query(server, f"SELECT bucket, key, op, attempts, last_error FROM drain WHERE bucket IN "
                              f"({marks})", tuple(buckets))
            raise AssertionError(f"{label}: the drain backlog did not reach 0 in {timeout}s: {rows[:10]}")
        time.sleep(0.05)


def assert_colds_hold(rig: Rig, expected: dict[str, dict[str, bytes]], label: str) -> None:
    """The cold prefix of each bucket holds exactly ``expected[bucket]`` (key -> bytes), nothing more."""
    problems = []
    reads = []
    for bucket, state in expected.items():
        cold = rig.colds[bucket]
        listed = cold.keys()
        if set(listed) != set(state):
            problems.append(f"[{cold.kind}] cold keys differ: extra {sorted(set(listed) - set(state))[:10]}, "
                            f"missing {sorted(set(state) - set(listed))[:10]}")
        reads += [(cold, key, state[key]) for key in sorted(set(listed) & set(state))]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for (cold, key, data), got in zip(reads, pool.map(lambda r: r[0].get(r[1]), reads)):
            if got != data:
                problems.append(f"[{cold.kind}] cold {key}: {len(got or b'')} bytes differ from the {len(data)} "
                                f"acknowledged (at offset {first_difference(got or b'', data)})")
    assert not problems, f"{label}:\n" + "\n".join(problems[:20])


def verify_writes(rig: Rig, models: dict[str, Model], label: str) -> None:
    """test_kill9's check of every written key against its history, the buckets side by side."""
    with concurrent.futures.ThreadPoolExecutor(len(models)) as pool:
        for done in [pool.submit(verify_after_restart, rig.server, bucket, model, label)
                     for bucket, model in models.items()]:
            done.result()


def model_state(model: Model) -> dict[str, bytes]:
    """Key -> bytes of a model whose history verify_after_restart has just reduced to the observed state."""
    return {key: content(key, ops[0].gen, ops[0].size) for key, ops in model.ops.items() if ops[0].present}


# 1. write-back PUTs and multipart completes, the drain running ---------------------------------------------------
WRITERS_PER_BUCKET = 3


@pytest.mark.timeout(180)
def test_kill9_during_writeback_puts_and_multipart_completes(make_rig):
    rig = make_rig({"wb": "writeback"})
    rng = random.Random(SEED)
    buckets = [rig.bucket("wb", kind) for kind in COLD_KINDS]
    models = {bucket: Model() for bucket in buckets}
    stats = []
    for r in range(KILLS):
        rnd = Round(f"write-back round {r} (seed {SEED})")
        writers = [Writer(t, rig.server, bucket, models[bucket], random.Random(rng.random()), rnd.stop, rnd.killed)
                   for bucket in buckets for t in range(WRITERS_PER_BUCKET)]
        rig.throttle(4 * MiB)  # uploads take a while: the kill finds some in flight
        kill_during(rig.server, rnd, writers, rng, (0.0, 1.0),
                    ready=lambda: sum(sum(w.acked.values()) for w in writers) >= 6)
        rnd.counts["claimed_at_kill"] = claimed(rig.server, buckets)
        writers_saw(rnd, writers, models)
        restart(rig, rnd)
        fsck = Fsck(rig, rnd.label)
        with rnd.timed("verify"):
            verify_writes(rig, models, rnd.label)
            wait_drained(rig.server, buckets, rnd.label)
        assert_colds_hold(rig, {bucket: model_state(model) for bucket, model in models.items()}, rnd.label)
        check_disk_sound(rig, rnd.label)
        fsck.check(rnd)
        stats.append(dict(rnd.counts))
    totals = sum((Counter(s) for s in stats), Counter())
    assert totals["put"] >= 5 * KILLS and totals["mpu"] >= KILLS and totals["delete"] >= KILLS, totals
    assert totals["cut_off"] >= KILLS, f"kills rarely interrupted a write: {totals}"
    assert sum(1 for s in stats if s.get("claimed_at_kill")) >= KILLS // 2, f"kills rarely hit the drain: {stats}"
    finish(rig, "write-back", stats)


def writers_saw(rnd: Round, writers: list[Writer], models: dict[str, Model]) -> None:
    """What test_kill9's writers saw during the round (into ``rnd``), and no problem among it."""
    for model in models.values():
        assert not model.problems, f"{rnd.label}:\n" + "\n".join(model.problems[:20])
        rnd.count("cut_off", sum(1 for ops in model.ops.values() for op in ops if op.end is None))
    for kind in ("put", "mpu", "delete"):
        rnd.count(kind, sum(w.acked[kind] for w in writers))


# 2. read-through fills -------------------------------------------------------------------------------------------
FILL_OBJECTS = 5  # per cold store and round
FILL_READERS = 3  # per cold store


def partial_versions(server: AtollProcess) -> int:
    return meta_query(server, "SELECT count(*) FROM objects WHERE residency = 1")[0][0]


@pytest.mark.timeout(180)
def test_kill9_during_read_through_fills(make_rig):
    rig = make_rig({"cache": "cache"}, fill_parallelism=4)
    rng = random.Random(SEED + 1)
    buckets = [rig.bucket("cache", kind) for kind in COLD_KINDS]
    everything: list[ColdObject] = []
    stats = []
    for r in range(KILLS):
        rnd = Round(f"fill round {r} (seed {SEED + 1})")
        # Several blocks each, the last one short; a new set every round, so that every round has fills to cut.
        sizes = {f"r{r}/obj-{i}": rng.randint(4, 12) * BLOCK + rng.randint(1, BLOCK - 1) for i in range(FILL_OBJECTS)}
        fresh = put_cold_many(rig, "cache", sizes, f"fill{SEED}")
        everything += fresh
        load = readers(rig.server, rnd, FILL_READERS * len(buckets), lambda g: g.choice(fresh), rng)
        rig.throttle(2 * MiB)
        kill_during(rig.server, rnd, load, rng, (0.1, 1.0))
        rnd.counts["partial_at_kill"] = partial_versions(rig.server)
        assert not rnd.problems, "\n".join(rnd.problems[:20])
        restart(rig, rnd)
        fsck = Fsck(rig, rnd.label)
        # Objects of every round: the ones cut now resume from their block maps, the others are warm.
        with rnd.timed("verify"):
            verify_cold_objects(rig, everything, rnd.label)
        check_disk_sound(rig, rnd.label)
        fsck.check(rnd)
        stats.append(dict(rnd.counts))
    assert sum(1 for s in stats if s.get("partial_at_kill")) >= KILLS // 2, f"kills rarely cut a fill: {stats}"
    assert sum(s.get("gets", 0) for s in stats) >= KILLS // 2, f"hardly a GET completed while fills ran: {stats}"
    finish(rig, "read-through", stats)


# 3. staging jobs ---------------------------------------------------------------------------------------------------
STAGE_OBJECTS = 8  # per cold store and round


def job_rows(server: AtollProcess, job_ids: list[str]) -> dict[str, tuple[str, dict, str]]:
    marks = ",".join("?" * len(job_ids))
    return {row[0]: (row[1], json.loads(row[2]), row[3]) for row in
            meta_query(server, f"SELECT job_id, state, progress, error FROM jobs WHERE job_id IN ({marks})",
                       tuple(job_ids))}


def wait_jobs(server: AtollProcess, job_ids: list[str], label: str, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        rows = job_rows(server, job_ids)
        if all(state in ("done", "failed", "cancelled") for state, _, _ in rows.values()):
            return rows
        assert time.monotonic() < deadline, f"{label}: jobs did not finish in {timeout}s: {rows}"
        time.sleep(0.05)


@pytest.mark.timeout(180)
def test_kill9_during_staging_jobs(make_rig):
    rig = make_rig({"stage": "cache"}, stage_concurrency=2)
    rng = random.Random(SEED + 2)
    buckets = {kind: rig.bucket("stage", kind) for kind in COLD_KINDS}
    everything: list[ColdObject] = []
    stats = []
    for r in range(KILLS):
        rnd = Round(f"staging round {r} (seed {SEED + 2})")
        sizes = {f"r{r}/obj-{i}": rng.randint(1, 4 * BLOCK) for i in range(STAGE_OBJECTS)}
        sizes[f"r{r}/big"] = rng.randint(8, 16) * BLOCK
        fresh = put_cold_many(rig, "stage", sizes, f"stage{SEED}")
        everything += fresh
        rig.throttle(1.5 * MiB)
        # One job per cold store, which the server runs one after the other.
        jobs = [admin_call(rig.server, "POST", "/api/v1/jobs", {"kind": "stage", "bucket": buckets[kind],
                                                               "prefix": f"r{r}/", "pin": True})["id"]
                for kind in rng.sample(COLD_KINDS, len(COLD_KINDS))]
        # Reads of the keys being staged race the jobs for the same objects.
        load = readers(rig.server, rnd, 2, lambda g: g.choice(fresh), rng)
        kill_during(rig.server, rnd, load, rng, (0.1, 1.5))
        rnd.counts["running_at_kill"] = sum(state == "running" for state, _, _ in job_rows(rig.server, jobs).values())
        assert not rnd.problems, "\n".join(rnd.problems[:20])
        restart(rig, rnd)
        fsck = Fsck(rig, rnd.label)
        with rnd.timed("verify"):
            for job_id, (state, progress, error) in wait_jobs(rig.server, jobs, rnd.label).items():
                assert state == "done" and not error, f"{rnd.label}: job {job_id} {state}: {error} {progress}"
                assert progress["objects_total"] == progress["objects_done"] == len(sizes), \
                    f"{rnd.label}: job {job_id}: {progress}"
                assert progress["failed"] == 0, f"{rnd.label}: job {job_id}: {progress}"
                rnd.counts["attempts"] = max(rnd.counts["attempts"], progress["attempt"])
            pins = {(b, k): p for b, k, p in meta_query(rig.server, "SELECT bucket, key, pinned_until FROM objects")}
            unpinned = [(o.bucket, o.key) for o in fresh if pins.get((o.bucket, o.key)) != PIN_FOREVER]
            assert not unpinned, f"{rnd.label}: staged but not pinned: {unpinned[:10]}"
            verify_cold_objects(rig, everything, rnd.label)
        check_disk_sound(rig, rnd.label)
        fsck.check(rnd)
        stats.append(dict(rnd.counts))
    assert sum(1 for s in stats if s.get("running_at_kill")) >= KILLS // 2, f"kills rarely cut a job: {stats}"
    assert sum(1 for s in stats if s["attempts"] > 1) >= KILLS // 2, f"jobs rarely resumed: {stats}"
    finish(rig, "staging", stats)


# 4. the drain of a backlog -----------------------------------------------------------------------------------------
def put_multipart(s3, bucket: str, key: str, data: bytes) -> None:
    parts = [data[at:at + MIN_PART] for at in range(0, len(data), MIN_PART)]
    upload = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    done = [{"PartNumber": n, "ETag": s3.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=n,
                                                     Body=part)["ETag"]} for n, part in enumerate(parts, 1)]
    s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": done})


def write_backlog(s3, bucket: str, expected: dict[str, bytes | None], rng: random.Random, r: int,
                  big: bool) -> None:
    """Acknowledged writes, each recorded in ``expected`` (key -> bytes, None once deleted): new keys, overwrites
    and deletes of keys drained in earlier rounds, a multipart object, and (``big``) one that the drain sends as a
    multipart upload of its own."""
    for i in range(8):
        key = f"r{r}/obj-{i}"
        expected[key] = os.urandom(rng.randint(0, 192 * KiB))
        s3.put_object(Bucket=bucket, Key=key, Body=expected[key])
    old = sorted(k for k, v in expected.items() if v is not None and not k.startswith(f"r{r}/"))
    for key in rng.sample(old, min(3, len(old))):
        expected[key] = os.urandom(rng.randint(1, 64 * KiB))
        s3.put_object(Bucket=bucket, Key=key, Body=expected[key])
    for key in rng.sample(old, min(2, len(old))):
        expected[key] = None
        s3.delete_object(Bucket=bucket, Key=key)
    key = f"r{r}/multipart"
    expected[key] = os.urandom(2 * MIN_PART + rng.randint(1, MIN_PART))
    put_multipart(s3, bucket, key, expected[key])
    if big:
        expected["big"] = os.urandom(PART_SIZE + rng.randint(1, MiB))
        s3.put_object(Bucket=bucket, Key="big", Body=expected["big"])


@pytest.mark.timeout(180)
def test_kill9_during_the_drain_of_a_backlog(make_rig):
    rig = make_rig({"wb": "writeback"})
    rng = random.Random(SEED + 3)
    buckets = {kind: rig.bucket("wb", kind) for kind in COLD_KINDS}
    expected: dict[str, dict[str, bytes | None]] = {bucket: {} for bucket in buckets.values()}
    stats = []
    for r in range(KILLS):
        rnd = Round(f"drain round {r} (seed {SEED + 3})")
        admin_call(rig.server, "POST", "/api/v1/drain/pause")
        s3 = first_answer_client(rig.server)
        for kind, bucket in buckets.items():
            # An object the drain sends as a multipart upload (> PART_SIZE) every fourth round per cold store.
            write_backlog(s3, bucket, expected[bucket], rng, r, big=(r + (kind == "s3") * 2) % 4 == 0)
        rnd.counts["backlog"] = backlog(rig.server, list(buckets.values()))
        rig.throttle(3 * MiB)
        admin_call(rig.server, "POST", "/api/v1/drain/resume")
        kill_during(rig.server, rnd, [], rng, (0.1, 1.0))
        rnd.counts["left_at_kill"] = backlog(rig.server, list(buckets.values()))
        rnd.counts["claimed_at_kill"] = claimed(rig.server, list(buckets.values()))
        restart(rig, rnd)
        fsck = Fsck(rig, rnd.label)
        with rnd.timed("verify"):
            wait_drained(rig.server, list(buckets.values()), rnd.label)
        assert_colds_hold(rig, {bucket: {k: v for k, v in state.items() if v is not None}
                                for bucket, state in expected.items()}, rnd.label)
        s3 = first_answer_client(rig.server, retries={"max_attempts": 2, "mode": "standard"}, max_pool_connections=8)
        keys = [(bucket, key, data) for bucket, state in expected.items() for key, data in state.items()]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            for (bucket, key, data), got in zip(keys, pool.map(lambda k: read_state(s3, k[0], k[1]), keys)):
                assert got == data, (f"{rnd.label}: {bucket}/{key} reads {got if got is None else len(got)} bytes "
                                     f"after the restart, not the {data if data is None else len(data)} acknowledged")
        check_disk_sound(rig, rnd.label)
        fsck.check(rnd)
        stats.append(dict(rnd.counts))
    cut = [s for s in stats if 0 < s["left_at_kill"] < s["backlog"]]
    assert len(cut) >= KILLS // 2, f"kills rarely landed mid-drain: {stats}"
    finish(rig, "drain", stats)


def read_state(s3, bucket: str, key: str) -> bytes | None:
    try:
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except botocore.exceptions.ClientError as exc:
        if exc.response["Error"]["Code"] == "NoSuchKey":
            return None
        raise


# 5. eviction ------------------------------------------------------------------------------------------------------
CAPACITY = 2 * MiB
EVICT_OBJECTS = 8  # per cold store, of 256 KiB: twice the tier in all


class SmallWriter(Writer):
    """test_kill9's writer with whole-object PUTs of at most 32 KiB: undrained writes may not be evicted, and
    bigger or multipart ones would fill the tiny tier with them."""

    def _size(self) -> int:
        return self.rng.randint(0, 32 * KiB)

    def multipart(self, key: str) -> None:
        self.put(key)


def evictions(server: AtollProcess) -> int:
    """Objects evicted since the server started (its /metrics)."""
    request = urllib.request.Request(server.admin_endpoint + "/metrics",
                                     headers={"Authorization": f"Bearer {server.admin_token}"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        text = answer.read().decode()
    return int(sum(float(line.split()[-1]) for line in text.splitlines()
                   if line.startswith("atoll_evicted_objects_total")))


@pytest.mark.timeout(180)
def test_kill9_during_eviction(make_rig):
    rig = make_rig({"read": "cache", "write": "writeback"}, warm_capacity=CAPACITY, high_watermark=0.9,
                   low_watermark=0.5)
    rng = random.Random(SEED + 4)
    cold_objects = put_cold_many(rig, "read", {f"obj-{i:02d}": 4 * BLOCK for i in range(EVICT_OBJECTS)},
                                 f"evict{SEED}")
    write_buckets = [rig.bucket("write", kind) for kind in COLD_KINDS]
    models = {bucket: Model() for bucket in write_buckets}
    # Read once, they fill the tier past its high watermark: from the first round on, every fill evicts.
    verify_cold_objects(rig, cold_objects, "before the first round", resident=False)
    stats = []
    for r in range(KILLS):
        rnd = Round(f"eviction round {r} (seed {SEED + 4})")
        load = readers(rig.server, rnd, 4, lambda g: g.choice(cold_objects), rng)
        writers = [SmallWriter(t, rig.server, bucket, models[bucket], random.Random(rng.random()), rnd.stop,
                               rnd.killed) for bucket in write_buckets for t in range(2)]
        rig.throttle(4 * MiB)
        before = evictions(rig.server)
        kill_during(rig.server, rnd, [*load, *writers], rng, (0.3, 1.2), ready=lambda: rnd.counts["gets"] >= 4,
                    last_look=lambda: rnd.count("evicted", evictions(rig.server) - before))
        rnd.counts["partial_at_kill"] = partial_versions(rig.server)
        writers_saw(rnd, writers, models)
        assert not rnd.problems, "\n".join(rnd.problems[:20])
        restart(rig, rnd)
        fsck = Fsck(rig, rnd.label)
        with rnd.timed("verify"):
            verify_writes(rig, models, rnd.label)
            # Reading every cold object again refills what was evicted, and evicts again.
            verify_cold_objects(rig, cold_objects, rnd.label, resident=False)
            wait_drained(rig.server, write_buckets, rnd.label)
        assert_colds_hold(rig, {bucket: model_state(model) for bucket, model in models.items()}, rnd.label)
        check_disk_sound(rig, rnd.label)
        fsck.check(rnd)
        stats.append(dict(rnd.counts))
    assert all(s["evicted"] for s in stats), f"the evictor did not run in every round: {stats}"
    assert sum(s["put"] for s in stats) >= KILLS, stats
    finish(rig, "eviction", stats)
