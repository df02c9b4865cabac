"""``atoll tenant create|set|list|show|delete``: the teams of the island, their warm-tier share and WAN weight.

Like every administrative command these work on the data directory's metadata store, with or without a running
server; a running server sees a change within its one-second tenant cache. Quotas and rate limits have their
own commands (atoll quota, atoll qos).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from typing import Optional

import typer
from rich.table import Table

from atoll.cli.auditing import audited
from atoll.cli.main import ConfigOpt, DataDirOpt, _config, _fail, _with_store, console
from atoll.cli.units import format_size, parse_size

app = typer.Typer(no_args_is_help=True, help="Tenants: teams owning identities, buckets and limits.")

WarmReservedOpt = typer.Option(None, "--warm-reserved", help="Warm-tier bytes guaranteed to the tenant (e.g. "
                               "500GiB); other tenants' data cannot evict below it.")
WarmCapOpt = typer.Option(None, "--warm-cap", help="Most warm-tier bytes the tenant may hold (0: no cap).")
WanWeightOpt = typer.Option(None, "--wan-weight", help="The tenant's share of each cold link against other "
                            "tenants (default 1).")


def _sizes(warm_reserved: Optional[str], warm_cap: Optional[str], wan_weight: Optional[float]) -> dict:
    """The options given, checked before the store is opened (a typo fails at once)."""
    try:
        given = {"warm_reserved": parse_size(warm_reserved) if warm_reserved is not None else None,
                 "warm_cap": parse_size(warm_cap) if warm_cap is not None else None, "wan_weight": wan_weight}
    except ValueError as exc:
        _fail(str(exc))
    if wan_weight is not None and not (0 < wan_weight <= 1_000_000):
        _fail("--wan-weight must be a number above 0 (and at most 1000000)")
    return {name: value for name, value in given.items() if value is not None}


def _settings(tenant, given: dict):
    """``tenant`` with the ``_sizes`` given applied; a message (str) when they contradict each other."""
    for name, value in given.items():
        setattr(tenant, name, float(value) if name == "wan_weight" else value)
    if tenant.warm_cap and tenant.warm_reserved > tenant.warm_cap:
        return (f"the warm reservation ({format_size(tenant.warm_reserved)}) is larger than the warm cap "
                f"({format_size(tenant.warm_cap)})")
    return tenant


def _record(tenant) -> dict:
    return {"name": tenant.name, "created": tenant.created, "warm_reserved": tenant.warm_reserved,
            "warm_cap": tenant.warm_cap, "wan_weight": tenant.wan_weight, "limits": dataclasses.asdict(tenant.limits)}


def _audit_detail(tenant) -> dict:
    return {"warm_reserved": tenant.warm_reserved, "warm_cap": tenant.warm_cap, "wan_weight": tenant.wan_weight}


@app.command("create")
def tenant_create(name: str, warm_reserved: Optional[str] = WarmReservedOpt, warm_cap: Optional[str] = WarmCapOpt,
                  wan_weight: Optional[float] = WanWeightOpt, config_file: Optional[str] = ConfigOpt,
                  data_dir: Optional[str] = DataDirOpt) -> None:
    """Create a tenant. Give it identities with: atoll key create --name N --tenant NAME [--role ...]."""
    from atoll import errors
    from atoll.core.models import Tenant
    from atoll.core.namespace import validate_tenant_name

    try:
        validate_tenant_name(name)
    except errors.AtollError as exc:
        _fail(exc.message)
    tenant = _settings(Tenant(name, time.time()), _sizes(warm_reserved, warm_cap, wan_weight))
    if isinstance(tenant, str):
        _fail(tenant)
    config = _config(config_file, data_dir=data_dir)

    async def run(ns):
        if await ns.meta.get_tenant(name) is not None:
            return f"tenant {name} already exists (change it with: atoll tenant set {name} ...)"
        async with audited(ns.meta, "tenant.create", name, _audit_detail(tenant)):
            await ns.meta.put_tenant(tenant)
        return None

    problem = _with_store(config, run)
    if problem:
        _fail(problem)
    console.print(f"created tenant {name}", highlight=False)


@app.command("set")
def tenant_set(name: str, warm_reserved: Optional[str] = WarmReservedOpt, warm_cap: Optional[str] = WarmCapOpt,
               wan_weight: Optional[float] = WanWeightOpt, config_file: Optional[str] = ConfigOpt,
               data_dir: Optional[str] = DataDirOpt) -> None:
    """Change a tenant's warm reservation, warm cap or WAN weight (options not given stay as they are)."""
    if warm_reserved is None and warm_cap is None and wan_weight is None:
        _fail("nothing to set: give --warm-reserved, --warm-cap or --wan-weight")
    given = _sizes(warm_reserved, warm_cap, wan_weight)
    config = _config(config_file, data_dir=data_dir)

    async def run(ns):
        tenant = await ns.meta.get_tenant(name)
        if tenant is None:
            return f"no tenant named {name}"
        changed = _settings(tenant, given)
        if isinstance(changed, str):
            return changed
        async with audited(ns.meta, "tenant.update", name, _audit_detail(changed)):
            await ns.meta.put_tenant(changed)
        return None

    problem = _with_store(config, run)
    if problem:
        _fail(problem)
    console.print(f"updated tenant {name}", highlight=False)


