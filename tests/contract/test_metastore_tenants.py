"""Contract of tenants (#7): tenant rows, the tenant, role and scopes of identities, the tenant and limits of
buckets, and the adoption of identities and buckets made before tenants existed."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import pytest

from atoll import errors
from atoll.core.models import ROOT_TENANT, Bucket, Identity, Limits, Tenant, tenant_name_for_key
from atoll.stores.meta.sqlite import SqliteMetaStore


async def test_root_tenant_always_exists(meta_store):
    assert [t.name for t in await meta_store.list_tenants()] == [ROOT_TENANT]
    with pytest.raises(errors.InvalidRequest):
        await meta_store.delete_tenant(ROOT_TENANT)


async def test_tenant_settings_round_trip_and_replace(meta_store):
    team = Tenant("vision", 10.0, Limits(max_bytes=1 << 30, max_objects=1000, requests_per_second=50.0,
                                         request_burst=100.0, bytes_per_second=1e6, bytes_burst=2e6),
                  warm_reserved=5 << 20, warm_cap=50 << 20, wan_weight=3.0)
    await meta_store.put_tenant(team)
    assert await meta_store.get_tenant("vision") == team
    changed = Tenant("vision", 99.0, Limits(max_objects=5), wan_weight=0.5)
    await meta_store.put_tenant(changed)  # replaces the settings, keeps the creation time
    assert await meta_store.get_tenant("vision") == Tenant("vision", 10.0, Limits(max_objects=5), wan_weight=0.5)
    await meta_store.put_tenant(Tenant("audio", 11.0))
    assert [t.name for t in await meta_store.list_tenants()] == ["audio", ROOT_TENANT, "vision"]
    assert await meta_store.get_tenant("nobody") is None


async def test_identities_and_buckets_need_their_tenant(meta_store):
    with pytest.raises(errors.NoSuchTenant):
        await meta_store.put_identity(Identity("AK1", "s", "o1", "alice", 1.0, tenant="vision"))
    with pytest.raises(errors.NoSuchTenant):
        await meta_store.create_bucket(Bucket("b1", "o1", 1.0, tenant="vision"))
    await meta_store.put_tenant(Tenant("vision", 1.0))
    reader = Identity("AK1", "s", "o1", "alice", 1.0, tenant="vision", role="read", scopes=("b1", "b2/logs/"))
    await meta_store.put_identity(reader)
    assert await meta_store.get_identity("AK1") == reader
    bucket = Bucket("b1", "o1", 1.0, tenant="vision", limits=Limits(max_bytes=100))
    await meta_store.create_bucket(bucket)
    assert await meta_store.get_bucket("b1") == bucket
    await meta_store.set_bucket_limits("b1", Limits(max_objects=7, bytes_per_second=5.0))
    assert (await meta_store.get_bucket("b1")).limits == Limits(max_objects=7, bytes_per_second=5.0)
    with pytest.raises(errors.NoSuchBucket):
        await meta_store.set_bucket_limits("nope", Limits())


async def test_delete_tenant_needs_no_buckets_and_takes_its_identities(meta_store):
    await meta_store.put_tenant(Tenant("vision", 1.0))
    await meta_store.put_identity(Identity("AK1", "s", "o1", "alice", 1.0, tenant="vision"))
    await meta_store.put_identity(Identity("AK2", "s", "o2", "bob", 1.0))
    await meta_store.create_bucket(Bucket("b1", "o1", 1.0, tenant="vision"))
    with pytest.raises(errors.TenantNotEmpty):
        await meta_store.delete_tenant("vision")
    await meta_store.delete_bucket("b1")
    await meta_store.delete_tenant("vision")
    assert await meta_store.get_tenant("vision") is None
    assert await meta_store.get_identity("AK1") is None
    assert await meta_store.get_identity("AK2") is not None
    with pytest.raises(errors.NoSuchTenant):
        await meta_store.delete_tenant("vision")


def test_tenant_names_for_keys_are_valid_and_unique():
    assert tenant_name_for_key("AKABCDEF0123") == "akabcdef0123"
    assert tenant_name_for_key("AK_x.y", {"ak-x-y"}) == "ak-x-y-2"
    assert tenant_name_for_key("A") == "key-a"


@pytest.mark.sqlite_only
def test_identities_and_buckets_from_before_tenants_are_adopted(tmp_path):
    """A metadata file from before #7: the root joins the root tenant, every other identity gets a tenant of its
    own (so users isolated before stay isolated) and each bucket joins its owner's tenant."""
    path = str(tmp_path / "meta.sqlite3")
    store = SqliteMetaStore(path)
    store.open_sync()
    store.close_sync()
    conn = sqlite3.connect(path)
    conn.executescript("""
        UPDATE schema_version SET version = 2;
        DROP TABLE tenants;
        DROP INDEX identities_by_tenant; ALTER TABLE identities DROP COLUMN tenant;
        ALTER TABLE identities DROP COLUMN role;
        ALTER TABLE identities DROP COLUMN scopes; DROP INDEX buckets_by_tenant;
        ALTER TABLE buckets DROP COLUMN tenant; ALTER TABLE buckets DROP COLUMN limits;
        INSERT INTO identities (access_key, secret_key, owner_id, display_name, created, is_root)
            VALUES ('AKROOT', 's', 'o-root', 'root', 1.0, 1), ('AKALICE', 's', 'o-alice', 'alice', 2.0, 0),
                   ('AKBOB', 's', 'o-bob', 'bob', 3.0, 0);
        INSERT INTO buckets (name, owner_id, created, region) VALUES ('root-data', 'o-root', 1.0, 'us-east-1'),
            ('alice-data', 'o-alice', 1.0, 'us-east-1'), ('orphan', 'o-gone', 1.0, 'us-east-1');
    """)
    conn.close()
    store = SqliteMetaStore(path)
    store.open_sync()
    try:
        async def read():
            return ({i.access_key: i.tenant for i in await store.list_identities()},
                    {b.name: b.tenant for b in await store.list_buckets()},
                    {t.name for t in await store.list_tenants()})
        identities, buckets, tenants = asyncio.run(read())
    finally:
        store.close_sync()
    assert identities == {"AKROOT": ROOT_TENANT, "AKALICE": "akalice", "AKBOB": "akbob"}
    assert buckets == {"root-data": ROOT_TENANT, "alice-data": "akalice", "orphan": ROOT_TENANT}
    assert tenants == {ROOT_TENANT, "akalice", "akbob"}
