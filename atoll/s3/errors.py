"""Core errors → S3 error code and HTTP status, in one table; and the XML error response."""

from __future__ import annotations

from atoll import errors
from atoll.http.server import Response
from atoll.s3 import xml

# (code, status) per domain error class; the most specific class wins (looked up along the MRO).
_TABLE: dict[type, tuple[str, int]] = {
    errors.NoSuchBucket: ("NoSuchBucket", 404),
    errors.NoSuchKey: ("NoSuchKey", 404),
    errors.NoSuchUpload: ("NoSuchUpload", 404),
    errors.NotFound: ("NotFound", 404),
    errors.BucketAlreadyExists: ("BucketAlreadyExists", 409),
    errors.BucketAlreadyOwnedByYou: ("BucketAlreadyOwnedByYou", 409),
    errors.BucketNotEmpty: ("BucketNotEmpty", 409),
    errors.ConditionalRequestConflict: ("ConditionalRequestConflict", 409),
    errors.Conflict: ("OperationAborted", 409),
    errors.PreconditionFailed: ("PreconditionFailed", 412),
    errors.NotModified: ("NotModified", 304),
    errors.InvalidBucketName: ("InvalidBucketName", 400),
    errors.KeyTooLong: ("KeyTooLongError", 400),
    errors.InvalidRange: ("InvalidRange", 416),
    errors.EntityTooSmall: ("EntityTooSmall", 400),
    errors.EntityTooLarge: ("EntityTooLarge", 400),
    errors.InvalidPart: ("InvalidPart", 400),
    errors.InvalidPartOrder: ("InvalidPartOrder", 400),
    errors.BadDigest: ("BadDigest", 400),
    errors.InvalidDigest: ("InvalidDigest", 400),
    errors.IncompleteBody: ("IncompleteBody", 400),
    errors.InvalidArgument: ("InvalidArgument", 400),
    errors.InvalidRequest: ("InvalidRequest", 400),
    errors.QuotaExceeded: ("QuotaExceeded", 403),
    errors.AccessDenied: ("AccessDenied", 403),
    errors.InsufficientStorage: ("SlowDown", 503),
    errors.Throttled: ("SlowDown", 503),
    errors.Unavailable: ("ServiceUnavailable", 503),
}

# Codes a front end may name explicitly (through ``detail["code"]``) and their statuses.
STATUS_BY_CODE = {
    "MalformedXML": 400, "InvalidLocationConstraint": 400, "InvalidRange": 416, "MissingContentLength": 411,
    "MethodNotAllowed": 405, "NotImplemented": 501, "InvalidPartNumber": 416, "XAmzContentSHA256Mismatch": 400,
    "SignatureDoesNotMatch": 403, "InvalidAccessKeyId": 403, "RequestTimeTooSkewed": 403, "AccessDenied": 403,
    "AuthorizationHeaderMalformed": 400, "AuthorizationQueryParametersError": 400, "MissingSecurityHeader": 400,
    "InvalidRequest": 400, "InvalidArgument": 400, "IncompleteBody": 400, "InvalidURI": 400,
    "MalformedTrailerError": 400, "InvalidStorageClass": 400, "InvalidBucketName": 400, "BadDigest": 400,
    "InvalidDigest": 400, "RequestHeaderSectionTooLarge": 400, "BadRequest": 400, "RequestTimeout": 400,
    "MetadataTooLarge": 400, "InternalError": 500, "ServiceUnavailable": 503, "SlowDown": 503,
    "InvalidObjectState": 403, "NoSuchBucket": 404, "NoSuchKey": 404, "EntityTooLarge": 400,
    "MaxMessageLengthExceeded": 400, "UnexpectedContent": 400, "MissingRequestBodyError": 400,
    "KeyTooLongError": 400, "InvalidTag": 400,
}


class S3Error(Exception):
    """An error the S3 front end raises itself (protocol-level problems the core never sees)."""

    def __init__(self, code: str, message: str, status: int | None = None, **resource: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status or STATUS_BY_CODE.get(code, 400)
        self.resource = resource


def code_and_status(exc: errors.AtollError) -> tuple[str, int]:
    explicit = exc.detail.get("code") if exc.detail else None
    if isinstance(explicit, str) and explicit in STATUS_BY_CODE:  # another protocol's code (a lease's): by class
        return explicit, STATUS_BY_CODE[explicit]
    for cls in type(exc).__mro__:
        if cls in _TABLE:
            return _TABLE[cls]
    return "InternalError", 500


def error_response(code: str, message: str, status: int, request_id: str, *, resource: dict[str, str] | None = None,
                   head: bool = False, retry_after: int | None = None) -> Response:
    headers: list[tuple[str, str]] = []
    if retry_after is not None:
        headers.append(("Retry-After", str(retry_after)))
    if status == 304:
        return Response(status=304, headers=headers)
    body = xml.error(code, message, request_id, resource or {})
    headers.append(("Content-Type", "application/xml"))
    if head:
        return Response(status=status, headers=headers, head_only=True, content_length=0)
    return Response(status=status, headers=headers, body=body)


def from_core(exc: errors.AtollError, request_id: str, head: bool = False) -> Response:
    code, status = code_and_status(exc)
    resource = {}
    if exc.detail:
        if "bucket" in exc.detail:
            resource["BucketName"] = str(exc.detail["bucket"])
        if "key" in exc.detail:
            resource["Key"] = str(exc.detail["key"])
    retry = exc.retry_after if isinstance(exc, errors.Unavailable) else None
    return error_response(code, exc.message, status, request_id, resource=resource, head=head, retry_after=retry)
