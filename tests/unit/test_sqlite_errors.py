"""How the SQLite store reports a failed write: a full database (SQLITE_FULL, here from a real SQLite limited by
``max_page_count``, as a full disk would) is InsufficientStorage (503 SlowDown); any other error Unavailable."""

from __future__ import annotations

import sqlite3

import pytest

from atoll import errors
from atoll.stores.meta.sqlite import _store_error


def test_a_full_database_is_insufficient_storage_and_other_errors_are_unavailable():
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (x BLOB)")
    conn.execute("PRAGMA max_page_count = 8")
    with pytest.raises(sqlite3.Error) as full:
        conn.execute("INSERT INTO t VALUES (zeroblob(1000000))")
    assert full.value.sqlite_errorcode == sqlite3.SQLITE_FULL
    mapped = _store_error(full.value)
    assert isinstance(mapped, errors.InsufficientStorage) and mapped.retry_after == 5
    assert "OperationalError" not in mapped.message

    with pytest.raises(sqlite3.Error) as other:
        conn.execute("SELECT * FROM missing")
    mapped = _store_error(other.value)
    assert type(mapped) is errors.Unavailable
    conn.execute("INSERT INTO t VALUES (x'00')")  # the connection is still usable
