"""Blobs as files in a local (or shared) directory.

Layout under ``root``::

    blobs/<3 hex>/<blob id>    committed blobs in 4096 fan-out directories
    tmp/<blob id>.<pid>        blobs being written; anything here at start is a crash leftover

Temp files live in their own directory on the same filesystem, so the rename into ``blobs/`` is atomic and a
crash leaves either no blob or a whole, fsynced one. A fan-out directory is made (and its parent fsynced, so the
directory itself survives a crash) the first time a blob lands in it; a process remembers which exist, so a
PUT pays for a ``mkdir`` at most once per directory. Making all 4096 at start cost 5 s on a discard-mounted
ext4, for every start of every server.

Blob writes stop short of a full disk: they fail with ENOSPC once the filesystem's free space would drop below a
reserve (1% of its size, at least 4 MiB, at most 256 MiB). The reserve is for the metadata store, which lives
on the same filesystem: with a disk full of blobs, a DELETE must still commit, or no client could free space.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import hashlib
import os
import re
import secrets
import stat
from typing import Iterator

from atoll.stores.data.base import FoundFile
from atoll.stores.data.segments import SegmentFiles, SegmentReaders, is_segment

_FANOUT_HEX = 3
_BLOB_NAME = re.compile(r"[0-9a-f]{32}")
_COPY_CHUNK = 64 << 20
_RESERVE_FRACTION = 100  # 1% of the filesystem ...
_RESERVE_MIN = 4 << 20  # ... but at least this ...
_RESERVE_MAX = 256 << 20  # ... and at most this stays free of blob data
_ROOM_CHECK_STEP = 1 << 20  # a writer checks the free space again after this many bytes


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _load_sync_file_range():
    """libc's sync_file_range(2), which Python's os module lacks; None where it is unavailable."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    fn.restype = ctypes.c_int
    return fn


_sync_file_range = _load_sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2
# Start writing a large blob to disk every this many bytes, while it is still being received: the final fsync
# then waits for the last few MiB instead of the whole object. On this project's test VMs a 1 GiB fsync alone
# took ~1.7 s, serialised after the upload; overlapped, the PUT runs at the disk's speed.
WRITEBACK_STEP = 8 << 20


