"""kill -9 of one node of three while it works: a staging job, a write-back drain of a backlog, client PUT/GET
traffic through HAProxy. The survivors finish the work: every acknowledged write intact, jobs complete, nothing
uploaded to the cold store twice beyond what the dead node had in flight (counted at the cold side, by the
counting FaultProxy in front of moto), and ``atoll status`` shows the dead node dead.

Liveness is quick here (heartbeat every 0.5 s, dead after 2 s) so that takeovers happen within the test's time.
"""

from __future__ import annotations

import hashlib
import json
import random
import secrets
import threading
import time

import boto3
import botocore.config
import botocore.exceptions
import pytest

from clusterutil import Cluster
from coldside import Cold, ColdSite, pattern
from harness import admin_call, admin_status, wait_until

pytestmark = pytest.mark.timeout(240)

KiB, MiB = 1 << 10, 1 << 20
FAST_LIVENESS = {"ATOLL_HEARTBEAT_INTERVAL": "0.5", "ATOLL_NODE_TIMEOUT": "2"}
DRAIN_CONCURRENCY = 4
PART = 256 * KiB
TIER_ENV = {**FAST_LIVENESS, "ATOLL_FILL_BLOCK_SIZE": str(64 * KiB), "ATOLL_STAGE_CONCURRENCY": "2",
            "ATOLL_DRAIN_CONCURRENCY": str(DRAIN_CONCURRENCY), "ATOLL_MIN_PART_SIZE": str(PART),
            "ATOLL_BREAKER_COOLDOWN": "0.3", "ATOLL_BREAKER_MAX_COOLDOWN": "1"}


# --- helpers ---------------------------------------------------------------------------------------------------

def link(cluster: Cluster, cold: Cold, mode: str) -> str:
    """A new bucket (made through the load balancer) linked to ``cold`` with the CLI, as an operator does it."""
    name = f"fo-{secrets.token_hex(5)}"
    cluster.front.client().create_bucket(Bucket=name)
    done = cluster.front.cli("bucket", "link", name, cold.url, "--mode", mode, *cold.link_options(), check=False)
    assert done.returncode == 0, done.stderr + done.stdout
    cold.proxy.reset_counts()
    return name


def owner_node(owner: str) -> int | None:
    """The 0-based node index of an owner string ``node<N>:<pid>:<start>``."""
    name = owner.split(":", 1)[0]
    return int(name[4:]) - 1 if name.startswith("node") and name[4:].isdigit() else None


def survivor(cluster: Cluster, dead: int):
    return cluster.nodes[(dead + 1) % len(cluster.nodes)]


def nodes_view(server) -> dict[str, dict]:
    """The ``nodes`` section of a node's /api/v1/status, by node name."""
    return {entry["node"]: entry for entry in admin_status(server)["nodes"]}


def wait_dead_in_status(cluster: Cluster, dead: int) -> None:
    name = f"node{dead + 1}"
    wait_until(lambda: nodes_view(survivor(cluster, dead))[name]["state"] == "dead", 15, f"{name} dead in status",
               interval=0.2)
    view = nodes_view(survivor(cluster, dead))
    assert all(view[f"node{i + 1}"]["state"] == "alive" for i in range(len(cluster.nodes)) if i != dead), view


def uploads(cold: Cold, key: str) -> int:
    """Requests that put a whole object at ``key`` (a PUT, or the request completing a multipart upload)."""
    count = 0
    for request in cold.proxy.requests():
        path, _, query = request.path.partition("?")
        if path == cold.path(key):
            count += (request.method == "PUT" and not query) or (request.method == "POST" and "uploadId=" in query)
    return count


def backlog(cluster: Cluster, bucket: str) -> int:
    return cluster.meta_query("SELECT count(*) FROM drain WHERE bucket = ?", (bucket,))[0][0]


# --- (a) staging -------------------------------------------------------------------------------------------------

