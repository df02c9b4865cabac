"""Listing linked buckets: the union of the index and the cold listing, and ``atoll bucket sync-index``.

Against a real server with real cold stores (moto S3 and Azurite) behind the counting proxy: a linked bucket
lists warm-only, cold-only and shared keys once each, in order, paginated (v1 markers and v2 tokens) and rolled
up by delimiters, without keys deleted here whose delete has not drained yet. sync-index imports the cold
listing incrementally; afterwards listings and HEADs of imported keys cost zero cold requests, and a GET reads
the bytes through. The merge itself is also checked in-process against a model, over real SQLite and real
obstore stores (a local directory, which lists unordered, and the in-memory store, which lists in order).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import secrets
import time

import pytest

from harness import AtollProcess
from tierutil import COLD_KINDS, Cold, ColdSite, emulator, meta_query, residency, start_server

pytestmark = pytest.mark.timeout(240)

LINK_CACHE_SECONDS = 1.2  # a server re-reads the link of a bucket it has looked at after about a second


# --- the S3 listing model ---------------------------------------------------------------------------------------

def model_listing(objects: dict[str, int], prefix: str = "", delimiter: str = "",
                  start_after: str = "") -> list[tuple]:
    """What a complete listing returns, in order: ("key", key, size) and ("prefix", common prefix) items."""
    items: list[tuple] = []
    seen: set[str] = set()
    for key in sorted(objects):
        if not key.startswith(prefix) or key <= start_after:
            continue
        if delimiter:
            at = key.find(delimiter, len(prefix))
            if at >= 0:
                common = key[:at + len(delimiter)]
                if common not in seen and common != start_after:  # a marker naming a prefix continues after it
                    seen.add(common)
                    items.append(("prefix", common))
                continue
        items.append(("key", key, objects[key]))
    return items


def page_items(page: dict) -> list[tuple]:
    items = [("key", o["Key"], o["Size"]) for o in page.get("Contents", [])]
    items += [("prefix", p["Prefix"]) for p in page.get("CommonPrefixes", [])]
    return sorted(items, key=lambda item: item[1])


def list_v2(s3, bucket: str, **kwargs) -> list[dict]:
    pages, token = [], None
    while True:
        args = dict(Bucket=bucket, **kwargs)
        if token:
            args["ContinuationToken"] = token
        page = s3.list_objects_v2(**args)
        pages.append(page)
        if not page["IsTruncated"]:
            return pages
        token = page["NextContinuationToken"]
        assert len(pages) < 1000


def list_v1(s3, bucket: str, **kwargs) -> list[dict]:
    pages, marker = [], ""
    while True:
        page = s3.list_objects(Bucket=bucket, Marker=marker, **kwargs)
        pages.append(page)
        if not page["IsTruncated"]:
            return pages
        names = [o["Key"] for o in page.get("Contents", [])] + [p["Prefix"] for p in page.get("CommonPrefixes", [])]
        marker = page.get("NextMarker") or max(names)
        assert len(pages) < 1000


def check_paginated(pages: list[dict], expected: list[tuple], max_keys: int) -> None:
    got = [item for page in pages for item in page_items(page)]
    assert got == expected
    for page in pages[:-1]:
        assert page["IsTruncated"] and len(page_items(page)) == max_keys
    assert not pages[-1]["IsTruncated"]


# --- cold stores behind the counting proxy, and a server -----------------------------------------------------

@pytest.fixture(params=COLD_KINDS)
def cold(request) -> Cold:
    """A fresh cold prefix (its own container or bucket) behind its own counting proxy."""
    site = ColdSite(request.param, emulator(request, request.param), "listing")
    yield site.cold()
    site.close()


def delete_cold(cold: Cold, key: str) -> None:
    name = f"{cold.prefix}/{key}"
    if cold.kind == "s3":
        cold.server.client().delete_object(Bucket=cold.container, Key=name)
    else:
        cold.server.blob_client(cold.container, name).delete_blob()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A private server: these tests pause its drain, which is one switch per data directory."""
    srv = start_server(str(tmp_path_factory.mktemp("listing")))
    yield srv
    code = srv.stop()
    assert code == 0, srv.log_text()[-3000:]
    assert "Traceback" not in srv.log_text(), srv.log_text()[-5000:]


