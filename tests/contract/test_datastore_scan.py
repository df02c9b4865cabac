"""The scanning half of the data-store contract (fsck, start-up recovery): listing blobs and temp files, sizing
and removing what a scan found. Each test makes its own store (the module-wide ``data_store`` fixture of
test_datastore.py holds other tests' blobs); the last tests are the file store's own (its layout on disk).
"""

from __future__ import annotations

import os
import time

import pytest

from atoll.stores.data.base import FoundFile
from atoll.stores.data.files import FileDataStore
from contract.conftest import DATA_STORES


@pytest.fixture(params=sorted(DATA_STORES))
def store(request, tmp_path):
    return DATA_STORES[request.param](tmp_path)


def commit(store, data: bytes) -> str:
    writer = store.create()
    writer.write(data)
    writer.commit()
    return writer.blob_id


def test_scan_blobs_lists_every_committed_blob(store):
    ids = {commit(store, b"x" * n) for n in (0, 1, 5000)}
    found = list(store.scan_blobs())
    assert {f.blob_id for f in found} == ids
    assert all(f.regular and f.size is None and f.changed is None for f in found), "a listing, no stat per blob"
    sized = {f.blob_id: store.stat_found(f) for f in found}
    assert {b: f.size for b, f in sized.items()} == {b: store.blob_size(b) for b in ids}
    assert sorted(store.blob_size(b) for b in ids) == [0, 1, 5000]
    assert all(abs(f.changed - time.time()) < 60 for f in sized.values())
    assert store.blob_size(store.new_blob_id()) is None


def test_changed_since_lists_at_least_what_was_committed_since(store):
    old = commit(store, b"old")
    since = time.time() - 2.0  # the recovery's clock slack: file times come from a coarser clock
    new = {commit(store, b"new") for _ in range(20)}
    listed = {f.blob_id for f in store.scan_blobs(changed_since=since)}
    assert new <= listed
    assert old in {f.blob_id for f in store.scan_blobs()}


def test_temp_files_are_listed_with_their_writer(store):
    writer = store.create()
    writer.write(b"half")
    temps = list(store.scan_temp_files())
    assert len(temps) == 1 and temps[0].blob_id is None
    assert (temps[0].pid, temps[0].size, temps[0].regular) == (os.getpid(), 4, True)
    assert temps[0].changed is not None
    assert [f.blob_id for f in store.scan_blobs()] == [], "a temp file is not a blob"
    writer.abort()
    assert list(store.scan_temp_files()) == []


def test_remove_found(store):
    blob_id = commit(store, b"orphan")
    found = next(f for f in store.scan_blobs() if f.blob_id == blob_id)
    assert store.remove_found(found)
    assert store.blob_size(blob_id) is None
    assert not store.remove_found(found), "gone already"
    assert store.stat_found(found) is None
    writer = store.create()
    temp = next(store.scan_temp_files())
    assert store.remove_found(temp)
    assert list(store.scan_temp_files()) == []
    writer.abort()  # its temp file is gone: abort must not mind


# the file store's own --------------------------------------------------------------------------------------
def test_files_strays_are_listed_and_names_outside_the_store_refused(tmp_path):
    store = FileDataStore(str(tmp_path / "data"))
    blob_id = commit(store, b"real")
    blobs = os.path.join(store.root, "blobs")
    os.makedirs(os.path.join(blobs, "zzz"))
    planted = {"blobs/zzz/notes.txt": b"n", f"blobs/abc/{'f' * 32}": b"misplaced", "blobs/loose": b"top"}
    for where, content in planted.items():
        os.makedirs(os.path.dirname(os.path.join(store.root, where)), exist_ok=True)
        with open(os.path.join(store.root, where), "wb") as f:
            f.write(content)
    os.mkdir(os.path.join(blobs, blob_id[:3], "a-directory"))
    found = {f.where: f for f in store.scan_blobs()}
    assert found[f"blobs/{blob_id[:3]}/{blob_id}"].blob_id == blob_id
    strays = {where for where, f in found.items() if f.blob_id is None}
    assert strays == set(planted) | {f"blobs/{blob_id[:3]}/a-directory"}
    assert not found[f"blobs/{blob_id[:3]}/a-directory"].regular
    assert not store.remove_found(found[f"blobs/{blob_id[:3]}/a-directory"]), "directories are not removed"
    assert store.stat_found(found["blobs/loose"]).size == 3
    outside = tmp_path / "outside"
    outside.write_bytes(b"keep")
    for where in ("../outside", "blobs/../../outside", "/etc/passwd", "meta.sqlite3"):
        assert not store.remove_found(FoundFile(where, None))
        assert store.stat_found(FoundFile(where, None)) is None
    assert outside.read_bytes() == b"keep"


def test_files_changed_since_skips_directories_untouched_since(tmp_path):
    store = FileDataStore(str(tmp_path / "data"))
    ids = [commit(store, b"x") for _ in range(30)]
    assert list(store.scan_blobs(changed_since=time.time() + 60)) == []
    new = commit(store, b"y")
    listed = {f.blob_id for f in store.scan_blobs(changed_since=time.time() - 2)}
    assert new in listed and set(ids) | {new} >= listed
