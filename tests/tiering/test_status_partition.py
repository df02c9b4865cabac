"""What an operator sees during a WAN partition: ``atoll status`` (CLI, JSON and tables), the admin API's status
and ``/metrics`` of a real ``atoll serve`` whose write-back bucket is linked to Azurite through a FaultProxy.

Asserted: while the proxy black-holes the link, writes are still acknowledged, the endpoint shows as partitioned
(breaker open) in the CLI, the API and the gauges, and the bucket's recovery point grows between two samples
while its backlog counts every write made since; the gauges carry the same numbers as the API (backlog,
recovery point, resident and pinned bytes, hit ratio, endpoint state and last success); after heal the endpoint
returns to healthy, the backlog drains to 0 and the cold store holds every write byte-exact. With ``--workers 2``
the status merges both workers' views (counters summed: they match what the proxy forwarded; a worker killed
with SIGKILL drops out and its health file goes).
"""

from __future__ import annotations

import json
import os
import socket
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from botocore.exceptions import ClientError

from harness import ATOLL, AtollProcess, admin_status, metric, metrics_text, wait_until
from tierutil import BLOCK, ColdSite, client, link_bucket, pattern

pytestmark = pytest.mark.timeout(120)

# Short WAN timeouts: a partition is noticed in a few seconds and a heal within about a second.
SERVER_ENV = {"ATOLL_FILL_BLOCK_SIZE": str(BLOCK), "ATOLL_COLD_FIRST_BYTE_TIMEOUT": "1",
              "ATOLL_COLD_CONNECT_TIMEOUT": "1", "ATOLL_COLD_STALL_TIMEOUT": "2", "ATOLL_BREAKER_COOLDOWN": "0.5",
              "ATOLL_BREAKER_MAX_COOLDOWN": "1"}


# --- helpers --------------------------------------------------------------------------------------------------

