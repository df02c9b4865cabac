"""Object operations: GetObject, HeadObject, PutObject, DeleteObject, DeleteObjects, CopyObject."""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import logging
from email.utils import formatdate
from functools import lru_cache
from urllib.parse import unquote

from atoll import errors
from atoll.core.conditions import ReadConditions, check as check_conditions
from atoll.core.models import STORED_HEADERS, ObjectVersion
from atoll.core.namespace import CopySource
from atoll.http.heads import VersionHeads
from atoll.http.server import FileExtent, Response
from atoll.s3 import xml
from atoll.s3.context import S3Context
from atoll.s3.errors import S3Error, error_response
from atoll.s3.numbers import is_ascii_digits
from atoll.s3.payload import body_source, declared_size
from atoll.stores.meta.base import WriteCondition

MAX_USER_METADATA = 2048  # bytes of x-amz-meta-* names and values, as S3
_DELETE_BODY_LIMIT = 2 << 20
_OVERRIDES = (
    ("response-content-type", "Content-Type"), ("response-content-language", "Content-Language"),
    ("response-expires", "Expires"), ("response-cache-control", "Cache-Control"),
    ("response-content-disposition", "Content-Disposition"), ("response-content-encoding", "Content-Encoding"),
)


_OVERRIDE_PARAMS = frozenset(param for param, _ in _OVERRIDES)


# request helpers ---------------------------------------------------------------------------------------
def stored_headers(headers: dict[str, str]) -> dict[str, str]:
    out = {}
    for _, lower in STORED_HEADERS:
        value = headers.get(lower)
        if value is not None:
            if lower == "content-encoding":
                # aws-chunked is transfer framing, not a property of the object.
                tokens = [t.strip() for t in value.split(",") if t.strip() and t.strip().lower() != "aws-chunked"]
                if not tokens:
                    continue
                value = ",".join(tokens)
            out[lower] = value
    return out


def user_metadata(headers: dict[str, str]) -> dict[str, str]:
    meta = {name[11:]: value for name, value in headers.items() if name.startswith("x-amz-meta-")}
    if sum(len(k) + len(v) for k, v in meta.items()) > MAX_USER_METADATA:
        raise S3Error("MetadataTooLarge", "Your metadata headers exceed the maximum allowed metadata size.")
    return meta


def write_condition(headers: dict[str, str]) -> WriteCondition | None:
    if_match = headers.get("if-match")
    if_none_match = headers.get("if-none-match")
    if if_match is None and if_none_match is None:
        return None
    if if_none_match is not None and if_none_match.strip() != "*":
        raise S3Error("NotImplemented", "Only If-None-Match: * is supported for writes.", status=501)
    return WriteCondition(if_match=if_match.strip().strip('"') if if_match is not None else None,
                          if_none_match=if_none_match is not None)


_NO_CONDITIONS = ReadConditions()


def read_conditions(headers: dict[str, str], prefix: str = "") -> ReadConditions:
    if not prefix and "if-match" not in headers and "if-none-match" not in headers \
            and "if-modified-since" not in headers and "if-unmodified-since" not in headers:
        return _NO_CONDITIONS
    return ReadConditions(
        if_match=headers.get(f"{prefix}if-match"),
        if_none_match=headers.get(f"{prefix}if-none-match"),
        if_modified_since=headers.get(f"{prefix}if-modified-since"),
        if_unmodified_since=headers.get(f"{prefix}if-unmodified-since"),
    )


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """[start, end) for a single satisfiable byte range; None to serve the whole object (no header, a
    malformed one, or several ranges, as S3 does); raises InvalidRange when unsatisfiable."""
    if header is None:
        return None
    spec = header.strip()
    if not spec.startswith("bytes=") or "," in spec:
        return None
    first, sep, last = spec[6:].strip().partition("-")
    first, last = first.strip(), last.strip()
    if not sep or (first and not is_ascii_digits(first)) or (last and not is_ascii_digits(last)) \
            or (not first and not last):
        return None
    if first:
        start = int(first)
        end = int(last) + 1 if last else size
        if last and int(last) < start:
            return None
        if start >= size:
            raise errors.InvalidRange(size=size)
        return start, min(end, size)
    suffix = int(last)
    if suffix == 0 or size == 0:
        raise errors.InvalidRange(size=size)
    return max(0, size - suffix), size


