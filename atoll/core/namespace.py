"""The namespace: buckets, objects and multipart uploads, with ownership checks and durable writes.

Front ends call this with an authenticated ``Identity`` (or None for anonymous) and plain values; it talks to the
metadata store and the data store. The durability order for every write is fixed here, once:

    body → temp blob (write, fsync) → rename → fsync dir → metadata commit → acknowledge

A crash before the metadata commit leaves a temp file (removed at start) or an unreferenced blob (reclaimed by the
next start, atoll.core.recovery; found by fsck); a crash after it leaves the new version in place. Nothing is
acknowledged before both are on disk.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import ipaddress
import logging
import os
import secrets
import string
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, AsyncIterator, Awaitable, Callable, Generic, Sequence, TypeVar

from atoll import errors, metrics
from atoll.core import checksums as cks
from atoll.core import cluster, ingest
from atoll.core.conditions import ReadConditions, check as check_conditions
from atoll.core.listing import ListPage, list_page
from atoll.core.models import RESIDENT, ROLES, Bucket, Extent, Identity, Link, ObjectVersion, Part, Tenant, Upload
from atoll.core.models import tenant_name_for_key
from atoll.core import blocks as blk
from atoll.core.models import Block
from atoll.core.models import BucketProperties
from atoll.core import leases
from atoll.core import quota
from atoll.core import permissions
from atoll.core import packing
from atoll.core.tasks import cancel_and_wait
from atoll.core.tiering.listing import list_linked
from atoll.stores.data.base import DataStore
from atoll.stores.data.segments import is_segment
from atoll.stores.cold.store import Traffic, cold_path
from atoll.stores.meta.base import MetaStore, WriteCondition

if TYPE_CHECKING:
    from atoll.core.compaction import Compactor
    from atoll.core.tiering.tier import Tiering

log = logging.getLogger("atoll.namespace")

MAX_KEY_BYTES = 1024
MIN_PART_SIZE = 5 << 20
MAX_PART_NUMBER = 10000
MAX_OBJECT_SIZE = 5 << 40  # S3's 5 TiB
MAX_SINGLE_PUT = 5 << 30  # S3's 5 GiB for one PutObject or UploadPart
GC_GRACE_SECONDS = 10.0  # a reader that looked up a row just before an overwrite can still open its blob
_IDENTITY_TTL = 5.0
SMALL_OBJECT_CACHE_MAX = 64 << 10  # objects up to this size are kept in memory when read
_BUCKET_TTL = 1.0
PUBLIC_ACCESS_LEVELS = ("", "blob", "container")

# Given the digests of a staged body and its size, a front end checks what the client declared and returns
# the checksums to store (algorithm -> base64); it raises BadDigest/InvalidDigest on a mismatch.
Verifier = Callable[[dict[str, bytes], int], dict[str, str]]
T = TypeVar("T")


_SECRET_ALPHABET = string.ascii_letters + string.digits


def new_secret_key() -> str:
    """40 random letters and digits (238 bits): no '-' or '_' that a shell or a CLI could take for an option."""
    return "".join(secrets.choice(_SECRET_ALPHABET) for _ in range(40))


def new_account_key() -> str:
    """An Azure-style account key: base64 of 64 random bytes (Shared Key signs with the decoded bytes)."""
    return base64.b64encode(secrets.token_bytes(64)).decode()


def validate_account_name(name: str) -> None:
    """Azure's rule: 3 to 24 lower-case letters and digits (it is also a DNS label in host-style URLs)."""
    if not (3 <= len(name) <= 24 and name.isascii() and all(c.islower() or c.isdigit() for c in name)):
        raise errors.InvalidArgument("An account name is 3 to 24 lower-case letters and digits.")


def validate_bucket_name(name: str) -> None:
    ok = 3 <= len(name) <= 63 and all(c.islower() or c.isdigit() or c in ".-" for c in name) and name.isascii()
    ok = ok and name[0].isalnum() and name[-1].isalnum() and ".." not in name and ".-" not in name
    ok = ok and "-." not in name and not name.startswith(("xn--", "sthree-")) and not name.endswith(("-s3alias", "--ol-s3"))
    if ok:
        try:
            ipaddress.IPv4Address(name)
            ok = False
        except ValueError:
            pass
    if not ok:
        raise errors.InvalidBucketName("The specified bucket is not valid.", bucket=name)


def validate_tenant_name(name: str) -> None:
    """Like a bucket name's DNS-label rules: 3 to 63 lower-case letters, digits and '-', alphanumeric at both ends."""
    ok = 3 <= len(name) <= 63 and name.isascii() and all(c.islower() or c.isdigit() or c == "-" for c in name)
    if not (ok and name[0].isalnum() and name[-1].isalnum()):
        raise errors.InvalidArgument("A tenant name is 3 to 63 lower-case letters, digits and '-', starting and "
                                     "ending with a letter or digit.")


def validate_scope(scope: str) -> str:
    """A permission scope: a bucket name, or "bucket/prefix" (the prefix may be anything a key may start with)."""
    bucket, _, prefix = scope.partition("/")
    validate_bucket_name(bucket)
    if len(prefix.encode()) > MAX_KEY_BYTES:
        raise errors.InvalidArgument("A scope's prefix is at most 1024 bytes.")
    return scope


def validate_key(key: str) -> None:
    if not key:
        raise errors.InvalidArgument("Object key must not be empty.")
    try:
        encoded = key.encode("utf-8")
    except UnicodeEncodeError:
        raise errors.InvalidArgument("Object key must be valid UTF-8.") from None
    if len(encoded) > MAX_KEY_BYTES:
        raise errors.KeyTooLong("Your key is too long.", key=key[:64])
    if "\x00" in key:  # no XML listing can carry it, and PostgreSQL text cannot hold it
        raise errors.InvalidArgument("Object key must not contain a NUL character.")


@dataclass(slots=True)
class CopySource:
    bucket: str
    key: str
    conditions: ReadConditions = ReadConditions()
    byte_range: tuple[int, int] | None = None  # inclusive, for UploadPartCopy


class _HitCache(Generic[T]):
    """Lookups that found something, kept for ``ttl`` seconds. Misses are never kept: what another worker process
    created a moment ago must be found at once (a new access key, or a bucket a client HEADs, creates and then
    writes to over different connections)."""

    def __init__(self, ttl: float, limit: int = 10000) -> None:
        self._ttl = ttl
        self._limit = limit
        self._entries: dict[str, tuple[T, float]] = {}

    async def get(self, name: str, fetch: Callable[[str], Awaitable[T | None]]) -> T | None:
        now = time.monotonic()
        cached = self._entries.get(name)
        if cached is not None and now - cached[1] < self._ttl:
            return cached[0]
        found = await fetch(name)
        if found is None:
            return None
        if len(self._entries) > self._limit:
            self._entries.clear()
        self._entries[name] = (found, now)
        return found

    def forget(self, name: str) -> None:
        self._entries.pop(name, None)


