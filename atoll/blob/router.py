"""Which Blob operation a request is: a table over (target, method, restype/comp, copy headers).

Routing is separate from running (as in ``atoll.s3.router``): ``route`` names the operation and its handler and
nothing else. Operations Atoll does not have are named too, so they answer NotImplemented rather than a guess.
Handlers are looked up by name in their module at request time, so an operation whose handler is not written
yet answers NotImplemented as well (blocks, leases and the from-URL family live in modules of their own).
"""

from __future__ import annotations

from types import ModuleType
from typing import Awaitable, Callable

from atoll.blob import blobs, blocks, containers, fromurl, leases, listing
from atoll.blob.context import BlobContext
from atoll.http.server import Response

Handler = Callable[[BlobContext], Awaitable[Response]]

# (operation, module, handler name). Operations with module None are named but not implemented.
OPERATIONS: dict[str, tuple[ModuleType | None, str]] = {
    # account
    "ListContainers": (containers, "list_containers"),
    "GetAccountInformation": (containers, "get_account_information"),
    "GetBlobServiceProperties": (None, ""),
    "SetBlobServiceProperties": (None, ""),
    "GetBlobServiceStats": (None, ""),
    "GetUserDelegationKey": (None, ""),
    "FindBlobsByTags": (None, ""),
    "BlobBatch": (None, ""),
    # containers
    "CreateContainer": (containers, "create_container"),
    "DeleteContainer": (containers, "delete_container"),
    "GetContainerProperties": (containers, "get_container_properties"),
    "GetContainerMetadata": (containers, "get_container_metadata"),
    "SetContainerMetadata": (containers, "set_container_metadata"),
    "GetContainerACL": (containers, "get_container_acl"),
    "SetContainerACL": (containers, "set_container_acl"),
    "LeaseContainer": (leases, "lease_container"),
    "ListBlobs": (listing, "list_blobs"),
    "RestoreContainer": (None, ""),
    "RenameContainer": (None, ""),
    # blobs
    "PutBlob": (blobs, "put_blob"),
    "GetBlob": (blobs, "get_blob"),
    "GetBlobProperties": (blobs, "get_blob_properties"),
    "SetBlobProperties": (blobs, "set_blob_properties"),
    "GetBlobMetadata": (blobs, "get_blob_metadata"),
    "SetBlobMetadata": (blobs, "set_blob_metadata"),
    "DeleteBlob": (blobs, "delete_blob"),
    "PutBlock": (blocks, "put_block"),
    "PutBlockList": (blocks, "put_block_list"),
    "GetBlockList": (blocks, "get_block_list"),
    "LeaseBlob": (leases, "lease_blob"),
    "PutBlobFromURL": (fromurl, "put_blob_from_url"),
    "PutBlockFromURL": (fromurl, "put_block_from_url"),
    "CopyBlobFromURL": (fromurl, "copy_blob_from_url"),
    "CopyBlob": (fromurl, "copy_blob"),
    "AbortCopyBlob": (fromurl, "abort_copy_blob"),
    "SnapshotBlob": (None, ""),
    "UndeleteBlob": (None, ""),
    "SetBlobTier": (None, ""),
    "GetBlobTags": (None, ""),
    "SetBlobTags": (None, ""),
    "SetBlobExpiry": (None, ""),
    "SetBlobImmutabilityPolicy": (None, ""),
    "DeleteBlobImmutabilityPolicy": (None, ""),
    "SetBlobLegalHold": (None, ""),
    "PutPage": (None, ""),
    "GetPageRanges": (None, ""),
    "AppendBlock": (None, ""),
    "PutAppendBlob": (None, ""),
    "PutPageBlob": (None, ""),
    "QueryBlobContents": (None, ""),
}


def handler_of(operation: str) -> Handler | None:
    module, name = OPERATIONS.get(operation, (None, ""))
    return getattr(module, name, None) if module is not None else None


def route(method: str, ctx: BlobContext) -> tuple[str, Handler | None]:
    """(operation name, handler); the handler is None for an operation Atoll does not implement. The name is
    ``UnsupportedHttpVerb`` for a method the target does not allow and ``InvalidUri`` for a request that names
    no operation."""
    operation = name_operation(method, ctx.container, ctx.blob, ctx.query, ctx.headers)
    return operation, handler_of(operation)


