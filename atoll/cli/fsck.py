"""``atoll fsck``: check the data directory against the index, and repair with ``--repair``.

Whether a server runs on the data directory is read from its lock (atoll.server.runstate), never guessed. Heavy
modules are imported inside the command (see atoll.cli.status for why).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from contextlib import contextmanager
from typing import Iterator, Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Column, Table

from atoll.cli.main import ConfigOpt, DataDirOpt, _config, _fail, app, console, err
from atoll.cli.status import human_bytes
from atoll.config import Config
from atoll.stores.meta.dsn import is_postgres

GRACE_DEFAULT = 900.0  # atoll.core.fsck.GRACE_SECONDS, without importing the core at CLI start-up
_SEVERITY_STYLES = {"error": "bold red", "warning": "yellow", "info": "dim"}


# Typer keeps the line breaks of every paragraph after the first one; these paragraphs are re-flowed.
_HELP = "\n\n".join(" ".join(paragraph.split()) for paragraph in """
Check the data directory against the index: orphan, missing and short blobs, temp files, partial fills,
the write-back journal and the resident-bytes counter (checksums with --checksums).

--repair deletes leftover files; makes a version whose bytes are missing, short or corrupt absent when its
cold store has it (the next read fetches it again), otherwise removes the row of a lost object (reported as
lost) and keeps a corrupt one (reported); drops broken multipart parts; finishes journal entries of replaced
versions; recomputes the counter.

With a server running on the data directory the check is safe, and so is --repair, which then does only what
is safe beside it: files younger than --grace and temp files of live processes are left alone, and journal
claims are the server's. Without a server, --repair locks the data directory: a server cannot start until it
is done.

