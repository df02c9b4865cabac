"""A cluster of Atoll nodes for the tests: N ``atoll serve`` processes (tests/harness.py AtollProcess) on one
metadata store (a PostgreSQL database, or a SQLite file shared on this host) and one data directory, with
HAProxy (Debian's /usr/sbin/haproxy) in front for both endpoints, S3 and Azure Blob.

Every node gets the same root credentials (S3 key pair, Blob account and key, admin token) through the
ATOLL_ROOT_* / ATOLL_ADMIN_TOKEN environment, so a client of the load balancer is the same identity whichever
node answers. The first node starts alone (it writes the root identity into the shared metadata); the others
then start together.

HAProxy balances round robin and health-checks each node's S3 and Blob ports with an unauthenticated request
(answered 400/403 at once, with no metadata work). Retries (``HAPROXY_RETRIES`` below, documented in the
README): a request whose connection to a node failed is sent to another node (``retry-on conn-failure``,
``option redispatch``); a request that got no answer at all from a node that died while serving it
(``empty-response``) is sent again to another node too, but only if it is not a POST (CompleteMultipartUpload,
DeleteObjects, ... are left to the client) and its body fitted in HAProxy's buffer (16 KiB); anything larger is
the client's to retry, as with any load balancer.
"""

from __future__ import annotations

import atexit
import base64
import csv
import io
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from harness import ATOLL, AtollProcess, free_port, metadata_query, wait_for_port, wait_until

HAPROXY = "/usr/sbin/haproxy"
HEALTH_INTERVAL_MS = 500  # a node that stops answering is out of rotation after FALL * this
HEALTH_FALL = 2

HAPROXY_RETRIES = """\
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response
    # a replayed POST (CompleteMultipartUpload, DeleteObjects) could answer for a request already carried out
    http-request disable-l7-retry if METH_POST"""


def haproxy_config(s3_ports: list[int], blob_ports: list[int], s3_port: int, blob_port: int,
                   stats_socket: str) -> str:
    """The HAProxy configuration the tests use (the README shows the same, with real addresses)."""

    def backend(name: str, ports: list[int], check: str) -> str:
        servers = "\n".join(f"    server node{i + 1} 127.0.0.1:{port} check inter {HEALTH_INTERVAL_MS} "
                            f"fall {HEALTH_FALL} rise 1" for i, port in enumerate(ports))
        return (f"backend {name}\n    balance roundrobin\n{HAPROXY_RETRIES}\n"
                f"    option httpchk\n    http-check send meth GET uri {check}\n"
                f"    http-check expect status 200-499\n{servers}\n")

    return f"""\
global
    maxconn 2000
    stats socket {stats_socket} mode 600 level admin
    tune.bufsize 16384

defaults
    mode http
    option http-keep-alive
    # HAProxy answers "Expect: 100-continue" itself and takes the body (the first tune.bufsize of it before the
    # request goes on): a client told "412" early by a node may otherwise skip the body it declared, and HAProxy
    # would read its next request as that body. Needed for the empty-response retries too.
    option http-buffer-request
    timeout connect 2s
    timeout client 300s
    timeout server 300s
    timeout http-request 30s
    timeout queue 30s

frontend s3
    bind 127.0.0.1:{s3_port}
    default_backend atoll_s3

frontend blob
    bind 127.0.0.1:{blob_port}
    default_backend atoll_blob

{backend("atoll_s3", s3_ports, "/")}
{backend("atoll_blob", blob_ports, "/")}"""


