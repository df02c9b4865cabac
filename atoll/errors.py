"""Domain errors raised by Atoll's core.

The core knows nothing of HTTP: front ends (S3, later Azure Blob) translate these into their own codes and
statuses in one place each (``atoll/s3/errors.py``). The tree::

    AtollError
    ├── NotFound            NoSuchBucket, NoSuchKey, NoSuchUpload, NoSuchTenant
    ├── Conflict            BucketAlreadyExists, BucketAlreadyOwnedByYou, BucketNotEmpty,
    │                       ConditionalRequestConflict, TenantNotEmpty
    ├── PreconditionFailed  a write or read condition (If-Match, ...) did not hold
    ├── NotModified         a read condition asks for no body (If-None-Match, If-Modified-Since)
    ├── InvalidRequest      the client asked for something malformed or impossible
    │   ├── InvalidArgument, InvalidBucketName, KeyTooLong, InvalidRange
    │   ├── EntityTooSmall, EntityTooLarge, InvalidPart, InvalidPartOrder
    │   └── BadDigest, InvalidDigest, IncompleteBody
    ├── AccessDenied        the identity may not do this; QuotaExceeded
    └── Unavailable         Atoll cannot do it now (disk full, overloaded, cold store unreachable); retry later;
                            Throttled (a tenant's or bucket's rate limit)
"""

from __future__ import annotations


class AtollError(Exception):
    """Base of every error the core raises on purpose. ``message`` is safe to show to clients."""

    def __init__(self, message: str = "", **detail: object) -> None:
        super().__init__(message or self.__doc__ or type(self).__name__)
        self.message = message or (self.__doc__ or type(self).__name__).strip().splitlines()[0]
        self.detail = detail


class NotFound(AtollError):
    """The resource does not exist."""


class NoSuchBucket(NotFound):
    """The specified bucket does not exist."""


class NoSuchKey(NotFound):
    """The specified key does not exist."""


class NoSuchUpload(NotFound):
    """The specified multipart upload does not exist."""


class Conflict(AtollError):
    """The request conflicts with the current state."""


class BucketAlreadyExists(Conflict):
    """The requested bucket name is not available."""


class BucketAlreadyOwnedByYou(Conflict):
    """The bucket you tried to create already exists, and you own it."""


class BucketNotEmpty(Conflict):
    """The bucket you tried to delete is not empty."""


class ConditionalRequestConflict(Conflict):
    """A conflicting operation occurred; retry the request."""


class PreconditionFailed(AtollError):
    """At least one of the pre-conditions you specified did not hold."""


class NotModified(AtollError):
    """Not modified."""


class InvalidRequest(AtollError):
    """The request is not valid."""


class InvalidArgument(InvalidRequest):
    """Invalid argument."""


class InvalidBucketName(InvalidRequest):
    """The specified bucket is not valid."""


class KeyTooLong(InvalidRequest):
    """Your key is too long."""


class InvalidRange(InvalidRequest):
    """The requested range is not satisfiable."""


class EntityTooSmall(InvalidRequest):
    """Your proposed upload is smaller than the minimum allowed object size."""


class EntityTooLarge(InvalidRequest):
    """Your proposed upload exceeds the maximum allowed object size."""


class InvalidPart(InvalidRequest):
    """One or more of the specified parts could not be found or did not match."""


class InvalidPartOrder(InvalidRequest):
    """The list of parts was not in ascending order."""


class BadDigest(InvalidRequest):
    """The digest you specified did not match what we received."""


class InvalidDigest(InvalidRequest):
    """The digest you specified is not valid."""


class IncompleteBody(InvalidRequest):
    """You did not provide the number of bytes specified by the Content-Length HTTP header."""


class AccessDenied(AtollError):
    """Access Denied."""


class Unavailable(AtollError):
    """The service cannot handle the request now; retry later."""

    def __init__(self, message: str = "", retry_after: int = 1, **detail: object) -> None:
        super().__init__(message, **detail)
        self.retry_after = retry_after


