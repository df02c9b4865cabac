"""Segment files: small objects appended one after another to large files (the packed store's data side).

Layout under the data directory::

    segments/<segment id>    "s" + 31 hex digits; one writer (the process that made it) appends, everyone reads

A record is a 12-byte header (magic ``AtP1``, payload length u32 LE, ``zlib.crc32`` of the payload u32 LE) and the
payload; an object's extent points at the payload, so reads never parse headers. The headers are for scans
(fsck, a compactor that wants to check what it copies). Nothing here knows which records are alive: that is the
metadata store's reverse index (``packed_refs``) — a record no object points at is dead, whether it was
overwritten, deleted, or written by a PUT that crashed before its metadata commit.

Durability: a batch of records is written with one ``pwritev`` and made durable with one ``fdatasync`` (group
commit); nobody acknowledges a record before that returns. A segment is never appended to again once its
writer is gone, so a torn tail (a crash in mid-batch) is only ever at the end of a segment nobody references.
All functions here block: callers run them off the event loop, except ``SegmentReaders.pread`` for small
records (a page-cache read of a few KiB, cheaper than a thread hop — the same call the file store's small-object
path makes).
"""

from __future__ import annotations

import errno
import os
import secrets
import struct
import time
import zlib
from dataclasses import dataclass
from typing import Iterator, Sequence

SEGMENT_PREFIX = "s"
RECORD_HEADER = struct.Struct("<4sII")
RECORD_MAGIC = b"AtP1"
_IOV_MAX = 1024  # pwritev takes at most this many buffers per call (Linux UIO_MAXIOV)


def is_segment(blob_id: str) -> bool:
    """Whether an extent's blob id names a segment (a record in it) rather than a blob file."""
    return blob_id.startswith(SEGMENT_PREFIX)


def new_segment_id() -> str:
    return SEGMENT_PREFIX + secrets.token_hex(16)[1:]


@dataclass(slots=True)
class Record:
    """A record found by a scan: payload at ``offset`` (just after its header), ``length`` bytes."""

    offset: int
    length: int
    crc: int