def link(server: AtollProcess, bucket: str, cold: Cold, used: bool = False) -> None:
    """Link ``bucket`` (write-back); a bucket the server has ``used`` already may be cached as not linked for
    about a second."""
    server.cli("bucket", "link", bucket, cold.url, "--mode", "writeback", *cold.link_options())
    if used:
        time.sleep(LINK_CACHE_SECONDS)
    cold.proxy.reset_counts()


def sync_index(server: AtollProcess, bucket: str, *extra: str) -> dict:
    out = server.cli("bucket", "sync-index", bucket, "--json", *extra)
    job = json.loads(out.stdout)
    assert job["state"] == "done", job
    return job["progress"]


def new_bucket(s3) -> str:
    name = f"lst-{secrets.token_hex(5)}"
    s3.create_bucket(Bucket=name)
    return name


def body_for(key: str, tag: str = "cold") -> bytes:
    return f"{tag}:{key}:".encode() * (1 + len(key) % 5)


# --- union listing ------------------------------------------------------------------------------------------------

def test_union_of_index_and_cold_listing(server, cold):
    s3 = server.client()
    bucket = new_bucket(s3)
    # Local objects from before the link, under keys no cold store can hold: warm-only for good.
    local = {"odd//double": b"local-1", "trailing/": b"local-22"}
    for key, body in local.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    cold_objects = {}
    for i in range(48):
        key = f"dir/{'abc'[i % 3]}/k{i:02d}" if i < 36 else f"top-{i:02d}"
        cold_objects[key] = body_for(key)
    cold_objects.update({"dir/a b": b"space", "dir-x": b"sibling of dir/", "ü/k": b"non-ascii"})
    for key, body in cold_objects.items():
        cold.put(key, body)
    link(server, bucket, cold, used=True)
    server.cli("drain", "pause")
    try:
        warm_only = {"dir/a/warm-1": b"w" * 11, "dir/d/new": b"w" * 12, "zz-warm": b"w" * 13, "dir/a/k00a": b"w"}
        for key, body in warm_only.items():
            s3.put_object(Bucket=bucket, Key=key, Body=body)
        s3.put_object(Bucket=bucket, Key="dir/b/k01", Body=b"n" * 100)  # in both: the index's version wins
        s3.delete_object(Bucket=bucket, Key="dir/c/k02")  # cold-only, deleted here, delete not drained
        s3.delete_object(Bucket=bucket, Key="top-40")
        expected = {k: len(v) for k, v in {**cold_objects, **local, **warm_only}.items()}
        expected["dir/b/k01"] = 100
        del expected["dir/c/k02"], expected["top-40"]
        assert len(expected) > 50

        cold.proxy.reset_counts()
        page = s3.list_objects_v2(Bucket=bucket)
        assert page_items(page) == model_listing(expected)
        assert len(cold.proxy.requests()) == 1  # one cold LIST for the whole page
        winner = next(o for o in page["Contents"] if o["Key"] == "dir/b/k01")
        assert winner["ETag"].strip('"') == hashlib.md5(b"n" * 100).hexdigest()

        check_paginated(list_v2(s3, bucket, MaxKeys=7), model_listing(expected), 7)
        check_paginated(list_v1(s3, bucket, MaxKeys=7), model_listing(expected), 7)
        for prefix, delimiter in [("", "/"), ("dir/", "/"), ("dir", ""), ("dir/a", ""), ("dir/a/k0", ""),
                                  ("t", "-"), ("odd/", "/"), ("nothing", "")]:
            want = model_listing(expected, prefix, delimiter)
            assert page_items(s3.list_objects_v2(Bucket=bucket, Prefix=prefix, Delimiter=delimiter)) == want
            check_paginated(list_v2(s3, bucket, Prefix=prefix, Delimiter=delimiter, MaxKeys=4), want, 4)
            check_paginated(list_v1(s3, bucket, Prefix=prefix, Delimiter=delimiter, MaxKeys=5), want, 5)
        for start_after in ["dir/b/k01", "dir/c", "top-39", "dir/a/k00"]:
            want = model_listing(expected, start_after=start_after)
            check_paginated(list_v2(s3, bucket, StartAfter=start_after, MaxKeys=7), want, 7)
        # The hidden delete is only hidden while pending: a key written again is back.
        s3.put_object(Bucket=bucket, Key="top-40", Body=b"again")
        names = [o["Key"] for page in list_v2(s3, bucket) for o in page.get("Contents", [])]
        assert "top-40" in names and "dir/c/k02" not in names
    finally:
        server.cli("drain", "resume")


