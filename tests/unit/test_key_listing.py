"""core.listing against a real SqliteMetaStore, compared with a naive model of S3 listing semantics.

The model: keys in UTF-8 byte order, those after ``start_after`` under ``prefix``; with a delimiter, a key whose
rest (after the prefix) contains it rolls up into the common prefix ending at its first occurrence, and a common
prefix counts once toward max-keys. A ``start_after`` that is itself a common prefix (what a v1 NextMarker or a
v2 continuation token names after a page that ended on a prefix) skips every key under it.
"""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from atoll.core.listing import list_page, prefix_successor
from atoll.core.models import Bucket, Extent, ObjectVersion
from atoll.stores.meta.sqlite import SqliteMetaStore

BUCKET = "listing"


def utf8_sorted(keys):
    return sorted(keys, key=lambda k: k.encode("utf-8"))


def reference(keys, prefix="", delimiter="", start_after=""):
    """Every entry of the full listing, in order: ("key", k) or ("prefix", cp)."""
    skip = None
    if delimiter and start_after.startswith(prefix):
        at = start_after.find(delimiter, len(prefix))
        if at >= 0 and at + len(delimiter) == len(start_after):
            skip = start_after
    out = []
    for key in utf8_sorted(keys):
        if not key.startswith(prefix) or key.encode() <= start_after.encode():
            continue
        if skip is not None and key.startswith(skip):
            continue
        if delimiter:
            at = key.find(delimiter, len(prefix))
            if at >= 0:
                common = key[:at + len(delimiter)]
                if out and out[-1] == ("prefix", common):
                    continue
                out.append(("prefix", common))
                continue
        out.append(("key", key))
    return out


def entries_of(page):
    """A page as ordered entries: common prefixes interleave with keys by byte order, as S3 merges them."""
    merged = [("key", e.key) for e in page.entries] + [("prefix", p) for p in page.prefixes]
    return sorted(merged, key=lambda item: item[1].encode())


class Store:
    """A real SQLite store in a temp dir, usable from sync tests (each call runs on its own event loop)."""

    def __init__(self, path: str) -> None:
        self.meta = SqliteMetaStore(path)
        self.meta.open_sync()
        asyncio.run(self.meta.create_bucket(Bucket(BUCKET, "owner", time.time())))

    def add(self, keys) -> None:
        now = time.time()
        self.meta.bulk_insert_sync([
            ObjectVersion(bucket=BUCKET, key=k, version_id=f"v{i}", size=i, etag="e" * 32, last_modified=now,
                          extents=[Extent(f"b{i}", 0, i)], owner_id="owner") for i, k in enumerate(keys)])

    def page(self, meta=None, **kw):
        return asyncio.run(list_page(meta or self.meta, BUCKET, **kw))

    def close(self) -> None:
        self.meta.close_sync()


@pytest.fixture
def store(tmp_path):
    s = Store(str(tmp_path / "meta.sqlite3"))
    yield s
    s.close()


ALPHABET = ["a", "b", "/", "/", "-", ".", "é", "\U0001F600", "\uff01", " ", "~", "Z", "0", "//", "a/"]


def random_keys(rng: random.Random, count: int) -> list[str]:
    keys = set()
    while len(keys) < count:
        keys.add("".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 7))))
    return list(keys)


def test_first_pages_match_the_model(store):
    rng = random.Random(20261125)
    keys = random_keys(rng, 700)
    store.add(keys)
    prefixes = ["", "a", "a/", "/", "é", "\U0001F600", "b/", "zz", "a/a", "~"]
    delimiters = ["", "/", "a", "//", "é", "/a"]
    for trial in range(250):
        prefix = rng.choice(prefixes)
        delimiter = rng.choice(delimiters)
        start_after = rng.choice(["", rng.choice(keys), rng.choice(keys)[:2], prefix + "a/", prefix + "/"])
        max_keys = rng.choice([0, 1, 2, 3, 7, 50, 1000])
        page = store.page(prefix=prefix, delimiter=delimiter, start_after=start_after, max_keys=max_keys)
        expected = reference(keys, prefix, delimiter, start_after)
        case = (prefix, delimiter, start_after, max_keys)
        assert entries_of(page) == expected[:max_keys], case
        assert page.truncated == (len(expected) > max_keys > 0), case
        if page.entries or page.prefixes:
            assert page.last == expected[min(max_keys, len(expected)) - 1][1], case


