"""AWS Signature Version 2 verification for S3 requests: pure logic, no I/O, no HTTP framework.

SigV2 is what older tools sign with (``Authorization: AWS AKID:signature``) and what boto3's
``generate_presigned_url`` still produces by default in us-east-1 (``?AWSAccessKeyId=…&Expires=…&Signature=…``)
unless the client sets ``signature_version="s3v4"``.

Contract
--------
``verify_request(method, raw_path, raw_query, headers, secret_for, now, max_skew, virtual_host_bucket=None)``
has the same inputs, results and errors as ``atoll.auth.sigv4.verify_request`` (which hands SigV2 requests to
this module, so callers need only that one entry point): ``None`` when the request carries no SigV2 credentials,
an ``AuthContext`` when the signature verifies, ``AuthError`` otherwise. ``virtual_host_bucket`` is the bucket
named by the Host header in a virtual-hosted style request: SigV2 signs "/bucket" + path whatever the addressing.

The context has ``payload_mode == "unsigned"`` and empty signing fields: SigV2 signs no body (only Content-MD5,
which the S3 front end checks anyway) and aws-chunked bodies are SigV4-only, so a SigV2 request declaring one
is refused rather than stored with its chunk framing.

What is signed (RESTAuthentication in the S3 documentation), as HMAC-SHA1 with the secret, base64::

    StringToSign = Verb \\n Content-MD5 \\n Content-Type \\n Date \\n CanonicalizedAmzHeaders CanonicalizedResource

* Date: the Date header, or "" when x-amz-date is present (x-amz-date is then the timestamp, and is signed
  among the amz headers); for query authentication, the Expires parameter.
* CanonicalizedAmzHeaders: every x-amz-* header, names lower-cased and sorted, values trimmed, repeated headers
  joined with "," (the HTTP server already joins them), one ``name:value\\n`` each. For query authentication,
  x-amz-*, Content-Type and Content-MD5 may come as query parameters instead (botocore moves them there when
  presigning); a header of the same name wins. Such parameters are only verified: the S3 front end acts on real
  headers, so metadata or an ACL given only in a presigned URL's query is not applied.
* CanonicalizedResource: ["/" + virtual-host bucket] + the path exactly as sent (percent-encoded, not
  normalised: AWS's own example signs ``/dictionary/fran%C3%A7ais/pr%c3%a9f%c3%a8re``) + "?" + the sub-resources
  (``SUBRESOURCES``) present in the query, sorted by name, with their percent-decoded values. A path naming only
  a bucket, ``/bkt``, is signed as ``/bkt/`` (S3 signs "/" + bucket + "/" + key, and botocore follows it).

Fallbacks, tried only after the exact form fails and each meaning the same request to the router: a bucket-only
path as sent (``/bkt``), and a sub-resource sent as ``name=`` signed as the bare ``name``.

Sub-resource names are percent-decoded before the check, so ``respon%73e-content-type`` cannot slip past the
signature while the router still obeys it. Neither a log line nor an error ever carries the expected signature.
"""

from __future__ import annotations

import base64
import hmac
from collections.abc import Callable, Mapping
from email.utils import mktime_tz, parsedate_tz
from urllib.parse import unquote, unquote_to_bytes

from atoll.auth.sigv4 import AuthContext, AuthError, _parse_amz_date

__all__ = ["SUBRESOURCES", "string_to_sign", "verify_request"]

# Query parameters that are part of the CanonicalizedResource. S3's documented list (acl, cors, delete, lifecycle,
# location, logging, notification, partNumber, policy, requestPayment, response-*, restore, tagging, torrent,
# uploadId, uploads, versionId, versioning, versions, website) plus the later ones botocore's HmacV1Auth signs:
# a name missing here, or present here but not in the client's list, breaks every request that carries it.
SUBRESOURCES = frozenset([
    "accelerate", "acl", "analytics", "cors", "defaultObjectAcl", "delete", "inventory", "lifecycle", "location",
    "logging", "metrics", "notification", "object-lock", "partNumber", "policy", "replication", "requestPayment",
    "response-cache-control", "response-content-disposition", "response-content-encoding",
    "response-content-language", "response-content-type", "response-expires", "restore", "select", "select-type",
    "storageClass", "tagging", "torrent", "uploadId", "uploads", "versionId", "versioning", "versions", "website",
])

_QUERY_AUTH_PARAMS = ("AWSAccessKeyId", "Signature", "Expires")

_MALFORMED_HEADER = "AWS authorization header is invalid.  Expected AwsAccessKeyId:signature"
_QUERY_REQUIRED = "Query-string authentication requires the Signature, Expires and AWSAccessKeyId parameters"
_BAD_DATE = "AWS authentication requires a valid Date or x-amz-date header"
_ONE_MECHANISM = ("Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, Signature query "
                  "string parameter or the Authorization header should be specified")


