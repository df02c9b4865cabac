"""The ``atoll`` command: serve, keys, buckets, version.

Administrative commands work directly on the data directory's metadata store, so they run with or without a
server (SQLite serialises writers across processes). Every failure prints one clear line and exits non-zero.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from atoll import __version__
from atoll.config import Config, ConfigError, load

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Atoll: a warm object tier for GPU clusters.")
key_app = typer.Typer(no_args_is_help=True, help="S3 identities (access keys).")
bucket_app = typer.Typer(no_args_is_help=True, help="Buckets.")
app.add_typer(key_app, name="key")
app.add_typer(bucket_app, name="bucket")

console = Console()
err = Console(stderr=True)

ConfigOpt = typer.Option(None, "--config", "-c", help="TOML config file (also ATOLL_CONFIG).")
DataDirOpt = typer.Option(None, "--data-dir", help="Data directory (default ./atoll-data; ATOLL_DATA_DIR).")


def _fail(message: str, code: int = 1) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def _config(config_file: Optional[str], **flags: Any) -> Config:
    try:
        return load(config_file, flags)
    except ConfigError as exc:
        err.print("[bold red]error:[/] invalid configuration:", highlight=False)
        for problem in exc.problems:
            err.print(f"  - {problem}", highlight=False)
        raise typer.Exit(2)


def _with_store(config: Config, fn):
    """Run ``fn(namespace)`` against the metadata store of ``config``'s data directory."""
    from atoll.server.stores import StartupError, build_namespace, open_stores

    try:
        meta, data = open_stores(config)
    except StartupError as exc:
        _fail(str(exc))
    try:
        return asyncio.run(fn(build_namespace(config, meta, data)))
    finally:
        meta.close_sync()


@app.command()
def serve(
    config_file: Optional[str] = ConfigOpt,
    data_dir: Optional[str] = DataDirOpt,
    s3_address: Optional[str] = typer.Option(None, "--s3-address", help="HOST:PORT for S3 (default 127.0.0.1:9000)."),
    s3_domain: Optional[list[str]] = typer.Option(None, "--s3-domain", help="Domain for virtual-hosted style."),
    blob_address: Optional[str] = typer.Option(None, "--blob-address", help='HOST:PORT for Azure Blob (default '
                                               '127.0.0.1:10000), "off" for none.'),
    blob_domain: Optional[list[str]] = typer.Option(None, "--blob-domain", help="Domain for host style "
                                                    "(ACCOUNT.DOMAIN)."),
    region: Optional[str] = typer.Option(None, "--region", help="Region reported to clients (default us-east-1)."),
    workers: Optional[int] = typer.Option(None, "--workers", "-w", help="Serving processes sharing the port."),
    access_log: Optional[str] = typer.Option(None, "--access-log", help='Access log path, "-" for stderr, "off".'),
    log_level: Optional[str] = typer.Option(None, "--log-level", help="debug, info, warning or error."),
    packed_max_size: Optional[int] = typer.Option(None, "--packed-max-size", help="Pack single-PUT objects up to "
                                                  "this many bytes into segment files (default 262144); 0: one "
                                                  "file per object."),
    node: Optional[str] = typer.Option(None, "--node", help="This node's name in a cluster sharing the metadata "
                                       "and data directory (default HOSTNAME-S3PORT)."),
    metadata: Optional[str] = typer.Option(None, "--metadata", help="Metadata store: postgresql://USER@HOST/DB "
                                           "for a cluster, or a SQLite path (default DATA_DIR/meta.sqlite3)."),
) -> None:
    """Run the Atoll server."""
    config = _config(config_file, data_dir=data_dir, s3_address=s3_address, s3_domains=s3_domain or None,
                     blob_listen=blob_address, blob_domains=blob_domain or None,
                     region=region, workers=workers, access_log=access_log, log_level=log_level,
                     packed_max_size=packed_max_size, node=node, metadata=metadata)
    from atoll.admin.multiproc import prepare_metrics_dir

    # Before anything imports prometheus_client (lifecycle does): it picks per-process files at import time.
    prepare_metrics_dir(config.data_dir, config.node_name)
    from atoll.server.lifecycle import StartupError, ensure_malloc_env, serve as run

    ensure_malloc_env()
    from atoll.server.logsetup import configure as configure_logging

    try:
        configure_logging(config)  # the event log; the workers forked later inherit it
    except OSError as exc:
        _fail(f"cannot open the event log {config.event_log}: {exc.strerror}")
    try:
        run(config)
    except StartupError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        pass