def test_kill_during_staging_job_the_job_completes_on_a_survivor(make_cluster, moto_s3):
    cluster = make_cluster(**TIER_ENV)
    with ColdSite("s3", moto_s3, "staging") as site:
        cold = site.cold()
        objects = {f"ckpt/{i:02d}.bin": pattern(128 * KiB + i, f"{cold.prefix}/ckpt{i}") for i in range(24)}
        for key, data in objects.items():
            cold.put(key, data)
        bucket = link(cluster, cold, "cache")
        cold.proxy.bandwidth = 512 * KiB  # about 6 s for the whole job
        job = admin_call(cluster.nodes[0], "POST", "/api/v1/jobs", {"kind": "stage", "bucket": bucket,
                                                                     "prefix": "ckpt/"})

        def running_owner():
            rows = cluster.meta_query("SELECT state, owner, progress FROM jobs WHERE job_id = ?", (job["id"],))
            state, owner, progress = rows[0]
            return owner if state == "running" and _done(progress) >= 3 else None

        owner = wait_until(running_owner, 30, "the job running with 3 objects staged", interval=0.05)
        dead = owner_node(owner)
        assert dead is not None, owner
        cluster.kill(dead)
        killed_at = time.monotonic()
        resident_at_kill = {key for key in objects if _resident(cluster, bucket, key)}
        fetched_at_kill = {key: len(cold.proxy.requests("GET", path_contains=f"/{key}")) for key in objects}
        cold.proxy.heal()

        other = survivor(cluster, dead)
        final = wait_until(lambda: (j := admin_call(other, "GET", f"/api/v1/jobs/{job['id']}"))["state"]
                           in ("done", "failed", "cancelled") and j, 60, "the job finished on a survivor",
                           interval=0.2)
        assert final["state"] == "done", final
        took = time.monotonic() - killed_at
        print(f"kill -9 during staging: node{dead + 1} killed with {len(resident_at_kill)} of 24 objects resident; "
              f"the job done on a survivor {took:.1f}s later")
        # Taken up when the dead runner's lease lapses (atoll/core/tiering/jobs.py LEASE, 30 s), then ~5 s of work.
        assert took < 50, f"the job took {took:.0f}s to finish after its node died"
        assert final["progress"]["objects_done"] == 24 and final["progress"]["failed"] == 0, final
        new_owner = cluster.meta_query("SELECT owner FROM jobs WHERE job_id = ?", (job["id"],))[0][0]
        assert owner_node(new_owner) != dead, new_owner
        # Objects resident before the kill were not fetched again; the others once more at most (in flight).
        gets = {key: len(cold.proxy.requests("GET", path_contains=f"/{key}")) for key in objects}
        assert all(gets[key] == fetched_at_kill[key] for key in resident_at_kill), (gets, resident_at_kill)
        assert all(gets[key] <= 2 for key in objects), gets
        assert sum(gets.values()) <= 24 + 2, gets  # the dead node's two in-flight transfers, at most
        assert all(_resident(cluster, bucket, key) for key in objects)
        cold.proxy.reset_counts()
        s3 = cluster.front.client()
        for key, data in objects.items():
            assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == data, key
        assert cold.proxy.requests() == []  # every read was warm
        wait_dead_in_status(cluster, dead)


def _done(progress: str) -> int:
    return json.loads(progress).get("objects_done", 0)


def _resident(cluster: Cluster, bucket: str, key: str) -> bool:
    rows = cluster.meta_query("SELECT residency FROM objects WHERE bucket = ? AND key = ?", (bucket, key))
    return bool(rows) and rows[0][0] == 2


# --- (b) drain ---------------------------------------------------------------------------------------------------

