"""Pure logic of the Blob front end: which operation a request is, and which Azure error a core error becomes."""

from __future__ import annotations

import pytest

from atoll import errors
from atoll.blob import router
from atoll.blob.errors import code_and_status, error_response, from_core
from atoll.blob.listing import _marker, _unmarker

ROUTES = [
    ("GET", None, None, {"comp": "list"}, {}, "ListContainers"),
    ("GET", None, None, {"restype": "account", "comp": "properties"}, {}, "GetAccountInformation"),
    ("GET", None, None, {"restype": "service", "comp": "properties"}, {}, "GetBlobServiceProperties"),
    ("PUT", "c", None, {"restype": "container"}, {}, "CreateContainer"),
    ("DELETE", "c", None, {"restype": "container"}, {}, "DeleteContainer"),
    ("HEAD", "c", None, {"restype": "container"}, {}, "GetContainerProperties"),
    ("GET", "c", None, {"restype": "container", "comp": "metadata"}, {}, "GetContainerMetadata"),
    ("PUT", "c", None, {"restype": "container", "comp": "metadata"}, {}, "SetContainerMetadata"),
    ("GET", "c", None, {"restype": "container", "comp": "acl"}, {}, "GetContainerACL"),
    ("PUT", "c", None, {"restype": "container", "comp": "acl"}, {}, "SetContainerACL"),
    ("PUT", "c", None, {"restype": "container", "comp": "lease"}, {}, "LeaseContainer"),
    ("GET", "c", None, {"restype": "container", "comp": "list"}, {}, "ListBlobs"),
    ("GET", "c", None, {}, {}, "InvalidUri"),
    ("PUT", "c", "b", {}, {"x-ms-blob-type": "BlockBlob"}, "PutBlob"),
    ("PUT", "c", "b", {}, {"x-ms-blob-type": "AppendBlob"}, "PutAppendBlob"),
    ("PUT", "c", "b", {}, {"x-ms-blob-type": "BlockBlob", "x-ms-copy-source": "u"}, "PutBlobFromURL"),
    ("PUT", "c", "b", {}, {"x-ms-copy-source": "u", "x-ms-requires-sync": "true"}, "CopyBlobFromURL"),
    ("PUT", "c", "b", {}, {"x-ms-copy-source": "u"}, "CopyBlob"),
    ("PUT", "c", "b", {"comp": "copy"}, {"x-ms-copy-action": "abort"}, "AbortCopyBlob"),
    ("PUT", "c", "b", {"comp": "block"}, {}, "PutBlock"),
    ("PUT", "c", "b", {"comp": "block"}, {"x-ms-copy-source": "u"}, "PutBlockFromURL"),
    ("PUT", "c", "b", {"comp": "blocklist"}, {}, "PutBlockList"),
    ("GET", "c", "b", {"comp": "blocklist"}, {}, "GetBlockList"),
    ("PUT", "c", "b", {"comp": "lease"}, {}, "LeaseBlob"),
    ("PUT", "c", "b", {"comp": "properties"}, {}, "SetBlobProperties"),
    ("PUT", "c", "b", {"comp": "metadata"}, {}, "SetBlobMetadata"),
    ("GET", "c", "b", {"comp": "metadata"}, {}, "GetBlobMetadata"),
    ("HEAD", "c", "b", {}, {}, "GetBlobProperties"),
    ("GET", "c", "b", {}, {}, "GetBlob"),
    ("DELETE", "c", "b", {}, {}, "DeleteBlob"),
    ("PUT", "c", "b", {"comp": "snapshot"}, {}, "SnapshotBlob"),
    ("GET", "c", "b", {"comp": "bogus"}, {}, "InvalidUri"),
    ("PATCH", "c", "b", {}, {}, "UnsupportedHttpVerb"),
]


@pytest.mark.parametrize("method,container,blob,query,headers,expected", ROUTES)
def test_operation_names(method, container, blob, query, headers, expected):
    assert router.name_operation(method, container, blob, query, headers) == expected


def test_every_routed_operation_is_in_the_table():
    for *_, expected in ROUTES:
        assert expected in router.OPERATIONS or expected in ("InvalidUri", "UnsupportedHttpVerb")
    assert router.handler_of("SnapshotBlob") is None  # named, not implemented: 501
    assert router.handler_of("GetBlob") is not None


@pytest.mark.parametrize("exc,code,status", [
    (errors.NoSuchKey(bucket="c", key="k"), "BlobNotFound", 404),
    (errors.NoSuchBucket(bucket="c"), "ContainerNotFound", 404),
    (errors.BucketAlreadyOwnedByYou(bucket="c"), "ContainerAlreadyExists", 409),
    (errors.PreconditionFailed(), "ConditionNotMet", 412),
    (errors.InvalidRange(size=3), "InvalidRange", 416),
    (errors.BadDigest(), "Md5Mismatch", 400),
    (errors.EntityTooLarge(), "RequestBodyTooLarge", 413),
    (errors.AccessDenied(), "AuthorizationPermissionMismatch", 403),
    (errors.ReadOnlyBucket(), "AuthorizationPermissionMismatch", 403),
    (errors.ColdStoreUnavailable(), "ServerBusy", 503),
    (errors.InsufficientStorage(), "ServerBusy", 503),
    (errors.InvalidArgument("x", code="InvalidBlockList"), "InvalidBlockList", 400),
    (errors.InvalidArgument("x", code="SomethingS3Only"), "InvalidInput", 400),
])
def test_core_errors_map_to_azure_codes(exc, code, status):
    assert code_and_status(exc) == (code, status)


def test_error_response_shape():
    response = from_core(errors.ColdStoreUnavailable(retry_after=7), "REQ1")
    headers = dict(response.headers)
    assert response.status == 503
    assert headers["x-ms-error-code"] == "ServerBusy"
    assert headers["Retry-After"] == "7"
    assert response.body.startswith(b'<?xml version="1.0" encoding="utf-8"?><Error><Code>ServerBusy</Code><Message>')
    assert b"\nRequestId:REQ1\nTime:" in response.body
    head = error_response("BlobNotFound", "gone", 404, "REQ2", head=True)
    assert head.head_only and dict(head.headers)["x-ms-error-code"] == "BlobNotFound"
    assert error_response("ConditionNotMet", "", 304, "REQ3").headers == []  # a 304 is no error


def test_list_markers_are_opaque_and_checked():
    assert _unmarker(_marker("dir/ünïcode key")) == "dir/ünïcode key"
    from atoll.blob.errors import BlobError

    with pytest.raises(BlobError):
        _unmarker("%%%")
