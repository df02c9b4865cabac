"""Copy sources named by a URL (the From-URL operations and Copy Blob): which source a URL names, and its bytes.

Three kinds of source, cheapest first:

1. The cold store of the destination's own linked bucket: the key is read through the tiering engine, so it
   becomes warm and cached under its own name (and a copy to another key copies warm extents), instead of a
   second copy of unknown provenance. The destination's link, not the URL's signature, authorizes the read: the
   requester may already read that bucket.
2. This Atoll itself (a URL of its own Blob endpoint): a server-side copy through the namespace, no bytes over
   the network, when the requester may read the source container. Otherwise the URL is fetched like any other,
   so the source's own authorization (a SAS, a public container) decides.
3. Any other http(s) URL (an S3 presigned URL, an Azure SAS URL, a plain web server): streamed with aiohttp into
   the ingest path, never held whole in memory.

Nothing here knows Azure's wire format: front ends turn ``CopySourceError`` into their own error.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
from dataclasses import dataclass, field
from typing import AsyncIterator, Awaitable, Callable
from urllib.parse import unquote, urlsplit

import aiohttp

from atoll import errors
from atoll.core import checksums as cks
from atoll.core import ingest
from atoll.core.conditions import ReadConditions, check as check_conditions
from atoll.core.models import STORED_HEADERS, Identity, Link, ObjectVersion
from atoll.core.namespace import CopySource, Namespace
from atoll.stores.cold import links as cold_links
from atoll.stores.meta.base import WriteCondition

MAX_SOURCE_URL = 8192
_CHUNK = 1 << 20
_CONNECT_TIMEOUT = 10.0
_READ_TIMEOUT = 60.0  # no byte from the source for this long: the copy fails
_STORED = {lower for _, lower in STORED_HEADERS}


class CopySourceError(errors.AtollError):
    """The copy source could not be read: ``status`` is the source's HTTP status (404, 403, ...), or 400 when it
    could not be reached or answered with a server error (the client named a source that does not work)."""

    def __init__(self, message: str, status: int = 400, source_status: int = 0, source_code: str = "") -> None:
        super().__init__(message, code="CannotVerifyCopySource")
        self.status = status
        self.source_status = source_status
        self.source_code = source_code


@dataclass(slots=True)
class UrlSource:
    """What a client names as a copy source. ``own_hosts``: the host[:port] names under which clients reach this
    Atoll's Blob endpoint (a URL there is served in-process when it can be)."""

    url: str
    authorization: str | None = None  # passed through to the source (x-ms-copy-source-authorization)
    byte_range: tuple[int, int] | None = None  # inclusive, as in x-ms-source-range
    conditions: ReadConditions = field(default_factory=ReadConditions)
    own_hosts: frozenset[str] = frozenset()
    own_host_style: bool = False  # those names carry the account (ACCOUNT.blob.DOMAIN/container/blob)
    # Whether the requester's own authorization covers reading (bucket, key) here. A Shared Key caller's does
    # (as Azure, the destination's key authorizes a same-account source); a caller holding only a SAS for the
    # destination must show the source's own authorization, so its URL is fetched like any other.
    requester_reads: Callable[[str, str], bool] = lambda bucket, key: True


@dataclass(slots=True)
class LocalRef:
    bucket: str
    key: str
    via_link: bool  # the destination's cold store named by URL


@dataclass(slots=True)
class OpenedSource:
    """Bytes of a source, ready to stream once. ``size``: the bytes ``body`` yields; ``total``: the whole source;
    ``md5``: of the whole source when the source says so (Content-MD5, or a single-part ETag)."""

    size: int
    total: int
    headers: dict[str, str]
    user_meta: dict[str, str]
    md5: bytes | None
    body: AsyncIterator[bytes]
    close: Callable[[], Awaitable[None]]


