"""``atoll stage``, ``atoll jobs`` and ``atoll pin``: create background jobs, list them, follow one with a progress
bar, cancel; pin or unpin what staging made warm.

Jobs are rows in the data directory's metadata store, so these commands work with or without a server; a
running server's primary worker picks queued jobs up. Following a job is polling its row twice a second.
Heavy modules are imported inside the commands (see atoll.cli.status for why).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskProgressColumn, TextColumn
from rich.table import Table

from atoll.cli.auditing import audited
from atoll.cli.main import ConfigOpt, DataDirOpt, _config, _fail, _with_store, app, console, err
from atoll.cli.status import human_age, human_bytes
from atoll.config import Config

jobs_app = typer.Typer(help="Background jobs (staging, index sync): list, show, wait for, cancel.")
app.add_typer(jobs_app, name="jobs")

POLL_SECONDS = 0.5
FINAL_STATES = ("done", "failed", "cancelled")
EXIT_CODES = {"done": 0, "failed": 1, "cancelled": 2}
_PRIORITY_NAMES = {0: "high", 1: "normal", 2: "low"}
_RECENT_SECONDS = 24 * 3600


# formatting -------------------------------------------------------------------------------------------------
def job_record(job, full_spec: bool = False) -> dict:
    """A job as JSON, the same as the admin API shows it: a staging job's key list summarised by its length,
    unless ``full_spec``."""
    from atoll.admin.status import job_view

    record = job_view(job)
    if full_spec and job.spec.get("keys") is not None:
        record["spec"]["keys"] = job.spec["keys"]
    return record


def _percent(progress: dict) -> float | None:
    total = progress.get("objects_total")
    if not total:
        return None
    return 100.0 * progress.get("objects_done", 0) / total


def _detail(job) -> str:
    """One line of numbers: objects and bytes for staging, whatever counters another kind reports."""
    p = job.progress
    if "objects_total" in p:
        if not p["objects_total"] and not p.get("listing_done", True):
            return "listing the cold store"
        parts = [f"{p.get('objects_done', 0)}/{p['objects_total']}{'+' if not p.get('listing_done', True) else ''} "
                 "objects"]
        if p.get("bytes_total") is not None:
            parts.append(f"{human_bytes(p.get('bytes_done', 0))}/{human_bytes(p['bytes_total'])}")
        if p.get("rate_bytes_per_s"):
            parts.append(f"{human_bytes(p['rate_bytes_per_s'])}/s")
        if p.get("eta_seconds") is not None and job.state == "running":
            parts.append(f"ETA {human_age(p['eta_seconds']) if p['eta_seconds'] else '0s'}")
        if p.get("failed"):
            parts.append(f"{p['failed']} failed")
        return ", ".join(parts)
    return ", ".join(f"{k} {v}" for k, v in p.items() if isinstance(v, (int, float)) and not isinstance(v, bool))


def _summary(job) -> str:
    p = job.progress
    if job.kind == "stage" and "objects_total" in p:
        elapsed = max(job.updated - p.get("started", job.updated), 0.0)
        return (f"job {job.job_id} {job.state}: {p.get('objects_staged', 0)} objects staged, "
                f"{p.get('objects_skipped', 0)} already warm, {p.get('failed', 0)} failed, of "
                f"{p.get('objects_total', 0)}; {human_bytes(p.get('bytes_fetched', 0))} fetched in "
                f"{human_age(elapsed) if elapsed else '0s'}; verified {p.get('verified', 0)} by MD5, "
                f"{p.get('verified_by_size', 0)} by size only")
    detail = _detail(job)
    return f"job {job.job_id} {job.state}" + (f": {detail}" if detail else "")


# following a job --------------------------------------------------------------------------------------------
class _BarView:
    """A rich progress bar (on a terminal)."""

    def __init__(self, job_id: str) -> None:
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                 TaskProgressColumn(), TextColumn("{task.fields[detail]}"), console=console)
        self.task = self.progress.add_task(f"job {job_id}", total=None, detail="")

    def __enter__(self) -> "_BarView":
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def note(self, message: str) -> None:
        self.progress.console.print(message, markup=False, highlight=False)

    def update(self, job) -> None:
        p = job.progress
        total = completed = None
        if p.get("bytes_total") and p.get("listing_done", True):
            total, completed = p["bytes_total"], p.get("bytes_done", 0)
        elif p.get("objects_total") and p.get("listing_done", True):
            total, completed = p["objects_total"], p.get("objects_done", 0)
        phase = p.get("phase") or job.state
        self.progress.update(self.task, total=total, completed=completed or 0, detail=_detail(job),
                             description=escape(f"{job.kind} {job.job_id} [{phase}]"))


class _LineView:
    """Plain lines (not a terminal, or --json: then on stderr), at most one a second and only on change."""

    def __init__(self, job_id: str, json_output: bool) -> None:
        self.out = err if json_output else console
        self.last = ""
        self.last_time = 0.0

    def __enter__(self) -> "_LineView":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def note(self, message: str) -> None:
        self.out.print(message, markup=False, highlight=False, soft_wrap=True)

    def update(self, job) -> None:
        line = _detail(job)
        now = time.monotonic()
        if line and line != self.last and (now - self.last_time >= 1.0 or job.state in FINAL_STATES):
            phase = job.progress.get("phase") or job.state
            self.out.print(f"{job.kind} {job.job_id} [{phase}]: {line}", markup=False, highlight=False,
                           soft_wrap=True)
            self.last, self.last_time = line, now


async def _follow(meta, job_id: str, json_output: bool) -> int:
    job = await meta.get_job(job_id)
    if job is None:
        err.print(f"[bold red]error:[/] no job {job_id}", highlight=False)
        return 1
    view = _BarView(job_id) if console.is_terminal and not json_output else _LineView(job_id, json_output)
    first_seen = time.monotonic()
    said_queued = False
    with view:
        while True:
            job = await meta.get_job(job_id)
            if job is None:
                view.note(f"job {job_id} disappeared")
                return 1
            if job.state == "queued" and not said_queued and time.monotonic() - first_seen >= 1.0:
                view.note("queued; waiting for a running atoll server to pick it up")
                said_queued = True
            view.update(job)
            if job.state in FINAL_STATES:
                break
            await asyncio.sleep(POLL_SECONDS)
    if json_output:
        sys.stdout.write(json.dumps(job_record(job)) + "\n")
    else:
        console.print(_summary(job), markup=False, highlight=False, soft_wrap=True)
    if job.state == "failed":
        err.print(f"[bold red]error:[/] job {job_id} failed: {escape(job.error)}", highlight=False, soft_wrap=True)
    return EXIT_CODES.get(job.state, 1)


def follow_job(config: Config, job_id: str, json_output: bool = False) -> int:
    """Follow a job until it ends, with a progress bar on a terminal (plain lines otherwise); with
    ``json_output`` the final job record is printed as JSON. Returns the exit code: 0 done, 1 failed, 2
    cancelled, 130 when the operator stopped following with Ctrl-C (the job goes on)."""
    from atoll.server.stores import StartupError, open_stores

    try:
        meta, _ = open_stores(config)
    except StartupError as exc:
        _fail(str(exc))
    try:
        return asyncio.run(_follow(meta, job_id, json_output))
    except KeyboardInterrupt:
        err.print(f"stopped following; job {job_id} goes on. Cancel it with: atoll jobs cancel {job_id}",
                  highlight=False)
        return 130
    finally:
        meta.close_sync()


# atoll stage ------------------------------------------------------------------------------------------------
def _read_keys(path: str) -> list[str]:
    try:
        stream = sys.stdin if path == "-" else open(path, encoding="utf-8")
    except OSError as exc:
        _fail(f"cannot read {path}: {exc.strerror}")
    with stream:
        return [line.rstrip("\r\n") for line in stream if line.rstrip("\r\n")]


@app.command("stage")
def stage(
    bucket: str,
    prefix: str = typer.Option("", "--prefix", help="Stage the cold objects under this prefix (default: all)."),
    keys_from: Optional[str] = typer.Option(None, "--keys-from", help="Stage the keys listed in this file, one a "
                                            "line ('-' for stdin), instead of a prefix."),
    pin: bool = typer.Option(False, "--pin", help="Pin the staged objects: never evicted until unpinned."),
    pin_for: Optional[float] = typer.Option(None, "--pin-for", help="Pin them for this many seconds (implies "
                                            "--pin)."),
    priority: str = typer.Option("normal", "--priority", help="high, normal or low."),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Follow the job with a progress bar until it ends."),
    as_json: bool = typer.Option(False, "--json", help="Print the job (its final state with --wait) as JSON."),
    config_file: Optional[str] = ConfigOpt, data_dir: Optional[str] = DataDirOpt,
) -> None:
    """Make objects of a linked bucket warm ahead of reads: a background job run by the server."""
    from atoll import errors
    from atoll.core.tiering import admin

    if keys_from is not None and prefix:
        _fail("give --prefix or --keys-from, not both")
    if pin_for is not None and not pin_for > 0:
        _fail("--pin-for takes a number of seconds > 0")
    keys = _read_keys(keys_from) if keys_from is not None else None
    if keys is not None and not keys:
        _fail(f"no keys in {keys_from}")
    spec = {"prefix": prefix, "keys": keys, "pin": pin or pin_for is not None, "pin_seconds": pin_for,
            "priority": priority}
    config = _config(config_file, data_dir=data_dir)

    async def run(ns):
        detail = {"kind": "stage", "prefix": prefix, "pin": spec["pin"], "pin_seconds": pin_for,
                  "priority": priority, **({"key_count": len(keys)} if keys is not None else {})}
        try:
            async with audited(ns.meta, "job.create", f"{bucket}/{prefix}" if prefix else bucket, detail):
                return await admin.create_job(ns.tier, "stage", bucket, spec, priority), None
        except errors.AtollError as exc:
            return None, exc.message

    job, problem = _with_store(config, run)
    if problem:
        _fail(problem)
    if not wait:
        if as_json:
            sys.stdout.write(json.dumps(job_record(job)) + "\n")
        else:
            console.print(f"staging job {job.job_id} queued; follow it with: atoll jobs wait {job.job_id}",
                          highlight=False)
        return
    if not as_json:
        what = f"{len(keys)} keys" if keys is not None else (f"prefix {prefix!r}" if prefix else "the whole bucket")
        console.print(f"staging job {job.job_id}: {what} of {bucket}", markup=False, highlight=False)
    raise typer.Exit(follow_job(config, job.job_id, as_json))


@app.command("pin")
def pin(
    bucket: str,
    prefix: str = typer.Option("", "--prefix", help="Only the objects under this prefix (default: all)."),
    pin_for: Optional[float] = typer.Option(None, "--for", help="Pin for this many seconds (default: until "
                                            "unpinned)."),
    remove: bool = typer.Option(False, "--remove", help="Unpin: the objects become evictable again."),
    config_file: Optional[str] = ConfigOpt, data_dir: Optional[str] = DataDirOpt,
) -> None:
    """Pin the objects of a bucket (or a prefix) in the warm tier, or unpin them: pinned objects are never
    evicted. Objects not warm yet keep the pin for when they are (see atoll stage --pin)."""
    from atoll import errors
    from atoll.core.tiering import admin
    from atoll.core.tiering.jobs import PIN_FOREVER

    if remove and pin_for is not None:
        _fail("give --for or --remove, not both")
    if pin_for is not None and not pin_for > 0:
        _fail("--for takes a number of seconds > 0")
    until = 0.0 if remove else (PIN_FOREVER if pin_for is None else time.time() + pin_for)
    config = _config(config_file, data_dir=data_dir)

    async def run(ns):
        action, detail = ("pin.remove", {}) if remove else ("pin.add", {"seconds": pin_for})
        try:
            async with audited(ns.meta, action, f"{bucket}/{prefix}" if prefix else bucket, detail):
                return await admin.pin_prefix(ns.tier, bucket, prefix, until), None
        except errors.AtollError as exc:
            return None, exc.message

    counts, problem = _with_store(config, run)
    if problem:
        _fail(problem)
    objects, size = counts
    what = "unpinned" if remove else ("pinned until unpinned" if pin_for is None else f"pinned for {pin_for:g}s")
    console.print(f"{what}: {objects} objects, {human_bytes(size)}", markup=False, highlight=False)


# atoll jobs -------------------------------------------------------------------------------------------------
@jobs_app.callback(invoke_without_command=True)
def jobs_list(
    ctx: typer.Context,
    show_all: bool = typer.Option(False, "--all", help="Also jobs that ended more than a day ago."),
    as_json: bool = typer.Option(False, "--json"),
    config_file: Optional[str] = ConfigOpt, data_dir: Optional[str] = DataDirOpt,
) -> None:
    """List jobs, newest first: running and queued ones and those that ended in the last day."""
    if ctx.invoked_subcommand is not None:
        return
    config = _config(config_file, data_dir=data_dir)
    jobs = _with_store(config, lambda ns: ns.meta.list_jobs(limit=10000 if show_all else 1000))
    now = time.time()
    if not show_all:
        jobs = [j for j in jobs if j.state not in FINAL_STATES or now - j.updated < _RECENT_SECONDS]
    if as_json:
        sys.stdout.write(json.dumps([job_record(j) for j in jobs]) + "\n")
        return
    if not jobs:
        console.print("no jobs")
        return
    table = Table("id", "kind", "bucket", "state", "progress", "bytes", "rate", "age")
    for job in jobs:
        p = job.progress
        percent = _percent(p)
        rate = p.get("rate_bytes_per_s") if job.state == "running" else None
        table.add_row(job.job_id, job.kind, job.bucket, job.state,
                      "-" if percent is None else f"{percent:.0f}%",
                      f"{human_bytes(p['bytes_done'])}/{human_bytes(p.get('bytes_total'))}" if "bytes_done" in p
                      else "-",
                      f"{human_bytes(rate)}/s" if rate else "-", human_age(now - job.created))
    console.print(table)


def _get_job(config: Config, job_id: str):
    job = _with_store(config, lambda ns: ns.meta.get_job(job_id))
    if job is None:
        _fail(f"no job {job_id}")
    return job


@jobs_app.command("show")
def jobs_show(job_id: str, as_json: bool = typer.Option(False, "--json"), config_file: Optional[str] = ConfigOpt,
              data_dir: Optional[str] = DataDirOpt) -> None:
    """Show one job: what it does, its state and all its progress numbers."""
    job = _get_job(_config(config_file, data_dir=data_dir), job_id)
    if as_json:
        sys.stdout.write(json.dumps(job_record(job, full_spec=True)) + "\n")
        return
    record = job_record(job)
    lines = [f"job:      {job.job_id}", f"kind:     {job.kind}", f"bucket:   {job.bucket}",
             f"state:    {job.state}", f"priority: {record['priority']}",
             f"created:  {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(job.created))}",
             f"spec:     {json.dumps(record['spec'])}"]
    if job.error:
        lines.append(f"error:    {job.error}")
    for name, value in job.progress.items():
        if name != "errors":
            lines.append(f"  {name}: {value}")
    for problem in job.progress.get("errors") or []:
        lines.append(f"  failed: {problem.get('key')}: {problem.get('error')}")
    console.print("\n".join(lines), markup=False, highlight=False, soft_wrap=True)


@jobs_app.command("cancel")
def jobs_cancel(job_id: str, config_file: Optional[str] = ConfigOpt, data_dir: Optional[str] = DataDirOpt) -> None:
    """Cancel a queued or running job (objects it already made warm stay warm)."""
    from atoll import errors
    from atoll.core.tiering import admin

    config = _config(config_file, data_dir=data_dir)

    async def run(ns):
        job = await ns.meta.get_job(job_id)
        if job is not None and job.state in FINAL_STATES:
            return job.state, False, None
        try:
            async with audited(ns.meta, "job.cancel", job_id):
                return await admin.cancel_job(ns.tier, job_id), True, None
        except errors.AtollError as exc:
            return None, False, exc.message

    state, changed, problem = _with_store(config, run)
    if problem:
        _fail(problem)
    if changed and state == "cancelled":
        console.print(f"cancelled job {job_id}", highlight=False)
    else:
        console.print(f"job {job_id} had already ended ({state})", highlight=False)


@jobs_app.command("wait")
def jobs_wait(job_id: str, as_json: bool = typer.Option(False, "--json"), config_file: Optional[str] = ConfigOpt,
              data_dir: Optional[str] = DataDirOpt) -> None:
    """Follow a job with a progress bar until it ends; exit 0 if it succeeded."""
    raise typer.Exit(follow_job(_config(config_file, data_dir=data_dir), job_id, as_json))