def test_kill_during_drain_the_backlog_drains_on_the_survivors_once(make_cluster, moto_s3):
    cluster = make_cluster(**TIER_ENV)
    with ColdSite("s3", moto_s3, "drain") as site:
        cold = site.cold()
        bucket = link(cluster, cold, "writeback")
        s3 = cluster.front.client()
        admin_call(cluster.nodes[0], "POST", "/api/v1/drain/pause")
        expected: dict[str, bytes] = {"big/multipart.bin": random.randbytes(2 * PART + 1000)}
        for i in range(30):
            expected[f"small/obj-{i:02d}"] = random.randbytes(64 * KiB + random.randrange(128 * KiB))
        for key, data in expected.items():  # through the load balancer: written by all three nodes
            s3.put_object(Bucket=bucket, Key=key, Body=data)
        assert backlog(cluster, bucket) == len(expected)
        cold.proxy.bandwidth = 1 * MiB  # about 5 s for the backlog
        admin_call(cluster.nodes[0], "POST", "/api/v1/drain/resume")

        # Kill a node while it drains (uploads in flight, as its heartbeat reports them), after a few objects
        # reached the cold store.
        def busy_node():
            if len(set(cold.keys()) & set(expected)) < 3:
                return None
            draining = {int(name[4:]) - 1: view["info"].get("draining", 0)
                        for name, view in nodes_view(cluster.nodes[0]).items()}
            busiest = max(draining, key=draining.get)
            return draining[busiest] and busiest + 1
        dead = wait_until(busy_node, 30, "a node draining", interval=0.02) - 1
        cluster.kill(dead)
        at_kill = backlog(cluster, bucket)
        assert at_kill > 0, "the backlog drained before the kill: the test proves nothing"
        cold.proxy.heal()

        wait_until(lambda: backlog(cluster, bucket) == 0, 60, "the backlog drained by the survivors",
                   interval=0.1)
        assert set(cold.keys()) >= set(expected)
        for key, data in expected.items():
            got = cold.get(key)
            assert got is not None and hashlib.md5(got).digest() == hashlib.md5(data).digest(), key
            assert hashlib.md5(s3.get_object(Bucket=bucket, Key=key)["Body"].read()).digest() == \
                hashlib.md5(data).digest(), key
        counts = {key: uploads(cold, key) for key in expected}
        assert all(n >= 1 for n in counts.values()), counts
        # Only what the dead node had in flight can be uploaded again; the survivors never both upload one entry.
        reuploads = sum(n - 1 for n in counts.values())
        print(f"kill -9 during drain: {at_kill} entries left at the kill, {reuploads} uploads repeated")
        assert reuploads <= DRAIN_CONCURRENCY, counts
        wait_dead_in_status(cluster, dead)


# --- (c) client traffic through the load balancer ---------------------------------------------------------------

def retrying_client(cluster: Cluster):
    """boto3 as an application would use it behind a load balancer: standard retries (502/503/connection)."""
    config = botocore.config.Config(retries={"max_attempts": 6, "mode": "standard"}, connect_timeout=5,
                                    read_timeout=30, max_pool_connections=4)
    front = cluster.front
    return boto3.client("s3", endpoint_url=front.endpoint, aws_access_key_id=front.access_key,
                        aws_secret_access_key=front.secret_key, region_name="us-east-1", config=config)


def versioned_body(key: str, gen: int) -> bytes:
    size = random.Random(f"{key}/{gen}").choice([0, 700, 20 * KiB, 300 * KiB, 2 * MiB])
    head = f"{key}|{gen}|".encode()
    return (head + random.Random(f"{key}|{gen}").randbytes(size))[:max(size, len(head))]


