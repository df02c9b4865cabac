"""List Blobs, flat and hierarchical, through ``Namespace.list_objects`` (so a linked bucket lists the union of
its warm and cold keys exactly as S3 does, in the same order). NextMarker is opaque to clients: the base64 of
where the next page starts after, as the S3 continuation token."""

from __future__ import annotations

import base64
import binascii

from atoll.blob import fromurl
from atoll.blob.blobs import DEFAULT_CONTENT_TYPE, content_md5
from atoll.blob.common import UNLEASED, enumeration_head, http_date, lease_states, lease_xml, metadata_xml, \
    name_element, text
from atoll.blob.context import BlobContext
from atoll.blob.errors import BlobError
from atoll.core.models import ListEntry, ObjectVersion
from atoll.http.server import Response

MAX_RESULTS = 5000
_INCLUDES = frozenset(("metadata", "snapshots", "uncommittedblobs", "copy", "deleted", "tags", "versions",
                       "deletedwithversions", "immutabilitypolicy", "legalhold", "permissions"))
_PROPERTY_TAGS = (("Content-Encoding", "content-encoding"), ("Content-Language", "content-language"),
                  ("Cache-Control", "cache-control"), ("Content-Disposition", "content-disposition"))


def _marker(last: str) -> str:
    return base64.urlsafe_b64encode(last.encode()).decode()


def _unmarker(marker: str) -> str:
    try:
        return base64.b64decode(marker.encode(), altchars=b"-_", validate=True).decode()
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise BlobError("OutOfRangeInput", "One of the request inputs is out of range. (marker)", 400) from None


def _blob_xml(entry: ListEntry, version: ObjectVersion | None, lease: tuple[str, str, str], with_meta: bool,
              copy: str = "") -> str:
    headers = version.headers if version is not None else {}
    modified = http_date(int(entry.last_modified))
    parts = [f"<Blob>{name_element(entry.key)}<Properties>",
             f"<Creation-Time>{modified}</Creation-Time><Last-Modified>{modified}</Last-Modified>",
             f"<Etag>{text(chr(34) + entry.etag + chr(34))}</Etag>",
             f"<Content-Length>{entry.size}</Content-Length>",
             f"<Content-Type>{text(headers.get('content-type', DEFAULT_CONTENT_TYPE))}</Content-Type>"]
    for tag, lower in _PROPERTY_TAGS:
        parts.append(f"<{tag}>{text(headers.get(lower, ''))}</{tag}>")
    md5 = content_md5(version) if version is not None else None
    parts.append(f"<Content-MD5>{md5 or ''}</Content-MD5>")
    parts.append("<BlobType>BlockBlob</BlobType><AccessTier>Hot</AccessTier>"
                 "<AccessTierInferred>true</AccessTierInferred>")
    parts.append(lease_xml(*lease))
    parts.append(copy)  # Copy* elements with include=copy (atoll.blob.fromurl.copy_xml)
    parts.append("<ServerEncrypted>false</ServerEncrypted></Properties>")
    if with_meta:
        parts.append(metadata_xml(version.user_meta if version is not None else {}))
    parts.append("</Blob>")
    return "".join(parts)


async def list_blobs(ctx: BlobContext) -> Response:
    ctx.require("l")
    q = ctx.query
    prefix = q.get("prefix", "")
    delimiter = q.get("delimiter", "")
    marker = q.get("marker", "")
    max_results = ctx.int_param("maxresults", MAX_RESULTS, low=1, high=MAX_RESULTS)
    include = {part.strip().lower() for part in q.get("include", "").split(",") if part.strip()}
    if not include <= _INCLUDES:
        raise BlobError("InvalidQueryParameterValue", "Value for one of the query parameters specified in the "
                        "request URI is invalid. (include)", 400)
    with_meta = "metadata" in include
    page = await ctx.ns.list_objects(ctx.actor, ctx.container, prefix=prefix, delimiter=delimiter,
                                     start_after=_unmarker(marker) if marker else "", max_keys=max_results)
    items: list[tuple[str, str]] = [(entry.key, "") for entry in page.entries]
    items += [(p, "prefix") for p in page.prefixes]
    items.sort()  # the XML interleaves blobs and prefixes in name order, as Azure does
    entries = {entry.key: entry for entry in page.entries}
    parts = enumeration_head(ctx, f' ContainerName="{text(ctx.container)}"', prefix, marker, max_results)
    if delimiter:
        parts.append(f"<Delimiter>{text(delimiter)}</Delimiter>")
    parts.append("<Blobs>")
    leases = await lease_states(ctx, ctx.container, [entry.key for entry in page.entries])
    for name, kind in items:
        if kind == "prefix":
            parts.append(f"<BlobPrefix>{name_element(name)}</BlobPrefix>")
            continue
        # The listing index holds no headers or metadata: the version row does (None for a key known only to
        # the cold store of a linked bucket, listed with what the cold listing said).
        version = await ctx.ns.meta.get_object(ctx.container, name)
        copy = await fromurl.copy_xml(ctx.ns, version) if "copy" in include else ""
        parts.append(_blob_xml(entries[name], version, leases.get(name, UNLEASED), with_meta, copy))
    parts.append("</Blobs>")
    if page.truncated and page.last is not None:
        parts.append(f"<NextMarker>{_marker(page.last)}</NextMarker>")
    else:
        parts.append("<NextMarker />")
    parts.append("</EnumerationResults>")
    headers = [("Content-Type", "application/xml")]
    if page.incomplete:
        headers.append(("x-atoll-stale", "cold-store-unreachable"))
    return Response(200, headers, "".join(parts).encode())
