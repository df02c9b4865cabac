"""Shared fixtures: a real ``atoll serve`` process on a free port with a fresh data directory, and real clients.

``atoll`` (session scope) is one server for the whole run; tests isolate themselves with their own bucket names
(``bucket`` fixture). Tests that kill or reconfigure a server start their own with ``AtollProcess``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import tempfile

import pytest

import pgserver
from harness import ATOLL, REPO, AtollProcess, free_port, s3_client, wait_for_port  # noqa: F401 - re-exported

# Real cold stores (Azurite, a moto S3 server) and the counting fault proxy: tests/cold_fixtures.py.
pytest_plugins = ["cold_fixtures"]

sys.path.insert(0, os.path.join(REPO, "tests", "cluster"))  # clusterutil, for the cluster mode below
from clusterutil import cluster_size, session_front  # noqa: E402


@pytest.hookimpl(tryfirst=True)  # before -m selects
def pytest_collection_modifyitems(items):
    """A test that starts servers of its own (``new_server``) is about one process: ``single_node``."""
    for item in items:
        if "new_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.single_node)


@pytest.fixture(scope="session")
def workdir():
    base = tempfile.mkdtemp(prefix="atoll-tests-", dir=os.environ.get("ATOLL_TEST_TMP", "/var/tmp"))
    yield base
    if not os.environ.get("ATOLL_KEEP_TEST_DATA"):
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def atoll(workdir):
    if cluster_size():  # ATOLL_TEST_CLUSTER=N: N nodes behind HAProxy instead (tests/cluster/clusterutil.py)
        yield from session_front(workdir)
        return
    server = AtollProcess(data_dir=os.path.join(workdir, "shared-server"))
    server.start()
    yield server
    code = server.stop()
    assert code == 0, f"atoll did not shut down cleanly ({code}):\n{server.log_text()[-3000:]}"
    assert "Traceback" not in server.log_text(), server.log_text()[-5000:]


@pytest.fixture
def new_server(workdir):
    """A factory for private servers (crash tests, special settings); all are killed at the end of the test."""
    started: list[AtollProcess] = []

    def make(**kwargs) -> AtollProcess:
        server = AtollProcess(data_dir=os.path.join(workdir, f"srv-{secrets.token_hex(4)}"), **kwargs)
        started.append(server)
        return server.start()

    yield make
    for server in started:
        server.kill()


@pytest.fixture
def postgres_url():
    """A new PostgreSQL database holding the current Atoll schema and no rows, dropped after the test (one
    throwaway cluster per pytest process: tests/pgserver.py)."""
    cluster = pgserver.cluster()
    url = cluster.fresh_database()
    yield url
    cluster.drop(url)


@pytest.fixture
def s3(atoll):
    return atoll.client()


@pytest.fixture
def bucket(s3, request):
    name = f"t-{request.node.name[:30].lower().replace('_', '-').strip('-[]')}-{secrets.token_hex(3)}"
    name = "".join(c if c.isalnum() or c == "-" else "-" for c in name).strip("-")
    s3.create_bucket(Bucket=name)
    return name
