"""Pure logic behind status and /metrics for cold endpoints: one process's view of an Endpoint, the merge of
several workers' views, the health files of other workers, and the per-bucket read counts."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

from prometheus_client import CollectorRegistry, Counter

from atoll.admin.bucketcounts import bucket_counts, hit_ratio
from atoll.admin.endpoints import endpoint_view, merge_views, public_key
from atoll.admin.peerhealth import FORGOTTEN, STALE, HealthPublisher, read_peer_views
from atoll.stores.cold.endpoint import BreakerSettings, Endpoint
from atoll.stores.cold.traffic import Traffic


def test_public_key_drops_credentials_of_an_endpoint_url_only():
    assert public_key("az://acct@http://user:pw@10.0.0.1:10000/acct") == "az://acct@http://10.0.0.1:10000/acct"
    assert public_key("s3://https://k:s@minio.local") == "s3://https://minio.local"
    assert public_key("az://acct@http://127.0.0.1:10000/acct") == "az://acct@http://127.0.0.1:10000/acct"
    assert public_key("gs://") == "gs://"


def _endpoint(successes: int = 0, failures: int = 0, **traffic_bytes: int) -> Endpoint:
    endpoint = Endpoint("az://acct@http://127.0.0.1:1/acct", breaker=BreakerSettings(failures=3))
    for _ in range(successes):
        endpoint.health.succeeded(Traffic.DEMAND, 0.02)
    for _ in range(failures):
        endpoint.health.failed(Traffic.DRAIN, "timed out")
    for name, size in traffic_bytes.items():
        kind, direction = name.rsplit("_", 1)
        endpoint.health.moved(Traffic(kind), **{f"bytes_{direction}": size})
    return endpoint


def test_endpoint_view_of_a_healthy_and_of_a_partitioned_endpoint():
    healthy = endpoint_view(_endpoint(successes=4, demand_in=4000))
    assert healthy["state"] == "healthy" and healthy["contacted"] and healthy["workers"] == 1
    assert healthy["breaker"] == {"state": "closed", "opened_at": None, "retry_after": 0.0, "opens": 0}
    assert healthy["traffic"]["demand"]["requests"] == 4 and healthy["traffic"]["demand"]["bytes_in"] == 4000
    assert healthy["traffic"]["demand"]["bytes_in_per_second"] > 0
    assert healthy["last_minute"]["requests"] == 4 and healthy["last_minute"]["error_rate"] == 0.0
    assert set(healthy["traffic"]) == {"demand", "stage", "drain"}
    json.dumps(healthy)  # published as JSON by the other workers

    down = endpoint_view(_endpoint(successes=1, failures=3))
    assert down["state"] == "partitioned" and down["consecutive_failures"] == 3
    assert down["breaker"]["state"] == "open" and down["breaker"]["opened_at"] > time.time() - 5
    assert 0 < down["breaker"]["retry_after"] <= 2.0 * 1.2 and down["breaker"]["opens"] == 1
    assert down["last_error"] == "timed out" and down["last_minute"]["error_rate"] == 0.75

    fresh = endpoint_view(Endpoint("gs://"))
    assert fresh["contacted"] is False and fresh["last_success"] is None and fresh["state"] == "healthy"


def test_merge_worst_state_wins_counters_sum_times_are_latest():
    a = endpoint_view(_endpoint(successes=3, demand_in=300, drain_out=50))
    b = endpoint_view(_endpoint(successes=1, failures=3, demand_in=100))
    b["latency_ewma"] = 0.5
    merged = merge_views([a, b])
    assert merged["endpoint"] == a["endpoint"] and merged["workers"] == 2
    assert merged["state"] == "partitioned" and merged["breaker"]["state"] == "open"
    assert merged["breaker"]["opened_at"] == b["breaker"]["opened_at"] and merged["breaker"]["opens"] == 1
    assert merged["consecutive_failures"] == 3 and merged["last_error"] == "timed out"
    assert merged["last_success"] == max(a["last_success"], b["last_success"])
    assert merged["last_failure"] == b["last_failure"] and merged["latency_ewma"] == 0.5
    assert merged["traffic"]["demand"]["requests"] == 4 and merged["traffic"]["drain"]["failures"] == 3
    assert merged["traffic"]["demand"]["bytes_in"] == 400 and merged["traffic"]["drain"]["bytes_out"] == 50
    minute = merged["last_minute"]
    assert (minute["requests"], minute["failures"], minute["error_rate"]) == (7, 3, round(3 / 7, 4))
    assert minute["mean_latency"] == 0.02  # weighted by answered calls
    assert merged["traffic"]["demand"]["bytes_in_per_second"] == \
        round(a["traffic"]["demand"]["bytes_in_per_second"] + b["traffic"]["demand"]["bytes_in_per_second"], 3)

    # A worker that never used the endpoint neither hides a partition nor lowers the latency.
    idle = endpoint_view(Endpoint("x"))
    assert merge_views([idle, b])["state"] == "partitioned"
    assert merge_views([idle, b])["latency_ewma"] == 0.5
    assert merge_views([idle, a])["state"] == "healthy"
    assert merge_views([a]) is a


def _write(directory, pid: int, written: float, views: list[dict]) -> str:
    path = os.path.join(directory, f"{pid}.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"pid": pid, "written": written, "endpoints": views}, f)
    return path


def test_peer_views_skip_own_stale_and_dead_workers_and_remove_the_dead_ones(tmp_path):
    view = endpoint_view(_endpoint(successes=1))
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        _write(tmp_path, live.pid, time.time(), [view])
        _write(tmp_path, os.getpid(), time.time(), [view])  # the reader's own: it has its live view
        dead_file = _write(tmp_path, dead.pid, time.time(), [view])
        (tmp_path / "garbage.json").write_text("{")
        (tmp_path / f"{live.pid}.json.tmp").write_text("half")
        assert read_peer_views(str(tmp_path), os.getpid()) == [[view]]
        assert not os.path.exists(dead_file)
        stuck = _write(tmp_path, live.pid, time.time() - STALE - 1, [view])  # says nothing about now
        assert read_peer_views(str(tmp_path), os.getpid()) == [] and os.path.exists(stuck)
        _write(tmp_path, live.pid, time.time() - FORGOTTEN - 1, [view])  # an earlier run's, its pid reused
        assert read_peer_views(str(tmp_path), os.getpid()) == [] and not os.path.exists(stuck)
        _write(tmp_path, live.pid, "yesterday", [view])
        assert read_peer_views(str(tmp_path), os.getpid()) == []
        (tmp_path / f"{live.pid}.json").write_text("not json")
        assert read_peer_views(str(tmp_path), os.getpid()) == []
        assert read_peer_views(str(tmp_path / "missing"), os.getpid()) == []
    finally:
        live.kill()
        live.wait()


def test_bucket_counts_and_hit_ratio_from_counter_families():
    registry = CollectorRegistry()
    hits = Counter("atoll_tier_hits", "h", ["bucket"], registry=registry)
    misses = Counter("atoll_tier_misses", "m", ["bucket"], registry=registry)
    degraded = Counter("atoll_writethrough_degraded_writes", "d", ["bucket"], registry=registry)
    Counter("atoll_other", "o", ["bucket"], registry=registry).labels("a").inc(7)
    hits.labels("a").inc(3)
    misses.labels("a").inc()
    misses.labels("b").inc(2)
    degraded.labels("c").inc()
    counts = bucket_counts(list(registry.collect()))
    assert counts == {"a": {"hits": 3, "misses": 1, "writethrough_degraded": 0},
                      "b": {"hits": 0, "misses": 2, "writethrough_degraded": 0},
                      "c": {"hits": 0, "misses": 0, "writethrough_degraded": 1}}
    assert (hit_ratio(counts["a"]), hit_ratio(counts["b"]), hit_ratio(counts["c"]), hit_ratio(None)) == \
        (0.75, 0.0, None, None)


def test_publisher_writes_when_the_view_changes_and_removes_its_file_on_stop(tmp_path):
    class Tier:  # what the publisher reads of a Tiering: its endpoints
        endpoints = {"k": _endpoint(successes=1)}

    async def run() -> None:
        publisher = HealthPublisher(Tier(), str(tmp_path / "health"))
        await publisher.publish()
        with open(publisher.path, encoding="utf-8") as f:
            first = json.load(f)
        assert first["pid"] == os.getpid() and first["endpoints"] == [endpoint_view(Tier.endpoints["k"])]
        await publisher.publish()  # nothing changed: not rewritten
        with open(publisher.path, encoding="utf-8") as f:
            assert json.load(f)["written"] == first["written"]
        Tier.endpoints["k"].health.failed(Traffic.DEMAND, "timed out")
        await publisher.publish()
        with open(publisher.path, encoding="utf-8") as f:
            assert json.load(f)["endpoints"][0]["consecutive_failures"] == 1
        assert read_peer_views(str(tmp_path / "health")) == [[endpoint_view(Tier.endpoints["k"])]]
        publisher.start()
        await publisher.stop()
        assert os.listdir(tmp_path / "health") == []

    asyncio.run(run())