def cli_status(server: AtollProcess, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([ATOLL, "status", *args, "--data-dir", server.data_dir, "--admin", server.admin_endpoint],
                          env={**server.env(), "COLUMNS": "220"}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr + done.stdout
    return done


def endpoint_of(report: dict, bucket: str) -> dict:
    [view] = [v for v in report["cold_endpoints"] if bucket in v["buckets"]]
    return view


def bucket_of(report: dict, bucket: str) -> dict:
    [view] = [b for b in report["buckets"] if b["bucket"] == bucket]
    return view


def start(tmp_path, workers: int = 1) -> AtollProcess:
    return AtollProcess(data_dir=str(tmp_path / "data"), workers=workers, extra_env=SERVER_ENV).start()


@pytest.fixture
def site(azurite):
    with ColdSite("azure", azurite, "status") as made:
        yield made


# --- tests ----------------------------------------------------------------------------------------------------

def test_partition_shows_in_status_and_metrics_and_heals(tmp_path, site):
    server = start(tmp_path)
    try:
        cold = site.cold()
        bucket = link_bucket(server, cold, "writeback")
        s3 = server.client()

        # Healthy: one read through (a miss), one warm read (a hit), three writes drained.
        seed = pattern(3000, "seed")
        cold.put("seed", seed)
        for _ in range(2):
            assert s3.get_object(Bucket=bucket, Key="seed")["Body"].read() == seed
        written = {f"before/{i}": pattern(1000 + i, f"before{i}") for i in range(3)}
        for key, body in written.items():
            s3.put_object(Bucket=bucket, Key=key, Body=body)
        report = wait_until(lambda: (lambda r: r if bucket_of(r, bucket)["backlog"]["objects"] == 0 else None)(
            admin_status(server)), 20, "the first writes drained")
        endpoint = endpoint_of(report, bucket)
        assert endpoint["state"] == "healthy" and endpoint["contacted"] and endpoint["buckets"] == [bucket]
        assert endpoint["breaker"]["state"] == "closed" and endpoint["consecutive_failures"] == 0
        assert endpoint["traffic"]["drain"]["bytes_out"] == sum(map(len, written.values()))
        assert endpoint["traffic"]["demand"]["bytes_in"] == len(seed)
        linked = bucket_of(report, bucket)
        assert (linked["hits"], linked["misses"], linked["hit_ratio"]) == (1, 1, 0.5)
        assert linked["resident_bytes"] == len(seed) + sum(map(len, written.values()))
        assert linked["endpoint"] == endpoint["endpoint"] and linked["endpoint_state"] == "healthy"
        key = endpoint["endpoint"]
        assert key.startswith("az://") and "127.0.0.1" in key

        # Partition: writes are still acknowledged; the link is found dead without any client waiting on it.
        cold.proxy.blackhole()
        during = {f"during/{i}": pattern(2000 + i, f"during{i}") for i in range(3)}
        for name, body in during.items():
            s3.put_object(Bucket=bucket, Key=name, Body=body)
        wait_until(lambda: endpoint_of(admin_status(server), bucket)["state"] == "partitioned", 20,
                   "the endpoint shows as partitioned")

        first = json.loads(cli_status(server, "--json").stdout)  # the CLI, as an operator runs it
        assert first["server"]["reachable"] is True
        view = endpoint_of(first, bucket)
        assert view["state"] == "partitioned" and view["breaker"]["state"] in ("open", "half-open")
        assert view["breaker"]["opened_at"] > time.time() - 60 and view["consecutive_failures"] >= 3
        assert view["last_error"] and view["last_failure"] >= view["last_success"]
        assert bucket_of(first, bucket)["endpoint_state"] == "partitioned"
        assert [c["state"] for c in first["cold_stores"] if c["bucket"] == bucket] == ["partitioned"]
        first_backlog = bucket_of(first, bucket)["backlog"]
        assert first_backlog["objects"] == len(during) and first_backlog["bytes"] == sum(map(len, during.values()))

        time.sleep(1.0)
        later = {f"later/{i}": pattern(500 + i, f"later{i}") for i in range(2)}
        for name, body in later.items():
            s3.put_object(Bucket=bucket, Key=name, Body=body)
        second = admin_status(server)
        backlog = bucket_of(second, bucket)["backlog"]
        assert backlog["oldest_age_seconds"] >= first_backlog["oldest_age_seconds"] + 1.0, (first_backlog, backlog)
        again = bucket_of(json.loads(cli_status(server, "--json").stdout), bucket)["backlog"]
        assert again["oldest_age_seconds"] >= backlog["oldest_age_seconds"] and again["objects"] == backlog["objects"]
        assert backlog["objects"] == len(during) + len(later)
        assert backlog["bytes"] == sum(map(len, during.values())) + sum(map(len, later.values()))
        assert second["drain"]["backlog"]["objects"] == backlog["objects"]
        assert endpoint_of(second, bucket)["state"] == "partitioned"

        text = metrics_text(server)
        linked = bucket_of(second, bucket)
        assert metric(text, "atoll_cold_endpoint_state", endpoint=key) == 2
        assert metric(text, "atoll_cold_endpoint_consecutive_failures", endpoint=key) >= 3
        assert metric(text, "atoll_cold_endpoint_error_ratio", endpoint=key) > 0
        assert metric(text, "atoll_cold_endpoint_last_success_timestamp_seconds", endpoint=key) == \
            pytest.approx(endpoint_of(second, bucket)["last_success"], abs=1e-3)
        assert metric(text, "atoll_cold_endpoint_latency_seconds", endpoint=key) > 0
        for traffic in ("demand", "stage", "drain"):
            for direction in ("read", "written"):
                assert metric(text, "atoll_cold_endpoint_bytes_per_second", endpoint=key, traffic=traffic,
                              direction=direction) is not None
        assert metric(text, "atoll_cold_endpoint_bytes_per_second", endpoint=key, traffic="drain",
                      direction="written") > 0
        assert metric(text, "atoll_drain_backlog_objects", bucket=bucket) == backlog["objects"]
        assert metric(text, "atoll_drain_backlog_bytes", bucket=bucket) == backlog["bytes"]
        assert metric(text, "atoll_drain_recovery_point_seconds", bucket=bucket) >= backlog["oldest_age_seconds"]
        assert metric(text, "atoll_bucket_resident_bytes", bucket=bucket) == linked["resident_bytes"]
        assert linked["resident_bytes"] == len(seed) + sum(len(b) for b in [*written.values(), *during.values(),
                                                                            *later.values()])
        assert metric(text, "atoll_bucket_pinned_bytes", bucket=bucket) == linked["pinned_bytes"] == 0
        assert metric(text, "atoll_bucket_hit_ratio", bucket=bucket) == linked["hit_ratio"] == 0.5

        human = cli_status(server).stdout
        for shown in ("Cold stores", "Buckets", "partitioned", "breaker", bucket, "writeback"):
            assert shown in human, (shown, human)

        # Heal: the probe closes the breaker, the drain empties the backlog, the state is healthy again once the
        # failures have aged out of the last 10 s.
        cold.proxy.heal()
        healed = wait_until(lambda: (lambda r: r if bucket_of(r, bucket)["backlog"]["objects"] == 0 and
                                     endpoint_of(r, bucket)["state"] == "healthy" else None)(admin_status(server)),
                            30, "the backlog drained and the endpoint is healthy")
        assert bucket_of(healed, bucket)["backlog"] == {"objects": 0, "bytes": 0, "oldest_age_seconds": 0.0}
        assert endpoint_of(healed, bucket)["breaker"] == {"state": "closed", "opened_at": None, "retry_after": 0.0,
                                                          "opens": endpoint_of(healed, bucket)["breaker"]["opens"]}
        assert endpoint_of(healed, bucket)["breaker"]["opens"] >= 1
        for name, body in {**written, **during, **later}.items():
            assert cold.get(name) == body, name
        text = metrics_text(server)
        assert metric(text, "atoll_cold_endpoint_state", endpoint=key) == 0
        assert metric(text, "atoll_drain_recovery_point_seconds", bucket=bucket) == 0
        assert metric(text, "atoll_drain_backlog_objects", bucket=bucket) == 0
    finally:
        assert server.stop() == 0, server.log_text()[-3000:]
    assert "Traceback" not in server.log_text(), server.log_text()[-5000:]


def test_two_workers_status_merges_both_views(tmp_path, site):
    server = start(tmp_path, workers=2)
    try:
        cold = site.cold()
        bucket = link_bucket(server, cold, "cache")  # no drain: every cold request comes from a client's read
        keys = [f"obj/{i}" for i in range(16)]
        for name in keys:
            cold.put(name, b"x" * 1000)
        health = os.path.join(server.data_dir, "run", f"{socket.gethostname()}-{server.port}", "health")

        def read_all(names: list[str]) -> None:
            for name in names:  # a fresh client (connection) each: SO_REUSEPORT spreads them over both workers
                assert server.client().get_object(Bucket=bucket, Key=name)["Body"].read() == b"x" * 1000

        read_all(keys)
        forwarded = len(cold.proxy.requests())  # a HEAD and one block GET per key, by whichever worker

        def merged() -> dict | None:
            view = endpoint_of(admin_status(server), bucket)
            return view if view["workers"] == 2 and view["traffic"]["demand"]["requests"] == forwarded else None

        view = wait_until(merged, 10, "both workers' requests are summed")
        assert view["state"] == "healthy" and view["traffic"]["demand"]["bytes_in"] == 1000 * len(keys)
        assert view["last_minute"]["requests"] == forwarded and view["last_minute"]["error_rate"] == 0
        assert bucket_of(admin_status(server), bucket)["misses"] == len(keys)
        files = os.listdir(health)
        assert len([f for f in files if f.endswith(".json")]) == 1, files  # the primary publishes nothing

        # A partition seen by whichever worker serves the next misses: the merged state is partitioned.
        cold.proxy.blackhole()

        def miss(name: str) -> int:
            try:
                client(server).get_object(Bucket=bucket, Key=name)
            except ClientError as exc:
                return exc.response["ResponseMetadata"]["HTTPStatusCode"]
            return 200

        with ThreadPoolExecutor(12) as pool:
            assert set(pool.map(miss, [f"gone/{i}" for i in range(12)])) == {503}
        wait_until(lambda: endpoint_of(admin_status(server), bucket)["state"] == "partitioned", 10,
                   "the merged view shows the partition")
        assert metric(metrics_text(server), "atoll_cold_endpoint_state",
                      endpoint=view["endpoint"]) == 2
        cold.proxy.heal()

        # The non-primary worker killed: its file goes, its numbers leave the merge. No client reads now, so the
        # demand counters stand still (probes count in no class) once the last misses are published.
        [published] = [int(f.split(".")[0]) for f in os.listdir(health) if f.endswith(".json")]
        children = open(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children").read().split()
        assert str(published) in children, (published, children)

        def settled() -> tuple[int, int] | None:
            total = endpoint_of(admin_status(server), bucket)["traffic"]["demand"]["requests"]
            with open(os.path.join(health, f"{published}.json"), encoding="utf-8") as f:
                [peer] = json.load(f)["endpoints"]
            time.sleep(1.2)  # one publishing period: nothing changed meanwhile
            again = endpoint_of(admin_status(server), bucket)["traffic"]["demand"]["requests"]
            return (total, peer["traffic"]["demand"]["requests"]) if again == total else None

        total, peer_requests = wait_until(settled, 20, "the counters settled")
        assert 0 < peer_requests < total
        os.kill(published, signal.SIGKILL)
        after = wait_until(lambda: (lambda v: v if v["workers"] == 1 else None)(
            endpoint_of(admin_status(server), bucket)), 20, "the killed worker's view left the merge")
        assert after["traffic"]["demand"]["requests"] == total - peer_requests
        assert not os.path.exists(os.path.join(health, f"{published}.json"))
    finally:
        assert server.stop() == 0, server.log_text()[-3000:]
    assert "Traceback" not in server.log_text(), server.log_text()[-5000:]
