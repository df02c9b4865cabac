"""Value types shared by the core and the stores.

An object version is immutable once committed, except for the metadata-only replace of a self-copy. Its bytes
are described by *extents*: (blob, offset, length) triples in the data store. A single PUT is one extent covering
one blob; a completed multipart upload is one extent per part (Complete moves no data); later a packed small
object is one extent inside a segment file, and a partly filled read-through object a blob with a block map.
Every feature reads and writes this one row per key (design-notes: one object state machine).
"""

from __future__ import annotations

from dataclasses import dataclass, field


ROLES = ("read", "write", "admin")  # each includes the ones before it
ROOT_TENANT = "root"  # the tenant of the root identity; always exists


def tenant_name_for_key(access_key: str, taken: set[str] | frozenset[str] = frozenset()) -> str:
    """A valid tenant name derived from an access key (lower-cased, other characters as '-'), unique in ``taken``."""
    base = "".join(c if c.isascii() and c.isalnum() else "-" for c in access_key.lower()).strip("-")[:56]
    base = base if len(base) >= 3 else f"key-{base}".strip("-")
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}-{n}"
    return name


@dataclass(slots=True)
class Limits:
    """Hard quotas and request-rate limits of a tenant or a bucket; 0 means no limit. Bursts are token-bucket
    depths (0: one second's worth of the rate)."""

    max_bytes: int = 0
    max_objects: int = 0
    requests_per_second: float = 0.0
    request_burst: float = 0.0
    bytes_per_second: float = 0.0
    bytes_burst: float = 0.0


@dataclass(slots=True)
class Tenant:
    """A team on the island: it owns identities and buckets, and carries limits. ``warm_reserved`` bytes of the
    warm tier are guaranteed to it (other tenants' pressure cannot evict below that), ``warm_cap`` bounds what it
    may hold there (0: no cap); ``wan_weight`` is its share of each cold link against other tenants."""

    name: str
    created: float
    limits: Limits = field(default_factory=Limits)
    warm_reserved: int = 0
    warm_cap: int = 0
    wan_weight: float = 1.0


@dataclass(slots=True)
class Identity:
    """An S3 access key and the user it belongs to."""

    access_key: str
    secret_key: str
    owner_id: str
    display_name: str
    created: float
    is_root: bool = False
    # Azure Blob: the account this identity answers to (Shared Key / SAS) and its base64 key; "" when it has none.
    account_name: str = ""
    account_key: str = ""
    # Governance (#7): the tenant it belongs to, what it may do (ROLES) and where: every bucket of its tenant when
    # ``scopes`` is empty, else only the named "bucket" or "bucket/prefix" entries. Root identities are the
    # island's operators: every tenant, every bucket, the admin API.
    tenant: str = ROOT_TENANT
    role: str = "admin"
    scopes: tuple[str, ...] = ()

    @property
    def operator(self) -> bool:
        """An island operator: the root identity, or an admin of the root tenant on every bucket. Operators reach
        every tenant's buckets and the admin API."""
        return self.is_root or (self.tenant == ROOT_TENANT and self.role == "admin" and not self.scopes)


@dataclass(slots=True)
class Bucket:
    name: str
    owner_id: str
    created: float
    region: str = "us-east-1"
    tenant: str = ROOT_TENANT
    limits: Limits = field(default_factory=Limits)


@dataclass(slots=True)
class BucketProperties:
    """What a bucket carries besides its objects: public read access (Azure's container access level: "" private,
    "blob" anonymous reads of objects, "container" also anonymous listing), user metadata, stored access policies
    (Azure signed identifiers, kept as given) and when these last changed. Only the Blob front end honours
    ``public_access`` so far; S3 keeps every bucket private."""

    bucket: str
    public_access: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    access_policies: list[dict[str, str]] = field(default_factory=list)
    modified: float = 0.0


@dataclass(slots=True, frozen=True)
class Extent:
    """``length`` bytes at ``offset`` of the data-store blob ``blob_id``."""

    blob_id: str
    offset: int
    length: int


@dataclass(slots=True)
class SegmentInfo:
    """A segment file of the packed store as the metadata store knows it (atoll/stores/meta/sql_segments.py).
    ``size`` is known once sealed; ``live_bytes``/``live_count`` are the payload bytes and records objects still
    point at; ``owner`` is the writing process while open, the compacting one while compacting."""

    segment_id: str
    owner: str
    state: str  # open | sealed | compacting | retired
    created: float
    sealed: float = 0.0
    size: int = 0
    live_bytes: int = 0
    live_count: int = 0
    lease_until: float = 0.0
    retired: float = 0.0


# Headers that S3 stores with an object and returns on GET/HEAD, as (canonical name, lower-case name).
STORED_HEADERS: tuple[tuple[str, str], ...] = (
    ("Content-Type", "content-type"),
    ("Content-Encoding", "content-encoding"),
    ("Content-Disposition", "content-disposition"),
    ("Content-Language", "content-language"),
    ("Cache-Control", "cache-control"),
    ("Expires", "expires"),
)