# --- sync-index -------------------------------------------------------------------------------------------------

def test_sync_index_imports_incrementally_then_lists_locally(server, cold):
    s3 = server.client()
    bucket = new_bucket(s3)
    objects = {f"set/{i % 4}/obj-{i:03d}": body_for(f"k{i}") for i in range(40)}
    objects.update({f"flat-{i:02d}": body_for(f"f{i}") for i in range(10)})
    for key, body in objects.items():
        cold.put(key, body)
    link(server, bucket, cold)

    first = sync_index(server, bucket)
    assert (first["listed"], first["added"], first["unchanged"], first["removed"]) == (50, 50, 0, 0)
    second = sync_index(server, bucket)
    assert (second["added"], second["updated"], second["removed"], second["unchanged"]) == (0, 0, 0, 50)

    for i in range(3):
        objects[f"set/new-{i}"] = body_for(f"new{i}")
        cold.put(f"set/new-{i}", objects[f"set/new-{i}"])
    for key in ("flat-03", "set/1/obj-005"):
        delete_cold(cold, key)
        del objects[key]
    objects["flat-07"] = b"changed in the cold store"
    cold.put("flat-07", objects["flat-07"], content_type="text/csv", metadata={"origin": "cold"})
    third = sync_index(server, bucket)
    assert (third["added"], third["removed"], third["updated"], third["unchanged"]) == (3, 2, 1, 47)

    sizes = {k: len(v) for k, v in objects.items()}
    cold.proxy.reset_counts()
    check_paginated(list_v2(s3, bucket, MaxKeys=7), model_listing(sizes), 7)
    check_paginated(list_v1(s3, bucket, MaxKeys=7), model_listing(sizes), 7)
    check_paginated(list_v2(s3, bucket, Delimiter="/", Prefix="set/", MaxKeys=2),
                    model_listing(sizes, "set/", "/"), 2)
    head = s3.head_object(Bucket=bucket, Key="set/2/obj-010")  # known to the index, not resident
    assert head["ContentLength"] == len(objects["set/2/obj-010"])
    assert cold.proxy.requests() == []  # listings and the HEAD answered from the index

    # Listings carry no content type or metadata: the first GET of an imported key reads them (one HEAD).
    got = s3.get_object(Bucket=bucket, Key="flat-07")
    assert got["Body"].read() == objects["flat-07"]
    assert (got["ContentType"], got["Metadata"]) == ("text/csv", {"origin": "cold"})
    assert s3.get_object(Bucket=bucket, Key="set/2/obj-010")["Body"].read() == objects["set/2/obj-010"]
    assert len(cold.proxy.requests("GET")) >= 2  # read through from the cold store
    # A local write shows up in the synced listing at once; once drained, the cold identity it recorded is the
    # one the cold listing shows, so a re-run finds it unchanged (its warm copy is not replaced).
    s3.put_object(Bucket=bucket, Key="set/local", Body=b"local")
    assert "set/local" in [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="set/")["Contents"]]
    deadline = time.monotonic() + 30
    while meta_query(server, "SELECT count(*) FROM drain WHERE bucket = ?", (bucket,))[0][0]:
        assert time.monotonic() < deadline, "the local write did not drain"
        time.sleep(0.1)
    fourth = sync_index(server, bucket)
    assert (fourth["added"], fourth["removed"], fourth["updated"], fourth["unchanged"]) == (0, 0, 0, 52)
    assert residency(server, bucket, "set/local") == "resident"


