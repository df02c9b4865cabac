"""Compaction: reclaiming the space of dead records in segment files (#8).

Overwrites and deletes of packed objects leave their old records in place; the metadata store counts each
segment's live bytes exactly (``packed_refs``). A pass of the compactor, in any server process:
1. seals the open segments of writers that are gone (a crashed or stopped process), so they can be compacted;
2. claims one segment under a lease (``claim_compaction``): a sealed one whose dead fraction reached the
   threshold, or one whose previous compactor died mid-way;
3. copies its live records, in batches, into this process's open segment (group-committed, durable) and repoints
   their objects in one metadata transaction per batch — only objects that still point at the old place, so a
   concurrent overwrite or delete wins and the copy is simply dead;
4. retires it once no reference is left; the file is deleted ``grace`` seconds later (readers that looked the
   object up before the move finish on the old copy, which holds the same bytes) and the row then.
Reads and writes never wait for it: it takes no lock but the metadata store's per-batch transactions. A kill at
any instant leaves every object pointing at a whole, durable record: the old one until its batch's transaction
commits, the new one (fdatasync'ed before that transaction) after.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time

from atoll import errors, metrics
from atoll.core import ingest
from atoll.core import cluster
from atoll.core.packing import PackedWriter, node_name
from atoll.core.tasks import cancel_and_wait

log = logging.getLogger("atoll.compaction")

LEASE_SECONDS = 60.0
SETTLE_SECONDS = 10.0  # a segment sealed less than this ago may still have PUTs committing into it
STRAY_SECONDS = 600.0  # a segment file this old without a row was never registered: nothing can point into it
_MOVE_RECORDS = 512
_MOVE_BYTES = 8 << 20


class Compactor:
    def __init__(self, meta, data, writer: PackedWriter, *, threshold: float, interval: float, grace: float,
                 settle: float = SETTLE_SECONDS) -> None:
        self.meta = meta
        self.data = data
        self.writer = writer
        self.threshold = threshold
        self.interval = interval
        self.grace = grace
        self.settle = settle
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _loop(self) -> None:
        while True:
            try:
                await self.housekeeping()
                while await self.compact_one():
                    pass
            except asyncio.CancelledError:
                raise
            except errors.Unavailable as exc:
                log.warning("compaction postponed: %s", exc.message)
            except Exception:  # noqa: BLE001 - the next pass retries
                log.exception("compaction pass failed")
            # Jittered, so that the workers of one node do not all look at once.
            await asyncio.sleep(self.interval * (0.75 + secrets.randbelow(500) / 1000))

    async def housekeeping(self) -> None:
        """Seal the segments of dead writers, delete retired segments past their grace and files never
        registered, close stale fds."""
        segments = await self.meta.list_segments()
        node = node_name()
        # Writers of this node are judged by their pids (every process looks, as on one node); other nodes' by
        # their heartbeats, by the one process that holds the housekeeping lease.
        shared = await cluster.hold_singleton("compaction-housekeeping")
        dead: set[str] = set()
        for owner in {s.owner for s in segments if s.state in ("open", "compacting") and s.owner != self.writer.owner
                      and (shared or s.owner.split(":", 1)[0] == node)}:
            if not await cluster.owner_alive(owner):
                dead.add(owner)
        orphans = [s for s in segments if s.state == "open" and s.owner in dead]
        if orphans:
            sizes = {}
            for segment in orphans:
                size = await ingest.run_io(self.data.segments.size, segment.segment_id)
                if size is not None:
                    sizes[segment.segment_id] = size
            alive = {s.owner for s in segments if s.state == "open" and s not in orphans}
            sealed = []
            for owner_node in sorted({s.owner.split(":", 1)[0] for s in orphans}):
                sealed += await self.meta.seal_orphan_segments(owner_node, alive | {self.writer.owner}, sizes)
            if sealed:
                log.info("sealed %d segment(s) of stopped writers", len(sealed))
        dead_compactors = {s.owner for s in segments if s.state == "compacting" and s.owner in dead}
        if dead_compactors:  # killed mid-way: redo now rather than when the lease runs out
            await self.meta.release_dead_compactions(sorted(dead_compactors))
        if not shared:
            self.data.segment_readers.sweep()
            return
        now = time.time()
        for segment in segments:
            if segment.state == "retired" and now - segment.retired >= self.grace:
                size = await ingest.run_io(self.data.segments.size, segment.segment_id) or 0
                if await ingest.run_io(self.data.segments.delete, segment.segment_id):
                    metrics.COMPACTION_RECLAIMED_BYTES.inc(size)
                await self.meta.forget_segment(segment.segment_id)
        known = {s.segment_id for s in segments}
        for segment_id in await ingest.run_io(self.data.segments.list_ids):
            if segment_id not in known:
                changed = await ingest.run_io(self.data.segments.changed, segment_id)
                # Re-read the rows before deleting: the file may be a writer's brand-new segment.
                if changed is not None and now - changed > STRAY_SECONDS and segment_id not in {
                        s.segment_id for s in await self.meta.list_segments()}:
                    log.warning("deleting segment file %s: never registered (its writer died first)", segment_id)
                    await ingest.run_io(self.data.segments.delete, segment_id)
        # On the loop, not in a thread: the loop reads through these fds, and an fd closed under a read could be
        # reused by another open before the read — a read of the wrong file. One fstat per open segment.
        self.data.segment_readers.sweep()

    async def compact_one(self) -> bool:
        """Compact one segment if one qualifies; returns whether one did."""
        owner = self.writer.owner
        segment = await self.meta.claim_compaction(owner, LEASE_SECONDS, self.threshold, self.settle)
        if segment is None:
            return False
        moved_records = moved_bytes = 0
        after = -1
        while True:
            refs = await self.meta.segment_refs(segment.segment_id, after, _MOVE_RECORDS)
            if not refs:
                break
            batch, size = [], 0
            for ref in refs:
                if batch and size + ref[1] > _MOVE_BYTES:
                    break
                batch.append(ref)
                size += ref[1]
            payloads = await ingest.run_io(self._read_records, segment.segment_id, batch)
            places = await self.writer.append_many(payloads)
            moves = [(bucket, key, offset, place[0], place[1])
                     for (offset, _, bucket, key), place in zip(batch, places)]
            moved_records += await self.meta.move_packed(segment.segment_id, owner, LEASE_SECONDS, moves)
            moved_bytes += size
            after = batch[-1][0]
        if await self.meta.retire_segment(segment.segment_id, owner):
            metrics.COMPACTIONS.inc()
            metrics.COMPACTION_MOVED_BYTES.inc(moved_bytes)
            log.info("compacted segment %s: %d live records moved (%d bytes), %d bytes to reclaim",
                     segment.segment_id, moved_records, moved_bytes, segment.size - moved_bytes)
        return True

    def _read_records(self, segment_id: str, refs) -> list[bytes]:
        fd = os.open(self.data.segments.path(segment_id), os.O_RDONLY | os.O_CLOEXEC)
        try:
            payloads = []
            for offset, length, _, _ in refs:
                payload = os.pread(fd, length, offset)
                if len(payload) != length:
                    raise errors.Unavailable(f"segment {segment_id} is shorter than its references; run atoll fsck")
                payloads.append(payload)
            return payloads
        finally:
            os.close(fd)
