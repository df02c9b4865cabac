"""What only the PostgreSQL engine has (#9): selection by URL, its pool size, lost connections, and messages that
never show the URL's password. The engine-neutral contract runs on it through ``meta_store`` like on SQLite."""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest

from atoll import errors
from atoll.stores.meta import open_metastore
from atoll.stores.meta.postgres import PostgresMetaStore, split_pool_size
from atoll.stores.meta.sqlite import SqliteMetaStore
from tests.contract.test_metastore import new_bucket, version

PASSWORD = "pw-never-shown-4711"


def _with_password(url: str) -> str:
    # The test cluster trusts local connections: any password is accepted, so it can be checked for leaks.
    return url.replace("postgresql://atoll@", f"postgresql://atoll:{PASSWORD}@")


def test_engine_is_chosen_by_the_metadata_setting(tmp_path):
    assert isinstance(open_metastore("postgresql://u@h/db", "x"), PostgresMetaStore)
    assert isinstance(open_metastore("postgres://u@h/db?pool_size=3", "x"), PostgresMetaStore)
    assert open_metastore("postgres://u@h/db?pool_size=3", "x").pool_size == 3
    sqlite = open_metastore("", str(tmp_path / "default.sqlite3"))
    assert isinstance(sqlite, SqliteMetaStore) and sqlite.path.endswith("default.sqlite3")
    assert open_metastore(f"sqlite://{tmp_path}/m.db", "x").path == f"{tmp_path}/m.db"
    assert split_pool_size("postgresql://u:p@h:5/db?sslmode=disable&pool_size=2") == (
        "postgresql://u:p@h:5/db?sslmode=disable", 2)
    with pytest.raises(ValueError, match="pool_size"):
        split_pool_size("postgresql://h/db?pool_size=lots")
    assert PASSWORD not in PostgresMetaStore(f"postgresql://u:{PASSWORD}@h/db").path


def test_an_unreachable_server_is_unavailable_without_the_password():
    store = PostgresMetaStore(f"postgresql://atoll:{PASSWORD}@127.0.0.1:1/nowhere")
    with pytest.raises(errors.Unavailable) as raised:
        store.open_sync()
    assert PASSWORD not in str(raised.value) and "127.0.0.1" not in str(raised.value)


def test_a_lost_connection_is_unavailable_once_then_replaced(postgres_url, loop, caplog):
    async def scenario():
        store = PostgresMetaStore(_with_password(postgres_url), pool_size=1)
        await store.open()
        try:
            bucket = await new_bucket(store)
            await store.put_object(version(bucket, "before"))
            with psycopg.connect(postgres_url, autocommit=True) as admin:
                killed = admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                       "WHERE datname = current_database() AND pid != pg_backend_pid()").fetchall()
            assert killed, "the store's connection was found and ended"
            # A read is repeated once on a new connection; a write is not (its outcome would be unknown).
            assert (await store.get_object(bucket, "before")).key == "before"
            with psycopg.connect(postgres_url, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE datname = current_database() AND pid != pg_backend_pid()")
            with pytest.raises(errors.Unavailable) as raised:
                await store.put_object(version(bucket, "during"))
            assert PASSWORD not in str(raised.value)
            await store.put_object(version(bucket, "after"))  # the next write reconnects
            assert [e.key for e in await store.list_objects(bucket, "", True, None, 10)] == ["after", "before"]
        finally:
            await store.close()

    loop.run_until_complete(asyncio.wait_for(scenario(), 60))
    assert PASSWORD not in caplog.text


def test_a_schema_behind_the_code_is_refused_naming_atoll_db_upgrade(postgres_url):
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("UPDATE schema_version SET version = version - 1")
    with pytest.raises(RuntimeError, match="atoll db upgrade"):
        PostgresMetaStore(postgres_url).open_sync()


def test_writes_conflicting_on_a_row_are_retried_not_failed(postgres_url, loop):
    """Many concurrent overwrites and deletes of one key from two stores: each one either happens or is refused by
    its condition; none fails for a lock conflict (a deadlock or a unique violation is retried)."""
    async def scenario():
        stores = [PostgresMetaStore(postgres_url, pool_size=6) for _ in range(2)]
        for store in stores:
            await store.open()
        try:
            bucket = await new_bucket(stores[0])
            writes = []
            for i in range(60):
                store = stores[i % 2]
                if i % 3 == 2:
                    writes.append(store.delete_objects(bucket, ["a", "b", "c"][::(1 if i % 2 else -1)]))
                else:
                    writes.append(store.put_object(version(bucket, "abc"[i % 3])))
            started = time.monotonic()
            results = await asyncio.gather(*writes, return_exceptions=True)
            assert not [r for r in results if isinstance(r, BaseException)], results
            assert time.monotonic() - started < 30
            assert await stores[1].count_usage() == []
        finally:
            for store in stores:
                await store.close()

    loop.run_until_complete(asyncio.wait_for(scenario(), 60))
