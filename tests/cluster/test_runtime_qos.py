"""QoS across nodes (#9): a tenant's request limit holds for the cluster, each node admitting its share
(limit / live nodes, atoll.core.cluster.share). Three nodes on one data directory and one PostgreSQL database,
the load spread evenly over them by the client (a round-robin load balancer would do the same); raw http.client
loops over presigned URLs, as in tests/governance/test_qos.py."""

from __future__ import annotations

import asyncio
import http.client
import os
import secrets
import threading
import time
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.config import Config

from runtime_util import start_nodes, stop_all

pytestmark = pytest.mark.timeout(120)

LIMIT = 30.0  # requests per second, for the tenant, cluster-wide
WARMUP = 1.5  # the bursts are spent and every node's share is read within this
WINDOW = 8.0


def _make_tenant(node, metadata: str, name: str):
    from atoll.config import load
    from atoll.core.models import Limits, Tenant
    from atoll.server.stores import build_namespace, open_stores

    config = load(None, {"data_dir": node.data_dir, "metadata": metadata})
    meta, data = open_stores(config)

    async def make(ns):
        await ns.meta.put_tenant(Tenant(name, time.time(), Limits(requests_per_second=LIMIT, request_burst=3)))
        return await ns.create_identity(name, tenant=name, account_name="q" + secrets.token_hex(6))
    try:
        return asyncio.run(make(build_namespace(config, meta, data)))
    finally:
        meta.close_sync()


def _client(node, identity):
    return boto3.client("s3", endpoint_url=node.endpoint, aws_access_key_id=identity.access_key,
                        aws_secret_access_key=identity.secret_key, region_name="us-east-1",
                        config=Config(retries={"total_max_attempts": 1}, signature_version="s3v4"))


@pytest.mark.serial  # a rate measured over seconds: no neighbour may take the CPU meanwhile
def test_request_limit_holds_for_the_cluster_within_ten_percent(workdir, postgres_url):
    data_dir = os.path.join(workdir, f"qos-{time.time_ns()}")
    nodes = start_nodes(data_dir, 3, metadata=postgres_url)
    try:
        name = f"team-{secrets.token_hex(3)}"
        identity = _make_tenant(nodes[0], postgres_url, name)
        clients = [_client(node, identity) for node in nodes]
        bucket = f"{name}-data"
        clients[0].create_bucket(Bucket=bucket)
        time.sleep(0.5)  # a node's burst is a third of the tenant's: one request
        clients[0].put_object(Bucket=bucket, Key="small", Body=b"x" * 1024)
        time.sleep(1.1)  # the bursts refill
        urls = [urlsplit(c.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "small"},
                                                  ExpiresIn=600)) for c in clients]
        answers: list[tuple[float, int, int]] = []  # (finished, status, node index)
        end = time.monotonic() + WARMUP + WINDOW
        started = time.monotonic()

        def loop(index: int) -> None:
            url = urls[index]
            conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
            mine = []
            while time.monotonic() < end:
                conn.request("GET", f"{url.path}?{url.query}")
                response = conn.getresponse()
                response.read()
                mine.append((time.monotonic(), response.status, index))
            conn.close()
            answers.extend(mine)

        threads = [threading.Thread(target=loop, args=(i % len(nodes),)) for i in range(2 * len(nodes))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        in_window = [a for a in answers if started + WARMUP <= a[0] < started + WARMUP + WINDOW]
        served = [a for a in in_window if a[1] == 200]
        print(f"cluster-wide limit {LIMIT:g}/s over 3 nodes: {len(served)} served in {WINDOW} s, by node "
              f"{[sum(a[2] == i for a in served) for i in range(3)]}")
        assert {a[1] for a in answers} == {200, 503}, "the client asked for more than the limit"
        assert 0.9 * LIMIT * WINDOW <= len(served) <= 1.1 * LIMIT * WINDOW, \
            f"{len(served)} requests served in {WINDOW} s at a cluster-wide limit of {LIMIT:g}/s"
        assert all(sum(a[2] == i for a in served) > 0 for i in range(3)), "every node served the tenant"
    finally:
        stop_all(nodes)
    for node in nodes:
        assert node.proc.returncode == 0 and "Traceback" not in node.log_text(), node.log_text()[-3000:]
