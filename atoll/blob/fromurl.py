"""From-URL and copy handlers: Put Blob From URL, Put Block From URL, Copy Blob From URL (synchronous), Copy Blob
(asynchronous) and Abort Copy Blob. The source is read by ``atoll.core.fromurl``; async copies run in
``atoll.core.copies``. ``copy_headers`` gives the x-ms-copy-* headers Get Blob Properties and listings report.
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from xml.sax.saxutils import escape

from atoll import errors
from atoll.blob.common import check_lease, metadata_from
from atoll.blob.leases import lease_id_of
from atoll.blob.context import BlobContext
from atoll.blob.errors import BlobError, http_date
from atoll.core import copies, fromurl
from atoll.core.conditions import ReadConditions
from atoll.core.models import CopyState, ObjectVersion
from atoll.core.namespace import MAX_SINGLE_PUT
from atoll.http.server import Response
from atoll.stores.meta.base import WriteCondition

MAX_SYNC_COPY = 256 << 20  # Copy Blob From URL: sources up to 256 MiB
MAX_PUT_FROM_URL = 5000 << 20  # Put Blob From URL: 5000 MiB (Atoll's single-write limit is lower: 5 GiB)
MAX_BLOCK_FROM_URL = 4000 << 20

# x-ms-blob-* request headers → the stored content headers
_BLOB_HEADERS = (("x-ms-blob-content-type", "content-type"), ("x-ms-blob-content-encoding", "content-encoding"),
                 ("x-ms-blob-content-language", "content-language"),
                 ("x-ms-blob-content-disposition", "content-disposition"),
                 ("x-ms-blob-cache-control", "cache-control"))


# Get Blob Properties / List Blobs -----------------------------------------------------------------------------
async def copy_headers(ns, version: ObjectVersion) -> list[tuple[str, str]]:
    """x-ms-copy-* headers of a blob that was (or is being) the destination of a Copy Blob; none otherwise."""
    state = await copies.copy_state(ns, version)
    return state_headers(state) if state is not None else []


def state_headers(state: CopyState) -> list[tuple[str, str]]:
    headers = [("x-ms-copy-id", state.copy_id), ("x-ms-copy-source", state.source),
               ("x-ms-copy-status", state.status)]
    if state.total >= 0:
        headers.append(("x-ms-copy-progress", f"{state.copied}/{state.total}"))
    if state.completed:
        headers.append(("x-ms-copy-completion-time", http_date(state.completed)))
    if state.description:
        headers.append(("x-ms-copy-status-description", state.description))
    return headers


async def copy_xml(ns, version: ObjectVersion | None) -> str:
    """The Copy* elements of a blob's <Properties> in List Blobs with include=copy ("" when it has no copy)."""
    state = await copies.copy_state(ns, version) if version is not None else None
    if state is None:
        return ""
    parts = [f"<CopyId>{escape(state.copy_id)}</CopyId>", f"<CopyStatus>{state.status}</CopyStatus>",
             f"<CopySource>{escape(state.source)}</CopySource>"]
    if state.total >= 0:
        parts.append(f"<CopyProgress>{state.copied}/{state.total}</CopyProgress>")
    if state.completed:
        parts.append(f"<CopyCompletionTime>{http_date(state.completed)}</CopyCompletionTime>")
    if state.description:
        parts.append(f"<CopyStatusDescription>{escape(state.description)}</CopyStatusDescription>")
    return "".join(parts)


# handlers ----------------------------------------------------------------------------------------------------
async def put_blob_from_url(ctx: BlobContext) -> Response:
    ctx.require("w")
    _no_body(ctx)
    if ctx.headers.get("x-ms-blob-type", "BlockBlob") != "BlockBlob":
        raise BlobError("InvalidHeaderValue", "Put Blob From URL creates block blobs only. (x-ms-blob-type)", 400)
    source = _source(ctx)
    await check_lease(ctx, ctx.container, ctx.blob)
    keep_properties = ctx.headers.get("x-ms-copy-source-blob-properties", "true").lower() != "false"
    headers = None if keep_properties and not _has_blob_headers(ctx) else _blob_headers(ctx)
    version = await _copying(ctx, fromurl.copy_into(
        ctx.ns, ctx.identity, source, ctx.container, ctx.blob, headers=headers, user_meta=_user_meta(ctx),
        condition=_write_condition(ctx), max_size=min(MAX_PUT_FROM_URL, MAX_SINGLE_PUT),
        expect_md5=fromurl.md5_header(ctx.headers.get("x-ms-source-content-md5")), lease_id=lease_id_of(ctx)))
    return Response(201, [*_written(version), ("x-ms-request-server-encrypted", "false")])


