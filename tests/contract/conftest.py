"""Fixtures for the store contract suites: each store implementation is one parameter, and ``async def`` tests run
on a fresh event loop per test (the stores are asyncio APIs; no plugin needed)."""

from __future__ import annotations

import asyncio
import inspect

import pytest

from atoll.stores.data.files import FileDataStore
from atoll.stores.meta.sqlite import SqliteMetaStore


def _sqlite_meta(directory) -> SqliteMetaStore:
    return SqliteMetaStore(str(directory / "meta.sqlite3"))


# name -> factory(tmp_path); PostgreSQL joins here when it exists, and every contract test runs on it unchanged.
META_STORES = {"sqlite": _sqlite_meta}
DATA_STORES = {"files": lambda directory: FileDataStore(str(directory / "data"))}


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    loop = pyfuncitem.funcargs["loop"]  # every coroutine test uses a store fixture, which needs the loop
    args = {name: pyfuncitem.funcargs[name] for name in inspect.signature(pyfuncitem.obj).parameters}
    loop.run_until_complete(asyncio.wait_for(pyfuncitem.obj(**args), timeout=60))
    return True


@pytest.fixture(params=sorted(META_STORES))
def meta_store(request, tmp_path, loop):
    store = META_STORES[request.param](tmp_path)
    loop.run_until_complete(store.open())
    yield store
    loop.run_until_complete(store.close())


@pytest.fixture(scope="module", params=sorted(DATA_STORES))
def data_store(request, tmp_path_factory):
    # One store per module: preparing a file store makes its 4096 fan-out directories (~0.5 s). The tests
    # therefore never assume an empty store, only the blobs they wrote themselves.
    return DATA_STORES[request.param](tmp_path_factory.mktemp(f"data-{request.param}"))