@lru_cache(maxsize=8192)
def http_date(seconds: int) -> str:
    return formatdate(seconds, usegmt=True)


def _etag_header(etag: str) -> str:
    return f'"{etag}"'


STALE_HEADERS = (("Warning", '111 - "Revalidation Failed"'), ("x-atoll-stale", "cold-store-unreachable"))


def object_headers(version: ObjectVersion) -> list[tuple[str, str]]:
    """The stored headers of a version, as a fresh list the caller may extend."""
    pairs = _cached_headers(version)[0]
    if version.stale:
        # Served without the revalidation its link asks for: the cold store could not be reached.
        return [*pairs, *STALE_HEADERS]
    return list(pairs)


def _build_object_headers(version: ObjectVersion) -> list[tuple[str, str]]:
    headers = [
        ("ETag", _etag_header(version.etag)),
        ("Last-Modified", http_date(int(version.last_modified))),
        ("Accept-Ranges", "bytes"),
        ("Content-Type", version.content_type),
    ]
    for canonical, lower in STORED_HEADERS[1:]:
        value = version.headers.get(lower)
        if value is not None:
            headers.append((canonical, value))
    headers.extend((f"x-amz-meta-{k}", v) for k, v in version.user_meta.items())
    return headers


# The stored headers of a version as pairs and as encoded lines, built once per version (atoll.http.heads).
_cached_headers = VersionHeads(_build_object_headers)