def test_kill_during_client_traffic_every_acknowledged_write_survives(make_cluster):
    cluster = make_cluster(**FAST_LIVENESS)
    cluster.front.client().create_bucket(Bucket="traffic")
    stop = threading.Event()
    acked: dict[str, int] = {}  # key -> newest acknowledged generation
    attempted: dict[str, list[int]] = {}  # key -> generations sent after the newest acknowledged one
    failures: list[str] = []
    reads = [0]
    lock = threading.Lock()

    def writer(tid: int) -> None:
        client = retrying_client(cluster)
        rng = random.Random(tid)
        keys = [f"t{tid}/k{i}" for i in range(4)]
        gen = 0
        while not stop.is_set():
            key = rng.choice(keys)
            if rng.random() < 0.4 and key in acked:
                # A read of an owned key sees exactly its newest acknowledged version.
                try:
                    got = client.get_object(Bucket="traffic", Key=key)
                    data = got["Body"].read()
                except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
                    # A body cut off by the kill: a client retries the read, as below.
                    try:
                        got = client.get_object(Bucket="traffic", Key=key)
                        data = got["Body"].read()
                    except Exception as again:  # noqa: BLE001 - recorded, fails the test
                        with lock:
                            failures.append(f"GET {key}: {exc!r} then {again!r}")
                        continue
                if data != versioned_body(key, acked[key]):
                    with lock:
                        failures.append(f"GET {key}: not generation {acked[key]} ({data[:30]!r})")
                reads[0] += 1
                continue
            gen += 1
            with lock:
                attempted.setdefault(key, []).append(gen)
            try:
                client.put_object(Bucket="traffic", Key=key, Body=versioned_body(key, gen))
            except Exception as exc:  # noqa: BLE001 - recorded, fails the test
                with lock:
                    failures.append(f"PUT {key} gen {gen}: {exc!r}")
                continue
            with lock:
                acked[key] = gen
                attempted[key] = []

    threads = [threading.Thread(target=writer, args=(tid,), daemon=True) for tid in range(6)]
    for thread in threads:
        thread.start()
    time.sleep(2.0)
    writes_before = sum(acked.values())
    cluster.kill(1)  # SIGKILL, requests in flight
    killed_at = time.monotonic()
    cluster.proxy.wait_states(1, "DOWN", timeout=10)
    out_of_rotation = time.monotonic() - killed_at
    time.sleep(2.0)
    stop.set()
    for thread in threads:
        thread.join(60)
    assert not failures, failures[:10]
    assert writes_before > 0 and sum(acked.values()) > writes_before, "no traffic after the kill"
    print(f"kill -9 under traffic: {sum(acked.values())} generations written, {reads[0]} reads; node2 out of "
          f"rotation {out_of_rotation:.1f}s after the kill")

    # Every key holds its newest acknowledged version, or one sent after it (a PUT cut off by the end of the run
    # may or may not have landed), whole, through every surviving node.
    for index in (0, 2):
        client = cluster.nodes[index].client()
        for key, gen in acked.items():
            got = client.get_object(Bucket="traffic", Key=key)["Body"].read()
            allowed = [gen, *attempted.get(key, [])]
            assert any(got == versioned_body(key, g) for g in allowed), (key, allowed, got[:30])
    wait_dead_in_status(cluster, 1)

    # The dead node comes back: HAProxy puts it back in rotation and it serves the same namespace.
    cluster.restart(1)
    key, gen = next(iter(acked.items()))
    assert cluster.nodes[1].client().get_object(Bucket="traffic", Key=key)["Body"].read() == \
        versioned_body(key, gen)
    wait_until(lambda: nodes_view(cluster.nodes[0])["node2"]["state"] == "alive", 10, "node2 alive again")


def test_dead_nodes_cluster_leases_are_taken_over(make_cluster):
    cluster = make_cluster(**FAST_LIVENESS)

    def leases() -> dict[str, tuple[str, float]]:
        return {name: (owner, until) for name, owner, until in
                cluster.meta_query("SELECT name, owner, lease_until FROM cluster_leases")}

    def held_now() -> dict[str, str]:
        now = time.time()
        # Singleton tasks (evict, gc, cold-leftovers, compaction-housekeeping), not per-object fill/upload leases.
        return {n: o for n, (o, until) in leases().items()
                if ":" not in n and owner_node(o) is not None and until > now}

    held = wait_until(held_now, 15, "cluster leases held")
    dead = owner_node(held[sorted(held)[0]])
    names_of_dead = {n for n, o in held.items() if owner_node(o) == dead}
    cluster.kill(dead)
    wait_until(lambda: all(owner_node(leases()[n][0]) not in (dead, None) for n in names_of_dead), 30,
               f"the leases of node{dead + 1} {sorted(names_of_dead)} taken over", interval=0.2)
    wait_dead_in_status(cluster, dead)
    # `atoll status` as an operator runs it on a surviving node (it asks that node's admin API).
    out = survivor(cluster, dead).cli("status", "--json")
    nodes = {entry["node"]: entry for entry in json.loads(out.stdout)["nodes"]}
    assert nodes[f"node{dead + 1}"]["state"] == "dead", nodes
    assert all(nodes[f"node{i + 1}"]["state"] == "alive" for i in range(3) if i != dead), nodes
    assert not set(nodes[f"node{dead + 1}"]["leases"]) & names_of_dead, nodes
