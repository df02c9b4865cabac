"""The metadata store in SQL, written once for every engine (SQLite: ``sqlite.py``; PostgreSQL: ``postgres.py``).

Every method is a function of a DB-API-like ``conn`` (``execute(sql, params)`` → cursor with ``fetchone``,
``fetchall``, ``rowcount``; ``executemany``) in a portable subset of SQL with ``?`` placeholders, run through
the engine's hooks:

- ``await self._read(fn)``: ``fn(conn)`` on a read connection (SQLite: inline on the loop thread; PostgreSQL: a
  pool thread). ``_read_in_pool`` for long reads (listings, scans), ``_read_snapshot`` for several queries that
  must see one committed state (fsck).
- ``await self._write(fn)``: ``fn(conn)`` in one write transaction. An engine may run it more than once (PostgreSQL
  retries serialization failures and deadlocks), so ``fn`` has no effect outside the transaction.
- ``self.lock_key(conn, *parts)``: serialise the writers of one logical row set (a key, an upload, a bucket's
  blocks) for the rest of the transaction. Every read-check-write takes it before its read: PostgreSQL runs READ
  COMMITTED, where a row read may change before the write that depends on it. A no-op on SQLite (one writer).
- ``SKIP_LOCKED``, ``FOR_UPDATE``, ``FOR_KEY_SHARE``: suffixes of a SELECT claiming shared work (rows another
  node is claiming are skipped; the UPDATE that follows re-checks the claim), locking a row for a
  read-check-write, and keeping a row (a bucket) from being deleted until the transaction ends. "" on SQLite.
- ``PACKED_EXTENTS``, ``EXTENT_BLOB_IDS``: the two queries that unpack the JSON extents of objects (fsck, repair):
  JSON functions are the one thing the engines spell differently.

Lock order, so that writers rarely wait on each other in a circle (PostgreSQL then aborts one, and the engine
retries it): upload → bucket row (FOR KEY SHARE) → uncommitted blocks of a key → keys (in key order) → counter
rows (taken by triggers).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from typing import Any, Awaitable, Callable, Mapping, Sequence

from atoll import errors
from atoll.core.leases import Lease, check_write
from atoll.core.models import (RESIDENCY_NAMES, Block, Bucket, BucketProperties, CheckpointGroup, CopyState,
                               DrainEntry, Extent, Identity, Job, Limits, Link, ListEntry, ObjectVersion, Part,
                               ROOT_TENANT, SegmentInfo, Tenant, Upload)
from atoll.stores.meta import sql_segments, sql_usage, sql_warm
from atoll.stores.meta.base import WriteCondition
from atoll.stores.meta.sql_audit import AuditMethods
from atoll.stores.meta.sql_cluster import ClusterMethods
from atoll.stores.meta.sql_rows import (BLOCK_COLUMNS, BUCKET_COLUMNS, BUCKET_PROPERTY_COLUMNS, COPY_COLUMNS,
                                        DRAIN_COLUMNS, GROUP_COLUMNS, IDENTITY_COLUMNS, JOB_COLUMNS, LEASE_COLUMNS,
                                        LINK_COLUMNS, OBJECT_COLUMNS, OBJECT_PLACEHOLDERS, PART_COLUMNS,
                                        TENANT_COLUMNS, UPLOAD_COLUMNS, attrs_json, extents_json, key_range_query,
                                        page_after, placeholders, row_to_bucket, row_to_drain, row_to_identity,
                                        row_to_job, row_to_link, row_to_part, row_to_tenant, row_to_upload,
                                        row_to_version, tenant_settings, version_params)

# Each bucket with drain entries, found by seeking the primary key from one bucket to the next (a loose index scan):
# as cheap with a million entries as with one.
_DRAIN_BUCKETS = ("WITH RECURSIVE b(name) AS (SELECT min(bucket) FROM drain UNION ALL "
                  "SELECT (SELECT min(bucket) FROM drain WHERE bucket > b.name) FROM b WHERE b.name IS NOT NULL) "
                  "SELECT name FROM b WHERE name IS NOT NULL")

_SELECT_OBJECT = f"SELECT {OBJECT_COLUMNS} FROM objects WHERE bucket = ? AND key = ?"


class SqlMetaStore(ClusterMethods, AuditMethods):
    """See ``atoll.stores.meta.base.MetaStore`` for the contract of every method."""

    SKIP_LOCKED = ""
    FOR_UPDATE = ""
    FOR_KEY_SHARE = ""
    # (seg, off, len, bucket, key) of every extent of an object that lies in a segment
    PACKED_EXTENTS = ""
    # the blob id of every extent of every object
    EXTENT_BLOB_IDS = ""

    # engine hooks ----------------------------------------------------------------------------------------
    async def _read(self, fn: Callable[[Any], Any]) -> Any:
        raise NotImplementedError

    async def _read_in_pool(self, fn: Callable[[Any], Any]) -> Any:
        raise NotImplementedError

    async def _read_snapshot(self, fn: Callable[[Any], Any]) -> Any:
        raise NotImplementedError

    def _write(self, fn: Callable[[Any], Any]) -> Awaitable[Any]:
        raise NotImplementedError

    def _write_blocking(self, fn: Callable[[Any], Any]) -> Any:
        """``_write`` for callers without a running loop (CLI, tools)."""
        raise NotImplementedError

    def lock_key(self, conn, *parts: str) -> None:
        """Serialise writers of one logical row set until the transaction ends (no-op where writers are)."""

    async def _read_row(self, cache_key: tuple, sql: str, params: tuple, build: Callable[[Any], Any]) -> Any:
        """One row looked up by key (objects, leases, copy states: what every GET asks); an engine may cache."""
        row = await self._read(lambda c: c.execute(sql, params).fetchone())
        return build(row) if row else None

    def open_sync(self) -> None:
        raise NotImplementedError

    def close_sync(self) -> None:
        raise NotImplementedError

    async def open(self) -> None:
        await asyncio.to_thread(self.open_sync)

    async def close(self) -> None:
        await asyncio.to_thread(self.close_sync)

    # transaction helpers (inside a write) ----------------------------------------------------------------
    def _require_bucket(self, conn, bucket: str) -> None:
        # KEY SHARE: the bucket cannot be deleted before this transaction ends (delete_bucket locks it FOR UPDATE
        # and then finds the row this one writes).
        if conn.execute(f"SELECT 1 FROM buckets WHERE name = ?{self.FOR_KEY_SHARE}", (bucket,)).fetchone() is None:
            raise errors.NoSuchBucket(bucket=bucket)

    def _current(self, conn, bucket: str, key: str) -> ObjectVersion | None:
        """The key's row, locked for a read-check-write."""
        self.lock_key(conn, "key", bucket, key)
        row = conn.execute(_SELECT_OBJECT, (bucket, key)).fetchone()
        return row_to_version(row) if row else None

    def _swap_version(self, conn, version: ObjectVersion, condition: WriteCondition | None, now: float,
                      journal: bool = False) -> ObjectVersion | None:
        current = self._current(conn, version.bucket, version.key)
        if condition is not None:
            if condition.if_none_match and current is not None:
                raise errors.PreconditionFailed(condition="If-None-Match")
            if condition.if_match is not None:
                if current is None:
                    raise errors.NoSuchKey(bucket=version.bucket, key=version.key)
                if condition.if_match != "*" and condition.if_match != current.etag:
                    raise errors.PreconditionFailed(condition="If-Match")
            if condition.guard_lease:
                lease = conn.execute(f"SELECT {LEASE_COLUMNS} FROM leases WHERE bucket = ? AND key = ?",
                                     (version.bucket, version.key)).fetchone()
                if lease is not None and current is None:
                    # Left by a row that went another way than a delete (tiering drops rows the cold store lost):
                    # a lease never outlives its object.
                    conn.execute("DELETE FROM leases WHERE bucket = ? AND key = ?", (version.bucket, version.key))
                    lease = None
                if lease is not None or condition.lease_id is not None:
                    check_write(Lease(*lease) if lease else None, condition.lease_id, now)
        if current is not None:
            conn.execute("DELETE FROM objects WHERE bucket = ? AND key = ?", (version.bucket, version.key))
            _add_garbage(conn, [e.blob_id for e in current.extents], now)
            if current.residency == "partial":
                conn.execute("DELETE FROM fills WHERE version_id = ?", (current.version_id,))
        conn.execute(f"INSERT INTO objects ({OBJECT_COLUMNS}) VALUES ({OBJECT_PLACEHOLDERS})",
                     version_params(version))
        _account(conn, _resident_size(version) - (_resident_size(current) if current else 0))
        if journal:
            _journal(conn, version.bucket, version.key, "put", version.version_id, version.size, now)
        return current

    def _delete_key(self, conn, bucket: str, key: str, now: float, journal: bool = False) -> ObjectVersion | None:
        current = self._current(conn, bucket, key)
        if journal:
            # Journaled even when the key is not in the index: it may exist in the cold store only.
            _journal(conn, bucket, key, "delete", "", 0, now)
        if current is None:
            return None
        conn.execute("DELETE FROM objects WHERE bucket = ? AND key = ?", (bucket, key))
        conn.execute("DELETE FROM leases WHERE bucket = ? AND key = ?", (bucket, key))  # a lease dies with its blob
        _add_garbage(conn, [e.blob_id for e in current.extents], now)
        _account(conn, -_resident_size(current))
        if current.residency == "partial":
            conn.execute("DELETE FROM fills WHERE version_id = ?", (current.version_id,))
        return current

    # identities ------------------------------------------------------------------------------------------
    async def put_identity(self, identity: Identity) -> None:
        def op(conn):
            self.lock_key(conn, "identity", identity.access_key)
            if identity.account_name:
                self.lock_key(conn, "account", identity.account_name)
            conn.execute("DELETE FROM identities WHERE access_key = ?", (identity.access_key,))
            if identity.account_name and conn.execute(
                    "SELECT 1 FROM identities WHERE account_name = ?", (identity.account_name,)).fetchone():
                raise errors.InvalidArgument(f"Account name {identity.account_name} is taken.")
            if conn.execute(f"SELECT 1 FROM tenants WHERE name = ?{self.FOR_KEY_SHARE}",
                            (identity.tenant,)).fetchone() is None:
                raise errors.NoSuchTenant(tenant=identity.tenant)
            conn.execute(f"INSERT INTO identities ({IDENTITY_COLUMNS}) VALUES ({placeholders(IDENTITY_COLUMNS)})",
                         (identity.access_key, identity.secret_key, identity.owner_id, identity.display_name,
                          identity.created, int(identity.is_root), identity.account_name, identity.account_key,
                          identity.tenant, identity.role, json.dumps(list(identity.scopes))))
        await self._write(op)

    async def get_identity(self, access_key: str) -> Identity | None:
        row = await self._read(lambda c: c.execute(f"SELECT {IDENTITY_COLUMNS} FROM identities WHERE access_key = ?",
                                                    (access_key,)).fetchone())
        return row_to_identity(row) if row else None

    async def get_identity_by_account(self, account_name: str) -> Identity | None:
        if not account_name:
            return None
        row = await self._read(lambda c: c.execute(
            f"SELECT {IDENTITY_COLUMNS} FROM identities WHERE account_name = ?", (account_name,)).fetchone())
        return row_to_identity(row) if row else None

    async def list_identities(self) -> list[Identity]:
        rows = await self._read(lambda c: c.execute(
            f"SELECT {IDENTITY_COLUMNS} FROM identities ORDER BY created, access_key").fetchall())
        return [row_to_identity(r) for r in rows]

    async def delete_identity(self, access_key: str) -> bool:
        def op(conn):
            return conn.execute("DELETE FROM identities WHERE access_key = ?", (access_key,)).rowcount > 0
        return await self._write(op)

    # buckets ---------------------------------------------------------------------------------------------
    async def create_bucket(self, bucket: Bucket) -> None:
        def op(conn):
            self.lock_key(conn, "bucket", bucket.name)
            row = conn.execute("SELECT tenant FROM buckets WHERE name = ?", (bucket.name,)).fetchone()
            if row is not None:
                if row[0] == bucket.tenant:
                    raise errors.BucketAlreadyOwnedByYou(bucket=bucket.name)
                raise errors.BucketAlreadyExists(bucket=bucket.name)
            if conn.execute(f"SELECT 1 FROM tenants WHERE name = ?{self.FOR_KEY_SHARE}",
                            (bucket.tenant,)).fetchone() is None:
                raise errors.NoSuchTenant(tenant=bucket.tenant)
            conn.execute(f"INSERT INTO buckets ({BUCKET_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                         (bucket.name, bucket.owner_id, bucket.created, bucket.region, bucket.tenant,
                          json.dumps(dataclasses.asdict(bucket.limits))))
        await self._write(op)

    async def get_bucket(self, name: str) -> Bucket | None:
        row = await self._read(lambda c: c.execute(f"SELECT {BUCKET_COLUMNS} FROM buckets WHERE name = ?",
                                                    (name,)).fetchone())
        return row_to_bucket(row) if row else None

    async def list_buckets(self, tenant: str | None = None) -> list[Bucket]:
        def q(c):
            if tenant is None:
                return c.execute(f"SELECT {BUCKET_COLUMNS} FROM buckets ORDER BY name").fetchall()
            return c.execute(f"SELECT {BUCKET_COLUMNS} FROM buckets WHERE tenant = ? ORDER BY name",
                             (tenant,)).fetchall()
        return [row_to_bucket(r) for r in await self._read(q)]

    async def set_bucket_limits(self, name: str, limits: Limits) -> None:
        def op(conn):
            if conn.execute("UPDATE buckets SET limits = ? WHERE name = ?",
                            (json.dumps(dataclasses.asdict(limits)), name)).rowcount == 0:
                raise errors.NoSuchBucket(bucket=name)
        await self._write(op)

    # tenants (#7) ----------------------------------------------------------------------------------------
    async def put_tenant(self, tenant: Tenant) -> None:
        def op(conn):
            conn.execute(f"INSERT INTO tenants ({TENANT_COLUMNS}) VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                         "settings = excluded.settings", (tenant.name, tenant.created, tenant_settings(tenant)))
        await self._write(op)

    async def get_tenant(self, name: str) -> Tenant | None:
        row = await self._read(lambda c: c.execute(f"SELECT {TENANT_COLUMNS} FROM tenants WHERE name = ?",
                                                    (name,)).fetchone())
        return row_to_tenant(row) if row else None

    async def list_tenants(self) -> list[Tenant]:
        rows = await self._read(lambda c: c.execute(f"SELECT {TENANT_COLUMNS} FROM tenants ORDER BY name").fetchall())
        return [row_to_tenant(r) for r in rows]

    async def delete_tenant(self, name: str) -> None:
        def op(conn):
            if conn.execute(f"SELECT 1 FROM tenants WHERE name = ?{self.FOR_UPDATE}", (name,)).fetchone() is None:
                raise errors.NoSuchTenant(tenant=name)
            if name == ROOT_TENANT:
                raise errors.InvalidRequest("The root tenant cannot be deleted.")
            if conn.execute("SELECT 1 FROM buckets WHERE tenant = ? LIMIT 1", (name,)).fetchone():
                raise errors.TenantNotEmpty("The tenant still owns buckets; delete them first.", tenant=name)
            conn.execute("DELETE FROM identities WHERE tenant = ?", (name,))
            conn.execute("DELETE FROM tenants WHERE name = ?", (name,))
        await self._write(op)

    async def delete_bucket(self, name: str) -> None:
        def op(conn):
            if conn.execute(f"SELECT 1 FROM buckets WHERE name = ?{self.FOR_UPDATE}", (name,)).fetchone() is None:
                raise errors.NoSuchBucket(bucket=name)
            if conn.execute("SELECT 1 FROM objects WHERE bucket = ? LIMIT 1", (name,)).fetchone():
                raise errors.BucketNotEmpty(bucket=name)
            if conn.execute("SELECT 1 FROM drain WHERE bucket = ? LIMIT 1", (name,)).fetchone():
                raise errors.BucketNotEmpty("The bucket still has deletes to propagate to its cold store.",
                                            bucket=name)
            conn.execute("DELETE FROM links WHERE bucket = ?", (name,))
            conn.execute("DELETE FROM groups WHERE bucket = ?", (name,))
            conn.execute("DELETE FROM bucket_properties WHERE bucket = ?", (name,))
            conn.execute("DELETE FROM leases WHERE bucket = ?", (name,))
            now = time.time()
            for (upload_id,) in conn.execute("SELECT upload_id FROM uploads WHERE bucket = ?", (name,)).fetchall():
                _drop_upload(conn, upload_id, now)
            _drop_blocks(conn, "WHERE bucket = ?", (name,), now)
            conn.execute("DELETE FROM buckets WHERE name = ?", (name,))
        await self._write(op)

    async def get_bucket_properties(self, name: str) -> BucketProperties | None:
        row = await self._read(lambda c: c.execute(
            f"SELECT {BUCKET_PROPERTY_COLUMNS} FROM bucket_properties WHERE bucket = ?", (name,)).fetchone())
        if row is None:
            return None
        return BucketProperties(row[0], row[1], json.loads(row[2]), json.loads(row[3]), row[4])

    async def put_bucket_properties(self, props: BucketProperties) -> None:
        def op(conn):
            self._require_bucket(conn, props.bucket)
            conn.execute(f"INSERT INTO bucket_properties ({BUCKET_PROPERTY_COLUMNS}) VALUES (?, ?, ?, ?, ?) "
                         "ON CONFLICT (bucket) DO UPDATE SET public_access = excluded.public_access, "
                         "metadata = excluded.metadata, access_policies = excluded.access_policies, "
                         "modified = excluded.modified",
                         (props.bucket, props.public_access, json.dumps(props.metadata),
                          json.dumps(props.access_policies), props.modified))
        await self._write(op)

    # objects ---------------------------------------------------------------------------------------------
    async def get_object(self, bucket: str, key: str) -> ObjectVersion | None:
        return await self._read_row((bucket, key), _SELECT_OBJECT, (bucket, key), row_to_version)

    async def put_object(self, version: ObjectVersion, condition: WriteCondition | None = None,
                         journal: bool = False) -> ObjectVersion | None:
        def op(conn):
            self._require_bucket(conn, version.bucket)
            return sql_usage.guarded(conn, version.bucket,
                                     lambda: self._swap_version(conn, version, condition, time.time(), journal))
        return await self._write(op)

    async def replace_metadata(self, bucket, key, version_id, headers, user_meta, last_modified,
                               journal: bool = False) -> ObjectVersion:
        def op(conn):
            current = self._current(conn, bucket, key)
            if current is None:
                raise errors.NoSuchKey(bucket=bucket, key=key)
            if current.version_id != version_id:
                raise errors.ConditionalRequestConflict(bucket=bucket, key=key)
            current.headers, current.user_meta, current.last_modified = headers, user_meta, last_modified
            conn.execute("UPDATE objects SET attrs = ?, last_modified = ? WHERE bucket = ? AND key = ?",
                         (attrs_json(current), last_modified, bucket, key))
            if journal:
                _journal(conn, bucket, key, "put", version_id, current.size, time.time())
            return current
        return await self._write(op)

    async def delete_object(self, bucket: str, key: str, journal: bool = False) -> ObjectVersion | None:
        def op(conn):
            self._require_bucket(conn, bucket)
            return self._delete_key(conn, bucket, key, time.time(), journal)
        return await self._write(op)

    async def delete_objects(self, bucket: str, keys: Sequence[str],
                             journal: bool = False) -> list[ObjectVersion | None]:
        def op(conn):
            self._require_bucket(conn, bucket)
            for key in sorted(set(keys)):  # in one order, so two batches never wait on each other in a circle
                self.lock_key(conn, "key", bucket, key)
            now = time.time()
            return [self._delete_key(conn, bucket, k, now, journal) for k in keys]
        return await self._write(op)

    async def list_objects(self, bucket: str, start: str, inclusive: bool, end: str | None,
                           limit: int) -> list[ListEntry]:
        sql, params = key_range_query("key, size, etag, last_modified, owner_id", bucket, start, inclusive, end,
                                      limit)

        def q(c):
            return c.execute(sql, params).fetchall()
        rows = await (self._read(q) if limit <= 64 else self._read_in_pool(q))
        return [ListEntry(*r) for r in rows]

    async def count_objects(self, bucket: str) -> tuple[int, int]:
        def q(c):
            return c.execute("SELECT count(*), coalesce(sum(size), 0) FROM objects WHERE bucket = ?",
                             (bucket,)).fetchone()
        n, size = await self._read_in_pool(q)
        return int(n), int(size)

    # uploads ---------------------------------------------------------------------------------------------
    async def create_upload(self, upload: Upload) -> None:
        attrs = json.dumps({"h": upload.headers, "m": upload.user_meta, "ca": upload.checksum_algorithm,
                            "ct": upload.checksum_type}, separators=(",", ":"))

        def op(conn):
            self._require_bucket(conn, upload.bucket)
            conn.execute(f"INSERT INTO uploads ({UPLOAD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                         (upload.upload_id, upload.bucket, upload.key, upload.initiated, upload.owner_id, attrs))
        await self._write(op)

    async def get_upload(self, upload_id: str) -> Upload | None:
        row = await self._read(lambda c: c.execute(f"SELECT {UPLOAD_COLUMNS} FROM uploads WHERE upload_id = ?",
                                                    (upload_id,)).fetchone())
        return row_to_upload(row) if row else None

    def _require_upload(self, conn, upload_id: str) -> str:
        """The upload's bucket, the upload locked against parts, completion and abort on other nodes."""
        self.lock_key(conn, "upload", upload_id)
        row = conn.execute("SELECT bucket FROM uploads WHERE upload_id = ?", (upload_id,)).fetchone()
        if row is None:
            raise errors.NoSuchUpload(upload_id=upload_id)
        return row[0]

    async def put_part(self, part: Part) -> Part | None:
        def op(conn):
            bucket = self._require_upload(conn, part.upload_id)
            return sql_usage.guarded(conn, bucket, lambda: record(conn))

        def record(conn):
            row = conn.execute(f"SELECT {PART_COLUMNS} FROM parts WHERE upload_id = ? AND part_number = ?",
                               (part.upload_id, part.part_number)).fetchone()
            replaced = row_to_part(row) if row else None
            if replaced is not None:
                conn.execute("DELETE FROM parts WHERE upload_id = ? AND part_number = ?",
                             (part.upload_id, part.part_number))
                _add_garbage(conn, [replaced.blob_id], time.time())
            conn.execute(f"INSERT INTO parts ({PART_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (part.upload_id, part.part_number, part.size, part.etag, part.blob_id,
                          part.last_modified, json.dumps(part.checksums, separators=(",", ":"))))
            return replaced
        return await self._write(op)

    async def list_parts(self, upload_id: str, after: int = 0, limit: int = 10000) -> list[Part]:
        rows = await self._read_in_pool(lambda c: c.execute(
            f"SELECT {PART_COLUMNS} FROM parts WHERE upload_id = ? AND part_number > ? ORDER BY part_number LIMIT ?",
            (upload_id, after, limit)).fetchall())
        return [row_to_part(r) for r in rows]

    async def list_uploads(self, bucket: str, prefix: str = "", key_marker: str = "", upload_id_marker: str = "",
                           limit: int = 1000) -> list[Upload]:
        def q(c):
            sql = f"SELECT {UPLOAD_COLUMNS} FROM uploads WHERE bucket = ? AND key >= ?"
            params: list[Any] = [bucket, prefix]
            if key_marker:
                if upload_id_marker:
                    sql += " AND (key > ? OR (key = ? AND upload_id > ?))"
                    params += [key_marker, key_marker, upload_id_marker]
                else:
                    sql += " AND key > ?"
                    params.append(key_marker)
            sql += " ORDER BY key, upload_id LIMIT ?"
            params.append(limit if not prefix else limit * 4 + 64)
            rows = c.execute(sql, params).fetchall()
            return [r for r in rows if r[2].startswith(prefix)][:limit]
        return [row_to_upload(r) for r in await self._read_in_pool(q)]

    async def complete_upload(self, upload_id: str, version: ObjectVersion, used_parts: Sequence[int],
                              condition: WriteCondition | None = None, journal: bool = False) -> ObjectVersion | None:
        def op(conn):
            self._require_upload(conn, upload_id)
            self._require_bucket(conn, version.bucket)
            parts = {r[1]: row_to_part(r) for r in conn.execute(
                f"SELECT {PART_COLUMNS} FROM parts WHERE upload_id = ?", (upload_id,)).fetchall()}
            for number, extent in zip(used_parts, version.extents):
                part = parts.get(number)
                if part is None or part.blob_id != extent.blob_id:
                    raise errors.InvalidPart("a part was replaced or removed while completing", part=number)
            return sql_usage.guarded(conn, version.bucket, lambda: complete(conn, parts))

        def complete(conn, parts):
            now = time.time()
            replaced = self._swap_version(conn, version, condition, now, journal)
            used = set(used_parts)
            _add_garbage(conn, [p.blob_id for n, p in parts.items() if n not in used], now)
            conn.execute("DELETE FROM parts WHERE upload_id = ?", (upload_id,))
            conn.execute("DELETE FROM uploads WHERE upload_id = ?", (upload_id,))
            return replaced
        return await self._write(op)

    async def abort_upload(self, upload_id: str) -> None:
        def op(conn):
            self._require_upload(conn, upload_id)
            _drop_upload(conn, upload_id, time.time())
        await self._write(op)

    # uncommitted blocks (Azure Put Block) ----------------------------------------------------------------
    async def put_block(self, block: Block, max_blocks: int) -> Block | None:
        def op(conn):
            self._require_bucket(conn, block.bucket)
            self.lock_key(conn, "blocks", block.bucket, block.key)
            return sql_usage.guarded(conn, block.bucket, lambda: stage(conn))

        def stage(conn):
            where = (block.bucket, block.key)
            row = conn.execute(f"SELECT {BLOCK_COLUMNS} FROM blocks WHERE bucket = ? AND key = ? AND block_id = ?",
                               (*where, block.block_id)).fetchone()
            replaced = Block(*row) if row else None
            if replaced is None:
                other = conn.execute("SELECT block_id FROM blocks WHERE bucket = ? AND key = ? LIMIT 1",
                                     where).fetchone()
                if other is not None and len(other[0]) != len(block.block_id):
                    raise errors.InvalidRequest("The specified blob or block content is invalid: every block id "
                                                "of a blob must have the same length.", code="InvalidBlobOrBlock")
                count = conn.execute("SELECT count(*) FROM blocks WHERE bucket = ? AND key = ?", where).fetchone()[0]
                if count >= max_blocks:
                    raise errors.Conflict(f"The blob already has {max_blocks} uncommitted blocks.",
                                          code="BlockCountExceedsLimit")
            else:
                conn.execute("DELETE FROM blocks WHERE bucket = ? AND key = ? AND block_id = ?",
                             (*where, block.block_id))
                _add_garbage(conn, [replaced.blob_id], time.time())
            conn.execute(f"INSERT INTO blocks ({BLOCK_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (block.bucket, block.key, block.block_id, block.blob_id, block.size, block.md5,
                          block.created))
            return replaced
        return await self._write(op)

    async def list_blocks(self, bucket: str, key: str) -> list[Block]:
        rows = await self._read_in_pool(lambda c: c.execute(
            f"SELECT {BLOCK_COLUMNS} FROM blocks WHERE bucket = ? AND key = ? ORDER BY created, block_id",
            (bucket, key)).fetchall())
        return [Block(*r) for r in rows]

    async def commit_blocks(self, version: ObjectVersion, base_version_id: str | None,
                            staged: Sequence[tuple[str, str]], condition: WriteCondition | None = None,
                            journal: bool = False) -> ObjectVersion | None:
        def op(conn):
            self._require_bucket(conn, version.bucket)
            self.lock_key(conn, "blocks", version.bucket, version.key)
            where = (version.bucket, version.key)
            blocks = {r[0]: r[1] for r in conn.execute(
                "SELECT block_id, blob_id FROM blocks WHERE bucket = ? AND key = ?", where).fetchall()}
            for block_id, blob_id in staged:
                if blocks.get(block_id) != blob_id:
                    raise errors.ConditionalRequestConflict("A block was replaced or removed while the block list "
                                                            "was committed; retry.")
            return sql_usage.guarded(conn, version.bucket, lambda: commit(conn, where, blocks))

        def commit(conn, where, blocks):
            now = time.time()
            if base_version_id is not None:
                current = self._current(conn, *where)
                if current is None or current.version_id != base_version_id:
                    raise errors.ConditionalRequestConflict("The blob changed while its block list was committed; "
                                                            "retry.")
            replaced = self._swap_version(conn, version, condition, now, journal)
            if base_version_id is not None:
                # Committed blocks kept from the replaced version are extents of the new one: not garbage.
                conn.executemany("DELETE FROM garbage WHERE blob_id = ?",
                                 [(b,) for b in {e.blob_id for e in version.extents}])
            used = {blob_id for _, blob_id in staged}
            _add_garbage(conn, [b for b in blocks.values() if b not in used], now)
            conn.execute("DELETE FROM blocks WHERE bucket = ? AND key = ?", where)
            return replaced
        return await self._write(op)

    async def expire_blocks(self, older_than: float, limit: int) -> int:
        # Asked every collector round: look first, so a round with nothing to expire commits nothing.
        if await self._read(lambda c: c.execute("SELECT 1 FROM blocks WHERE created < ? LIMIT 1",
                                                (older_than,)).fetchone()) is None:
            return 0

        def op(conn):
            rows = conn.execute(f"SELECT bucket, key, block_id, blob_id FROM blocks WHERE created < ? ORDER BY created "
                                f"LIMIT ?{self.SKIP_LOCKED}", (older_than, limit)).fetchall()
            # Only the very block seen: one replaced meanwhile by another node is not old, and its blob not garbage.
            gone = [r[3] for r in rows if conn.execute(
                "DELETE FROM blocks WHERE bucket = ? AND key = ? AND block_id = ? AND blob_id = ?", tuple(r)).rowcount]
            _add_garbage(conn, gone, time.time())
            return len(gone)
        return await self._write(op)

    # leases ----------------------------------------------------------------------------------------------
    async def get_lease(self, bucket: str, key: str) -> Lease | None:
        return await self._read_row(("lease", bucket, key),
                                    f"SELECT {LEASE_COLUMNS} FROM leases WHERE bucket = ? AND key = ?", (bucket, key),
                                    lambda row: Lease(*row))

    async def list_leases(self, bucket: str, first: str, last: str) -> dict[str, Lease]:
        rows = await self._read(lambda c: c.execute(
            f"SELECT key, {LEASE_COLUMNS} FROM leases WHERE bucket = ? AND key >= ? AND key <= ? AND key != ''",
            (bucket, first, last)).fetchall())
        return {r[0]: Lease(*r[1:]) for r in rows}

    async def apply_lease(self, bucket: str, key: str, change: Callable[[Lease | None], tuple[Lease | None, Any]]
                          ) -> Any:
        def op(conn):
            self._require_bucket(conn, bucket)
            if key:
                if self._current(conn, bucket, key) is None:
                    raise errors.NoSuchKey(bucket=bucket, key=key)
            else:
                self.lock_key(conn, "key", bucket, key)
            row = conn.execute(f"SELECT {LEASE_COLUMNS} FROM leases WHERE bucket = ? AND key = ?",
                               (bucket, key)).fetchone()
            new, result = change(Lease(*row) if row else None)
            if new is None:
                conn.execute("DELETE FROM leases WHERE bucket = ? AND key = ?", (bucket, key))
            else:
                conn.execute(f"INSERT INTO leases (bucket, key, {LEASE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?) "
                             "ON CONFLICT (bucket, key) DO UPDATE SET state = excluded.state, "
                             "lease_id = excluded.lease_id, duration = excluded.duration, "
                             "expires_at = excluded.expires_at, break_at = excluded.break_at",
                             (bucket, key, new.state, new.lease_id, new.duration, new.expires_at, new.break_at))
            return result
        return await self._write(op)

    # garbage ---------------------------------------------------------------------------------------------
    async def take_garbage(self, older_than: float, limit: int) -> list[str]:
        rows = await self._read_in_pool(lambda c: c.execute(
            "SELECT blob_id FROM garbage WHERE since < ? LIMIT ?", (older_than, limit)).fetchall())
        return [r[0] for r in rows]

    async def forget_garbage(self, blob_ids: Sequence[str]) -> None:
        ids = list(blob_ids)

        def op(conn):
            conn.executemany("DELETE FROM garbage WHERE blob_id = ?", [(b,) for b in ids])
        await self._write(op)

    async def referenced_blobs(self) -> set[str]:
        def q(c):
            found: set[str] = set()
            for (extents,) in c.execute("SELECT extents FROM objects"):
                found.update(e[0] for e in json.loads(extents))
            found.update(r[0] for r in c.execute("SELECT blob_id FROM parts"))
            found.update(r[0] for r in c.execute("SELECT blob_id FROM blocks"))
            found.update(r[0] for r in c.execute("SELECT blob_id FROM garbage"))
            return found
        return await self._read_snapshot(q)

    # tiering: links and checkpoint groups ----------------------------------------------------------------
    async def put_link(self, link: Link) -> None:
        def op(conn):
            self._require_bucket(conn, link.bucket)
            conn.execute(f"INSERT INTO links ({LINK_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (bucket) DO UPDATE "
                         "SET url = excluded.url, mode = excluded.mode, revalidate = excluded.revalidate, "
                         "options = excluded.options, created = excluded.created",
                         (link.bucket, link.url, link.mode, link.revalidate, json.dumps(link.options), link.created))
        await self._write(op)

    async def get_link(self, bucket: str) -> Link | None:
        row = await self._read(lambda c: c.execute(f"SELECT {LINK_COLUMNS} FROM links WHERE bucket = ?",
                                                    (bucket,)).fetchone())
        return row_to_link(row) if row else None

    async def list_links(self) -> list[Link]:
        rows = await self._read(lambda c: c.execute(f"SELECT {LINK_COLUMNS} FROM links ORDER BY bucket").fetchall())
        return [row_to_link(r) for r in rows]

    async def delete_link(self, bucket: str) -> bool:
        def op(conn):
            if conn.execute("SELECT 1 FROM drain WHERE bucket = ? LIMIT 1", (bucket,)).fetchone():
                raise errors.InvalidRequest("The bucket still has writes to drain to its cold store; unlink it "
                                            "when its backlog is empty.")
            conn.execute("DELETE FROM groups WHERE bucket = ?", (bucket,))
            # Objects known only from the cold store cannot be read once the link is gone, nor can the missing
            # blocks of partly filled ones: a local GET of a sparse blob would serve its holes as zeros.
            now = time.time()
            for (key,) in conn.execute("SELECT key FROM objects WHERE bucket = ? AND residency = 1 ORDER BY key",
                                       (bucket,)).fetchall():
                self._delete_key(conn, bucket, key, now)
            conn.execute("DELETE FROM objects WHERE bucket = ? AND residency = 0", (bucket,))
            conn.execute("UPDATE objects SET warm_seq = 0, pinned_until = 0 WHERE bucket = ? AND warm_seq > 0",
                         (bucket,))
            return conn.execute("DELETE FROM links WHERE bucket = ?", (bucket,)).rowcount > 0
        return await self._write(op)

    async def put_group(self, group: CheckpointGroup) -> None:
        def op(conn):
            self._require_bucket(conn, group.bucket)
            conn.execute(f"INSERT INTO groups ({GROUP_COLUMNS}) VALUES (?, ?, ?) ON CONFLICT (bucket, prefix) "
                         "DO UPDATE SET markers = excluded.markers",
                         (group.bucket, group.prefix, json.dumps(group.markers)))
        await self._write(op)

    async def list_groups(self, bucket: str) -> list[CheckpointGroup]:
        rows = await self._read(lambda c: c.execute(
            f"SELECT {GROUP_COLUMNS} FROM groups WHERE bucket = ? ORDER BY prefix", (bucket,)).fetchall())
        return [CheckpointGroup(r[0], r[1], json.loads(r[2])) for r in rows]

    async def delete_group(self, bucket: str, prefix: str) -> bool:
        def op(conn):
            return conn.execute("DELETE FROM groups WHERE bucket = ? AND prefix = ?", (bucket, prefix)).rowcount > 0
        return await self._write(op)

    # tiering: cold objects and fills ---------------------------------------------------------------------
    async def record_cold_version(self, version: ObjectVersion, expect: str | None) -> ObjectVersion | None:
        """Make ``version`` (absent, or resident after a whole-object fill) current for its key if the key has
        no row (``expect`` None) or its row is still the clean version ``expect``; otherwise change nothing.
        Returns the row in effect afterwards (None if the bucket has none)."""
        def op(conn):
            self._require_bucket(conn, version.bucket)
            current = self._current(conn, version.bucket, version.key)
            if (current.version_id if current else None) != expect:
                return current
            # Dirty without a row is a pending delete: the cold copy is on its way out, not to be brought back.
            if _is_dirty(conn, version.bucket, version.key):
                return current
            self._swap_version(conn, version, None, time.time())
            return version
        return await self._write(op)

    async def start_fill(self, bucket: str, key: str, version_id: str, blob_id: str, block_size: int,
                         warm_seq: int) -> ObjectVersion | None:
        """Turn the absent version ``version_id`` into a partial one backed by ``blob_id`` with an empty block
        map. If it is already partial or resident, nothing changes. Returns the row in effect afterwards."""
        def op(conn):
            current = self._current(conn, bucket, key)
            if current is None:
                return None
            if current.version_id != version_id or current.residency != "absent":
                return current
            current.residency = "partial"
            current.extents = [Extent(blob_id, 0, current.size)]
            current.warm_seq = warm_seq
            blocks = (current.size + block_size - 1) // block_size
            conn.execute("UPDATE objects SET residency = 1, extents = ?, warm_seq = ? WHERE bucket = ? AND key = ?",
                         (extents_json(current), warm_seq, bucket, key))
            conn.execute("INSERT INTO fills (version_id, block_size, blocks) VALUES (?, ?, ?) "
                         "ON CONFLICT (version_id) DO NOTHING", (version_id, block_size, bytes((blocks + 7) // 8)))
            _account(conn, current.size)
            return current
        return await self._write(op)

    async def get_fill(self, version_id: str) -> tuple[int, bytes] | None:
        """(block size, bitmap of filled blocks) of a partial version; None once it is resident or gone."""
        row = await self._read(lambda c: c.execute("SELECT block_size, blocks FROM fills WHERE version_id = ?",
                                                    (version_id,)).fetchone())
        return (row[0], bytes(row[1])) if row else None

    async def mark_filled(self, bucket: str, key: str, version_id: str, blocks: Sequence[int],
                          blob_id: str | None = None) -> str | None:
        """Record blocks of a partial version as durable on the warm tier; when all are, the version becomes
        resident. Returns the residency afterwards, or None if the version is no longer current (or, with
        ``blob_id``, its warm copy is no longer that blob: it was evicted and is being filled again)."""
        indexes = list(blocks)

        def op(conn):
            self.lock_key(conn, "key", bucket, key)
            row = conn.execute("SELECT block_size, blocks FROM fills WHERE version_id = ?", (version_id,)).fetchone()
            current = conn.execute("SELECT version_id, residency, size, extents FROM objects WHERE bucket = ? AND "
                                   "key = ?", (bucket, key)).fetchone()
            if current is None or current[0] != version_id:
                return None
            if blob_id is not None and [e[0] for e in json.loads(current[3])][:1] != [blob_id]:
                return None
            if row is None:
                return RESIDENCY_NAMES[current[1]]
            bitmap = bytearray(row[1])
            for i in indexes:
                bitmap[i >> 3] |= 1 << (i & 7)
            total = (current[2] + row[0] - 1) // row[0]
            if all(bitmap[i >> 3] & (1 << (i & 7)) for i in range(total)):
                conn.execute("DELETE FROM fills WHERE version_id = ?", (version_id,))
                conn.execute("UPDATE objects SET residency = 2 WHERE bucket = ? AND key = ?", (bucket, key))
                return "resident"
            conn.execute("UPDATE fills SET blocks = ? WHERE version_id = ?", (bytes(bitmap), version_id))
            return "partial"
        return await self._write(op)

    async def set_cold_identity(self, bucket: str, key: str, version_id: str, cold_etag: str,
                                cold_mtime: float) -> None:
        """Record which cold object a local version now matches (after a drain or a write-through)."""
        def op(conn):
            current = self._current(conn, bucket, key)
            if current is None or current.version_id != version_id:
                return
            current.cold_etag, current.cold_mtime = cold_etag, cold_mtime
            conn.execute("UPDATE objects SET attrs = ? WHERE bucket = ? AND key = ?",
                         (attrs_json(current), bucket, key))
        await self._write(op)

    # tiering: eviction and pins --------------------------------------------------------------------------
    async def resident_bytes(self, bucket: str | None = None) -> int:
        if bucket is None:
            row = await self._read(lambda c: c.execute(
                "SELECT value FROM counters WHERE name = 'resident_bytes'").fetchone())
            return int(row[0]) if row else 0
        # No per-bucket counter (it would cost every write a second counter row): a scan of the bucket's rows,
        # about 0.7 s per million objects on a thread of the read pool, paid by status and scrapes only.
        sql = "SELECT coalesce(sum(size), 0) FROM objects WHERE bucket = ? AND residency > 0"
        return int((await self._read_in_pool(lambda c: c.execute(sql, (bucket,)).fetchone()))[0])

    async def warm_bytes_by_tenant(self) -> dict[str, int]:
        return await self._read(sql_warm.by_tenant)

    async def eviction_candidates(self, after_seq: int, limit: int) -> list[tuple]:
        """(bucket, key, version_id, warm_seq, visited, size, evictable) in warm_seq order after ``after_seq``,
        among warm versions of linked buckets. ``evictable`` is false for dirty or pinned versions."""
        now = time.time()

        def q(c):
            return c.execute(
                "SELECT o.bucket, o.key, o.version_id, o.warm_seq, o.visited, o.size, "
                "o.pinned_until <= ? AND NOT EXISTS (SELECT 1 FROM drain d WHERE d.bucket = o.bucket AND d.key = o.key) "
                "FROM objects o WHERE o.warm_seq > ? AND o.residency > 0 ORDER BY o.warm_seq LIMIT ?",
                (now, after_seq, limit)).fetchall()
        return [tuple(r[:6]) + (bool(r[6]),) for r in await self._read_in_pool(q)]

    async def set_visited(self, keys: Sequence[tuple[str, str, str]], visited: bool) -> None:
        """Set or clear SIEVE's visited bit of (bucket, key, version_id) versions that are still current."""
        params = [(int(visited), b, k, v) for b, k, v in sorted(keys)]

        def op(conn):
            conn.executemany("UPDATE objects SET visited = ? WHERE bucket = ? AND key = ? AND version_id = ? "
                             "AND warm_seq > 0", params)
        if params:
            await self._write(op)

    async def evict(self, bucket: str, key: str, version_id: str) -> int:
        """Drop the warm bytes of a clean, unpinned version (it becomes absent: known, served from the cold
        store on the next read). Returns the bytes freed (0 if the version moved on, is dirty or pinned)."""
        def op(conn):
            current = self._current(conn, bucket, key)
            if current is None:
                return 0
            if (current.version_id != version_id or current.residency == "absent" or current.warm_seq <= 0
                    or current.pinned_until > time.time() or not current.cold_etag
                    or _is_dirty(conn, bucket, key)):
                return 0
            now = time.time()
            _add_garbage(conn, [e.blob_id for e in current.extents], now)
            conn.execute("DELETE FROM fills WHERE version_id = ?", (version_id,))
            conn.execute("UPDATE objects SET residency = 0, extents = '[]', visited = 0 WHERE bucket = ? AND key = ?",
                         (bucket, key))
            _account(conn, -current.size)
            return current.size
        return await self._write(op)

    async def pin(self, bucket: str, key: str, until: float) -> bool:
        def op(conn):
            return conn.execute("UPDATE objects SET pinned_until = ? WHERE bucket = ? AND key = ?",
                                (until, bucket, key)).rowcount > 0
        return await self._write(op)

    async def pinned_bytes(self, bucket: str | None = None) -> int:
        # "pinned_until > 0" lets the engine use the partial index objects_pinned
        sql = ("SELECT coalesce(sum(size), 0) FROM objects "
               "WHERE pinned_until > 0 AND pinned_until > ? AND residency > 0")
        params: list[Any] = [time.time()]
        if bucket is not None:
            sql += " AND bucket = ?"
            params.append(bucket)
        return int((await self._read_in_pool(lambda c: c.execute(sql, params).fetchone()))[0])

    # tiering: the write-back journal ---------------------------------------------------------------------
    async def take_drain(self, limit: int, lease: float, skip_buckets: Sequence[str] = (),
                         busy: Mapping[str, int] | None = None) -> list[DrainEntry]:
        """Claim up to ``limit`` entries that are due for ``lease`` seconds (a crashed drainer's claims expire
        and are taken again; a drain is idempotent, so a retaken entry is merely re-uploaded). Tenants with due
        entries get claims in proportion to their WAN weights, counting the claims in ``busy`` (bucket -> entries
        of it being drained now); oldest first inside a tenant. Entries another node is claiming at the same
        moment are skipped, and each claim re-checks that its entry is still due, so no two nodes claim one."""
        skip = set(skip_buckets)
        if limit <= 0:
            return []

        def op(conn):
            now = time.time()
            # The buckets with entries, by a skip scan of the primary key: the drain table may hold millions.
            buckets = [r[0] for r in conn.execute(_DRAIN_BUCKETS).fetchall() if r[0] not in skip]
            due: dict[str, list[tuple]] = {}  # tenant -> due rows of its buckets, oldest first
            for bucket in buckets:
                rows = conn.execute(f"SELECT {DRAIN_COLUMNS} FROM drain WHERE bucket = ? AND not_before <= ? "
                                    f"ORDER BY since LIMIT ?{self.SKIP_LOCKED}", (bucket, now, limit)).fetchall()
                if rows:
                    owner = conn.execute("SELECT tenant FROM buckets WHERE name = ?", (bucket,)).fetchone()
                    due.setdefault(owner[0] if owner else "", []).extend(rows)
            if not due:
                return []
            weights: dict[str, float] = {}
            held: dict[str, int] = {tenant: 0 for tenant in due}
            for tenant in due:
                row = conn.execute(f"SELECT {TENANT_COLUMNS} FROM tenants WHERE name = ?", (tenant,)).fetchone()
                weight = row_to_tenant(row).wan_weight if row else 1.0
                weights[tenant] = weight if weight > 0 else 1.0
                due[tenant].sort(key=lambda r: r[5])  # since
                due[tenant].reverse()  # popped from the end: oldest first
            for bucket, count in (busy or {}).items():
                owner = conn.execute("SELECT tenant FROM buckets WHERE name = ?", (bucket,)).fetchone()
                if owner and owner[0] in held:
                    held[owner[0]] += count
            taken: list[tuple] = []
            while len(taken) < limit and due:
                # The tenant holding the fewest claims for its weight (ties: the one with the oldest entry).
                tenant = min(due, key=lambda t: ((held[t] + 1) / weights[t], due[t][-1][5]))
                row = due[tenant].pop()
                if conn.execute("UPDATE drain SET not_before = ? WHERE bucket = ? AND key = ? AND not_before <= ?",
                                (now + lease, row[0], row[1], now)).rowcount:
                    taken.append(row)
                    held[tenant] += 1
                if not due[tenant]:
                    del due[tenant]
            return [row_to_drain(r) for r in taken]
        return await self._write(op)

    async def renew_drain(self, entries: Sequence[DrainEntry], lease: float) -> None:
        def op(conn):
            until = time.time() + lease
            conn.executemany("UPDATE drain SET not_before = ? WHERE bucket = ? AND key = ? AND version_id = ? "
                             "AND op = ?", [(until, e.bucket, e.key, e.version_id, e.op) for e in entries])
        if entries:
            await self._write(op)

    async def note_cold_upload(self, bucket: str, key: str, started: float) -> int:
        def op(conn):
            return conn.execute("INSERT INTO cold_uploads (bucket, key, started) VALUES (?, ?, ?) RETURNING id",
                                (bucket, key, started)).fetchone()[0]
        return await self._write(op)

    async def forget_cold_upload(self, upload: int) -> None:
        await self._write(lambda conn: conn.execute("DELETE FROM cold_uploads WHERE id = ?", (upload,)))

    async def list_cold_uploads(self, limit: int = 1000) -> list[tuple[int, str, str, float]]:
        rows = await self._read(lambda c: c.execute(
            "SELECT id, bucket, key, started FROM cold_uploads ORDER BY id LIMIT ?", (limit,)).fetchall())
        return [tuple(r) for r in rows]

    async def finish_drain(self, entry: DrainEntry, uploaded_modified: float | None = None) -> bool:
        """Remove the entry if it is still for the same write; False if a newer write replaced it meanwhile.
        ``uploaded_modified`` is the last_modified of the version that was uploaded: a metadata replace (a
        self-copy) keeps the version id but changes it, and is a newer write too."""
        def op(conn):
            self.lock_key(conn, "key", entry.bucket, entry.key)
            same = True
            if uploaded_modified is not None:
                row = conn.execute("SELECT last_modified FROM objects WHERE bucket = ? AND key = ? AND version_id = ?",
                                   (entry.bucket, entry.key, entry.version_id)).fetchone()
                same = row is None or row[0] == uploaded_modified
            if same and conn.execute("DELETE FROM drain WHERE bucket = ? AND key = ? AND op = ? AND version_id = ?",
                                     (entry.bucket, entry.key, entry.op, entry.version_id)).rowcount > 0:
                return True
            conn.execute("UPDATE drain SET not_before = 0 WHERE bucket = ? AND key = ?", (entry.bucket, entry.key))
            return False
        return await self._write(op)

    async def reset_drain_claims(self) -> int:
        """At start-up, before any drainer runs: claims of a crashed process are void."""
        def op(conn):
            return conn.execute("UPDATE drain SET not_before = 0 WHERE not_before > ?", (time.time(),)).rowcount
        return await self._write(op)

    async def release_drain(self, entry: DrainEntry, delay: float, error: str = "") -> None:
        """Give a claimed entry back, due again after ``delay`` seconds (a failure when ``error`` is set)."""
        def op(conn):
            due = time.time() + delay
            if not conn.execute("UPDATE drain SET not_before = ?, attempts = attempts + ?, last_error = ? "
                                "WHERE bucket = ? AND key = ? AND version_id = ? AND op = ?",
                                (due, 1 if error else 0, error[:500], entry.bucket, entry.key,
                                 entry.version_id, entry.op)).rowcount:
                # A newer write replaced the entry while it was out and inherited its claim: give that back
                # too (without a failure: the newer write was not tried), or it would wait out the whole lease.
                conn.execute("UPDATE drain SET not_before = ? WHERE bucket = ? AND key = ? AND not_before > ?",
                             (due, entry.bucket, entry.key, due))
        await self._write(op)

    async def get_drain(self, bucket: str, key: str) -> DrainEntry | None:
        r = await self._read(lambda c: c.execute(f"SELECT {DRAIN_COLUMNS} FROM drain WHERE bucket = ? AND key = ?",
                                                  (bucket, key)).fetchone())
        return row_to_drain(r) if r else None

    async def drain_pending_in(self, bucket: str, prefix: str, except_key: str) -> bool:
        """Whether any journaled write other than ``except_key`` waits under ``prefix``."""
        row = await self._read(lambda c: c.execute(
            "SELECT 1 FROM drain WHERE bucket = ? AND key >= ? AND key < ? AND key != ? LIMIT 1",
            (bucket, prefix, prefix + "\U0010ffff", except_key)).fetchone())
        return row is not None

    async def drain_backlog(self, bucket: str | None = None) -> tuple[int, int, float | None]:
        """(entries, bytes, time of the oldest undrained write or None)."""
        sql = "SELECT count(*), coalesce(sum(size), 0), min(since) FROM drain"
        params: tuple = ()
        if bucket is not None:
            sql += " WHERE bucket = ?"
            params = (bucket,)
        n, size, oldest = await self._read_in_pool(lambda c: c.execute(sql, params).fetchone())
        return int(n), int(size), oldest

    async def list_drain(self, bucket: str, limit: int = 1000) -> list[DrainEntry]:
        rows = await self._read_in_pool(lambda c: c.execute(
            f"SELECT {DRAIN_COLUMNS} FROM drain WHERE bucket = ? ORDER BY key LIMIT ?", (bucket, limit)).fetchall())
        return [row_to_drain(r) for r in rows]

    # copies ----------------------------------------------------------------------------------------------
    async def put_copy(self, state: CopyState) -> None:
        def op(conn):
            conn.execute(f"INSERT INTO copies ({COPY_COLUMNS}) VALUES ({placeholders(COPY_COLUMNS)}) "
                         "ON CONFLICT (bucket, key) DO UPDATE SET copy_id = excluded.copy_id, "
                         "source = excluded.source, status = excluded.status, started = excluded.started, "
                         "copied = excluded.copied, total = excluded.total, completed = excluded.completed, "
                         "description = excluded.description, version_id = excluded.version_id, "
                         "heartbeat = excluded.heartbeat",
                         (state.bucket, state.key, state.copy_id, state.source, state.status, state.started,
                          state.copied, state.total, state.completed, state.description, state.version_id,
                          state.heartbeat))
        await self._write(op)

    async def get_copy(self, bucket: str, key: str) -> CopyState | None:
        return await self._read_row(("copy", bucket, key),
                                    f"SELECT {COPY_COLUMNS} FROM copies WHERE bucket = ? AND key = ?", (bucket, key),
                                    lambda row: CopyState(*row))

    async def update_copy(self, bucket: str, key: str, copy_id: str, *, status: str | None = None,
                          copied: int | None = None, total: int | None = None, completed: float | None = None,
                          description: str | None = None, version_id: str | None = None,
                          heartbeat: float | None = None) -> bool:
        fields = {"status": status, "copied": copied, "total": total, "completed": completed,
                  "description": description, "version_id": version_id, "heartbeat": heartbeat}
        changes = {name: value for name, value in fields.items() if value is not None}

        def op(conn):
            if not changes:
                return conn.execute("SELECT 1 FROM copies WHERE bucket = ? AND key = ? AND copy_id = ? AND "
                                    "status = 'pending'", (bucket, key, copy_id)).fetchone() is not None
            assignments = ", ".join(f"{name} = ?" for name in changes)
            return conn.execute(f"UPDATE copies SET {assignments} WHERE bucket = ? AND key = ? AND copy_id = ? "
                                "AND status = 'pending'", (*changes.values(), bucket, key, copy_id)).rowcount > 0
        return await self._write(op)

    async def fail_pending_copies(self, description: str, completed: float) -> int:
        def op(conn):
            return conn.execute("UPDATE copies SET status = 'failed', description = ?, completed = ? "
                                "WHERE status = 'pending'", (description, completed)).rowcount
        return await self._write(op)

    async def get_flag(self, name: str) -> int:
        row = await self._read(lambda c: c.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone())
        return int(row[0]) if row else 0

    async def set_flag(self, name: str, value: int) -> None:
        def op(conn):
            conn.execute("INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET "
                         "value = excluded.value", (name, value))
        await self._write(op)

    # tiering: index import -------------------------------------------------------------------------------
    async def list_versions(self, bucket: str, start: str, inclusive: bool, end: str | None,
                            limit: int) -> list[ObjectVersion]:
        """Like list_objects, with whole versions (for comparing the index against a cold listing)."""
        sql, params = key_range_query(OBJECT_COLUMNS, bucket, start, inclusive, end, limit)
        return [row_to_version(r) for r in await self._read_in_pool(lambda c: c.execute(sql, params).fetchall())]

    async def apply_cold_listing(self, bucket: str, upserts: Sequence[tuple[ObjectVersion, str | None]],
                                 removals: Sequence[tuple[str, str]]) -> int:
        """Import part of a cold listing: each (version, expect) is applied as by record_cold_version; each
        (key, version_id) removal drops a clean row the cold store no longer has. Returns rows changed."""
        def op(conn):
            self._require_bucket(conn, bucket)
            for key in sorted({v.key for v, _ in upserts} | {k for k, _ in removals}):
                self.lock_key(conn, "key", bucket, key)
            now = time.time()
            changed = 0
            for version, expect in upserts:
                row = conn.execute("SELECT version_id FROM objects WHERE bucket = ? AND key = ?",
                                   (bucket, version.key)).fetchone()
                # Dirty without a row is a pending delete: the cold copy is on its way out, not to be re-imported.
                if (row[0] if row else None) != expect or _is_dirty(conn, bucket, version.key):
                    continue
                self._swap_version(conn, version, None, now)
                changed += 1
            for key, version_id in removals:
                row = conn.execute("SELECT version_id, pinned_until FROM objects WHERE bucket = ? AND key = ?",
                                   (bucket, key)).fetchone()
                if row is None or row[0] != version_id or _is_dirty(conn, bucket, key):
                    continue
                self._delete_key(conn, bucket, key, now)
                changed += 1
            return changed
        return await self._write(op)

    # jobs ------------------------------------------------------------------------------------------------
    async def create_job(self, job: Job) -> None:
        def op(conn):
            self._require_bucket(conn, job.bucket)
            conn.execute(f"INSERT INTO jobs ({JOB_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, '', 0)",
                         (job.job_id, job.kind, job.bucket, json.dumps(job.spec), job.state, job.priority,
                          job.created, job.updated, json.dumps(job.progress), job.error))
        await self._write(op)

    async def get_job(self, job_id: str) -> Job | None:
        row = await self._read(lambda c: c.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE job_id = ?",
                                                    (job_id,)).fetchone())
        return row_to_job(row) if row else None

    async def list_jobs(self, limit: int = 100, active_only: bool = False) -> list[Job]:
        sql = f"SELECT {JOB_COLUMNS} FROM jobs"
        if active_only:
            sql += " WHERE state IN ('queued', 'running')"
        sql += " ORDER BY created DESC LIMIT ?"
        return [row_to_job(r) for r in await self._read(lambda c: c.execute(sql, (limit,)).fetchall())]

    async def claim_job(self, owner: str, lease: float) -> Job | None:
        """Take the most urgent queued job, or a running one whose owner's lease expired (it crashed). A job
        another node is claiming is skipped, and the claim re-checks the job is still free."""
        def op(conn):
            now = time.time()
            free = "(state = 'queued' OR (state = 'running' AND lease_until < ?))"
            row = conn.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE {free} ORDER BY priority, created LIMIT 1"
                               f"{self.SKIP_LOCKED}", (now,)).fetchone()
            if row is None:
                return None
            if conn.execute(f"UPDATE jobs SET state = 'running', owner = ?, lease_until = ?, updated = ? "
                            f"WHERE job_id = ? AND {free}", (owner, now + lease, now, row[0], now)).rowcount == 0:
                return None
            job = row_to_job(row)
            job.state, job.owner = "running", owner
            return job
        return await self._write(op)

    async def update_job(self, job_id: str, *, owner: str | None = None, lease: float = 0.0,
                         state: str | None = None, progress: dict | None = None, error: str | None = None) -> str:
        """Record progress (and renew the lease when ``owner`` still holds it); returns the job's state, which
        may have become 'cancelled' meanwhile."""
        def op(conn):
            now = time.time()
            row = conn.execute(f"SELECT state, owner FROM jobs WHERE job_id = ?{self.FOR_UPDATE}",
                               (job_id,)).fetchone()
            if row is None:
                return "gone"
            current = row[0]
            if owner is not None and row[1] != owner:
                return "lost"
            if current in ("cancelled", "done", "failed") and state not in ("cancelled",):
                return current
            sets, params = ["updated = ?"], [now]
            if state is not None:
                sets.append("state = ?")
                params.append(state)
                current = state
            if progress is not None:
                sets.append("progress = ?")
                params.append(json.dumps(progress))
            if error is not None:
                sets.append("error = ?")
                params.append(error[:2000])
            if owner is not None and lease:
                sets.append("lease_until = ?")
                params.append(now + lease)
            conn.execute(f"UPDATE jobs SET {', '.join(sets)} WHERE job_id = ?", (*params, job_id))
            return current
        return await self._write(op)

    # consistency: atoll fsck and start-up recovery -------------------------------------------------------
    async def scan_objects(self, after: tuple[str, str] | None, limit: int) -> list[ObjectVersion]:
        sql, params = page_after(f"SELECT {OBJECT_COLUMNS} FROM objects", "bucket, key", after, limit)
        rows = await self._read_in_pool(lambda c: c.execute(sql, params).fetchall())
        return [row_to_version(r) for r in rows]

    async def scan_parts(self, after: tuple[str, int] | None, limit: int) -> list[Part]:
        sql, params = page_after(f"SELECT {PART_COLUMNS} FROM parts", "upload_id, part_number", after, limit)
        rows = await self._read_in_pool(lambda c: c.execute(sql, params).fetchall())
        return [row_to_part(r) for r in rows]

    async def scan_garbage(self, after: str, limit: int) -> list[str]:
        rows = await self._read_in_pool(lambda c: c.execute(
            "SELECT blob_id FROM garbage WHERE blob_id > ? ORDER BY blob_id LIMIT ?", (after, limit)).fetchall())
        return [r[0] for r in rows]

    async def scan_drain(self, after: tuple[str, str] | None, limit: int) -> list[tuple[DrainEntry, float]]:
        sql, params = page_after(f"SELECT {DRAIN_COLUMNS} FROM drain", "bucket, key", after, limit)
        rows = await self._read_in_pool(lambda c: c.execute(sql, params).fetchall())
        return [(row_to_drain(r), r[8]) for r in rows]

    async def stale_fills(self) -> list[str]:
        def q(c):
            return [r[0] for r in c.execute(
                "WITH partial AS MATERIALIZED (SELECT version_id FROM objects WHERE residency = 1) "
                "SELECT version_id FROM fills WHERE version_id NOT IN (SELECT version_id FROM partial) "
                "ORDER BY version_id")]
        return await self._read_in_pool(q)

    async def unreferenced_blobs(self, blob_ids: Sequence[str]) -> set[str]:
        left = set(blob_ids)
        if not left:
            return left

        def q(c):
            # One snapshot: a blob moving from a part to an object or to garbage is seen once. No index by blob id
            # (nothing on the request path needs one): one pass over every reference, the extents unpacked by the
            # engine's JSON code. With 1M objects this takes ~2.5 s on SQLite whatever the number of candidates;
            # an IN list of them in SQL cost 2 s for 10 and 37 s for 1M.
            for sql in ("SELECT blob_id FROM garbage", "SELECT blob_id FROM parts", "SELECT blob_id FROM blocks",
                        self.EXTENT_BLOB_IDS):
                for (blob_id,) in c.execute(sql):
                    left.discard(blob_id)
                if not left:
                    break
            return left
        return await self._read_snapshot(q)

    # packed store: segments (atoll/stores/meta/sql_segments.py) ----------------------------------------
    async def register_segment(self, segment_id: str, owner: str) -> None:
        await self._write(lambda conn: sql_segments.register(conn, segment_id, owner, time.time()))

    async def seal_segment(self, segment_id: str, size: int) -> bool:
        return await self._write(lambda conn: sql_segments.seal(conn, segment_id, size, time.time()))

    async def seal_orphan_segments(self, node: str, owners_alive: set[str], sizes: dict[str, int]) -> list[str]:
        return await self._write(lambda conn: sql_segments.seal_orphans(conn, owners_alive, node, sizes,
                                                                        time.time()))

    async def release_dead_compactions(self, owners: Sequence[str]) -> int:
        return await self._write(lambda conn: sql_segments.release_dead_compactions(conn, owners))

    async def list_segments(self) -> list[SegmentInfo]:
        return await self._read_in_pool(sql_segments.select_all)

    async def claim_compaction(self, owner: str, lease: float, threshold: float, settle: float) -> SegmentInfo | None:
        return await self._write(lambda conn: sql_segments.claim(self, conn, owner, time.time(), lease, threshold,
                                                                 settle))

    async def segment_refs(self, segment_id: str, after: int, limit: int) -> list[tuple[int, int, str, str]]:
        return await self._read_in_pool(lambda c: sql_segments.refs(c, segment_id, after, limit))

    async def move_packed(self, segment_id: str, owner: str, lease: float,
                          moves: Sequence[tuple[str, str, int, str, int]]) -> int:
        return await self._write(lambda conn: sql_segments.move(self, conn, segment_id, owner, time.time() + lease,
                                                                moves))

    async def retire_segment(self, segment_id: str, owner: str) -> bool:
        return await self._write(lambda conn: sql_segments.retire(conn, segment_id, owner, time.time()))

    async def forget_segment(self, segment_id: str) -> None:
        await self._write(lambda conn: conn.execute(
            "DELETE FROM segments WHERE segment_id = ? AND (state = 'retired' OR state != 'open' AND live_count = 0)",
            (segment_id,)))

    async def recount_segments(self, repair: bool) -> list[tuple[str, int, int, int, int]]:
        if repair:
            return await self._write(lambda conn: sql_segments.recount(self, self._exclude_writers(conn), True))
        return await self._read_snapshot(lambda c: sql_segments.recount(self, c, False))

    async def count_resident_bytes(self) -> tuple[int, int]:
        row = await self._read_in_pool(lambda c: c.execute(
            "SELECT (SELECT value FROM counters WHERE name = 'resident_bytes'), "
            "(SELECT coalesce(sum(size), 0) FROM objects WHERE residency > 0)").fetchone())
        return int(row[0] or 0), int(row[1])

    async def recount_resident_bytes(self) -> tuple[int, int]:
        def op(conn):
            old = conn.execute(f"SELECT value FROM counters WHERE name = 'resident_bytes'{self.FOR_UPDATE}").fetchone()
            new = conn.execute("SELECT coalesce(sum(size), 0) FROM objects WHERE residency > 0").fetchone()[0]
            conn.execute("INSERT INTO counters (name, value) VALUES ('resident_bytes', ?) ON CONFLICT (name) "
                         "DO UPDATE SET value = excluded.value", (int(new),))
            return (int(old[0]) if old else 0), int(new)
        return await self._write(op)

    # usage and quotas (#7; atoll/stores/meta/sql_usage.py) -----------------------------------------------
    async def bucket_usage(self, bucket: str) -> tuple[int, int]:
        return await self._read(lambda c: sql_usage.bucket_usage(c, bucket))

    async def tenant_usage(self, tenant: str) -> tuple[int, int]:
        return await self._read(lambda c: sql_usage.tenant_usage(c, tenant))

    async def count_usage(self) -> list[tuple[str, tuple[int, int], tuple[int, int]]]:
        return await self._read_snapshot(sql_usage.mismatches)

    async def recount_usage(self) -> list[tuple[str, tuple[int, int], tuple[int, int]]]:
        return await self._write(lambda conn: sql_usage.recount(self._exclude_writers(conn)))

    async def count_warm(self) -> list[tuple[str, int, int]]:
        return await self._read_snapshot(sql_warm.mismatches)

    async def recount_warm(self) -> list[tuple[str, int, int]]:
        return await self._write(lambda conn: sql_warm.recount(self._exclude_writers(conn)))

    def _exclude_writers(self, conn):
        """Before a recount or a rebuild: keep out writers of the rows that counters and indexes sum until the
        transaction ends (no-op where writers are serialised anyway). Returns ``conn``."""
        return conn

    async def reset_to_absent(self, bucket: str, key: str, version_id: str, new_version_id: str) -> bool:
        def op(conn):
            current = self._current(conn, bucket, key)
            if current is None:
                return False
            if (current.version_id != version_id or current.residency == "absent" or not current.cold_etag
                    or _is_dirty(conn, bucket, key)):
                return False
            _add_garbage(conn, [e.blob_id for e in current.extents], time.time())
            conn.execute("DELETE FROM fills WHERE version_id = ?", (version_id,))
            conn.execute("UPDATE objects SET version_id = ?, residency = 0, extents = '[]', visited = 0 "
                         "WHERE bucket = ? AND key = ?", (new_version_id, bucket, key))
            _account(conn, -current.size)
            return True
        return await self._write(op)

    async def drop_version(self, bucket: str, key: str, version_id: str) -> ObjectVersion | None:
        def op(conn):
            current = self._current(conn, bucket, key)
            if current is None or current.version_id != version_id:
                return None
            conn.execute("DELETE FROM drain WHERE bucket = ? AND key = ? AND op = 'put' AND version_id = ?",
                         (bucket, key, version_id))
            return self._delete_key(conn, bucket, key, time.time())
        return await self._write(op)

    async def drop_part(self, upload_id: str, part_number: int, blob_id: str) -> bool:
        def op(conn):
            if conn.execute("DELETE FROM parts WHERE upload_id = ? AND part_number = ? AND blob_id = ?",
                            (upload_id, part_number, blob_id)).rowcount == 0:
                return False
            _add_garbage(conn, [blob_id], time.time())
            return True
        return await self._write(op)

    async def forget_fill(self, version_id: str) -> bool:
        def op(conn):
            # No index by version id: a scan, but fsck calls this only for the block maps it found stale.
            if conn.execute("SELECT 1 FROM objects WHERE version_id = ? AND residency = 1 LIMIT 1",
                            (version_id,)).fetchone():
                return False
            return conn.execute("DELETE FROM fills WHERE version_id = ?", (version_id,)).rowcount > 0
        return await self._write(op)

    # bulk tools ------------------------------------------------------------------------------------------
    def bulk_insert_sync(self, versions: Sequence[ObjectVersion]) -> None:
        """Insert many new versions in one transaction (bench and import tools; not for the request path)."""
        params = [version_params(v) for v in versions]

        def op(conn):
            conn.executemany("DELETE FROM objects WHERE bucket = ? AND key = ?", [p[:2] for p in params])
            conn.executemany(f"INSERT INTO objects ({OBJECT_COLUMNS}) VALUES ({OBJECT_PLACEHOLDERS})", params)
        self._write_blocking(op)


# transaction helpers (inside a write) ------------------------------------------------------------------------
def _add_garbage(conn, blob_ids: Sequence[str], now: float) -> None:
    # A record in a segment is not garbage to collect: it is dead once no object points at it (packed_refs).
    blob_ids = [b for b in blob_ids if not b.startswith("s")]
    if blob_ids:
        conn.executemany("INSERT INTO garbage (blob_id, since) VALUES (?, ?) ON CONFLICT (blob_id) DO NOTHING",
                         [(b, now) for b in blob_ids])


def _resident_size(version: ObjectVersion) -> int:
    """Bytes a version holds on the warm tier; a partial fill counts whole, as its sparse blob may become so."""
    return 0 if version.residency == "absent" else version.size


def _account(conn, delta: int) -> None:
    if delta:
        # PostgreSQL's connection applies it with the commit (postgres.py): every write shares this one row.
        add = getattr(conn, "add_resident_bytes", None)
        if add is not None:
            add(delta)
        else:
            conn.execute("UPDATE counters SET value = value + ? WHERE name = 'resident_bytes'", (delta,))


def _journal(conn, bucket: str, key: str, op: str, version_id: str, size: int, now: float) -> None:
    # A replaced entry keeps its claim (not_before): the drainer uploading the older bytes must finish before
    # anyone uploads the newer ones, or the older could land last. finish_drain makes it due again at once.
    conn.execute(f"INSERT INTO drain ({DRAIN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, 0, '', 0) ON CONFLICT (bucket, key) "
                 "DO UPDATE SET op = excluded.op, version_id = excluded.version_id, size = excluded.size, "
                 "attempts = 0, last_error = ''", (bucket, key, op, version_id, size, now))


def _is_dirty(conn, bucket: str, key: str) -> bool:
    return conn.execute("SELECT 1 FROM drain WHERE bucket = ? AND key = ?", (bucket, key)).fetchone() is not None


def _drop_upload(conn, upload_id: str, now: float) -> None:
    blobs = [r[0] for r in conn.execute("SELECT blob_id FROM parts WHERE upload_id = ?", (upload_id,)).fetchall()]
    _add_garbage(conn, blobs, now)
    conn.execute("DELETE FROM parts WHERE upload_id = ?", (upload_id,))
    conn.execute("DELETE FROM uploads WHERE upload_id = ?", (upload_id,))


def _drop_blocks(conn, where: str, params: tuple, now: float) -> int:
    """Remove the uncommitted blocks ``where`` selects; their blobs become garbage."""
    blobs = [r[0] for r in conn.execute(f"SELECT blob_id FROM blocks {where}", params).fetchall()]
    _add_garbage(conn, blobs, now)
    conn.execute(f"DELETE FROM blocks {where}", params)
    return len(blobs)
