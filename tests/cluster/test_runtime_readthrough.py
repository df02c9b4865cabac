"""Read-through single flight across nodes (#9): three nodes missing the same object cause one cold transfer.

Three nodes on one data directory and one metadata store (PostgreSQL, and the SQLite file shared on this host), a
bucket linked to a moto S3
prefix behind a counting proxy, and three GETs of the same missing 8 MiB object at once, one through each node.
Each block is fetched by the node holding its fill lease; the others read it from the shared warm copy once the
block map records it. What the proxy counts is what crossed the WAN.
"""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import threading
import time

import pytest

from coldside import ColdSite, pattern
from harness import ATOLL
from runtime_util import metadata_for, start_nodes, stop_all

pytestmark = pytest.mark.timeout(120)

BLOCK = 1 << 20
SIZE = 8 << 20


def _link(node, cold) -> str:
    bucket = f"rt{time.time_ns()}"
    node.client().create_bucket(Bucket=bucket)
    subprocess.run([ATOLL, "bucket", "link", bucket, cold.url, "--mode", "cache", "--revalidate", "never",
                    *cold.link_options(), "--data-dir", node.data_dir], env=node.env(), check=True,
                   capture_output=True, timeout=60)
    return bucket


@pytest.mark.parametrize("engine", ["postgresql", "sqlite"])
def test_three_nodes_missing_one_object_fetch_it_once(workdir, moto_s3, request, engine):
    data_dir = os.path.join(workdir, f"readthrough-{time.time_ns()}")
    nodes = start_nodes(data_dir, 3, metadata=metadata_for(request, engine),
                        extra_env={"ATOLL_FILL_BLOCK_SIZE": str(BLOCK)})
    try:
        with ColdSite("s3", moto_s3, "cluster") as site:
            cold = site.cold()
            bucket = _link(nodes[0], cold)
            body = pattern(SIZE, "herd")
            cold.put("big.bin", body)
            cold.proxy.reset_counts()
            clients = [node.client() for node in nodes]
            start = threading.Barrier(len(nodes))

            def read(client) -> bytes:
                start.wait(30)
                return client.get_object(Bucket=bucket, Key="big.bin")["Body"].read()

            with concurrent.futures.ThreadPoolExecutor(len(nodes)) as pool:
                results = list(pool.map(read, clients))
            assert all(data == body for data in results), "every node answers the object bit-exact"
            assert cold.gets("big.bin") == SIZE // BLOCK, "each block crossed the WAN once, for all three nodes"
            assert cold.proxy.bytes_down < SIZE + (256 << 10), cold.proxy.bytes_down
            # Resident now: the next reads, through any node, touch nothing cold.
            cold.proxy.reset_counts()
            assert all(c.get_object(Bucket=bucket, Key="big.bin")["Body"].read() == body for c in clients)
            assert cold.requests("big.bin") == 0
    finally:
        stop_all(nodes)
    for node in nodes:
        assert node.proc.returncode == 0, node.log_text()[-3000:]
        assert "Traceback" not in node.log_text(), node.log_text()[-5000:]