@app.command()
def version() -> None:
    """Print the Atoll version."""
    console.print(f"atoll {__version__}")


# keys ----------------------------------------------------------------------------------------------------
@key_app.command("create")
def key_create(
    name: str = typer.Option(..., "--name", help="Display name of the new identity."),
    account: Optional[str] = typer.Option(None, "--account", help="Also an Azure Blob account of this name (3-24 "
                                          "lower-case letters and digits), with a new base64 key."),
    tenant: Optional[str] = typer.Option(None, "--tenant", help="The tenant it joins (default: a new tenant of its "
                                         "own, named after the access key)."),
    role: str = typer.Option("admin", "--role", help="read, write (read + write objects) or admin (write + create, "
                             "delete and configure buckets)."),
    scope: list[str] = typer.Option([], "--scope", help="BUCKET or BUCKET/PREFIX it is limited to (repeatable; "
                                    "default: every bucket of its tenant)."),
    as_json: bool = typer.Option(False, "--json", help="Print the identity as one JSON object."),
    config_file: Optional[str] = ConfigOpt,
    data_dir: Optional[str] = DataDirOpt,
) -> None:
    """Create an identity with a new access key and secret (and, with --account, a Blob account and key)."""
    if not name.strip() or len(name) > 128:
        _fail("--name must be 1 to 128 characters")
    if role not in ("read", "write", "admin"):
        _fail(f"--role must be read, write or admin, not {role!r}")
    config = _config(config_file, data_dir=data_dir)

    async def create(ns):
        from atoll.errors import InvalidArgument, InvalidBucketName, NoSuchTenant

        from atoll.cli.auditing import audited

        try:
            async with audited(ns.meta, "key.create", tenant or "", {"name": name, "role": role, "scopes": scope,
                                                                    "account": account}):
                return await ns.create_identity(name, account_name=account or "", tenant=tenant, role=role,
                                                scopes=scope)
        except NoSuchTenant:
            return f"--tenant: no tenant named {tenant} (create it with: atoll tenant create {tenant})"
        except InvalidBucketName:
            return f"--scope: {', '.join(scope)}: a scope is BUCKET or BUCKET/PREFIX with a valid bucket name"
        except InvalidArgument as exc:
            return exc.message

    identity = _with_store(config, create)
    if isinstance(identity, str):
        _fail(identity)
    record = {"access_key_id": identity.access_key, "secret_access_key": identity.secret_key,
              "owner_id": identity.owner_id, "display_name": identity.display_name, "tenant": identity.tenant,
              "role": identity.role, "scopes": list(identity.scopes)}
    if identity.account_name:
        record.update(account_name=identity.account_name, account_key=identity.account_key)
    if as_json:
        sys.stdout.write(json.dumps(record) + "\n")
        return
    console.print(f"access key id:     {identity.access_key}\nsecret access key: {identity.secret_key}\n"
                  f"owner id:          {identity.owner_id}\ndisplay name:      {identity.display_name}\n"
                  f"tenant:            {identity.tenant}\nrole:              {identity.role}"
                  + (f"\nscopes:            {', '.join(identity.scopes)}" if identity.scopes else ""),
                  highlight=False)
    if identity.account_name:
        console.print(f"account name:      {identity.account_name}\naccount key:       {identity.account_key}",
                      highlight=False)