def _apply_overrides(ctx: S3Context, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    if not ctx.query or _OVERRIDE_PARAMS.isdisjoint(ctx.query):
        return headers
    overrides = [(header, ctx.query[param]) for param, header in _OVERRIDES if param in ctx.query]
    if ctx.identity is None:
        raise S3Error("InvalidRequest", "Request specific response headers cannot be used for anonymous GET "
                                        "requests.")
    for header, value in overrides:
        # These values come from the query string, where %0D%0A decodes to a line break: sent as they are, they
        # would end the header line and let a (presigned) URL inject headers or a body into the response.
        if any(c < " " and c != "\t" or c == "\x7f" for c in value):
            raise S3Error("InvalidArgument", f"The {header} override contains a control character.",
                          ArgumentName=header)
    names = {h.lower() for h, _ in overrides}
    return [(h, v) for h, v in headers if h.lower() not in names] + overrides


# GET / HEAD --------------------------------------------------------------------------------------------
async def get_object(ctx: S3Context, head: bool = False) -> Response:
    headers = ctx.headers
    part_number = None
    if "partNumber" in ctx.query:
        part_number = ctx.int_param("partNumber", 1, low=1, high=10000)
    range_header = headers.get("range")
    if part_number is not None and range_header is not None:
        raise S3Error("InvalidRequest", "Cannot specify both Range header and partNumber query parameter.")
    partial = {"value": False, "parts": 0}

    def byte_range(version: ObjectVersion) -> tuple[int, int]:
        if part_number is not None:
            if version.part_count == 0:
                if part_number != 1:
                    raise S3Error("InvalidPartNumber", "The requested partnumber is not satisfiable", status=416)
                # AWS answers part 1 of a plain object as a range over all of it (206), except when empty.
                partial["value"] = version.size > 0
                return 0, version.size
            if part_number > version.part_count:
                raise S3Error("InvalidPartNumber", "The requested partnumber is not satisfiable", status=416)
            start = sum(e.length for e in version.extents[: part_number - 1])
            partial["value"] = True
            partial["parts"] = version.part_count
            return start, start + version.extents[part_number - 1].length
        selected = parse_range(range_header, version.size)
        if selected is None:
            return 0, version.size
        partial["value"] = True
        return selected

    conditions = read_conditions(headers)
    try:
        if head:
            version = await ctx.ns.head_object(ctx.identity, ctx.bucket, ctx.key)
            if not conditions.empty:
                check_conditions(conditions, version.etag, version.last_modified)
            start, end = byte_range(version)
            opened = []
        else:
            version, start, end, opened = await ctx.ns.open_object(ctx.identity, ctx.bucket, ctx.key, byte_range,
                                                                   conditions)
    except errors.InvalidRange as exc:
        size = exc.detail.get("size", 0)
        response = error_response("InvalidRange", "The requested range is not satisfiable", 416, ctx.request_id,
                                  resource={"RangeRequested": range_header or "", "ActualObjectSize": str(size)},
                                  head=head)
        # RFC 9110 and S3: a 416 names the current size, which CRT and the .NET SDK use to retry sensibly.
        response.headers.append(("Content-Range", f"bytes */{size}"))
        return response
    except errors.NotModified:
        current = await ctx.ns.head_object(ctx.identity, ctx.bucket, ctx.key)
        return Response(304, [("ETag", _etag_header(current.etag)),
                              ("Last-Modified", http_date(int(current.last_modified)))])

    length = end - start
    status, encoded = 200, b""
    if not partial["value"] and part_number is None and not version.stale and "x-amz-checksum-mode" not in headers \
            and (not ctx.query or _OVERRIDE_PARAMS.isdisjoint(ctx.query)) \
            and (head or isinstance(opened, (bytes, list))):
        # The common answer (whole object, no extras): the version's header lines go out as cached bytes.
        out, encoded = [], _cached_headers(version)[1]
    else:
        out = object_headers(version)
        if partial["value"]:
            status = 206
            out.append(("Content-Range", f"bytes {start}-{end - 1}/{version.size}"))
            if partial["parts"]:
                out.append(("x-amz-mp-parts-count", str(partial["parts"])))
        elif version.part_count and part_number is not None:
            out.append(("x-amz-mp-parts-count", str(version.part_count)))
        if headers.get("x-amz-checksum-mode", "").upper() == "ENABLED" and not partial["value"]:
            for alg, value in version.checksums.items():
                out.append((f"x-amz-checksum-{alg}", value))
            if version.checksum_type:
                out.append(("x-amz-checksum-type", version.checksum_type))
        out = _apply_overrides(ctx, out)
    if head:
        return Response(status, out, head_only=True, content_length=length, encoded_headers=encoded)
    if isinstance(opened, bytes):
        return Response(status, out, body=opened, encoded_headers=encoded)
    if not isinstance(opened, list):  # read-through: streamed while the warm copy fills
        return Response(status, out, stream=_cut_short_on_cold_failure(opened), content_length=length)
    return Response(status, out, files=[FileExtent(fd, off, n) for fd, off, n in opened], content_length=length,
                    encoded_headers=encoded)


async def _cut_short_on_cold_failure(stream):
    """A read-through body whose cold store fails midway: the head is out, so closing the connection is all that
    is left to tell the client. The HTTP server closes quietly on a connection error; a WAN failure is worth a
    warning in the log, not a traceback."""
    try:
        async for chunk in stream:
            yield chunk
    except errors.AtollError as exc:
        logging.getLogger("atoll.s3").warning("a read-through response was cut short: %s", exc.message)
        raise ConnectionAbortedError(exc.message) from None


# GetObject with head=True, without a coroutine of its own wrapped around it (HEAD is a hot path).
head_object = functools.partial(get_object, head=True)


# PUT ---------------------------------------------------------------------------------------------------
async def put_object(ctx: S3Context) -> Response:
    identity = ctx.require_identity()
    body, algorithms, verify = body_source(ctx)
    version = await ctx.ns.put_object(
        identity, ctx.bucket, ctx.key, body, headers=stored_headers(ctx.headers),
        user_meta=user_metadata(ctx.headers), algorithms=algorithms, verify=verify,
        condition=write_condition(ctx.headers), declared_size=declared_size(ctx),
    )
    out = [("ETag", _etag_header(version.etag))]
    out.extend((f"x-amz-checksum-{alg}", value) for alg, value in version.checksums.items())
    if version.checksums:
        out.append(("x-amz-checksum-type", version.checksum_type or "FULL_OBJECT"))
    return Response(200, out)


# DELETE ------------------------------------------------------------------------------------------------
async def delete_object(ctx: S3Context) -> Response:
    await ctx.ns.delete_object(ctx.require_identity(), ctx.bucket, ctx.key)
    return Response(204)


# Per-key refusals of DeleteObjects (Namespace.delete_objects outcomes), answered as AccessDenied.
_DELETE_REFUSALS = {"LeaseIdMissing": "The object is leased through the Blob endpoint.",
                    "AccessDenied": "Access Denied."}


async def delete_objects(ctx: S3Context) -> Response:
    identity = ctx.require_identity()
    body = await ctx.http.read_body(_DELETE_BODY_LIMIT)
    md5 = ctx.headers.get("content-md5")
    if md5 is not None:
        try:
            expected = base64.b64decode(md5.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise S3Error("InvalidDigest", "The Content-MD5 you specified was invalid.") from None
        if len(expected) != 16:
            raise S3Error("InvalidDigest", "The Content-MD5 you specified was invalid.")
        if expected != hashlib.md5(body).digest():
            raise S3Error("BadDigest", "The Content-MD5 you specified did not match what we received.")
    keys, quiet = xml.parse_delete(body)
    outcome = await ctx.ns.delete_objects(identity, ctx.bucket, keys)
    deleted = [k for k, err in zip(keys, outcome) if err is None]
    failed = [(k, "KeyTooLongError" if err == "KeyTooLong" else "InvalidArgument", "The key is not valid.")
              if err not in _DELETE_REFUSALS else (k, "AccessDenied", _DELETE_REFUSALS[err])
              for k, err in zip(keys, outcome) if err is not None]
    return Response(200, [("Content-Type", "application/xml")], xml.delete_result(deleted, failed, quiet))


# COPY --------------------------------------------------------------------------------------------------
def copy_source(ctx: S3Context) -> CopySource:
    raw = ctx.headers.get("x-amz-copy-source", "")
    path = raw.split("?", 1)
    if len(path) > 1 and path[1] and not path[1].startswith("versionId=null"):
        raise S3Error("NotImplemented", "Copying a specific version is not supported: this island keeps no "
                                        "versions.", status=501)
    try:
        decoded = unquote(path[0], errors="strict")
    except UnicodeDecodeError:
        raise S3Error("InvalidArgument", "Copy Source must mention the source bucket and key: "
                                         "sourcebucket/sourcekey") from None
    bucket, _, key = decoded.lstrip("/").partition("/")
    if not bucket or not key:
        raise S3Error("InvalidArgument", "Copy Source must mention the source bucket and key: "
                                         "sourcebucket/sourcekey", ArgumentName="x-amz-copy-source")
    return CopySource(bucket=bucket, key=key, conditions=read_conditions(ctx.headers, "x-amz-copy-source-"))


async def copy_object(ctx: S3Context) -> Response:
    identity = ctx.require_identity()
    source = copy_source(ctx)
    directive = ctx.headers.get("x-amz-metadata-directive", "COPY").upper()
    if directive not in ("COPY", "REPLACE"):
        raise S3Error("InvalidArgument", "Unknown metadata directive.", ArgumentName="x-amz-metadata-directive")
    try:
        version = await ctx.ns.copy_object(
            identity, source, ctx.bucket, ctx.key, replace_metadata=directive == "REPLACE",
            headers=stored_headers(ctx.headers), user_meta=user_metadata(ctx.headers),
            condition=write_condition(ctx.headers),
        )
    except errors.NotModified:
        raise S3Error("PreconditionFailed", "At least one of the pre-conditions you specified did not hold",
                      status=412) from None
    return Response(200, [("Content-Type", "application/xml")],
                    xml.copy_result("CopyObjectResult", version.etag, version.last_modified, version.checksums))
