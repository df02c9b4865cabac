"""The data directory's lock and clean-stop marker (atoll.server.runstate), and the start-up reclamation of
unreferenced blobs (atoll.core.recovery) on real stores in a temp directory."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time

import pytest

from atoll.core.models import Bucket, Extent, ObjectVersion, Part, Upload
from atoll.core.recovery import reclaim_orphan_blobs
from atoll.server import runstate
from atoll.stores.data.files import FileDataStore
from atoll.stores.meta.sqlite import SqliteMetaStore


def test_the_lock_is_exclusive_and_waits(tmp_path):
    data_dir = str(tmp_path / "data")
    assert not runstate.in_use(data_dir)
    held = runstate.DataDirLock.acquire(data_dir)
    assert runstate.in_use(data_dir)
    started = time.monotonic()
    with pytest.raises(runstate.DataDirBusy):
        runstate.DataDirLock.acquire(data_dir, wait=0.3)
    assert time.monotonic() - started >= 0.3
    threading.Timer(0.2, held.release).start()
    runstate.DataDirLock.acquire(data_dir, wait=5.0).release()  # taken as soon as the holder lets go
    assert not runstate.in_use(data_dir)


def test_the_lock_outlives_its_taker_in_a_forked_child(tmp_path):
    data_dir = str(tmp_path / "data")
    lock = runstate.DataDirLock.acquire(data_dir)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # a worker: holds the inherited lock until told to exit
        os.close(write)
        os.read(read, 1)
        os._exit(0)
    os.close(read)
    lock.release()
    assert runstate.in_use(data_dir), "the worker still holds the inherited descriptor"
    os.close(write)
    os.waitpid(pid, 0)
    assert not runstate.in_use(data_dir)


def test_the_marker_tells_a_crash_from_a_clean_stop(tmp_path):
    data_dir = str(tmp_path / "data")
    assert runstate.unclean_since(data_dir) is None
    runstate.begin(data_dir, 1234.5)
    assert runstate.unclean_since(data_dir) == 1234.5
    runstate.begin(data_dir, 99.0)
    assert runstate.unclean_since(data_dir) == 99.0
    runstate.end(data_dir)
    assert runstate.unclean_since(data_dir) is None
    runstate.end(data_dir)
    with open(os.path.join(runstate.run_dir(data_dir), runstate.MARKER_NAME), "w") as f:
        f.write("{torn")
    assert runstate.unclean_since(data_dir) == 0.0, "unreadable: assume the worst (look everywhere)"
    assert os.listdir(runstate.run_dir(data_dir)) == [runstate.MARKER_NAME]


def test_reclaim_removes_only_unreferenced_blobs(tmp_path):
    data = FileDataStore(str(tmp_path / "data"))
    meta = SqliteMetaStore(str(tmp_path / "data" / "meta.sqlite3"))

    def commit(body: bytes) -> str:
        writer = data.create()
        writer.write(body)
        writer.commit()
        return writer.blob_id

    async def run() -> None:
        await meta.open()
        try:
            await meta.create_bucket(Bucket("bkt", "o", time.time()))
            kept = [commit(b"object"), commit(b"part"), commit(b"garbage")]
            await meta.put_object(ObjectVersion("bkt", "k", kept[0], 6, hashlib.md5(b"object").hexdigest(),
                                                time.time(), extents=[Extent(kept[0], 0, 6)]))
            await meta.create_upload(Upload("u1", "bkt", "mp", time.time(), "o"))
            await meta.put_part(Part("u1", 1, 4, "e", kept[1], time.time()))
            await meta.put_object(ObjectVersion("bkt", "gone", kept[2], 7, "e", time.time(),
                                                extents=[Extent(kept[2], 0, 7)]))
            await meta.delete_object("bkt", "gone")  # its blob waits for the collector
            orphans = [commit(b"cut off") for _ in range(3)]
            nothing = await reclaim_orphan_blobs(meta, data, time.time() + 60)
            assert (nothing.examined, nothing.removed) == (0, 0), "no region changed since: nothing is read"
            done = await reclaim_orphan_blobs(meta, data, time.time() - 60)
            assert (done.examined, done.removed) == (6, 3)
            assert all(data.has_blob(b) for b in kept) and not any(data.has_blob(b) for b in orphans)
        finally:
            await meta.close()

    asyncio.run(run())
