"""Lease Blob and Lease Container (``comp=lease``, ``x-ms-lease-action``): headers in, lease answer out.

The state machine is ``atoll.core.leases``; the namespace runs it in one metadata transaction. Lease status,
state and duration for Get Properties and listings come from ``Namespace.lease_view`` / ``lease_views`` and
the hooks below (``lease_state``, ``lease_states``, ``check_lease``) that ``atoll.blob.common`` calls.
"""

from __future__ import annotations

from atoll.blob.context import BlobContext
from atoll.blob import common  # common imports this module (its lease hooks): use it at call time only
from atoll import errors
from atoll.blob.errors import BlobError, http_date
from atoll.core import leases
from atoll.core.conditions import ReadConditions, check as check_conditions
from atoll.http.server import Response

_STATUS = {"acquire": 201, "renew": 200, "change": 200, "release": 200, "break": 202}


async def lease_state(ctx: BlobContext, container: str, blob: str | None) -> tuple[str, str, str]:
    """(x-ms-lease-status, x-ms-lease-state, x-ms-lease-duration) of a blob, or of the container when ``blob`` is
    None; the hook ``atoll.blob.common.lease_state`` calls (Get Properties and listings)."""
    view = await ctx.ns.lease_view(container, blob or "")
    return view.status, view.state, view.duration


async def lease_states(ctx: BlobContext, container: str, blobs: list[str]) -> dict[str, tuple[str, str, str]]:
    """``lease_state`` of a listing page's blobs (in name order) with one query for the page."""
    views = await ctx.ns.lease_views(container, blobs)
    return {name: (v.status, v.state, v.duration) for name, v in views.items()}


async def check_lease(ctx: BlobContext, container: str, blob: str | None) -> None:
    """The hook ``atoll.blob.common.check_lease`` calls before a write the namespace does not check itself (set
    metadata or properties): the request's x-ms-lease-id must name the held lease (412 LeaseIdMissing, ...).
    Namespace writes that take ``lease_id`` check it themselves: pass ``lease_id=lease_id_of(ctx)`` to them.
    The caller's permission is checked first, so another tenant learns nothing from a lease's answer."""
    await ctx.ns.bucket_for(ctx.identity, container, "write" if blob else "admin", blob)
    lease_id = lease_id_of(ctx)
    if blob is None and lease_id is None and ctx.operation != "DeleteContainer":
        return  # Azure: only Delete Container needs the container's lease; other container writes may name it
    await ctx.ns.check_lease(container, blob or "", lease_id)


def lease_id_of(ctx: BlobContext) -> str | None:
    return ctx.headers.get("x-ms-lease-id") or None


def _request(ctx: BlobContext) -> leases.LeaseRequest:
    h = ctx.headers
    return leases.parse_request(h.get("x-ms-lease-action"), lease_id=h.get("x-ms-lease-id"),
                                proposed_id=h.get("x-ms-proposed-lease-id"),
                                duration=h.get("x-ms-lease-duration"),
                                break_period=h.get("x-ms-lease-break-period"))


def _answer(request: leases.LeaseRequest, outcome: leases.LeaseOutcome, etag: str,
            last_modified: float) -> Response:
    headers = [("ETag", etag), ("Last-Modified", http_date(last_modified))]
    if request.action == "break":
        headers.append(("x-ms-lease-time", str(outcome.lease_time or 0)))
    elif outcome.lease_id is not None:
        headers.append(("x-ms-lease-id", outcome.lease_id))
    return Response(status=_STATUS[request.action], headers=headers)


async def lease_blob(ctx: BlobContext) -> Response:
    ctx.require("w")
    request = _request(ctx)
    h = ctx.headers
    conditions = ReadConditions(if_match=h.get("if-match"), if_none_match=h.get("if-none-match"),
                                if_modified_since=h.get("if-modified-since"),
                                if_unmodified_since=h.get("if-unmodified-since"))
    if not conditions.empty:
        current = await ctx.ns.head_object(ctx.identity, ctx.container, ctx.blob)
        try:
            check_conditions(conditions, current.etag, current.last_modified)
        except (errors.NotModified, errors.PreconditionFailed):
            raise BlobError("ConditionNotMet", "The condition specified using HTTP conditional header(s) is not "
                            "met.", 412) from None
    outcome = await ctx.ns.lease(ctx.identity, ctx.container, ctx.blob, request)
    version = await ctx.ns.head_object(ctx.identity, ctx.container, ctx.blob)
    return _answer(request, outcome, common.quoted_etag(version.etag), version.last_modified)


async def lease_container(ctx: BlobContext) -> Response:
    ctx.require("w")
    request = _request(ctx)
    outcome = await ctx.ns.lease(ctx.identity, ctx.container, "", request)
    bucket = await ctx.ns.bucket_for(ctx.identity, ctx.container, "read")
    modified = max((await ctx.ns.bucket_properties(ctx.container)).modified, bucket.created)  # as Get Properties
    return _answer(request, outcome, common.container_etag(modified), modified)