def redacted(url: str) -> str:
    """The URL without query or user info: safe to store, log and show (a SAS or presigned signature is not)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        return parts._replace(netloc=host, query="", fragment="").geturl()
    except ValueError:
        return ""


def parse_source_url(url: str):
    if not url or len(url) > MAX_SOURCE_URL:
        raise errors.InvalidArgument("The copy source URL is missing or too long.", code="InvalidHeaderValue")
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname
        port = parts.port
    except ValueError:
        raise errors.InvalidArgument("The copy source is not a valid URL.", code="InvalidHeaderValue") from None
    if parts.scheme.lower() not in ("http", "https") or not host:
        raise errors.InvalidArgument("The copy source must be an http or https URL.", code="InvalidHeaderValue")
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        address = None
    if address is not None and (address.is_link_local or address.is_multicast or address.is_unspecified):
        # Never let a copy reach a cloud metadata service (169.254.169.254) or a non-host address.
        raise CopySourceError("The copy source address is not allowed.", 403)
    del port
    return parts


def parse_range(value: str | None) -> tuple[int, int] | None:
    """``bytes=a-b`` (inclusive) of x-ms-source-range; None when absent."""
    if value is None or value == "":
        return None
    unit, _, spec = value.strip().partition("=")
    first, dash, last = spec.partition("-")
    if unit.strip() != "bytes" or not dash or not first.strip().isdigit() or not last.strip().isdigit():
        raise errors.InvalidArgument("The source range must be of the form bytes=first-last.",
                                     code="InvalidHeaderValue")
    start, end = int(first), int(last)
    if end < start:
        raise errors.InvalidArgument("The source range is empty.", code="InvalidHeaderValue")
    return start, end


def md5_header(value: str | None) -> bytes | None:
    """A base64 MD5 header (x-ms-source-content-md5, Content-MD5) as 16 bytes; None when absent."""
    if not value:
        return None
    try:
        digest = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        digest = b""
    if len(digest) != 16:
        raise errors.InvalidDigest("The MD5 value specified in the request is invalid.", code="InvalidHeaderValue")
    return digest


# which source ------------------------------------------------------------------------------------------------
async def locate(ns: Namespace, identity: Identity, source: UrlSource, dest_bucket: str) -> LocalRef | None:
    """The key of this Atoll a URL names and the requester may read directly, or None to fetch it over HTTP."""
    parts = parse_source_url(source.url)
    if ns.tier is not None:
        link = await ns.tier.link(dest_bucket)
        if link is not None:
            key = cold_key(link, ns.tier.settings.cold_defaults or {}, parts)
            if key is not None and source.requester_reads(dest_bucket, key):
                return LocalRef(dest_bucket, key, True)
    if parts.netloc.lower() not in source.own_hosts:
        return None
    # Path style /ACCOUNT/container/blob; host style ACCOUNT.blob.DOMAIN/container/blob.
    path = unquote(parts.path).lstrip("/")
    segments = path.split("/", 1) if source.own_host_style else path.split("/", 2)[1:]
    if len(segments) != 2 or not segments[0] or not segments[1]:
        raise CopySourceError("The copy source does not name a blob.", 400)
    bucket, key = segments
    if not source.requester_reads(bucket, key):
        return None
    try:
        await ns.bucket_for(identity, bucket, "read", key)
    except errors.NoSuchBucket:
        raise CopySourceError("The specified container does not exist.", 404, 404, "ContainerNotFound") from None
    except errors.AccessDenied:
        return None  # the URL's own authorization (a SAS, a public container) decides, over HTTP
    return LocalRef(bucket, key, False)


def cold_key(link: Link, defaults: dict[str, str], parts) -> str | None:
    """The bucket key a URL names when it points into the link's cold store (under its prefix), else None.
    Recognises the store's configured endpoint (path style), or Azure's and AWS's public host names."""
    scheme, base, prefix = cold_links.parse_url(link.url)
    options = {**{k.lower(): v for k, v in defaults.items()}, **{k.lower(): v for k, v in link.options.items()}}
    endpoint = next((v for k, v in options.items() if k.endswith("endpoint") or k.endswith("endpoint_url")), "")
    if scheme == "az":
        endpoint = endpoint or os.environ.get("AZURE_ENDPOINT", "")
        account = options.get("azure_storage_account_name") or options.get("account_name") or \
            os.environ.get("AZURE_STORAGE_ACCOUNT_NAME", "")
        roots = [f"{endpoint.rstrip('/')}/{base}"] if endpoint else \
            [f"https://{account}.blob.core.windows.net/{base}"] if account else []
    elif scheme == "s3":
        endpoint = endpoint or os.environ.get("AWS_ENDPOINT_URL", "")
        region = options.get("aws_region") or options.get("region") or os.environ.get("AWS_REGION", "us-east-1")
        roots = [f"{endpoint.rstrip('/')}/{base}"] if endpoint else [
            f"https://{base}.s3.amazonaws.com", f"https://{base}.s3.{region}.amazonaws.com",
            f"https://s3.{region}.amazonaws.com/{base}"]
    else:
        return None
    wanted = f"{parts.scheme.lower()}://{parts.netloc.lower()}{unquote(parts.path)}"
    for root in roots:
        try:
            root_parts = urlsplit(root)
        except ValueError:
            continue
        normal = f"{root_parts.scheme.lower()}://{root_parts.netloc.lower()}{unquote(root_parts.path)}"
        if not wanted.startswith(normal + "/"):
            continue
        rest = wanted[len(normal) + 1:]
        if prefix:
            if not rest.startswith(prefix + "/"):
                return None
            rest = rest[len(prefix) + 1:]
        return rest or None
    return None


