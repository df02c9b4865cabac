"""The config schema (atoll.config.SETTINGS), the reference generated from it and ``atoll config show``.

The committed docs/configuration.md must equal what ``atoll config reference`` prints (``make docs`` rewrites it),
so it cannot go stale; every Config field is in the schema with a description; the schema's TOML keys,
environment variables and flags are the ones ``load`` and ``atoll serve`` accept; ``atoll config show`` names the
source of each value and masks secrets.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import typer.main

from atoll.cli.main import app, serve
from atoll.config import SETTINGS, Config, load, setting_names
from atoll.configdoc import reference_markdown

ROOT = Path(__file__).resolve().parents[2]
ATOLL = str(Path(sys.executable).parent / "atoll")


def test_the_committed_reference_is_the_generated_one():
    committed = (ROOT / "docs" / "configuration.md").read_text()
    assert committed == reference_markdown(), "docs/configuration.md is stale: run `make docs`"
    printed = subprocess.run([ATOLL, "config", "reference"], capture_output=True, text=True, timeout=60, check=True)
    assert printed.stdout == committed


def test_every_config_field_is_in_the_schema_once_with_what_an_operator_needs():
    names = [s.name for s in SETTINGS]
    assert len(names) == len(set(names))
    assert sorted(names) == sorted(setting_names())
    envs = [s.env for s in SETTINGS]
    keys = [s.key for s in SETTINGS]
    assert len(envs) == len(set(envs)) and len(keys) == len(set(keys))
    defaults = Config()
    text = reference_markdown()
    for s in SETTINGS:
        assert s.description.strip(), s.name
        assert s.env == f"ATOLL_{s.name.upper()}", s.name
        assert s.default == getattr(defaults, s.name), s.name
        assert s.kind in (str, int, float, tuple), s.name
        assert isinstance(s.default, s.kind), s.name
        if s.kind in (int, float) and s.name not in ("workers",):
            assert s.unit, f"{s.name}: a number needs its unit"
        assert f"`{s.key}`" in text and f"`{s.env}`" in text, s.name


def test_the_schema_is_what_load_reads(tmp_path):
    # Each setting through its TOML key, then through its environment variable: the value arrives.
    def sample(s):
        if s.kind is tuple:
            return ("a.example", "b.example")
        if s.kind is str:
            return {"s3_address": "127.0.0.1:9100", "blob_listen": "off", "admin_address": "off",
                    "region": "eu-test-1", "metadata": str(tmp_path / "m.sqlite3"), "log_level": "debug",
                    "log_format": "text", "writethrough_on_partition": "writeback", "node": "node-a",
                    "data_dir": str(tmp_path / "d"), "access_log": "off", "event_log": "-"}[s.name]
        if s.name in ("high_watermark",):
            return 0.95
        if s.name in ("low_watermark", "compaction_threshold"):
            return 0.5
        if s.name in ("dashboard_history", "node_timeout", "breaker_max_cooldown"):
            return s.kind(60)
        return s.kind(65536 if s.unit == "bytes" else 3)

    lines, tables = [], {}
    for s in SETTINGS:
        value = sample(s)
        literal = json.dumps(list(value) if isinstance(value, tuple) else value)
        if len(s.file_path) == 1:
            lines.append(f"{s.key} = {literal}")
        else:
            tables.setdefault(s.file_path[0], []).append(f"{s.file_path[1]} = {literal}")
    for table, entries in tables.items():
        lines += [f"[{table}]", *entries]
    path = tmp_path / "all.toml"
    path.write_text("\n".join(lines) + "\n")
    tomllib.loads(path.read_text())
    from_file = load(str(path), {}, {})
    env = {s.env: ",".join(sample(s)) if s.kind is tuple else str(sample(s)) for s in SETTINGS}
    from_env = load(None, {}, env)
    for s in SETTINGS:
        assert getattr(from_file, s.name) == sample(s), s.name
        assert getattr(from_env, s.name) == sample(s), s.name


def test_schema_flags_are_options_of_atoll_serve():
    command = typer.main.get_command(app).commands[serve.__name__]
    options = {opt for param in command.params if param.param_type_name == "option" for opt in param.opts}
    flagged = [s for s in SETTINGS if s.flag]
    assert {"--data-dir", "--s3-address", "--node", "--metadata"} <= {s.flag for s in flagged}
    for s in flagged:
        assert s.flag in options, f"{s.name}: atoll serve has no {s.flag}"


def test_config_show_names_sources_and_masks_secrets(tmp_path):
    path = tmp_path / "atoll.toml"
    path.write_text('workers = 2\n[tiering]\nhigh_watermark = 0.95\n'
                    '[cold]\nAWS_SECRET_ACCESS_KEY = "do-not-print-me"\naws_region = "eu-west-1"\n'
                    'azure_storage_sas_token = "sv=2022&sig=also-secret"\n')
    env = {"PATH": "/usr/bin:/bin", "ATOLL_REGION": "eu-env-1",
           "ATOLL_METADATA": "postgresql://atoll:pg-password@db1/atoll"}
    shown = subprocess.run([ATOLL, "config", "show", "--config", str(path), "--data-dir", str(tmp_path / "d"),
                            "--json"], capture_output=True, text=True, timeout=60, env=env)
    assert shown.returncode == 0, shown.stderr
    rows = {row["setting"]: row for row in json.loads(shown.stdout)}
    assert rows["workers"] == {"setting": "workers", "value": 2, "source": f"file {path}"}
    assert rows["tiering.high_watermark"]["value"] == 0.95
    assert rows["region"] == {"setting": "region", "value": "eu-env-1", "source": "env ATOLL_REGION"}
    assert rows["data_dir"]["source"] == "flag --data-dir"
    assert rows["timeouts.keep_alive"] == {"setting": "timeouts.keep_alive", "value": 60.0, "source": "default"}
    assert rows["metadata"]["value"] == "postgresql://atoll:***@db1/atoll"
    assert rows["cold.aws_region"]["value"] == "eu-west-1"
    assert rows["cold.AWS_SECRET_ACCESS_KEY"]["value"] == "***"
    assert rows["cold.azure_storage_sas_token"]["value"] == "***"
    assert len([r for r in rows if not r.startswith("cold.")]) == len(SETTINGS)
    table = subprocess.run([ATOLL, "config", "show", "--config", str(path)], capture_output=True, text=True,
                           timeout=60, env={**env, "COLUMNS": "200"})
    assert table.returncode == 0, table.stderr
    for secret in ("do-not-print-me", "also-secret", "pg-password"):
        assert secret not in shown.stdout + shown.stderr + table.stdout + table.stderr
    assert "env ATOLL_REGION" in table.stdout
    # A bad file is a clear error naming the problem, not a traceback.
    path.write_text("workers = 'many'\n")
    bad = subprocess.run([ATOLL, "config", "show", "--config", str(path)], capture_output=True, text=True,
                         timeout=60, env=env)
    assert bad.returncode != 0 and "workers" in bad.stderr and "Traceback" not in bad.stderr