def name_operation(method: str, container: str | None, blob: str | None, q: dict[str, str],
                   headers: dict[str, str]) -> str:
    comp = q.get("comp", "")
    restype = q.get("restype", "")
    if container is None:
        if method in ("GET", "HEAD"):
            if comp == "list":
                return "ListContainers"
            if comp == "properties" and restype == "service":
                return "GetBlobServiceProperties"
            if comp == "properties" and restype == "account":
                return "GetAccountInformation"
            if comp == "stats":
                return "GetBlobServiceStats"
            if comp == "blobs":
                return "FindBlobsByTags"
        elif method == "PUT" and comp == "properties":
            return "SetBlobServiceProperties"
        elif method == "POST":
            if comp == "userdelegationkey":
                return "GetUserDelegationKey"
            if comp == "batch":
                return "BlobBatch"
        return "UnsupportedHttpVerb" if method not in ("GET", "HEAD", "PUT", "POST") else "InvalidUri"
    if blob is None:
        if restype == "account" and comp == "properties" and method in ("GET", "HEAD"):
            return "GetAccountInformation"
        if restype != "container":
            # Azure reads /account/name without restype as a blob in the $root container, which Atoll has not.
            return "InvalidUri"
        if method == "PUT":
            return {"": "CreateContainer", "metadata": "SetContainerMetadata", "acl": "SetContainerACL",
                    "lease": "LeaseContainer", "undelete": "RestoreContainer",
                    "rename": "RenameContainer"}.get(comp, "InvalidUri")
        if method in ("GET", "HEAD"):
            return {"": "GetContainerProperties", "metadata": "GetContainerMetadata", "acl": "GetContainerACL",
                    "list": "ListBlobs", "blobs": "FindBlobsByTags"}.get(comp, "InvalidUri")
        if method == "DELETE":
            return "DeleteContainer" if comp == "" else "InvalidUri"
        if method == "POST" and comp == "batch":
            return "BlobBatch"
        return "UnsupportedHttpVerb"
    copy_source = "x-ms-copy-source" in headers
    if method == "PUT":
        if comp == "":
            if copy_source:
                if "x-ms-blob-type" in headers:
                    return "PutBlobFromURL"
                if headers.get("x-ms-requires-sync", "").lower() == "true":
                    return "CopyBlobFromURL"
                return "CopyBlob"
            blob_type = headers.get("x-ms-blob-type", "")
            return {"AppendBlob": "PutAppendBlob", "PageBlob": "PutPageBlob"}.get(blob_type, "PutBlob")
        if comp == "block":
            return "PutBlockFromURL" if copy_source else "PutBlock"
        if comp == "copy":
            return "AbortCopyBlob"
        return {"blocklist": "PutBlockList", "properties": "SetBlobProperties", "metadata": "SetBlobMetadata",
                "lease": "LeaseBlob", "snapshot": "SnapshotBlob", "undelete": "UndeleteBlob", "tier": "SetBlobTier",
                "tags": "SetBlobTags", "expiry": "SetBlobExpiry", "immutabilitypolicies": "SetBlobImmutabilityPolicy",
                "legalhold": "SetBlobLegalHold", "page": "PutPage", "appendblock": "AppendBlock",
                }.get(comp.lower(), "InvalidUri")
    if method == "GET":
        return {"": "GetBlob", "blocklist": "GetBlockList", "metadata": "GetBlobMetadata", "tags": "GetBlobTags",
                "pagelist": "GetPageRanges"}.get(comp, "InvalidUri")
    if method == "HEAD":
        return {"": "GetBlobProperties", "metadata": "GetBlobMetadata"}.get(comp, "InvalidUri")
    if method == "DELETE":
        return {"": "DeleteBlob", "immutabilitypolicies": "DeleteBlobImmutabilityPolicy"}.get(comp.lower(),
                                                                                              "InvalidUri")
    if method == "POST" and comp == "query":
        return "QueryBlobContents"
    return "UnsupportedHttpVerb"