def test_sync_index_respects_pending_deletes_and_prefixes(server, cold):
    s3 = server.client()
    bucket = new_bucket(s3)
    for i in range(12):
        cold.put(f"a/{i:02d}", b"a" * i)
        cold.put(f"b/{i:02d}", b"b" * i)
    link(server, bucket, cold)
    server.cli("drain", "pause")
    try:
        s3.delete_object(Bucket=bucket, Key="a/03")  # pending: must not come back through the import
        s3.put_object(Bucket=bucket, Key="b/05", Body=b"local")  # not drained: the import leaves it alone
        part = sync_index(server, bucket, "--prefix", "a/")
        assert (part["listed"], part["added"], part["skipped"]) == (12, 11, 1)
        # Only a whole-bucket sync makes listings local: b/ still comes from the cold store.
        cold.proxy.reset_counts()
        names = [o["Key"] for page in list_v2(s3, bucket) for o in page.get("Contents", [])]
        assert names == sorted(f"{p}/{i:02d}" for p in "ab" for i in range(12) if (p, i) != ("a", 3))
        assert cold.proxy.requests("GET")
        whole = sync_index(server, bucket)
        assert (whole["added"], whole["unchanged"], whole["skipped"], whole["kept_local"]) == (11, 11, 1, 1)
        cold.proxy.reset_counts()
        listed = {o["Key"]: o["Size"] for page in list_v2(s3, bucket) for o in page.get("Contents", [])}
        assert list(listed) == names and listed["b/05"] == len(b"local")
        assert cold.proxy.requests() == []
    finally:
        server.cli("drain", "resume")


def test_relinking_elsewhere_lists_the_union_again(server, cold, tmp_path):
    s3 = server.client()
    bucket = new_bucket(s3)
    cold.put("one", b"1")
    link(server, bucket, cold)
    sync_index(server, bucket)
    cold.proxy.reset_counts()
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == ["one"]
    assert cold.proxy.requests() == []
    elsewhere = tmp_path / "other-cold"
    (elsewhere / "sub").mkdir(parents=True)
    (elsewhere / "sub" / "two").write_bytes(b"2")
    server.cli("bucket", "link", bucket, f"file://{elsewhere}", "--mode", "writeback")
    # The index still holds "one" (recorded from the first store); the new store's listing joins it once the
    # server's link cache (1 s) has seen the new link.
    deadline = time.monotonic() + 10
    keys: list[str] = []
    while time.monotonic() < deadline:
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
        if "sub/two" in keys:
            break
        time.sleep(0.1)
    assert keys == ["one", "sub/two"]


# --- the merge, in-process, against the model ------------------------------------------------------------------

def _all_pages(source_factory, bucket, prefix, delimiter, start_after, max_keys):
    from atoll.core.listing import list_page

    async def run():
        items, pages, cursor = [], 0, start_after
        while True:
            source = source_factory(prefix)
            try:
                page = await list_page(source, bucket, prefix=prefix, delimiter=delimiter, start_after=cursor,
                                       max_keys=max_keys)
            finally:
                await source.close()
            got = sorted([("key", e.key, e.size) for e in page.entries] + [("prefix", p) for p in page.prefixes],
                         key=lambda item: item[1])
            assert len(got) <= max_keys
            assert not page.truncated or len(got) == max_keys
            items += got
            pages += 1
            assert pages < 10000
            if not page.truncated:
                return items
            cursor = page.last
    return run()


