"""The test harness: a real ``atoll serve`` process and real clients, importable by any test module.

Fixtures live in conftest.py; classes and helpers live here, because ``from conftest import`` is ambiguous once
several test directories have a conftest.py of their own.
"""

from __future__ import annotations

import base64
import http.client
import itertools
import json
import os
import random
import re
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
ATOLL = str(VENV_BIN / "atoll")


# Under pytest-xdist, each worker draws ports from a slice of its own below the kernel's ephemeral range
# (32768-60999 on Linux): a port handed out here stays unbound until the server starts, and meanwhile neither
# another worker's ``free_port`` nor an outgoing connection's local port can land on it. Each run starts at a
# slice of its own too (from its run id), so that two runs on one machine seldom share slices.
_WORKER_PORTS_FIRST, _WORKER_PORTS_END, _WORKER_SLICES = 20000, 32768, 16
_worker_port_turn = itertools.count(random.randrange(1 << 16))


def free_port() -> int:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw0", "gw1"... set by pytest-xdist in its workers
    if not worker.startswith("gw"):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]
    size = (_WORKER_PORTS_END - _WORKER_PORTS_FIRST) // _WORKER_SLICES
    run = zlib.crc32(os.environ.get("PYTEST_XDIST_TESTRUNUID", "").encode())
    first = _WORKER_PORTS_FIRST + (run + int(worker[2:])) % _WORKER_SLICES * size
    for _ in range(size):
        port = first + next(_worker_port_turn) % size
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {first}-{first + size - 1} for pytest-xdist worker {worker}")


def wait_for_port(port: int, timeout: float = 20.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"atoll exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {port} after {timeout}s")


@dataclass
class AtollProcess:
    """A live Atoll server: ``start``, ``kill`` (SIGKILL), ``stop`` (SIGTERM), ``restart``."""

    data_dir: str
    port: int = field(default_factory=free_port)
    access_key: str = field(default_factory=lambda: "AKTEST" + secrets.token_hex(6).upper())
    secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(30)[:40])
    workers: int = 1
    extra_args: list[str] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    log_path: str = ""
    # Every server gets its own admin port (the default 9001 would make concurrent servers collide).
    admin_port: int = field(default_factory=free_port)
    admin_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    # The Azure Blob endpoint's port (the default 10000 would collide too) and the root's Blob account.
    blob_port: int = field(default_factory=free_port)
    account_name: str = field(default_factory=lambda: "acct" + secrets.token_hex(4))
    account_key: str = field(default_factory=lambda: base64.b64encode(secrets.token_bytes(64)).decode())
    # Rewrites the server's command line, e.g. to start it in a mount namespace of its own (see test_disk_full).
    wrap: Callable[[list[str]], list[str]] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def blob_endpoint(self) -> str:
        """The root account's Blob endpoint, path style."""
        return f"http://127.0.0.1:{self.blob_port}/{self.account_name}"

    @property
    def blob_connection_string(self) -> str:
        return (f"DefaultEndpointsProtocol=http;AccountName={self.account_name};AccountKey={self.account_key};"
                f"BlobEndpoint={self.blob_endpoint};")

    def env(self) -> dict[str, str]:
        env = {**os.environ, "ATOLL_ROOT_ACCESS_KEY": self.access_key, "ATOLL_ROOT_SECRET_KEY": self.secret_key,
               "ATOLL_ADMIN_ADDRESS": f"127.0.0.1:{self.admin_port}", "ATOLL_ADMIN_TOKEN": self.admin_token,
               "ATOLL_BLOB_LISTEN": f"127.0.0.1:{self.blob_port}", "ATOLL_ROOT_ACCOUNT_NAME": self.account_name,
               "ATOLL_ROOT_ACCOUNT_KEY": self.account_key, **self.extra_env}
        for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_CONFIG_FILE"):
            env.pop(var, None)
        return env

    def start(self, timeout: float = 30.0) -> "AtollProcess":
        # Nodes of one cluster share a data directory: each is given a log path of its own before it starts.
        self.log_path = self.log_path or os.path.join(self.data_dir + "-logs", "server.log")
        os.makedirs(os.path.dirname(self.log_path), exist_ok=True)
        log = open(self.log_path, "ab")
        argv = [ATOLL, "serve", "--data-dir", self.data_dir, "--s3-address", f"127.0.0.1:{self.port}",
                "--workers", str(self.workers), *self.extra_args]
        self.proc = subprocess.Popen(
            self.wrap(argv) if self.wrap else argv,
            env=self.env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        wait_for_port(self.port, timeout, self.proc)
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        return self.proc.returncode

    def restart(self) -> "AtollProcess":
        self.kill()
        return self.start()

    def log_text(self) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")
        except OSError:
            return ""

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([ATOLL, *args, "--data-dir", self.data_dir], env=self.env(), capture_output=True,
                              text=True, check=check, timeout=60)

    def create_user(self, name: str) -> dict:
        out = self.cli("key", "create", "--name", name, "--json")
        return json.loads(out.stdout)

    def client(self, access_key: str | None = None, secret_key: str | None = None, **config_kwargs):
        return s3_client(self.endpoint, access_key or self.access_key, secret_key or self.secret_key,
                         **config_kwargs)


def s3_client(endpoint: str, access_key: str, secret_key: str, **config_kwargs):
    import boto3
    from botocore.config import Config

    config = Config(retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=10, read_timeout=120,
                    **config_kwargs)
    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=access_key,
                        aws_secret_access_key=secret_key, region_name="us-east-1", config=config)


