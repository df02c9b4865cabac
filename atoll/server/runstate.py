"""Who uses a data directory now, and whether the last server using it stopped cleanly.

Several nodes of a cluster may share one data directory (docs/cluster.md): each keeps its run state under
``<data_dir>/run/<node>/`` (``node_dir``) — its lock, its incarnation marker, its QoS table and metrics files — and
no node ever locks another's files. Without a node (``atoll fsck --repair``, older layouts) the names below are
directly under ``<data_dir>/run/``.

``<data_dir>/run/<node>/serve.lock`` is locked (``flock``, exclusive) by a server for as long as any of its processes
lives (workers inherit the descriptor across ``fork``) and by ``atoll fsck --repair`` while it repairs. The
kernel drops the lock when the last holder dies, SIGKILL included, so "does a server run here" has a reliable
answer, and neither a second server nor an offline repair can start beside a running server.

``<data_dir>/run/incarnation`` holds the running (or last) server's start time. A clean stop removes it; a server
that finds it at start knows the previous one did not stop cleanly, and from when on it may have left blobs
that no metadata commit refers to (atoll.core.recovery reclaims them).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import time

from atoll.stores.data.files import fsync_dir

LOCK_NAME = "serve.lock"
MARKER_NAME = "incarnation"


class DataDirBusy(Exception):
    """Another process holds the data directory's lock."""


def run_dir(data_dir: str) -> str:
    return os.path.join(os.path.abspath(data_dir), "run")


def node_dir(data_dir: str, node: str | None) -> str:
    """Where node ``node`` keeps its run state (``run_dir`` itself for ``None``)."""
    return os.path.join(run_dir(data_dir), node) if node else run_dir(data_dir)


def _lock_paths(data_dir: str) -> list[str]:
    """Every lock file of the data directory: the node-less one and each node's."""
    top = run_dir(data_dir)
    paths = [os.path.join(top, LOCK_NAME)]
    try:
        entries = sorted(os.scandir(top), key=lambda e: e.name)
    except FileNotFoundError:
        return paths
    paths += [os.path.join(e.path, LOCK_NAME) for e in entries if e.is_dir(follow_symlinks=False)
              and os.path.exists(os.path.join(e.path, LOCK_NAME))]
    return paths


class DataDirLock:
    """The exclusive lock of a data directory, held until ``release`` or the death of every process that
    inherited it. Nothing else may close its descriptor."""

    def __init__(self, fd: int, others: tuple["DataDirLock", ...] = ()) -> None:
        self._fd = fd
        self._others = others

    @classmethod
    def acquire(cls, data_dir: str, wait: float = 0.0, node: str | None = None) -> "DataDirLock":
        """Take the lock of node ``node`` (another node may run on the same directory), or with ``None`` the
        whole directory: the node-less lock and every node's (an offline repair). Retries for up to ``wait``
        seconds (the processes of a server killed a moment ago may still be exiting). Raises DataDirBusy."""
        if node:
            return cls._acquire_path(os.path.join(node_dir(data_dir, node), LOCK_NAME), data_dir, wait)
        held: list[DataDirLock] = []
        try:
            for path in _lock_paths(data_dir):
                held.append(cls._acquire_path(path, data_dir, wait))
        except BaseException:
            for lock in held:
                lock.release()
            raise
        return cls(held[0]._fd, tuple(held[1:]))

    @classmethod
    def _acquire_path(cls, path: str, data_dir: str, wait: float) -> "DataDirLock":
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return cls(fd)
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    os.close(fd)
                    raise
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise DataDirBusy(data_dir) from None
                time.sleep(0.05)

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        for other in self._others:
            other.release()


def in_use(data_dir: str) -> bool:
    """Whether a server (any node of this host) or an offline repair holds the data directory now."""
    for path in _lock_paths(data_dir):
        if not os.path.exists(path):
            continue
        try:
            DataDirLock._acquire_path(path, data_dir, 0.0).release()
        except DataDirBusy:
            return True
    return False


def unclean_since(data_dir: str, node: str | None = None) -> float | None:
    """The start time of a server (node) that did not stop cleanly (0.0 if its marker is unreadable: assume the
    worst), or None if the last one stopped cleanly (or none ever ran)."""
    try:
        with open(os.path.join(node_dir(data_dir, node), MARKER_NAME), encoding="utf-8") as f:
            return float(json.load(f)["started"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0


def begin(data_dir: str, started: float, node: str | None = None) -> None:
    """Record that a server started at ``started`` is running (durably, before it writes anything)."""
    directory = node_dir(data_dir, node)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    path = os.path.join(directory, MARKER_NAME)
    tmp = f"{path}.{os.getpid()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, json.dumps({"started": started, "pid": os.getpid()}).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(directory)


def end(data_dir: str, node: str | None = None) -> None:
    """Record a clean stop: every process of the server has exited and left nothing half done."""
    directory = node_dir(data_dir, node)
    try:
        os.unlink(os.path.join(directory, MARKER_NAME))
    except FileNotFoundError:
        return
    fsync_dir(directory)
