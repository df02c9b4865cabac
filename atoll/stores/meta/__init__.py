"""Metadata: identities, buckets, objects, uploads, garbage. ``base`` states the contract; ``sql`` implements it
once for every engine; ``sqlite`` is the embedded default, ``postgres`` the engine for many nodes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from atoll.stores.meta.dsn import is_postgres

if TYPE_CHECKING:
    from atoll.stores.meta.sql import SqlMetaStore


def open_metastore(metadata: str, default_sqlite_path: str, **postgres_options) -> "SqlMetaStore":
    """The store ``metadata`` names (not opened yet): ``postgresql://...`` or ``postgres://...`` → PostgreSQL
    (``postgres_options``: ``pool_size``, ``auto_upgrade``), anything else a SQLite file (``sqlite://`` prefix
    optional; "" = ``default_sqlite_path``). Imported lazily: a SQLite process never loads psycopg."""
    if is_postgres(metadata):
        from atoll.stores.meta.postgres import PostgresMetaStore

        return PostgresMetaStore(metadata, **postgres_options)
    from atoll.stores.meta.sqlite import SqliteMetaStore

    return SqliteMetaStore(metadata.removeprefix("sqlite://") if metadata else default_sqlite_path)
