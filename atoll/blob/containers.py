"""Container and account operations: Create / Delete / Get Properties / Get and Set Metadata / Get and Set ACL
Container, List Containers, Get Account Information.

Containers are the namespace's buckets (same names, so S3 sees them); their public access level, metadata and
stored access policies are the bucket's properties (``Namespace.bucket_properties``).
"""

from __future__ import annotations

import re
from xml.etree import ElementTree

from atoll import errors
from atoll.blob.common import (XML_HEAD, check_lease, container_etag, enumeration_head, http_date, lease_headers,
                               lease_state, lease_xml, metadata_from, metadata_headers, metadata_xml, text)
from atoll.blob.context import BlobContext
from atoll.blob.errors import BlobError
from atoll.core.models import BucketProperties
from atoll.http.server import Response

MAX_RESULTS = 5000
_ACL_BODY_LIMIT = 64 << 10
_MAX_SIGNED_IDENTIFIERS = 5
# Azure: 3-63 lower-case letters, digits and single hyphens, starting and ending with a letter or digit.
_CONTAINER_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}$")
_PUBLIC_LEVELS = {"": "", "blob": "blob", "container": "container"}


def validate_container_name(name: str) -> None:
    if name in ("$root", "$logs", "$web"):
        raise BlobError("InvalidResourceName", f"The container {name} is not available on Atoll.", 400)
    if not _CONTAINER_NAME.match(name):
        raise BlobError("InvalidResourceName", "The specifed resource name contains invalid characters.", 400)


def _public_access(ctx: BlobContext) -> str:
    value = ctx.headers.get("x-ms-blob-public-access", "").strip().lower()
    if value not in _PUBLIC_LEVELS:
        raise BlobError("InvalidHeaderValue", "The value for one of the HTTP headers is not in the correct format. "
                        "(x-ms-blob-public-access)", 400)
    return value


async def _properties(ctx: BlobContext, action: str = "read") -> tuple[BucketProperties, float]:
    """The container's properties and its modification time (its creation while its properties were never
    set); ContainerNotFound, or AccessDenied for another tenant's container or a caller who may not ``action``
    (read | admin) on it."""
    bucket = await ctx.ns.bucket_for(ctx.actor, ctx.container, action)
    props = await ctx.ns.bucket_properties(ctx.container)
    return props, max(props.modified, bucket.created)


def _stamp(modified: float) -> list[tuple[str, str]]:
    return [("ETag", container_etag(modified)), ("Last-Modified", http_date(int(modified)))]


# create / delete -------------------------------------------------------------------------------------------
async def create_container(ctx: BlobContext) -> Response:
    ctx.require("c")
    validate_container_name(ctx.container)
    level = _public_access(ctx)
    meta = metadata_from(ctx.headers)
    identity = ctx.identity
    try:
        bucket = await ctx.ns.create_bucket(identity, ctx.container)
    except (errors.BucketAlreadyExists, errors.BucketAlreadyOwnedByYou):
        raise BlobError("ContainerAlreadyExists", "The specified container already exists.", 409) from None
    modified = bucket.created
    if level or meta:
        props = await ctx.ns.set_bucket_properties(identity, BucketProperties(ctx.container, level, meta))
        modified = props.modified
    return Response(201, _stamp(modified))


async def delete_container(ctx: BlobContext) -> Response:
    """Azure deletes a container with its blobs; the namespace deletes only empty buckets, so the blobs go
    first, a page at a time (another writer racing the delete makes it fail with a conflict, not lose data
    silently)."""
    ctx.require("d")
    await _properties(ctx, "admin")
    await check_lease(ctx, ctx.container, None)
    _check_modified_conditions(ctx, await _modified(ctx))
    identity = ctx.identity
    while True:
        page = await ctx.ns.list_objects(identity, ctx.container, prefix="", delimiter="", start_after="",
                                         max_keys=1000)
        if not page.entries:
            break
        await ctx.ns.delete_objects(identity, ctx.container, [entry.key for entry in page.entries],
                                    despite_leases=True)
        if not page.truncated:
            break
    try:
        await ctx.ns.delete_bucket(identity, ctx.container, lease_id=ctx.headers.get("x-ms-lease-id") or None)
    except errors.BucketNotEmpty:
        raise BlobError("OperationNotAllowedInCurrentState", "The container is still being written to; retry the "
                        "delete.", 409) from None
    return Response(202)


