"""Put Block, Put Block List and Get Block List: the Blob side of block lists (the rules are atoll.core.blocks).

A block is staged under the blob's name; Put Block List turns the named blocks into a new version of the blob
without copying them. Content-MD5 and x-ms-content-crc64 of a block are checked before the block is recorded.
"""

from __future__ import annotations

import base64
import binascii
from xml.etree.ElementTree import Element

from defusedxml import ElementTree as SafeET
from defusedxml.common import DefusedXmlException

from atoll import errors
from atoll.blob.blobs import DEFAULT_CONTENT_TYPE, precheck_write, write_condition
from atoll.blob.common import XML_HEAD, check_lease, http_date, metadata_from, quoted_etag
from atoll.blob.context import BlobContext
from atoll.blob.leases import lease_id_of
from atoll.blob.errors import BlobError
from atoll.core import checksums as cks
from atoll.core.blocks import BlockList
from atoll.core.fromurl import md5_header
from atoll.http.server import Response

MAX_BLOCK_LIST_BODY = 16 << 20  # 50,000 entries of the longest ids fit in about 6 MiB
_LIST_KINDS = {"Committed": "committed", "Uncommitted": "uncommitted", "Latest": "latest"}
_LIST_TYPES = ("committed", "uncommitted", "all")
# x-ms-blob-* request headers of Put Block List → the stored content headers
_BLOB_HEADERS = (("x-ms-blob-content-type", "content-type"), ("x-ms-blob-content-encoding", "content-encoding"),
                 ("x-ms-blob-content-language", "content-language"),
                 ("x-ms-blob-content-disposition", "content-disposition"),
                 ("x-ms-blob-cache-control", "cache-control"),
                 ("x-ms-blob-content-md5", "content-md5"))


# handlers ----------------------------------------------------------------------------------------------------
async def put_block(ctx: BlobContext) -> Response:
    _require_write_or_create(ctx)
    block_id = _required_query(ctx, "blockid")
    if ctx.http.content_length is None and "chunked" not in ctx.headers.get("transfer-encoding", "").lower():
        raise BlobError("MissingContentLength", "Content-Length is required. (Content-Length)", 411)
    if "x-ms-structured-body" in ctx.headers:
        raise BlobError("InvalidHeaderValue", "Structured message bodies are not supported; send Content-MD5 or "
                        "x-ms-content-crc64 instead. (x-ms-structured-body)", 400)
    content_md5 = md5_header(ctx.headers.get("content-md5"))
    expected_crc64 = _crc64_header(ctx.headers.get("x-ms-content-crc64"))
    if content_md5 is not None and expected_crc64 is not None:
        raise BlobError("InvalidHeaderValue", "Content-MD5 and x-ms-content-crc64 cannot both be specified.", 400)
    await check_lease(ctx, ctx.container, ctx.blob)
    computed: dict[str, bytes] = {}

    def verify_crc64(digests: dict[str, bytes], size: int) -> dict[str, str]:
        computed.update(digests)
        if expected_crc64 is not None and cks.azure_crc64(digests["crc64nvme"]) != expected_crc64:
            raise BlobError("Crc64Mismatch", "The CRC64 value specified in the request did not match with the "
                            "CRC64 value calculated by the server.", 400)
        return {}

    block = await ctx.ns.put_block(ctx.identity, ctx.container, ctx.blob, block_id, ctx.http.body_chunks(),
                                   verify=verify_crc64, content_md5=content_md5,
                                   algorithms={"crc64nvme"} if expected_crc64 is not None else set(),
                                   declared_size=ctx.http.content_length)
    out = [("Content-MD5", base64.b64encode(bytes.fromhex(block.md5)).decode()),
           ("x-ms-request-server-encrypted", "false")]
    if expected_crc64 is not None:
        out.append(("x-ms-content-crc64", cks.azure_crc64(computed["crc64nvme"])))
    return Response(201, out)


