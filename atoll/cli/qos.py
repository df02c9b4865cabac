"""``atoll qos set|show``: request and byte rate limits of a tenant, or of one of its buckets.

Like every administrative command these work on the data directory's metadata store, with or without a running
server; a running server applies a change within a second (atoll.core.qos re-reads limits once a second).
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

app = typer.Typer(no_args_is_help=True, help="Rate limits (QoS): requests and bytes per second, per tenant or "
                                             "bucket; over the limit a client gets 503 SlowDown / ServerBusy.")

_RATE_FIELDS = ("requests_per_second", "request_burst", "bytes_per_second", "bytes_burst")


def _rate(option: str, text: str) -> float:
    if text.strip().lower() in ("none", "0"):
        return 0.0
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{option}: {text!r} is not a number (0 or none removes the limit)") from None
    if not (0 <= value < 1e12):
        raise ValueError(f"{option}: {text!r} is out of range")
    return value


def _size(option: str, text: str) -> float:
    if text.strip().lower() in ("none", "0"):
        return 0.0
    try:
        return float(parse_size(text))
    except ValueError as exc:
        raise ValueError(f"{option}: {exc} (0 or none removes the limit)") from None


def _changes(requests_per_second, request_burst, bytes_per_second, bytes_burst) -> dict[str, float]:
    given = {}
    if requests_per_second is not None:
        given["requests_per_second"] = _rate("--requests-per-second", requests_per_second)
    if request_burst is not None:
        given["request_burst"] = _rate("--request-burst", request_burst)
    if bytes_per_second is not None:
        given["bytes_per_second"] = _size("--bytes-per-second", bytes_per_second)
    if bytes_burst is not None:
        given["bytes_burst"] = _size("--bytes-burst", bytes_burst)
    return given


def rates_view(limits) -> dict[str, float]:
    return {name: getattr(limits, name) for name in _RATE_FIELDS}


def _describe(limits) -> str:
    parts = []
    if limits.requests_per_second:
        burst = f" (burst {limits.request_burst:g})" if limits.request_burst else ""
        parts.append(f"{limits.requests_per_second:g} requests/s{burst}")
    if limits.bytes_per_second:
        burst = f" (burst {format_size(int(limits.bytes_burst))})" if limits.bytes_burst else ""
        parts.append(f"{format_size(int(limits.bytes_per_second))}/s{burst}")
    return ", ".join(parts) or "unlimited"


@app.command("set")
def qos_set(
    tenant: str,
    bucket: Optional[str] = typer.Option(None, "--bucket", help="Limit this bucket of the tenant instead of the "
                                         "tenant as a whole (both apply)."),
    requests_per_second: Optional[str] = typer.Option(None, "--requests-per-second", help="Requests per second "
                                                      "(0 or none: no limit)."),
    request_burst: Optional[str] = typer.Option(None, "--request-burst", help="Requests allowed at once above the "
                                                "rate (0: one second's worth)."),
    bytes_per_second: Optional[str] = typer.Option(None, "--bytes-per-second", help="Body bytes per second, in "
                                                   "and out together, e.g. 100MiB (0 or none: no limit)."),
    bytes_burst: Optional[str] = typer.Option(None, "--bytes-burst", help="Bytes allowed at once above the rate "
                                              "(0: one second's worth)."),
    config_file: Optional[str] = ConfigOpt,
    data_dir: Optional[str] = DataDirOpt,
) -> None:
    """Set rate limits of a tenant or one of its buckets (options not given stay as they are)."""
    try:
        changes = _changes(requests_per_second, request_burst, bytes_per_second, bytes_burst)
    except ValueError as exc:
        _fail(str(exc))
    if not changes:
        _fail("nothing to set: give --requests-per-second, --request-burst, --bytes-per-second or --bytes-burst")
    config = _config(config_file, data_dir=data_dir)

    result = change_limits(config, tenant, bucket, changes, "qos.set")
    scope = f"bucket {bucket} of tenant {tenant}" if bucket else f"tenant {tenant}"
    console.print(f"rate limits of {scope}: {_describe(result)}", highlight=False)


@app.command("show")
def qos_show(tenant: str, as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
             config_file: Optional[str] = ConfigOpt, data_dir: Optional[str] = DataDirOpt) -> None:
    """Show the rate limits of a tenant and of those of its buckets that have their own."""
    config = _config(config_file, data_dir=data_dir)

    async def run(ns):
        found = await ns.meta.get_tenant(tenant)
        if found is None:
            return None
        return found, await ns.meta.list_buckets(tenant)

    result = _with_store(config, run)
    if result is None:
        _fail(f"no tenant named {tenant}")
    found, buckets = result
    limited = [b for b in buckets if b.limits.requests_per_second or b.limits.bytes_per_second]
    if as_json:
        sys.stdout.write(json.dumps({"tenant": tenant, "qos": rates_view(found.limits),
                                     "buckets": {b.name: rates_view(b.limits) for b in limited}}) + "\n")
        return
    console.print(f"tenant {tenant}: {_describe(found.limits)}", highlight=False)
    if limited:
        table = Table("bucket", "rate limits")
        for b in limited:
            table.add_row(b.name, _describe(b.limits))
        console.print(table)
