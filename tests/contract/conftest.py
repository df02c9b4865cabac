"""Fixtures for the store contract suites: each store implementation is one parameter, and ``async def`` tests run
on a fresh event loop per test (the stores are asyncio APIs; no plugin needed).

Every test taking ``meta_store`` runs on SQLite and on PostgreSQL (a fresh database per test, copied from a
template: tests/pgserver.py). ``meta_store_pair`` is two stores on one database, as two nodes have (two processes'
stores on one SQLite file). Tests of SQLite's own files (upgrades of old files, hand edits) make their own
``SqliteMetaStore`` and are marked ``sqlite_only``.
"""

from __future__ import annotations

import asyncio
import inspect

import psycopg
import pytest

import pgserver
from atoll.stores.data.files import FileDataStore
from atoll.stores.meta.postgres import PostgresMetaStore
from atoll.stores.meta.sqlite import SqliteMetaStore


class _SqliteDatabase:
    def __init__(self, directory) -> None:
        self.path = str(directory / "meta.sqlite3")

    def store(self) -> SqliteMetaStore:
        return SqliteMetaStore(self.path)

    def drop(self) -> None:
        pass


class _PostgresDatabase:
    """One database per pytest process, emptied back to its freshly made rows after each test: making a database
    from the template costs ~2 s with fsync on, emptying one a few milliseconds. Commits here skip the wait for
    the WAL flush (synchronous_commit off: atomic, not durable across a server crash, which no contract test
    makes); the cluster tests run with durable commits."""

    _url = ""
    _seed: dict[str, list[tuple]] = {}

    def __init__(self, directory) -> None:
        if not _PostgresDatabase._url:
            url = pgserver.cluster().fresh_database("contract")
            name = url.rsplit("/", 1)[1]
            pgserver.cluster().psql(f'ALTER DATABASE "{name}" SET synchronous_commit = off')
            with psycopg.connect(url, autocommit=True) as conn:
                tables = [r[0] for r in conn.execute(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename != 'schema_version'")]
                _PostgresDatabase._seed = {t: conn.execute(f'SELECT * FROM "{t}"').fetchall() for t in tables}
            _PostgresDatabase._url = url
        self.url = _PostgresDatabase._url

    def store(self) -> PostgresMetaStore:
        return PostgresMetaStore(self.url, pool_size=4)

    def drop(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn, conn.transaction():
            conn.execute("SET LOCAL session_replication_role = replica")  # no triggers: every row goes
            for table, rows in self._seed.items():
                conn.execute(f'DELETE FROM "{table}"')
                if rows:
                    marks = ", ".join(["%s"] * len(rows[0]))
                    conn.cursor().executemany(f'INSERT INTO "{table}" VALUES ({marks})', rows)


# name -> database(tmp_path), whose store() opens one more store on it; every contract test runs on each.
META_STORES = {"sqlite": _SqliteDatabase, "postgresql": _PostgresDatabase}
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


def pytest_configure(config):
    config.addinivalue_line("markers", "sqlite_only: a test of SQLite's own files; it makes its own SqliteMetaStore")


@pytest.fixture(params=sorted(META_STORES))
def meta_database(request, tmp_path):
    database = META_STORES[request.param](tmp_path)
    yield database
    database.drop()


@pytest.fixture
def meta_store(meta_database, loop):
    store = meta_database.store()
    loop.run_until_complete(store.open())
    yield store
    loop.run_until_complete(store.close())


@pytest.fixture
def meta_store_pair(meta_database, loop):
    """Two stores on one database: two nodes (or two processes) sharing the metadata."""
    stores = [meta_database.store(), meta_database.store()]
    for store in stores:
        loop.run_until_complete(store.open())
    yield stores
    for store in stores:
        loop.run_until_complete(store.close())


@pytest.fixture(scope="module", params=sorted(DATA_STORES))
def data_store(request, tmp_path_factory):
    # One store per module: preparing a file store makes its 4096 fan-out directories (~0.5 s). The tests
    # therefore never assume an empty store, only the blobs they wrote themselves.
    return DATA_STORES[request.param](tmp_path_factory.mktemp(f"data-{request.param}"))
