"""Which S3 operation a request is: a table over (target, method, sub-resource, copy header).

Routing is separate from running (as in Garage's router): ``route`` names the operation and its handler, and
nothing else; operations Atoll does not have are named too, so they answer NotImplemented, not a guess.
"""

from __future__ import annotations

from typing import Awaitable, Callable

from atoll.http.server import Response
from atoll.s3 import buckets, listing, multipart, objects
from atoll.s3.context import S3Context

Handler = Callable[[S3Context], Awaitable[Response]]

# Sub-resources of S3 that this island does not implement; a request naming one gets NotImplemented.
UNSUPPORTED_SUBRESOURCES = frozenset((
    "acl", "policy", "policyStatus", "cors", "lifecycle", "tagging", "encryption", "website", "logging",
    "notification", "replication", "requestPayment", "object-lock", "retention", "legal-hold", "torrent", "restore",
    "select", "accelerate", "analytics", "inventory", "metrics", "intelligent-tiering", "ownershipControls",
    "publicAccessBlock", "versions", "attributes", "versionId", "renameObject", "session", "metadataTable",
))


def _unsupported(query: dict[str, str]) -> str | None:
    if UNSUPPORTED_SUBRESOURCES.isdisjoint(query):
        return None  # the usual case, decided in one C call
    for name in query:
        if name in UNSUPPORTED_SUBRESOURCES:
            return name
    return None


def route(method: str, ctx: S3Context) -> tuple[str, Handler | None]:
    """(operation name, handler); the handler is None for an operation Atoll does not implement and for a
    method the target does not allow (the name then says which)."""
    q = ctx.query
    if ctx.bucket is None:
        if method == "GET":
            return "ListBuckets", buckets.list_buckets
        return "MethodNotAllowed", None
    unsupported = _unsupported(q)
    if ctx.key is None:
        if unsupported:
            return f"Bucket:{unsupported}", None
        if method == "GET":
            if "location" in q:
                return "GetBucketLocation", buckets.get_bucket_location
            if "versioning" in q:
                return "GetBucketVersioning", buckets.get_bucket_versioning
            if "uploads" in q:
                return "ListMultipartUploads", multipart.list_uploads
            if q.get("list-type") == "2":
                return "ListObjectsV2", listing.list_objects_v2
            return "ListObjects", listing.list_objects_v1
        if method == "HEAD":
            return "HeadBucket", buckets.head_bucket
        if method == "PUT":
            if "versioning" in q:
                return "PutBucketVersioning", None
            return "CreateBucket", buckets.create_bucket
        if method == "DELETE":
            return "DeleteBucket", buckets.delete_bucket
        if method == "POST":
            if "delete" in q:
                return "DeleteObjects", objects.delete_objects
            return "PostBucket", None
        return "MethodNotAllowed", None
    if unsupported:
        return f"Object:{unsupported}", None
    copy = "x-amz-copy-source" in ctx.headers
    if method == "GET":
        if "uploadId" in q:
            return "ListParts", multipart.list_parts
        return "GetObject", objects.get_object
    if method == "HEAD":
        return "HeadObject", objects.head_object
    if method == "PUT":
        if "uploadId" in q or "partNumber" in q:
            if "uploadId" not in q or "partNumber" not in q:
                return "InvalidPartRequest", None
            return ("UploadPartCopy", multipart.upload_part_copy) if copy else ("UploadPart", multipart.upload_part)
        return ("CopyObject", objects.copy_object) if copy else ("PutObject", objects.put_object)
    if method == "DELETE":
        if "uploadId" in q:
            return "AbortMultipartUpload", multipart.abort_upload
        return "DeleteObject", objects.delete_object
    if method == "POST":
        if "uploads" in q:
            return "CreateMultipartUpload", multipart.create_upload
        if "uploadId" in q:
            return "CompleteMultipartUpload", multipart.complete_upload
        return "PostObject", None
    return "MethodNotAllowed", None