async def _modified(ctx: BlobContext) -> float:
    return (await _properties(ctx))[1]


def _check_modified_conditions(ctx: BlobContext, modified: float) -> None:
    from atoll.core.conditions import parse_http_date

    since = ctx.headers.get("if-modified-since")
    if since is not None:
        moment = parse_http_date(since)
        if moment is not None and int(modified) <= moment:
            raise BlobError("ConditionNotMet", "The condition specified using HTTP conditional header(s) is not met.",
                            412)
    unmodified = ctx.headers.get("if-unmodified-since")
    if unmodified is not None:
        moment = parse_http_date(unmodified)
        if moment is not None and int(modified) > moment:
            raise BlobError("ConditionNotMet", "The condition specified using HTTP conditional header(s) is not met.",
                            412)


# properties and metadata -----------------------------------------------------------------------------------
async def get_container_properties(ctx: BlobContext) -> Response:
    ctx.require("r")
    props, modified = await _properties(ctx)
    out = _stamp(modified) + metadata_headers(props.metadata)
    out += lease_headers(*await lease_state(ctx, ctx.container, None))
    if props.public_access:
        out.append(("x-ms-blob-public-access", props.public_access))
    out += [("x-ms-has-immutability-policy", "false"), ("x-ms-has-legal-hold", "false"),
            ("x-ms-default-encryption-scope", "$account-encryption-key"),
            ("x-ms-deny-encryption-scope-override", "false")]
    return Response(200, out, head_only=ctx.http.method == "HEAD", content_length=0)


async def get_container_metadata(ctx: BlobContext) -> Response:
    ctx.require("r")
    props, modified = await _properties(ctx)
    return Response(200, _stamp(modified) + metadata_headers(props.metadata),
                    head_only=ctx.http.method == "HEAD", content_length=0)


async def set_container_metadata(ctx: BlobContext) -> Response:
    ctx.require("w")
    props, modified = await _properties(ctx, "admin")
    await check_lease(ctx, ctx.container, None)
    if "if-unmodified-since" in ctx.headers or "if-match" in ctx.headers or "if-none-match" in ctx.headers:
        raise BlobError("UnsupportedHeader", "One of the HTTP headers specified in the request is not supported.",
                        400)
    _check_modified_conditions(ctx, modified)
    props.metadata = metadata_from(ctx.headers)
    props = await ctx.ns.set_bucket_properties(ctx.identity, props)
    return Response(200, _stamp(props.modified))


# ACL -------------------------------------------------------------------------------------------------------
def _signed_identifiers_xml(policies: list[dict[str, str]]) -> str:
    parts = []
    for policy in policies:
        inner = "".join(f"<{tag}>{text(policy[tag])}</{tag}>" for tag in ("Start", "Expiry", "Permission")
                        if policy.get(tag))
        parts.append(f"<SignedIdentifier><Id>{text(policy.get('Id', ''))}</Id>"
                     f"<AccessPolicy>{inner}</AccessPolicy></SignedIdentifier>")
    return "<SignedIdentifiers>" + "".join(parts) + "</SignedIdentifiers>"


def _parse_signed_identifiers(body: bytes) -> list[dict[str, str]]:
    if not body.strip():
        return []
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError:
        raise BlobError("InvalidXmlDocument", "XML specified is not syntactically valid.", 400) from None
    if root.tag != "SignedIdentifiers":
        raise BlobError("InvalidXmlDocument", "XML specified is not syntactically valid.", 400)
    policies = []
    for item in root.findall("SignedIdentifier"):
        policy = {"Id": (item.findtext("Id") or "").strip()}
        if not policy["Id"] or len(policy["Id"]) > 64:
            raise BlobError("InvalidXmlDocument", "A signed identifier needs an Id of 1 to 64 characters.", 400)
        access = item.find("AccessPolicy")
        if access is not None:
            for tag in ("Start", "Expiry", "Permission"):
                value = access.findtext(tag)
                if value:
                    policy[tag] = value.strip()
        policies.append(policy)
    if len(policies) > _MAX_SIGNED_IDENTIFIERS:
        raise BlobError("InvalidXmlDocument", "At most 5 signed identifiers are allowed.", 400)
    return policies