@pytest.mark.parametrize("ordered", [True, False], ids=["memory-store", "local-directory"])
def test_union_merge_matches_the_model(tmp_path, ordered):
    """Random key sets split between the index (warm-only, both) and a real obstore store (cold-only, both),
    with pending deletes, listed with random prefixes, delimiters, start-after and page sizes."""
    import obstore
    from obstore.store import LocalStore, MemoryStore

    from atoll.core.models import Bucket, ObjectVersion
    from atoll.core.tiering.listing import ColdWindow, EmptyColdSide, UnionSource, cold_directory
    from atoll.stores.cold.store import ColdStore
    from atoll.stores.meta.sqlite import SqliteMetaStore

    rng = random.Random(4 if ordered else 5)
    alphabet = ["a", "b", "/", "-", "\u00fc", "a/b", "0"]

    def random_key() -> str:
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 5)))

    def is_cold_path(key: str) -> bool:
        return not key.startswith("/") and not key.endswith("/") and "" not in key.split("/")

    async def scenario(round_no: int) -> None:
        meta = SqliteMetaStore(str(tmp_path / f"meta-{round_no}.db"))
        await meta.open()
        try:
            await meta.create_bucket(Bucket("bkt", "owner", 0.0))
            store = MemoryStore() if ordered else LocalStore(str(tmp_path / f"cold-{round_no}"), mkdir=True)
            cold_store = ColdStore(store, "test")
            keys = {random_key() for _ in range(rng.randint(0, 70))}
            cold_keys = [k for k in keys if is_cold_path(k) and rng.random() < 0.7]
            warm_keys = [k for k in keys if k not in cold_keys or rng.random() < 0.3]
            if not ordered:
                # A directory cannot hold both a file "a" and a directory "a/": keep the cold side a tree.
                cold_keys = [k for k in cold_keys if not any(o.startswith(k + "/") for o in cold_keys)]
            expected: dict[str, int] = {}
            for key in cold_keys:
                size = 1 + len(key)
                await obstore.put_async(store, key, b"c" * size)
                expected[key] = size
            for key in warm_keys:
                size = 100 + len(key)
                await meta.put_object(ObjectVersion("bkt", key, secrets.token_hex(8), size, "e", 0.0,
                                                    owner_id="owner"))
                expected[key] = size
            for key in rng.sample(sorted(expected), min(len(expected), rng.randint(0, 4))):
                await meta.delete_object("bkt", key, journal=True)  # a pending delete hides the cold copy
                del expected[key]

            page_size = rng.choice([1, 2, 3, 1000])  # small cold pages: continued and restarted listings

            def source_factory(prefix: str):
                directory = cold_directory(prefix)
                side = (EmptyColdSide() if directory is None
                        else ColdWindow(cold_store, directory, "owner", page_size=page_size))
                return UnionSource(meta, side)

            for _ in range(12):
                prefix = rng.choice(["", "", "a", "a/", "b", "a/b", "/", "-", "\u00fc", "a//"])
                delimiter = rng.choice(["", "", "/", "-", "b"])
                start_after = rng.choice(["", "", random_key()])
                max_keys = rng.choice([1, 2, 3, 7, 1000])
                want = model_listing(expected, prefix, delimiter, start_after)
                got = await _all_pages(source_factory, "bkt", prefix, delimiter, start_after, max_keys)
                assert got == want, (prefix, delimiter, start_after, max_keys, page_size)
        finally:
            await meta.close()

    for round_no in range(10):
        asyncio.run(scenario(round_no))


