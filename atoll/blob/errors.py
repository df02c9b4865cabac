"""Azure Blob errors: core errors → Azure error code and status in one table, and Azure's XML error body.

Every error answer names its code in ``x-ms-error-code`` too: the SDKs read the header first, and a HEAD answer
has no body to read it from."""

from __future__ import annotations

import time
from email.utils import formatdate
from xml.sax.saxutils import escape

from atoll import errors
from atoll.http.server import Response


class BlobError(Exception):
    """An error the Blob front end raises itself (protocol-level problems the core never sees)."""

    def __init__(self, code: str, message: str, status: int = 400, headers: list[tuple[str, str]] | None = None
                 ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.headers = headers or []


# (code, status) per domain error class; the most specific class wins (looked up along the MRO).
_TABLE: dict[type, tuple[str, int]] = {
    errors.NoSuchBucket: ("ContainerNotFound", 404),
    errors.NoSuchKey: ("BlobNotFound", 404),
    errors.NoSuchUpload: ("BlobNotFound", 404),
    errors.NotFound: ("ResourceNotFound", 404),
    errors.BucketAlreadyExists: ("ContainerAlreadyExists", 409),
    errors.BucketAlreadyOwnedByYou: ("ContainerAlreadyExists", 409),
    errors.BucketNotEmpty: ("ContainerBeingDeleted", 409),  # not reached: Delete Container removes the blobs
    errors.ConditionalRequestConflict: ("OperationNotAllowedInCurrentState", 409),
    errors.ColdObjectChanged: ("SourceConditionNotMet", 409),
    errors.Conflict: ("OperationNotAllowedInCurrentState", 409),
    errors.PreconditionFailed: ("ConditionNotMet", 412),
    errors.NotModified: ("ConditionNotMet", 304),
    errors.InvalidBucketName: ("InvalidResourceName", 400),
    errors.KeyTooLong: ("InvalidResourceName", 400),
    errors.InvalidRange: ("InvalidRange", 416),
    errors.EntityTooSmall: ("InvalidInput", 400),
    errors.EntityTooLarge: ("RequestBodyTooLarge", 413),
    errors.InvalidPart: ("InvalidBlockList", 400),
    errors.InvalidPartOrder: ("InvalidBlockList", 400),
    errors.BadDigest: ("Md5Mismatch", 400),
    errors.InvalidDigest: ("InvalidHeaderValue", 400),
    errors.IncompleteBody: ("InvalidInput", 400),
    errors.InvalidArgument: ("InvalidInput", 400),
    errors.InvalidRequest: ("InvalidInput", 400),
    errors.ReadOnlyBucket: ("AuthorizationPermissionMismatch", 403),
    errors.QuotaExceeded: ("QuotaExceeded", 403),
    errors.AccessDenied: ("AuthorizationPermissionMismatch", 403),
    errors.InsufficientStorage: ("ServerBusy", 503),
    errors.Throttled: ("ServerBusy", 503),
    errors.ColdStoreUnavailable: ("ServerBusy", 503),
    errors.Unavailable: ("ServerBusy", 503),
}

# Codes a core error may name explicitly (``detail["code"]``, e.g. raised by a Blob-aware core feature such as
# leases or block lists) and their statuses.
STATUS_BY_CODE = {
    "InvalidBlockList": 400, "InvalidBlockId": 400, "InvalidBlobOrBlock": 400, "BlockListTooLong": 400, "BlockCountExceedsLimit": 409,
    "LeaseIdMissing": 412, "LeaseIdMismatchWithLeaseOperation": 409, "LeaseIdMismatchWithBlobOperation": 412,
    "LeaseIdMismatchWithContainerOperation": 412, "LeaseAlreadyPresent": 409, "LeaseAlreadyBroken": 409,
    "LeaseNotPresentWithLeaseOperation": 409, "LeaseNotPresentWithBlobOperation": 412,
    "LeaseNotPresentWithContainerOperation": 412, "LeaseIsBrokenAndCannotBeRenewed": 409,
    "LeaseIsBreakingAndCannotBeAcquired": 409, "LeaseIsBreakingAndCannotBeChanged": 409, "LeaseLost": 412,
    "CannotVerifyCopySource": 400, "PendingCopyOperation": 409, "NoPendingCopyOperation": 409,
    "CopyIdMismatch": 409, "BlobAlreadyExists": 409, "ContainerAlreadyExists": 409, "ConditionNotMet": 412,
    "SourceConditionNotMet": 412, "TargetConditionNotMet": 412, "InvalidRange": 416, "Md5Mismatch": 400,
    "Crc64Mismatch": 400, "InvalidHeaderValue": 400, "InvalidQueryParameterValue": 400, "InvalidInput": 400,
    "InvalidXmlDocument": 400, "MissingRequiredHeader": 400, "BlobNotFound": 404, "ContainerNotFound": 404,
    "AuthorizationPermissionMismatch": 403, "AuthenticationFailed": 403, "ServerBusy": 503,
    "InvalidSourceBlobUrl": 400, "InvalidSourceBlobType": 400, "RequestBodyTooLarge": 413,
}


def code_and_status(exc: errors.AtollError) -> tuple[str, int]:
    explicit = exc.detail.get("code") if exc.detail else None
    if isinstance(explicit, str) and explicit in STATUS_BY_CODE:
        return explicit, STATUS_BY_CODE[explicit]
    for cls in type(exc).__mro__:
        if cls in _TABLE:
            return _TABLE[cls]
    return "InternalError", 500


def error_body(code: str, message: str, request_id: str) -> bytes:
    moment = time.strftime("%Y-%m-%dT%H:%M:%S.0000000Z", time.gmtime())
    text = f"{message}\nRequestId:{request_id}\nTime:{moment}"
    return (f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{escape(code)}</Code>'
            f"<Message>{escape(text)}</Message></Error>").encode()


def error_response(code: str, message: str, status: int, request_id: str, head: bool = False,
                   headers: list[tuple[str, str]] | None = None) -> Response:
    if status == 304:  # not an error: the SDKs read a code here as a failed condition (412)
        return Response(status=304, headers=list(headers or []))
    out = [("x-ms-error-code", code), *(headers or [])]
    body = error_body(code, message, request_id)
    out.append(("Content-Type", "application/xml"))
    if head:
        return Response(status=status, headers=out, head_only=True, content_length=len(body))
    return Response(status=status, headers=out, body=body)


def from_core(exc: errors.AtollError, request_id: str, head: bool = False) -> Response:
    code, status = code_and_status(exc)
    headers = []
    if isinstance(exc, errors.Unavailable):
        headers.append(("Retry-After", str(exc.retry_after)))
    message = exc.message
    if code == "ContainerNotFound":
        message = "The specified container does not exist."
    elif code == "BlobNotFound":
        message = "The specified blob does not exist."
    elif code == "ContainerAlreadyExists":
        message = "The specified container already exists."
    elif code == "ConditionNotMet":
        message = "The condition specified using HTTP conditional header(s) is not met."
    return error_response(code, message, status, request_id, head=head, headers=headers)


def http_date(moment: float) -> str:
    return formatdate(moment, usegmt=True)