async def copy_blob_from_url(ctx: BlobContext) -> Response:
    ctx.require("w")
    _no_body(ctx)
    source = _source(ctx)
    await check_lease(ctx, ctx.container, ctx.blob)
    version = await _copying(ctx, fromurl.copy_into(
        ctx.ns, ctx.identity, source, ctx.container, ctx.blob, headers=None, user_meta=_user_meta(ctx) or None,
        condition=_write_condition(ctx), max_size=MAX_SYNC_COPY,
        expect_md5=fromurl.md5_header(ctx.headers.get("x-ms-source-content-md5")), lease_id=lease_id_of(ctx)))
    state = await _record_done(ctx, source, version)
    return Response(202, [*_written(version), ("x-ms-copy-id", state.copy_id), ("x-ms-copy-status", "success")])


async def copy_blob(ctx: BlobContext) -> Response:
    ctx.require("w")
    _no_body(ctx)
    source = _source(ctx)
    await check_lease(ctx, ctx.container, ctx.blob)
    condition = _write_condition(ctx)
    if condition is not None:
        await _check_condition(ctx, condition)
    state = await _copying(ctx, copies.start_copy(ctx.ns, ctx.identity, source, ctx.container, ctx.blob,
                                                  user_meta=_user_meta(ctx) or None, lease_id=lease_id_of(ctx)))
    version = await ctx.ns.head_object(ctx.identity, ctx.container, ctx.blob)
    return Response(202, [("ETag", f'"{version.etag}"'), ("Last-Modified", http_date(version.last_modified)),
                          ("x-ms-copy-id", state.copy_id), ("x-ms-copy-status", state.status)])


async def abort_copy_blob(ctx: BlobContext) -> Response:
    ctx.require("w")
    if ctx.headers.get("x-ms-copy-action", "").lower() != "abort":
        raise BlobError("InvalidHeaderValue", "The value for one of the HTTP headers is not in the correct "
                        "format. (x-ms-copy-action)", 400)
    copy_id = ctx.query.get("copyid", "")
    if not copy_id:
        raise BlobError("MissingRequiredQueryParameter", "A query parameter that's mandatory for this request is "
                        "not specified. (copyid)", 400)
    await copies.abort_copy(ctx.ns, ctx.identity, ctx.container, ctx.blob, copy_id)
    return Response(204)


async def put_block_from_url(ctx: BlobContext) -> Response:
    ctx.require("w")
    _no_body(ctx)
    block_id = ctx.query.get("blockid", "")
    if not block_id:
        raise BlobError("MissingRequiredQueryParameter", "A query parameter that's mandatory for this request is "
                        "not specified. (blockid)", 400)
    source = _source(ctx)
    source.byte_range = fromurl.parse_range(ctx.headers.get("x-ms-source-range"))
    expect_md5 = fromurl.md5_header(ctx.headers.get("x-ms-source-content-md5"))
    await check_lease(ctx, ctx.container, ctx.blob)
    await ctx.ns.bucket_for(ctx.identity, ctx.container, "write", ctx.blob)
    opened = await _copying(ctx, fromurl.open_source(ctx.ns, ctx.identity, source, ctx.container))
    try:
        if opened.size > MAX_BLOCK_FROM_URL:
            raise BlobError("RequestBodyTooLarge", "The block is larger than 4000 MiB.", 413)
        block = await _copying(ctx, ctx.ns.put_block(ctx.identity, ctx.container, ctx.blob, block_id, opened.body,
                                                     content_md5=expect_md5))
    finally:
        await opened.close()
    return Response(201, [("Content-MD5", base64.b64encode(bytes.fromhex(block.md5)).decode()),
                          ("x-ms-request-server-encrypted", "false")])