def test_full_pagination_matches_the_model(store):
    rng = random.Random(7)
    keys = random_keys(rng, 900) + [f"dir{i % 7}/sub{i % 3}/file{i}" for i in range(300)]
    store.add(keys)
    cases = [("", "", 100), ("", "/", 1), ("", "/", 3), ("dir", "/", 2), ("dir1/", "/", 1), ("dir1/", "", 37),
             ("a", "/", 5), ("", "a", 4), ("", "é", 9), ("", "//", 6), ("/", "/", 2), ("dir2/sub1/", "/", 10)]
    for prefix, delimiter, max_keys in cases:
        expected = reference(keys, prefix, delimiter)
        collected, start, pages = [], "", 0
        while True:
            pages += 1
            assert pages <= len(expected) + 2, "pagination does not terminate"
            page = store.page(prefix=prefix, delimiter=delimiter, start_after=start, max_keys=max_keys)
            got = entries_of(page)
            assert len(got) <= max_keys
            collected += got
            if not page.truncated:
                break
            assert len(got) == max_keys, "a truncated page must be full"
            start = page.last  # what the continuation token / NextMarker carries
        case = (prefix, delimiter, max_keys)
        assert len(collected) == len(set(collected)), f"duplicates across pages {case}"
        assert collected == expected, case
        assert pages == max(1, -(-len(expected) // max_keys)), case


def test_start_after_inside_a_common_prefix_lists_that_prefix_again(store):
    store.add(["a/1", "a/2", "b"])
    page = store.page(delimiter="/", start_after="a/1")
    assert page.prefixes == ["a/"] and [e.key for e in page.entries] == ["b"]
    page = store.page(delimiter="/", start_after="a/")
    assert page.prefixes == [] and [e.key for e in page.entries] == ["b"]


def test_prefix_successor_edge_cases():
    assert prefix_successor("") is None
    assert prefix_successor("a") == "b"
    assert prefix_successor("a/") == "a0"
    assert prefix_successor("photos/2024") == "photos/2025"
    assert prefix_successor("a\U0010FFFF") == "b"
    assert prefix_successor("\U0010FFFF\U0010FFFF") is None
    assert prefix_successor("x\uD7FF") == "x\uE000"  # skips the surrogate block, which UTF-8 cannot encode
    assert prefix_successor("\U0001F600") == "\U0001F601"
    assert prefix_successor("~") == "\x7f"
    for prefix in ["a", "a/", "é", "x\uD7FF", "\U0001F600", "a\U0010FFFF", "\uffff"]:
        successor = prefix_successor(prefix)
        successor.encode("utf-8")  # always encodable
        assert successor.encode() > (prefix + "\U0010FFFF" * 3).encode()
        assert not successor.startswith(prefix)


class CountingMeta:
    """The real store, counting how often the listing asks it for keys (not a mock: every call goes through)."""

    def __init__(self, meta) -> None:
        self.meta = meta
        self.calls = 0
        self.rows = 0

    async def list_objects(self, *args, **kwargs):
        self.calls += 1
        batch = await self.meta.list_objects(*args, **kwargs)
        self.rows += len(batch)
        return batch

    def __getattr__(self, name):
        return getattr(self.meta, name)


@pytest.mark.serial  # a wall-time bound on a CPU-bound listing
def test_delimiter_listing_costs_one_query_per_prefix(store):
    keys = [f"shard-{i % 10}/sample-{i:06d}.tar" for i in range(100_000)] + ["top-level.json"]
    store.add(keys)
    counting = CountingMeta(store.meta)
    started = time.monotonic()
    page = store.page(counting, delimiter="/", max_keys=1000)
    elapsed = time.monotonic() - started
    assert page.prefixes == [f"shard-{i}/" for i in range(10)]
    assert [e.key for e in page.entries] == ["top-level.json"]
    assert not page.truncated
    assert counting.calls <= 10 + 3, counting.calls
    assert counting.rows <= 10 * 10, f"read {counting.rows} rows to roll up 10 prefixes"
    assert elapsed < 2.0, f"a 10-prefix listing over 100k keys took {elapsed:.2f}s"

    counting.calls = 0
    page = store.page(counting, prefix="shard-3/", delimiter="/", max_keys=5)
    assert [e.key for e in page.entries] == [f"shard-3/sample-{i:06d}.tar" for i in range(3, 50, 10)]
    assert page.truncated and counting.calls <= 2

    counting.calls = 0
    page = store.page(counting, delimiter="-", max_keys=1)
    assert page.prefixes == ["shard-"] and page.truncated and counting.calls <= 2


def test_a_page_of_many_prefixes_reads_few_rows_per_prefix(store):
    store.add([f"dir-{i % 1000:04d}/part-{i:05d}" for i in range(8000)])
    counting = CountingMeta(store.meta)
    page = store.page(counting, delimiter="/", max_keys=1000)
    assert page.prefixes == [f"dir-{i:04d}/" for i in range(1000)] and not page.truncated
    assert counting.calls <= 1000 + 2
    assert counting.rows <= 10 * 1000, f"read {counting.rows} rows for 1000 prefixes"
    # Plain keys under a delimiter still come in growing batches, not one query per key.
    counting.calls = 0
    page = store.page(counting, prefix="dir-0007/", delimiter="/", max_keys=1000)
    assert len(page.entries) == 8 and counting.calls <= 2
