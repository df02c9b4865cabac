"""Contract of the Blob front end's metadata: identities with an Azure account, bucket properties (public access,
metadata, stored access policies), and the upgrade of an identities table made before accounts existed."""

from __future__ import annotations

import sqlite3
import time

import pytest

from atoll import errors
from atoll.core.models import Bucket, BucketProperties, Identity
from atoll.stores.meta.sqlite import SqliteMetaStore


def _identity(key: str, account: str = "", account_key: str = "") -> Identity:
    return Identity(key, "secret-" + key, "owner-" + key, key.lower(), time.time(), False, account, account_key)


async def test_identity_accounts(meta_store):
    plain = _identity("AK1")
    azure = _identity("AK2", "acct2", "a2V5")
    await meta_store.put_identity(plain)
    await meta_store.put_identity(azure)
    assert await meta_store.get_identity("AK2") == azure
    assert await meta_store.get_identity_by_account("acct2") == azure
    assert await meta_store.get_identity_by_account("") is None  # identities without an account are not found
    assert await meta_store.get_identity_by_account("nobody") is None
    assert {i.access_key: i.account_name for i in await meta_store.list_identities()} == {"AK1": "", "AK2": "acct2"}
    with pytest.raises(errors.InvalidArgument):  # account names are unique
        await meta_store.put_identity(_identity("AK3", "acct2", "b3RoZXI="))
    rotated = _identity("AK2", "acct2", "bmV3")  # the same identity may be replaced with a new key
    await meta_store.put_identity(rotated)
    assert (await meta_store.get_identity_by_account("acct2")).account_key == "bmV3"
    assert await meta_store.delete_identity("AK2") is True
    assert await meta_store.get_identity_by_account("acct2") is None


async def test_bucket_properties(meta_store):
    assert await meta_store.get_bucket_properties("b1") is None
    with pytest.raises(errors.NoSuchBucket):
        await meta_store.put_bucket_properties(BucketProperties("b1", "blob"))
    await meta_store.create_bucket(Bucket("b1", "owner", time.time()))
    props = BucketProperties("b1", "container", {"team": "ml"},
                             [{"Id": "readers", "Permission": "rl", "Expiry": "2030-01-01T00:00:00Z"}], 12.5)
    await meta_store.put_bucket_properties(props)
    assert await meta_store.get_bucket_properties("b1") == props
    props.public_access = ""
    await meta_store.put_bucket_properties(props)
    assert (await meta_store.get_bucket_properties("b1")).public_access == ""
    # A deleted bucket's properties go with it: a new bucket of the same name starts private.
    await meta_store.delete_bucket("b1")
    await meta_store.create_bucket(Bucket("b1", "other", time.time()))
    assert await meta_store.get_bucket_properties("b1") is None


@pytest.mark.sqlite_only
def test_identities_table_without_accounts_is_upgraded(tmp_path):
    path = str(tmp_path / "meta.sqlite3")
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE schema_version (version INTEGER NOT NULL);
        INSERT INTO schema_version VALUES (2);
        CREATE TABLE identities (
            access_key TEXT PRIMARY KEY, secret_key TEXT NOT NULL, owner_id TEXT NOT NULL,
            display_name TEXT NOT NULL, created REAL NOT NULL, is_root INTEGER NOT NULL
        ) WITHOUT ROWID;
        INSERT INTO identities VALUES ('AKOLD', 'secret', 'owner', 'old', 1.0, 1);
    """)
    conn.close()
    store = SqliteMetaStore(path)
    store.open_sync()
    try:
        import asyncio

        old = asyncio.run(store.get_identity("AKOLD"))
        assert old == Identity("AKOLD", "secret", "owner", "old", 1.0, True, "", "")
    finally:
        store.close_sync()