class SegmentClosed(Unavailable):
    """A write's packed record lies in a segment that compaction closed before the write's metadata commit
    (atoll/stores/meta/sql_segments.py). The namespace writes the record again and retries; a client sees it
    only if that fails too, as a retryable 503."""


class InsufficientStorage(Unavailable):
    """The warm tier has no space for this write now."""


class ColdStoreUnavailable(Unavailable):
    """The cold store behind this bucket cannot be reached now; retry later."""


class ColdObjectChanged(Conflict):
    """The object changed in the cold store while it was being read."""


class ReadOnlyBucket(AccessDenied):
    """This bucket is a read-only cache of its cold store."""


# Leases (Azure "Lease Blob" / "Lease Container" semantics, atoll/core/leases.py). Each carries its Azure error code
# in ``detail["code"]``; the S3 front end, which knows none of these codes, maps them by class: a write refused by
# a lease is AccessDenied there.
class LeaseConflict(Conflict):
    """The lease operation conflicts with the lease's state."""

    def __init__(self, message: str = "", **detail: object) -> None:
        detail.setdefault("code", type(self).__name__)
        super().__init__(message, **detail)


class LeaseAlreadyPresent(LeaseConflict):
    """There is already a lease present."""


class LeaseIdMismatchWithLeaseOperation(LeaseConflict):
    """The lease ID specified did not match the lease ID for the blob."""


class LeaseIsBreakingAndCannotBeAcquired(LeaseConflict):
    """The lease ID matched, but the lease is currently in breaking state and cannot be acquired until it is broken."""


class LeaseIsBreakingAndCannotBeChanged(LeaseConflict):
    """The lease ID matched, but the lease is currently in breaking state and cannot be changed."""


class LeaseIsBrokenAndCannotBeRenewed(LeaseConflict):
    """The lease ID matched, but the lease has been broken explicitly and cannot be renewed."""


class LeaseNotPresentWithLeaseOperation(LeaseConflict):
    """There is currently no lease on the blob."""


class LeaseRequired(AccessDenied):
    """The object or bucket is leased and the request did not name its lease."""

    def __init__(self, message: str = "", **detail: object) -> None:
        detail.setdefault("code", type(self).__name__)
        super().__init__(message, **detail)


class LeaseIdMissing(LeaseRequired):
    """There is currently a lease on the blob and no lease ID was specified in the request."""


class LeaseIdMismatchWithBlobOperation(LeaseRequired):
    """The lease ID specified did not match the lease ID for the blob."""


class LeaseNotPresentWithBlobOperation(LeaseRequired):
    """There is currently no lease on the blob."""


class LeaseIdMismatchWithContainerOperation(LeaseRequired):
    """The lease ID specified did not match the lease ID for the container."""


class LeaseNotPresentWithContainerOperation(LeaseRequired):
    """There is currently no lease on the container."""


class LeaseHeaderError(InvalidArgument):
    """The value for one of the HTTP headers is not in the correct format."""

    def __init__(self, message: str = "", **detail: object) -> None:
        detail.setdefault("code", "InvalidHeaderValue")
        super().__init__(message, **detail)


# Governance (#7, docs/governance.md). Front ends answer QuotaExceeded with 403 and code QuotaExceeded (S3 and
# Blob), and Throttled with 503 SlowDown (S3) / ServerBusy (Blob) and Retry-After.
class NoSuchTenant(NotFound):
    """The specified tenant does not exist."""


class TenantNotEmpty(Conflict):
    """The tenant still owns buckets."""


class QuotaExceeded(AccessDenied):
    """The write would exceed a storage quota."""

    def __init__(self, message: str = "", **detail: object) -> None:
        detail.setdefault("code", "QuotaExceeded")
        super().__init__(message, **detail)


class Throttled(Unavailable):
    """Please reduce your request rate."""
