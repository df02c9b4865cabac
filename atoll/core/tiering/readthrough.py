"""Read-through fills: a missing object becomes a sparse blob filled block by block from the cold store.

A reader asks for bytes [start, end). The blocks covering them are fetched with ranged cold reads, a window of
``fill_parallelism`` ahead of the reader, each pinned to the cold ETag the version was recorded with (If-Match),
so bytes of two different cold objects can never be mixed in one warm copy. A block is written in place, made
durable (fdatasync), and only then recorded in the version's block map; a crash leaves blocks that are either
recorded and durable or refetched. The block map is persistent, so a partly filled object resumes where it was.

Within a process, each block is fetched once however many readers want it (they await the same task), and each
version has one ``Fill``: 32 readers of a missing object cause one cold transfer. The reader streams each block
as soon as it arrives from the cold store, never waiting for the whole object nor for the block's write and
fdatasync (only a response's last bytes wait until its blocks are recorded, so a whole read leaves the object
resident). Blocks no reader asked for are not fetched: a ranged GET of a cold object costs only the blocks it
touches.

A full disk never fails a read: a block that cannot be written (or recorded) is handed to its readers all the
same and stays unrecorded, to be fetched again by a later read; a fill that cannot even start streams from the
cold store without caching.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import TYPE_CHECKING, AsyncIterator, Callable

from atoll import errors, metrics
from atoll.core import cluster, ingest
from atoll.core.models import ABSENT, RESIDENT, Link, ObjectVersion
from atoll.stores.cold.store import Traffic

if TYPE_CHECKING:
    from atoll.core.tiering.tier import Tiering

log = logging.getLogger("atoll.readthrough")

_READ_CHUNK = 1 << 20
FILL_LEASE_SECONDS = 5.0  # a block's fetcher renews its lease every third of this; a dead one's lapses after it
_PEER_POLL_FIRST = 0.01  # waiting for another process's block: the block map is polled from this...
_PEER_POLL_MAX = 0.2  # ...doubling up to this
_WARN_INTERVAL = 60.0


def _write_block(fd: int, data: bytes, offset: int, check_room: Callable[[int], None]) -> None:
    check_room(len(data))
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written
    os.fdatasync(fd)


def _read_block(fd: int, offset: int, length: int) -> bytes:
    data = os.pread(fd, length, offset)
    if len(data) != length:
        raise errors.Unavailable("A warm copy is shorter than its metadata; run atoll fsck.")
    return data


def _read_fresh(path: str, offset: int, length: int) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return _read_block(fd, offset, length)
    finally:
        os.close(fd)


class FillLease:
    """Which process of the cluster fetches one block of a warm copy: a ``cluster_leases`` row
    "fill:<blob>:<block>", taken before the cold read, renewed while it runs, released after the block is
    recorded (or the read failed). Others wait for the block in the block map; if the holder dies, its lease
    lapses after ``FILL_LEASE_SECONDS`` and a waiter takes over. A process alone in its cluster takes none."""

    def __init__(self, fill: "Fill", name: str, owner: str, held: bool) -> None:
        self.fill = fill
        self.name = name
        self.owner = owner
        self.held = held
        self._renewer: asyncio.Task | None = None
        if held:
            self._renew_soon()

    @classmethod
    async def take(cls, fill: "Fill", index: int) -> "FillLease | None":
        current = cluster.current()
        if current is None or current.alone():
            return None
        name = f"fill:{fill.version.extents[0].blob_id}:{index}"
        owner = cluster.process_owner()
        held = await fill.filler.tier.meta.claim_cluster_lease(name, owner, FILL_LEASE_SECONDS)
        return cls(fill, name, owner, held)

    async def take_over(self) -> bool:
        """Take the lease if its holder let it lapse (a dead holder); a read first, so waiters do not write."""
        meta = self.fill.filler.tier.meta
        lease = await meta.get_cluster_lease(self.name)
        if lease is not None and lease.lease_until >= time.time():
            return False
        self.held = await meta.claim_cluster_lease(self.name, self.owner, FILL_LEASE_SECONDS)
        if self.held:
            log.info("took over the fill of a block of %s/%s from a process that stopped renewing it",
                     self.fill.version.bucket, self.fill.version.key[:200])
            self._renew_soon()
        return self.held

    def _renew_soon(self) -> None:
        self._renewer = asyncio.get_running_loop().create_task(self._renew())

    async def _renew(self) -> None:
        meta = self.fill.filler.tier.meta
        while True:
            await asyncio.sleep(FILL_LEASE_SECONDS / 3)
            try:
                await meta.claim_cluster_lease(self.name, self.owner, FILL_LEASE_SECONDS)
            except errors.AtollError:
                pass  # the next renewal tries again; a lapse costs at most a second cold read

    def release(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            self._renewer = None
        if self.held:
            self.held = False
            task = asyncio.get_running_loop().create_task(
                self.fill.filler.tier.meta.release_cluster_lease(self.name, self.owner))
            task.add_done_callback(_retrieve)


class Fill:
    """The in-process state of one partial version: its writable blob, block map and blocks in flight."""

    def __init__(self, filler: "Filler", link: Link, version: ObjectVersion, fd: int, block_size: int,
                 bitmap: bytes) -> None:
        self.filler = filler
        self.link = link
        self.version = version
        self.fd = fd
        self.block_size = block_size
        self.blocks = (version.size + block_size - 1) // block_size
        self.bitmap = bytearray(bitmap)
        self.inflight: dict[int, asyncio.Task] = {}
        # A block's bytes as soon as they arrive from the cold store, until a reader takes them: readers need not
        # wait for the write and fdatasync, nor read back from disk what was fetched for them.
        self.arrivals: dict[int, asyncio.Future] = {}
        self.readers = 0
        self.complete = False
        self.closed = False
        self._window = asyncio.Semaphore(filler.tier.settings.fill_parallelism)

    def has(self, index: int) -> bool:
        return bool(self.bitmap[index >> 3] & (1 << (index & 7)))

    def ensure(self, index: int) -> None:
        if not self.has(index) and index not in self.inflight:
            loop = asyncio.get_running_loop()
            arrival = loop.create_future()
            arrival.add_done_callback(_retrieve)
            self.arrivals[index] = arrival
            task = loop.create_task(self._fetch(index))
            # A block fetched ahead may fail with no reader left to await it; its readers, if any, get the error.
            task.add_done_callback(_retrieve)
            self.inflight[index] = task

    async def block(self, index: int) -> bytes:
        arrival = self.arrivals.get(index)
        if arrival is None and not self.has(index) and index not in self.inflight:
            self.ensure(index)
            arrival = self.arrivals[index]
        if arrival is not None:
            try:
                return await asyncio.shield(arrival)
            finally:
                if arrival.done() and self.arrivals.get(index) is arrival:
                    del self.arrivals[index]  # taken: a later reader of this block reads the warm copy
        task = self.inflight.get(index)
        if task is not None:
            return await asyncio.shield(task)
        lo, hi = self._bounds(index)
        return await ingest.run_io(_read_block, self.fd, lo, hi - lo)

    async def settled(self, first: int, last: int) -> None:
        """Wait until no block in [first, last] is still being fetched or written (whatever the outcome)."""
        pending = [task for index, task in self.inflight.items() if first <= index <= last]
        if pending:
            await asyncio.wait(pending)

    def _bounds(self, index: int) -> tuple[int, int]:
        lo = index * self.block_size
        return lo, min(lo + self.block_size, self.version.size)

    async def _fetch(self, index: int) -> bytes:
        lo, hi = self._bounds(index)
        store = self.filler.tier.store(self.link)
        arrival = self.arrivals.get(index)
        lease: FillLease | None = None
        try:
            async with self._window:
                lease = await FillLease.take(self, index)
                if lease is not None:
                    # Another node (or worker) fetches this block: wait for it in the shared block map. Ours:
                    # unless its last holder recorded it just before we took it.
                    data = await self._from_peer(index, lease) if not lease.held else await self._recorded(index)
                    if data:
                        if arrival is not None and not arrival.done():
                            arrival.set_result(data)
                        return data
                started = time.monotonic()
                try:
                    data = await store.read_range(self.version.key, lo, hi, Traffic.DEMAND,
                                                  if_match=self.version.cold_etag or None)
                except BaseException as exc:
                    if arrival is not None and not arrival.done():
                        if isinstance(exc, asyncio.CancelledError):
                            arrival.cancel()
                        else:
                            arrival.set_exception(exc)
                    if self.arrivals.get(index) is arrival:
                        del self.arrivals[index]
                    raise
                if arrival is not None and not arrival.done():
                    arrival.set_result(data)
                metrics.COLD_BYTES_READ.labels(Traffic.DEMAND.value).inc(len(data))
                try:
                    await ingest.run_data_io(_write_block, self.fd, data, lo, self.filler.tier.data.check_room)
                except errors.Unavailable as exc:
                    self.filler.not_kept(self.version, exc)
                    return data
                self.bitmap[index >> 3] |= 1 << (index & 7)
                metrics.FILL_SECONDS.observe(time.monotonic() - started)
            try:
                state = await self.filler.tier.meta.mark_filled(self.version.bucket, self.version.key,
                                                                self.version.version_id, [index],
                                                                blob_id=self.version.extents[0].blob_id)
            except errors.Unavailable as exc:
                # Written but not recorded: this process reads it from the warm copy, a later fill fetches it again.
                self.filler.not_kept(self.version, exc)
                return data
            if state == RESIDENT:
                self.complete = True
            return data
        except errors.ColdObjectChanged:
            # The cold object was replaced since this version was recorded: record the new one, so the
            # next open fills that instead of failing forever.
            await self.filler.tier.replace_changed(self.link, self.version)
            raise
        finally:
            if lease is not None:
                lease.release()
            self.inflight.pop(index, None)
            self.filler.release_if_idle(self)

    async def _from_peer(self, index: int, lease: "FillLease") -> bytes | None:
        """The block once the process holding its fill lease recorded it in the block map; None when this
        process should fetch it itself (the holder's lease lapsed and is now ours, or the warm copy went another
        way)."""
        delay = _PEER_POLL_FIRST
        while True:
            await asyncio.sleep(delay)
            delay = min(delay * 2, _PEER_POLL_MAX)
            recorded = await self._recorded(index)
            if recorded is not False:
                return recorded
            if await lease.take_over():
                return await self._recorded(index) or None

    async def _recorded(self, index: int) -> bytes | None | bool:
        """The block if another process recorded it in the shared block map (read from the shared warm copy);
        False if it is not recorded yet; None if this warm copy is no longer the version's."""
        meta = self.filler.tier.meta
        state = await meta.get_fill(self.version.version_id)
        if state is None:  # resident now, or no longer this warm copy
            current = await meta.get_object(self.version.bucket, self.version.key)
            if (current is None or current.version_id != self.version.version_id or current.residency != RESIDENT
                    or current.extents[:1] != self.version.extents[:1]):
                return None
        elif not state[1][index >> 3] & (1 << (index & 7)):
            return False
        self.bitmap[index >> 3] |= 1 << (index & 7)
        lo, hi = self._bounds(index)
        # A fresh open, not this process's fill fd: on a shared filesystem close-to-open consistency promises
        # another client's writes only to an open made after them.
        return await ingest.run_io(_read_fresh, self.filler.tier.data.blob_path(self.version.extents[0].blob_id),
                                   lo, hi - lo)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.arrivals.clear()
            os.close(self.fd)


