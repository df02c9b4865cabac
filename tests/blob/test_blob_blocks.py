"""Block blobs over the Blob endpoint: Put Block, Put Block List and Get Block List with azure-storage-blob,
the results read back through boto3, uncommitted blocks kept out of sight and collected, and a committed block
list draining to a linked cold store. Scenarios Azurite supports run against it too, so differences show."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
from datetime import datetime, timezone

import pytest
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import BlobBlock, BlobServiceClient, BlockState, ContentSettings

from atoll.core import checksums as cks
from blobutil import aio_blob_service_for, blob_service_for
from coldside import ColdSite, pattern
from coldstores import fresh_name
from harness import AtollProcess, meta_query, stop_cleanly, wait_until
from tiering.tierutil import link_bucket

MiB = 1 << 20


def bid(name: str) -> str:
    return base64.b64encode(name.encode()).decode()


def crc64_header(data: bytes) -> str:
    hasher = cks.new_hasher("crc64nvme")
    hasher.update(data)
    return cks.azure_crc64(hasher.digest())


@pytest.fixture(params=["atoll", "azurite"])
def target(request):
    """(service client, a fresh container) on Atoll or on Azurite."""
    if request.param == "atoll":
        service = request.getfixturevalue("blob_service")
    else:
        service = request.getfixturevalue("azurite").service_client()
    name = fresh_name("blocks")
    service.create_container(name)
    return request.param, service, name


@pytest.fixture(scope="module")
def blob_gc_server(workdir):
    """A server whose uncommitted blocks expire after 1 s (Azure: 7 days), and a Blob client for it."""
    server = AtollProcess(data_dir=os.path.join(workdir, fresh_name("blocks-gc")),
                          extra_env={"ATOLL_UNCOMMITTED_BLOCK_TTL": "1", "ATOLL_ADMIN_ADDRESS": "off"}).start()
    yield server, blob_service_for(server)
    stop_cleanly(server)


def committed_ids(blob) -> list[tuple[str, int]]:
    committed, _ = blob.get_block_list("committed")
    return [(b.id, b.size) for b in committed]


def all_ids(blob) -> tuple[list[str], list[str]]:
    committed, uncommitted = blob.get_block_list("all")
    return [b.id for b in committed], [b.id for b in uncommitted]


# the SDK's own chunked upload --------------------------------------------------------------------------------
def test_sdk_upload_in_blocks_reads_back_through_both_protocols(target, request):
    kind, service, container = target
    small = BlobServiceClient(service.url, credential=service.credential, max_single_put_size=MiB,
                              max_block_size=MiB)
    blob = small.get_blob_client(container, "dir/big.bin")
    data = os.urandom(3 * MiB + 12345)
    blob.upload_blob(data, max_concurrency=2, metadata={"origin": "sdk"},
                     content_settings=ContentSettings(content_type="application/x-big"))
    blocks = committed_ids(blob)
    assert [size for _, size in blocks] == [MiB, MiB, MiB, 12345]  # the SDK used Put Block + Put Block List
    assert all_ids(blob)[1] == []
    assert blob.download_blob().readall() == data
    assert blob.download_blob(offset=MiB - 10, length=20).readall() == data[MiB - 10:MiB + 10]
    props = blob.get_blob_properties()
    assert props.size == len(data) and props.metadata == {"origin": "sdk"}
    assert props.content_settings.content_type == "application/x-big"
    if kind == "atoll":
        s3 = request.getfixturevalue("s3")
        reply = s3.get_object(Bucket=container, Key="dir/big.bin")
        assert reply["Body"].read() == data
        assert reply["ContentType"] == "application/x-big" and reply["Metadata"] == {"origin": "sdk"}
        etag = reply["ETag"].strip('"')
        assert etag == props.etag.strip('"') and etag.endswith("-4")
        listed = s3.list_objects_v2(Bucket=container)["Contents"]
        assert [(o["Key"], o["Size"], o["ETag"].strip('"')) for o in listed] == [("dir/big.bin", len(data), etag)]


def test_aio_client_stages_blocks_concurrently(blob_server, s3):
    container = fresh_name("blocks")
    s3.create_bucket(Bucket=container)
    data = os.urandom(2 * MiB + 777)

    async def upload_and_list():
        async with aio_blob_service_for(blob_server, max_single_put_size=256 << 10,
                                        max_block_size=256 << 10) as service:
            blob = service.get_blob_client(container, "aio.bin")
            await blob.upload_blob(data, max_concurrency=4)
            committed, _ = await blob.get_block_list("committed")
            return [b.size for b in committed], await (await blob.download_blob()).readall()

    sizes, body = asyncio.run(upload_and_list())
    assert sizes == [256 << 10] * 8 + [777] and body == data
    assert s3.get_object(Bucket=container, Key="aio.bin")["Body"].read() == data


# staging and committing by hand -------------------------------------------------------------------------------
def commit(blob, committed=(), uncommitted=(), latest=(), **kwargs) -> None:
    """Put Block List naming blocks <Committed>, <Uncommitted> and <Latest>, in that order (what the XML of
    azure-storage-blob's generated layer holds). Its public commit_block_list sends every block as <Latest>
    (12.31 compares BlockState values, which are capitalised, with lower-case names), so this calls the same
    client's generated operation, which sends the ids as given: base64 of the names stage_block encoded."""
    from azure.storage.blob._generated.models import BlockLookupList

    def wire(names):
        return [bid(bid(name)) for name in names]
    blob._client.block_blob.commit_block_list(
        BlockLookupList(committed=wire(committed), uncommitted=wire(uncommitted), latest=wire(latest)), **kwargs)


def test_commit_uncommitted_latest_and_committed_blocks(target):
    _, service, container = target
    blob = service.get_blob_client(container, "hand.bin")
    parts = {name: os.urandom(1000 + i) for i, name in enumerate(("aaaa", "bbbb", "cccc", "dddd"))}
    for name in ("aaaa", "bbbb", "cccc"):
        blob.stage_block(bid(name), parts[name])
    with pytest.raises(ResourceNotFoundError):  # uncommitted blocks are not a blob
        blob.get_blob_properties()
    assert all_ids(blob) == ([], [bid("aaaa"), bid("bbbb"), bid("cccc")])
    assert committed_ids(blob) == []

    blob.commit_block_list([BlobBlock(bid("aaaa")), BlobBlock(bid("bbbb"))], metadata={"step": "one"},
                           content_settings=ContentSettings(content_type="text/x-one"))
    assert blob.download_blob().readall() == parts["aaaa"] + parts["bbbb"]
    assert all_ids(blob) == ([bid("aaaa"), bid("bbbb")], [])  # cccc, not named, is gone
    assert committed_ids(blob) == [(bid("aaaa"), 1000), (bid("bbbb"), 1001)]

    # A new version reusing committed blocks in another order and twice, a new block, and a new copy of a
    # committed block: <Committed> takes the committed one, <Latest> the newer uncommitted one.
    blob.stage_block(bid("dddd"), parts["dddd"])
    blob.stage_block(bid("aaaa"), b"new-aaaa")
    commit(blob, committed=["bbbb", "aaaa", "bbbb"], uncommitted=["dddd"], latest=["aaaa"])
    assert blob.download_blob().readall() == (parts["bbbb"] + parts["aaaa"] + parts["bbbb"] + parts["dddd"]
                                              + b"new-aaaa")
    assert committed_ids(blob) == [(bid("bbbb"), 1001), (bid("aaaa"), 1000), (bid("bbbb"), 1001),
                                   (bid("dddd"), 1003), (bid("aaaa"), 8)]
    props = blob.get_blob_properties()
    assert props.size == 4013 and props.metadata == {}  # a commit sets the metadata anew
    assert props.content_settings.content_type != "text/x-one"

    # An empty list makes an empty blob.
    blob.commit_block_list([])
    assert blob.download_blob().readall() == b"" and committed_ids(blob) == []


def test_invalid_block_lists_change_nothing(target):
    _, service, container = target
    blob = service.get_blob_client(container, "bad.bin")
    blob.stage_block(bid("a1"), b"first")
    blob.commit_block_list([BlobBlock(bid("a1"))])
    blob.stage_block(bid("b2"), b"second")
    for wrong in ({"latest": ["zz"]},  # never staged
                  {"committed": ["b2"]},  # staged, not committed
                  {"uncommitted": ["a1"]}):  # committed, not staged
        with pytest.raises(HttpResponseError) as caught:
            commit(blob, **wrong)
        assert caught.value.status_code == 400
        assert caught.value.response.headers["x-ms-error-code"] == "InvalidBlockList"
    assert blob.download_blob().readall() == b"first"
    assert all_ids(blob) == ([bid("a1")], [bid("b2")])


def test_conditional_commits(target):
    _, service, container = target
    blob = service.get_blob_client(container, "cond.bin")
    blob.upload_blob(b"v1")
    etag = blob.get_blob_properties().etag
    blob.stage_block(bid("c1"), b"v2")
    with pytest.raises(ResourceExistsError) as exists:
        blob.commit_block_list([BlobBlock(bid("c1"))], if_none_match="*")
    assert exists.value.error_code == "BlobAlreadyExists"
    with pytest.raises(HttpResponseError) as stale:
        blob.commit_block_list([BlobBlock(bid("c1"))], etag='"0x8DEADBEEF"', match_condition=_if_match())
    assert (stale.value.status_code, stale.value.error_code) == (412, "ConditionNotMet")
    with pytest.raises(HttpResponseError) as unmodified:
        blob.commit_block_list([BlobBlock(bid("c1"))], if_unmodified_since=datetime(2001, 1, 1, tzinfo=timezone.utc))
    assert (unmodified.value.status_code, unmodified.value.error_code) == (412, "ConditionNotMet")
    assert blob.download_blob().readall() == b"v1"
    blob.commit_block_list([BlobBlock(bid("c1"))], etag=etag, match_condition=_if_match())
    assert blob.download_blob().readall() == b"v2"


def _if_match():
    from azure.core import MatchConditions
    return MatchConditions.IfNotModified


def test_content_md5_of_a_block_is_checked(target):
    _, service, container = target
    blob = service.get_blob_client(container, "md5.bin")
    blob.stage_block(bid("m1"), b"checked", validate_content=True)  # the SDK sends Content-MD5
    wrong = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    with pytest.raises(HttpResponseError) as caught:
        blob.stage_block(bid("m2"), b"checked", headers={"Content-MD5": wrong})
    assert (caught.value.status_code, caught.value.error_code) == (400, "Md5Mismatch")
    assert all_ids(blob) == ([], [bid("m1")])


def test_crc64_of_a_block_is_checked(blob_service, s3):
    container = fresh_name("blocks")
    blob_service.create_container(container)
    blob = blob_service.get_blob_client(container, "crc.bin")
    data = os.urandom(70_000)
    blob.stage_block(bid("k1"), data, headers={"x-ms-content-crc64": crc64_header(data)},
                     raw_response_hook=_keep_headers)
    assert _keep_headers.last["x-ms-content-crc64"] == crc64_header(data)
    with pytest.raises(HttpResponseError) as caught:
        blob.stage_block(bid("k2"), data, headers={"x-ms-content-crc64": crc64_header(data + b"x")})
    assert (caught.value.status_code, caught.value.error_code) == (400, "Crc64Mismatch")
    assert all_ids(blob) == ([], [bid("k1")])


def _keep_headers(response):
    _keep_headers.last = dict(response.http_response.headers)


def test_block_ids_must_be_base64_of_one_length(blob_service):
    """Azure refuses ids of another length than the blob's other blocks (400 InvalidBlobOrBlock) and ids longer
    than 64 bytes (InvalidBlockId; malformed base64 is covered by tests/unit/test_blocks.py, the SDK always
    encodes). Azurite accepts mixed lengths (a known gap), so this runs on Atoll only."""
    container = fresh_name("blocks")
    blob_service.create_container(container)
    blob = blob_service.get_blob_client(container, "ids.bin")
    blob.stage_block("0001", b"a")  # on the wire: base64 of what the SDK is given
    with pytest.raises(HttpResponseError) as mixed:
        blob.stage_block("000000002", b"b")
    assert (mixed.value.status_code, mixed.value.error_code) == (400, "InvalidBlobOrBlock")
    with pytest.raises(HttpResponseError) as too_long:  # the SDK sends base64 of the id it is given
        blob.stage_block("x" * 65, b"d")
    assert (too_long.value.status_code, too_long.value.error_code) == (400, "InvalidBlockId")
    blob.commit_block_list([BlobBlock("0001")])
    with pytest.raises(HttpResponseError) as after_commit:  # the committed ids count too
        blob.stage_block("01", b"e")
    assert after_commit.value.error_code == "InvalidBlobOrBlock"
    assert all_ids(blob) == (["0001"], [])


# visibility, S3 side, garbage ---------------------------------------------------------------------------------
def test_uncommitted_blocks_are_invisible_until_committed(blob_server, blob_service, s3):
    container = fresh_name("blocks")
    blob_service.create_container(container)
    blob = blob_service.get_blob_client(container, "pending.bin")
    blob.stage_block(bid("p1"), b"pending")
    [(blob_id,)] = meta_query(blob_server, "SELECT blob_id FROM blocks WHERE bucket = ?", (container,))
    # fsck beside the server counts a staged block's blob as referenced, not as an orphan to delete.
    done = blob_server.cli("fsck", "--json", "--grace", "0", check=False)
    assert done.returncode in (0, 1) and "Traceback" not in done.stderr, done.stderr
    assert blob_id not in done.stdout
    assert list(blob_service.get_container_client(container).list_blobs()) == []
    assert s3.list_objects_v2(Bucket=container).get("KeyCount") == 0
    with pytest.raises(s3.exceptions.ClientError):
        s3.head_object(Bucket=container, Key="pending.bin")
    # An S3 PUT of the same key leaves the staged blocks alone (as Azurite does); a commit then replaces it.
    s3.put_object(Bucket=container, Key="pending.bin", Body=b"from s3")
    assert all_ids(blob) == ([], [bid("p1")])  # a blob written whole has no committed blocks
    blob.commit_block_list([BlobBlock(bid("p1"))])
    assert s3.get_object(Bucket=container, Key="pending.bin")["Body"].read() == b"pending"
    assert meta_query(blob_server, "SELECT count(*) FROM blocks WHERE bucket = ?", (container,)) == [(0,)]


def test_abandoned_blocks_are_collected(blob_gc_server):
    server, service = blob_gc_server
    container = fresh_name("blocks")
    service.create_container(container)
    blob = service.get_blob_client(container, "abandoned.bin")
    blob.stage_block(bid("g1"), b"x" * 5000)
    [(blob_id,)] = meta_query(server, "SELECT blob_id FROM blocks WHERE bucket = ?", (container,))
    path = os.path.join(server.data_dir, "blobs", blob_id[:3], blob_id)
    assert os.path.exists(path)
    # TTL 1 s, the collector runs every 2-3 s, then the blob waits out the garbage grace (10 s).
    wait_until(lambda: meta_query(server, "SELECT count(*) FROM blocks") == [(0,)], 15, "blocks expired")
    with pytest.raises(ResourceNotFoundError):
        blob.get_block_list("all")
    wait_until(lambda: not os.path.exists(path), 20, "the expired block's blob deleted")


# a linked write-back bucket -----------------------------------------------------------------------------------
def test_committed_block_list_drains_to_the_cold_store(blob_server, blob_service, azurite, request):
    site = ColdSite("azure", azurite, hint="blocks")
    request.addfinalizer(site.close)
    cold = site.cold()
    bucket = link_bucket(blob_server, cold, mode="writeback")
    blob = blob_service.get_blob_client(bucket, "ckpt/shard.bin")
    pieces = [pattern(200_000, f"shard-{i}") for i in range(3)]
    for i, piece in enumerate(pieces):
        blob.stage_block(bid(f"s{i}"), piece)
    blob.commit_block_list([BlobBlock(bid(f"s{i}")) for i in range(3)])
    data = b"".join(pieces)
    wait_until(lambda: cold.get("ckpt/shard.bin") == data, 30, "the committed blob drained to the cold store")
    wait_until(lambda: meta_query(blob_server, "SELECT count(*) FROM drain WHERE bucket = ?", (bucket,)) == [(0,)],
               10, "the drain journal emptied")
    assert blob.download_blob().readall() == data
    assert [size for _, size in committed_ids(blob)] == [200_000] * 3