async def get_container_acl(ctx: BlobContext) -> Response:
    ctx.require("r")
    props, modified = await _properties(ctx)
    out = _stamp(modified) + [("Content-Type", "application/xml")]
    if props.public_access:
        out.append(("x-ms-blob-public-access", props.public_access))
    body = (XML_HEAD + _signed_identifiers_xml(props.access_policies)).encode()
    if ctx.http.method == "HEAD":
        return Response(200, out, head_only=True, content_length=len(body))
    return Response(200, out, body=body)


async def set_container_acl(ctx: BlobContext) -> Response:
    """The public access level (x-ms-blob-public-access; absent makes the container private) and the stored
    access policies, which are kept and returned. SAS tokens naming a stored policy (si=) are the SAS
    verifier's concern."""
    if ctx.sas is not None:
        raise BlobError("AuthorizationPermissionMismatch", "Only the account key may change a container's ACL.",
                        403)
    props, modified = await _properties(ctx, "admin")
    await check_lease(ctx, ctx.container, None)
    _check_modified_conditions(ctx, modified)
    props.public_access = _public_access(ctx)
    props.access_policies = _parse_signed_identifiers(await ctx.http.read_body(_ACL_BODY_LIMIT))
    props = await ctx.ns.set_bucket_properties(ctx.identity, props)
    return Response(200, _stamp(props.modified))


# account ---------------------------------------------------------------------------------------------------
async def list_containers(ctx: BlobContext) -> Response:
    ctx.require("l")
    q = ctx.query
    prefix = q.get("prefix", "")
    marker = q.get("marker", "")
    max_results = ctx.int_param("maxresults", MAX_RESULTS, low=1, high=MAX_RESULTS)
    include = {part.strip() for part in q.get("include", "").split(",") if part.strip()}
    buckets = [b for b in await ctx.ns.list_buckets(ctx.identity)
               if b.name.startswith(prefix) and b.name >= marker]
    page, rest = buckets[:max_results], buckets[max_results:]
    parts = enumeration_head(ctx, "", prefix, marker, max_results)
    parts.append("<Containers>")
    for bucket in page:
        props = await ctx.ns.bucket_properties(bucket.name)
        modified = max(props.modified, bucket.created)
        status, state, duration = await lease_state(ctx, bucket.name, None)
        parts.append(f"<Container><Name>{text(bucket.name)}</Name><Properties>"
                     f"<Last-Modified>{http_date(int(modified))}</Last-Modified>"
                     f"<Etag>{text(container_etag(modified))}</Etag>{lease_xml(status, state, duration)}")
        if props.public_access:
            parts.append(f"<PublicAccess>{props.public_access}</PublicAccess>")
        parts.append("<HasImmutabilityPolicy>false</HasImmutabilityPolicy><HasLegalHold>false</HasLegalHold>"
                     "</Properties>")
        if "metadata" in include:
            parts.append(metadata_xml(props.metadata))
        parts.append("</Container>")
    parts.append("</Containers>")
    parts.append(f"<NextMarker>{text(rest[0].name)}</NextMarker>" if rest else "<NextMarker />")
    parts.append("</EnumerationResults>")
    return Response(200, [("Content-Type", "application/xml")], "".join(parts).encode())


async def get_account_information(ctx: BlobContext) -> Response:
    if ctx.identity is None:
        raise BlobError("ResourceNotFound", "The specified resource does not exist.", 404)
    return Response(200, [("x-ms-sku-name", "Standard_LRS"), ("x-ms-account-kind", "StorageV2"),
                          ("x-ms-is-hns-enabled", "false")],
                    head_only=ctx.http.method == "HEAD", content_length=0)
