"""N ``atoll serve`` nodes on one data directory and one metadata store, for the cluster-runtime tests
(tests/cluster/test_runtime_*.py): no load balancer, each test talks to the node it means.

The nodes share root credentials, admin token and Blob account (the first node writes them into the shared
metadata, the others find them there), and each has its own ports, node name (``--node``) and log file. The
metadata store is the data directory's SQLite file (nodes on one host may share it) unless ``metadata`` names
another, e.g. the ``postgres_url`` fixture's database.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from harness import AtollProcess, admin_status, wait_until


def start_nodes(data_dir: str, count: int, *, metadata: str = "", node_timeout: float = 3.0,
                heartbeat_interval: float = 0.5, extra_env: dict[str, str] | None = None) -> list[AtollProcess]:
    """Start ``count`` nodes named node1..nodeN (the first alone, then the others together); returns them once
    every node sees all of them alive."""
    env = {"ATOLL_NODE_TIMEOUT": str(node_timeout), "ATOLL_HEARTBEAT_INTERVAL": str(heartbeat_interval),
           **({"ATOLL_METADATA": metadata} if metadata else {}), **(extra_env or {})}
    first = AtollProcess(data_dir=data_dir, extra_env=env, extra_args=["--node", "node1"],
                         log_path=os.path.join(data_dir + "-logs", "node1.log"))
    nodes = [first]
    for i in range(2, count + 1):
        nodes.append(replace(first, port=_port(), admin_port=_port(), blob_port=_port(),
                             extra_args=["--node", f"node{i}"], log_path=os.path.join(data_dir + "-logs", f"node{i}.log"),
                             proc=None))
    first.start()
    with ThreadPoolExecutor(len(nodes)) as pool:
        list(pool.map(lambda n: n.start(), nodes[1:]))
    wait_until(lambda: all(alive_nodes(n) == {f"node{i}" for i in range(1, count + 1)} for n in nodes), 15.0,
               "every node to see the others alive")
    return nodes


def metadata_for(request, engine: str) -> str:
    """The metadata setting for ``engine``: "" (the data directory's SQLite file, shared on this host) or a fresh
    PostgreSQL database (the ``postgres_url`` fixture)."""
    return request.getfixturevalue("postgres_url") if engine == "postgresql" else ""


def _port() -> int:
    from harness import free_port

    return free_port()


def nodes_view(node: AtollProcess) -> dict[str, dict]:
    """The ``nodes`` section of a node's status document, by node name."""
    return {view["node"]: view for view in admin_status(node)["nodes"]}


def alive_nodes(node: AtollProcess) -> set[str]:
    return {name for name, view in nodes_view(node).items() if view["state"] == "alive"}


def stop_all(nodes: list[AtollProcess]) -> None:
    with ThreadPoolExecutor(len(nodes)) as pool:
        list(pool.map(lambda n: n.stop() if n.proc is not None and n.proc.poll() is None else None, nodes))


def elapsed(since: float) -> float:
    return time.monotonic() - since