class Namespace:
    def __init__(self, meta: MetaStore, data: DataStore, *, region: str = "us-east-1",
                 min_part_size: int = MIN_PART_SIZE, small_cache_bytes: int = 64 << 20,
                 tier: "Tiering | None" = None, uncommitted_block_ttl: float = blk.UNCOMMITTED_BLOCK_TTL,
                 packed: packing.PackedSettings | None = None) -> None:
        self.meta = meta
        self.data = data
        self.tier = tier
        self.region = region
        self.min_part_size = min_part_size
        self.uncommitted_block_ttl = uncommitted_block_ttl
        self._identities: _HitCache[Identity] = _HitCache(_IDENTITY_TTL)
        self._account_identities: _HitCache[Identity] = _HitCache(_IDENTITY_TTL)
        self._bucket_properties: _HitCache[BucketProperties] = _HitCache(_BUCKET_TTL)
        self._buckets: _HitCache[Bucket] = _HitCache(_BUCKET_TTL)
        self._tenants: _HitCache[Tenant] = _HitCache(_BUCKET_TTL)
        self._quota_admission = quota.Admission()
        self.governor = None  # atoll.core.qos.Governor of a serving process (rate limits, counters)
        self._gc_task: asyncio.Task | None = None
        self.small_cache_bytes = small_cache_bytes
        self._small_objects: OrderedDict[str, bytes] = OrderedDict()
        self._small_bytes = 0
        # The packed store (#8): single-PUT bodies up to packed_max_size go to segment files. The writer and the
        # compactor belong to a serving process (start_background); without them every body is a file.
        self.packed_settings = packed or packing.PackedSettings(max_size=0)
        self.packed_max_size = self.packed_settings.max_size
        self.packed: packing.PackedWriter | None = None
        self.compactor: "Compactor | None" = None

    # identities --------------------------------------------------------------------------------------
    async def identity(self, access_key: str) -> Identity | None:
        return await self._identities.get(access_key, self.meta.get_identity)

    async def create_identity(self, display_name: str, *, access_key: str | None = None,
                              secret_key: str | None = None, is_root: bool = False,
                              account_name: str = "", tenant: str | None = None, role: str = "admin",
                              scopes: Sequence[str] = ()) -> Identity:
        """``account_name``: also give the identity an Azure Blob account of that name, with a new key.
        ``tenant``: the tenant it joins (NoSuchTenant if there is none); None makes a tenant of its own, named
        after its access key, so identities created without one stay isolated from each other (as before #7)."""
        if account_name:
            validate_account_name(account_name)
        if role not in ROLES:
            raise errors.InvalidArgument(f"A role is one of {', '.join(ROLES)}.")
        scopes = tuple(validate_scope(scope) for scope in scopes)
        access_key = access_key or "AK" + secrets.token_hex(9).upper()
        if tenant is None:
            taken = {t.name for t in await self.meta.list_tenants()}
            tenant = tenant_name_for_key(access_key, taken)
            await self.meta.put_tenant(Tenant(tenant, time.time()))
        identity = Identity(
            access_key=access_key,
            secret_key=secret_key or new_secret_key(),
            owner_id=secrets.token_hex(32),
            display_name=display_name,
            created=time.time(),
            is_root=is_root,
            account_name=account_name,
            account_key=new_account_key() if account_name else "",
            tenant=tenant,
            role=role,
            scopes=scopes,
        )
        await self.meta.put_identity(identity)
        return identity

    async def identity_by_account(self, account_name: str) -> Identity | None:
        return await self._account_identities.get(account_name, self.meta.get_identity_by_account)

    # buckets -----------------------------------------------------------------------------------------
    async def _bucket(self, name: str) -> Bucket | None:
        return await self._buckets.get(name, self.meta.get_bucket)

    async def bucket_for(self, identity: Identity | None, name: str, action: str = "read", key: str | None = None,
                         prefix: str | None = None) -> Bucket:
        """The bucket if it exists and ``identity`` may do ``action`` (read | write | admin) there, on ``key`` or
        listing under ``prefix`` when given (atoll.core.permissions); NoSuchBucket or AccessDenied otherwise."""
        bucket = await self._bucket(name)
        if bucket is None:
            raise errors.NoSuchBucket(bucket=name)
        permissions.authorize(identity, bucket, action, key, prefix)
        return bucket

    async def tenant(self, name: str) -> Tenant | None:
        """A tenant's settings, cached for a second (limits set from the CLI reach every worker within it)."""
        return await self._tenants.get(name, self.meta.get_tenant)

    async def create_bucket(self, identity: Identity, name: str, region: str | None = None, *,
                            tenant: str | None = None) -> Bucket:
        """``tenant``: an operator creating the bucket for another tenant (the CLI's --tenant); else the
        bucket belongs to the creator's tenant."""
        validate_bucket_name(name)
        if not permissions.may_create_bucket(identity, name) or (tenant is not None and not identity.operator):
            raise errors.AccessDenied(f"Access Denied: the identity may not create bucket {name}.", bucket=name)
        if region and region != self.region:
            raise errors.InvalidArgument(f"This island serves region {self.region}; LocationConstraint "
                                         f"{region} is not available.", code="InvalidLocationConstraint")
        bucket = Bucket(name=name, owner_id=identity.owner_id, created=time.time(), region=self.region,
                        tenant=tenant or identity.tenant)
        await self.meta.create_bucket(bucket)
        self._buckets.forget(name)
        return bucket

    async def bucket_properties(self, name: str) -> BucketProperties:
        """Public access, metadata and access policies of a bucket (defaults when never set). No ownership check:
        the front end asks this to decide whether an anonymous read is allowed at all."""
        found = await self._bucket_properties.get(name, self.meta.get_bucket_properties)
        return found if found is not None else BucketProperties(name)

    async def set_bucket_properties(self, identity: Identity, props: BucketProperties) -> BucketProperties:
        await self.bucket_for(identity, props.bucket, "admin")
        if props.public_access not in PUBLIC_ACCESS_LEVELS:
            raise errors.InvalidArgument(f"Public access level {props.public_access[:32]!r} is not valid.")
        props.modified = time.time()
        await self.meta.put_bucket_properties(props)
        self._bucket_properties.forget(props.bucket)
        return props

    async def list_buckets(self, identity: Identity) -> list[Bucket]:
        return permissions.visible_buckets(
            identity, await self.meta.list_buckets(None if identity.operator else identity.tenant))

    async def delete_bucket(self, identity: Identity, name: str, *, lease_id: str | None = None) -> None:
        await self.bucket_for(identity, name, "admin")
        await self.check_lease(name, "", lease_id)
        await self.meta.delete_bucket(name)
        self._buckets.forget(name)
        self._bucket_properties.forget(name)

    # reading -----------------------------------------------------------------------------------------
    async def head_object(self, identity: Identity | None, bucket: str, key: str) -> ObjectVersion:
        found = await self.bucket_for(identity, bucket, "read", key)
        version = await self.meta.get_object(bucket, key)
        if self.tier is not None:
            link = await self.tier.link(bucket)
            if link is not None:
                version = await self.tier.resolve(link, found.owner_id, key, version)
        if version is None:
            raise errors.NoSuchKey(bucket=bucket, key=key)
        return version

    def open_range(self, version: ObjectVersion, start: int, end: int) -> list[tuple[int, int, int]]:
        """Open the blobs holding bytes [start, end) of ``version``: a list of (fd, offset, length) that the
        caller must close. Raises FileNotFoundError if a blob vanished (the version was replaced and collected)."""
        opened: list[tuple[int, int, int]] = []
        position = 0
        try:
            for extent in version.extents:
                extent_end = position + extent.length
                if extent_end > start and position < end:
                    lo = max(start, position) - position
                    hi = min(end, extent_end) - position
                    fd = self._open_extent(extent.blob_id)
                    opened.append((fd, extent.offset + lo, hi - lo))
                position = extent_end
                if position >= end:
                    break
        except BaseException:
            for fd, _, _ in opened:
                os.close(fd)
            raise
        return opened

    def _open_extent(self, blob_id: str) -> int:
        """An fd of the blob or segment holding an extent, for the caller to close. A segment's comes from the
        process's cache of open segments (a dup: no path lookup per request)."""
        if is_segment(blob_id):
            return self.data.segment_readers.dup(blob_id)
        return self.data.open_blob(blob_id)

    def _small_content(self, version: ObjectVersion) -> bytes | None:
        """The whole content of a small single-blob version, served from memory when hot.

        Keyed by version id, which names immutable bytes, so the cache never needs invalidating: an overwrite
        makes a new version and the old entry simply ages out. Reading a miss is one pread of at most
        SMALL_OBJECT_CACHE_MAX bytes, from the page cache in the common case.
        """
        if version.size > SMALL_OBJECT_CACHE_MAX or len(version.extents) != 1:
            return None
        cache = self._small_objects
        data = cache.get(version.version_id)
        if data is not None:
            cache.move_to_end(version.version_id)
            return data
        extent = version.extents[0]
        if is_segment(extent.blob_id):
            data = self.data.segment_readers.pread(extent.blob_id, extent.offset, extent.length)
        else:
            data = self._pread_extent(extent)
        if len(data) != extent.length:
            raise errors.Unavailable("Object data is shorter than its metadata; run atoll fsck.")
        cache[version.version_id] = data
        self._small_bytes += len(data)
        while self._small_bytes > self.small_cache_bytes and cache:
            _, evicted = cache.popitem(last=False)
            self._small_bytes -= len(evicted)
        return data

    async def open_object(self, identity: Identity | None, bucket: str, key: str,
                          byte_range: Callable[[ObjectVersion], tuple[int, int]],
                          conditions: ReadConditions | None = None
                          ) -> tuple[ObjectVersion, int, int, bytes | list[tuple[int, int, int]] | AsyncIterator[bytes]]:
        """Look up, check conditions, and open the bytes of a key in one step. ``byte_range(version)`` returns
        [start, end) (it may raise InvalidRange). The bytes come back as ``bytes`` (small objects, from memory),
        as open (fd, offset, length) extents for sendfile, or, for an object of a linked bucket that is not yet
        warm, as an iterator that fills it on the way. Retries if an overwrite won the race for the blob."""
        for attempt in (0, 1, 2):
            version = await self.head_object(identity, bucket, key)
            link = None
            if self.tier is not None and version.residency != RESIDENT:
                link = await self.tier.link(bucket)
                if link is not None:
                    version = await self.tier.with_attributes(link, version)
            if conditions is not None and not conditions.empty:
                check_conditions(conditions, version.etag, version.last_modified)
            start, end = byte_range(version)
            if self.tier is not None:
                if version.residency != RESIDENT:
                    if link is not None:
                        try:
                            stream = await self.tier.read(link, version, start, end)
                        except errors.ColdObjectChanged:
                            if attempt == 2:
                                raise errors.ColdStoreUnavailable("The object keeps changing in the cold store; "
                                                                  "retry later.") from None
                            continue
                        if stream is None:
                            continue  # it became resident meanwhile
                        return version, start, end, stream
                elif version.warm_seq > 0:
                    self.tier.touch(version)
            try:
                small = self._small_content(version)
                if small is not None:
                    return version, start, end, small if (start, end) == (0, version.size) else small[start:end]
                return version, start, end, self.open_range(version, start, end)
            except FileNotFoundError:
                if attempt == 2:
                    log.error("blob of %s/%s missing", bucket, key[:200])
                    raise errors.Unavailable("Object data is temporarily unavailable.") from None
        raise AssertionError("unreachable")

    # writing -----------------------------------------------------------------------------------------
    async def _check_write_condition(self, bucket: str, key: str, condition: WriteCondition | None) -> None:
        """Fail fast, before reading a body, when a condition already cannot hold (re-checked atomically later)."""
        if condition is None:
            return
        current = await self.meta.get_object(bucket, key)
        if condition.if_none_match and current is not None:
            raise errors.PreconditionFailed(condition="If-None-Match")
        if condition.if_match is not None:
            if current is None:
                raise errors.NoSuchKey(bucket=bucket, key=key)
            if condition.if_match != "*" and condition.if_match != current.etag:
                raise errors.PreconditionFailed(condition="If-Match")

    async def _admit_write(self, size: int = 1) -> None:
        """Before a body of ``size`` bytes (at least 1: a body of unknown size) is staged: when the warm tier has
        no room for it and eviction cannot free it (what is left is dirty or pinned), the client is told to slow
        down and retry (503 SlowDown, Retry-After); reads go on. A tier exactly full makes room first."""
        tier = self.tier
        size = max(size, 1)
        if tier is None or await tier.has_room(size):
            return
        evictor = getattr(tier, "evictor", None)
        if evictor is not None:
            await evictor.make_room(size)
            if await tier.has_room(size):
                return
        raise errors.InsufficientStorage("The warm tier is full of data not yet safe in the cold store (or pinned); "
                                         "retry later.", retry_after=5)

    async def _quota_hold(self, bucket: str, declared: int | None, key: str | None = None) -> Callable[[], None]:
        """Early quota admission (atoll.core.quota): refuse at once a body of ``declared`` bytes (None: unknown)
        that cannot fit, and hold its bytes until the returned release is called (when the body is stored).
        ``key``: the write replaces that key's version, whose bytes it frees; only a new key adds an object."""
        found = await self._bucket(bucket)
        tenant = await self.tenant(found.tenant) if found is not None else None
        scopes = []
        for kind, name, limits in (("bucket", bucket, found.limits if found else None),
                                   ("tenant", found.tenant if found else "", tenant.limits if tenant else None)):
            if limits is not None and (limits.max_bytes or limits.max_objects):
                usage = await (self.meta.bucket_usage(name) if kind == "bucket" else self.meta.tenant_usage(name))
                scopes.append(quota.Scope(kind, name, limits.max_bytes, limits.max_objects, *usage))
        if not scopes:
            return _nothing_held
        growth, new_objects = declared or 0, 0
        if key is not None:
            current = await self.meta.get_object(bucket, key)
            growth -= current.size if current is not None else 0
            new_objects = 0 if current is not None else 1
        held = self._quota_admission.admit(scopes, bucket, growth, new_objects)
        released = False

        def release() -> None:  # once, whichever path (packed or file) gets there first
            nonlocal released
            if not released:
                released = True
                self._quota_admission.release(held, growth)
        return release

    async def _stage_verified(self, body: AsyncIterator[bytes], algorithms: set[str], verify: Verifier,
                              max_size: int) -> tuple[ingest.StagedBlob, dict[str, str]]:
        await self._admit_write()
        staged = await ingest.stage(self.data, body, {"md5", *algorithms}, max_size=max_size)
        try:
            stored = verify(staged.digests, staged.size)
            await staged.commit()
        except BaseException:
            await staged.abort()
            raise
        return staged, stored

    async def _commit_version(self, version: ObjectVersion, condition: WriteCondition | None,
                              link: Link | None = None) -> ObjectVersion:
        try:
            journal = await self._prepare_linked(link, version)
            await self.meta.put_object(version, condition, journal=journal)
        except BaseException:
            await self._discard_blobs([e.blob_id for e in version.extents])
            raise
        self._after_linked_write(link, version.key)
        return version

    # tiering hooks -----------------------------------------------------------------------------------
    async def _write_link(self, bucket: str, key: str | None) -> Link | None:
        """The link of a bucket being written (None for a local bucket); refuses writes to a read-only cache
        and keys the cold store cannot hold."""
        if self.tier is None:
            return None
        link = await self.tier.link(bucket)
        if link is None:
            return None
        if not link.writable:
            raise errors.ReadOnlyBucket(f"Bucket {bucket} is a read-only cache of its cold store ({link.mode} "
                                        "mode); write to the cold store itself.", bucket=bucket)
        if key is not None:
            cold_path(key)
        return link

    async def _prepare_linked(self, link: Link | None, version: ObjectVersion) -> bool:
        """Before the metadata commit: make the version evictable once clean, and on a write-through bucket
        send it to the cold store first (the client's acknowledgement then means both copies exist). Returns
        whether the write is journaled for the drain: always on write-back; on write-through only while its
        cold store is unreachable and ``writethrough_on_partition = "writeback"``."""
        if link is None:
            return False
        from atoll.core.tiering.tier import warm_seq_now

        version.warm_seq = warm_seq_now()
        if link.mode != "writethrough":
            return link.mode == "writeback"
        try:
            cold = await self.tier.upload(link, version, Traffic.DEMAND)
        except errors.ColdStoreUnavailable as exc:
            return self._degrade_writethrough(link, exc)
        version.cold_etag, version.cold_mtime = cold.etag, cold.mtime
        return False

    def _degrade_writethrough(self, link: Link, failure: errors.ColdStoreUnavailable) -> bool:
        """A write-through write whose cold store cannot be reached: refused (the 503 stands) or, if configured,
        journaled like write-back and drained after the partition."""
        if self.tier.settings.writethrough_on_partition != "writeback":
            raise failure
        metrics.WRITETHROUGH_DEGRADED.labels(link.bucket).inc()
        log.warning("bucket %s: cold store unreachable; write-through write journaled for the drain", link.bucket)
        return True

    async def _delete_linked(self, link: Link | None, key: str) -> bool:
        """The cold side of a delete; returns whether the delete is journaled (as ``_prepare_linked``)."""
        if link is None or link.mode != "writethrough":
            return _journaled(link)
        try:
            await self.tier.store(link).delete(key, Traffic.DEMAND)
        except errors.ColdStoreUnavailable as exc:
            return self._degrade_writethrough(link, exc)
        return False

    def _after_linked_write(self, link: Link | None, key: str) -> None:
        if link is not None:
            self.tier.after_write(link, key)

    async def _resident(self, identity: Identity | None, bucket: str, key: str) -> ObjectVersion:
        """The current version of a key with all its bytes warm (copy sources read blobs directly)."""
        for _ in range(3):
            version = await self.head_object(identity, bucket, key)
            if self.tier is None or version.residency == RESIDENT:
                return version
            link = await self.tier.link(bucket)
            if link is None:
                break
            try:
                stream = await self.tier.read(link, version, 0, version.size)
            except errors.ColdObjectChanged:
                continue
            if stream is not None:
                async for _ in stream:
                    pass
        version = await self.head_object(identity, bucket, key)
        if version.residency != RESIDENT:
            raise errors.InsufficientStorage("The source object cannot be made warm now; retry later.")
        return version

    def _pread_extent(self, extent: Extent) -> bytes:
        """An extent's bytes through a file of its own (any thread; short if the blob is)."""
        fd = self.data.open_blob(extent.blob_id)
        try:
            return os.pread(fd, extent.length, extent.offset)
        finally:
            os.close(fd)

    def _read_extents_blocking(self, extents: Sequence[Extent]) -> bytes:
        """The bytes of a small version (a thread's work: it opens blob files). FileNotFoundError if a blob went."""
        pieces = []
        for extent in extents:
            piece = self._pread_extent(extent)
            if len(piece) != extent.length:
                raise FileNotFoundError(f"blob {extent.blob_id} is shorter than its extent")
            pieces.append(piece)
        return b"".join(pieces)

    async def _discard_blobs(self, blob_ids: Sequence[str]) -> None:
        if blob_ids:
            await ingest.run_io(lambda: [self.data.delete(b) for b in blob_ids])

    async def put_object(self, identity: Identity, bucket: str, key: str, body: AsyncIterator[bytes], *,
                         headers: dict[str, str], user_meta: dict[str, str], algorithms: set[str],
                         verify: Verifier, condition: WriteCondition | None = None,
                         lease_id: str | None = None, declared_size: int | None = None) -> ObjectVersion:
        """``declared_size``: the body's length as the client announced it (None: unknown), for early quota
        admission; the quota check at commit is exact either way."""
        validate_key(key)
        await self.bucket_for(identity, bucket, "write", key)
        if lease_id is not None or declared_size is None or declared_size > self.packed_max_size:
            # Fail fast before a large body; a small one is judged by the commit's own lease check alone (same
            # rule, same answer), which spares a storm of small PUTs a lookup each.
            await self.check_lease(bucket, key, lease_id)
        link = await self._write_link(bucket, key)
        await self._check_write_condition(bucket, key, condition)
        release = await self._quota_hold(bucket, declared_size, key)
        try:
            if self.packed_max_size and self.packed is not None and (
                    declared_size is None or declared_size <= self.packed_max_size):
                pieces, size, whole = await packing.gather(body, self.packed_max_size)
                if whole is None:
                    version = ObjectVersion(
                        bucket=bucket, key=key, version_id=self.data.new_blob_id(), size=size, etag="",
                        last_modified=0.0, headers=headers, user_meta=user_meta, owner_id=identity.owner_id)
                    return await self._put_packed(version, b"".join(pieces), algorithms, verify,
                                                  _lease_guarded(condition, lease_id), link, release)
                body = whole  # larger than it said, or than packing takes: a file after all
            staged, stored = await self._stage_verified(body, algorithms, verify, MAX_SINGLE_PUT)
        finally:
            release()
        version = ObjectVersion(
            bucket=bucket, key=key, version_id=staged.blob_id, size=staged.size,
            etag=staged.digests["md5"].hex(), last_modified=time.time(), headers=headers, user_meta=user_meta,
            checksums=stored, checksum_type="FULL_OBJECT" if stored else "",
            extents=[Extent(staged.blob_id, 0, staged.size)], owner_id=identity.owner_id,
        )
        return await self._commit_version(version, _lease_guarded(condition, lease_id), link)

    async def _put_packed(self, version: ObjectVersion, payload: bytes, algorithms: set[str], verify: Verifier,
                          condition: WriteCondition, link: Link | None, release: Callable[[], None]) -> ObjectVersion:
        """A small body as a record of this process's open segment (atoll.core.packing): verified, made durable by
        the segment's group commit, then committed like any version. If compaction closed the segment before the
        commit (SegmentClosed, rare: it needs a full segment compacted within seconds), the record is written
        again into the open segment."""
        await self._admit_write(len(payload))
        digests = await packing.digests(payload, {"md5", *algorithms})
        stored = verify(digests, len(payload))
        release()
        version.etag = digests["md5"].hex()
        version.checksums, version.checksum_type = stored, "FULL_OBJECT" if stored else ""
        for attempt in (0, 1):
            segment, offset = await self.packed.append(payload)
            version.extents = [Extent(segment, offset, len(payload))]
            version.last_modified = time.time()
            try:
                return await self._commit_version(version, condition, link)
            except errors.SegmentClosed:
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")

    async def delete_object(self, identity: Identity, bucket: str, key: str, *, lease_id: str | None = None) -> None:
        validate_key(key)
        await self.bucket_for(identity, bucket, "write", key)
        await self.check_lease(bucket, key, lease_id)
        link = await self._write_link(bucket, key)
        journal = await self._delete_linked(link, key)
        await self.meta.delete_object(bucket, key, journal=journal)
        self._after_linked_write(link, key)

    async def delete_objects(self, identity: Identity, bucket: str, keys: Sequence[str], *,
                             despite_leases: bool = False) -> list[str | None]:
        """Delete many keys at once; per key None on success or an error message (invalid key, LeaseIdMissing).
        ``despite_leases``: leased keys go too (Azure's Delete Container removes leased blobs). A key the identity
        may not write is refused alone ("AccessDenied"), as S3 does."""
        found = await self.bucket_for(identity, bucket, "read")
        outcome: list[str | None] = []
        valid = []
        for key in keys:
            try:
                validate_key(key)
                permissions.authorize(identity, found, "write", key)
                outcome.append(None)
                valid.append(key)
            except errors.AtollError as exc:
                outcome.append(type(exc).__name__)
        if valid and not despite_leases:
            # One range query for the leases of the whole batch (1,000 keys), not one lookup per key.
            held = await self.meta.list_leases(bucket, min(valid), max(valid))
            now = time.time()
            for at, key in enumerate(keys):
                lease = held.get(key) if outcome[at] is None else None
                if lease is not None and lease.held(now) and await self.meta.get_object(bucket, key) is not None:
                    valid.remove(key)
                    outcome[at] = "LeaseIdMissing"
        if valid:
            link = await self._write_link(bucket, None)
            if link is not None:
                for at, key in enumerate(keys):
                    try:
                        cold_path(key)
                    except errors.InvalidArgument:
                        if key in valid:
                            valid.remove(key)
                            outcome[at] = "InvalidArgument"
            journal = _journaled(link)
            if link is not None and link.mode == "writethrough":
                for key in valid:
                    journal = await self._delete_linked(link, key) or journal
            await self.meta.delete_objects(bucket, valid, journal=journal)
            for key in valid:
                self._after_linked_write(link, key)
        return outcome

    async def copy_object(self, identity: Identity, source: CopySource, bucket: str, key: str, *,
                          replace_metadata: bool, headers: dict[str, str], user_meta: dict[str, str],
                          condition: WriteCondition | None = None, lease_id: str | None = None) -> ObjectVersion:
        validate_key(key)
        src = await self.head_object(identity, source.bucket, source.key)
        check_conditions(source.conditions, src.etag, src.last_modified) if not source.conditions.empty else None
        await self.bucket_for(identity, bucket, "write", key)
        await self.check_lease(bucket, key, lease_id)
        link = await self._write_link(bucket, key)
        if src.residency != RESIDENT:
            src = await self._resident(identity, source.bucket, source.key)
        now = time.time()
        if source.bucket == bucket and source.key == key:
            if not replace_metadata:
                raise errors.InvalidRequest(
                    "This copy request is illegal because it is trying to copy an object to itself without "
                    "changing the object's metadata, storage class, website redirect location or encryption "
                    "attributes.")
            journal = await self._prepare_linked(link, dataclasses.replace(src, headers=headers,
                                                                           user_meta=user_meta))
            replaced = await self.meta.replace_metadata(bucket, key, src.version_id, headers, user_meta, now,
                                                        journal=journal)
            self._after_linked_write(link, key)
            return replaced
        await self._check_write_condition(bucket, key, condition)
        (await self._quota_hold(bucket, src.size, key))()
        await self._admit_write(src.size)
        new_extents = []
        packed_copy = self.packed_max_size and self.packed is not None and src.size <= self.packed_max_size
        try:
            if packed_copy:  # a small copy is a record too (s3fs and DCP rename small files by copying)
                payload = await ingest.run_io(self._read_extents_blocking, src.extents)
                segment, offset = await self.packed.append(payload)
                new_extents.append(Extent(segment, offset, len(payload)))
            for extent in src.extents if not packed_copy else ():
                writer = await ingest.run_data_io(self.data.create)
                try:
                    await ingest.read_range_into(self.data, writer, extent.blob_id, extent.offset, extent.length)
                    await ingest.run_data_io(writer.commit)
                except BaseException:
                    await ingest.run_io(writer.abort)
                    raise
                new_extents.append(Extent(writer.blob_id, 0, extent.length))
        except FileNotFoundError:
            await self._discard_blobs([e.blob_id for e in new_extents])
            raise errors.ConditionalRequestConflict("The source object changed during the copy; retry.") from None
        except BaseException:
            await self._discard_blobs([e.blob_id for e in new_extents])
            raise
        version = ObjectVersion(
            bucket=bucket, key=key, version_id=self.data.new_blob_id(), size=src.size, etag=src.etag,
            last_modified=now,
            headers=headers if replace_metadata else dict(src.headers),
            user_meta=user_meta if replace_metadata else dict(src.user_meta),
            checksums=dict(src.checksums), checksum_type=src.checksum_type, extents=new_extents,
            part_count=src.part_count, owner_id=identity.owner_id,
        )
        return await self._commit_version(version, _lease_guarded(condition, lease_id), link)

    # listing -----------------------------------------------------------------------------------------
    async def list_objects(self, identity: Identity | None, bucket: str, *, prefix: str, delimiter: str,
                           start_after: str, max_keys: int) -> ListPage:
        found = await self.bucket_for(identity, bucket, "read", prefix=prefix)
        if self.tier is not None:
            link = await self.tier.link(bucket)
            if link is not None:
                return await list_linked(self.tier, link, found.owner_id, prefix=prefix, delimiter=delimiter,
                                         start_after=start_after, max_keys=max_keys)
        return await list_page(self.meta, bucket, prefix=prefix, delimiter=delimiter, start_after=start_after,
                               max_keys=max_keys)

    # multipart ---------------------------------------------------------------------------------------
    async def create_upload(self, identity: Identity, bucket: str, key: str, *, headers: dict[str, str],
                            user_meta: dict[str, str], checksum_algorithm: str = "",
                            checksum_type: str = "") -> Upload:
        validate_key(key)
        await self.bucket_for(identity, bucket, "write", key)
        await self._write_link(bucket, key)
        # Hex, not base64: an id starting with '-' is read as an option by command-line clients (aws s3api).
        upload = Upload(upload_id=secrets.token_hex(24), bucket=bucket, key=key, initiated=time.time(),
                        owner_id=identity.owner_id, headers=headers, user_meta=user_meta,
                        checksum_algorithm=checksum_algorithm, checksum_type=checksum_type)
        await self.meta.create_upload(upload)
        return upload

    async def upload_for(self, identity: Identity, bucket: str, key: str, upload_id: str,
                         action: str = "write") -> Upload:
        await self.bucket_for(identity, bucket, action, key)
        upload = await self.meta.get_upload(upload_id)
        if upload is None or upload.bucket != bucket or upload.key != key:
            raise errors.NoSuchUpload(upload_id=upload_id)
        return upload

    @staticmethod
    def _check_part_number(part_number: int) -> None:
        if not 1 <= part_number <= MAX_PART_NUMBER:
            raise errors.InvalidArgument("Part number must be an integer between 1 and 10000, inclusive.")

    async def upload_part(self, identity: Identity, bucket: str, key: str, upload_id: str, part_number: int,
                          body: AsyncIterator[bytes], *, algorithms: set[str], verify: Verifier,
                          declared_size: int | None = None) -> Part:
        self._check_part_number(part_number)
        upload = await self.upload_for(identity, bucket, key, upload_id)
        if upload.checksum_algorithm:
            algorithms = {*algorithms, upload.checksum_algorithm}
        if declared_size is not None:  # a part sent again replaces the earlier one, whose bytes it frees
            earlier = await self.meta.list_parts(upload_id, after=part_number - 1, limit=1)
            if earlier and earlier[0].part_number == part_number:
                declared_size -= earlier[0].size
        release = await self._quota_hold(bucket, declared_size)
        try:
            staged, stored = await self._stage_verified(body, algorithms, verify, MAX_SINGLE_PUT)
        finally:
            release()
        if upload.checksum_algorithm and upload.checksum_algorithm not in stored:
            stored[upload.checksum_algorithm] = cks.b64(staged.digests[upload.checksum_algorithm])
        part = Part(upload_id=upload_id, part_number=part_number, size=staged.size,
                    etag=staged.digests["md5"].hex(), blob_id=staged.blob_id, last_modified=time.time(),
                    checksums=stored)
        return await self._record_part(part)

    async def _record_part(self, part: Part) -> Part:
        try:
            await self.meta.put_part(part)
        except BaseException:
            await self._discard_blobs([part.blob_id])
            raise
        return part

    async def upload_part_copy(self, identity: Identity, bucket: str, key: str, upload_id: str,
                               part_number: int, source: CopySource) -> Part:
        self._check_part_number(part_number)
        upload = await self.upload_for(identity, bucket, key, upload_id)
        src = await self._resident(identity, source.bucket, source.key)
        if not source.conditions.empty:
            check_conditions(source.conditions, src.etag, src.last_modified)
        if source.byte_range is None:
            start, end = 0, src.size
        else:
            start, end = source.byte_range[0], source.byte_range[1] + 1
            if start >= src.size or end > src.size or start >= end:
                raise errors.InvalidArgument("The x-amz-copy-source-range value must be of the form bytes=first-last "
                                             "where first and last are the zero-based offsets of the first and "
                                             "last bytes to copy")
        if end - start > MAX_SINGLE_PUT:
            raise errors.EntityTooLarge()
        algorithms = ["md5"] + ([upload.checksum_algorithm] if upload.checksum_algorithm else [])
        (await self._quota_hold(bucket, end - start))()
        await self._admit_write(end - start)
        writer = await ingest.run_data_io(self.data.create)
        hashers = {alg: cks.new_hasher(alg) for alg in algorithms}
        try:
            # Server-side: read the range once through the hashers into the new blob, off the loop.
            opened = self.open_range(src, start, end)
            try:
                await ingest.run_data_io(_copy_hashing, opened, writer, hashers)
            finally:
                for fd, _, _ in opened:
                    os.close(fd)
            await ingest.run_data_io(writer.commit)
        except FileNotFoundError:
            await ingest.run_io(writer.abort)
            raise errors.ConditionalRequestConflict("The source object changed during the copy; retry.") from None
        except BaseException:
            await ingest.run_io(writer.abort)
            raise
        stored = {alg: cks.b64(h.digest()) for alg, h in hashers.items() if alg != "md5"}
        part = Part(upload_id=upload_id, part_number=part_number, size=end - start,
                    etag=hashers["md5"].hexdigest(), blob_id=writer.blob_id, last_modified=time.time(),
                    checksums=stored)
        return await self._record_part(part)

    async def complete_upload(self, identity: Identity, bucket: str, key: str, upload_id: str,
                              requested: Sequence[tuple[int, str, dict[str, str]]], *,
                              condition: WriteCondition | None = None,
                              full_object_checksum: dict[str, str] | None = None,
                              lease_id: str | None = None) -> ObjectVersion:
        """``requested``: (part number, ETag, checksums the client listed) in the client's order."""
        upload = await self.upload_for(identity, bucket, key, upload_id)
        await self.check_lease(bucket, key, lease_id)
        if not requested:
            raise errors.InvalidRequest("You must specify at least one part.", code="MalformedXML")
        numbers = [n for n, _, _ in requested]
        if any(b <= a for a, b in zip(numbers, numbers[1:])):
            raise errors.InvalidPartOrder("The list of parts was not in ascending order. Parts must be ordered "
                                          "by part number.")
        stored_parts = {p.part_number: p for p in await self.meta.list_parts(upload_id)}
        chosen: list[Part] = []
        for number, etag, client_sums in requested:
            part = stored_parts.get(number)
            if part is None or etag.strip().strip('"') != part.etag:
                raise errors.InvalidPart("One or more of the specified parts could not be found. The part may "
                                         "not have been uploaded, or the specified entity tag may not match the "
                                         "part's entity tag.", part=number)
            for alg, value in client_sums.items():
                if part.checksums.get(alg) not in (None, value):
                    raise errors.InvalidPart(f"The checksum of part {number} does not match.", part=number)
            chosen.append(part)
        for part in chosen[:-1]:
            if part.size < self.min_part_size:
                raise errors.EntityTooSmall("Your proposed upload is smaller than the minimum allowed size.",
                                            part=part.part_number)
        size = sum(p.size for p in chosen)
        checksums: dict[str, str] = {}
        checksum_type = ""
        alg = upload.checksum_algorithm
        if alg and all(alg in p.checksums for p in chosen):
            if upload.checksum_type == "FULL_OBJECT" and alg in ("crc32", "crc32c", "crc64nvme"):
                checksums[alg] = cks.combine_full_object(alg, [(p.checksums[alg], p.size) for p in chosen])
                checksum_type = "FULL_OBJECT"
            else:
                checksums[alg] = cks.composite(alg, [p.checksums[alg] for p in chosen])
                checksum_type = "COMPOSITE"
        for claimed_alg, claimed in (full_object_checksum or {}).items():
            mine = checksums.get(claimed_alg)
            if mine is not None and mine != claimed and mine.split("-")[0] != claimed.split("-")[0]:
                raise errors.BadDigest(f"The {claimed_alg} you specified did not match the calculated checksum.")
        version = ObjectVersion(
            bucket=bucket, key=key, version_id=self.data.new_blob_id(), size=size,
            etag=cks.multipart_etag([p.etag for p in chosen]), last_modified=time.time(),
            headers=upload.headers, user_meta=upload.user_meta, checksums=checksums, checksum_type=checksum_type,
            extents=[Extent(p.blob_id, 0, p.size) for p in chosen], part_count=len(chosen),
            owner_id=identity.owner_id,
        )
        link = await self._write_link(bucket, key)
        journal = await self._prepare_linked(link, version)
        await self.meta.complete_upload(upload_id, version, numbers, _lease_guarded(condition, lease_id),
                                        journal=journal)
        self._after_linked_write(link, key)
        return version

    async def abort_upload(self, identity: Identity, bucket: str, key: str, upload_id: str) -> None:
        await self.upload_for(identity, bucket, key, upload_id)
        await self.meta.abort_upload(upload_id)

    async def list_parts(self, identity: Identity, bucket: str, key: str, upload_id: str, after: int,
                         limit: int) -> tuple[Upload, list[Part]]:
        upload = await self.upload_for(identity, bucket, key, upload_id, "read")
        return upload, await self.meta.list_parts(upload_id, after, limit)

    async def list_uploads(self, identity: Identity, bucket: str, *, prefix: str, key_marker: str,
                           upload_id_marker: str, limit: int) -> list[Upload]:
        await self.bucket_for(identity, bucket, "read", prefix=prefix)
        return await self.meta.list_uploads(bucket, prefix, key_marker, upload_id_marker, limit)

    # leases (Azure semantics, atoll/core/leases.py) ----------------------------------------------------
    async def lease(self, identity: Identity, bucket: str, key: str,
                    request: leases.LeaseRequest) -> leases.LeaseOutcome:
        """Acquire, renew, change, release or break the lease of an object, or of the bucket when ``key`` is ''.
        One metadata transaction decides, so every worker process sees the same lease. A container lease is an
        admin's action (it guards deleting the container); a blob lease a writer's."""
        await self.bucket_for(identity, bucket, "write" if key else "admin", key or None)
        if key:
            validate_key(key)
            await self.head_object(identity, bucket, key)  # NoSuchKey; on a linked bucket, indexes a cold object

        def step(current: leases.Lease | None) -> tuple[leases.Lease | None, leases.LeaseOutcome]:
            outcome = leases.apply(current, request, time.time())
            return outcome.lease, outcome
        return await self.meta.apply_lease(bucket, key, step)

    async def lease_view(self, bucket: str, key: str = "") -> leases.LeaseView:
        """The lease status, state and duration of an object (or of the bucket for key ''), for properties."""
        return leases.view(await self.meta.get_lease(bucket, key), time.time())

    async def lease_views(self, bucket: str, keys: Sequence[str]) -> dict[str, leases.LeaseView]:
        """Lease views of a listing page's keys (in key order): one range query for the page."""
        if not keys:
            return {}
        found = await self.meta.list_leases(bucket, keys[0], keys[-1])
        now = time.time()
        return {key: leases.view(found.get(key), now) for key in keys}

    async def check_lease(self, bucket: str, key: str, lease_id: str | None) -> None:
        """Every write path calls this before it changes an object (``key``) or deletes a bucket (key ''): a held
        lease must be named by ``lease_id``; a lease id naming no held lease is refused too. S3 requests never
        name one, so they cannot change a leased object (AccessDenied there). Checked before the body is read (to
        fail fast) and again in the commit's transaction (``_lease_guarded``): a lease taken while a body streams
        in stops the write. Deletes are checked here only (no body: the window is one metadata round trip)."""
        lease = await self.meta.get_lease(bucket, key)
        if lease is not None and key and await self.meta.get_object(bucket, key) is None:
            lease = None  # stale: its row went another way than a delete (see MetaStore.apply_lease)
        if lease is None and lease_id is None:
            return
        leases.check_write(lease, lease_id, time.time(), container=not key)

    # block lists (Azure block blobs; rules in atoll.core.blocks) -------------------------------------------
    async def put_block(self, identity: Identity, bucket: str, key: str, block_id: str, body: AsyncIterator[bytes],
                        *, verify: Verifier | None = None, algorithms: set[str] = frozenset(),
                        content_md5: bytes | None = None, declared_size: int | None = None) -> Block:
        """Stage an uncommitted block of the blob ``key``. ``body`` is any byte stream: a block copied from another
        object or URL (Put Block From URL) is staged the same way. ``verify`` checks what the client declared;
        ``content_md5`` is the simple case of it (BadDigest when the bytes differ)."""
        validate_key(key)
        blk.validate_block_id(block_id)
        await self.bucket_for(identity, bucket, "write", key)
        await self._write_link(bucket, key)
        current = await self.meta.get_object(bucket, key)
        if current is not None and current.blocks and len(current.blocks[0][0]) != len(block_id):
            raise blk.mixed_id_lengths()
        release = await self._quota_hold(bucket, declared_size)
        try:
            staged, _ = await self._stage_verified(body, set(algorithms), blk.block_verifier(verify, content_md5),
                                                   blk.MAX_BLOCK_SIZE)
        finally:
            release()
        block = Block(bucket=bucket, key=key, block_id=block_id, blob_id=staged.blob_id, size=staged.size,
                      md5=staged.digests["md5"].hex(), created=time.time())
        try:
            await self.meta.put_block(block, blk.MAX_UNCOMMITTED_BLOCKS)
        except BaseException:
            await self._discard_blobs([staged.blob_id])
            raise
        return block

    async def put_block_list(self, identity: Identity, bucket: str, key: str, requested: Sequence[tuple[str, str]],
                             *, headers: dict[str, str], user_meta: dict[str, str],
                             condition: WriteCondition | None = None, lease_id: str | None = None) -> ObjectVersion:
        """Commit a block list: ``requested`` is (block id, 'committed' | 'uncommitted' | 'latest') in order. The
        blocks become the extents of a new version (nothing is copied); uncommitted blocks not used are dropped."""
        validate_key(key)
        await self.bucket_for(identity, bucket, "write", key)
        await self.check_lease(bucket, key, lease_id)
        link = await self._write_link(bucket, key)
        if len(requested) > blk.MAX_COMMITTED_BLOCKS:
            raise errors.InvalidRequest(f"A block list may name at most {blk.MAX_COMMITTED_BLOCKS} blocks.",
                                        code="BlockListTooLong")
        await self._check_write_condition(bucket, key, condition)
        current = await self.meta.get_object(bucket, key)
        if current is not None and current.blocks and current.residency != RESIDENT and any(
                kind != "uncommitted" for _, kind in requested):
            warm = await self._resident(identity, bucket, key)
            if warm.version_id != current.version_id:
                raise errors.ConditionalRequestConflict("The blob changed while its block list was committed; "
                                                        "retry.")
            current = warm
        chosen = blk.choose_blocks(requested, current, await self.meta.list_blocks(bucket, key))
        version = ObjectVersion(
            bucket=bucket, key=key, version_id=self.data.new_blob_id(), size=chosen.size, etag=chosen.etag,
            last_modified=time.time(), headers=headers, user_meta=user_meta, extents=chosen.extents,
            part_count=chosen.part_count, owner_id=identity.owner_id, blocks=chosen.blocks,
        )
        journal = await self._prepare_linked(link, version)
        await self.meta.commit_blocks(version, current.version_id if chosen.reuses_committed else None,
                                      chosen.staged, _lease_guarded(condition, lease_id), journal=journal)
        self._after_linked_write(link, key)
        return version

    async def get_block_list(self, identity: Identity | None, bucket: str, key: str,
                             which: str = "committed") -> blk.BlockList:
        """``which``: 'committed', 'uncommitted' or 'all'. NoSuchKey when the name has neither a version nor
        uncommitted blocks."""
        await self.bucket_for(identity, bucket, "read", key)
        try:
            version = await self.head_object(identity, bucket, key)
        except errors.NoSuchKey:
            version = None
        staged = await self.meta.list_blocks(bucket, key)
        if version is None and not staged:
            raise errors.NoSuchKey(bucket=bucket, key=key)
        return blk.BlockList(
            version=version,
            committed=[(b, n) for b, n, _ in version.blocks] if version is not None and which != "uncommitted" else [],
            uncommitted=staged if which != "committed" else [])

    # garbage collection ------------------------------------------------------------------------------
    async def collect_garbage_once(self, grace: float = GC_GRACE_SECONDS) -> int:
        await self.meta.expire_blocks(time.time() - self.uncommitted_block_ttl, 1000)
        blob_ids = await self.meta.take_garbage(time.time() - grace, 1000)
        if blob_ids:
            await self._discard_blobs(blob_ids)
            await self.meta.forget_garbage(blob_ids)
        return len(blob_ids)

    def start_background(self, primary: bool = True) -> None:
        self._gc_task = asyncio.get_running_loop().create_task(self._gc_loop())
        settings = self.packed_settings
        segments = getattr(self.data, "segments", None)
        if segments is not None:
            from atoll.core.compaction import Compactor

            # Every serving process appends to a segment of its own and takes part in compaction (one segment
            # per compactor at a time, under a lease), also with packing off: segments written before still
            # need compacting.
            self.packed = packing.PackedWriter(self.meta, segments, self.data.check_room, settings.segment_size)
            self.compactor = Compactor(self.meta, self.data, self.packed, threshold=settings.compaction_threshold,
                                       interval=settings.compaction_interval, grace=settings.compaction_grace,
                                       settle=settings.compaction_settle)
            self.compactor.start()
        if self.tier is not None:
            self.tier.start_background(primary)

    async def _gc_loop(self) -> None:
        while True:
            try:
                while await cluster.hold_singleton("gc") and await self.collect_garbage_once() >= 1000:
                    pass
            except asyncio.CancelledError:
                raise
            except errors.Unavailable as exc:  # the metadata store is out of space (or busy): next round
                log.warning("garbage collection postponed: %s", exc.message)
            except Exception:  # noqa: BLE001 - keep collecting; the next round retries
                log.exception("garbage collection failed")
            await asyncio.sleep(2.0 + secrets.randbelow(1000) / 1000)

    async def stop_background(self) -> None:
        if self.compactor is not None:
            await self.compactor.stop()
        if self.packed is not None:
            await self.packed.close()
        if self.tier is not None:
            await self.tier.stop_background()
        await cancel_and_wait(self._gc_task)


def _nothing_held() -> None:
    pass


def _lease_guarded(condition: WriteCondition | None, lease_id: str | None) -> WriteCondition:
    """``condition`` that also has the metadata transaction check the key's lease (see ``check_lease``)."""
    return dataclasses.replace(condition or WriteCondition(), guard_lease=True, lease_id=lease_id)


def _journaled(link: Link | None) -> bool:
    return link is not None and link.mode == "writeback"


def _copy_hashing(opened, writer, hashers) -> None:
    for fd, offset, length in opened:
        while length > 0:
            data = os.pread(fd, min(length, 8 << 20), offset)
            if not data:
                raise OSError("source blob shorter than its metadata")
            for hasher in hashers.values():
                hasher.update(data)
            writer.write(data)
            offset += len(data)
            length -= len(data)