@key_app.command("list")
def key_list(as_json: bool = typer.Option(False, "--json"), config_file: Optional[str] = ConfigOpt,
             data_dir: Optional[str] = DataDirOpt) -> None:
    """List identities (secrets are never shown)."""
    config = _config(config_file, data_dir=data_dir)
    identities = _with_store(config, lambda ns: ns.meta.list_identities())
    if as_json:
        sys.stdout.write(json.dumps([{"access_key_id": i.access_key, "owner_id": i.owner_id,
                                      "display_name": i.display_name, "root": i.is_root,
                                      "account_name": i.account_name, "tenant": i.tenant, "role": i.role,
                                      "scopes": list(i.scopes)} for i in identities]) + "\n")
        return
    table = Table("access key id", "display name", "owner id", "root", "tenant", "role", "scopes")
    for i in identities:
        table.add_row(i.access_key, i.display_name, i.owner_id[:16] + "…", "yes" if i.is_root else "", i.tenant,
                      i.role, ", ".join(i.scopes))
    console.print(table)


@key_app.command("delete")
def key_delete(access_key: str, config_file: Optional[str] = ConfigOpt, data_dir: Optional[str] = DataDirOpt) -> None:
    """Delete an identity. Its buckets stay; the root identity cannot be deleted."""
    config = _config(config_file, data_dir=data_dir)

    async def run(ns):
        found = await ns.meta.get_identity(access_key)
        if found is None:
            return "missing"
        if found.is_root:
            return "root"
        from atoll.cli.auditing import audited

        async with audited(ns.meta, "key.delete", access_key):
            await ns.meta.delete_identity(access_key)
        return "ok"

    outcome = _with_store(config, run)
    if outcome == "missing":
        _fail(f"no identity with access key {access_key}")
    if outcome == "root":
        _fail("the root identity cannot be deleted (set ATOLL_ROOT_ACCESS_KEY/SECRET_KEY to rotate it)")
    console.print(f"deleted {access_key}")


# buckets -------------------------------------------------------------------------------------------------
def _identity_for(ns, owner: Optional[str]):
    async def pick():
        identities = await ns.meta.list_identities()
        if owner is None:
            roots = [i for i in identities if i.is_root]
            return roots[0] if roots else None
        return next((i for i in identities if owner in (i.access_key, i.display_name)), None)
    return pick()


@bucket_app.command("create")
def bucket_create(name: str, owner: Optional[str] = typer.Option(None, "--owner", help="Access key or display name "
                                                                  "of the owner (default root)."),
                  tenant: Optional[str] = typer.Option(None, "--tenant", help="The tenant it belongs to (default: "
                                                       "the owner's)."),
                  config_file: Optional[str] = ConfigOpt, data_dir: Optional[str] = DataDirOpt) -> None:
    """Create a bucket."""
    from atoll import errors

    config = _config(config_file, data_dir=data_dir)

    async def run(ns):
        identity = await _identity_for(ns, owner)
        if identity is None:
            return "no such owner (start the server once to create the root identity)"
        try:
            await ns.create_bucket(identity, name, tenant=tenant)
        except errors.NoSuchTenant:
            return f"no tenant named {tenant}"
        except errors.AtollError as exc:
            return exc.message
        return None

    problem = _with_store(config, run)
    if problem:
        _fail(problem)
    console.print(f"created bucket {name}")


@bucket_app.command("list")
def bucket_list(as_json: bool = typer.Option(False, "--json"), config_file: Optional[str] = ConfigOpt,
                data_dir: Optional[str] = DataDirOpt) -> None:
    """List all buckets with their owners."""
    config = _config(config_file, data_dir=data_dir)

    async def run(ns):
        owners = {i.owner_id: i.display_name for i in await ns.meta.list_identities()}
        return [(b, owners.get(b.owner_id, b.owner_id[:16])) for b in await ns.meta.list_buckets()]

    rows = _with_store(config, run)
    if as_json:
        sys.stdout.write(json.dumps([{"name": b.name, "owner": o, "created": b.created} for b, o in rows]) + "\n")
        return
    table = Table("bucket", "owner", "region")
    for bucket, owner_name in rows:
        table.add_row(bucket.name, owner_name, bucket.region)
    console.print(table)