# helpers -----------------------------------------------------------------------------------------------------
def _source(ctx: BlobContext) -> fromurl.UrlSource:
    url = ctx.headers.get("x-ms-copy-source", "").strip()
    if not url:
        raise BlobError("MissingRequiredHeader", "An HTTP header that's mandatory for this request is not "
                        "specified. (x-ms-copy-source)", 400)
    try:
        fromurl.parse_source_url(url)
    except fromurl.CopySourceError as exc:
        raise _source_error(exc) from None
    except errors.AtollError:
        raise BlobError("InvalidHeaderValue", "The value for one of the HTTP headers is not in the correct "
                        "format. (x-ms-copy-source)", 400) from None
    authorization = ctx.headers.get("x-ms-copy-source-authorization")
    if authorization is not None and not authorization.startswith("Bearer "):
        raise BlobError("CannotVerifyCopySource", "Only Bearer tokens are supported in "
                        "x-ms-copy-source-authorization.", 400)
    h = ctx.headers
    conditions = ReadConditions(if_match=h.get("x-ms-source-if-match"),
                                if_none_match=h.get("x-ms-source-if-none-match"),
                                if_modified_since=h.get("x-ms-source-if-modified-since"),
                                if_unmodified_since=h.get("x-ms-source-if-unmodified-since"))
    host = ctx.headers.get("host", "").lower()
    grant = ctx.sas
    return fromurl.UrlSource(url=url, authorization=authorization, conditions=conditions,
                             own_hosts=frozenset({host} if host else ()),
                             own_host_style=bool(ctx.http.state.get("host_style")),
                             requester_reads=lambda bucket, key: grant is None or grant.allows("r", bucket, key))


async def _copying(ctx: BlobContext, work):
    """Await ``work``, turning a failing source into Azure's CannotVerifyCopySource (with the source's status)
    and a failed If-None-Match: * into BlobAlreadyExists. Runs ``work`` as a task: handlers run eagerly,
    outside any task, and the HTTP client's timeouts need one."""
    try:
        return await asyncio.ensure_future(work)
    except fromurl.CopySourceError as exc:
        raise _source_error(exc) from None
    except (errors.PreconditionFailed, errors.NotModified) as exc:
        if exc.detail.get("condition") == "If-None-Match" and ctx.headers.get("if-none-match", "").strip() == "*":
            raise BlobError("BlobAlreadyExists", "The specified blob already exists.", 409) from None
        raise


def _source_error(exc: fromurl.CopySourceError) -> BlobError:
    headers = []
    if exc.source_status:
        headers.append(("x-ms-copy-source-status-code", str(exc.source_status)))
    if exc.source_code:
        headers.append(("x-ms-copy-source-error-code", exc.source_code))
    return BlobError("CannotVerifyCopySource", exc.message, exc.status, headers)


def _no_body(ctx: BlobContext) -> None:
    length = ctx.headers.get("content-length", "0").strip() or "0"
    if length != "0":
        raise BlobError("InvalidHeaderValue", "The value for one of the HTTP headers is not in the correct format: "
                        "a From-URL request has no body. (Content-Length)", 400)


def _user_meta(ctx: BlobContext) -> dict[str, str]:
    return metadata_from(ctx.headers)


def _has_blob_headers(ctx: BlobContext) -> bool:
    return any(name in ctx.headers for name, _ in _BLOB_HEADERS)


def _blob_headers(ctx: BlobContext) -> dict[str, str]:
    return {stored: ctx.headers[name] for name, stored in _BLOB_HEADERS if ctx.headers.get(name)}


def _write_condition(ctx: BlobContext) -> WriteCondition | None:
    if_match = ctx.headers.get("if-match")
    if_none_match = ctx.headers.get("if-none-match", "").strip()
    if if_match is None and if_none_match != "*":
        return None
    return WriteCondition(if_match=if_match.strip().strip('"') if if_match is not None else None,
                          if_none_match=if_none_match == "*")


async def _check_condition(ctx: BlobContext, condition: WriteCondition) -> None:
    """Copy Blob's destination conditions, checked when the copy starts (it may finish much later)."""
    current = await ctx.ns.meta.get_object(ctx.container, ctx.blob)
    if condition.if_none_match and current is not None:
        raise BlobError("BlobAlreadyExists", "The specified blob already exists.", 409)
    if condition.if_match is not None and (current is None or condition.if_match not in ("*", current.etag)):
        raise BlobError("ConditionNotMet", "The condition specified using HTTP conditional header(s) is not met.",
                        412)


def _written(version: ObjectVersion) -> list[tuple[str, str]]:
    out = [("ETag", f'"{version.etag}"'), ("Last-Modified", http_date(version.last_modified))]
    if "-" not in version.etag and len(version.etag) == 32:
        out.append(("Content-MD5", base64.b64encode(bytes.fromhex(version.etag)).decode()))
    return out


async def _record_done(ctx: BlobContext, source: fromurl.UrlSource, version: ObjectVersion) -> CopyState:
    """A synchronous copy's state, so Get Blob Properties reports it as Azure does."""
    now = time.time()
    state = CopyState(bucket=ctx.container, key=ctx.blob, copy_id=str(uuid.uuid4()),
                      source=fromurl.redacted(source.url), status="success", started=now, copied=version.size,
                      total=version.size, completed=now, version_id=version.version_id, heartbeat=now)
    await ctx.ns.meta.put_copy(state)
    return state