# whole-object copies -----------------------------------------------------------------------------------------
async def copy_into(ns: Namespace, identity: Identity, source: UrlSource, bucket: str, key: str, *,
                    headers: dict[str, str] | None, user_meta: dict[str, str] | None,
                    condition: WriteCondition | None = None, max_size: int, expect_md5: bytes | None = None,
                    progress: Callable[[int, int], Awaitable[None]] | None = None,
                    lease_id: str | None = None) -> ObjectVersion:
    """Make ``bucket``/``key`` a copy of the whole source. ``headers``/``user_meta`` None: the source's.
    ``progress(copied, total)`` is awaited as bytes arrive from a fetched source (async Copy Blob)."""
    ref = await locate(ns, identity, source, bucket)
    if ref is not None:
        return await _copy_local(ns, identity, ref, source, bucket, key, headers=headers, user_meta=user_meta,
                                 condition=condition, max_size=max_size, expect_md5=expect_md5, lease_id=lease_id)
    opened = await open_http(source)
    try:
        if opened.size > max_size:
            raise errors.EntityTooLarge(f"The copy source is larger than {max_size} bytes.")
        body = opened.body if progress is None else _reporting(opened.body, opened.size, progress)
        return await ns.put_object(
            identity, bucket, key, body,
            headers=opened.headers if headers is None else headers,
            user_meta=opened.user_meta if user_meta is None else user_meta,
            algorithms={"crc64nvme"}, verify=_verifier(opened.size, expect_md5 or opened.md5),
            condition=condition, lease_id=lease_id)
    finally:
        await opened.close()


async def _copy_local(ns: Namespace, identity: Identity, ref: LocalRef, source: UrlSource, bucket: str, key: str,
                      *, headers, user_meta, condition, max_size: int, expect_md5: bytes | None,
                      lease_id: str | None = None) -> ObjectVersion:
    src = await _source_version(ns, identity, ref)
    _check_source(source.conditions, src)
    if src.size > max_size:
        raise errors.EntityTooLarge(f"The copy source is larger than {max_size} bytes.")
    if expect_md5 is not None and "-" not in src.etag and bytes.fromhex(src.etag) != expect_md5:
        raise errors.BadDigest("The source MD5 you specified did not match the source's.", code="Md5Mismatch")
    if ref.bucket == bucket and ref.key == key and headers is None and user_meta is None:
        # The key copied onto itself: on a linked bucket this is the "bring it warm" call; it is warm now.
        return await ns._resident(identity, bucket, key)
    return await ns.copy_object(
        identity, CopySource(ref.bucket, ref.key), bucket, key, replace_metadata=True,
        headers=dict(src.headers) if headers is None else headers,
        user_meta=dict(src.user_meta) if user_meta is None else user_meta, condition=condition, lease_id=lease_id)


