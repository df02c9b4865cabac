"""``atoll usage``: what each tenant and its buckets use: stored bytes and objects against their quotas, warm
bytes, request and byte rates, throttled requests and WAN share.

The numbers come from the running server's admin API (``GET /api/v1/usage``, reached like ``atoll status``);
without a server, what the data directory's metadata store knows (stored bytes and objects, warm bytes, limits)
is shown and the rates are missing: they live in the server's counters.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Optional
from urllib.parse import quote

import typer
from rich.table import Column, Table

from atoll.cli.main import ConfigOpt, DataDirOpt, _config, _fail, _with_store, app, console
from atoll.cli.status import ask_server, default_admin_url, human_bytes


async def _local_usage(ns, tenant: Optional[str]) -> dict[str, Any] | str:
    from atoll.admin.usage import stored_usage

    if tenant is None:
        tenants = await ns.meta.list_tenants()
    else:
        found = await ns.meta.get_tenant(tenant)
        if found is None:
            return f"no tenant named {tenant}"
        tenants = [found]
    return {"window_seconds": None, "tenants": await stored_usage(ns.meta, tenants)}


@app.command("usage")
def usage_command(
    tenant: Optional[str] = typer.Option(None, "--tenant", "-t", help="Only this tenant."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (the admin API's usage document "
                                 "plus a 'server' entry)."),
    admin_url: Optional[str] = typer.Option(None, "--admin", help="Admin API URL of the server (default: from "
                                            "admin_address, http://127.0.0.1:9001)."),
    config_file: Optional[str] = ConfigOpt,
    data_dir: Optional[str] = DataDirOpt,
) -> None:
    """Per tenant and bucket: stored bytes and objects (and quotas), warm bytes, requests/s, bytes/s in and out,
    throttled requests, share of the WAN (rates over the server's last 30 s)."""
    from atoll.admin.token import read_token

    config = _config(config_file, data_dir=data_dir)
    url = admin_url or default_admin_url(config)
    server: dict[str, Any] = {"url": url, "reachable": False, "error": None}
    if url is None:
        answer, problem = None, "the admin API is off (admin_address = off): rates are not available"
    else:
        path = "/api/v1/usage" + (f"?tenant={quote(tenant, safe='')}" if tenant is not None else "")
        answer, problem = ask_server(url, read_token(config), path)
    if answer is not None:
        server["reachable"] = True
        report = answer
    else:
        local = _with_store(config, lambda ns: _local_usage(ns, tenant))
        if isinstance(local, str):
            _fail(local)
        report = local
        server["error"] = problem
    report["server"] = server
    if as_json:
        sys.stdout.write(json.dumps(report) + "\n")
        return
    print_usage(report)


def _limit(used: int, limit: int, show=str) -> str:
    return f"{show(used)}/{show(limit)}" if limit else show(used)


def _count_rate(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def _rate(view: dict, name: str, show=_count_rate) -> str:
    rates = view.get("rates")
    return show(rates[name]) if rates else "-"


def _per_second(value: float) -> str:
    return f"{human_bytes(value)}/s"


def _share(view: dict) -> str:
    wan = view.get("wan")
    if not wan or wan.get("share") is None:
        return "-"
    return f"{wan['share'] * 100:.0f}% ({_per_second(wan['bytes_per_second'])})"


def _throttled(view: dict) -> str:
    if "throttled" not in view:
        return "-"
    return f"{view['throttled']} ({_count_rate(view['rates']['throttled_per_second'])}/s)"


def print_usage(report: dict) -> None:
    server = report["server"]
    if not server["reachable"]:
        console.print(f"[yellow]{server['error']}; showing what the metadata store knows[/]", highlight=False)
    window = report.get("window_seconds")
    title = f"Usage (rates over the last {window:.0f} s)" if window else "Usage"
    # Names are what an operator copies into the next command: never wrapped or cut.
    names = [view["tenant"] for view in report["tenants"]]
    names += ["  " + bucket["bucket"] for view in report["tenants"] for bucket in view["buckets"]]
    table = Table(Column("tenant / bucket", no_wrap=True, min_width=max(map(len, names), default=0)),
                  "bytes/quota", "objects/quota", "warm/cap", "req/s", "in/s", "out/s", "throttled", "WAN share",
                  title=title, title_justify="left")
    for view in report["tenants"]:
        quota = view["quota"]
        warm = _limit(view["warm_bytes"], view.get("warm_cap", 0), human_bytes)
        table.add_row(f"[bold]{view['tenant']}[/]", _limit(view["bytes"], quota["max_bytes"], human_bytes),
                      _limit(view["objects"], quota["max_objects"]), warm, _rate(view, "requests_per_second"),
                      _rate(view, "bytes_in_per_second", _per_second), _rate(view, "bytes_out_per_second", _per_second),
                      _throttled(view), _share(view))
        for bucket in view["buckets"]:
            quota = bucket["quota"]
            table.add_row(f"  {bucket['bucket']}", _limit(bucket["bytes"], quota["max_bytes"], human_bytes),
                          _limit(bucket["objects"], quota["max_objects"]), "", _rate(bucket, "requests_per_second"),
                          _rate(bucket, "bytes_in_per_second", _per_second),
                          _rate(bucket, "bytes_out_per_second", _per_second), _throttled(bucket), "")
    console.print(table)
