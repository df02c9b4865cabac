"""Streaming a request body into a durable blob while hashing it, without blocking the event loop.

Small bodies (the common case for KV-cache blocks and metadata files) are gathered in memory and written,
fsynced and renamed in a single thread hop. Large bodies go through a two-thread pipeline: one thread hashes
(MD5 is the PUT bottleneck at ~0.75 GB/s on one core, perf-baseline.md §2), the other writes, while the event
loop keeps receiving. In-flight bytes are bounded, so a fast client on a slow disk is slowed by TCP back-pressure
instead of growing memory.

The blob is *staged*: digests are known before it is committed, so the caller can compare them with what the
client declared (Content-MD5, x-amz-checksum-*, a trailer that arrives after the body) and abort on mismatch.
"""

from __future__ import annotations

import asyncio
import errno
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable, Iterable

from atoll import errors
from atoll.core.checksums import new_hasher
from atoll.stores.data.base import BlobWriter, DataStore

INLINE_LIMIT = 256 << 10  # bodies up to this size are written in one thread hop
MAX_IN_FLIGHT = 32 << 20  # bytes received but not yet hashed and written, per upload
# ... and over all uploads of the process, which makes it the limit of a lone upload too: the parts of one object
# sent in parallel (8 at a time is common) must not multiply the memory a slow disk lets pile up.
MAX_IN_FLIGHT_TOTAL = 24 << 20
_CHUNK = 1 << 20

# One pool for all blocking data-path work; two threads per large upload plus short jobs.
_pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="atoll-io")


def io_pool() -> ThreadPoolExecutor:
    return _pool


async def run_io(fn, *args):
    return await asyncio.get_running_loop().run_in_executor(_pool, fn, *args)


async def run_data_io(fn, *args):
    """``run_io`` for data-store work that writes: a full disk becomes InsufficientStorage and any other I/O error
    Unavailable (clean 503s, not tracebacks). FileNotFoundError passes: callers decide what a vanished blob
    means (a copy source replaced meanwhile is a conflict)."""
    try:
        return await run_io(fn, *args)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise storage_error(exc) from exc


@dataclass(slots=True)
class StagedBlob:
    """A blob written but not yet durable under its id. ``commit`` or ``abort`` exactly once."""

    writer: BlobWriter
    size: int
    digests: dict[str, bytes] = field(default_factory=dict)  # algorithm ("md5", "crc32", ...) -> digest

    @property
    def blob_id(self) -> str:
        return self.writer.blob_id

    async def commit(self) -> None:
        try:
            await run_io(self.writer.commit)
        except OSError as exc:
            await run_io(self.writer.abort)
            raise storage_error(exc) from exc

    async def abort(self) -> None:
        await _abort_shielded(self.writer)


async def _abort_shielded(writer: BlobWriter) -> None:
    # Shielded: a second cancellation (a job cancelled while cleaning up) must not leave the temp file behind.
    await asyncio.shield(run_io(writer.abort))


def storage_error(exc: OSError) -> errors.AtollError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return errors.InsufficientStorage("The warm tier is out of space; retry later.", retry_after=5)
    return errors.Unavailable("A storage error occurred; retry later.")


def _write_and_hash(writer: BlobWriter, hashers: dict, pieces: Iterable[bytes]) -> None:
    for piece in pieces:
        for hasher in hashers.values():
            hasher.update(piece)
        writer.write(piece)


async def stage(store: DataStore, body: AsyncIterator[bytes], algorithms: Iterable[str],
                max_size: int | None = None) -> StagedBlob:
    """Write ``body`` to a new blob, computing the digests named in ``algorithms``.

    Raises EntityTooLarge past ``max_size`` bytes, InsufficientStorage when the disk is full; the temp file is
    removed on any failure, including the client going away.
    """
    hashers = {alg: new_hasher(alg) for alg in algorithms}
    writer = await run_data_io(store.create)
    pieces: list[bytes] = []
    size = 0
    try:
        iterator = body.__aiter__()
        async for chunk in iterator:
            size += len(chunk)
            if max_size is not None and size > max_size:
                raise errors.EntityTooLarge(f"Your proposed upload exceeds the maximum allowed size of {max_size} bytes.")
            pieces.append(chunk)
            if size > INLINE_LIMIT:
                size = await _pipeline(writer, hashers, pieces, size, iterator, max_size)
                pieces = []
                break
        if pieces:
            await run_io(_write_and_hash, writer, hashers, pieces)
    except OSError as exc:
        await _abort_shielded(writer)
        raise storage_error(exc) from exc
    except BaseException:
        await _abort_shielded(writer)
        raise
    return StagedBlob(writer, size, {alg: h.digest() for alg, h in hashers.items()})


