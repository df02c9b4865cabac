"""The executable form of ``atoll/stores/data/base.py``: every DataStore implementation must pass all of this.

Failure cases are real: a write fails because the process's file-size limit (RLIMIT_FSIZE) is hit, and a
"crashed" writer is a child process killed with SIGKILL in the middle of a blob.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap

import pytest


def read_blob(store, blob_id: str) -> bytes:
    fd = store.open_blob(blob_id)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def write_blob(store, data: bytes, pieces: int = 3) -> str:
    writer = store.create()
    step = max(1, len(data) // pieces)
    for i in range(0, len(data), step):
        writer.write(memoryview(data)[i:i + step] if i % 2 else data[i:i + step])
    writer.commit()
    return writer.blob_id


def test_create_write_commit_open(data_store):
    data = os.urandom(300_001)
    blob_id = write_blob(data_store, data)
    assert data_store.has_blob(blob_id)
    assert read_blob(data_store, blob_id) == data
    assert blob_id in set(data_store.iter_blob_ids())

    empty = write_blob(data_store, b"")
    assert read_blob(data_store, empty) == b""

    chosen = data_store.new_blob_id()
    writer = data_store.create(chosen)
    assert writer.blob_id == chosen
    writer.write(b"named")
    writer.commit()
    assert read_blob(data_store, chosen) == b"named"
    writer.abort()  # abort after commit keeps the blob
    assert read_blob(data_store, chosen) == b"named"


def test_uncommitted_blob_is_invisible_and_abort_drops_it(data_store):
    writer = data_store.create()
    writer.write(b"x" * 1000)
    assert not data_store.has_blob(writer.blob_id)
    with pytest.raises(FileNotFoundError):
        data_store.open_blob(writer.blob_id)
    assert writer.blob_id not in set(data_store.iter_blob_ids())
    writer.abort()
    writer.abort()  # more than once is fine
    assert not data_store.has_blob(writer.blob_id)
    assert data_store.remove_temp_files() == 0, "abort must leave no temp file behind"


def test_open_missing_blob(data_store):
    with pytest.raises(FileNotFoundError):
        data_store.open_blob(data_store.new_blob_id())
    assert not data_store.has_blob(data_store.new_blob_id())


def test_delete_is_idempotent(data_store):
    blob_id = write_blob(data_store, b"bye")
    data_store.delete(blob_id)
    assert not data_store.has_blob(blob_id)
    with pytest.raises(FileNotFoundError):
        data_store.open_blob(blob_id)
    data_store.delete(blob_id)
    data_store.delete(data_store.new_blob_id())
    assert blob_id not in set(data_store.iter_blob_ids())


def test_open_fd_survives_delete(data_store):
    # The collector may delete a blob a reader opened just before (the grace period covers lookups, not reads).
    blob_id = write_blob(data_store, b"still readable")
    fd = data_store.open_blob(blob_id)
    try:
        data_store.delete(blob_id)
        assert os.pread(fd, 100, 0) == b"still readable"
    finally:
        os.close(fd)


def test_ids_never_collide(data_store):
    ids = {data_store.new_blob_id() for _ in range(20_000)}
    assert len(ids) == 20_000
    for blob_id in list(ids)[:200]:
        assert blob_id and "/" not in blob_id and "\0" not in blob_id and not blob_id.startswith(".")
    writers = [data_store.create() for _ in range(50)]
    assert len({w.blob_id for w in writers}) == 50
    for w in writers:
        w.abort()


def test_copy_into_ranges(data_store):
    data = bytes(range(256)) * 4096 + os.urandom(12345)  # ~1 MiB
    source = write_blob(data_store, data)
    ranges = [(0, len(data)), (0, 1), (len(data) - 1, 1), (1000, 0), (4095, 70_000), (123_457, 500_000)]
    for offset, length in ranges:
        writer = data_store.create()
        data_store.copy_into(writer, source, offset, length)
        writer.commit()
        assert read_blob(data_store, writer.blob_id) == data[offset:offset + length], (offset, length)

    # Several ranges appended to one writer, behind bytes written directly.
    writer = data_store.create()
    writer.write(b"head:")
    data_store.copy_into(writer, source, 10, 20)
    data_store.copy_into(writer, source, 500_000, 30)
    writer.commit()
    assert read_blob(data_store, writer.blob_id) == b"head:" + data[10:30] + data[500_000:500_030]


def test_copy_past_the_end_of_a_blob_fails(data_store):
    source = write_blob(data_store, b"short")
    writer = data_store.create()
    with pytest.raises(OSError):
        data_store.copy_into(writer, source, 2, 100)
    writer.abort()
    writer = data_store.create()
    with pytest.raises(FileNotFoundError):
        data_store.copy_into(writer, data_store.new_blob_id(), 0, 1)
    writer.abort()
    assert data_store.remove_temp_files() == 0


def _run_child(data_store, body: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run ``body`` in a fresh interpreter with ``store`` opened on the same directory as ``data_store``."""
    script = textwrap.dedent(f"""
        import os, signal, resource, sys
        from {type(data_store).__module__} import {type(data_store).__name__} as Store
        store = Store({data_store.root!r})
    """) + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout)


def test_abort_after_a_failed_write(data_store):
    # The child caps its file size, so a write really fails with EFBIG (as ENOSPC would), then aborts.
    child = _run_child(data_store, """
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        writer = store.create()
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        try:
            writer.write(b"z" * (256 * 1024))
        except OSError as exc:
            print("failed", exc.errno)
            writer.abort()
            writer.abort()
        print(writer.blob_id)
    """)
    assert child.returncode == 0, child.stderr
    status, blob_id = child.stdout.split("\n")[:2]
    assert status == f"failed {errno.EFBIG}"
    assert not data_store.has_blob(blob_id)
    assert data_store.remove_temp_files() == 0, "the failed writer's temp file must be gone"
    assert blob_id not in set(data_store.iter_blob_ids())


def test_crashed_writer_leaves_no_visible_blob_and_its_temp_file_is_removed_at_start(data_store):
    committed = write_blob(data_store, b"committed before the crash")
    data_store.remove_temp_files()  # count only this test's leftovers below
    child = _run_child(data_store, """
        writer = store.create()
        writer.write(b"partial" * 100000)
        print(writer.blob_id, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    assert child.returncode == -9, child.stderr
    crashed = child.stdout.strip()
    assert crashed and not data_store.has_blob(crashed)
    with pytest.raises(FileNotFoundError):
        data_store.open_blob(crashed)
    listed = set(data_store.iter_blob_ids())
    assert committed in listed and crashed not in listed

    # A restart (a new store object on the same directory) removes the leftover, and only that.
    restarted = type(data_store)(data_store.root)
    assert restarted.remove_temp_files() == 1
    assert restarted.remove_temp_files() == 0
    assert read_blob(restarted, committed) == b"committed before the crash"
    assert not restarted.has_blob(crashed)


def test_check_room_refuses_what_would_not_leave_the_reserve(data_store):
    data_store.check_room(1 << 20)  # the test filesystem has a MiB to spare
    with pytest.raises(OSError) as full:
        data_store.check_room(1 << 62)
    assert full.value.errno == errno.ENOSPC
