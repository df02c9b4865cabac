"""Block blob operations: Put Blob, Get Blob, Get Blob Properties, Set Blob Properties, Get and Set Blob
Metadata, Delete Blob.

A blob is the namespace's object under the same key: its content headers are the ones S3 stores
(``x-ms-blob-content-*`` ⇄ Content-*), its metadata is the object's user metadata (``x-ms-meta-*`` ⇄
``x-amz-meta-*``), its ETag the S3 ETag, quoted. Reads take the same path as S3's (small objects from memory,
the rest as sendfile extents, read-through objects streamed).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os

from atoll import errors
from atoll.blob.common import (check_lease, http_date, lease_headers, lease_state, metadata_from,
                               metadata_headers, quoted_etag)
from atoll.blob.context import BlobContext
from atoll.blob.leases import lease_id_of
from atoll.blob.errors import BlobError
from atoll.core import checksums as cks
from atoll.core.conditions import ReadConditions, check as check_conditions
from atoll.core.ingest import run_io
from atoll.core.models import ObjectVersion
from atoll.core.namespace import CopySource
from atoll.http.heads import VersionHeads
from atoll.http.server import FileExtent, Response
from atoll.stores.meta.base import WriteCondition

log = logging.getLogger("atoll.blob")

MAX_RANGE_MD5 = 4 << 20  # x-ms-range-get-content-md5 is allowed for ranges up to 4 MiB
_CONDITION_HEADERS = ("if-match", "if-none-match", "if-modified-since", "if-unmodified-since")
# Blob property headers of Put Blob / Set Blob Properties → the stored header (the S3 names).
_PROPERTY_HEADERS = (
    ("x-ms-blob-content-type", "content-type"), ("x-ms-blob-content-encoding", "content-encoding"),
    ("x-ms-blob-content-language", "content-language"), ("x-ms-blob-content-disposition", "content-disposition"),
    ("x-ms-blob-cache-control", "cache-control"),
)
_RESPONSE_HEADERS = (
    ("Content-Encoding", "content-encoding"), ("Content-Language", "content-language"),
    ("Content-Disposition", "content-disposition"), ("Cache-Control", "cache-control"),
)
DEFAULT_CONTENT_TYPE = "application/octet-stream"


def _condition_failed() -> BlobError:
    return BlobError("ConditionNotMet", "The condition specified using HTTP conditional header(s) is not met.", 412)


_NO_CONDITIONS = ReadConditions()


def read_conditions(headers: dict[str, str]) -> ReadConditions:
    if "if-match" not in headers and "if-none-match" not in headers and "if-modified-since" not in headers \
            and "if-unmodified-since" not in headers:
        return _NO_CONDITIONS
    return ReadConditions(if_match=headers.get("if-match"), if_none_match=headers.get("if-none-match"),
                          if_modified_since=headers.get("if-modified-since"),
                          if_unmodified_since=headers.get("if-unmodified-since"))


def content_md5(version: ObjectVersion) -> str | None:
    """The blob's Content-MD5 property: the one set explicitly, else the MD5 of a single-part write (its
    ETag); None for a multipart or block-list object, whose ETag is no MD5 of the bytes."""
    explicit = version.headers.get("content-md5")
    if explicit:
        return explicit
    if version.part_count == 0 and len(version.etag) == 32 and "-" not in version.etag:
        try:
            return base64.b64encode(bytes.fromhex(version.etag)).decode()
        except ValueError:
            return None
    return None


def _decode_md5(value: str, header: str) -> bytes:
    try:
        digest = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        digest = b""
    if len(digest) != 16:
        raise BlobError("InvalidHeaderValue", f"The value for one of the HTTP headers is not in the correct format. "
                        f"({header})", 400)
    return digest


def _version_pairs(version: ObjectVersion) -> list[tuple[str, str]]:
    return [
        ("ETag", quoted_etag(version.etag)),
        ("Last-Modified", http_date(int(version.last_modified))),
        ("Content-Type", version.headers.get("content-type", DEFAULT_CONTENT_TYPE)),
        ("Accept-Ranges", "bytes"),
        ("x-ms-blob-type", "BlockBlob"),
        ("x-ms-creation-time", http_date(int(version.last_modified))),
        ("x-ms-server-encrypted", "false"),
        *[(canonical, version.headers[lower]) for canonical, lower in _RESPONSE_HEADERS if lower in version.headers],
        *metadata_headers(version.user_meta),
    ]


# What Get Blob and Get Blob Properties report from the version alone (ETag, dates, content headers, metadata), as
# pairs and as encoded header lines, and its Content-MD5: built once per version (atoll.http.heads).
version_headers = VersionHeads(_version_pairs, extra=content_md5)


async def blob_headers(ctx: BlobContext, version: ObjectVersion) -> tuple[bytes, list[tuple[str, str]]]:
    """What Get Blob and Get Blob Properties report about a blob, besides length and range: encoded header lines
    (the version's own, when nothing overrides them) and the rest as pairs."""
    pairs, encoded, _ = version_headers(version)
    overridden = ctx.sas is not None and ctx.sas.response_headers
    out = list(pairs) if overridden else []
    out += lease_headers(*await lease_state(ctx, ctx.container, ctx.blob))
    if version.part_count:
        out.append(("x-ms-blob-committed-block-count", str(version.part_count)))
    hook = _copy_hook()
    if hook is not None:
        out += await hook(ctx.ns, version)
    if version.stale:
        out.append(("x-atoll-stale", "cold-store-unreachable"))
    if overridden:
        return b"", ctx.sas.override_response_headers(out)  # the rsc* values a service SAS signed
    return encoded, out


def _copy_hook():
    """``atoll.blob.fromurl.copy_headers(ns, version) -> [(name, value)]``: x-ms-copy-* of the last copy into
    this blob, once the copy owner defines it."""
    global _copy_headers
    if _copy_headers is _UNRESOLVED:
        from atoll.blob import fromurl  # late: that module may import this one

        _copy_headers = getattr(fromurl, "copy_headers", None)
    return _copy_headers


_UNRESOLVED = object()
_copy_headers = _UNRESOLVED  # resolved on first use: an import statement per request costs a microsecond


# ranges ----------------------------------------------------------------------------------------------------
def requested_range(ctx: BlobContext) -> tuple[int, int | None] | None:
    """(first, last or None) of the x-ms-range or Range header (x-ms-range wins), None for the whole blob.
    Azure takes ``bytes=N-`` and ``bytes=N-M``; a malformed x-ms-range is refused, a malformed Range ignored."""
    header = ctx.headers.get("x-ms-range")
    strict = header is not None
    if header is None:
        header = ctx.headers.get("range")
        if header is None:
            return None
    spec = header.strip()
    first, sep, last = spec[6:].partition("-") if spec.startswith("bytes=") else ("", "", "")
    first, last = first.strip(), last.strip()
    valid = sep and first.isascii() and first.isdigit() and (not last or (last.isascii() and last.isdigit()))
    if valid and last and int(last) < int(first):
        valid = False
    if not valid:
        if strict:
            raise BlobError("InvalidHeaderValue", "The value for one of the HTTP headers is not in the correct "
                            "format. (x-ms-range)", 400)
        return None
    return int(first), int(last) if last else None


def _invalid_range(ctx: BlobContext, size: int) -> Response:
    from atoll.blob.errors import error_response

    return error_response("InvalidRange", "The range specified is invalid for the current size of the resource.",
                          416, ctx.request_id, headers=[("Content-Range", f"bytes */{size}")])


# GET / HEAD ------------------------------------------------------------------------------------------------
async def get_blob(ctx: BlobContext) -> Response:
    ctx.require("r")
    await check_lease(ctx, ctx.container, ctx.blob) if "x-ms-lease-id" in ctx.headers else None
    wanted = requested_range(ctx)
    want_md5 = ctx.headers.get("x-ms-range-get-content-md5", "").lower() == "true"
    if want_md5:
        if wanted is None:
            raise BlobError("InvalidHeaderValue", "x-ms-range-get-content-md5 needs a range.", 400)
        if wanted[1] is None or wanted[1] - wanted[0] + 1 > MAX_RANGE_MD5:
            raise BlobError("OutOfRangeInput", "x-ms-range-get-content-md5 is allowed for ranges up to 4 MiB.", 400)

    def byte_range(version: ObjectVersion) -> tuple[int, int]:
        if wanted is None:
            return 0, version.size
        first, last = wanted
        if first >= version.size:
            raise errors.InvalidRange(size=version.size)
        return first, version.size if last is None else min(last + 1, version.size)

    try:
        version, start, end, opened = await ctx.ns.open_object(ctx.actor, ctx.container, ctx.blob, byte_range,
                                                               read_conditions(ctx.headers))
    except errors.InvalidRange as exc:
        return _invalid_range(ctx, int(exc.detail.get("size", 0)))
    except errors.NotModified:
        current = await ctx.ns.head_object(ctx.actor, ctx.container, ctx.blob)
        return Response(304, [("ETag", quoted_etag(current.etag)),
                              ("Last-Modified", http_date(int(current.last_modified)))])
    try:
        encoded, out = await blob_headers(ctx, version)
    except BaseException:
        _close(opened)
        raise
    status = 200
    length = end - start
    whole_md5 = version_headers(version)[2]
    if wanted is not None:
        status = 206
        out.append(("Content-Range", f"bytes {start}-{end - 1}/{version.size}"))
        if whole_md5:
            out.append(("x-ms-blob-content-md5", whole_md5))
    elif whole_md5:
        out.append(("Content-MD5", whole_md5))
    if want_md5:
        data = await _collect(opened, length)
        out.append(("Content-MD5", base64.b64encode(hashlib.md5(data).digest()).decode()))
        return Response(status, out, body=data, encoded_headers=encoded)
    if isinstance(opened, bytes):
        return Response(status, out, body=opened, encoded_headers=encoded)
    if not isinstance(opened, list):  # read-through: streamed while the warm copy fills
        return Response(status, out, stream=_cut_short_on_cold_failure(opened), content_length=length,
                        encoded_headers=encoded)
    return Response(status, out, files=[FileExtent(fd, off, n) for fd, off, n in opened], content_length=length,
                    encoded_headers=encoded)


def _not_modified(ctx: BlobContext, version: ObjectVersion) -> bool:
    """The request's read conditions against ``version``: raises for a failed precondition (412); True when
    If-None-Match / If-Modified-Since say the client's copy is current."""
    conditions = read_conditions(ctx.headers)
    if conditions.empty:
        return False
    try:
        check_conditions(conditions, version.etag, version.last_modified)
    except errors.NotModified:
        return True
    return False


async def get_blob_properties(ctx: BlobContext) -> Response:
    ctx.require("r")
    version = await ctx.ns.head_object(ctx.actor, ctx.container, ctx.blob)
    if _not_modified(ctx, version):
        return Response(304, [("ETag", quoted_etag(version.etag)),
                              ("Last-Modified", http_date(int(version.last_modified)))])
    encoded, out = await blob_headers(ctx, version)
    md5 = version_headers(version)[2]
    if md5:
        out.append(("Content-MD5", md5))
    out.append(("x-ms-access-tier", "Hot"))
    out.append(("x-ms-access-tier-inferred", "true"))
    return Response(200, out, head_only=True, content_length=version.size, encoded_headers=encoded)


def _close(opened) -> None:
    if isinstance(opened, list):
        for fd, _, _ in opened:
            try:
                os.close(fd)
            except OSError:
                pass


async def _collect(opened, length: int) -> bytes:
    """The bytes of a range of at most MAX_RANGE_MD5 (its MD5 goes in the head, before the body)."""
    if isinstance(opened, bytes):
        return opened
    if isinstance(opened, list):
        def read() -> bytes:
            try:
                return b"".join(os.pread(fd, n, off) for fd, off, n in opened)
            finally:
                _close(opened)
        return await run_io(read)
    chunks = []
    async for chunk in _cut_short_on_cold_failure(opened):
        chunks.append(chunk)
    data = b"".join(chunks)
    if len(data) != length:
        raise errors.ColdStoreUnavailable("The blob could not be read from its cold store; retry later.")
    return data


async def _cut_short_on_cold_failure(stream):
    try:
        async for chunk in stream:
            yield chunk
    except errors.AtollError as exc:
        log.warning("a read-through response was cut short: %s", exc.message)
        raise ConnectionAbortedError(exc.message) from None


# PUT -------------------------------------------------------------------------------------------------------
def _property_headers(headers: dict[str, str], *, with_request_headers: bool) -> dict[str, str]:
    """The stored content headers a Put Blob (x-ms-blob-* first, then the request's own Content-*) or a Set Blob
    Properties (x-ms-blob-* only: what it does not name is cleared, as Azure does) gives the blob."""
    stored = {}
    for azure_name, lower in _PROPERTY_HEADERS:
        value = headers.get(azure_name)
        if value is None and with_request_headers and lower != "content-type":
            value = headers.get(lower)
        if value is not None and value != "":
            stored[lower] = value
    if "content-type" not in stored:
        request_type = headers.get("content-type") if with_request_headers else None
        stored["content-type"] = request_type or DEFAULT_CONTENT_TYPE
    md5 = headers.get("x-ms-blob-content-md5")
    if md5:
        _decode_md5(md5, "x-ms-blob-content-md5")
        stored["content-md5"] = md5.strip()
    return stored


def write_condition(ctx: BlobContext) -> WriteCondition | None:
    """The atomic part of a write's conditions (If-Match of one ETag, If-None-Match: *); the rest is checked
    just before (``precheck_write``)."""
    if_match = ctx.headers.get("if-match")
    if_none_match = ctx.headers.get("if-none-match")
    atomic_match = if_match is not None and "," not in if_match
    create_only = if_none_match is not None and if_none_match.strip() == "*"
    if not atomic_match and not create_only:
        return None
    return WriteCondition(if_match=if_match.strip().removeprefix("W/").strip('"') if atomic_match else None,
                          if_none_match=create_only)


async def precheck_write(ctx: BlobContext) -> None:
    """Conditions of a write that the metadata commit cannot check atomically: dates, If-None-Match of an ETag,
    If-Match of several. Checked against the current blob when there is one."""
    headers = ctx.headers
    if not any(name in headers for name in _CONDITION_HEADERS):
        return
    try:
        current = await ctx.ns.head_object(ctx.identity, ctx.container, ctx.blob)
    except errors.NoSuchKey:
        if "if-match" in headers:
            raise _condition_failed() from None
        return
    if headers.get("if-none-match", "").strip() == "*":
        raise BlobError("BlobAlreadyExists", "The specified blob already exists.", 409)
    try:
        check_conditions(read_conditions(headers), current.etag, current.last_modified)
    except (errors.NotModified, errors.PreconditionFailed):
        raise _condition_failed() from None


async def put_blob(ctx: BlobContext) -> Response:
    headers = ctx.headers
    blob_type = headers.get("x-ms-blob-type")
    if blob_type is None:
        raise BlobError("MissingRequiredHeader", "An HTTP header that's mandatory for this request is not "
                        "specified. (x-ms-blob-type)", 400)
    if blob_type != "BlockBlob":
        raise BlobError("InvalidHeaderValue", "The value for one of the HTTP headers is not in the correct format. "
                        "(x-ms-blob-type)", 400)
    if ctx.sas is not None and not ctx.sas.allows("w", ctx.container, ctx.blob):
        ctx.require("c")  # create permission: a new blob only
        headers.setdefault("if-none-match", "*")
    http = ctx.http
    if http.content_length is None and "chunked" not in headers.get("transfer-encoding", "").lower():
        raise BlobError("MissingContentLength", "Content-Length is required.", 411)
    expected_md5 = _decode_md5(headers["content-md5"], "Content-MD5") if "content-md5" in headers else None
    crc64 = headers.get("x-ms-content-crc64")
    stored = _property_headers(headers, with_request_headers=True)
    meta = metadata_from(headers)
    await precheck_write(ctx)

    def verify(digests: dict[str, bytes], size: int) -> dict[str, str]:
        if expected_md5 is not None and digests["md5"] != expected_md5:
            raise BlobError("Md5Mismatch", "The MD5 value specified in the request did not match with the MD5 "
                            "value calculated by the server.", 400)
        if crc64 is not None and cks.azure_crc64(digests["crc64nvme"]) != crc64.strip():
            raise BlobError("Crc64Mismatch", "The CRC64 value specified in the request did not match with the "
                            "CRC64 value calculated by the server.", 400)
        return {"crc64nvme": cks.b64(digests["crc64nvme"])}

    try:
        version = await ctx.ns.put_object(ctx.identity, ctx.container, ctx.blob, http.body_chunks(), headers=stored,
                                          user_meta=meta, algorithms={"crc64nvme"}, verify=verify,
                                          condition=write_condition(ctx), lease_id=lease_id_of(ctx),
                                          declared_size=http.content_length)
    except errors.PreconditionFailed as exc:
        if exc.detail.get("condition") == "If-None-Match":
            raise BlobError("BlobAlreadyExists", "The specified blob already exists.", 409) from None
        raise _condition_failed() from None
    except errors.NoSuchKey:
        raise _condition_failed() from None  # If-Match on a blob that does not exist
    out = [("ETag", quoted_etag(version.etag)), ("Last-Modified", http_date(int(version.last_modified))),
           ("Content-MD5", base64.b64encode(bytes.fromhex(version.etag)).decode()),
           ("x-ms-request-server-encrypted", "false")]
    if "crc64nvme" in version.checksums:
        out.append(("x-ms-content-crc64", cks.azure_crc64(base64.b64decode(version.checksums["crc64nvme"]))))
    return Response(201, out)


# properties and metadata -----------------------------------------------------------------------------------
async def _replace_attributes(ctx: BlobContext, *, headers: dict[str, str] | None, meta: dict[str, str] | None
                              ) -> ObjectVersion:
    """Set Blob Properties / Metadata: the bytes stay, the content headers or the metadata change (the
    namespace's metadata-only self-copy, conditional on the version it read)."""
    await check_lease(ctx, ctx.container, ctx.blob)
    current = await ctx.ns.head_object(ctx.identity, ctx.container, ctx.blob)
    conditions = read_conditions(ctx.headers)
    if not conditions.empty:
        try:
            check_conditions(conditions, current.etag, current.last_modified)
        except (errors.NotModified, errors.PreconditionFailed):
            raise _condition_failed() from None
    source = CopySource(bucket=ctx.container, key=ctx.blob,
                        conditions=ReadConditions(if_match=current.etag))
    try:
        return await ctx.ns.copy_object(
            ctx.identity, source, ctx.container, ctx.blob, replace_metadata=True,
            headers=dict(current.headers) if headers is None else headers,
            user_meta=dict(current.user_meta) if meta is None else meta, lease_id=lease_id_of(ctx))
    except (errors.PreconditionFailed, errors.NotModified):
        raise BlobError("ConditionNotMet", "The blob changed while its properties were being set; retry.",
                        412) from None


async def set_blob_properties(ctx: BlobContext) -> Response:
    ctx.require("w")
    stored = _property_headers(ctx.headers, with_request_headers=False)
    if "x-ms-blob-content-md5" not in ctx.headers:
        stored.pop("content-md5", None)
    version = await _replace_attributes(ctx, headers=stored, meta=None)
    return Response(200, [("ETag", quoted_etag(version.etag)),
                          ("Last-Modified", http_date(int(version.last_modified)))])


async def get_blob_metadata(ctx: BlobContext) -> Response:
    ctx.require("r")
    version = await ctx.ns.head_object(ctx.actor, ctx.container, ctx.blob)
    if _not_modified(ctx, version):
        raise _condition_failed()
    out = [("ETag", quoted_etag(version.etag)), ("Last-Modified", http_date(int(version.last_modified)))]
    out += metadata_headers(version.user_meta)
    return Response(200, out, head_only=ctx.http.method == "HEAD", content_length=0)


async def set_blob_metadata(ctx: BlobContext) -> Response:
    ctx.require("w")
    version = await _replace_attributes(ctx, headers=None, meta=metadata_from(ctx.headers))
    return Response(200, [("ETag", quoted_etag(version.etag)),
                          ("Last-Modified", http_date(int(version.last_modified))),
                          ("x-ms-request-server-encrypted", "false")])


# DELETE ----------------------------------------------------------------------------------------------------
async def delete_blob(ctx: BlobContext) -> Response:
    ctx.require("d")
    snapshots = ctx.headers.get("x-ms-delete-snapshots")
    if snapshots is not None and snapshots not in ("include", "only"):
        raise BlobError("InvalidHeaderValue", "The value for one of the HTTP headers is not in the correct format. "
                        "(x-ms-delete-snapshots)", 400)
    if "snapshot" in ctx.query or "versionid" in ctx.query:
        raise BlobError("NotImplemented", "Atoll keeps no snapshots or versions.", 501)
    current = await ctx.ns.head_object(ctx.identity, ctx.container, ctx.blob)  # BlobNotFound, as Azure
    conditions = read_conditions(ctx.headers)
    if not conditions.empty:
        try:
            check_conditions(conditions, current.etag, current.last_modified)
        except (errors.NotModified, errors.PreconditionFailed):
            raise _condition_failed() from None
    await check_lease(ctx, ctx.container, ctx.blob)
    if snapshots != "only":  # "only" deletes the snapshots, and there are none
        await ctx.ns.delete_object(ctx.identity, ctx.container, ctx.blob, lease_id=lease_id_of(ctx))
    return Response(202, [("x-ms-delete-type-permanent", "true")])
