"""Small pieces every Blob handler module shares: dates, ETags, metadata headers, XML text, lease hooks."""

from __future__ import annotations

import re
from email.utils import formatdate
from functools import lru_cache
from urllib.parse import quote
from xml.sax.saxutils import escape

from atoll.blob.context import BlobContext
from atoll.blob.errors import BlobError

MAX_METADATA_BYTES = 8 << 10  # Azure's limit for the names and values of x-ms-meta-*
# A metadata name must be a C# identifier (Azure); S3's x-amz-meta-* names that are not one still show in
# listings and through S3, but a Blob client cannot set them.
_METADATA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")
XML_HEAD = '<?xml version="1.0" encoding="utf-8"?>'


@lru_cache(maxsize=8192)
def http_date(seconds: int) -> str:
    return formatdate(seconds, usegmt=True)


def quoted_etag(etag: str) -> str:
    return f'"{etag}"'


def container_etag(modified: float) -> str:
    """Containers have no content hash: their ETag changes whenever their properties do, as Azure's."""
    return f'"0x{int(modified * 10_000_000):X}"'


def metadata_from(headers: dict[str, str]) -> dict[str, str]:
    meta = {name[10:]: value for name, value in headers.items() if name.startswith("x-ms-meta-")}
    for name in meta:
        if not _METADATA_NAME.match(name):
            raise BlobError("InvalidMetadata", "The metadata specified is invalid. It has characters that are not "
                            "permitted.", 400)
    if sum(len(k) + len(v) for k, v in meta.items()) > MAX_METADATA_BYTES:
        raise BlobError("MetadataTooLarge", "The size of the request metadata exceeds the maximum size permitted.",
                        400)
    return meta


def metadata_headers(meta: dict[str, str]) -> list[tuple[str, str]]:
    return [(f"x-ms-meta-{name}", value) for name, value in meta.items()]


def text(value: str) -> str:
    """XML character data; characters XML 1.0 cannot carry are dropped (use ``name_element`` for names)."""
    return escape(_XML_INVALID.sub("", value))


def name_element(name: str) -> str:
    """A blob or prefix name: as text, or percent-encoded with Encoded="true" when XML cannot carry it (as
    Azure does; the SDKs decode it)."""
    if _XML_INVALID.search(name):
        return f'<Name Encoded="true">{quote(name, safe="/")}</Name>'
    return f"<Name>{escape(name)}</Name>"


def metadata_xml(meta: dict[str, str]) -> str:
    parts = []
    for name, value in meta.items():
        if _METADATA_NAME.match(name):
            parts.append(f"<{name}>{text(value)}</{name}>")
    return "<Metadata>" + "".join(parts) + "</Metadata>"


# leases ----------------------------------------------------------------------------------------------------
# The lease owner (atoll/blob/leases.py) may define these; until it does every resource is unleased.
#   async def lease_state(ctx, container, blob) -> (status, state, duration)   e.g. ("unlocked", "available", "")
#   async def check_lease(ctx, container, blob) -> None   raises when a write needs x-ms-lease-id and lacks it
UNLEASED = ("unlocked", "available", "")


def _lease_hook(name: str):
    leases = _lease_module[0]
    if leases is None:
        from atoll.blob import leases  # late: the lease module may import this one

        _lease_module[0] = leases
    return getattr(leases, name, None)


_lease_module: list = [None]  # resolved on first use: an import statement per request costs a microsecond


async def lease_state(ctx: BlobContext, container: str, blob: str | None) -> tuple[str, str, str]:
    hook = _lease_hook("lease_state")
    return UNLEASED if hook is None else await hook(ctx, container, blob)


async def lease_states(ctx: BlobContext, container: str, blobs: list[str]) -> dict[str, tuple[str, str, str]]:
    """``lease_state`` of many blobs of a container at once (a listing page)."""
    hook = _lease_hook("lease_states")
    return {} if hook is None else await hook(ctx, container, blobs)


async def check_lease(ctx: BlobContext, container: str, blob: str | None) -> None:
    hook = _lease_hook("check_lease")
    if hook is not None:
        await hook(ctx, container, blob)


def lease_headers(status: str, state: str, duration: str) -> list[tuple[str, str]]:
    out = [("x-ms-lease-status", status), ("x-ms-lease-state", state)]
    if duration:
        out.append(("x-ms-lease-duration", duration))
    return out


def lease_xml(status: str, state: str, duration: str) -> str:
    out = f"<LeaseStatus>{status}</LeaseStatus><LeaseState>{state}</LeaseState>"
    if duration:
        out += f"<LeaseDuration>{duration}</LeaseDuration>"
    return out


def service_endpoint(ctx: BlobContext) -> str:
    host = escape(ctx.headers.get("host", "127.0.0.1"), {'"': "&quot;"})
    if ctx.http.state.get("host_style"):
        return f"http://{host}/"
    return f"http://{host}/{escape(ctx.account)}/"


def enumeration_head(ctx: BlobContext, attributes: str, prefix: str, marker: str, max_results: int) -> list[str]:
    """The opening of an EnumerationResults answer (List Containers, List Blobs): the echoed paging fields."""
    parts = [XML_HEAD, f'<EnumerationResults ServiceEndpoint="{service_endpoint(ctx)}"{attributes}>']
    if prefix:
        parts.append(f"<Prefix>{text(prefix)}</Prefix>")
    if marker:
        parts.append(f"<Marker>{text(marker)}</Marker>")
    if "maxresults" in ctx.query:
        parts.append(f"<MaxResults>{max_results}</MaxResults>")
    return parts