class Filler:
    def __init__(self, tier: "Tiering") -> None:
        self.tier = tier
        self.fills: dict[str, Fill] = {}
        self._opening: dict[str, asyncio.Future] = {}
        self._warned_at = -_WARN_INTERVAL

    def not_kept(self, version: ObjectVersion, exc: errors.AtollError) -> None:
        """A block was served but not kept warm (disk full, metadata store unavailable): say so, once a minute."""
        now = time.monotonic()
        if now - self._warned_at >= _WARN_INTERVAL:
            self._warned_at = now
            log.warning("read-through of %s/%s serves blocks without keeping them: %s", version.bucket,
                        version.key[:200], exc.message)

    async def read(self, link: Link, version: ObjectVersion, start: int, end: int) -> AsyncIterator[bytes] | None:
        """An iterator over bytes [start, end), or None when the version turned out resident (open it locally).
        The first block is fetched before returning, so a cold failure is still a clean error response."""
        if version.residency == ABSENT:
            if not await self._make_room(version.size, version.bucket):
                return await self._pass_through(link, version, start, end)
            try:
                version = await self._start(link, version)
            except errors.InsufficientStorage:
                return await self._pass_through(link, version, start, end)
        if version.residency == RESIDENT:
            return None
        fill = await self._fill_for(link, version)
        if fill is None:
            return None
        if start >= end:
            return _empty()
        stream = self._stream(fill, start, end)
        try:
            first = await stream.__anext__()
        except BaseException:
            await stream.aclose()
            raise
        return _prepend(first, stream)

    async def _make_room(self, size: int, bucket: str) -> bool:
        if await self.tier.has_room(size, bucket):
            return True
        evictor = getattr(self.tier, "evictor", None)
        if evictor is not None:
            await evictor.make_room(size, bucket)
            return await self.tier.has_room(size, bucket)
        return False

    async def _pass_through(self, link: Link, version: ObjectVersion, start: int, end: int) -> AsyncIterator[bytes]:
        """The warm tier is full of data it may not evict: serve the miss straight from the cold store."""
        log.warning("warm tier full: serving %s/%s from the cold store without caching", version.bucket,
                    version.key[:200])
        if start >= end:
            return _empty()
        _, chunks = await self.tier.store(link).open(version.key, Traffic.DEMAND, start=start, end=end,
                                                     if_match=version.cold_etag or None)
        return chunks

    async def _start(self, link: Link, version: ObjectVersion) -> ObjectVersion:
        """absent -> partial, once per version however many readers arrive together."""
        pending = self._opening.get(version.version_id)
        if pending is not None:
            return await asyncio.shield(pending)
        future = asyncio.get_running_loop().create_future()
        self._opening[version.version_id] = future
        try:
            blob_id = await ingest.run_data_io(self.tier.data.create_sparse, version.size)
            from atoll.core.tiering.tier import warm_seq_now

            try:
                row = await self.tier.meta.start_fill(version.bucket, version.key, version.version_id, blob_id,
                                                      self.tier.settings.fill_block_size, warm_seq_now())
            except errors.AtollError:  # not recorded (a cancel may still commit it: then the blob must stay)
                await ingest.run_io(self.tier.data.delete, blob_id)
                raise
            if row is None or row.version_id != version.version_id or row.extents[0].blob_id != blob_id:
                await ingest.run_io(self.tier.data.delete, blob_id)
            if row is None:
                raise errors.NoSuchKey(bucket=version.bucket, key=version.key)
            if row.version_id != version.version_id:
                raise errors.ColdObjectChanged(key=version.key)
            future.set_result(row)
            return row
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()
            raise
        finally:
            del self._opening[version.version_id]

    def _open_fill(self, version: ObjectVersion) -> Fill | None:
        """The Fill of this warm copy of ``version``: one evicted and filled again has a new blob, and the old
        copy's Fill (still serving its readers) must not stand for it."""
        fill = self.fills.get(version.version_id)
        if fill is None or fill.closed or fill.version.extents[0].blob_id != version.extents[0].blob_id:
            return None
        return fill

    async def _fill_for(self, link: Link, version: ObjectVersion) -> Fill | None:
        fill = self._open_fill(version)
        if fill is not None:
            return fill
        state = await self.tier.meta.get_fill(version.version_id)
        if state is None:
            return None  # became resident meanwhile (another process finished it)
        fill = self._open_fill(version)  # another reader may have made it while we looked
        if fill is not None:
            return fill
        block_size, bitmap = state
        fd = await ingest.run_io(self.tier.data.open_for_fill, version.extents[0].blob_id)
        fill = self._open_fill(version)  # and while we opened the blob: one Fill per version, or
        if fill is not None:  # each reader would fetch every block for itself
            os.close(fd)
            return fill
        fill = Fill(self, link, version, fd, block_size, bitmap)
        self.fills[version.version_id] = fill
        return fill

    async def _stream(self, fill: Fill, start: int, end: int) -> AsyncIterator[bytes]:
        fill.readers += 1
        try:
            size = fill.block_size
            first, last = start // size, (end - 1) // size
            ahead = self.tier.settings.fill_parallelism
            for index in range(first, last + 1):
                for upcoming in range(index, min(last, index + ahead - 1) + 1):
                    fill.ensure(upcoming)
                data = await fill.block(index)
                if index == last:
                    # Blocks reach readers before they are durable; the last bytes wait until the range is, so a
                    # reader that got the whole object finds it resident.
                    await fill.settled(first, last)
                lo = max(start, index * size) - index * size
                hi = min(end, (index + 1) * size) - index * size
                view = memoryview(data)[lo:hi]
                for at in range(0, len(view), _READ_CHUNK):
                    yield view[at:at + _READ_CHUNK]  # a view, not a copy: the bytes stay in the block
        finally:
            fill.readers -= 1
            self.release_if_idle(fill)

    def release_if_idle(self, fill: Fill) -> None:
        if fill.readers == 0 and not fill.inflight:
            if self.fills.get(fill.version.version_id) is fill:
                del self.fills[fill.version.version_id]
            fill.close()

    def readers_total(self) -> int:
        return sum(f.readers for f in self.fills.values())


def _retrieve(task: asyncio.Task) -> None:
    if not task.cancelled():
        task.exception()


async def _empty() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover - makes this an async generator


async def _prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for chunk in rest:
        yield chunk
