"""Writing small objects into segment files with group commit (the packed store's write side, #8).

With one file per object, a durable 4 KiB PUT costs a create, a write, an fsync, a rename and a directory fsync:
ext4 manages about 1.6k of those a second here, whatever the server (perf-baseline.md §3b). Here every process
appends small bodies to its one open segment; the PUTs that arrive while a batch is being made durable wait
together and go as the next batch: one ``pwritev`` and one ``fdatasync`` for all of them. The metadata commit
that follows is group-committed too (the SQLite writer thread), so a storm of small PUTs costs two fsyncs per
batch instead of three per object.

A record is acknowledged only after its batch's fdatasync returned and the object's metadata committed. A
segment's row is committed before its first record is written, so a reference can never point at a segment the
metadata does not know.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from typing import AsyncIterator, Iterable, Sequence

from atoll import errors, metrics
from atoll.core import cluster, ingest
from atoll.core.checksums import new_hasher
from atoll.stores.data.segments import RECORD_HEADER, SegmentFiles, new_segment_id

log = logging.getLogger("atoll.packing")

_BATCH_BYTES = 8 << 20  # one batch writes at most this much (bounded latency for the PUTs behind it)
_BATCH_RECORDS = 4096


def node_name() -> str:
    """This process's cluster node (atoll.core.cluster)."""
    return cluster.node_name()


def process_owner() -> str:
    """This process as a segment owner: "node:pid:start"."""
    return cluster.process_owner()


def owner_alive(owner: str) -> bool:
    """Whether the process named by ``owner`` (of this node) still runs."""
    _, pid, start = cluster.split_owner(owner)
    return pid is not None and cluster.process_alive(pid, start)


@dataclass(frozen=True, slots=True)
class PackedSettings:
    max_size: int = 256 << 10  # 0: no packing
    segment_size: int = 64 << 20
    compaction_threshold: float = 0.5
    compaction_interval: float = 5.0
    compaction_grace: float = 30.0
    compaction_settle: float = 10.0


class PackedWriter:
    """Appends records to this process's open segment, a batch per fdatasync. ``append`` returns once the record
    is durable: (segment id, payload offset)."""

    def __init__(self, meta, files: SegmentFiles, check_room, segment_size: int) -> None:
        self.meta = meta
        self.files = files
        self.check_room = check_room
        self.segment_size = segment_size
        self.owner = process_owner()
        self._pending: list[tuple[bytes | memoryview, asyncio.Future]] = []
        self._flusher: asyncio.Task | None = None
        self._segment: str | None = None
        self._fd = -1
        self._size = 0
        self._closed = False

    async def append(self, payload: bytes | memoryview) -> tuple[str, int]:
        return await self._enqueue([payload])[0]

    async def append_many(self, payloads: Sequence[bytes | memoryview]) -> list[tuple[str, int]]:
        return list(await asyncio.gather(*self._enqueue(payloads)))

    def _enqueue(self, payloads: Sequence[bytes | memoryview]) -> list[asyncio.Future]:
        """Queue records for the next batch (starting the flusher if none runs); each future gives its place."""
        if self._closed:
            raise errors.Unavailable("The server is shutting down.")
        loop = asyncio.get_running_loop()
        futures = []
        for payload in payloads:
            fut = loop.create_future()
            self._pending.append((payload, fut))
            futures.append(fut)
        if self._flusher is None:
            self._flusher = loop.create_task(self._flush())
        return futures

    async def _flush(self) -> None:
        try:
            while self._pending:
                take = size = 0
                for payload, _ in self._pending:
                    if take >= _BATCH_RECORDS or (take and size + len(payload) > _BATCH_BYTES):
                        break
                    take += 1
                    size += len(payload)
                batch, self._pending = self._pending[:take], self._pending[take:]
                await self._write_batch(batch, size)
        finally:
            self._flusher = None

    async def _write_batch(self, batch: list, size: int) -> None:
        try:
            if self._segment is None:
                await self._open_segment()
            segment, fd, at = self._segment, self._fd, self._size
            payloads = [p for p, _ in batch]
            started = asyncio.get_running_loop().time()
            offsets = await ingest.run_io(self._append_blocking, fd, at, payloads, size)
            metrics.GROUP_COMMIT_SECONDS.observe(asyncio.get_running_loop().time() - started)
            metrics.GROUP_COMMIT_RECORDS.observe(len(batch))
            self._size = at + size + RECORD_HEADER.size * len(batch)
        except BaseException as exc:
            failure = exc
            if isinstance(exc, OSError):
                failure = ingest.storage_error(exc)
            if self._segment is not None:
                # What this batch wrote may be a torn tail: never append after it.
                await self._seal_current()
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(failure)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, fut), offset in zip(batch, offsets):
            if not fut.done():
                fut.set_result((segment, offset))
        if self._size >= self.segment_size:
            await self._seal_current()

    def _append_blocking(self, fd: int, at: int, payloads: list, size: int) -> list[int]:
        if size:
            # Payload bytes only: record headers are bookkeeping like a blob file's inode, and empty objects must
            # still be accepted on a disk whose data reserve is reached (as empty files were).
            self.check_room(size)
        return self.files.append(fd, at, payloads)

    async def _open_segment(self) -> None:
        segment = new_segment_id()
        fd = await ingest.run_io(self.files.create, segment)
        try:
            await self.meta.register_segment(segment, self.owner)
        except BaseException:
            os.close(fd)
            await ingest.run_io(self.files.delete, segment)
            raise
        self._segment, self._fd, self._size = segment, fd, 0

    async def _seal_current(self) -> None:
        segment, fd = self._segment, self._fd
        self._segment, self._fd = None, -1
        try:
            size = os.fstat(fd).st_size
            os.close(fd)
            await self.meta.seal_segment(segment, size)
        except Exception as exc:  # noqa: BLE001 - an unsealed segment of a live owner is sealed when it exits
            log.warning("could not seal segment %s: %s", segment, exc)

    async def close(self) -> None:
        """Stop appending (at shutdown): let the batch in progress finish, then seal the open segment."""
        self._closed = True
        if self._flusher is not None:
            try:
                await self._flusher
            except Exception:  # noqa: BLE001 - its PUTs got the error
                pass
        if self._segment is not None:
            await self._seal_current()


# staging a small body ------------------------------------------------------------------------------------
_HASH_INLINE = 64 << 10  # digests of bodies up to this size are computed on the loop (MD5: ~90 µs at most)


async def gather(body: AsyncIterator[bytes], limit: int) -> tuple[list[bytes], int, AsyncIterator[bytes] | None]:
    """Read a body while it stays within ``limit`` bytes: (pieces, size, None) if it ended within it; else
    (pieces read so far, their size, an iterator over the whole body: those pieces, then the rest)."""
    pieces: list[bytes] = []
    size = 0
    iterator = body.__aiter__()
    async for chunk in iterator:
        pieces.append(chunk)
        size += len(chunk)
        if size > limit:
            return pieces, size, _chain(pieces, iterator)
    return pieces, size, None


async def _chain(first: list[bytes], rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    for piece in first:
        yield piece
    async for piece in rest:
        yield piece


def _digests(payload: bytes, algorithms: Iterable[str]) -> dict[str, bytes]:
    found = {}
    for algorithm in algorithms:
        hasher = new_hasher(algorithm)
        hasher.update(payload)
        found[algorithm] = hasher.digest()
    return found


async def digests(payload: bytes, algorithms: Iterable[str]) -> dict[str, bytes]:
    if len(payload) <= _HASH_INLINE:
        return _digests(payload, algorithms)
    return await ingest.run_io(_digests, payload, tuple(algorithms))
