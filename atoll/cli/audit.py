"""``atoll audit``: the audit log of operator actions taken through the admin API (and the dashboard), newest
first. Entries live in the metadata store (atoll.stores.meta.sql_audit), so this works with or without a server,
and on a cluster shows every node's entries.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Optional

import typer
from rich.table import Column, Table

from atoll.cli.main import ConfigOpt, DataDirOpt, _config, _fail, _with_store, app, console


def _detail_text(detail: dict) -> str:
    return " ".join(f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in sorted(detail.items()))


@app.command("audit")
def audit_command(
    limit: int = typer.Option(50, "--limit", "-n", help="Show this many entries (1 to 1000)."),
    before: Optional[int] = typer.Option(None, "--before", help="Only entries older than the one of this id "
                                         "(to page back)."),
    as_json: bool = typer.Option(False, "--json", help="Print the entries as one JSON array, as GET /api/v1/audit "
                                 "lists them."),
    config_file: Optional[str] = ConfigOpt,
    data_dir: Optional[str] = DataDirOpt,
) -> None:
    """Who did what through the admin API, when, on which node, and whether it was done ("ok") or refused (the
    error code)."""
    from atoll.stores.meta.sql_audit import MAX_AUDIT_PAGE

    if not 1 <= limit <= MAX_AUDIT_PAGE:
        _fail(f"--limit takes a number from 1 to {MAX_AUDIT_PAGE}")
    if before is not None and before < 1:
        _fail("--before takes an entry id (a positive integer)")
    config = _config(config_file, data_dir=data_dir)
    entries = _with_store(config, lambda ns: ns.meta.list_audit(limit, before))
    if as_json:
        sys.stdout.write(json.dumps([e.view() for e in entries]) + "\n")
        return
    if not entries:
        console.print("no audit entries")
        return
    table = Table(Column("id", no_wrap=True), Column("time", no_wrap=True), Column("actor", no_wrap=True),
                  Column("action", no_wrap=True),
                  "target", Column("outcome", no_wrap=True), "node", Column("detail", overflow="fold"))
    for entry in entries:
        table.add_row(str(entry.id), time.strftime("%m-%d %H:%M:%S", time.localtime(entry.time)), entry.actor,
                      entry.action, entry.target or "-", entry.outcome, entry.node, _detail_text(entry.detail) or "-")
    console.print(table)
