"""Start-up recovery: reclaim the blobs a crash left without a metadata row.

Every write commits its blob (fsync, rename into ``blobs/``) before the metadata transaction that refers to it
(atoll.core.namespace), so a server killed between the two leaves a whole blob nothing refers to: a PUT, a part,
a copy, a staged object, or the sparse blob of a read-through fill whose ``start_fill`` never committed. Temp
files are the data store's own business (removed at every start). Journal claims are voided at every start.

Only blobs committed while the crashed server ran can be such leftovers, so a start after a crash looks only
where those can be: the data store lists the regions (fan-out directories) changed since the crashed server
started, without a stat per blob, and the index is asked about all of them in one pass. No write is in flight
at start, so every unreferenced blob found there is a leftover, including older ones. After a clean stop nothing
is scanned. ``atoll fsck`` remains the full check.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from atoll.core.ingest import run_io
from atoll.stores.data.base import DataStore
from atoll.stores.meta.base import MetaStore

# File times come from the kernel's coarse clock, which may trail time.time() by a tick; a small clock step
# back is covered too. Looking at a few extra files costs nothing.
CLOCK_SLACK = 2.0


@dataclass(slots=True)
class Reclaimed:
    examined: int  # blobs in the regions changed since the crashed server started
    removed: int  # of those, the ones nothing referred to
    seconds: float


async def reclaim_orphan_blobs(meta: MetaStore, data: DataStore, since: float,
                               changed_before: float | None = None) -> Reclaimed:
    """Delete the unreferenced blobs of the regions changed since ``since`` (the crashed server's start). Only
    while no server runs: the blob of a write in flight is unreferenced until its commit. With other nodes
    running (``changed_before``): only blobs last changed before that time, long enough ago that no commit of
    theirs can still be on its way (atoll.server.lifecycle.reclaim_later)."""
    started = time.monotonic()

    def scan() -> list[str]:
        found = [f for f in data.scan_blobs(changed_since=since - CLOCK_SLACK) if f.blob_id is not None]
        if changed_before is not None:
            found = [f for f in (data.stat_found(f) for f in found)
                     if f is not None and f.changed is not None and f.changed < changed_before]
        return [f.blob_id for f in found]

    changed = await run_io(scan)
    orphans = await meta.unreferenced_blobs(changed) if changed else set()
    if orphans:
        await run_io(lambda: [data.delete(blob_id) for blob_id in orphans])
    return Reclaimed(len(changed), len(orphans), time.monotonic() - started)