def verify_request(
    method: str,
    raw_path: str,
    raw_query: str,
    headers: Mapping[str, str],
    secret_for: Callable[[str], str | None],
    now: float,
    max_skew: float = 900.0,
    virtual_host_bucket: str | None = None,
) -> AuthContext | None:
    """Authenticate one SigV2 request; see the module docstring for the contract."""
    raw_path = raw_path or "/"
    query_auth = _query_auth_params(raw_query)
    authorization = headers.get("authorization")
    if authorization is not None:
        if query_auth:
            raise AuthError("InvalidArgument", _ONE_MECHANISM)
        return _verify_header_auth(method, raw_path, raw_query, headers, authorization, secret_for, now, max_skew,
                                   virtual_host_bucket)
    if not query_auth:
        return None
    return _verify_query_auth(method, raw_path, raw_query, headers, query_auth, secret_for, now,
                              virtual_host_bucket)


def string_to_sign(method: str, raw_path: str, raw_query: str, headers: Mapping[str, str], date: str, *,
                   virtual_host_bucket: str | None = None, query_headers: Mapping[str, str] | None = None) -> str:
    """The StringToSign as text, as a client would have signed it (for tests and debugging)."""
    headers_part, resources = _signed_parts(method, raw_path, raw_query, headers, date, virtual_host_bucket,
                                            query_headers or {})
    return headers_part + resources[0].decode("utf-8", "replace")


# --- header auth ------------------------------------------------------------------------------------------------

def _verify_header_auth(method, raw_path, raw_query, headers, authorization, secret_for, now, max_skew,
                        virtual_host_bucket) -> AuthContext:
    scheme, _, credentials = authorization.strip().partition(" ")
    # rpartition: base64 never contains ":", so everything before the last one is the access key.
    access_key, colon, signature = credentials.strip().rpartition(":")
    if scheme != "AWS" or not colon or not access_key or not signature:
        raise AuthError("InvalidArgument", _MALFORMED_HEADER)

    amz_date = headers.get("x-amz-date")
    if amz_date is not None:
        timestamp = _parse_date(amz_date)
        date = ""  # x-amz-date is signed among the amz headers; the Date line is empty (and Date ignored)
    else:
        date = headers.get("date", "").strip()
        timestamp = _parse_date(date)
    if timestamp is None:
        raise AuthError("AccessDenied", _BAD_DATE)
    if abs(now - timestamp) > max_skew:
        raise AuthError("RequestTimeTooSkewed",
                        "The difference between the request time and the current time is too large.")
    _reject_streaming_payload(headers)
    _check_signature(access_key, signature, secret_for,
                     *_signed_parts(method, raw_path, raw_query, headers, date, virtual_host_bucket, {}))
    return AuthContext(access_key, "unsigned", None, b"", "", "", "", False)


def _parse_date(value: str) -> float | None:
    """Epoch seconds of an RFC 1123 date (what SigV2 clients send), or of ``YYYYMMDDTHHMMSSZ`` in x-amz-date."""
    parsed = parsedate_tz(value) if value else None
    if parsed is None:
        return _parse_amz_date(value.strip()) if value else None
    try:
        return float(mktime_tz(parsed))
    except (OverflowError, ValueError, OSError):
        return None


# --- query auth (presigned URLs) --------------------------------------------------------------------------------

def _query_auth_params(raw_query: str) -> dict[str, str]:
    """AWSAccessKeyId, Signature and Expires (decoded) when the query carries SigV2 credentials, else {}."""
    if not raw_query or ("Signature" not in raw_query and "AWSAccessKeyId" not in raw_query):
        return {}
    found: dict[str, str] = {}
    for pair in raw_query.split("&"):
        name, _, value = pair.partition("=")
        if name in _QUERY_AUTH_PARAMS:
            if name in found:
                raise AuthError("InvalidArgument", f"Duplicate query parameter {name}.")
            found[name] = unquote(value)
    if "AWSAccessKeyId" not in found and "Signature" not in found:
        return {}
    return found


def _verify_query_auth(method, raw_path, raw_query, headers, params, secret_for, now,
                       virtual_host_bucket) -> AuthContext:
    access_key = params.get("AWSAccessKeyId", "")
    signature = params.get("Signature", "")
    expires = params.get("Expires", "")
    if not access_key or not signature or not expires:
        raise AuthError("AccessDenied", _QUERY_REQUIRED)
    if not (expires.isascii() and expires.isdigit()):
        raise AuthError("AccessDenied", f"Invalid date (should be seconds since epoch): {expires[:64]}")
    if now > int(expires):
        raise AuthError("AccessDenied", "Request has expired")
    _reject_streaming_payload(headers)
    _check_signature(access_key, signature, secret_for,
                     *_signed_parts(method, raw_path, raw_query, headers, expires, virtual_host_bucket,
                                    _headers_in_query(raw_query)))
    return AuthContext(access_key, "unsigned", None, b"", "", "", "", True)


