"""Value types shared by the core and the stores.

An object version is immutable once committed, except for the metadata-only replace of a self-copy. Its bytes
are described by *extents*: (blob, offset, length) triples in the data store. A single PUT is one extent covering
one blob; a completed multipart upload is one extent per part (Complete moves no data); later a packed small
object is one extent inside a segment file, and a partly filled read-through object a blob with a block map.
Every feature reads and writes this one row per key (design-notes: one object state machine).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class Identity:
    """An S3 access key and the user it belongs to."""

    access_key: str
    secret_key: str
    owner_id: str
    display_name: str
    created: float
    is_root: bool = False


@dataclass(slots=True)
class Bucket:
    name: str
    owner_id: str
    created: float
    region: str = "us-east-1"


@dataclass(slots=True, frozen=True)
class Extent:
    """``length`` bytes at ``offset`` of the data-store blob ``blob_id``."""

    blob_id: str
    offset: int
    length: int


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

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "binary/octet-stream")


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