@app.command("list")
def tenant_list(as_json: bool = typer.Option(False, "--json", help="Print the tenants as a JSON array."),
                config_file: Optional[str] = ConfigOpt, data_dir: Optional[str] = DataDirOpt) -> None:
    """List tenants with their identity and bucket counts."""
    config = _config(config_file, data_dir=data_dir)

    async def run(ns):
        identities = await ns.meta.list_identities()
        buckets = await ns.meta.list_buckets()
        return [(t, sum(i.tenant == t.name for i in identities), sum(b.tenant == t.name for b in buckets))
                for t in await ns.meta.list_tenants()]

    rows = _with_store(config, run)
    if as_json:
        sys.stdout.write(json.dumps([{**_record(t), "identities": n_ids, "buckets": n_buckets}
                                     for t, n_ids, n_buckets in rows]) + "\n")
        return
    table = Table("tenant", "identities", "buckets", "warm reserved", "warm cap", "WAN weight")
    for tenant, n_ids, n_buckets in rows:
        table.add_row(tenant.name, str(n_ids), str(n_buckets), format_size(tenant.warm_reserved),
                      format_size(tenant.warm_cap) if tenant.warm_cap else "-", f"{tenant.wan_weight:g}")
    console.print(table)


@app.command("show")
def tenant_show(name: str, as_json: bool = typer.Option(False, "--json", help="Print the tenant as one JSON object."),
                config_file: Optional[str] = ConfigOpt, data_dir: Optional[str] = DataDirOpt) -> None:
    """Show a tenant: its settings, its identities (never their secrets) and its buckets."""
    config = _config(config_file, data_dir=data_dir)

    async def run(ns):
        tenant = await ns.meta.get_tenant(name)
        if tenant is None:
            return None
        identities = [i for i in await ns.meta.list_identities() if i.tenant == name]
        return tenant, identities, await ns.meta.list_buckets(name)

    found = _with_store(config, run)
    if found is None:
        _fail(f"no tenant named {name}")
    tenant, identities, buckets = found
    people = [{"access_key_id": i.access_key, "display_name": i.display_name, "role": i.role,
               "scopes": list(i.scopes), "account_name": i.account_name, "root": i.is_root} for i in identities]
    if as_json:
        sys.stdout.write(json.dumps({**_record(tenant), "identities": people,
                                     "buckets": [b.name for b in buckets]}) + "\n")
        return
    limits = tenant.limits
    console.print(f"tenant:        {tenant.name}\n"
                  f"warm reserved: {format_size(tenant.warm_reserved)}\n"
                  f"warm cap:      {format_size(tenant.warm_cap) if tenant.warm_cap else 'none'}\n"
                  f"WAN weight:    {tenant.wan_weight:g}\n"
                  f"quota:         bytes {format_size(limits.max_bytes) if limits.max_bytes else 'unlimited'}, "
                  f"objects {limits.max_objects or 'unlimited'}", highlight=False)
    table = Table("access key id", "display name", "role", "scopes", "account")
    for person in people:
        table.add_row(person["access_key_id"], person["display_name"], person["role"],
                      ", ".join(person["scopes"]) or "all buckets", person["account_name"])
    console.print(table)
    console.print("buckets:       " + (", ".join(b.name for b in buckets) or "none"), highlight=False)


@app.command("delete")
def tenant_delete(name: str, config_file: Optional[str] = ConfigOpt, data_dir: Optional[str] = DataDirOpt) -> None:
    """Delete a tenant and its identities; refused while it owns buckets."""
    from atoll import errors

    config = _config(config_file, data_dir=data_dir)

    async def run(ns):
        try:
            async with audited(ns.meta, "tenant.delete", name):
                await ns.meta.delete_tenant(name)
        except errors.NoSuchTenant:
            return f"no tenant named {name}"
        except errors.TenantNotEmpty:
            owned = [b.name for b in await ns.meta.list_buckets(name)]
            listed = ", ".join(owned[:10]) + (", ..." if len(owned) > 10 else "")
            return f"tenant {name} still owns buckets ({listed}); delete them first"
        except errors.AtollError as exc:
            return exc.message
        return None

    problem = _with_store(config, run)
    if problem:
        _fail(problem)
    console.print(f"deleted tenant {name} and its identities", highlight=False)
