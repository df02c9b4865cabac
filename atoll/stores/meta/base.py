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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

from atoll.core.models import Bucket, Identity, ListEntry, ObjectVersion, Part, Upload


@dataclass(slots=True, frozen=True)
class WriteCondition:
    """S3 conditional write: ``if_match`` an (unquoted) ETag the current version must have; ``if_none_match``
    true for ``If-None-Match: *`` (create only)."""

    if_match: str | None = None
    if_none_match: bool = False


class MetaStore(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    # identities
    async def put_identity(self, identity: Identity) -> None:
        """Insert or replace the identity with this access key."""

    async def get_identity(self, access_key: str) -> Identity | None: ...

    async def list_identities(self) -> list[Identity]: ...

    async def delete_identity(self, access_key: str) -> bool: ...

    # buckets
    async def create_bucket(self, bucket: Bucket) -> None:
        """Raises BucketAlreadyOwnedByYou if a bucket of that name has the same owner, else BucketAlreadyExists."""

    async def get_bucket(self, name: str) -> Bucket | None: ...

    async def list_buckets(self, owner_id: str | None = None) -> list[Bucket]:
        """Buckets in name order, all of them when owner_id is None."""

    async def delete_bucket(self, name: str) -> None:
        """Raises NoSuchBucket, or BucketNotEmpty while it has objects. Uploads in progress are aborted."""

    # objects
    async def get_object(self, bucket: str, key: str) -> ObjectVersion | None: ...

    async def put_object(self, version: ObjectVersion, condition: WriteCondition | None = None) -> ObjectVersion | None:
        """Make ``version`` the current version of its key; return the version it replaced.
        Raises NoSuchBucket, PreconditionFailed (condition false), NoSuchKey (if_match on a missing key)."""

    async def replace_metadata(self, bucket: str, key: str, version_id: str, headers: dict[str, str],
                               user_meta: dict[str, str], last_modified: float) -> ObjectVersion:
        """Change the stored headers and user metadata of the current version if it is still ``version_id``
        (a self-copy with REPLACE); bytes, ETag and extents are kept. Raises NoSuchKey or
        ConditionalRequestConflict if the key moved on meanwhile."""

    async def delete_object(self, bucket: str, key: str) -> ObjectVersion | None:
        """Remove the key; return the removed version (None if there was none). Raises NoSuchBucket."""

    async def delete_objects(self, bucket: str, keys: Sequence[str]) -> list[ObjectVersion | None]:
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
                              condition: WriteCondition | None = None) -> ObjectVersion | None:
        """Atomically: the upload must still exist (NoSuchUpload) and have exactly the used parts with the
        blobs named in ``version.extents``; the version becomes current (conditions as in put_object), the
        upload and its parts are removed and the unused parts' blobs become garbage. Returns the replaced
        version."""

    async def abort_upload(self, upload_id: str) -> None:
        """Remove the upload, its parts' blobs become garbage. Raises NoSuchUpload."""

    # garbage collection
    async def take_garbage(self, older_than: float, limit: int) -> list[str]:
        """Blob ids that became garbage before ``older_than`` (epoch seconds)."""

    async def forget_garbage(self, blob_ids: Sequence[str]) -> None:
        """Drop garbage records once their blobs are deleted."""

    async def referenced_blobs(self) -> set[str]:
        """Every blob id a row refers to (objects, parts) or that waits as garbage: for fsck."""