def first_answer_client(server: AtollProcess, **config):
    """A boto3 client of ``server`` that shows its first answer (boto3 would retry a 503 itself); any botocore
    Config setting overrides (``retries``, ``read_timeout``, ``signature_version``...)."""
    import boto3
    from botocore.config import Config

    settings = {"retries": {"total_max_attempts": 1}, "connect_timeout": 5, "read_timeout": 60, **config}
    return boto3.client("s3", endpoint_url=server.endpoint, aws_access_key_id=server.access_key,
                        aws_secret_access_key=server.secret_key, region_name="us-east-1",
                        config=Config(**settings))


def stop_cleanly(server: AtollProcess) -> None:
    """Stop with SIGTERM; a shutdown that fails or a traceback anywhere in the log fails the test."""
    code = server.stop()
    log = server.log_text()
    assert code == 0, f"atoll did not shut down cleanly ({code}):\n{log[-3000:]}"
    assert "Traceback" not in log, log[-5000:]


def meta_query(server: AtollProcess, sql: str, params: tuple = ()) -> list[tuple]:
    """A read-only look at the metadata of a server, running or not (a cluster's front has the cluster's store in
    ``metadata``: tests/cluster/clusterutil.py)."""
    return metadata_query(getattr(server, "metadata", "") or os.path.join(server.data_dir, "meta.sqlite3"), sql,
                          params)


def metadata_query(metadata: str, sql: str, params: tuple = ()) -> list[tuple]:
    """``sql`` (with ``?`` placeholders) on a SQLite file, read-only, or on a ``postgresql://`` database."""
    if metadata.startswith(("postgresql://", "postgres://")):
        import psycopg

        with psycopg.connect(metadata, autocommit=True) as pg:
            return [tuple(row) for row in pg.execute(sql.replace("?", "%s"), params).fetchall()]
    conn = sqlite3.connect(f"file:{metadata}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def wait_until(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.05):
    """``predicate()``'s first true value, polled every ``interval`` seconds for ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# --- the admin port ---------------------------------------------------------------------------------------------

@dataclass
class AdminAnswer:
    status: int
    headers: dict[str, str]  # by lower-case name
    body: bytes

    @property
    def json(self):
        assert self.headers.get("content-type") == "application/json", (self.status, self.headers, self.body)
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode()


def admin_request(server: AtollProcess, method: str, path: str, body=None, *, token: str | None = "",
                  raw: bytes | None = None, headers: dict[str, str] | None = None) -> AdminAnswer:
    """One request to the admin port (``path`` from the root: /api/v1/..., /metrics) on a fresh connection, with
    ``body`` as JSON or ``raw`` bytes; ``token=""`` sends the server's own token, ``None`` none."""
    conn = http.client.HTTPConnection("127.0.0.1", server.admin_port, timeout=30)
    try:
        sent = dict(headers or {})
        if token == "":
            token = server.admin_token
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        payload = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        if payload is not None:
            sent.setdefault("Content-Type", "application/json")
        conn.request(method, path, body=payload, headers=sent)
        response = conn.getresponse()
        return AdminAnswer(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        conn.close()


def admin_call(server: AtollProcess, method: str, path: str, body=None):
    """An admin request that must succeed; its JSON answer."""
    answer = admin_request(server, method, path, body)
    assert 200 <= answer.status < 300, (method, path, answer.status, answer.body[:1000])
    return answer.json


def admin_status(server: AtollProcess) -> dict:
    return admin_call(server, "GET", "/api/v1/status")


def metrics_text(server: AtollProcess) -> str:
    """The server's /metrics: the Prometheus text exposition."""
    answer = admin_request(server, "GET", "/metrics")
    assert answer.status == 200, answer.body
    assert answer.headers["content-type"].startswith("text/plain"), answer.headers
    return answer.text


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample of the Prometheus text exposition (labels in any order), None if absent."""
    for line in text.splitlines():
        match = re.fullmatch(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)", line)  # comment lines never match
        if match and match.group(1) == name and \
                dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or "")) == labels:
            return float(match.group(3))
    return None
