"""``atoll config reference|show``: the configuration reference generated from the schema (docs/configuration.md)
and the effective configuration with the source of every value (atoll.configdoc)."""

from __future__ import annotations

import json
import os
import sys
from typing import Optional

import typer
from rich.table import Table

from atoll.cli.main import ConfigOpt, DataDirOpt, _config, console
from atoll.configdoc import effective, reference_markdown, toml_value

app = typer.Typer(no_args_is_help=True, help="The configuration: its reference, and the values in effect.")


@app.command("reference")
def reference() -> None:
    """Print the configuration reference as Markdown (`make docs` writes it to docs/configuration.md)."""
    sys.stdout.write(reference_markdown())


@app.command("show")
def show(
    config_file: Optional[str] = ConfigOpt,
    data_dir: Optional[str] = DataDirOpt,
    as_json: bool = typer.Option(False, "--json", help="One JSON list of {setting, value, source}."),
) -> None:
    """Print the configuration `atoll serve` would load here, and where each value came from (secrets masked)."""
    config = _config(config_file, data_dir=data_dir)
    rows = effective(config, config_file, os.environ, {"data_dir": data_dir})
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=1) + "\n")
        return
    table = Table("setting", "value", "source", box=None, pad_edge=False)
    for row in rows:
        table.add_row(row["setting"], toml_value(row["value"]), row["source"])
    console.print(table, markup=False, highlight=False)
