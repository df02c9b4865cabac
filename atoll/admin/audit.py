"""The audit log of the admin API (#10): every mutating request (POST, PUT, PATCH, DELETE) that got past
authentication leaves one entry in the metadata store, whether it was carried out ("ok") or refused (the error
code it was answered with), so the log is cluster-wide and survives restarts.

    GET /api/v1/audit?limit=N&before=ID     {"entries": [...]} newest first (limit 1..1000, default 100)

An entry names who (``request.state["actor"]``: an operator's access key id, or "admin-token"), what (an action
named after the route: job.create, pin.add, link.set, ...), on what (``target``: a bucket, bucket/prefix, job id,
tenant), a small ``detail``, the request id (the access log's) and the node. ``detail`` holds only fields listed
here per action (a whitelist: a field added to a route later is left out until it is listed), never a secret:
link options appear by name only, URLs lose any password or signature, created keys appear by access key id.

An entry that cannot be written (the store is down) does not undo or fail the action already taken: it is logged
as an error, with the entry, in the event log.
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qs

from atoll import errors
from atoll.admin.jsonapi import PARSED_BODY_STATE, ApiError, json_response
from atoll.core import cluster
from atoll.http.server import Request, Response
from atoll.server.logsetup import redact
from atoll.stores.meta.sql_audit import MAX_AUDIT_PAGE, AuditEntry

log = logging.getLogger("atoll.audit")

MUTATING = frozenset(("POST", "PUT", "PATCH", "DELETE"))
MAX_TEXT = 256  # longest string kept in a detail field
MAX_ITEMS = 20  # most items of a list kept in a detail field

Handler = Callable[[Request, dict], Awaitable[Response]]
Router = Callable[[Request], "tuple[Handler, dict]"]

# (route name as atoll.admin.app and governance name it, method) -> action
ACTIONS: dict[tuple[str, str], str] = {
    ("link", "PUT"): "link.set", ("link", "DELETE"): "link.remove",
    ("groups", "POST"): "group.add",
    ("pins", "POST"): "pin.add", ("pins", "DELETE"): "pin.remove",
    ("jobs", "POST"): "job.create", ("job", "DELETE"): "job.cancel",
    ("tenants", "POST"): "tenant.create", ("tenant", "PATCH"): "tenant.update", ("tenant", "DELETE"): "tenant.delete",
    ("tenant_quota", "PUT"): "quota.set", ("bucket_quota", "PUT"): "quota.set",
    ("tenant_qos", "PUT"): "qos.set", ("bucket_qos", "PUT"): "qos.set",
    ("tenant_keys", "POST"): "key.create",
}

# action -> the request body fields its detail may keep
DETAIL_FIELDS: dict[str, tuple[str, ...]] = {
    "link.set": ("url", "mode", "revalidate", "check", "options"),
    "group.add": ("prefix", "markers"),
    "pin.add": ("prefix", "seconds"),
    "job.create": ("kind", "bucket", "prefix", "keys", "pin", "pin_seconds", "priority"),
    "tenant.create": ("name", "warm_reserved", "warm_cap", "wan_weight"),
    "tenant.update": ("warm_reserved", "warm_cap", "wan_weight"),
    "quota.set": ("max_bytes", "max_objects"),
    "qos.set": ("requests_per_second", "request_burst", "bytes_per_second", "bytes_burst"),
    "key.create": ("name", "role", "scopes", "account"),
}
# action -> fields of its (successful) answer worth keeping: ids made by the action, never a secret
ANSWER_FIELDS: dict[str, dict[str, str]] = {
    "job.create": {"id": "job_id"},
    "key.create": {"access_key_id": "access_key_id"},
    "pin.add": {"objects": "objects", "bytes": "bytes", "until": "until"},
    "pin.remove": {"objects": "objects", "bytes": "bytes"},
}


def _text(value: str) -> str:
    return redact(value[:MAX_TEXT])


def _safe(value: Any) -> Any:
    """A JSON scalar, or a short list of them; strings cut short and redacted; anything else dropped."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, list):
        return [_safe(v) for v in value[:MAX_ITEMS] if v is None or isinstance(v, (str, bool, int, float))]
    return None


def detail_of(action: str, body: dict | None, query: dict[str, list[str]]) -> dict[str, Any]:
    detail: dict[str, Any] = {}
    body = body if isinstance(body, dict) else {}
    for name in DETAIL_FIELDS.get(action, ()):
        if name not in body:
            continue
        value = body[name]
        if name == "options":  # link options: names only (values may be keys, SAS tokens, passwords)
            detail[name] = sorted(_text(str(k)) for k in value)[:MAX_ITEMS] if isinstance(value, dict) else None
        elif name == "keys":  # a staging job's key list: its length
            detail["key_count"] = len(value) if isinstance(value, list) else None
        else:
            detail[name] = _safe(value)
    if action == "pin.remove" and "prefix" in query:
        detail["prefix"] = _text(query["prefix"][-1])
    return detail


