"""Pytest plugin: fixtures for real cold stores (Azurite, moto) and fault proxies in front of them.

Loaded by ``pytest_plugins = ["cold_fixtures"]`` in tests/conftest.py (tests/ is on sys.path there), or with
``-p cold_fixtures`` when tests/ is already on sys.path: pytest imports ``-p`` plugins before any conftest, so use
``PYTHONPATH=tests`` or ``-o pythonpath=tests`` for that. The emulators are session-scoped, one of each for the whole run; tests isolate themselves
with a fresh container or bucket each (``azure_container``, ``s3_cold_bucket``).
"""

from __future__ import annotations

import pytest

from coldstores import AzuriteServer, FaultProxy, MotoS3Server, fresh_name


@pytest.fixture(scope="session")
def azurite(tmp_path_factory):
    """One Azurite blob service for the session; fails (not skips) when azurite-blob is missing."""
    server = AzuriteServer(location=str(tmp_path_factory.mktemp("azurite")))
    try:
        server.start()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def moto_s3(tmp_path_factory):
    """One moto S3 server for the session."""
    server = MotoS3Server(log_dir=str(tmp_path_factory.mktemp("moto")))
    try:
        server.start()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield server
    server.stop()


@pytest.fixture
def azure_container(azurite, request):
    """A fresh, empty container on the session's Azurite; its name. Deleted after the test."""
    name = azurite.create_container(fresh_name(request.node.name))
    yield name
    azurite.delete_container(name)


@pytest.fixture
def s3_cold_bucket(moto_s3, request):
    """A fresh, empty bucket on the session's moto server; its name. Emptied and deleted after the test, so
    large test objects do not pile up in moto's memory."""
    name = moto_s3.create_bucket(fresh_name(request.node.name))
    yield name
    client = moto_s3.client()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
        for obj in page.get("Contents", []):
            client.delete_object(Bucket=name, Key=obj["Key"])
    client.delete_bucket(Bucket=name)


@pytest.fixture
def cold_proxy():
    """A factory: ``cold_proxy(target) -> FaultProxy`` where ``target`` is a server with a ``.port``
    (``azurite``, ``moto_s3``, an ``AtollProcess``), a port number or a ``(host, port)`` pair.
    Every proxy made is closed at the end of the test."""
    made: list[FaultProxy] = []

    def make(target) -> FaultProxy:
        if isinstance(target, int):
            target = ("127.0.0.1", target)
        elif not isinstance(target, tuple):
            target = ("127.0.0.1", target.port)
        proxy = FaultProxy(target)
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        proxy.close()