class _Budget:
    """Bytes in flight over every pipeline of the process, and the re-checks of pipelines waiting for that to
    drop. Only touched on the event loop thread."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.waiting: set[Callable[[], None]] = set()


_budget = _Budget()


class _Worker(threading.Thread):
    """Applies one operation to every buffer in order; reports the first error."""

    def __init__(self, op, release) -> None:
        super().__init__(daemon=True)
        self.op = op
        self.release = release
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.error: BaseException | None = None

    def run(self) -> None:
        while True:
            item = self.inbox.get()
            if item is None:
                return
            if self.error is None:
                try:
                    self.op(item)
                except BaseException as exc:  # noqa: BLE001 - surfaced by the pipeline
                    self.error = exc
            self.release(len(item))


async def _pipeline(writer: BlobWriter, hashers: dict, first: list[bytes], size: int,
                    iterator: AsyncIterator[bytes], max_size: int | None) -> int:
    loop = asyncio.get_running_loop()
    in_flight = 0
    room = asyncio.Event()
    room.set()
    lock = threading.Lock()
    done_counts = {"hash": 0, "write": 0}

    def released(kind: str, n: int) -> None:
        nonlocal in_flight
        with lock:
            done_counts[kind] += n
            # A buffer is free once both threads are done with it.
            settled = min(done_counts["hash"], done_counts["write"])
        loop.call_soon_threadsafe(_settle_room, settled)

    accounted = 0
    submitted = 0

    def has_room() -> bool:
        return submitted - accounted <= MAX_IN_FLIGHT and _budget.in_flight <= MAX_IN_FLIGHT_TOTAL

    def recheck() -> None:
        if has_room():
            room.set()

    def _settle_room(settled: int) -> None:
        nonlocal accounted
        if settled <= accounted:  # the two threads' callbacks can arrive out of order
            return
        _budget.in_flight -= settled - accounted
        accounted = settled
        recheck()
        for other in list(_budget.waiting):
            other()

    def hash_all(buf: bytes) -> None:
        for hasher in hashers.values():
            hasher.update(buf)

    workers = [_Worker(hash_all, lambda n: released("hash", n)),
               _Worker(writer.write, lambda n: released("write", n))]
    if not hashers:
        workers[0].op = lambda buf: None
    for worker in workers:
        worker.start()

    def submit(buf: bytes) -> None:
        nonlocal submitted
        submitted += len(buf)
        _budget.in_flight += len(buf)
        for worker in workers:
            worker.inbox.put(buf)
        if not has_room():
            room.clear()

    try:
        submit(b"".join(first))
        async for chunk in iterator:
            size += len(chunk)
            if max_size is not None and size > max_size:
                raise errors.EntityTooLarge(f"Your proposed upload exceeds the maximum allowed size of {max_size} bytes.")
            submit(chunk)
            if not room.is_set():
                _budget.waiting.add(recheck)
                try:
                    await room.wait()
                finally:
                    _budget.waiting.discard(recheck)
            if workers[1].error is not None:
                raise workers[1].error
    finally:
        for worker in workers:
            worker.inbox.put(None)
        try:
            await loop.run_in_executor(_pool, lambda: [w.join() for w in workers])
        finally:
            # Every buffer is settled now; give them all back at once (late callbacks are then no-ops), so the
            # process-wide count cannot drift whatever happened.
            _settle_room(submitted)
    for worker in workers:
        if worker.error is not None:
            raise worker.error
    return size


async def read_range_into(store: DataStore, writer: BlobWriter, blob_id: str, offset: int, length: int) -> None:
    """Append a byte range of an existing blob to ``writer`` (server-side copy), off the event loop."""
    await run_data_io(store.copy_into, writer, blob_id, offset, length)