def _headers_in_query(raw_query: str) -> dict[str, str]:
    """x-amz-*, content-type and content-md5 query parameters, names lower-cased, values decoded."""
    moved: dict[str, str] = {}
    for pair in raw_query.split("&"):
        name, _, value = pair.partition("=")
        name = unquote(name).lower()
        if name.startswith("x-amz-") or name in ("content-type", "content-md5"):
            moved.setdefault(name, unquote(value))
    return moved


# --- the string to sign -----------------------------------------------------------------------------------------

def _signed_parts(method, raw_path, raw_query, headers, date, virtual_host_bucket,
                  query_headers) -> tuple[str, list[bytes]]:
    """(everything up to the CanonicalizedResource as text, the CanonicalizedResource candidates as bytes)."""
    content_md5 = headers.get("content-md5", query_headers.get("content-md5", "")).strip()
    content_type = headers.get("content-type", query_headers.get("content-type", "")).strip()
    amz = {name: value for name, value in query_headers.items() if name.startswith("x-amz-")}
    amz.update((name, value) for name, value in headers.items() if name.startswith("x-amz-"))
    amz_lines = "".join(f"{name}:{amz[name].strip()}\n" for name in sorted(amz))
    headers_part = f"{method}\n{content_md5}\n{content_type}\n{date}\n{amz_lines}"
    return headers_part, _canonical_resources(raw_path, raw_query, virtual_host_bucket)


def _canonical_resources(raw_path: str, raw_query: str, virtual_host_bucket: str | None) -> list[bytes]:
    resource = _wire_bytes(raw_path)
    paths = [resource]
    if virtual_host_bucket:
        paths = [b"/" + virtual_host_bucket.encode("utf-8") + resource]
    elif resource.count(b"/") == 1 and len(resource) > 1:
        # A path-style URI naming only a bucket ("/bkt") is signed as "/bkt/" (S3 signs "/" + bucket + "/" + key;
        # botocore's auth_path does the same); the path as sent stays a fallback, since it means the same bucket.
        paths = [resource + b"/", resource]
    subresources = []
    if raw_query:
        for pair in raw_query.split("&"):
            name, equals, value = pair.partition("=")
            if "%" in name:
                name = unquote(name)
            if name in SUBRESOURCES:
                subresources.append((name, equals, unquote_to_bytes(_wire_bytes(value)) if value else b""))
    if not subresources:
        return paths
    subresources.sort(key=lambda item: item[0])  # by name only, stable: repeated names keep their order
    queries = [b"&".join(name.encode() + equals.encode() + value for name, equals, value in subresources)]
    if any(equals and not value for _, equals, value in subresources):
        queries.append(b"&".join(name.encode() + (b"=" + value if value else b"") for name, _, value in subresources))
    return [path + b"?" + query for path in paths for query in queries]


def _wire_bytes(text: str) -> bytes:
    """The bytes that came off the wire: the HTTP server decodes the request target as latin-1 (and callers that
    follow sigv4's advice, with surrogateescape); either way this gives them back."""
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape")


def _check_signature(access_key, signature, secret_for, headers_part: str, resources: list[bytes]) -> None:
    secret = secret_for(access_key)
    if secret is None:
        raise AuthError("InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records.")
    key = secret.encode("utf-8")
    provided = signature.strip().encode("ascii", "replace")
    # Header values arrive decoded as latin-1. botocore signs the text (UTF-8 in the string to sign) but sends it
    # as latin-1; a client sending raw UTF-8 bytes signs those bytes, which latin-1 gives back.
    prefixes = [headers_part.encode("utf-8", "surrogateescape")]
    if not headers_part.isascii():
        try:
            prefixes.append(headers_part.encode("latin-1"))
        except UnicodeEncodeError:
            pass
    for prefix in prefixes:
        for resource in resources:
            expected = base64.b64encode(hmac.digest(key, prefix + resource, "sha1"))
            if hmac.compare_digest(expected, provided):
                return
    raise AuthError("SignatureDoesNotMatch", "The request signature we calculated does not match the signature "
                    "you provided. Check your key and signing method.",
                    details={"AWSAccessKeyId": access_key,
                             "StringToSign": headers_part + resources[0].decode("utf-8", "replace")})


def _reject_streaming_payload(headers: Mapping[str, str]) -> None:
    declared = headers.get("x-amz-content-sha256", "")
    if declared.startswith("STREAMING-"):
        raise AuthError("InvalidRequest", "aws-chunked payloads (x-amz-content-sha256: STREAMING-*) require AWS "
                        "Signature Version 4 (AWS4-HMAC-SHA256).")
