"""Pure rules of block lists (atoll.core.blocks) and Azure's CRC-64 form (atoll.core.checksums.azure_crc64)."""

from __future__ import annotations

import base64
import hashlib

import pytest

from atoll import errors
from atoll.core import checksums as cks
from atoll.core.blocks import choose_blocks, slice_extents, validate_block_id
from atoll.core.models import Block, Extent, ObjectVersion


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def staged(name: str, size: int) -> Block:
    return Block("b", "k", b64(name), f"blob-{name}", size, hashlib.md5(name.encode()).hexdigest(), 0.0)


def current(blocks: list[tuple[str, int]], extents: list[Extent]) -> ObjectVersion:
    return ObjectVersion("b", "k", "v1", sum(n for _, n in blocks), "x-2", 0.0, extents=extents,
                         blocks=[(b64(name), n, hashlib.md5(name.encode()).hexdigest()) for name, n in blocks])


# CRC-64: values computed by azure-storage-blob's own helper (azure.storage.blob._shared.validation.
# calculate_crc64_bytes, backed by azure-storage-extensions), which is what the SDK sends as x-ms-content-crc64.
@pytest.mark.parametrize("data,sdk_value", [
    (b"123456789", "iJh5CoYUi64="),
    (bytes(range(256)) * 4096 + b"Atoll", "f7GhILmrP0k="),
])
def test_azure_crc64_matches_the_sdk(data, sdk_value):
    hasher = cks.new_hasher("crc64nvme")
    hasher.update(data)
    assert cks.azure_crc64(hasher.digest()) == sdk_value


@pytest.mark.parametrize("block_id", ["", "not base64!", "YQ", base64.b64encode(b"x" * 65).decode(), "é"])
def test_invalid_block_ids(block_id):
    with pytest.raises(errors.InvalidRequest) as refused:
        validate_block_id(block_id)
    assert refused.value.detail["code"] == "InvalidBlockId"


def test_valid_block_ids():
    validate_block_id(base64.b64encode(b"x" * 64).decode())
    validate_block_id(b64("0001"))


def test_slice_extents_spans_and_offsets():
    extents = [Extent("a", 10, 4), Extent("b", 0, 6)]
    assert slice_extents(extents, 0, 4) == [Extent("a", 10, 4)]
    assert slice_extents(extents, 2, 5) == [Extent("a", 12, 2), Extent("b", 0, 3)]
    assert slice_extents(extents, 4, 6) == [Extent("b", 0, 6)]
    with pytest.raises(errors.Unavailable):
        slice_extents(extents, 8, 5)


def test_choose_blocks_kinds_and_latest_prefers_uncommitted():
    cur = current([("c1", 3), ("c2", 5)], [Extent("one", 0, 8)])  # a warm copy in a single blob
    new = staged("c2", 7)
    chosen = choose_blocks([(b64("c2"), "latest"), (b64("c1"), "committed"), (b64("c2"), "committed"),
                            (b64("c1"), "latest")], cur, [new])
    assert chosen.extents == [Extent("blob-c2", 0, 7), Extent("one", 0, 3), Extent("one", 3, 5),
                              Extent("one", 0, 3)]
    assert [(i, n) for i, n, _ in chosen.blocks] == [(b64("c2"), 7), (b64("c1"), 3), (b64("c2"), 5),
                                                      (b64("c1"), 3)]
    assert chosen.staged == [(b64("c2"), "blob-c2")]
    assert chosen.reuses_committed and chosen.size == 18 and chosen.part_count == 4
    assert chosen.etag == cks.multipart_etag([md5 for _, _, md5 in chosen.blocks])


@pytest.mark.parametrize("requested", [
    [(b64("u1"), "committed")],  # only uncommitted
    [(b64("c1"), "uncommitted")],  # only committed
    [(b64("zz"), "latest")],
    [(b64("u1"), "bogus")],
])
def test_choose_blocks_refuses_blocks_not_in_the_named_list(requested):
    cur = current([("c1", 3)], [Extent("c", 0, 3)])
    with pytest.raises(errors.InvalidRequest) as refused:
        choose_blocks(requested, cur, [staged("u1", 2)])
    assert refused.value.detail["code"] == "InvalidBlockList"


def test_empty_block_list_is_an_empty_blob():
    chosen = choose_blocks([], None, [staged("u1", 2)])
    assert chosen.size == 0 and chosen.extents == [] and chosen.etag == hashlib.md5(b"").hexdigest()
    assert not chosen.reuses_committed and chosen.part_count == 0