def target_of(route: str, params: dict, body: dict | None, query: dict[str, list[str]]) -> str:
    body = body if isinstance(body, dict) else {}
    prefix = body.get("prefix")
    if not isinstance(prefix, str):
        prefix = query.get("prefix", [""])[-1] if route == "pins" else ""
    if route == "jobs":
        bucket = body.get("bucket") if isinstance(body.get("bucket"), str) else ""
        return _text(f"{bucket}/{prefix}" if prefix else bucket)
    if "bucket" in params:
        bucket = params["bucket"]
        return _text(f"{bucket}/{prefix}" if route in ("pins", "groups") and prefix else bucket)
    if "job_id" in params:
        return _text(params["job_id"])
    if "tenant" in params:
        return _text(params["tenant"])
    if route == "tenants":
        return _text(body["name"]) if isinstance(body.get("name"), str) else ""
    if route == "drain":
        return "drain"
    return ""


def action_of(route: str, method: str, params: dict) -> str:
    if route == "drain":
        return f"drain.{params.get('action', '?')}"
    return ACTIONS.get((route, method), f"{route}.{method.lower()}")


def _error_code(response: Response) -> str:
    try:
        return str(json.loads(response.body)["error"]["code"])
    except (ValueError, TypeError, KeyError):
        return f"HTTP{response.status}"


def _answer_fields(action: str, response: Response) -> dict[str, Any]:
    wanted = ANSWER_FIELDS.get(action)
    if not wanted or not isinstance(response.body, (bytes, str)):
        return {}
    try:
        answer = json.loads(response.body)
    except ValueError:
        return {}
    return {name: _safe(answer[field]) for field, name in wanted.items() if isinstance(answer, dict) and
            field in answer}


class AuditTrail:
    def __init__(self, meta) -> None:
        self.meta = meta

    def routes(self) -> list[tuple[re.Pattern, str, dict[str, Handler]]]:
        return [(re.compile(r"/api/v1/audit"), "audit", {"GET": self.list_entries})]

    async def call(self, request: Request, route: Router) -> Response:
        """Route ``request`` and run its handler; a mutating request leaves an audit entry, whatever happens."""
        if request.method not in MUTATING:
            handler, params = route(request)
            return await handler(request, params)
        params: dict = {}
        outcome = "InternalError"
        response: Response | None = None
        try:
            handler, params = route(request)
            response = await handler(request, params)
            outcome = "ok" if response.status < 400 else _error_code(response)
            return response
        except ApiError as exc:
            outcome = exc.code
            raise
        except errors.AtollError as exc:
            outcome = type(exc).__name__
            raise
        finally:
            await self._record(request, params, outcome, response)

    async def _record(self, request: Request, params: dict, outcome: str, response: Response | None) -> None:
        route = request.state.get("op", "admin.unknown").removeprefix("admin.")
        body = request.state.get(PARSED_BODY_STATE)
        query = parse_qs(request.raw_query, keep_blank_values=True)
        action = action_of(route, request.method, params)
        detail = detail_of(action, body, query)
        if response is not None and outcome == "ok":
            detail.update(_answer_fields(action, response))
        if route == "unknown":
            detail["path"] = _text(request.raw_path)
        entry = AuditEntry(time=time.time(), actor=str(request.state.get("actor") or "unknown"), action=action,
                           target=target_of(route, params, body, query), outcome=outcome, request_id=request.id,
                           node=cluster.node_name(), detail=detail)
        try:
            await self.meta.record_audit(entry)
        except Exception as exc:  # noqa: BLE001 - the action stands; its trace must not be lost silently
            log.error("audit entry not recorded (%s: %s): %s", type(exc).__name__, exc,
                      json.dumps(entry.view(), separators=(",", ":")))

    async def list_entries(self, request: Request, params: dict) -> Response:
        query = parse_qs(request.raw_query, keep_blank_values=True)
        unknown = sorted(set(query) - {"limit", "before"})
        if unknown:
            raise ApiError(400, "InvalidArgument", f"Unknown query parameter {unknown[0][:64]!r}; expected limit, "
                                                   "before.")
        limit_text = query.get("limit", ["100"])[-1]
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_AUDIT_PAGE:
            raise ApiError(400, "InvalidArgument", f"'limit' must be an integer from 1 to {MAX_AUDIT_PAGE}.")
        before_text = query.get("before", [None])[-1]
        if before_text is not None and (not before_text.isdigit() or len(before_text) > 18):
            raise ApiError(400, "InvalidArgument", "'before' must be an entry id (a positive integer).")
        entries = await self.meta.list_audit(int(limit_text), None if before_text is None else int(before_text))
        return json_response(200, {"entries": [e.view() for e in entries]})
