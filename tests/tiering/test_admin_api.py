"""The admin HTTP API and /metrics of a real ``atoll serve``, over real HTTP, with moto S3 as the cold store.

Asserted: every route needs the bearer token; a link made through the API serves reads through S3 and shows up
in status and metrics (hit and miss counters, cold-store gauges); the backlog gauge grows while the drain is
paused through the API and returns to 0 after resume; jobs are created, listed, read and cancelled; client
mistakes are 4xx JSON, never a 5xx; a secret link option appears in no answer, no CLI output and no log;
``--workers 2`` sums the counters of every worker (and of a worker that was killed); a busy admin port is a clean
start-up error; ``atoll status --json`` works with and without a running server.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import stat
import subprocess
import time
import urllib.request

import pytest

from coldstores import MotoS3Server, fresh_name
from harness import ATOLL, AdminAnswer, AtollProcess, metric, metrics_text, wait_until
from harness import admin_request as api  # this module's name for it

pytestmark = pytest.mark.timeout(120)

PREFIX = "admin/data"
SERVER_ENV = {"ATOLL_FILL_BLOCK_SIZE": str(64 << 10)}


# --- helpers --------------------------------------------------------------------------------------------------

def ok(answer: AdminAnswer, status: int = 200):
    assert answer.status == status, (answer.status, answer.body)
    return answer.json


def wide_cli(server: AtollProcess, *args: str) -> subprocess.CompletedProcess:
    """The CLI with a terminal wide enough for its tables not to fold names."""
    return subprocess.run([ATOLL, *args, "--data-dir", server.data_dir], env={**server.env(), "COLUMNS": "200"},
                          capture_output=True, text=True, timeout=60)


def link_options(moto: MotoS3Server, secret: str, endpoint: str | None = None) -> dict[str, str]:
    # moto accepts any secret, so the secret can be a value unique to the test and searched for everywhere.
    return {"endpoint": endpoint or moto.endpoint, "access_key_id": moto.access_key, "secret_access_key": secret,
            "region": moto.region}


def new_cold_bucket(moto: MotoS3Server) -> str:
    return moto.create_bucket(fresh_name("admin-cold"))


def link_through_api(server: AtollProcess, moto: MotoS3Server, mode: str, secret: str,
                     endpoint: str | None = None) -> tuple[str, str]:
    """A new Atoll bucket linked through the admin API to a new moto bucket: (bucket, cold bucket)."""
    cold_bucket = new_cold_bucket(moto)
    bucket = fresh_name("admin-warm")
    server.client().create_bucket(Bucket=bucket)
    answer = api(server, "PUT", f"/api/v1/buckets/{bucket}/link",
                 {"url": f"s3://{cold_bucket}/{PREFIX}", "mode": mode,
                  "options": link_options(moto, secret, endpoint)})
    view = ok(answer)
    assert secret not in answer.text
    assert view["link"]["url"] == f"s3://{cold_bucket}/{PREFIX}" and view["link"]["mode"] == mode
    assert view["link"]["secret_options"] == ["secret_access_key"]
    assert "secret_access_key" not in view["link"]["options"]
    return bucket, cold_bucket


# --- fixtures -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc = AtollProcess(data_dir=str(tmp_path_factory.mktemp("admin") / "data"), extra_env=SERVER_ENV).start()
    yield proc
    code = proc.stop()
    assert code == 0, proc.log_text()[-3000:]
    assert "Traceback" not in proc.log_text(), proc.log_text()[-5000:]


# --- tests ----------------------------------------------------------------------------------------------------

def test_every_route_needs_the_token(server):
    for method, path in [("GET", "/metrics"), ("GET", "/api/v1/status"), ("GET", "/api/v1/no-such-route"),
                         ("POST", "/api/v1/drain/pause"), ("GET", "/api/v1/jobs")]:
        for token, extra in [(None, {}), ("not-the-token-" + secrets.token_hex(8), {}),
                             (None, {"Authorization": f"Basic {server.admin_token}"}),
                             (server.admin_token[:-1], {})]:
            answer = api(server, method, path, token=token, headers=extra)
            assert answer.status == 401, (method, path, answer.status, answer.body)
            assert answer.json["error"]["code"] == "Unauthorized"
            assert answer.headers["www-authenticate"].startswith("Bearer")
            assert server.admin_token not in answer.text
    # The refused pause changed nothing.
    assert ok(api(server, "GET", "/api/v1/status"))["drain"]["paused"] is False


def test_link_through_the_api_then_reads_through_s3_show_in_status_and_metrics(server, moto_s3):
    secret = "sk-" + secrets.token_hex(16)
    bucket, cold_bucket = link_through_api(server, moto_s3, "cache", secret)
    body = os.urandom(150_000)  # three fill blocks
    moto_s3.client().put_object(Bucket=cold_bucket, Key=f"{PREFIX}/dataset/shard-0", Body=body)
    s3 = server.client()
    for _ in range(3):  # one miss (read through), then two hits
        assert s3.get_object(Bucket=bucket, Key="dataset/shard-0")["Body"].read() == body

    text = metrics_text(server)
    assert metric(text, "atoll_tier_misses_total", bucket=bucket) == 1
    assert metric(text, "atoll_tier_hits_total", bucket=bucket) == 2
    assert metric(text, "atoll_cold_read_bytes_total", traffic="demand") >= len(body)
    assert metric(text, "atoll_fill_block_seconds_count") >= 3
    assert metric(text, "atoll_cold_requests_total", traffic="demand", outcome="ok") >= 2
    store = {"bucket": bucket, "store": f"s3://{cold_bucket}/{PREFIX}"}
    assert metric(text, "atoll_cold_store_state", **store) == 0
    assert metric(text, "atoll_cold_store_consecutive_failures", **store) == 0
    assert metric(text, "atoll_cold_store_requests_total", traffic="demand", **store) >= 2
    assert metric(text, "atoll_cold_store_transferred_bytes_total", traffic="demand", direction="read",
                  **store) == len(body)
    assert metric(text, "atoll_cold_store_last_success_timestamp_seconds", **store) > time.time() - 60
    assert metric(text, "atoll_warm_resident_bytes") >= len(body)
    assert metric(text, "atoll_warm_capacity_bytes") > 0
    assert metric(text, "atoll_drain_backlog_objects", bucket=bucket) == 0

    status = ok(api(server, "GET", "/api/v1/status"))
    assert status["version"] and status["uptime_seconds"] > 0 and status["workers"] == 1
    assert status["warm"]["capacity"] > 0 and status["warm"]["resident_bytes"] >= len(body)
    assert status["warm"]["pinned_bytes"] == 0
    assert status["drain"] == {"paused": False, "backlog": {"objects": 0, "bytes": 0, "oldest_age_seconds": 0.0}}
    [cold] = [c for c in status["cold_stores"] if c["bucket"] == bucket]
    assert cold["name"] == f"s3://{cold_bucket}/{PREFIX}" and cold["state"] == "healthy"
    assert cold["consecutive_failures"] == 0 and cold["last_error"] is None
    assert cold["last_success"] > time.time() - 60 and cold["latency_ewma"] > 0
    assert set(cold["traffic"]) == {"demand", "stage", "drain"}
    assert cold["traffic"]["demand"]["bytes_in"] == len(body) and cold["traffic"]["demand"]["failures"] == 0
    [linked] = [b for b in status["buckets"] if b["bucket"] == bucket]
    assert linked["link"]["mode"] == "cache" and linked["objects"] == 1 and linked["pinned_bytes"] == 0

    detail = ok(api(server, "GET", f"/api/v1/buckets/{bucket}"))
    assert detail["link"]["options"] == {"endpoint": moto_s3.endpoint, "access_key_id": moto_s3.access_key,
                                         "region": moto_s3.region}
    group = ok(api(server, "POST", f"/api/v1/buckets/{bucket}/groups", {"prefix": "ckpt/"}))
    assert group["markers"] == [".metadata", "_SUCCESS", "_COMMITTED"]
    assert ok(api(server, "GET", f"/api/v1/buckets/{bucket}"))["groups"] == [
        {"prefix": "ckpt/", "markers": [".metadata", "_SUCCESS", "_COMMITTED"]}]

    # The CLI's views of the same bucket: the link without its secret, the server's cold-store health.
    shown = server.cli("bucket", "show", bucket).stdout
    assert f"s3://{cold_bucket}/{PREFIX} (cache, revalidate never)" in shown, shown
    assert "secret_access_key" in shown and "ckpt/" in shown and secret not in shown
    report = json.loads(server.cli("status", "--json", "--admin", server.admin_endpoint).stdout)
    assert report["server"]["reachable"] is True
    assert [c["state"] for c in report["cold_stores"] if c["bucket"] == bucket] == ["healthy"]
    assert [b["link"]["mode"] for b in report["buckets"] if b["bucket"] == bucket] == ["cache"]
    human = wide_cli(server, "status", "--admin", server.admin_endpoint).stdout
    assert "Cold stores" in human and "healthy" in human and bucket in human

    # No answer, no output and no log line carries the secret.
    for answer in (api(server, "GET", "/api/v1/status"), api(server, "GET", f"/api/v1/buckets/{bucket}"),
                   api(server, "GET", "/metrics")):
        assert secret not in answer.text
    assert secret not in json.dumps(report)
    time.sleep(0.6)  # the access log is flushed every 0.5 s
    with open(os.path.join(server.data_dir, "logs", "access.log"), encoding="utf-8") as f:
        access = f.read()
    assert "admin.link" in access and secret not in access and server.admin_token not in access
    assert secret not in server.log_text() and server.admin_token not in server.log_text()

    unlinked = ok(api(server, "DELETE", f"/api/v1/buckets/{bucket}/link"))
    assert unlinked == {"bucket": bucket, "linked": False}
    assert ok(api(server, "GET", f"/api/v1/buckets/{bucket}"))["link"] is None
    assert api(server, "DELETE", f"/api/v1/buckets/{bucket}/link").status == 404


def test_backlog_gauge_grows_while_paused_and_drains_after_resume(server, moto_s3):
    bucket, cold_bucket = link_through_api(server, moto_s3, "writeback", "sk-" + secrets.token_hex(8))
    s3 = server.client()
    cold = moto_s3.client()
    try:
        assert ok(api(server, "POST", "/api/v1/drain/pause"))["paused"] is True
        time.sleep(0.2)  # a drain round that read the flag just before has finished claiming by now
        assert ok(api(server, "GET", "/api/v1/status"))["drain"]["paused"] is True
        assert metric(metrics_text(server), "atoll_drain_paused") == 1
        sizes = [1000, 20_000, 300]
        for i, size in enumerate(sizes):
            s3.put_object(Bucket=bucket, Key=f"out/{i}", Body=os.urandom(size))
        time.sleep(1.5)  # long enough for a drain that was not paused to have uploaded them
        text = metrics_text(server)
        assert metric(text, "atoll_drain_backlog_objects", bucket=bucket) == 3
        assert metric(text, "atoll_drain_backlog_bytes", bucket=bucket) == sum(sizes)
        assert metric(text, "atoll_drain_backlog_oldest_age_seconds", bucket=bucket) >= 1.0
        assert cold.list_objects_v2(Bucket=cold_bucket).get("KeyCount") == 0
        backlog = ok(api(server, "GET", f"/api/v1/buckets/{bucket}"))["backlog"]
        assert backlog["objects"] == 3 and backlog["bytes"] == sum(sizes) and backlog["oldest_age_seconds"] >= 1.0
    finally:
        resumed = ok(api(server, "POST", "/api/v1/drain/resume"))
    assert resumed["paused"] is False
    wait_until(lambda: metric(metrics_text(server), "atoll_drain_backlog_objects", bucket=bucket) == 0, 30,
               "the backlog drained")
    text = metrics_text(server)
    assert metric(text, "atoll_drain_backlog_bytes", bucket=bucket) == 0
    assert metric(text, "atoll_drain_backlog_oldest_age_seconds", bucket=bucket) == 0
    assert metric(text, "atoll_drained_objects_total", op="put") >= 3
    assert metric(text, "atoll_drain_paused") == 0
    keys = sorted(o["Key"] for o in cold.list_objects_v2(Bucket=cold_bucket)["Contents"])
    assert keys == [f"{PREFIX}/out/{i}" for i in range(3)]

    # The CLI switch acts on the running server's drain as well.
    assert "drain paused" in server.cli("drain", "pause").stdout
    assert ok(api(server, "GET", "/api/v1/status"))["drain"]["paused"] is True
    assert "drain resumed" in server.cli("drain", "resume").stdout
    assert ok(api(server, "GET", "/api/v1/status"))["drain"]["paused"] is False


def test_jobs_create_list_get_cancel(server, moto_s3, cold_proxy):
    # The cold store sits behind a proxy that stalls once the link is made: whether a runner has claimed the
    # job (its listing hangs) or not (it stays queued), the job is still active when it is cancelled.
    proxy = cold_proxy(moto_s3)
    bucket, cold_bucket = link_through_api(server, moto_s3, "cache", "sk-" + secrets.token_hex(8),
                                           endpoint=proxy.endpoint())
    proxy.stall()
    try:
        created = api(server, "POST", "/api/v1/jobs", {"kind": "stage", "bucket": bucket, "prefix": "train/",
                                                        "keys": ["a", "b"], "pin_seconds": 3600,
                                                        "priority": "high"})
        job = ok(created, 201)
        assert created.headers["location"] == f"/api/v1/jobs/{job['id']}"
        assert job["kind"] == "stage" and job["bucket"] == bucket and job["priority"] == "high"
        assert job["spec"] == {"prefix": "train/", "key_count": 2, "pin": True, "pin_seconds": 3600.0}
        assert job["state"] in ("queued", "running") and isinstance(job["progress"], dict)

        listed = ok(api(server, "GET", "/api/v1/jobs"))["jobs"]
        assert job["id"] in [j["id"] for j in listed]
        assert job["id"] in [j["id"] for j in ok(api(server, "GET", "/api/v1/jobs?active=1&limit=50"))["jobs"]]
        fetched = ok(api(server, "GET", f"/api/v1/jobs/{job['id']}"))
        assert fetched["id"] == job["id"] and fetched["state"] in ("queued", "running")

        cancelled = ok(api(server, "DELETE", f"/api/v1/jobs/{job['id']}"))
        assert cancelled["state"] == "cancelled"
        assert ok(api(server, "GET", f"/api/v1/jobs/{job['id']}"))["state"] == "cancelled"
        assert job["id"] not in [j["id"] for j in ok(api(server, "GET", "/api/v1/jobs?active=1"))["jobs"]]
        assert ok(api(server, "DELETE", f"/api/v1/jobs/{job['id']}"))["state"] == "cancelled"  # idempotent
    finally:
        proxy.heal()

    sync = ok(api(server, "POST", "/api/v1/jobs", {"kind": "sync-index", "bucket": bucket}), 201)
    assert sync["kind"] == "sync-index" and sync["spec"] == {"prefix": ""}
    ok(api(server, "DELETE", f"/api/v1/jobs/{sync['id']}"))

    # A staging job that runs: its progress numbers come back through the API, its objects are warm and pinned.
    sizes = {"train/a": 70_000, "train/b": 1_000, "train/c": 20_000}
    for key, size in sizes.items():
        moto_s3.client().put_object(Bucket=cold_bucket, Key=f"{PREFIX}/{key}", Body=os.urandom(size))
    staged = ok(api(server, "POST", "/api/v1/jobs", {"kind": "stage", "bucket": bucket, "prefix": "train/",
                                                      "pin": True}), 201)
    assert staged["spec"] == {"prefix": "train/", "pin": True}
    final = wait_until(lambda: (lambda j: j if j["state"] in ("done", "failed", "cancelled") else None)(
        ok(api(server, "GET", f"/api/v1/jobs/{staged['id']}"))), 60, "the staging job finished")
    assert final["state"] == "done", final
    progress = final["progress"]
    assert progress["objects_total"] == progress["objects_done"] == progress["objects_staged"] == 3, progress
    assert progress["bytes_total"] == progress["bytes_done"] == sum(sizes.values()), progress
    detail = ok(api(server, "GET", f"/api/v1/buckets/{bucket}"))
    assert detail["pinned_bytes"] == sum(sizes.values())
    text = metrics_text(server)
    assert metric(text, "atoll_staged_objects_total") >= 3
    assert metric(text, "atoll_staged_bytes_total") >= sum(sizes.values())
    assert metric(text, "atoll_cold_store_transferred_bytes_total", bucket=bucket,
                  store=f"s3://{cold_bucket}/{PREFIX}", traffic="stage", direction="read") == sum(sizes.values())
    misses = metric(text, "atoll_tier_misses_total", bucket=bucket) or 0
    assert len(server.client().get_object(Bucket=bucket, Key="train/a")["Body"].read()) == sizes["train/a"]
    assert (metric(metrics_text(server), "atoll_tier_misses_total", bucket=bucket) or 0) == misses  # warm

    local = fresh_name("admin-local")
    server.client().create_bucket(Bucket=local)
    for body, status, code in [
        ({"kind": "bogus", "bucket": bucket}, 400, "InvalidArgument"),
        ({"kind": "stage"}, 400, "MissingField"),
        ({"kind": "stage", "bucket": "no-such-bucket-" + secrets.token_hex(3)}, 404, "NoSuchBucket"),
        ({"kind": "stage", "bucket": local}, 400, "InvalidRequest"),  # not linked
        ({"kind": "stage", "bucket": bucket, "keys": "a"}, 400, "InvalidArgument"),
        ({"kind": "stage", "bucket": bucket, "pin_seconds": -5}, 400, "InvalidArgument"),
        ({"kind": "stage", "bucket": bucket, "priority": "urgent"}, 400, "InvalidArgument"),
        ({"kind": "sync-index", "bucket": bucket, "pin": True}, 400, "InvalidArgument"),
        ({"kind": "stage", "bucket": bucket, "colour": "red"}, 400, "UnknownField"),
    ]:
        answer = api(server, "POST", "/api/v1/jobs", body)
        assert (answer.status, answer.json["error"]["code"]) == (status, code), (body, answer.body)
    assert api(server, "GET", "/api/v1/jobs/ffffffffffffffff").status == 404
    assert api(server, "DELETE", "/api/v1/jobs/ffffffffffffffff").status == 404
    assert api(server, "GET", "/api/v1/jobs?limit=abc").status == 400


def test_client_mistakes_are_4xx_json_never_5xx(server):
    bucket = fresh_name("admin-bad")
    server.client().create_bucket(Bucket=bucket)
    link = f"/api/v1/buckets/{bucket}/link"
    cases = [
        ("PUT", link, b"{not json", 400, "InvalidJSON"),
        ("PUT", link, b"\xff\xfe", 400, "InvalidJSON"),
        ("PUT", link, b"[1, 2]", 400, "InvalidJSON"),
        ("PUT", link, b"", 400, "MissingBody"),
        ("PUT", link, b'{"mode": "cache"}', 400, "MissingField"),
        ("PUT", link, b'{"url": 5, "mode": "cache"}', 400, "InvalidArgument"),
        ("PUT", link, b'{"url": "s3://x", "mode": "sometimes"}', 400, "InvalidArgument"),
        ("PUT", link, b'{"url": "ftp://x/y", "mode": "cache"}', 400, "InvalidArgument"),
        ("PUT", link, b'{"url": "https://example.invalid/x", "mode": "writeback"}', 400, "InvalidArgument"),
        ("PUT", link, b'{"url": "s3://x", "mode": "cache", "options": ["a=b"]}', 400, "InvalidArgument"),
        ("PUT", link, b'{"url": "s3://x", "mode": "cache", "revalidate": "ttl=-1"}', 400, "InvalidArgument"),
        ("PUT", link, b'{"url": "s3://x", "mode": "cache", "check": "yes"}', 400, "InvalidArgument"),
        ("PUT", link, b'{"url": "s3://x", "mode": "cache", "extra": 1}', 400, "UnknownField"),
        ("PUT", link, b"{" + b" " * (70 << 10) + b"}", 413, "BodyTooLarge"),
        ("PUT", "/api/v1/buckets/no-such-bucket-x1/link", b'{"url": "s3://x", "mode": "cache", "check": false}',
         404, "NoSuchBucket"),
        ("POST", f"/api/v1/buckets/{bucket}/groups", b'{"prefix": "a/", "markers": ["x/y"]}', 400,
         "InvalidArgument"),
        ("POST", f"/api/v1/buckets/{bucket}/groups", b'{"markers": []}', 400, "MissingField"),
        ("GET", "/api/v1/buckets/no-such-bucket-x1", None, 404, "NoSuchBucket"),
        ("DELETE", "/api/v1/buckets/no-such-bucket-x1/link", None, 404, "NoSuchBucket"),
        ("DELETE", link, None, 404, "NotLinked"),
        ("GET", "/api/v1/nothing-here", None, 404, "NoSuchRoute"),
        ("GET", "/api", None, 404, "NoSuchRoute"),  # "/" is the dashboard's (docs/dashboard.md)
        ("GET", "/api/v1/buckets/%ff%fe", None, 400, "InvalidURI"),
        ("POST", "/api/v1/status", None, 405, "MethodNotAllowed"),
        ("DELETE", "/metrics", None, 405, "MethodNotAllowed"),
        ("GET", "/api/v1/drain/pause", None, 405, "MethodNotAllowed"),
        ("PATCH", "/api/v1/jobs", None, 405, "MethodNotAllowed"),
    ]
    for method, path, raw, status, code in cases:
        answer = api(server, method, path, raw=raw)
        assert answer.status == status, (method, path, raw[:60] if raw else raw, answer.status, answer.body)
        error = answer.json["error"]
        assert error["code"] == code and error["message"], (method, path, answer.body)
        if status == 405:
            assert answer.headers["allow"], answer.headers
    assert ok(api(server, "GET", f"/api/v1/buckets/{bucket}"))["link"] is None
    assert "Traceback" not in server.log_text()


def test_busy_admin_port_is_a_clean_startup_error(tmp_path):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        server = AtollProcess(data_dir=str(tmp_path / "data"), admin_port=port)
        with open(tmp_path / "serve.log", "wb") as out:
            proc = subprocess.run([ATOLL, "serve", "--data-dir", server.data_dir, "--s3-address",
                                   f"127.0.0.1:{server.port}"], env=server.env(), stdout=out,
                                  stderr=subprocess.STDOUT, timeout=60)
    output = (tmp_path / "serve.log").read_text()
    assert proc.returncode not in (0, None), output
    assert f"admin_address 127.0.0.1:{port}" in output and "in use" in output.lower(), output
    assert "Traceback" not in output, output
    with socket.socket() as probe:  # the S3 port it had bound is free again
        probe.bind(("127.0.0.1", server.port))


def test_two_workers_sum_their_counters_and_a_generated_token(tmp_path, moto_s3):
    """Counters of the non-primary worker reach /metrics (prometheus_client's multiprocess mode), also after a
    worker was killed; the token is generated once into <data_dir>/admin-token (0600), which the CLI uses."""
    server = AtollProcess(data_dir=str(tmp_path / "data"), workers=2,
                          extra_env={**SERVER_ENV, "ATOLL_ADMIN_TOKEN": ""})
    server.admin_token = "-unused-"
    server.start()
    try:
        token_file = os.path.join(server.data_dir, "admin-token")
        wait_until(lambda: "Admin API and /metrics on" in server.log_text(), 10, "the start-up lines are out")
        with open(token_file, encoding="utf-8") as f:
            token = f.read().strip()
        assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600
        assert server.log_text().count(token) == 1  # printed once, at generation
        server.admin_token = token

        bucket, cold_bucket = link_through_api(server, moto_s3, "cache", "sk-" + secrets.token_hex(8))
        moto_s3.client().put_object(Bucket=cold_bucket, Key=f"{PREFIX}/obj", Body=b"x" * 5000)
        time.sleep(1.2)  # the other worker re-reads the bucket's link after about a second
        url = server.client().generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "obj"})
        gets = 40
        for _ in range(gets):  # a connection each: SO_REUSEPORT spreads them over both workers
            with urllib.request.urlopen(url, timeout=30) as response:
                assert response.read() == b"x" * 5000

        def reads() -> tuple[float, float]:
            text = metrics_text(server)
            return (metric(text, "atoll_tier_hits_total", bucket=bucket) or 0,
                    metric(text, "atoll_tier_misses_total", bucket=bucket) or 0)

        hits, misses = reads()
        # The primary alone serves about half of the connections: all 40 only if both workers' counts are summed.
        assert misses >= 1 and hits + misses >= gets, (hits, misses)

        workers = [int(pid) for pid in open(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children")
                   .read().split()]
        assert len(workers) == 2, workers
        os.kill(workers[-1], signal.SIGKILL)
        wait_until(lambda: len(open(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children").read().split())
                   == 2 and workers[-1] not in [int(p) for p in open(
                       f"/proc/{server.proc.pid}/task/{server.proc.pid}/children").read().split()],
                   20, "the supervisor replaced the killed worker")
        after = wait_until(lambda: _try(reads), 20, "the admin API answers after the restart")
        assert after[0] >= hits and after[1] >= misses, (after, hits, misses)  # a dead worker's counts stay

        report = json.loads(server.cli("status", "--json", "--admin", server.admin_endpoint).stdout)
        assert report["server"]["reachable"] is True and report["server"]["workers"] == 2
    finally:
        assert server.stop() == 0, server.log_text()[-3000:]
    assert "Traceback" not in server.log_text(), server.log_text()[-5000:]
    assert "prometheus_client was imported" not in server.log_text()  # the import order of atoll serve held

    # Without a server the CLI still reports what the metadata store knows, and says the server is away.
    done = subprocess.run([ATOLL, "status", "--json", "--data-dir", server.data_dir, "--admin",
                           server.admin_endpoint], capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in server.env().items() if k != "ATOLL_ADMIN_TOKEN"})
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["server"]["reachable"] is False and "not reachable" in report["server"]["error"]
    assert report["cold_stores"] == []
    assert [b["link"]["mode"] for b in report["buckets"] if b["bucket"] == bucket] == ["cache"]
    assert report["warm"]["resident_bytes"] >= 5000 and report["drain"]["paused"] is False
    human = wide_cli(server, "status", "--admin", server.admin_endpoint)
    assert human.returncode == 0 and "server not reachable" in human.stdout and bucket in human.stdout, human


def _try(fn):
    try:
        return fn()
    except (OSError, AssertionError):
        return None