@dataclass(slots=True)
class ObjectVersion:
    """One committed version of a key.

    ``etag`` is unquoted: the MD5 hex of the bytes for a single PUT, ``md5(part md5s)-N`` after multipart.
    ``headers`` maps lower-case stored header names (see STORED_HEADERS) to values; ``user_meta`` maps the
    lower-case suffix of ``x-amz-meta-*`` to its value. ``checksums`` maps an algorithm name (crc32, crc32c,
    crc64nvme, sha1, sha256) to its base64 value (``value-N`` for a composite multipart checksum).
    ``part_count`` is 0 for a single PUT; otherwise extents[i] is part i+1.
    """

    bucket: str
    key: str
    version_id: str
    size: int
    etag: str
    last_modified: float
    headers: dict[str, str] = field(default_factory=dict)
    user_meta: dict[str, str] = field(default_factory=dict)
    checksums: dict[str, str] = field(default_factory=dict)
    checksum_type: str = ""
    extents: list[Extent] = field(default_factory=list)
    part_count: int = 0
    owner_id: str = ""
    # Tiering state (buckets linked to a cold store; local buckets keep the defaults).
    residency: str = "resident"  # RESIDENT, PARTIAL (a sparse blob and a block map) or ABSENT (cold only)
    cold_etag: str = ""  # the cold object these bytes came from or were drained to ("" if none yet)
    cold_mtime: float = 0.0
    warm_seq: int = 0  # insertion order for eviction (SIEVE); 0 = never evictable (local bucket)
    pinned_until: float = 0.0
    # The committed block list, (block id, size, MD5 hex) in order, of a blob written by Azure Put Block List;
    # empty for every other write (Get Block List then reports no committed blocks, as Azure does after Put Blob).
    blocks: list[tuple[str, int, str]] = field(default_factory=list)
    # Not stored: set on the copy served when the cold store could not be asked whether it is current.
    stale: bool = False

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "binary/octet-stream")


RESIDENT = "resident"
PARTIAL = "partial"
ABSENT = "absent"
RESIDENCY_CODES = {ABSENT: 0, PARTIAL: 1, RESIDENT: 2}
RESIDENCY_NAMES = {v: k for k, v in RESIDENCY_CODES.items()}


@dataclass(slots=True)
class Link:
    """A bucket's link to a cold store. ``url`` carries no credentials; ``options`` are the non-secret obstore
    settings given per link (secret ones live in the server's secret file, see atoll.stores.cold.links)."""

    bucket: str
    url: str
    mode: str  # cache | writeback | writethrough
    revalidate: str = "never"  # never | always | ttl=SECONDS
    options: dict[str, str] = field(default_factory=dict)
    created: float = 0.0

    @property
    def writable(self) -> bool:
        return self.mode != "cache"

    @property
    def revalidate_seconds(self) -> float | None:
        """None: never; 0: on every open; else the TTL."""
        if self.revalidate == "never":
            return None
        if self.revalidate == "always":
            return 0.0
        return float(self.revalidate.partition("=")[2])


@dataclass(slots=True)
class CheckpointGroup:
    """Keys under ``prefix`` whose basename is one of ``markers`` reach the cold store only after every other
    pending key in the same directory has."""

    bucket: str
    prefix: str
    markers: list[str]


@dataclass(slots=True)
class DrainEntry:
    """A write (or delete) that must still reach the cold store. One per key: a newer write replaces the entry,
    so only the newest bytes cross the WAN; ``since`` stays the time of the oldest write not yet drained."""

    bucket: str
    key: str
    op: str  # put | delete
    version_id: str
    size: int
    since: float
    attempts: int = 0
    last_error: str = ""


@dataclass(slots=True)
class Job:
    job_id: str
    kind: str  # stage | sync-index
    bucket: str
    spec: dict
    state: str = "queued"  # queued | running | done | failed | cancelled
    priority: int = 1  # 0 high, 1 normal, 2 low
    created: float = 0.0
    updated: float = 0.0
    progress: dict = field(default_factory=dict)
    error: str = ""
    owner: str = ""  # host:pid of the runner holding it (while running)


@dataclass(slots=True)
class ListEntry:
    """What a listing needs of an object: no extents, no metadata maps."""

    key: str
    size: int
    etag: str
    last_modified: float
    owner_id: str


@dataclass(slots=True)
class Upload:
    """A multipart upload in progress, with everything the final object will carry besides its bytes."""

    upload_id: str
    bucket: str
    key: str
    initiated: float
    owner_id: str
    headers: dict[str, str] = field(default_factory=dict)
    user_meta: dict[str, str] = field(default_factory=dict)
    checksum_algorithm: str = ""
    checksum_type: str = ""


@dataclass(slots=True)
class Part:
    upload_id: str
    part_number: int
    size: int
    etag: str
    blob_id: str
    last_modified: float
    checksums: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Block:
    """An uncommitted block (Azure Put Block): it belongs to a blob name, not to an upload, until a Put Block
    List uses it (its blob becomes an extent of the new version) or drops it (its blob becomes garbage)."""

    bucket: str
    key: str
    block_id: str  # the client's base64 id, as sent
    blob_id: str
    size: int
    md5: str  # hex
    created: float


@dataclass(slots=True)
class CopyState:
    """The last copy into a key (Azure Copy Blob): one row per destination key, replaced by the next copy.
    ``version_id`` names the version the copy committed; the state describes a key only while that version (or,
    when pending and nothing was committed yet, no newer write) is current. ``heartbeat`` is renewed by the
    worker running a pending copy: a pending copy whose heartbeat stopped is a copy that died with its worker."""

    bucket: str
    key: str
    copy_id: str
    source: str  # the source URL without its query (no SAS or presigned signature is ever stored)
    status: str  # pending | success | aborted | failed
    started: float
    copied: int = 0
    total: int = -1  # -1 while unknown
    completed: float = 0.0
    description: str = ""
    version_id: str = ""
    heartbeat: float = 0.0