class SegmentFiles:
    """Create, append to, scan and delete segment files in ``<root>/segments``."""

    def __init__(self, root: str) -> None:
        self.dir = os.path.join(os.path.abspath(root), "segments")
        if not os.path.isdir(self.dir):
            os.makedirs(self.dir, mode=0o700, exist_ok=True)
            _fsync_dir(os.path.dirname(self.dir))

    def path(self, segment_id: str) -> str:
        return os.path.join(self.dir, segment_id)

    def create(self, segment_id: str) -> int:
        """Make an empty segment durable under its name; returns an fd open for appending (pwritev)."""
        fd = os.open(self.path(segment_id), os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            _fsync_dir(self.dir)
        except BaseException:
            os.close(fd)
            raise
        return fd

    @staticmethod
    def append(fd: int, at: int, payloads: Sequence[bytes | memoryview]) -> list[int]:
        """Write ``payloads`` as records from offset ``at`` and make them durable (one fdatasync); returns each
        payload's offset. On an error nothing of this batch may be used: the caller stops appending to the
        segment (what was written is unreferenced, hence dead)."""
        buffers: list[bytes | memoryview] = []
        offsets = []
        position = at
        for payload in payloads:
            length = len(payload)
            buffers.append(RECORD_HEADER.pack(RECORD_MAGIC, length, zlib.crc32(payload)))
            buffers.append(payload)
            offsets.append(position + RECORD_HEADER.size)
            position += RECORD_HEADER.size + length
        end = position
        position = at
        for start in range(0, len(buffers), _IOV_MAX):
            chunk = buffers[start:start + _IOV_MAX]
            want = sum(len(b) for b in chunk)
            written = os.pwritev(fd, chunk, position)
            if written != want:  # short write: finish it buffer by buffer
                _finish_short_write(fd, chunk, position, written)
            position += want
        if position != end:
            raise OSError(errno.EIO, "segment append wrote an unexpected number of bytes")
        os.fdatasync(fd)
        return offsets

    def size(self, segment_id: str) -> int | None:
        try:
            return os.stat(self.path(segment_id)).st_size
        except FileNotFoundError:
            return None

    def delete(self, segment_id: str) -> bool:
        try:
            os.unlink(self.path(segment_id))
        except FileNotFoundError:
            return False
        return True

    def list_ids(self) -> list[str]:
        """Every segment file's id (names that are not segment ids are left to fsck's stray-file check)."""
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if is_segment(n) and len(n) == 32)

    def changed(self, segment_id: str) -> float | None:
        try:
            st = os.stat(self.path(segment_id))
        except FileNotFoundError:
            return None
        return max(st.st_mtime, st.st_ctime)

    def scan(self, segment_id: str) -> Iterator[Record]:
        """The records of a segment in order, stopping at the first torn or foreign header (a crash's tail)."""
        with open(self.path(segment_id), "rb", buffering=1 << 20) as f:
            position = 0
            while True:
                header = f.read(RECORD_HEADER.size)
                if len(header) < RECORD_HEADER.size:
                    return
                magic, length, crc = RECORD_HEADER.unpack(header)
                if magic != RECORD_MAGIC:
                    return
                start = position + RECORD_HEADER.size
                f.seek(length, os.SEEK_CUR)
                position = start + length
                if position > os.fstat(f.fileno()).st_size:
                    return
                yield Record(start, length, crc)

    def check_record(self, segment_id: str, offset: int, length: int) -> str | None:
        """None if a whole, intact record of ``length`` bytes has its payload at ``offset``; else what is wrong."""
        try:
            fd = os.open(self.path(segment_id), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return "segment file missing"
        try:
            if offset < RECORD_HEADER.size:
                return "offset inside the first header"
            header = os.pread(fd, RECORD_HEADER.size, offset - RECORD_HEADER.size)
            if len(header) < RECORD_HEADER.size:
                return "beyond the end of the segment"
            magic, stored_length, crc = RECORD_HEADER.unpack(header)
            if magic != RECORD_MAGIC:
                return "no record header at this offset"
            if stored_length != length:
                return f"record holds {stored_length} bytes, metadata says {length}"
            found = 0
            position = offset
            while position < offset + length:
                piece = os.pread(fd, min(8 << 20, offset + length - position), position)
                if not piece:
                    return "record cut short"
                found = zlib.crc32(piece, found)
                position += len(piece)
            return None if found == crc else "record CRC mismatch"
        finally:
            os.close(fd)


def _finish_short_write(fd: int, buffers: Sequence[bytes | memoryview], position: int, written: int) -> None:
    skip = written
    for buffer in buffers:
        view = memoryview(buffer)
        if skip >= len(view):
            skip -= len(view)
            position += len(view)
            continue
        view = view[skip:]
        position += skip
        skip = 0
        while view:
            n = os.pwrite(fd, view, position)
            if n <= 0:
                raise OSError(errno.EIO, "segment append made no progress")
            view = view[n:]
            position += n


class SegmentReaders:
    """Read-only fds of segments, opened once per process and kept: a small GET is one ``pread`` on a cached fd,
    with no open/close. ``sweep`` closes the fds of segments deleted since (compacted away), which frees their
    disk space, and of segments not read for a while. Not thread-safe: used from the event loop only (an fd
    closed by one thread while another reads through it could be reused for another file in between)."""

    IDLE_CLOSE = 60.0

    def __init__(self, files: SegmentFiles) -> None:
        self._files = files
        self._fds: dict[str, int] = {}
        self._used: dict[str, float] = {}

    def fd(self, segment_id: str) -> int:
        fd = self._fds.get(segment_id)
        if fd is None:
            fd = os.open(self._files.path(segment_id), os.O_RDONLY | os.O_CLOEXEC)
            self._fds[segment_id] = fd
        self._used[segment_id] = time.monotonic()
        return fd

    def pread(self, segment_id: str, offset: int, length: int) -> bytes:
        data = os.pread(self.fd(segment_id), length, offset)
        if len(data) < length:
            # Another node appended the record after this fd was opened: on a shared filesystem (NFS's
            # close-to-open consistency) only an open made after the writer's flush is sure to see it.
            self.reopen(segment_id)
            data = os.pread(self.fd(segment_id), length, offset)
        return data

    def reopen(self, segment_id: str) -> None:
        """Drop the cached fd; the next use opens the file afresh."""
        fd = self._fds.pop(segment_id, None)
        self._used.pop(segment_id, None)
        if fd is not None:
            os.close(fd)

    def dup(self, segment_id: str) -> int:
        """An fd of its own for the caller to close (sendfile of a larger record)."""
        return os.dup(self.fd(segment_id))

    def sweep(self) -> int:
        """Close fds of deleted or idle segments; returns how many."""
        now = time.monotonic()
        closed = 0
        for segment_id, fd in list(self._fds.items()):
            try:
                gone = os.fstat(fd).st_nlink == 0
            except OSError:
                gone = True
            if gone or now - self._used.get(segment_id, 0.0) > self.IDLE_CLOSE:
                del self._fds[segment_id]
                self._used.pop(segment_id, None)
                os.close(fd)
                closed += 1
        return closed

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self._used.clear()


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
