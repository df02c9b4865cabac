"""Fixtures of the cluster tests: three Atoll nodes on one PostgreSQL database and one data directory, HAProxy
in front (tests/cluster/clusterutil.py). Each test gets a cluster of its own (about 3 s to start): the tests
kill nodes, and a cluster another test has damaged proves nothing."""

from __future__ import annotations

import os
import secrets

import pytest

from clusterutil import Cluster, drop_metadata, fresh_metadata, remove, start_cluster


@pytest.fixture
def make_cluster(workdir):
    """A factory: ``make_cluster(size=3, **ATOLL_* env)`` -> a started Cluster; each one made is stopped at the
    end of the test (SIGTERM: a node that does not stop cleanly or logged a traceback fails the test) and its
    data and database removed."""
    made: list[Cluster] = []

    def make(size: int = 3, **env: str) -> Cluster:
        base = os.path.join(workdir, f"cluster-{secrets.token_hex(4)}")
        cluster = start_cluster(base, fresh_metadata(base), size, **env)
        made.append(cluster)
        return cluster

    yield make
    problems = []
    for cluster in made:
        problems += cluster.stop()
        remove(cluster)
        drop_metadata(cluster.metadata)
    assert not problems, "\n".join(problems)


@pytest.fixture
def cluster(make_cluster) -> Cluster:
    return make_cluster()