async def put_block_list(ctx: BlobContext) -> Response:
    if not _require_write_or_create(ctx):
        ctx.headers.setdefault("if-none-match", "*")  # create permission: a new blob only
    requested = _parse_block_list(await ctx.http.read_body(MAX_BLOCK_LIST_BODY))
    headers = {stored: ctx.headers[name].strip() for name, stored in _BLOB_HEADERS if ctx.headers.get(name)}
    headers.setdefault("content-type", DEFAULT_CONTENT_TYPE)
    if "content-md5" in headers:
        md5_header(headers["content-md5"])  # refuses a malformed value
    user_meta = metadata_from(ctx.headers)
    await check_lease(ctx, ctx.container, ctx.blob)
    condition = write_condition(ctx)
    await precheck_write(ctx)
    try:
        version = await ctx.ns.put_block_list(ctx.identity, ctx.container, ctx.blob, requested, headers=headers,
                                              user_meta=user_meta, condition=condition,
                                              lease_id=lease_id_of(ctx))
    except errors.NoSuchKey:
        if condition is not None and condition.if_match is not None:
            raise _condition_not_met() from None
        raise
    except errors.PreconditionFailed:
        if condition is not None and condition.if_none_match:
            raise BlobError("BlobAlreadyExists", "The specified blob already exists.", 409) from None
        raise _condition_not_met() from None
    return Response(201, [("ETag", quoted_etag(version.etag)), ("Last-Modified", http_date(int(version.last_modified))),
                          ("x-ms-request-server-encrypted", "false")])


async def get_block_list(ctx: BlobContext) -> Response:
    ctx.require("r")
    which = ctx.query.get("blocklisttype", "committed").lower() or "committed"
    if which not in _LIST_TYPES:
        raise BlobError("InvalidQueryParameterValue", "Value for one of the query parameters specified in the "
                        "request URI is invalid. (blocklisttype)", 400)
    listed = await ctx.ns.get_block_list(ctx.identity, ctx.container, ctx.blob, which)
    out = [("Content-Type", "application/xml")]
    if listed.version is not None:
        out += [("ETag", quoted_etag(listed.version.etag)),
                ("Last-Modified", http_date(int(listed.version.last_modified))),
                ("x-ms-blob-content-length", str(listed.version.size))]
    return Response(200, out, body=_block_list_xml(listed, which))


# helpers -----------------------------------------------------------------------------------------------------
def _require_write_or_create(ctx: BlobContext) -> bool:
    """A SAS with create but not write permission may stage blocks and commit a new blob; False then."""
    if ctx.sas is not None and not ctx.sas.allows("w", ctx.container, ctx.blob):
        ctx.require("c")
        return False
    return True


def _required_query(ctx: BlobContext, name: str) -> str:
    value = ctx.query.get(name, "")
    if not value:
        raise BlobError("MissingRequiredQueryParameter", "A query parameter that's mandatory for this request is "
                        f"not specified. ({name})", 400)
    return value


def _crc64_header(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    try:
        ok = len(base64.b64decode(value, validate=True)) == 8
    except (binascii.Error, ValueError):
        ok = False
    if not ok:
        raise BlobError("InvalidHeaderValue", "The value for one of the HTTP headers is not in the correct format. "
                        "(x-ms-content-crc64)", 400)
    return value


def _parse_block_list(body: bytes) -> list[tuple[str, str]]:
    try:
        root = SafeET.fromstring(body)
    except (SafeET.ParseError, DefusedXmlException, ValueError):
        raise BlobError("InvalidXmlDocument", "XML specified is not syntactically valid.", 400) from None
    if _local(root) != "BlockList":
        raise BlobError("InvalidXmlDocument", "XML specified is not syntactically valid: the root element must be "
                        "BlockList.", 400)
    requested = []
    for child in root:
        kind = _LIST_KINDS.get(_local(child))
        if kind is None:
            raise BlobError("InvalidXmlDocument", f"XML specified is not syntactically valid: unexpected element "
                            f"{_local(child)[:64]}.", 400)
        requested.append(((child.text or "").strip(), kind))
    return requested


def _local(element: Element) -> str:
    return element.tag.rsplit("}", 1)[-1]


def _condition_not_met() -> BlobError:
    return BlobError("ConditionNotMet", "The condition specified using HTTP conditional header(s) is not met.", 412)


def _block_list_xml(listed: BlockList, which: str) -> bytes:
    parts = [XML_HEAD, "<BlockList>"]
    if which in ("committed", "all"):
        parts.append("<CommittedBlocks>")
        parts += [f"<Block><Name>{block_id}</Name><Size>{size}</Size></Block>" for block_id, size in listed.committed]
        parts.append("</CommittedBlocks>")
    if which in ("uncommitted", "all"):
        parts.append("<UncommittedBlocks>")
        parts += [f"<Block><Name>{b.block_id}</Name><Size>{b.size}</Size></Block>" for b in listed.uncommitted]
        parts.append("</UncommittedBlocks>")
    parts.append("</BlockList>")
    return "".join(parts).encode()