class FileBlobWriter:
    __slots__ = ("blob_id", "_store", "_tmp", "_fd", "_done", "_written", "_flushed", "_room_checked")

    def __init__(self, store: "FileDataStore", blob_id: str) -> None:
        self.blob_id = blob_id
        self._store = store
        self._tmp = os.path.join(store.tmp_dir, f"{blob_id}.{temp_suffix(os.getpid())}")
        self._fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self._done = False
        self._written = 0
        self._flushed = 0
        self._room_checked = -_ROOM_CHECK_STEP

    @property
    def fd(self) -> int:
        return self._fd

    def write(self, data: bytes | memoryview) -> None:
        if self._written - self._room_checked >= _ROOM_CHECK_STEP:
            # Every MiB, not every write: concurrent writers overshoot the reserve by at most a MiB each.
            self._store.check_room(len(data))
            self._room_checked = self._written
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
            self._written += written
        if self._written - self._flushed >= WRITEBACK_STEP and _sync_file_range is not None:
            # Asynchronous: queues the range for writeback and returns; durability still comes from commit().
            _sync_file_range(self._fd, self._flushed, self._written - self._flushed, _SYNC_FILE_RANGE_WRITE)
            self._flushed = self._written

    def commit(self) -> None:
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = -1
        final = self._store.blob_path(self.blob_id)
        self._store.ensure_fanout_dir(os.path.dirname(final))
        os.rename(self._tmp, final)
        self._done = True
        fsync_dir(os.path.dirname(final))

    def abort(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if not self._done:
            try:
                os.unlink(self._tmp)
            except FileNotFoundError:
                pass
            self._done = True


# Temp files are named <blob>.<node tag>.<pid>: nodes on several hosts share tmp/, and their pids may collide.
_node_tag = ""


def set_node(node: str) -> None:
    """Name this process's temp files after its cluster node (a short hash: node names may contain dots)."""
    global _node_tag
    _node_tag = hashlib.blake2s(node.encode(), digest_size=4).hexdigest() if node else ""


def temp_suffix(pid: int) -> str:
    return f"{_node_tag}.{pid}" if _node_tag else str(pid)


class FileDataStore:
    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self.blob_dir = os.path.join(self.root, "blobs")
        self.tmp_dir = os.path.join(self.root, "tmp")
        self._prepare()
        # Small objects live as records in segment files; an extent's blob id says which store holds it.
        self.segments = SegmentFiles(self.root)
        self.segment_readers = SegmentReaders(self.segments)
        st = os.statvfs(self.root)
        self.reserve = min(max(st.f_blocks * st.f_frsize // _RESERVE_FRACTION, _RESERVE_MIN), _RESERVE_MAX)

    def _prepare(self) -> None:
        for path in (self.tmp_dir, self.blob_dir):
            if not os.path.isdir(path):
                os.makedirs(path, mode=0o700, exist_ok=True)
                fsync_dir(os.path.dirname(path))
        self._fanout_dirs: set[str] = set()

    def ensure_fanout_dir(self, path: str) -> None:
        if path in self._fanout_dirs:
            return
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        # fsync the parent even if another thread or process made the directory: its mkdir may not be durable
        # yet, and a blob committed into a directory whose own entry is lost is lost with it.
        fsync_dir(self.blob_dir)
        self._fanout_dirs.add(path)

    def check_room(self, size: int) -> None:
        st = os.statvfs(self.root)
        if st.f_bavail * st.f_frsize - size < self.reserve:
            raise OSError(errno.ENOSPC, "the data directory's filesystem is down to its free-space reserve")

    def new_blob_id(self) -> str:
        return secrets.token_hex(16)

    def blob_path(self, blob_id: str) -> str:
        if is_segment(blob_id):
            return self.segments.path(blob_id)
        return os.path.join(self.blob_dir, blob_id[:_FANOUT_HEX], blob_id)

    def create(self, blob_id: str | None = None) -> FileBlobWriter:
        return FileBlobWriter(self, blob_id or self.new_blob_id())

    def open_blob(self, blob_id: str) -> int:
        return os.open(self.blob_path(blob_id), os.O_RDONLY | os.O_CLOEXEC)

    def create_sparse(self, size: int, blob_id: str | None = None) -> str:
        """A committed blob of ``size`` zero bytes that takes no space yet: the target of a read-through fill,
        whose blocks are written in place (``open_for_fill``) and recorded in the metadata once durable."""
        writer = self.create(blob_id)
        try:
            os.ftruncate(writer.fd, size)
            writer.commit()
        except BaseException:
            writer.abort()
            raise
        return writer.blob_id

    def open_for_fill(self, blob_id: str) -> int:
        return os.open(self.blob_path(blob_id), os.O_RDWR | os.O_CLOEXEC)

    def has_blob(self, blob_id: str) -> bool:
        return os.path.exists(self.blob_path(blob_id))

    def copy_into(self, writer: FileBlobWriter, blob_id: str, offset: int, length: int) -> None:
        src = self.open_blob(blob_id)
        try:
            while length > 0:
                self.check_room(min(length, _COPY_CHUNK))
                try:
                    n = os.copy_file_range(src, writer.fd, min(length, _COPY_CHUNK), offset)
                except OSError as exc:
                    if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                        raise
                    n = self._copy_by_read(src, writer, offset, min(length, _COPY_CHUNK))
                if n == 0:
                    raise OSError(errno.EIO, f"blob {blob_id} is shorter than its metadata says")
                offset += n
                length -= n
        finally:
            os.close(src)

    @staticmethod
    def _copy_by_read(src: int, writer: FileBlobWriter, offset: int, length: int) -> int:
        data = os.pread(src, min(length, 8 << 20), offset)
        writer.write(data)
        return len(data)

    def delete(self, blob_id: str) -> None:
        if is_segment(blob_id):
            return  # a record dies when no object points at it; its segment goes only through compaction
        try:
            os.unlink(self.blob_path(blob_id))
        except FileNotFoundError:
            pass

    def remove_temp_files(self, pid: int | None = None, older_than: float | None = None) -> int:
        """Remove temp files: those of process ``pid`` of this node, or all, or (``older_than``) those unchanged
        since that time (another node's writes in flight keep theirs fresh)."""
        removed = 0
        for name in os.listdir(self.tmp_dir):
            if pid is not None and not name.endswith(f".{temp_suffix(pid)}"):
                continue
            if older_than is not None:
                try:
                    if os.stat(os.path.join(self.tmp_dir, name)).st_mtime >= older_than:
                        continue
                except FileNotFoundError:
                    continue
            try:
                os.unlink(os.path.join(self.tmp_dir, name))
                removed += 1
            except FileNotFoundError:
                pass
        return removed

    def iter_blob_ids(self):
        for sub in sorted(os.listdir(self.blob_dir)):
            yield from os.listdir(os.path.join(self.blob_dir, sub))

    # scans for fsck and start-up recovery ----------------------------------------------------------------
    def scan_blobs(self, changed_since: float | None = None) -> Iterator[FoundFile]:
        """A fan-out directory whose mtime is older than ``changed_since`` is skipped unread: a blob renamed into
        it since would have changed that. Names and types come from the listing (d_type), not from a stat."""
        with os.scandir(self.blob_dir) as top:
            subs = sorted(top, key=lambda e: e.name)
        for sub in subs:
            where = f"blobs/{sub.name}"
            if not sub.is_dir(follow_symlinks=False):
                yield FoundFile(where, None, regular=sub.is_file(follow_symlinks=False))  # beside the fan-out
                continue
            if changed_since is not None:
                try:
                    st = sub.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if max(st.st_mtime, st.st_ctime) < changed_since:
                    continue
            try:
                with os.scandir(sub.path) as entries:
                    listed = [(e.name, e.is_file(follow_symlinks=False)) for e in entries]
            except FileNotFoundError:
                continue
            for name, regular in listed:
                blob_id = name if regular and _is_blob_name(name, sub.name) else None
                yield FoundFile(f"{where}/{name}", blob_id, regular=regular)

    def scan_temp_files(self) -> Iterator[FoundFile]:
        with os.scandir(self.tmp_dir) as entries:
            names = [(e.name, e.is_file(follow_symlinks=False)) for e in entries]
        for name, regular in names:
            pid = name.rpartition(".")[2]
            found = self.stat_found(FoundFile(f"tmp/{name}", None, regular=regular,
                                              pid=int(pid) if pid.isdigit() else None))
            if found is not None:
                yield found

    def stat_found(self, found: FoundFile) -> FoundFile | None:
        path = self._found_path(found)
        if path is None:
            return None
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        return dataclasses.replace(found, size=st.st_size, changed=max(st.st_mtime, st.st_ctime),
                                   regular=stat.S_ISREG(st.st_mode))

    def blob_size(self, blob_id: str) -> int | None:
        try:
            return os.stat(self.blob_path(blob_id)).st_size
        except FileNotFoundError:
            return None

    def remove_found(self, found: FoundFile) -> bool:
        path = self._found_path(found)
        if path is None or not found.regular:
            return False
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
        return True

    def _found_path(self, found: FoundFile) -> str | None:
        parts = found.where.split("/")
        if parts[0] not in ("blobs", "tmp") or any(p in ("", ".", "..") for p in parts):
            return None  # not a name a scan of this store makes
        return os.path.join(self.root, *parts)


def _is_blob_name(name: str, fanout: str) -> bool:
    return name.startswith(fanout) and _BLOB_NAME.fullmatch(name) is not None