Exit status: 0 clean (or everything repaired), 1 problems remain (or objects were lost), 2 error.
""".strip().split("\n\n"))


@app.command("fsck", help=_HELP)
def fsck_command(
    checksums: bool = typer.Option(False, "--checksums", help="Also read every resident object and part and "
                                   "verify its MD5 ETag and stored checksums (reads all the data)."),
    repair: bool = typer.Option(False, "--repair", help="Repair what is found (see above)."),
    as_json: bool = typer.Option(False, "--json", help='Print one JSON object: {"clean", "findings", "counts", '
                                 '...}.'),
    grace: float = typer.Option(GRACE_DEFAULT, "--grace", min=0.0, help="With a server running: files changed "
                                "within this many seconds belong to writes in flight and are not judged."),
    config_file: Optional[str] = ConfigOpt,
    data_dir: Optional[str] = DataDirOpt,
) -> None:
    from atoll.server import runstate

    config = _config(config_file, data_dir=data_dir)
    if not is_postgres(config.metadata) and not os.path.isfile(config.metadata_path):
        _fail(f"no Atoll data directory at {config.data_dir} ({config.metadata_path} does not exist)", 2)
    lock = None
    if repair:
        try:
            lock = runstate.DataDirLock.acquire(config.data_dir)
            online = False
        except runstate.DataDirBusy:
            online = True
        except OSError as exc:
            _fail(f"cannot lock data directory {config.data_dir}: {exc.strerror}", 2)
    else:
        online = runstate.in_use(config.data_dir)
    try:
        report = _run(config, repair=repair, checksums=checksums, online=online, grace=grace,
                      show_progress=err.is_terminal)
    except Exception as exc:  # noqa: BLE001 - one clear line, exit status 2
        problem = exc
    else:
        problem = None
    finally:
        if lock is not None:
            lock.release()
    if problem is not None:
        _fail(f"fsck could not finish: {problem}", 2)
    if as_json:
        sys.stdout.write(json.dumps(report.as_dict()) + "\n")
    else:
        print_report(report, config, grace)
    raise typer.Exit(0 if report.clean else 1)


def _run(config: Config, *, show_progress: bool, **options):
    # The stores only, not atoll.server.lifecycle: importing the whole server costs a second of CPU per run.
    from atoll.core.fsck import Fsck
    from atoll.stores.data.files import FileDataStore
    from atoll.stores.meta import open_metastore

    meta = open_metastore(config.metadata, os.path.join(config.data_dir, "meta.sqlite3"))
    meta.open_sync()
    try:
        data = FileDataStore(config.data_dir)
        with _progress(show_progress) as progress:
            return asyncio.run(Fsck(meta, data, progress=progress, **options).run())
    finally:
        meta.close_sync()


@contextmanager
def _progress(enabled: bool) -> Iterator:
    """A progress display on stderr (a terminal only): one line per phase with what it has looked at."""
    bar = Progress(SpinnerColumn(), TextColumn("{task.description:<20}"), BarColumn(),
                   TextColumn("{task.completed:>12,.0f}"), TimeElapsedColumn(), console=err, transient=True,
                   disable=not enabled)
    tasks: dict[str, int] = {}

    def update(phase: str, done: int, total: int | None) -> None:
        if phase not in tasks:
            tasks[phase] = bar.add_task(phase, total=total)
        bar.update(tasks[phase], completed=done, total=total)

    with bar:
        yield update


def _subject(finding) -> str:
    if finding.key or finding.bucket:
        return f"{finding.bucket}/{finding.key}"
    if finding.upload_id:
        return f"upload {finding.upload_id} part {finding.part_number}"
    if finding.where:
        return finding.where
    return finding.version_id or finding.blob_id or "-"


def print_report(report, config: Config, grace: float) -> None:
    counts = report.counts
    mode = (f"online (a server is running: files younger than {grace:g}s are left alone)" if report.online
            else "offline (no server running)")
    console.print(f"data directory {escape(os.path.abspath(config.data_dir))}, {mode}", highlight=False)
    checked = (f"checked {counts.get('objects', 0):,} objects ({counts.get('resident', 0):,} resident, "
               f"{counts.get('partial', 0):,} partial, {counts.get('absent', 0):,} absent), "
               f"{counts.get('parts', 0):,} parts, {counts.get('blob_files', 0):,} blob files, "
               f"{counts.get('temp_files', 0):,} temp files, {counts.get('drain_entries', 0):,} journal entries "
               f"in {report.seconds:.1f}s")
    if report.checksums:
        checked += (f"; checksums of {counts.get('checksummed', 0):,} objects "
                    f"({human_bytes(counts.get('checksummed_bytes', 0))}), "
                    f"{counts.get('unverifiable', 0):,} without a checksum to verify")
    console.print(checked, highlight=False)
    if report.findings:
        table = Table("kind", "severity", Column("object / file", overflow="fold"),
                      Column("problem", ratio=2, overflow="fold"), Column("repair", ratio=1), title="Findings",
                      title_justify="left")
        for f in report.findings:
            if f.repaired:
                action = f"[green]done[/]: {escape(f.action)}"
            elif not f.action or f.action.startswith("none"):
                action = escape(f.action or "-")
            elif report.repair:  # the row moved on between the check and the repair
                action = f"[red]not done[/]: {escape(f.action)}"
            else:
                action = f"--repair would {escape(f.action)}"
            if f.lost:
                action += "\n[bold red]data lost[/]"
            table.add_row(f.kind, f"[{_SEVERITY_STYLES.get(f.severity, '')}]{f.severity}[/]", escape(_subject(f)),
                          escape(f.detail), action)
        console.print(table)
    unresolved = report.unresolved
    lost = sum(f.lost for f in report.findings)
    if report.clean:
        repaired = sum(f.repaired for f in report.findings)
        console.print("[bold green]clean[/]" + (f": {repaired} findings repaired" if repaired else ""))
    else:
        console.print(f"[bold red]{len(unresolved)} problems remain[/]"
                      + (f", {lost} objects lost" if lost else "")
                      + ("" if report.repair else " (atoll fsck --repair fixes what can be fixed)"))