async def _source_version(ns: Namespace, identity: Identity, ref: LocalRef) -> ObjectVersion:
    try:
        return await ns._resident(identity, ref.bucket, ref.key)
    except errors.NoSuchKey:
        raise CopySourceError("The specified blob does not exist.", 404, 404, "BlobNotFound") from None
    except errors.ColdStoreUnavailable:
        raise


def _check_source(conditions: ReadConditions, version: ObjectVersion) -> None:
    if conditions.empty:
        return
    try:
        check_conditions(conditions, version.etag, version.last_modified)
    except (errors.PreconditionFailed, errors.NotModified):
        raise errors.PreconditionFailed("The source condition specified using HTTP conditional header(s) is not "
                                        "met.", code="SourceConditionNotMet") from None


def _verifier(expected_size: int, md5: bytes | None):
    def verify(digests: dict[str, bytes], size: int) -> dict[str, str]:
        if expected_size >= 0 and size != expected_size:
            raise CopySourceError(f"The copy source sent {size} bytes instead of {expected_size}.", 400)
        if md5 is not None and digests["md5"] != md5:
            raise errors.BadDigest("The MD5 of the copy source did not match.", code="Md5Mismatch")
        return {"crc64nvme": cks.b64(digests["crc64nvme"])} if "crc64nvme" in digests else {}
    return verify


async def _reporting(body: AsyncIterator[bytes], total: int, progress) -> AsyncIterator[bytes]:
    copied = 0
    async for chunk in body:
        copied += len(chunk)
        await progress(copied, total)
        yield chunk


# streaming a source ------------------------------------------------------------------------------------------
async def open_source(ns: Namespace, identity: Identity, source: UrlSource, dest_bucket: str) -> OpenedSource:
    """The source's bytes (its ``byte_range`` when set) as a stream: from local blobs when the source is this
    Atoll or the destination's cold store (made warm first), else fetched over HTTP."""
    ref = await locate(ns, identity, source, dest_bucket)
    if ref is None:
        return await open_http(source)
    version = await _source_version(ns, identity, ref)
    _check_source(source.conditions, version)
    start, end = 0, version.size
    if source.byte_range is not None:
        start, end = source.byte_range[0], min(source.byte_range[1] + 1, version.size)
        if start >= version.size:
            raise errors.InvalidRange("The source range is not satisfiable.")
    md5 = bytes.fromhex(version.etag) if "-" not in version.etag and len(version.etag) == 32 else None
    opened = ns.open_range(version, start, end)

    async def close() -> None:
        for fd, _, _ in opened:
            os.close(fd)

    return OpenedSource(end - start, version.size, dict(version.headers), dict(version.user_meta), md5,
                        _read_extents(opened), close)


async def _read_extents(opened: list[tuple[int, int, int]]) -> AsyncIterator[bytes]:
    for fd, offset, length in opened:
        while length > 0:
            data = await ingest.run_io(os.pread, fd, min(length, _CHUNK), offset)
            if not data:
                raise errors.Unavailable("The source blob is shorter than its metadata.")
            offset += len(data)
            length -= len(data)
            yield data


