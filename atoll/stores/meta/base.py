"""The metadata-store contract.

Every mutating method is one atomic transaction: a check (bucket exists, a write condition holds) and the change
it guards happen together or not at all, whatever other processes or nodes do at the same time. The core never
holds a transaction across object-data I/O: it writes and fsyncs the bytes first, then calls one of these.

Blobs that a change stops referring to (an overwritten version, a replaced or unused part, an aborted upload)
are recorded as garbage in the same transaction, so a crash can never leak or double-free them; the collector
deletes the files after a grace period (readers that looked up the old row just before may still open it).

Ordering is by key bytes (UTF-8, binary collation), as S3 lists them. Implementations must not rely on
insertion order or on SQLite-only semantics leaking into results. ``tests/contract/test_metastore.py`` is the
executable form of this contract; every implementation runs it.

"Whatever other processes or nodes do" is meant literally: several stores may share one database (``--workers``
on one SQLite file, cluster nodes on one PostgreSQL). A write acknowledged by one store is seen by the next read
of any other; two stores claiming shared work (drain entries, jobs, segments to compact) never get the same item;
conditional writes and quota checks hold across them (tests/contract/test_metastore_nodes.py). Both engines are
``atoll.stores.meta.sql.SqlMetaStore``; ``atoll.stores.meta.open_metastore`` picks one from the ``metadata`` setting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Protocol, Sequence, TypeVar

from atoll.core.leases import Lease
from atoll.core.models import BucketProperties, SegmentInfo
from atoll.core.models import (Block, Bucket, CheckpointGroup, CopyState, DrainEntry, Identity, Job, Limits, Link,
                               ListEntry, ObjectVersion, Part, Tenant, Upload)


T = TypeVar("T")


@dataclass(slots=True, frozen=True)
class WriteCondition:
    """S3 conditional write: ``if_match`` an (unquoted) ETag the current version must have; ``if_none_match``
    true for ``If-None-Match: *`` (create only)."""

    if_match: str | None = None
    if_none_match: bool = False
    # The key's lease (atoll/core/leases.py) must admit a write naming ``lease_id`` (None: naming none), checked
    # in the same transaction, so a lease taken while a body streams in still stops the write.
    guard_lease: bool = False
    lease_id: str | None = None


class MetaStore(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    # identities
    async def put_identity(self, identity: Identity) -> None:
        """Insert or replace the identity with this access key. Raises NoSuchTenant if its tenant does not
        exist, InvalidArgument if its account name is another identity's."""

    async def get_identity(self, access_key: str) -> Identity | None: ...

    async def get_identity_by_account(self, account_name: str) -> Identity | None:
        """The identity whose Azure account is ``account_name`` (account names are unique; "" finds none)."""

    async def list_identities(self) -> list[Identity]: ...

    async def delete_identity(self, access_key: str) -> bool: ...

    # tenants (#7). Bucket names are unique on the island; a tenant owns buckets and identities.
    async def put_tenant(self, tenant: Tenant) -> None:
        """Insert a tenant, or replace the settings (limits, warm reservation and cap, WAN weight) of one."""

    async def get_tenant(self, name: str) -> Tenant | None: ...

    async def list_tenants(self) -> list[Tenant]:
        """In name order."""

    async def delete_tenant(self, name: str) -> None:
        """Remove a tenant and its identities. Raises NoSuchTenant, TenantNotEmpty while it owns buckets,
        InvalidRequest for the root tenant."""

    # buckets
    async def create_bucket(self, bucket: Bucket) -> None:
        """Raises BucketAlreadyOwnedByYou if a bucket of that name belongs to the same tenant, else
        BucketAlreadyExists; NoSuchTenant if ``bucket.tenant`` does not exist."""

    async def get_bucket(self, name: str) -> Bucket | None: ...

    async def list_buckets(self, tenant: str | None = None) -> list[Bucket]:
        """Buckets in name order: the tenant's, or all of them when ``tenant`` is None."""

    async def set_bucket_limits(self, name: str, limits: Limits) -> None:
        """Replace a bucket's quotas and rate limits; raises NoSuchBucket."""

    async def delete_bucket(self, name: str) -> None:
        """Raises NoSuchBucket, or BucketNotEmpty while it has objects. Uploads in progress are aborted; the
        bucket's properties go with it."""

    async def get_bucket_properties(self, name: str) -> BucketProperties | None:
        """None when none were ever set (a private bucket without metadata)."""

    async def put_bucket_properties(self, props: BucketProperties) -> None:
        """Insert or replace; raises NoSuchBucket."""

    # objects
    async def get_object(self, bucket: str, key: str) -> ObjectVersion | None: ...

    async def put_object(self, version: ObjectVersion, condition: WriteCondition | None = None,
                         journal: bool = False) -> ObjectVersion | None:
        """Make ``version`` the current version of its key; return the version it replaced.
        Raises NoSuchBucket, PreconditionFailed (condition false), NoSuchKey (if_match on a missing key).
        ``journal``: also record the write in the drain journal (write-back buckets), in the same transaction.
        Every write keeps the resident-bytes counter exact (a version counts unless it is absent)."""

    async def replace_metadata(self, bucket: str, key: str, version_id: str, headers: dict[str, str],
                               user_meta: dict[str, str], last_modified: float,
                               journal: bool = False) -> ObjectVersion:
        """Change the stored headers and user metadata of the current version if it is still ``version_id``
        (a self-copy with REPLACE); bytes, ETag and extents are kept. Raises NoSuchKey or
        ConditionalRequestConflict if the key moved on meanwhile."""

    async def delete_object(self, bucket: str, key: str, journal: bool = False) -> ObjectVersion | None:
        """Remove the key; return the removed version (None if there was none). Raises NoSuchBucket.
        ``journal`` records a delete to propagate even when the key has no row (it may exist in cold only)."""

    async def delete_objects(self, bucket: str, keys: Sequence[str],
                             journal: bool = False) -> list[ObjectVersion | None]:
        """Remove many keys in one transaction; the result lines up with ``keys``."""

    async def list_objects(self, bucket: str, start: str, inclusive: bool, end: str | None,
                           limit: int) -> list[ListEntry]:
        """Up to ``limit`` entries with start < key (or <= when inclusive) and key < end (no bound when None),
        in key order. One index seek; listing logic (prefixes, delimiters) lives in core.listing."""

    async def count_objects(self, bucket: str) -> tuple[int, int]:
        """(objects, bytes) in the bucket."""

    # multipart uploads
    async def create_upload(self, upload: Upload) -> None:
        """Raises NoSuchBucket."""

    async def get_upload(self, upload_id: str) -> Upload | None: ...

    async def put_part(self, part: Part) -> Part | None:
        """Record a part (replacing one with the same number); return the replaced part. Raises NoSuchUpload."""

    async def list_parts(self, upload_id: str, after: int = 0, limit: int = 10000) -> list[Part]: ...

    async def list_uploads(self, bucket: str, prefix: str = "", key_marker: str = "", upload_id_marker: str = "",
                           limit: int = 1000) -> list[Upload]:
        """Uploads ordered by (key, upload_id), after (key_marker, upload_id_marker)."""

    async def complete_upload(self, upload_id: str, version: ObjectVersion, used_parts: Sequence[int],
                              condition: WriteCondition | None = None, journal: bool = False) -> ObjectVersion | None:
        """Atomically: the upload must still exist (NoSuchUpload) and have exactly the used parts with the
        blobs named in ``version.extents``; the version becomes current (conditions as in put_object), the
        upload and its parts are removed and the unused parts' blobs become garbage. Returns the replaced
        version."""

    async def abort_upload(self, upload_id: str) -> None:
        """Remove the upload, its parts' blobs become garbage. Raises NoSuchUpload."""

    # uncommitted blocks (Azure Put Block; tests/contract/test_metastore_blocks.py)
    async def put_block(self, block: Block, max_blocks: int) -> Block | None:
        """Record an uncommitted block of a blob name, replacing one with the same id (whose blob becomes
        garbage); return the replaced block. Raises NoSuchBucket; InvalidRequest (code InvalidBlobOrBlock) when
        the id's length differs from the blob's other uncommitted blocks; Conflict (code BlockCountExceedsLimit)
        when the blob already has ``max_blocks`` of them."""

    async def list_blocks(self, bucket: str, key: str) -> list[Block]:
        """The uncommitted blocks of a blob name, oldest first."""

    async def commit_blocks(self, version: ObjectVersion, base_version_id: str | None,
                            staged: Sequence[tuple[str, str]], condition: WriteCondition | None = None,
                            journal: bool = False) -> ObjectVersion | None:
        """Atomically (Put Block List): the uncommitted blocks ``staged`` (block id, blob id) must still be there
        with those blobs, and when ``version`` reuses committed blocks the current version must still be
        ``base_version_id`` (else ConditionalRequestConflict); ``version`` becomes current as in put_object, the
        replaced version's blobs become garbage except those ``version`` still uses, and every uncommitted block
        of the name goes (the unused ones' blobs become garbage). Returns the replaced version."""

    async def expire_blocks(self, older_than: float, limit: int) -> int:
        """Drop up to ``limit`` uncommitted blocks staged before ``older_than`` (their blobs become garbage);
        returns how many went."""

    # garbage collection
    async def take_garbage(self, older_than: float, limit: int) -> list[str]:
        """Blob ids that became garbage before ``older_than`` (epoch seconds)."""

    async def forget_garbage(self, blob_ids: Sequence[str]) -> None:
        """Drop garbage records once their blobs are deleted."""

    async def referenced_blobs(self) -> set[str]:
        """Every blob id a row refers to (objects, parts) or that waits as garbage: for fsck."""

    # tiering: links and checkpoint groups (tests/contract/test_metastore_tiering.py) --------------------
    async def put_link(self, link: Link) -> None:
        """Insert or replace a bucket's link; ``created`` is stamped anew on every link (it names the link's
        settings for caches). Raises NoSuchBucket."""

    async def get_link(self, bucket: str) -> Link | None: ...

    async def list_links(self) -> list[Link]: ...

    async def delete_link(self, bucket: str) -> bool:
        """Refused (InvalidRequest) while the bucket has journaled writes. Absent and partial rows go (their
        missing bytes cannot be read without the link; a partial one's blob becomes garbage); resident rows stay
        as local objects."""

    async def put_group(self, group: CheckpointGroup) -> None: ...

    async def list_groups(self, bucket: str) -> list[CheckpointGroup]: ...

    async def delete_group(self, bucket: str, prefix: str) -> bool: ...

    # tiering: cold objects, fills, eviction, pins
    async def record_cold_version(self, version: ObjectVersion, expect: str | None) -> ObjectVersion | None:
        """Make a version read from the cold store current if the key's row is still ``expect`` (None: no row)
        and the key has no journal entry; otherwise change nothing. Returns the row in effect afterwards."""

    async def start_fill(self, bucket: str, key: str, version_id: str, blob_id: str, block_size: int,
                         warm_seq: int) -> ObjectVersion | None:
        """absent -> partial with an empty block map backed by ``blob_id``; no change if no longer absent."""

    async def get_fill(self, version_id: str) -> tuple[int, bytes] | None:
        """(block size, bitmap) of a partial version; None once resident or gone."""

    async def mark_filled(self, bucket: str, key: str, version_id: str, blocks: Sequence[int],
                          blob_id: str | None = None) -> str | None:
        """Record durable blocks; the version turns resident when all are. Returns the residency, or None if
        the version is no longer current (or, given ``blob_id``, its warm copy is another blob by now)."""

    async def set_cold_identity(self, bucket: str, key: str, version_id: str, cold_etag: str,
                                cold_mtime: float) -> None: ...

    async def resident_bytes(self, bucket: str | None = None) -> int:
        """Bytes held by the warm tier (partial fills count whole): the whole tier's counter, or one bucket's
        sum (a scan of the bucket's rows: for status and scrapes, not for hot paths)."""

    async def warm_bytes_by_tenant(self) -> dict[str, int]:
        """Bytes each tenant holds on the warm tier (as ``resident_bytes`` counts them), exact and cheap (kept
        per bucket as rows change); tenants with none are left out."""

    async def eviction_candidates(self, after_seq: int, limit: int) -> list[tuple]:
        """(bucket, key, version_id, warm_seq, visited, size, evictable) of warm versions of linked buckets in
        warm_seq order after ``after_seq``; evictable is false for dirty or pinned versions."""

    async def set_visited(self, keys: Sequence[tuple[str, str, str]], visited: bool) -> None: ...

    async def evict(self, bucket: str, key: str, version_id: str) -> int:
        """Drop the warm bytes of a clean, unpinned version with a cold identity (it becomes absent; its blob
        becomes garbage). Returns the bytes freed, 0 when refused."""

    async def pin(self, bucket: str, key: str, until: float) -> bool: ...

    async def pinned_bytes(self, bucket: str | None = None) -> int: ...

    # tiering: the write-back journal
    async def take_drain(self, limit: int, lease: float, skip_buckets: Sequence[str] = (),
                         busy: Mapping[str, int] | None = None) -> list[DrainEntry]:
        """Claim up to ``limit`` due entries for ``lease`` seconds; none of ``skip_buckets`` (whose cold stores
        are unreachable: their entries wait without being touched). The tenants (of the entries' buckets) with
        due entries get claims in proportion to their WAN weights, counting what each already has in flight
        (``busy``: bucket -> entries being drained), so one tenant's backlog never holds every drain slot;
        oldest first inside a tenant."""

    async def renew_drain(self, entries: Sequence[DrainEntry], lease: float) -> None:
        """Extend the claims of entries still being drained (a long upload outlives one lease)."""

    async def finish_drain(self, entry: DrainEntry, uploaded_modified: float | None = None) -> bool:
        """Remove the entry if it still names the drained write (and, for a put, the uploaded metadata);
        otherwise make the newer entry due at once and return False."""

    async def release_drain(self, entry: DrainEntry, delay: float, error: str = "") -> None:
        """Give a claimed entry back, due again after ``delay`` (a failure when ``error`` is set). If a newer
        write replaced it meanwhile, the newer entry (which kept the claim) is due after ``delay`` too, with no
        failure counted."""

    # tiering: multipart uploads to cold stores that may be left half-done by a failure or a crash
    async def note_cold_upload(self, bucket: str, key: str, started: float) -> int:
        """Record, before it begins, a multipart upload to a cold store; returns its record id."""

    async def forget_cold_upload(self, upload: int) -> None:
        """The upload completed, or whatever it left in the cold store was aborted."""

    async def list_cold_uploads(self, limit: int = 1000) -> list[tuple[int, str, str, float]]:
        """(id, bucket, key, started) of recorded uploads, oldest first."""

    async def reset_drain_claims(self) -> int: ...

    async def get_drain(self, bucket: str, key: str) -> DrainEntry | None: ...

    async def drain_pending_in(self, bucket: str, prefix: str, except_key: str) -> bool: ...

    async def drain_backlog(self, bucket: str | None = None) -> tuple[int, int, float | None]:
        """(entries, bytes, time of the oldest undrained write or None)."""

    async def list_drain(self, bucket: str, limit: int = 1000) -> list[DrainEntry]: ...

    async def get_flag(self, name: str) -> int: ...

    async def set_flag(self, name: str, value: int) -> None: ...

    # tiering: index import
    async def list_versions(self, bucket: str, start: str, inclusive: bool, end: str | None,
                            limit: int) -> list[ObjectVersion]: ...

    async def apply_cold_listing(self, bucket: str, upserts: Sequence[tuple[ObjectVersion, str | None]],
                                 removals: Sequence[tuple[str, str]]) -> int:
        """One transaction: upserts as record_cold_version, removals drop clean rows still at that version."""

    # jobs
    async def create_job(self, job: Job) -> None: ...

    async def get_job(self, job_id: str) -> Job | None: ...

    async def list_jobs(self, limit: int = 100, active_only: bool = False) -> list[Job]: ...

    async def claim_job(self, owner: str, lease: float) -> Job | None:
        """The most urgent queued job, or a running one whose lease expired, now running for ``owner``."""

    async def update_job(self, job_id: str, *, owner: str | None = None, lease: float = 0.0,
                         state: str | None = None, progress: dict | None = None, error: str | None = None) -> str:
        """Record progress and renew the lease while ``owner`` holds it; returns the state (it may have become
        'cancelled'), 'lost' if another owner holds it, 'gone' if it does not exist."""

    # consistency: atoll fsck and start-up recovery (tests/contract/test_metastore_fsck.py) ---------------------
    # Scans page in key order so a check of a million rows never holds them all; repairs are conditional, each
    # one transaction, and change nothing when the row moved on meanwhile (fsck may run beside a server).
    async def scan_objects(self, after: tuple[str, str] | None, limit: int) -> list[ObjectVersion]:
        """Up to ``limit`` current versions of every bucket in (bucket, key) order after ``after``, including
        rows of buckets that no longer exist."""

    async def scan_parts(self, after: tuple[str, int] | None, limit: int) -> list[Part]:
        """Parts of every upload in progress, in (upload_id, part_number) order after ``after``."""

    async def scan_garbage(self, after: str, limit: int) -> list[str]:
        """Blob ids waiting to be collected, in order, after ``after``."""

    async def scan_drain(self, after: tuple[str, str] | None, limit: int) -> list[tuple[DrainEntry, float]]:
        """Journal entries in (bucket, key) order after ``after``, each with the time until which it is claimed
        or backing off (in the past when it is due)."""

    async def stale_fills(self) -> list[str]:
        """Version ids of block maps whose version is not a current partial row (a block map lives and dies
        with its partial version; anything else is a leftover)."""

    async def unreferenced_blobs(self, blob_ids: Sequence[str]) -> set[str]:
        """Those of ``blob_ids`` that no object extent, part or garbage record refers to, from one snapshot."""

    async def count_resident_bytes(self) -> tuple[int, int]:
        """(the resident-bytes counter, the sum it should hold), from one snapshot."""

    async def recount_resident_bytes(self) -> tuple[int, int]:
        """Set the resident-bytes counter to what the rows say; returns (old value, new value)."""

    # packed store (#8; atoll/stores/meta/sqlite_segments.py, tests/contract/test_metastore_segments.py) ------
    # Extents whose blob id starts with "s" point into segment files. The store keeps, in the same transaction
    # as every change to objects, a reverse index of those extents and each segment's live bytes and records;
    # a write whose extents point into a segment that is not open or sealed raises SegmentClosed, changing
    # nothing. Segment records are never garbage (their bytes are reclaimed by compaction, not collection).
    async def register_segment(self, segment_id: str, owner: str) -> None:
        """Record a new segment, open, written by ``owner`` ("node:pid:start")."""

    async def seal_segment(self, segment_id: str, size: int) -> bool:
        """Open -> sealed with its final ``size``; False if it was not open."""

    async def seal_orphan_segments(self, node: str, owners_alive: set[str], sizes: dict[str, int]) -> list[str]:
        """Seal the open segments of ``node`` whose owner is not in ``owners_alive``, with the sizes given (only
        those in ``sizes``); returns their ids."""

    async def release_dead_compactions(self, owners: Sequence[str]) -> int:
        """End the leases of segments being compacted by ``owners`` (known dead): the next claim takes them."""

    async def list_segments(self) -> list[SegmentInfo]:
        ...

    async def claim_compaction(self, owner: str, lease: float, threshold: float, settle: float) -> SegmentInfo | None:
        """Mark the next segment to compact as compacting under ``owner`` for ``lease`` seconds: first one whose
        compactor's lease ran out, else a sealed one (sealed over ``settle`` seconds ago) with no live record or
        with a dead fraction of at least ``threshold``. None if there is none."""

    async def segment_refs(self, segment_id: str, after: int, limit: int) -> list[tuple[int, int, str, str]]:
        """(offset, length, bucket, key) of the live records of a segment after offset ``after``, in order."""

    async def move_packed(self, segment_id: str, owner: str, lease: float,
                          moves: Sequence[tuple[str, str, int, str, int]]) -> int:
        """Repoint objects at copies of their records, (bucket, key, old offset, new segment, new offset), those
        still pointing at the old place only; renews the lease; Unavailable if ``owner`` lost it. Returns how
        many objects moved."""

    async def retire_segment(self, segment_id: str, owner: str) -> bool:
        """Compacting -> retired, if no reference into it is left."""

    async def forget_segment(self, segment_id: str) -> None:
        """Drop the row of a segment whose file is gone: retired, or sealed with no live record left."""

    async def recount_segments(self, repair: bool) -> list[tuple[str, int, int, int, int]]:
        """Segments whose live counters disagree with the objects: (id, bytes said, bytes counted, records said,
        records counted); ``repair`` rebuilds the index and the counters."""

    # usage and quotas (#7; tests/contract/test_metastore_quota.py) ------------------------------------------
    # Every change keeps per-bucket counters exact in its own transaction: bytes of current versions whatever
    # their residency, of parts of uploads in progress and of uncommitted blocks; objects = current versions.
    # put_object, complete_upload, commit_blocks, put_part and put_block (client writes) raise QuotaExceeded,
    # changing nothing, when they grow the bytes or objects of their bucket or its tenant past a limit
    # (Bucket.limits, Tenant.limits); cold-side imports, deletes and aborts are never refused.
    async def bucket_usage(self, bucket: str) -> tuple[int, int]:
        """(bytes, objects) of a bucket; (0, 0) for none."""

    async def tenant_usage(self, tenant: str) -> tuple[int, int]:
        """(bytes, objects) summed over the tenant's buckets."""

    async def count_usage(self) -> list[tuple[str, tuple[int, int], tuple[int, int]]]:
        """(bucket, counted (bytes, objects), actual (bytes, objects)) of buckets whose counters disagree with
        their rows, from one snapshot: for fsck."""

    async def recount_usage(self) -> list[tuple[str, tuple[int, int], tuple[int, int]]]:
        """Set every bucket's counters to what its rows say; returns what count_usage would have."""

    async def count_warm(self) -> list[tuple[str, int, int]]:
        """(bucket, counted, actual) warm bytes of buckets whose per-bucket warm counter (the source of
        ``warm_bytes_by_tenant``) disagrees with their rows, from one snapshot: for fsck."""

    async def recount_warm(self) -> list[tuple[str, int, int]]:
        """Set every bucket's warm counter to what its rows say; returns what count_warm would have."""

    async def reset_to_absent(self, bucket: str, key: str, version_id: str, new_version_id: str) -> bool:
        """Give up the warm bytes of the current version ``version_id`` when the cold store has them (a cold
        identity and no journal entry): the row becomes absent under ``new_version_id``, so state a process
        keeps by version id (a fill in progress, a cached body) cannot be taken for the copy fetched next; its
        blobs become garbage and its block map goes. False, changing nothing, if the key moved on, is absent
        already, has no cold identity or is dirty."""

    async def drop_version(self, bucket: str, key: str, version_id: str) -> ObjectVersion | None:
        """Remove the row of the current version ``version_id`` whose bytes are lost, with its block map and a
        journal put entry naming it (nothing is left to upload); its blobs become garbage. Returns the removed
        version, None if the key moved on."""

    async def drop_part(self, upload_id: str, part_number: int, blob_id: str) -> bool:
        """Remove a part whose blob is lost or corrupt if it still names ``blob_id`` (the blob becomes
        garbage); a Complete naming it then fails with InvalidPart and the client uploads it again."""

    async def forget_fill(self, version_id: str) -> bool:
        """Remove a stale block map; False, changing nothing, while its version is a current partial row."""

    # copies: the state of Copy Blob operations (tests/contract/test_metastore_copies.py) ------------------------
    async def put_copy(self, state: CopyState) -> None:
        """Insert or replace the copy state of ``state.bucket``/``state.key``."""

    async def get_copy(self, bucket: str, key: str) -> CopyState | None: ...

    async def update_copy(self, bucket: str, key: str, copy_id: str, *, status: str | None = None,
                          copied: int | None = None, total: int | None = None, completed: float | None = None,
                          description: str | None = None, version_id: str | None = None,
                          heartbeat: float | None = None) -> bool:
        """Change the given fields of the copy ``copy_id`` while it is still the key's copy and pending; False,
        changing nothing, otherwise (another copy replaced it, it was aborted or it finished)."""

    async def fail_pending_copies(self, description: str, completed: float) -> int:
        """At start-up, before any worker runs: every pending copy died with the process that ran it."""

    # leases (atoll/core/leases.py; tests/contract/test_metastore_leases.py) ------------------------------------
    # One row per leased object, or per leased bucket under the key ''. Deleting an object (or a bucket) removes
    # its lease in the same transaction; overwriting it keeps the lease.
    async def get_lease(self, bucket: str, key: str) -> Lease | None:
        """The stored lease, whatever its effective state (expiry is derived by the reader from its deadlines)."""

    async def list_leases(self, bucket: str, first: str, last: str) -> dict[str, Lease]:
        """Leases of the bucket's objects with first <= key <= last (for a listing page), by key."""

    async def apply_lease(self, bucket: str, key: str, change: Callable[[Lease | None], tuple[Lease | None, T]]
                          ) -> T:
        """One transaction: ``change(current)`` returns (lease to store or None to remove it, result); returns the
        result. Raises NoSuchBucket, or NoSuchKey when ``key`` is not '' and the object does not exist; whatever
        ``change`` raises leaves the lease as it was. A lease row whose object row went another way than a delete
        (tiering drops rows the cold store lost) is stale: writes ignore it and a guarded put removes it."""

    # cluster (#9): node heartbeats and leases of cluster-wide work (atoll/stores/meta/sql_cluster.py,
    # atoll/core/cluster.py) ------------------------------------------------------------------------------------
    async def heartbeat_node(self, record: "NodeRecord") -> None:
        """Insert or refresh the row of ``record.node`` (address, start, heartbeat time, info JSON)."""

    async def list_nodes(self) -> "list[NodeRecord]":
        """Every node's row, alive or not (the caller judges heartbeats), by name."""

    async def forget_node(self, node: str, heartbeat_before: float) -> bool:
        """Remove a node's row if its last heartbeat is older than ``heartbeat_before``."""

    async def claim_cluster_lease(self, name: str, owner: str, ttl: float) -> bool:
        """Take or renew the lease ``name`` for ``ttl`` seconds: True if it was free, expired or ``owner``'s
        already; False, changing nothing, while another owner holds it."""

    async def release_cluster_lease(self, name: str, owner: str | None) -> bool:
        """Remove the lease if ``owner`` holds it (expired or not); ``None``: whoever holds it."""

    async def get_cluster_lease(self, name: str) -> "ClusterLease | None": ...

    async def list_cluster_leases(self) -> "list[ClusterLease]":
        """Every lease row, expired ones included, by name."""

    async def prune_cluster_leases(self, expired_before: float) -> int:
        """Remove leases that lapsed before ``expired_before``; returns how many."""

    async def note_drain_claims(self, entries: Sequence[DrainEntry], owner: str) -> None:
        """Name ``owner`` ("node:pid:start") on the drain claims it just took with ``take_drain``."""

    async def drain_claim_owners(self) -> list[str]:
        """The owners named on drain claims that have not lapsed."""

    async def drain_claims_by_owner(self) -> dict[str, int]:
        """Drain claims that have not lapsed, counted by the owner named on them."""

    async def release_drain_claims(self, owner: str) -> int:
        """Make the entries claimed by ``owner`` (known dead) due again now; returns how many."""

    # the audit log (#10, atoll.stores.meta.sql_audit): operator actions, cluster-wide, append-only
    async def record_audit(self, entry: "AuditEntry") -> int:
        """Append one entry (its ``id`` is ignored); returns the id it got. Ids only grow."""

    async def list_audit(self, limit: int = 100, before: int | None = None) -> "list[AuditEntry]":
        """Up to ``limit`` entries (1..1000), newest (highest id) first; with ``before``, only ids below it."""
