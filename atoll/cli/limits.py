"""Changing the limits (atoll.core.models.Limits) of a tenant or of one of its buckets: what `atoll quota set`
and `atoll qos set` share. Options not given stay as they are."""

from __future__ import annotations

import dataclasses
from typing import Optional

from atoll.cli.main import _fail, _with_store
from atoll.config import Config
from atoll.core.models import Limits


def change_limits(config: Config, tenant: str, bucket: Optional[str], changes: dict, action: str) -> Limits:
    """Apply ``changes`` (Limits field -> value) to the tenant, or to ``bucket`` when given (it must be the
    tenant's); returns the limits now in force there. Exits with a message when either does not exist. ``action``
    names the audit entry (quota.set, qos.set)."""
    from atoll.cli.auditing import audited

    async def run(ns):
        found = await ns.meta.get_tenant(tenant)
        if found is None:
            return f"no tenant named {tenant}"
        if bucket is None:
            found.limits = dataclasses.replace(found.limits, **changes)
            async with audited(ns.meta, action, tenant, changes):
                await ns.meta.put_tenant(found)
            return found.limits
        target = await ns.meta.get_bucket(bucket)
        if target is None or target.tenant != tenant:
            return f"tenant {tenant} has no bucket named {bucket}"
        limits = dataclasses.replace(target.limits, **changes)
        async with audited(ns.meta, action, bucket, changes):
            await ns.meta.set_bucket_limits(bucket, limits)
        return limits

    result = _with_store(config, run)
    if isinstance(result, str):
        _fail(result)
    return result
