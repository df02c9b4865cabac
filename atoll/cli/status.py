"""``atoll status``, ``atoll drain pause|resume`` and the tiering part of ``atoll bucket show``.

``atoll status`` shows the running server's admin API status document; when no server answers it says so and
shows what the data directory's metadata store knows (warm usage, links, backlog, resident and pinned bytes):
cold-store health and hit ratios exist only in the server's memory. Heavy modules are imported inside the
commands: this module is imported with the CLI, before ``atoll serve`` has set up prometheus_client's
multiprocess mode.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from typing import Any, Optional

import typer
from rich.table import Column, Table

from atoll.cli.auditing import audited
from atoll.cli.main import ConfigOpt, DataDirOpt, _config, _with_store, app, console
from atoll.config import Config

drain_app = typer.Typer(no_args_is_help=True, help="The write-back drain to cold stores.")
app.add_typer(drain_app, name="drain")

ADMIN_TIMEOUT = 3.0
_STATE_STYLES = {"healthy": "green", "degraded": "yellow", "partitioned": "bold red", "misconfigured": "bold red"}


# formatting -------------------------------------------------------------------------------------------------
def human_bytes(n: float | int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} PiB"


def human_age(seconds: float | None) -> str:
    if not seconds:
        return "-"
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {minutes:02d}m"
    return f"{hours // 24}d {hours % 24}h"


def _ago(timestamp: float | None, now: float) -> str:
    return f"{human_age(now - timestamp)} ago" if timestamp else "never"


# the admin API ----------------------------------------------------------------------------------------------
def default_admin_url(config: Config) -> str | None:
    if config.admin_address == "off":
        return None
    host, _, port = config.admin_address.rpartition(":")
    host = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]", "::": "[::1]"}.get(host, host)
    return f"http://{host}:{port}"


def ask_server(url: str, token: str | None, path: str = "/api/v1/status") -> tuple[dict | None, str | None]:
    """(answer, None) or (None, why not): the server may be down, elsewhere, or refuse the token."""
    request = urllib.request.Request(url.rstrip("/") + path, headers={"Accept": "application/json"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=ADMIN_TIMEOUT) as response:
            return json.loads(response.read()), None
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            return None, (f"the admin API at {url} refused the token (set ATOLL_ADMIN_TOKEN, or run with the "
                          "data directory of that server)")
        return None, f"the admin API at {url} answered HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return None, f"server not reachable at {url} ({reason})"


# atoll status -----------------------------------------------------------------------------------------------
async def local_status(ns) -> dict:
    from atoll.admin import status

    from atoll.admin.nodes import nodes_status

    return {"warm": await status.warm_status(ns.tier), "drain": await status.drain_status(ns.tier),
            "packed": await status.packed_status(ns.tier), "buckets": await status.linked_buckets(ns.tier),
            "nodes": await nodes_status(ns.meta)}


def collect_report(config: Config, url: str | None, token: str | None) -> dict[str, Any]:
    """The admin API's status document with a ``server`` entry; without a server, what the metadata store knows
    (warm tier, drain, buckets) and why the rest is missing."""
    server: dict[str, Any] = {"url": url, "reachable": False, "error": None}
    if url is None:
        server["error"] = "the admin API is off (admin_address = off): cold-store health is not available"
    else:
        answer, problem = ask_server(url, token)
        if answer is not None:
            server.update(reachable=True, version=answer.get("version"), uptime_seconds=answer.get("uptime_seconds"),
                          workers=answer.get("workers"))
            return {**answer, "server": server}
        server["error"] = problem
    report: dict[str, Any] = _with_store(config, local_status)
    return {**report, "server": server, "cold_endpoints": [], "cold_stores": []}


@app.command("status")
def status_command(
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (the admin API's status document "
                                 "plus a 'server' entry)."),
    watch: Optional[float] = typer.Option(None, "--watch", help="Refresh every N seconds until Ctrl-C (with "
                                          "--json: one JSON object per line)."),
    admin_url: Optional[str] = typer.Option(None, "--admin", help="Admin API URL of the server (default: from "
                                            "admin_address, http://127.0.0.1:9001)."),
    config_file: Optional[str] = ConfigOpt,
    data_dir: Optional[str] = DataDirOpt,
) -> None:
    """Warm tier usage; each cold store's state, error rate, latency and bandwidth by traffic class; per linked
    bucket: backlog, recovery point, hit ratio, resident and pinned bytes."""
    from atoll.admin.token import read_token

    if watch is not None and not 0 < watch < 86400:
        console.print("[red]--watch takes a number of seconds above 0[/]", highlight=False)
        raise typer.Exit(2)
    config = _config(config_file, data_dir=data_dir)
    url = admin_url or default_admin_url(config)
    token = read_token(config)
    try:
        while True:
            report = collect_report(config, url, token)
            if as_json:
                sys.stdout.write(json.dumps(report) + "\n")
                sys.stdout.flush()
            else:
                if watch is not None:
                    console.clear()
                print_status(report)
            if watch is None:
                return
            time.sleep(watch)
    except KeyboardInterrupt:
        return


def print_status(report: dict) -> None:
    now = time.time()
    warm, drain, server = report["warm"], report["drain"], report["server"]
    if server["reachable"]:
        console.print(f"server: atoll {server.get('version')} at {server['url']}, up "
                      f"{human_age(server.get('uptime_seconds'))}, {server.get('workers')} worker(s)",
                      highlight=False)
    else:
        console.print(f"[yellow]{server['error']}[/]", highlight=False)

    table = Table("warm tier", "", title="Warm tier", title_justify="left", show_header=False)
    capacity = warm["capacity"]
    table.add_row("capacity", human_bytes(capacity))
    table.add_row("resident", f"{human_bytes(warm['resident_bytes'])} ({warm['used_fraction'] * 100:.1f}%)")
    table.add_row("pinned", human_bytes(warm["pinned_bytes"]))
    table.add_row("watermarks", f"evict above {warm['high_watermark'] * 100:.0f}% down to "
                                f"{warm['low_watermark'] * 100:.0f}%")
    backlog = drain["backlog"]
    table.add_row("drain", "[bold yellow]paused[/]" if drain["paused"] else "running")
    table.add_row("backlog", f"{backlog['objects']} objects, {human_bytes(backlog['bytes'])}, recovery point "
                             f"{human_age(backlog['oldest_age_seconds'])}")
    packed = report.get("packed")
    if packed:
        states = packed["segments"]
        table.add_row("packed store", f"{sum(states.values())} segments ({states['open']} open, {states['sealed']} "
                                      f"sealed, {states['compacting']} compacting, {states['retired']} retired), "
                                      f"{human_bytes(packed['bytes_on_disk'])} on disk: "
                                      f"{human_bytes(packed['live_bytes'])} live in {packed['live_records']} "
                                      f"objects, {human_bytes(packed['dead_bytes'])} dead")
    console.print(table)

    if server["reachable"]:
        endpoints = report.get("cold_endpoints") or []
        if endpoints:
            console.print(cold_stores_table(endpoints, now))
        else:
            console.print("cold stores: none linked")

    if report["buckets"]:
        console.print(buckets_table(report["buckets"]))
    else:
        console.print("linked buckets: none (atoll bucket link BUCKET COLD_URL --mode MODE)")
    if report.get("nodes"):
        console.print(nodes_table(report["nodes"]))


_NODE_STYLES = {"alive": "green", "dead": "bold red", "stopped": "yellow"}


def nodes_table(nodes: list[dict]) -> Table:
    """One row per node of the cluster: its health and what it holds (cluster leases, running jobs and
    compactions, read-through blocks being fetched, cold multipart uploads, drain claims)."""
    table = Table(_name_column("node"), "address", "state", "heartbeat", "started", "version", "holds",
                  title="Nodes", title_justify="left")
    now = time.time()
    for node in nodes:
        holds = [*node.get("leases", []), *(f"job {j}" for j in node.get("jobs", [])),
                 *(f"compaction {c}" for c in node.get("compactions", []))]
        if node.get("fills"):
            holds.append(f"{node['fills']} fill block(s)")
        if node.get("cold_uploads"):
            holds.append(f"{node['cold_uploads']} cold upload(s)")
        if node.get("drain_claims"):
            holds.append(f"{node['drain_claims']} drain claim(s)")
        style = _NODE_STYLES.get(node["state"], "")
        table.add_row(node["node"], node["address"], f"[{style}]{node['state']}[/]" if style else node["state"],
                      f"{human_age(node['heartbeat_age_seconds']) if node['heartbeat_age_seconds'] else '0s'} ago",
                      _ago(node.get("started"), now), str(node.get("version") or "-"), ", ".join(holds) or "-")
    return table


def cold_stores_table(endpoints: list[dict], now: float) -> Table:
    """One row per cold endpoint (an account or S3 endpoint, shared by every bucket linked to it); bandwidth is
    bytes/s over the last minute, in (from the cold store) / out (to it)."""
    table = Table(_name_column("endpoint"), "state", "last success", "errors", "latency", "demand in / out",
                  "stage in / out", "drain in / out", _name_column("buckets"), title="Cold stores",
                  title_justify="left")
    for view in endpoints:
        traffic = view.get("traffic", {})
        minute = view.get("last_minute", {})
        table.add_row(view["endpoint"], _state_cell(view, now),
                      _ago(view.get("last_success"), now) if view.get("contacted") else "not used yet",
                      f"{minute.get('error_rate', 0) * 100:.0f}%" if minute.get("requests") else "-",
                      f"{view['latency_ewma'] * 1000:.1f} ms" if view.get("latency_ewma") else "-",
                      *(_bandwidth(traffic.get(name, {})) for name in ("demand", "stage", "drain")),
                      "\n".join(view.get("buckets", [])))
    return table


def buckets_table(buckets: list[dict]) -> Table:
    table = Table(_name_column("bucket"), "mode", "cold store", "backlog", "recovery point", "hit ratio",
                  "resident", "pinned", title="Buckets", title_justify="left")
    for bucket in buckets:
        link = bucket["link"] or {}
        b = bucket["backlog"]
        ratio = bucket.get("hit_ratio")
        table.add_row(bucket["bucket"], link.get("mode", "-"), _styled(bucket.get("endpoint_state")),
                      f"{b['objects']} / {human_bytes(b['bytes'])}", human_age(b["oldest_age_seconds"]),
                      "-" if ratio is None else f"{ratio * 100:.1f}%",
                      human_bytes(bucket.get("resident_bytes")), human_bytes(bucket["pinned_bytes"]))
    return table


def _name_column(header: str) -> Column:
    # Names are what an operator copies into the next command: fold them in a narrow terminal, never cut them.
    return Column(header, overflow="fold")


def _styled(state: str | None) -> str:
    if not state:
        return "-"
    style = _STATE_STYLES.get(state)
    return f"[{style}]{state}[/]" if style else state


def _state_cell(view: dict, now: float) -> str:
    cell = _styled(view["state"])
    breaker = view.get("breaker") or {}
    if breaker.get("state", "closed") != "closed":
        since = f" {human_age(now - breaker['opened_at'])}" if breaker.get("opened_at") else ""
        cell += f"\nbreaker {breaker['state']}{since}"
        if breaker.get("retry_after"):
            cell += f", probe in {human_age(breaker['retry_after'])}"
    if view.get("consecutive_failures"):
        cell += f"\n{view['consecutive_failures']} failures"
    if view.get("last_error") and view["state"] != "healthy":
        cell += f"\nlast: {view['last_error']}"
    return cell


def _bandwidth(stats: dict) -> str:
    bytes_in, bytes_out = stats.get("bytes_in_per_second") or 0, stats.get("bytes_out_per_second") or 0
    if not bytes_in and not bytes_out and not stats.get("active"):
        return "-"
    return f"{human_bytes(bytes_in)}/s / {human_bytes(bytes_out)}/s"


# atoll drain pause|resume -----------------------------------------------------------------------------------
def _set_drain_paused(config: Config, paused: bool) -> dict:
    async def run(ns):
        from atoll.admin import status

        async with audited(ns.meta, "drain.pause" if paused else "drain.resume", "drain"):
            await ns.meta.set_flag("drain_paused", int(paused))
        return await status.drain_status(ns.tier)

    return _with_store(config, run)


@drain_app.command("pause")
def drain_pause(config_file: Optional[str] = ConfigOpt, data_dir: Optional[str] = DataDirOpt) -> None:
    """Stop uploading journaled writes to cold stores (writes are still accepted and journaled)."""
    config = _config(config_file, data_dir=data_dir)
    backlog = _set_drain_paused(config, True)["backlog"]
    console.print(f"drain paused; backlog {backlog['objects']} objects, {human_bytes(backlog['bytes'])} "
                  "(a running server stops starting new uploads within a second)", highlight=False)


@drain_app.command("resume")
def drain_resume(config_file: Optional[str] = ConfigOpt, data_dir: Optional[str] = DataDirOpt) -> None:
    """Resume uploading journaled writes to cold stores."""
    config = _config(config_file, data_dir=data_dir)
    backlog = _set_drain_paused(config, False)["backlog"]
    console.print(f"drain resumed; backlog {backlog['objects']} objects, {human_bytes(backlog['bytes'])}",
                  highlight=False)


# atoll bucket show ------------------------------------------------------------------------------------------
async def bucket_tiering(ns, name: str) -> dict:
    from atoll.admin import status

    return await status.bucket_status(ns.tier, name)


def print_bucket_tiering(tiering: dict) -> None:
    link = tiering.get("link")
    if link is None:
        console.print("link:    none (a local bucket)", highlight=False)
        return
    plain = ", ".join(f"{k}={v}" for k, v in sorted(link["options"].items())) or "none"
    secret = ", ".join(link.get("secret_options", [])) or "none"
    backlog = tiering["backlog"]
    lines = [f"link:    {link['url']} ({link['mode']}, revalidate {link['revalidate']})",
             f"options: {plain}",
             f"secret options (values kept in the 0600 secret file): {secret}",
             f"backlog: {backlog['objects']} objects, {human_bytes(backlog['bytes'])}, recovery point "
             f"{human_age(backlog['oldest_age_seconds'])}",
             f"warm:    {human_bytes(tiering['resident_bytes'])} resident",
             f"pinned:  {human_bytes(tiering['pinned_bytes'])}"]
    groups = tiering.get("groups") or []
    lines.append("groups:  " + ("; ".join(f"{g['prefix'] or '(whole bucket)'} (markers {', '.join(g['markers'])})"
                                          for g in groups) or "none"))
    console.print("\n".join(lines), highlight=False)
