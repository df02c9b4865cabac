"""The cluster runtime's node view (#9): nodes on one data directory and one PostgreSQL database register, see
each other, and a node killed with SIGKILL turns dead after ``cluster.node_timeout``; its lock is its own
(another node name starts beside it, the same name is refused)."""

from __future__ import annotations

import os
import subprocess
import time

from harness import ATOLL, AtollProcess, metric, metrics_text, wait_until
from runtime_util import alive_nodes, nodes_view, start_nodes, stop_all


def test_two_nodes_status_and_kill(workdir, postgres_url):
    data_dir = os.path.join(workdir, f"nodes-{time.time_ns()}")
    nodes = start_nodes(data_dir, 2, metadata=postgres_url, node_timeout=3.0)
    try:
        one, two = nodes
        view = nodes_view(one)
        assert set(view) == {"node1", "node2"}
        for name, node in (("node1", one), ("node2", two)):
            assert view[name]["state"] == "alive"
            assert view[name]["address"] == f"127.0.0.1:{node.port}"
            assert view[name]["heartbeat_age_seconds"] < 3.0
            assert view[name]["version"]
            assert view[name]["info"]["admin"] == f"127.0.0.1:{node.admin_port}"
        # The same document from either node: it comes from the shared metadata.
        assert set(nodes_view(two)) == {"node1", "node2"}
        assert metric(metrics_text(one), "atoll_cluster_nodes", state="alive") == 2

        # A second process with node2's name is refused by node2's lock; its data directory is shared all the same.
        clash = AtollProcess(data_dir=data_dir, extra_args=["--node", "node2"], extra_env=two.extra_env,
                             log_path=os.path.join(data_dir + "-logs", "clash.log"))
        proc = subprocess.run([ATOLL, "serve", "--data-dir", data_dir, "--s3-address", f"127.0.0.1:{clash.port}",
                               "--node", "node2"], env={**clash.env(), "ATOLL_ADMIN_ADDRESS": "off",
                                                        "ATOLL_BLOB_LISTEN": "off"},
                              capture_output=True, text=True, timeout=60)
        said = " ".join(proc.stderr.split())  # the CLI wraps its message at the terminal width
        assert proc.returncode != 0 and "in use by another Atoll process of node node2" in said, proc.stderr

        two.kill()
        killed = time.monotonic()
        wait_until(lambda: nodes_view(one)["node2"]["state"] == "dead", 10.0, "node2 to turn dead")
        assert time.monotonic() - killed >= 1.5, "dead only once its heartbeat is older than the timeout"
        assert alive_nodes(one) == {"node1"}
        assert metric(metrics_text(one), "atoll_cluster_nodes", state="dead") == 1

        # `atoll status` (the CLI, through node1's admin API) lists both.
        out = one.cli("status").stdout
        assert "Nodes" in out and "node1" in out and "node2" in out and "dead" in out, out
    finally:
        stop_all(nodes)
    # A clean stop says so: the node is "stopped", not dead.
    node1 = AtollProcess(data_dir=data_dir, extra_env=nodes[0].extra_env, extra_args=["--node", "node3"],
                         log_path=os.path.join(data_dir + "-logs", "node3.log")).start()
    try:
        view = nodes_view(node1)
        assert view["node1"]["state"] == "stopped" and view["node2"]["state"] == "dead", view
    finally:
        node1.stop()
