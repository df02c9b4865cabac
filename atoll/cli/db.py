"""``atoll db upgrade|status``: the metadata schema version, and its migrations (atoll.stores.meta.migrations).

A PostgreSQL node refuses to start on a schema other than its own; ``atoll db upgrade`` (run once, from any host,
before the new version's nodes start) brings the database there. A SQLite store upgrades itself when a server
opens it; ``atoll db upgrade`` does the same without starting one. Both are idempotent and safe to run at once.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from typing import Any, Optional

import typer

from atoll.cli.main import ConfigOpt, DataDirOpt, _config, _fail, console
from atoll.stores.meta import migrations
from atoll.stores.meta.dsn import is_postgres, redact

app = typer.Typer(no_args_is_help=True, help="Metadata schema: version and migrations (`atoll db upgrade`).")

MetadataOpt = typer.Option(None, "--metadata", help="Metadata store: postgresql://user@host/db or a SQLite path "
                           "(default <data-dir>/meta.sqlite3; ATOLL_METADATA).")


def _location(config_file: Optional[str], metadata: Optional[str], data_dir: Optional[str]) -> tuple[str, str]:
    """(engine, location): ("postgres", url) or ("sqlite", path)."""
    config = _config(config_file, data_dir=data_dir, metadata=metadata)
    if is_postgres(config.metadata):
        return "postgres", config.metadata
    return "sqlite", config.metadata_path


def _connect_postgres(url: str):
    import psycopg

    try:
        return psycopg.connect(url, connect_timeout=10)
    except psycopg.Error as exc:
        # libpq's message names host, port and user, never the password; the URL is shown redacted.
        _fail(f"cannot connect to {redact(url)}: {_first_line(exc)}")


def _connect_sqlite(path: str, create: bool) -> sqlite3.Connection:
    try:
        if create:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            conn = sqlite3.connect(path, isolation_level=None, timeout=30.0)
            conn.execute("PRAGMA busy_timeout = 30000")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA journal_mode = WAL")  # as the server opens it
            return conn
        return sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None, timeout=30.0)
    except (sqlite3.Error, OSError) as exc:
        _fail(f"cannot open {path}: {exc}")


def _open(engine: str, location: str, *, create: bool):
    """A connection to the store; None for a SQLite file that does not exist and is not to be created."""
    if engine == "postgres":
        return _connect_postgres(location)
    if create or os.path.exists(location):
        return _connect_sqlite(location, create)
    return None


def _say(line: str) -> None:
    console.print(line, markup=False, highlight=False, soft_wrap=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _pending(current: int, engine: str) -> list[dict[str, Any]]:
    return [{"version": s.version, "description": s.description} for s in migrations.pending_steps(current, engine)]


@app.command("upgrade")
def db_upgrade(
    metadata: Optional[str] = MetadataOpt,
    config_file: Optional[str] = ConfigOpt,
    data_dir: Optional[str] = DataDirOpt,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object: from, to, metadata."),
) -> None:
    """Apply the pending schema migrations (none: nothing happens). Back the database up first (pg_dump, or
    SQLite's .backup): steps are additive, but a migration cannot be undone."""
    engine, location = _location(config_file, metadata, data_dir)
    conn = _open(engine, location, create=True)
    upgrade = migrations.upgrade_postgres if engine == "postgres" else migrations.upgrade_sqlite
    try:
        before, after = upgrade(conn)
    except migrations.SchemaMismatch as exc:
        _fail(str(exc))
    except Exception as exc:  # noqa: BLE001 - a database error: one line, no traceback, no secret
        _fail(f"upgrade of {redact(location)} failed: {_first_line(exc)}")
    finally:
        conn.close()
    if as_json:
        sys.stdout.write(json.dumps({"metadata": redact(location), "engine": engine, "from": before, "to": after})
                         + "\n")
    elif before == after:
        _say(f"{redact(location)}: schema {after}, up to date")
    else:
        _say(f"{redact(location)}: schema {before} → {after}")


@app.command("status")
def db_status(
    metadata: Optional[str] = MetadataOpt,
    config_file: Optional[str] = ConfigOpt,
    data_dir: Optional[str] = DataDirOpt,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """The schema version of the metadata store, the version this Atoll needs, and the steps still to apply."""
    engine, location = _location(config_file, metadata, data_dir)
    # No file yet (None): the first server, or `atoll db upgrade`, creates it at the latest version.
    conn = _open(engine, location, create=False)
    try:
        current = migrations.current_version(conn) if conn is not None else 0
    except Exception as exc:  # noqa: BLE001 - a database error: one line, no traceback, no secret
        _fail(f"cannot read the schema version of {redact(location)}: {_first_line(exc)}")
    finally:
        if conn is not None:
            conn.close()
    pending = _pending(current, engine)
    state = ("no store yet: the first server or `atoll db upgrade` creates it" if conn is None else
             "newer than this Atoll" if current > migrations.LATEST else "up to date" if not pending
             else "upgrade needed: run `atoll db upgrade`")
    if as_json:
        sys.stdout.write(json.dumps({"metadata": redact(location), "engine": engine, "current": current,
                                     "latest": migrations.LATEST, "state": state, "pending": pending}) + "\n")
        return
    _say(f"metadata: {redact(location)} ({'PostgreSQL' if engine == 'postgres' else 'SQLite'})")
    _say(f"schema:   {current} (this Atoll: {migrations.LATEST}): {state}")
    for step in pending:
        _say(f"  pending {step['version']}: {step['description']}")