@bucket_app.command("show")
def bucket_show(name: str, config_file: Optional[str] = ConfigOpt, data_dir: Optional[str] = DataDirOpt) -> None:
    """Show a bucket: owner, objects, bytes; its cold-store link, checkpoint groups and drain backlog."""
    from atoll.cli.status import bucket_tiering, print_bucket_tiering

    config = _config(config_file, data_dir=data_dir)

    async def run(ns):
        bucket = await ns.meta.get_bucket(name)
        if bucket is None:
            return None
        objects, size = await ns.meta.count_objects(name)
        owners = {i.owner_id: i.display_name for i in await ns.meta.list_identities()}
        return bucket, owners.get(bucket.owner_id, bucket.owner_id), objects, size, await bucket_tiering(ns, name)

    found = _with_store(config, run)
    if found is None:
        _fail(f"no bucket named {name}")
    bucket, owner_name, objects, size, tiering = found
    console.print(f"bucket:  {bucket.name}\nowner:   {owner_name}\nregion:  {bucket.region}\n"
                  f"objects: {objects}\nbytes:   {size}", highlight=False)
    print_bucket_tiering(tiering)


@bucket_app.command("delete")
def bucket_delete(name: str, config_file: Optional[str] = ConfigOpt, data_dir: Optional[str] = DataDirOpt) -> None:
    """Delete an empty bucket."""
    from atoll import errors

    config = _config(config_file, data_dir=data_dir)

    async def run(ns):
        try:
            await ns.meta.delete_bucket(name)
        except errors.AtollError as exc:
            return exc.message
        return None

    problem = _with_store(config, run)
    if problem:
        _fail(problem)
    console.print(f"deleted bucket {name}")


@bucket_app.command("link")
def bucket_link(
    name: str,
    cold_url: str = typer.Argument(..., help="az://container[/prefix], s3://bucket[/prefix], gs://bucket[/prefix], "
                                             "file:///path or https://... (read-only)"),
    mode: str = typer.Option(..., "--mode", help="cache (read-only mirror), writeback or writethrough"),
    revalidate: str = typer.Option("never", "--revalidate", help="never | always | ttl=SECONDS"),
    option: list[str] = typer.Option([], "--option", "-o", help="KEY=VALUE obstore setting for this link "
                                     "(repeatable); secret ones are kept in the data directory's 0600 secret file"),
    check: bool = typer.Option(True, "--check/--no-check", help="List the cold store once to verify the link"),
    config_file: Optional[str] = ConfigOpt, data_dir: Optional[str] = DataDirOpt,
) -> None:
    """Link a bucket to a cold store."""
    from atoll import errors
    from atoll.core.tiering import admin

    config = _config(config_file, data_dir=data_dir)

    async def run(ns):
        from atoll.cli.auditing import audited
        from atoll.server.logsetup import redact

        # Options by name only: their values may be keys, SAS tokens or passwords.
        detail = {"url": redact(cold_url), "mode": mode, "revalidate": revalidate, "check": check,
                  "options": sorted(o.split("=", 1)[0] for o in option)}
        try:
            async with audited(ns.meta, "link.set", name, detail):
                link = await admin.link_bucket(ns.tier, name, cold_url, mode, revalidate=revalidate,
                                               options=admin.parse_options(option), check=check)
        except errors.AtollError as exc:
            return None, exc.message
        return link, None

    link, problem = _with_store(config, run)
    if problem:
        _fail(problem)
    console.print(f"linked bucket {name} to {link.url} ({link.mode}, revalidate {link.revalidate})",
                  highlight=False)


@bucket_app.command("unlink")
def bucket_unlink(name: str, config_file: Optional[str] = ConfigOpt, data_dir: Optional[str] = DataDirOpt) -> None:
    """Remove a bucket's cold-store link (refused while writes wait to drain)."""
    from atoll import errors
    from atoll.core.tiering import admin

    config = _config(config_file, data_dir=data_dir)

    async def run(ns):
        from atoll.cli.auditing import audited

        try:
            async with audited(ns.meta, "link.remove", name):
                return await admin.unlink_bucket(ns.tier, name), None
        except errors.AtollError as exc:
            return False, exc.message

    removed, problem = _with_store(config, run)
    if problem:
        _fail(problem)
    if not removed:
        _fail(f"bucket {name} is not linked")
    console.print(f"unlinked bucket {name}")


