"""ListObjects (v1) and ListObjectsV2. Continuation tokens are opaque to clients: the base64 of where the next
page starts after, so a page costs one index seek whatever page of the listing it is."""

from __future__ import annotations

import base64
import binascii

from atoll.http.server import Response
from atoll.s3 import xml
from atoll.s3.context import S3Context
from atoll.s3.errors import S3Error

MAX_KEYS = 1000


def _token(last: str) -> str:
    return base64.urlsafe_b64encode(last.encode()).decode()


def _untoken(token: str) -> str:
    try:
        # validate: without it, characters outside the alphabet are dropped and "%%%" reads as an empty token.
        return base64.b64decode(token.encode(), altchars=b"-_", validate=True).decode()
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise S3Error("InvalidArgument", "The continuation token provided is incorrect",
                      ArgumentName="continuation-token") from None


def _encoding(ctx: S3Context) -> bool:
    value = ctx.query.get("encoding-type")
    if value is None or value == "":
        return False
    if value != "url":
        raise S3Error("InvalidArgument", "Invalid Encoding Method specified in Request",
                      ArgumentName="encoding-type", ArgumentValue=value[:32])
    return True


async def _owners(ctx: S3Context, page) -> dict[str, str]:
    names: dict[str, str] = {}
    if ctx.identity is not None:
        names[ctx.identity.owner_id] = ctx.identity.display_name
    return names


def _listing_headers(page) -> list[tuple[str, str]]:
    headers = [("Content-Type", "application/xml")]
    if page.incomplete:
        headers.append(("x-atoll-stale", "cold-store-unreachable"))  # warm and indexed keys only
    return headers


async def list_objects_v2(ctx: S3Context) -> Response:
    q = ctx.query
    params = xml.ListParams(
        bucket=ctx.bucket, prefix=q.get("prefix", ""), delimiter=q.get("delimiter", ""),
        max_keys=min(ctx.int_param("max-keys", MAX_KEYS), MAX_KEYS), url_encode=_encoding(ctx),
        fetch_owner=q.get("fetch-owner", "").lower() == "true", v2=True,
        start_after=q.get("start-after", ""), continuation_token=q.get("continuation-token", ""),
    )
    start = _untoken(params.continuation_token) if params.continuation_token else params.start_after
    page = await ctx.ns.list_objects(ctx.identity, ctx.bucket, prefix=params.prefix, delimiter=params.delimiter,
                                     start_after=start, max_keys=params.max_keys)
    if page.truncated and page.last is not None:
        params.next_token = _token(page.last)
    owners = await _owners(ctx, page) if params.fetch_owner else {}
    return Response(200, _listing_headers(page), xml.list_objects(page, params, owners))


async def list_objects_v1(ctx: S3Context) -> Response:
    q = ctx.query
    params = xml.ListParams(
        bucket=ctx.bucket, prefix=q.get("prefix", ""), delimiter=q.get("delimiter", ""),
        max_keys=min(ctx.int_param("max-keys", MAX_KEYS), MAX_KEYS), url_encode=_encoding(ctx),
        fetch_owner=True, v2=False, marker=q.get("marker", ""),
    )
    page = await ctx.ns.list_objects(ctx.identity, ctx.bucket, prefix=params.prefix, delimiter=params.delimiter,
                                     start_after=params.marker, max_keys=params.max_keys)
    owners = await _owners(ctx, page)
    return Response(200, _listing_headers(page), xml.list_objects(page, params, owners))
