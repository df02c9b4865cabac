"""Governance through the admin API (#7, docs/admin-api.md "Tenants, quotas and QoS"): tenants, their settings,
quotas and rate limits of tenants and buckets, new keys, and usage.

    GET    /api/v1/tenants                   {tenants: [...]}
    POST   /api/v1/tenants                   {name, warm_reserved?, warm_cap?, wan_weight?}
    GET    /api/v1/tenants/{tenant}          the tenant, its identities (no secrets) and buckets
    PATCH  /api/v1/tenants/{tenant}          {warm_reserved?, warm_cap?, wan_weight?}
    DELETE /api/v1/tenants/{tenant}          refused while it owns buckets; takes its identities
    PUT    /api/v1/tenants/{tenant}/quota    {max_bytes?, max_objects?}
    PUT    /api/v1/tenants/{tenant}/qos      {requests_per_second?, request_burst?, bytes_per_second?, bytes_burst?}
    PUT    /api/v1/buckets/{bucket}/quota    the same for a bucket
    PUT    /api/v1/buckets/{bucket}/qos
    POST   /api/v1/tenants/{tenant}/keys     {name, role?, scopes?, account?}: the new identity, its secret once
    GET    /api/v1/usage                     ?tenant=T

Settings go to the metadata store, like the CLI's; every worker sees them within its 1 s caches. A limit of 0
(or null) is no limit; fields left out keep their value.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qs

from atoll import errors
from atoll.admin.jsonapi import (ApiError, bad_field, json_body, json_response, string_field, strings_field,
                                 unknown_fields)
from atoll.admin.usage import RateWindow, qos_view, quota_view, usage_document
from atoll.core.models import ROLES, Limits, Tenant
from atoll.core.namespace import Namespace, validate_tenant_name
from atoll.http.server import Request, Response

Handler = Callable[[Request, dict], Awaitable[Response]]

TENANT_SETTINGS = ("warm_reserved", "warm_cap", "wan_weight")
QUOTA_FIELDS = ("max_bytes", "max_objects")
QOS_FIELDS = ("requests_per_second", "request_burst", "bytes_per_second", "bytes_burst")
MAX_WAN_WEIGHT = 1e6
MAX_COUNT = 2**63 - 1  # what SQLite's integers hold


def _count(body: dict, name: str, current: int) -> int:
    """A byte size or object count: a non-negative integer; null is 0 (no limit); absent keeps ``current``."""
    if name not in body:
        return current
    value = body[name]
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        raise bad_field(name, "a non-negative integer (0 or null: no limit)")
    return value


def _rate(body: dict, name: str, current: float) -> float:
    """A rate or burst: a non-negative finite number; null is 0; absent keeps ``current``."""
    if name not in body:
        return current
    value = body[name]
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise bad_field(name, "a non-negative number (0 or null: no limit)")
    return float(value)


def _wan_weight(body: dict, current: float) -> float:
    if "wan_weight" not in body:
        return current
    value = body["wan_weight"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0 < value <= MAX_WAN_WEIGHT:
        raise bad_field("wan_weight", f"a number above 0 and at most {MAX_WAN_WEIGHT:g}")
    return float(value)


def _settings(body: dict, tenant: Tenant) -> Tenant:
    updated = dataclasses.replace(tenant, warm_reserved=_count(body, "warm_reserved", tenant.warm_reserved),
                                  warm_cap=_count(body, "warm_cap", tenant.warm_cap),
                                  wan_weight=_wan_weight(body, tenant.wan_weight))
    if updated.warm_cap and updated.warm_reserved > updated.warm_cap:
        raise ApiError(400, "InvalidArgument", "'warm_reserved' must not exceed 'warm_cap'.")
    return updated


def _quota(body: dict, limits: Limits) -> Limits:
    unknown_fields(body, QUOTA_FIELDS)
    return dataclasses.replace(limits, **{name: _count(body, name, getattr(limits, name)) for name in QUOTA_FIELDS})


def _qos(body: dict, limits: Limits) -> Limits:
    unknown_fields(body, QOS_FIELDS)
    return dataclasses.replace(limits, **{name: _rate(body, name, getattr(limits, name)) for name in QOS_FIELDS})


def tenant_view(tenant: Tenant) -> dict[str, Any]:
    return {"name": tenant.name, "created": tenant.created, "warm_reserved": tenant.warm_reserved,
            "warm_cap": tenant.warm_cap, "wan_weight": tenant.wan_weight, "quota": quota_view(tenant.limits),
            "qos": qos_view(tenant.limits)}


def bucket_limits_view(bucket) -> dict[str, Any]:
    return {"bucket": bucket.name, "tenant": bucket.tenant, "quota": quota_view(bucket.limits),
            "qos": qos_view(bucket.limits)}


class GovernanceApi:
    def __init__(self, ns: Namespace, started: float) -> None:
        self.ns = ns
        self.meta = ns.meta
        self.window = RateWindow(started, lambda: ns.governor)

    def routes(self) -> list[tuple[re.Pattern, str, dict[str, Handler]]]:
        tenant = r"(?P<tenant>[^/]+)"
        bucket = r"(?P<bucket>[^/]+)"
        return [
            (re.compile(r"/api/v1/tenants"), "tenants", {"GET": self.list_tenants, "POST": self.create_tenant}),
            (re.compile(rf"/api/v1/tenants/{tenant}"), "tenant", {"GET": self.get_tenant, "PATCH": self.set_tenant,
                                                                  "DELETE": self.delete_tenant}),
            (re.compile(rf"/api/v1/tenants/{tenant}/quota"), "tenant_quota", {"PUT": self.set_tenant_quota}),
            (re.compile(rf"/api/v1/tenants/{tenant}/qos"), "tenant_qos", {"PUT": self.set_tenant_qos}),
            (re.compile(rf"/api/v1/tenants/{tenant}/keys"), "tenant_keys", {"POST": self.create_key}),
            (re.compile(rf"/api/v1/buckets/{bucket}/quota"), "bucket_quota", {"PUT": self.set_bucket_quota}),
            (re.compile(rf"/api/v1/buckets/{bucket}/qos"), "bucket_qos", {"PUT": self.set_bucket_qos}),
            (re.compile(r"/api/v1/usage"), "usage", {"GET": self.usage}),
        ]

    async def _tenant(self, name: str) -> Tenant:
        tenant = await self.meta.get_tenant(name)
        if tenant is None:
            raise errors.NoSuchTenant(f"no tenant named {name[:64]}")
        return tenant

    async def _bucket(self, name: str):
        bucket = await self.meta.get_bucket(name)
        if bucket is None:
            raise errors.NoSuchBucket(f"no bucket named {name[:64]}", bucket=name)
        return bucket

    # tenants ----------------------------------------------------------------------------------------------
    async def list_tenants(self, request: Request, params: dict) -> Response:
        return json_response(200, {"tenants": [tenant_view(t) for t in await self.meta.list_tenants()]})

    async def create_tenant(self, request: Request, params: dict) -> Response:
        body = await json_body(request)
        unknown_fields(body, ("name", *TENANT_SETTINGS))
        name = string_field(body, "name", required=True)
        validate_tenant_name(name)
        tenant = _settings(body, Tenant(name, time.time()))
        if await self.meta.get_tenant(name) is not None:
            raise ApiError(409, "TenantAlreadyExists", f"A tenant named {name} exists already.")
        await self.meta.put_tenant(tenant)
        return json_response(201, tenant_view(tenant), [("Location", f"/api/v1/tenants/{name}")])

    async def get_tenant(self, request: Request, params: dict) -> Response:
        tenant = await self._tenant(params["tenant"])
        identities = [{"access_key_id": i.access_key, "display_name": i.display_name, "role": i.role,
                       "scopes": list(i.scopes), "account_name": i.account_name, "root": i.is_root}
                      for i in await self.meta.list_identities() if i.tenant == tenant.name]
        buckets = [bucket_limits_view(b) for b in await self.meta.list_buckets(tenant.name)]
        return json_response(200, {**tenant_view(tenant), "identities": identities, "buckets": buckets})

    async def set_tenant(self, request: Request, params: dict) -> Response:
        body = await json_body(request)
        unknown_fields(body, TENANT_SETTINGS)
        tenant = _settings(body, await self._tenant(params["tenant"]))
        await self.meta.put_tenant(tenant)
        return json_response(200, tenant_view(tenant))

    async def delete_tenant(self, request: Request, params: dict) -> Response:
        await self.meta.delete_tenant(params["tenant"])
        return json_response(200, {"tenant": params["tenant"], "deleted": True})

    async def set_tenant_quota(self, request: Request, params: dict) -> Response:
        return await self._set_tenant_limits(request, params["tenant"], _quota)

    async def set_tenant_qos(self, request: Request, params: dict) -> Response:
        return await self._set_tenant_limits(request, params["tenant"], _qos)

    async def _set_tenant_limits(self, request: Request, name: str, change: Callable[[dict, Limits], Limits]):
        body = await json_body(request)
        tenant = await self._tenant(name)
        tenant = dataclasses.replace(tenant, limits=change(body, tenant.limits))
        await self.meta.put_tenant(tenant)
        return json_response(200, tenant_view(tenant))

    # buckets ----------------------------------------------------------------------------------------------
    async def set_bucket_quota(self, request: Request, params: dict) -> Response:
        return await self._set_bucket_limits(request, params["bucket"], _quota)

    async def set_bucket_qos(self, request: Request, params: dict) -> Response:
        return await self._set_bucket_limits(request, params["bucket"], _qos)

    async def _set_bucket_limits(self, request: Request, name: str, change: Callable[[dict, Limits], Limits]):
        body = await json_body(request)
        bucket = await self._bucket(name)
        bucket = dataclasses.replace(bucket, limits=change(body, bucket.limits))
        await self.meta.set_bucket_limits(bucket.name, bucket.limits)
        return json_response(200, bucket_limits_view(bucket))

    # keys -------------------------------------------------------------------------------------------------
    async def create_key(self, request: Request, params: dict) -> Response:
        body = await json_body(request)
        unknown_fields(body, ("name", "role", "scopes", "account"))
        name = string_field(body, "name", required=True)
        if not name.strip() or len(name) > 128:
            raise bad_field("name", "1 to 128 characters")
        role = string_field(body, "role", "admin")
        if role not in ROLES:
            raise bad_field("role", f"one of {', '.join(ROLES)}")
        scopes = strings_field(body, "scopes") or []
        tenant = await self._tenant(params["tenant"])
        identity = await self.ns.create_identity(name, tenant=tenant.name, role=role, scopes=scopes,
                                                 account_name=string_field(body, "account", "") or "")
        record = {"access_key_id": identity.access_key, "secret_access_key": identity.secret_key,
                  "owner_id": identity.owner_id, "display_name": identity.display_name, "tenant": identity.tenant,
                  "role": identity.role, "scopes": list(identity.scopes)}
        if identity.account_name:
            record.update(account_name=identity.account_name, account_key=identity.account_key)
        return json_response(201, record)

    # usage ------------------------------------------------------------------------------------------------
    async def usage(self, request: Request, params: dict) -> Response:
        query = parse_qs(request.raw_query, keep_blank_values=True)
        unknown = sorted(set(query) - {"tenant"})
        if unknown:
            raise ApiError(400, "InvalidArgument", f"Unknown query parameter {unknown[0][:64]!r}; expected tenant.")
        if "tenant" in query:
            tenants = [await self._tenant(query["tenant"][-1])]
        else:
            tenants = await self.meta.list_tenants()
        return json_response(200, await usage_document(self.meta, tenants, self.window))