@dataclass
class HAProxy:
    """HAProxy in front of the nodes: ``start``, ``stop``, ``server_states()`` (by backend and server name)."""

    workdir: str
    s3_ports: list[int]
    blob_ports: list[int]
    s3_port: int = field(default_factory=free_port)
    blob_port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def config_path(self) -> str:
        return os.path.join(self.workdir, "haproxy.cfg")

    # A unix socket path must fit in 108 bytes: not under a test's deep tmp_path.
    stats_socket: str = field(default_factory=lambda: f"/tmp/atoll-haproxy-{secrets.token_hex(6)}.sock")

    def start(self) -> "HAProxy":
        if not os.path.exists(HAPROXY):
            raise RuntimeError(f"{HAPROXY} is missing: run `make test-deps` (Debian package haproxy)")
        os.makedirs(self.workdir, exist_ok=True)
        with open(self.config_path, "w") as f:
            f.write(haproxy_config(self.s3_ports, self.blob_ports, self.s3_port, self.blob_port, self.stats_socket))
        log = open(os.path.join(self.workdir, "haproxy.log"), "ab")
        # -db: stay in the foreground (our child, killed with its session); -W none; the config is checked first.
        self.proc = subprocess.Popen([HAPROXY, "-db", "-f", self.config_path], stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        try:
            wait_for_port(self.s3_port, 10, self.proc)
            wait_for_port(self.blob_port, 10, self.proc)
        except (RuntimeError, TimeoutError) as exc:
            with open(os.path.join(self.workdir, "haproxy.log"), errors="replace") as f:
                raise RuntimeError(f"haproxy: {exc}:\n{f.read()[-2000:]}") from None
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        try:
            os.unlink(self.stats_socket)
        except OSError:
            pass

    def command(self, line: str) -> str:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(self.stats_socket)
            s.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def server_states(self) -> dict[tuple[str, str], str]:
        """{(backend, server): "UP" / "DOWN" / ...} from HAProxy's own statistics."""
        text = self.command("show stat").lstrip("# ")
        return {(row["pxname"], row["svname"]): row["status"].split()[0]
                for row in csv.DictReader(io.StringIO(text)) if row.get("svname") not in ("FRONTEND", "BACKEND", None)}

    def wait_states(self, node: int, state: str, timeout: float = 10.0) -> None:
        """Wait until node ``node`` (0-based) is ``state`` ("UP"/"DOWN") in both backends."""
        name = f"node{node + 1}"
        wait_until(lambda: all(self.server_states().get((b, name)) == state for b in ("atoll_s3", "atoll_blob")),
                   timeout, f"{name} {state} in haproxy", interval=0.1)


def is_postgres(metadata: str) -> bool:
    return metadata.startswith(("postgresql://", "postgres://"))


@dataclass
class Cluster:
    """N nodes on ``metadata`` (a PostgreSQL URL or a SQLite file path) and ``data_dir``, HAProxy in front.

    ``front`` is an AtollProcess-like view of the whole cluster (the load balancer's ports, the shared
    credentials and data directory), so helpers written for one server work on it; ``nodes[i]`` are the real
    processes (``kill(i)``, ``restart(i)``)."""

    workdir: str
    metadata: str
    size: int = 3
    extra_env: dict[str, str] = field(default_factory=dict)
    nodes: list[AtollProcess] = field(default_factory=list)
    proxy: HAProxy | None = None
    front: "ClusterFront | None" = None
    started_in: float = 0.0

    def __post_init__(self) -> None:
        self.data_dir = os.path.join(self.workdir, "data")
        credentials = dict(access_key="AKTEST" + secrets.token_hex(6).upper(),
                           secret_key=secrets.token_urlsafe(30)[:40], admin_token=secrets.token_urlsafe(24),
                           account_name="acct" + secrets.token_hex(4),
                           account_key=base64.b64encode(secrets.token_bytes(64)).decode())
        for i in range(self.size):
            node = AtollProcess(data_dir=self.data_dir, extra_env={**self.node_env(i), **self.extra_env},
                                **credentials)
            node.log_path = os.path.join(self.data_dir + "-logs", f"node{i + 1}.log")  # the harness's log directory
            self.nodes.append(node)
        self.proxy = HAProxy(os.path.join(self.workdir, "haproxy"), [n.port for n in self.nodes],
                             [n.blob_port for n in self.nodes])
        self.front = ClusterFront(self)

    def node_env(self, i: int) -> dict[str, str]:
        return {"ATOLL_METADATA": self.metadata, "ATOLL_NODE": f"node{i + 1}"}

    def start(self) -> "Cluster":
        began = time.monotonic()
        os.makedirs(self.data_dir, exist_ok=True)
        # As an operator does before starting the nodes (a no-op on a database made from the schema template).
        upgrade = subprocess.run([ATOLL, "db", "upgrade", "--metadata", self.metadata, "--data-dir", self.data_dir],
                                 env=self.nodes[0].env(), capture_output=True, text=True, timeout=60)
        assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr
        _start_node(self.nodes[0])  # alone: it writes the shared root identity the others then find
        with ThreadPoolExecutor(self.size) as pool:
            list(pool.map(_start_node, self.nodes[1:]))
        self.proxy.start()
        self.started_in = time.monotonic() - began
        return self

    def kill(self, i: int) -> None:
        """SIGKILL node ``i`` (0-based) and every process of it."""
        self.nodes[i].kill()

    def restart(self, i: int) -> None:
        self.nodes[i].kill()
        _start_node(self.nodes[i])
        self.proxy.wait_states(i, "UP")

    def stop(self) -> list[str]:
        """Stop every node with SIGTERM, then HAProxy; the problems seen (an unclean exit, a traceback)."""
        problems = []
        with ThreadPoolExecutor(self.size) as pool:
            codes = list(pool.map(lambda node: node.stop() if node.proc is not None else 0, self.nodes))
        for i, (node, code) in enumerate(zip(self.nodes, codes)):
            if code not in (0, -signal.SIGKILL):  # a node the test killed (and did not restart) stays killed
                problems.append(f"node{i + 1} exited with {code}:\n{node.log_text()[-3000:]}")
            if "Traceback" in node.log_text():
                problems.append(f"node{i + 1} logged a traceback:\n{node.log_text()[-5000:]}")
        self.proxy.stop()
        return problems

    def kill_all(self) -> None:
        for node in self.nodes:
            node.kill()
        self.proxy.stop()

    def logs(self) -> str:
        return "\n".join(f"--- node{i + 1}\n{node.log_text()}" for i, node in enumerate(self.nodes))

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.nodes[0].cli(*args, check=check)

    def meta_query(self, sql: str, params: tuple = ()) -> list[tuple]:
        return metadata_query(self.metadata, sql, params)


def _start_node(node: AtollProcess) -> None:
    try:
        node.start()
    except (RuntimeError, TimeoutError) as exc:
        raise RuntimeError(f"{exc}; {node.log_path}:\n{node.log_text()[-3000:]}") from None


class ClusterFront(AtollProcess):
    """The cluster as one server: the load balancer's S3 and Blob ports, the nodes' shared credentials, data
    directory and metadata, node 1's admin port. ``kill``/``stop``/``start``/``restart`` act on every node (for
    single-server tests that stop and start "the server"); ``log_text`` is every node's log."""

    def __init__(self, cluster: Cluster) -> None:
        first = cluster.nodes[0]
        super().__init__(data_dir=cluster.data_dir, port=cluster.proxy.s3_port, access_key=first.access_key,
                         secret_key=first.secret_key, extra_env=dict(first.extra_env), admin_port=first.admin_port,
                         admin_token=first.admin_token, blob_port=cluster.proxy.blob_port,
                         account_name=first.account_name, account_key=first.account_key)
        self.cluster = cluster
        self.metadata = cluster.metadata

    def start(self, timeout: float = 30.0) -> "ClusterFront":
        with ThreadPoolExecutor(len(self.cluster.nodes)) as pool:
            list(pool.map(_start_node, self.cluster.nodes))
        if self.cluster.proxy.proc is None or self.cluster.proxy.proc.poll() is not None:
            self.cluster.proxy.start()
        for i in range(len(self.cluster.nodes)):
            self.cluster.proxy.wait_states(i, "UP")
        return self

    def kill(self) -> None:
        for node in self.cluster.nodes:
            node.kill()

    def stop(self, timeout: float = 30.0) -> int:
        with ThreadPoolExecutor(len(self.cluster.nodes)) as pool:
            codes = list(pool.map(lambda node: node.stop(timeout), self.cluster.nodes))
        return next((code for code in codes if code != 0), 0)

    def restart(self) -> "ClusterFront":
        self.kill()
        return self.start()

    def log_text(self) -> str:
        return self.cluster.logs()


def start_cluster(workdir: str, metadata: str, size: int = 3, **env: str) -> Cluster:
    cluster = Cluster(workdir, metadata, size, extra_env=dict(env))
    try:
        return cluster.start()
    except BaseException:
        cluster.kill_all()
        raise


def remove(cluster: Cluster) -> None:
    cluster.kill_all()
    if not os.environ.get("ATOLL_KEEP_TEST_DATA"):
        shutil.rmtree(cluster.workdir, ignore_errors=True)


# --- the metadata store of a test cluster -------------------------------------------------------------------------

def fresh_metadata(workdir: str, hint: str = "cluster") -> str:
    """An empty metadata store with the current schema for a new cluster: a database of this pytest process's
    PostgreSQL (tests/pgserver.py), or, with ATOLL_TEST_CLUSTER_METADATA=sqlite, a SQLite file in ``workdir``
    (nodes on one host may share one: the cluster runtime without PostgreSQL)."""
    if os.environ.get("ATOLL_TEST_CLUSTER_METADATA") == "sqlite":
        os.makedirs(workdir, exist_ok=True)
        return os.path.join(workdir, "meta.sqlite3")
    import pgserver

    return pgserver.cluster().fresh_database(hint)


def drop_metadata(metadata: str) -> None:
    if is_postgres(metadata):
        import pgserver

        pgserver.cluster().drop(metadata)


def blob_service_for(server: AtollProcess, **kwargs):
    """A sync azure-storage-blob client of ``server`` (a node or the cluster's front), root account, path style."""
    from azure.storage.blob import BlobServiceClient

    return BlobServiceClient.from_connection_string(server.blob_connection_string, **kwargs)


# --- the client suites against a cluster (ATOLL_TEST_CLUSTER=N; scripts/run-tests.sh, phase 3) ----------------------

def cluster_size() -> int:
    """N of ATOLL_TEST_CLUSTER=N: the shared fixtures hand out N nodes behind HAProxy instead of one server."""
    return int(os.environ.get("ATOLL_TEST_CLUSTER", "0") or 0)


_started: list[Cluster] = []


def _remove_started() -> None:
    """At exit: the clusters that single-server helpers started and never stopped (their nodes and HAProxy)."""
    for cluster in _started:
        cluster.kill_all()


atexit.register(_remove_started)


def start_front(workdir: str, **env: str) -> ClusterFront:
    """A cluster of ``cluster_size()`` nodes started in place of one server: its front (an AtollProcess that
    stops, kills and starts all the nodes at once). HAProxy and the nodes are killed at exit at the latest."""
    cluster = start_cluster(workdir, fresh_metadata(workdir), cluster_size(), **env)
    _started.append(cluster)
    return cluster.front


def session_front(workdir: str):
    """The session's shared server (tests/conftest.py ``atoll``) as a cluster, for the fixture to ``yield from``:
    stopped at the end, every node cleanly and without a traceback."""
    front = start_front(os.path.join(workdir, "shared-cluster"))
    yield front
    problems = front.cluster.stop()
    assert not problems, "\n".join(problems)
