"""``atoll quota set|show``: storage quotas (bytes, objects) of a tenant or of one of its buckets.

Like every administrative command these work on the data directory's metadata store, with or without a running
server; the exact check at commit sees a change at once, early admission within a second (its caches).
"""

from __future__ import annotations

import json
import sys
from typing import Optional

import typer
from rich.table import Table

from atoll.cli.main import ConfigOpt, DataDirOpt, _config, _fail, _with_store, console
from atoll.cli.limits import change_limits
from atoll.cli.units import format_size, parse_size

app = typer.Typer(no_args_is_help=True, help="Storage quotas: bytes and objects per tenant or bucket; a write "
                                             "past one gets 403 QuotaExceeded.")


def _limit(option: str, text: str, parse) -> int:
    if text.strip().lower() in ("none", "0"):
        return 0
    try:
        value = parse(text)
    except ValueError as exc:
        raise ValueError(f"{option}: {exc} (0 or none removes the limit)") from None
    if value < 0:
        raise ValueError(f"{option}: {text!r} is negative")
    return value


def _count(text: str) -> int:
    if not text.strip().isdigit():
        raise ValueError(f"{text!r} is not a whole number")
    return int(text)


def _describe(max_bytes: int, max_objects: int) -> str:
    parts = [f"{format_size(max_bytes)}" if max_bytes else "", f"{max_objects} objects" if max_objects else ""]
    return ", ".join(p for p in parts if p) or "unlimited"


def _usage_view(limits, usage: tuple[int, int]) -> dict[str, int]:
    return {"max_bytes": limits.max_bytes, "max_objects": limits.max_objects, "bytes": usage[0],
            "objects": usage[1]}


@app.command("set")
def quota_set(
    tenant: str,
    bucket: Optional[str] = typer.Option(None, "--bucket", help="Limit this bucket of the tenant instead of the "
                                         "tenant as a whole (both apply)."),
    max_bytes: Optional[str] = typer.Option(None, "--max-bytes", help="Bytes, e.g. 10GiB or 500MB; multipart parts "
                                            "and uncommitted blocks count (0 or none: no limit)."),
    max_objects: Optional[str] = typer.Option(None, "--max-objects", help="Objects (0 or none: no limit)."),
    config_file: Optional[str] = ConfigOpt,
    data_dir: Optional[str] = DataDirOpt,
) -> None:
    """Set storage quotas of a tenant or one of its buckets (options not given stay as they are)."""
    changes = {}
    try:
        if max_bytes is not None:
            changes["max_bytes"] = _limit("--max-bytes", max_bytes, parse_size)
        if max_objects is not None:
            changes["max_objects"] = _limit("--max-objects", max_objects, _count)
    except ValueError as exc:
        _fail(str(exc))
    if not changes:
        _fail("nothing to set: give --max-bytes or --max-objects")
    config = _config(config_file, data_dir=data_dir)

    result = change_limits(config, tenant, bucket, changes, "quota.set")
    scope = f"bucket {bucket} of tenant {tenant}" if bucket else f"tenant {tenant}"
    console.print(f"quota of {scope}: {_describe(result.max_bytes, result.max_objects)}", highlight=False)


@app.command("show")
def quota_show(tenant: str, as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
               config_file: Optional[str] = ConfigOpt, data_dir: Optional[str] = DataDirOpt) -> None:
    """Show the quotas and usage of a tenant and of each of its buckets."""
    config = _config(config_file, data_dir=data_dir)

    async def run(ns):
        found = await ns.meta.get_tenant(tenant)
        if found is None:
            return None
        buckets = await ns.meta.list_buckets(tenant)
        return (found, await ns.meta.tenant_usage(tenant),
                [(b, await ns.meta.bucket_usage(b.name)) for b in buckets])

    result = _with_store(config, run)
    if result is None:
        _fail(f"no tenant named {tenant}")
    found, usage, buckets = result
    if as_json:
        sys.stdout.write(json.dumps({"tenant": tenant, **_usage_view(found.limits, usage),
                                     "buckets": {b.name: _usage_view(b.limits, u) for b, u in buckets}}) + "\n")
        return
    table = Table("scope", "bytes", "byte quota", "objects", "object quota")
    for name, limits, (size, objects) in [(f"tenant {tenant}", found.limits, usage),
                                          *((f"bucket {b.name}", b.limits, u) for b, u in buckets)]:
        table.add_row(name, format_size(size), format_size(limits.max_bytes) if limits.max_bytes else "none",
                      str(objects), str(limits.max_objects) if limits.max_objects else "none")
    console.print(table)