def test_cold_offsets_are_valid_lower_bounds():
    from atoll.core.models import ListEntry
    from atoll.core.tiering.listing import cold_directory, cold_offset, merge_entries, path_floor

    assert path_floor("a//b") == "a" and path_floor("/x") == "" and path_floor("a/./b") == "a"
    assert path_floor("a/b\nc") == "a/b" and path_floor("a/b/") == "a/b" and path_floor("ok/key") == "ok/key"
    assert cold_directory("photos/2024-") == "photos" and cold_directory("abc") == ""
    assert cold_directory("a//") is None and cold_directory("/x") is None and cold_directory("a/../") is None
    for start in ["dir0", "a/b", "a/0", "x\ue000", "k", "a//b", "z\x00"]:
        for inclusive in (True, False):
            offset = cold_offset(start, inclusive)
            assert offset < start or (offset == start and not inclusive)
            assert offset == path_floor(offset)
    # obstore offsets are exclusive: an inclusive start lands just below the key, never on a rolled-up prefix.
    assert cold_offset("dir0", True) == "dir/\U0010ffff"

    def entries(*keys):
        return [ListEntry(k, 1, "", 0.0, "") for k in keys]
    merged = merge_entries(entries("a", "c", "d"), entries("b", "c", "e"), 4)
    assert [(e.key, cold_only) for e, cold_only in merged] == [("a", False), ("b", True), ("c", False),
                                                                ("d", False)]


def test_sync_index_of_an_unordered_listing_removes_nothing(tmp_path):
    """A local directory lists in no particular order: the import adds and updates, but cannot tell which index
    rows the cold store no longer has, so it removes none (and says so) rather than guess."""
    from atoll.config import load
    from atoll.core.models import Identity
    from atoll.core.tiering import admin
    from atoll.core.tiering.jobs import JobRunner
    from atoll.server.lifecycle import build_namespace, open_stores

    cold_dir = tmp_path / "cold"
    for i in range(30):
        (cold_dir / f"d{i % 3}").mkdir(parents=True, exist_ok=True)
        (cold_dir / f"d{i % 3}" / f"k{i:02d}").write_bytes(b"x" * i)

    async def sync(ns) -> dict:
        created = await admin.create_job(ns.tier, "sync-index", "bkt", {"prefix": ""})
        runner = JobRunner(ns.tier)
        runner.owner = "test"
        claimed = await ns.meta.claim_job(runner.owner, 30.0)
        assert claimed.job_id == created.job_id
        await runner.run_job(claimed)
        job = await ns.meta.get_job(created.job_id)
        assert job.state == "done", job
        return job.progress

    async def scenario() -> None:
        config = load(None, {"data_dir": str(tmp_path / "data")})
        meta, data = open_stores(config)
        try:
            ns = build_namespace(config, meta, data)
            root = Identity("AKROOT", "secretsecret", "owner", "root", 0.0, True)
            await meta.put_identity(root)
            await ns.create_bucket(root, "bkt")
            await admin.link_bucket(ns.tier, "bkt", f"file://{cold_dir}", "cache")
            first = await sync(ns)
            assert (first["listed"], first["added"], first["ordered"]) == (30, 30, False)
            (cold_dir / "d0" / "k00").unlink()
            (cold_dir / "d1" / "k01").write_bytes(b"changed")
            (cold_dir / "d2" / "new").write_bytes(b"new")
            second = await sync(ns)
            assert (second["added"], second["updated"], second["removed"], second["unchanged"]) == (1, 1, 0, 28)
            assert await meta.get_object("bkt", "d0/k00") is not None  # not removed: the walk was unordered
            assert (await meta.get_object("bkt", "d1/k01")).size == len(b"changed")
            page = await ns.list_objects(root, "bkt", prefix="d2/", delimiter="", start_after="", max_keys=100)
            assert [e.key for e in page.entries] == sorted(f"d2/k{i:02d}" for i in range(2, 30, 3)) + ["d2/new"]
        finally:
            meta.close_sync()

    asyncio.run(scenario())