async def open_http(source: UrlSource) -> OpenedSource:
    """GET the URL (with its range) and return its body as a stream. Refusals map to CopySourceError."""
    parts = parse_source_url(source.url)
    request_headers = {"Accept-Encoding": "identity"}
    if source.byte_range is not None:
        request_headers["Range"] = f"bytes={source.byte_range[0]}-{source.byte_range[1]}"
    if source.authorization:
        request_headers["Authorization"] = source.authorization
        request_headers["x-ms-version"] = "2021-08-06"  # Azure requires it with a bearer token
    conditions = source.conditions
    if conditions.if_match:
        request_headers["If-Match"] = conditions.if_match
    if conditions.if_none_match:
        request_headers["If-None-Match"] = conditions.if_none_match
    if conditions.if_modified_since:
        request_headers["If-Modified-Since"] = conditions.if_modified_since
    if conditions.if_unmodified_since:
        request_headers["If-Unmodified-Since"] = conditions.if_unmodified_since
    timeout = aiohttp.ClientTimeout(total=None, connect=_CONNECT_TIMEOUT, sock_read=_READ_TIMEOUT)
    # auto_decompress off: the bytes are copied as stored, Content-Encoding and all.
    session = aiohttp.ClientSession(timeout=timeout, auto_decompress=False, trust_env=False)
    try:
        response = await session.get(parts.geturl(), headers=request_headers, allow_redirects=False)
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        await session.close()
        raise CopySourceError(f"The copy source {redacted(source.url)} could not be reached "
                              f"({type(exc).__name__}).", 400) from None
    except BaseException:
        await session.close()
        raise

    async def close() -> None:
        response.release()
        await session.close()

    try:
        if response.status not in (200, 206):
            status = response.status
            source_code = response.headers.get("x-ms-error-code", "")
            message = {404: "The specified blob does not exist.",
                       403: "This request is not authorized to perform this operation.",
                       401: "This request is not authorized to perform this operation.",
                       412: "The condition specified using HTTP conditional header(s) is not met.",
                       416: "The range specified is invalid for the current size of the resource."}.get(
                status, f"The copy source answered HTTP {status}.")
            raise CopySourceError(message, status if 400 <= status < 500 and status != 401 else
                                  403 if status == 401 else 400, status, source_code)
        total, start = _extent_of(response, source.byte_range)
        size = total - start if source.byte_range is None else \
            min(source.byte_range[1] + 1, total) - source.byte_range[0]
        md5 = None
        if source.byte_range is None:
            md5 = _md5_of(response)
        body = _stream(response, skip=start if response.status == 200 and source.byte_range else 0, limit=size)
        headers = {name: response.headers[name] for name in _STORED if name in response.headers}
        user_meta = {}
        for name, value in response.headers.items():
            lower = name.lower()
            if lower.startswith(("x-ms-meta-", "x-amz-meta-")):
                user_meta[lower.split("-meta-", 1)[1]] = value
        return OpenedSource(size, total, {k.lower(): v for k, v in headers.items()}, user_meta, md5, body, close)
    except BaseException:
        await close()
        raise


def _extent_of(response: aiohttp.ClientResponse, wanted: tuple[int, int] | None) -> tuple[int, int]:
    """(total size of the source, offset of the first byte in the body)."""
    if response.status == 206:
        content_range = response.headers.get("Content-Range", "")
        spec, _, total = content_range.partition("/")
        first = spec.replace("bytes", "").strip().partition("-")[0]
        if total.strip().isdigit() and first.isdigit():
            return int(total), int(first)
        raise CopySourceError("The copy source answered a range request without a usable Content-Range.", 400)
    length = response.headers.get("Content-Length")
    if length is None or not length.isdigit():
        raise CopySourceError("The copy source did not announce its size (no Content-Length).", 400)
    if wanted is not None and wanted[0] >= int(length):
        raise CopySourceError("The range specified is invalid for the current size of the resource.", 416, 416)
    return int(length), 0


def _md5_of(response: aiohttp.ClientResponse) -> bytes | None:
    content_md5 = response.headers.get("Content-MD5")
    if content_md5:
        try:
            digest = base64.b64decode(content_md5, validate=True)
            return digest if len(digest) == 16 else None
        except (binascii.Error, ValueError):
            return None
    return None


async def _stream(response: aiohttp.ClientResponse, *, skip: int, limit: int) -> AsyncIterator[bytes]:
    """The body, past ``skip`` bytes (a source that ignored Range), cut at ``limit``."""
    try:
        async for chunk in response.content.iter_chunked(_CHUNK):
            if skip:
                if len(chunk) <= skip:
                    skip -= len(chunk)
                    continue
                chunk, skip = chunk[skip:], 0
            if len(chunk) >= limit:
                if limit:
                    yield chunk[:limit]
                return
            limit -= len(chunk)
            yield chunk
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise CopySourceError(f"Reading the copy source failed ({type(exc).__name__}).", 400) from None
