"""The admin HTTP application (``atoll.http.server.App``): a small JSON API and ``/metrics``.

Every request carries ``Authorization: Bearer <token>`` (see atoll.admin.token), is signed with SigV4 by an
operator identity (atoll.admin.signin), or carries a dashboard session cookie (atoll.admin.dashboard: the web
pages on this port, which check their own sessions); the check comes before routing, so an unauthenticated
client learns nothing about the routes. Answers are JSON; every client mistake
is a 4xx ``{"error": {"code", "message"}}`` and never echoes a secret. Operator actions go through
``atoll.core.tiering.admin``, the same functions the CLI calls.

    GET    /metrics                          Prometheus text format
    GET    /api/v1/status                    version, uptime, warm tier, drain, cold endpoints, linked buckets
    GET    /api/v1/buckets/{bucket}          a bucket's tiering status
    PUT    /api/v1/buckets/{bucket}/link     {url, mode, revalidate?, options?, check?}
    DELETE /api/v1/buckets/{bucket}/link
    POST   /api/v1/buckets/{bucket}/groups   {prefix, markers?}
    GET    /api/v1/jobs                      ?active=1&limit=N
    POST   /api/v1/jobs                      {kind, bucket, prefix?, keys?, pin?, pin_seconds?, priority?}
    GET    /api/v1/jobs/{id}
    DELETE /api/v1/jobs/{id}                 cancel
    POST   /api/v1/drain/pause | /api/v1/drain/resume
    POST   /api/v1/buckets/{bucket}/pins     {prefix, seconds?}; DELETE ...?prefix=P: see atoll.admin.pins
    GET    /api/v1/audit                     ?limit=N&before=ID: the audit log, see atoll.admin.audit
    ...    /api/v1/tenants, /api/v1/buckets/{bucket}/quota|qos, /api/v1/usage: see atoll.admin.governance
    GET    /api/v1/dashboard, /api/v1/dashboard/history?since=   the dashboard's data: atoll.admin.dashboard
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qs, unquote

from atoll import __version__, errors
from atoll.admin import exporter, status
from atoll.admin.audit import AuditTrail
from atoll.admin.dashboard import Dashboard, DashboardSettings
from atoll.admin.governance import GovernanceApi
from atoll.admin.jsonapi import (MAX_BODY, ApiError, boolean_field, error_response, json_body, json_response,
                                 number_field, string_field, string_map_field, strings_field, unknown_fields)
from atoll.admin.pins import PinApi
from atoll.admin.signin import is_signed, signed_operator
from atoll.admin.token import token_matches
from atoll.core.ingest import run_io
from atoll.core.namespace import Namespace
from atoll.core.tiering import admin
from atoll.http.server import Request, Response
from atoll.server.accesslog import AccessLog

log = logging.getLogger("atoll.admin")

MAX_JOB_BODY = 16 << 20  # a staging job may list many keys
JOB_KINDS = ("stage", "sync-index")

Handler = Callable[[Request, dict], Awaitable[Response]]


def _core_error_status(exc: errors.AtollError) -> int:
    for kind, status_code in ((errors.NotFound, 404), (errors.Conflict, 409), (errors.PreconditionFailed, 412),
                              (errors.InvalidRequest, 400), (errors.AccessDenied, 403),
                              (errors.Unavailable, 503)):
        if isinstance(exc, kind):
            return status_code
    return 400


# the application --------------------------------------------------------------------------------------------
class AdminApp:
    def __init__(self, ns: Namespace, token: str, *, started: float, workers: int = 1,
                 access_log: AccessLog | None = None, peers_dir: str | None = None,
                 dashboard: DashboardSettings | None = None) -> None:
        if ns.tier is None:
            raise ValueError("the admin API needs a namespace with tiering")
        self.ns = ns
        self.tier = ns.tier
        self._token = token
        self.started = started
        self.workers = workers
        self.access_log = access_log
        self.peers_dir = peers_dir  # where the other workers publish their cold-endpoint health
        self.governance = GovernanceApi(ns, started)
        self.dashboard = Dashboard(self, token, dashboard)
        self.audit = AuditTrail(ns.meta)  # every mutating request leaves an entry (atoll.admin.audit)
        bucket = r"(?P<bucket>[^/]+)"
        self._routes: list[tuple[re.Pattern, str, dict[str, Handler]]] = [
            (re.compile(r"/metrics"), "metrics", {"GET": self.metrics}),
            (re.compile(r"/api/v1/status"), "status", {"GET": self.status}),
            (re.compile(rf"/api/v1/buckets/{bucket}"), "bucket", {"GET": self.bucket}),
            (re.compile(rf"/api/v1/buckets/{bucket}/link"), "link", {"PUT": self.link, "DELETE": self.unlink}),
            (re.compile(rf"/api/v1/buckets/{bucket}/groups"), "groups", {"POST": self.add_group}),
            (re.compile(r"/api/v1/jobs"), "jobs", {"GET": self.list_jobs, "POST": self.create_job}),
            (re.compile(r"/api/v1/jobs/(?P<job_id>[^/]+)"), "job", {"GET": self.get_job,
                                                                     "DELETE": self.cancel_job}),
            (re.compile(r"/api/v1/drain/(?P<action>pause|resume)"), "drain", {"POST": self.drain}),
            *PinApi(self.tier).routes(),
            *self.audit.routes(),
            *self.governance.routes(),
            *self.dashboard.api_routes(),
        ]

    # http.App ---------------------------------------------------------------------------------------------
    async def handle(self, request: Request) -> Response:
        try:
            if self.dashboard.serves(request.raw_path):  # pages check their session themselves
                return await self.dashboard.handle_page(request)
            await self._authenticate(request)
            response = await self.audit.call(request, self._route)
            if request.method != "GET":
                self.dashboard.data.forget()
            return response
        except ApiError as exc:
            return error_response(exc.status, exc.code, exc.message, exc.headers)
        except errors.AtollError as exc:
            retry = [("Retry-After", str(exc.retry_after))] if isinstance(exc, errors.Unavailable) else []
            return error_response(_core_error_status(exc), type(exc).__name__, exc.message, retry)

    async def _authenticate(self, request: Request) -> None:
        """Let in an operator's SigV4 signature, the bearer token, or a dashboard session (whose non-GET requests
        must carry its CSRF value); sets ``request.state["actor"]``. ApiError 401 (403 for a failed CSRF check or
        a signer who is no operator) otherwise."""
        authorization = request.headers.get("authorization")
        if is_signed(authorization):
            limit = MAX_JOB_BODY if request.raw_path.startswith("/api/v1/jobs") else MAX_BODY
            request.state["actor"] = (await signed_operator(request, self.ns, limit)).access_key
            return
        if token_matches(self._token, authorization):
            request.state["actor"] = "admin-token"
            return
        session = await self.dashboard.session_of(request) if authorization is None else None
        if session is None:
            raise ApiError(401, "Unauthorized", "Send the admin token as 'Authorization: Bearer <token>'.",
                           [("WWW-Authenticate", 'Bearer realm="atoll-admin"')])
        self.dashboard.require_csrf(request, session)
        request.state["actor"] = session.actor
        if session.actor != "admin-token":
            request.state["access_key"] = session.actor

    def protocol_error(self, request: Request | None, status: int, code: str, message: str) -> Response:
        return error_response(status, code, message)

    def log_access(self, request: Request, status: int, sent: int, elapsed: float) -> None:
        if self.access_log is not None:
            self.access_log.record(request, status, sent, elapsed)

    def _route(self, request: Request) -> tuple[Handler, dict]:
        try:
            path = unquote(request.raw_path, errors="strict")
        except UnicodeDecodeError:
            raise ApiError(400, "InvalidURI", "The path is not valid UTF-8.") from None
        path = path.rstrip("/") or "/"
        for pattern, name, methods in self._routes:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            request.state["op"] = f"admin.{name}"
            params = match.groupdict()
            request.state["bucket"] = params.get("bucket")
            handler = methods.get(request.method)
            if handler is None:
                allow = ", ".join(methods)
                raise ApiError(405, "MethodNotAllowed", f"{request.method} is not allowed here; use {allow}.",
                               [("Allow", allow)])
            return handler, params
        raise ApiError(404, "NoSuchRoute", "No such admin API route.")

    # handlers ---------------------------------------------------------------------------------------------
    async def metrics(self, request: Request, params: dict) -> Response:
        snapshot = await exporter.take_snapshot(self.tier, self.started, self.peers_dir)
        text = await run_io(exporter.render, snapshot)
        return Response(status=200, body=text, headers=[("Content-Type", exporter.CONTENT_TYPE),
                                                        ("Cache-Control", "no-store")])

    async def status(self, request: Request, params: dict) -> Response:
        now = time.time()
        return json_response(200, {
            "version": __version__, "started": self.started, "uptime_seconds": round(now - self.started, 3),
            "workers": self.workers,
            **await status.server_status(self.tier, self.peers_dir),
        })

    async def bucket(self, request: Request, params: dict) -> Response:
        view = await status.bucket_status(self.tier, params["bucket"])
        return json_response(200, status.with_health(view, await status.cold_health(self.tier, self.peers_dir),
                                                     await status.bucket_counts()))

    async def link(self, request: Request, params: dict) -> Response:
        body = await json_body(request)
        unknown_fields(body, ("url", "mode", "revalidate", "options", "check"))
        url = string_field(body, "url", required=True)
        mode = string_field(body, "mode", required=True)
        revalidate = string_field(body, "revalidate", "never")
        options = string_map_field(body, "options")
        check = boolean_field(body, "check", True)
        await admin.link_bucket(self.tier, params["bucket"], url, mode, revalidate=revalidate, options=options,
                                check=check)
        return json_response(200, await status.bucket_status(self.tier, params["bucket"]))

    async def unlink(self, request: Request, params: dict) -> Response:
        bucket = params["bucket"]
        if await self.ns.meta.get_bucket(bucket) is None:
            raise errors.NoSuchBucket(f"no bucket named {bucket}", bucket=bucket)
        if not await admin.unlink_bucket(self.tier, bucket):
            raise ApiError(404, "NotLinked", f"bucket {bucket} is not linked")
        return json_response(200, {"bucket": bucket, "linked": False})

    async def add_group(self, request: Request, params: dict) -> Response:
        body = await json_body(request)
        unknown_fields(body, ("prefix", "markers"))
        prefix = string_field(body, "prefix", required=True)
        group = await admin.add_group(self.tier, params["bucket"], prefix, strings_field(body, "markers"))
        return json_response(200, {"bucket": group.bucket, "prefix": group.prefix, "markers": group.markers})

    async def list_jobs(self, request: Request, params: dict) -> Response:
        query = parse_qs(request.raw_query, keep_blank_values=True)
        active = query.get("active", ["0"])[-1].lower() in ("1", "true", "yes")
        limit_text = query.get("limit", ["100"])[-1]
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= 10000:
            raise ApiError(400, "InvalidArgument", "'limit' must be an integer from 1 to 10000.")
        jobs = await self.ns.meta.list_jobs(int(limit_text), active_only=active)
        return json_response(200, {"jobs": [status.job_view(job) for job in jobs]})

    async def create_job(self, request: Request, params: dict) -> Response:
        body = await json_body(request, MAX_JOB_BODY)
        unknown_fields(body, ("kind", "bucket", "prefix", "keys", "pin", "pin_seconds", "priority"))
        kind = string_field(body, "kind", required=True)
        if kind not in JOB_KINDS:
            raise ApiError(400, "InvalidArgument", f"'kind' must be one of {', '.join(JOB_KINDS)}.")
        bucket = string_field(body, "bucket", required=True)
        spec: dict[str, Any] = {"prefix": string_field(body, "prefix", "")}
        if kind == "stage":
            keys = strings_field(body, "keys")
            if keys is not None:
                spec["keys"] = keys
            spec["pin"] = boolean_field(body, "pin", False)
            pin_seconds = number_field(body, "pin_seconds")
            if pin_seconds is not None:
                spec["pin"] = True
                spec["pin_seconds"] = pin_seconds
        elif any(name in body for name in ("keys", "pin", "pin_seconds")):
            raise ApiError(400, "InvalidArgument", "'keys', 'pin' and 'pin_seconds' apply to stage jobs only.")
        if await self.ns.meta.get_bucket(bucket) is None:
            raise errors.NoSuchBucket(f"no bucket named {bucket}", bucket=bucket)
        job = await admin.create_job(self.tier, kind, bucket, spec, string_field(body, "priority", "normal"))
        return json_response(201, status.job_view(job), [("Location", f"/api/v1/jobs/{job.job_id}")])

    async def _job(self, job_id: str):
        job = await self.ns.meta.get_job(job_id)
        if job is None:
            raise ApiError(404, "NoSuchJob", "No job with this id.")
        return job

    async def get_job(self, request: Request, params: dict) -> Response:
        return json_response(200, status.job_view(await self._job(params["job_id"])))

    async def cancel_job(self, request: Request, params: dict) -> Response:
        await self._job(params["job_id"])
        await admin.cancel_job(self.tier, params["job_id"])
        return json_response(200, status.job_view(await self._job(params["job_id"])))

    async def drain(self, request: Request, params: dict) -> Response:
        paused = params["action"] == "pause"
        await self.ns.meta.set_flag("drain_paused", int(paused))
        if not paused:
            drainer = getattr(self.tier, "drainer", None)
            if drainer is not None:
                drainer.wake()
        log.info("drain %s through the admin API", "paused" if paused else "resumed")
        return json_response(200, await status.drain_status(self.tier))