@bucket_app.command("group")
def bucket_group(
    name: str, prefix: str,
    marker: list[str] = typer.Option([], "--marker", help="File name written last by the trainer (repeatable; "
                                     "default .metadata, _SUCCESS, _COMMITTED)"),
    config_file: Optional[str] = ConfigOpt, data_dir: Optional[str] = DataDirOpt,
) -> None:
    """Declare a checkpoint group: under PREFIX, a marker file reaches the cold store after the rest of its directory."""
    from atoll import errors
    from atoll.core.tiering import admin

    config = _config(config_file, data_dir=data_dir)

    async def run(ns):
        from atoll.cli.auditing import audited

        try:
            async with audited(ns.meta, "group.add", f"{name}/{prefix}", {"prefix": prefix, "markers": marker}):
                return await admin.add_group(ns.tier, name, prefix, marker), None
        except errors.AtollError as exc:
            return None, exc.message

    group, problem = _with_store(config, run)
    if problem:
        _fail(problem)
    console.print(f"checkpoint group {name}/{prefix}: markers {', '.join(group.markers)}", highlight=False)


@bucket_app.command("sync-index")
def bucket_sync_index(
    name: str,
    prefix: str = typer.Option("", "--prefix", help="Only the cold objects under this prefix (default: all; "
                               "only a whole-bucket sync makes listings local)."),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Follow the job with a progress bar until it ends."),
    as_json: bool = typer.Option(False, "--json", help="Print the job (its final state with --wait) as JSON."),
    config_file: Optional[str] = ConfigOpt, data_dir: Optional[str] = DataDirOpt,
) -> None:
    """Import the cold store's listing into the local index (incremental on re-run): then listings of the bucket
    are answered locally, without touching the WAN. A background job run by the server."""
    from atoll import errors
    from atoll.cli.jobs import follow_job, job_record
    from atoll.core.tiering import admin

    config = _config(config_file, data_dir=data_dir)

    async def run(ns):
        try:
            return await admin.create_job(ns.tier, "sync-index", name, {"prefix": prefix}), None
        except errors.AtollError as exc:
            return None, exc.message

    job, problem = _with_store(config, run)
    if problem:
        _fail(problem)
    if not wait:
        if as_json:
            sys.stdout.write(json.dumps(job_record(job, full_spec=False)) + "\n")
        else:
            console.print(f"sync-index job {job.job_id} queued; follow it with: atoll jobs wait {job.job_id}",
                          highlight=False)
        return
    if not as_json:
        console.print(f"sync-index job {job.job_id}: {('prefix ' + repr(prefix)) if prefix else 'the whole bucket'} "
                      f"of {name}", markup=False, highlight=False)
    raise typer.Exit(follow_job(config, job.job_id, as_json))


# Command groups kept in their own modules register themselves on ``app`` when imported (after everything above).
from atoll.cli import status as _status  # noqa: E402,F401 - atoll status, atoll drain
from atoll.cli import jobs as _jobs  # noqa: E402,F401 - atoll stage, atoll jobs
from atoll.cli import fsck as _fsck  # noqa: E402,F401 - atoll fsck
from atoll.cli import tenants as _tenants  # noqa: E402 - atoll tenant
app.add_typer(_tenants.app, name="tenant")
from atoll.cli import qos as _qos  # noqa: E402 - atoll qos
app.add_typer(_qos.app, name="qos")
from atoll.cli import quota as _quota  # noqa: E402 - atoll quota
app.add_typer(_quota.app, name="quota")
from atoll.cli import db as _db  # noqa: E402 - atoll db
app.add_typer(_db.app, name="db")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
from atoll.cli import usage as _usage  # noqa: E402,F401 - atoll usage
from atoll.cli import audit as _audit  # noqa: E402,F401 - atoll audit
from atoll.cli import config as _config_cli  # noqa: E402 - atoll config
app.add_typer(_config_cli.app, name="config")
