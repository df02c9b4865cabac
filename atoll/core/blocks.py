"""Block lists (Azure block blobs): the pure rules, kept apart from the Namespace that applies them.

A blob written by Put Block List is an ordinary multi-extent object: each block is an extent, in the order the
list names them, so committing copies nothing. Uncommitted blocks belong to a blob name until a commit uses them
or drops them; the committed list is stored with the version (``ObjectVersion.blocks``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass, field
from typing import Callable, Sequence

from atoll import errors
from atoll.core import checksums as cks
from atoll.core.models import Block, Extent, ObjectVersion

MAX_BLOCK_ID_BYTES = 64
MAX_BLOCK_SIZE = 4000 << 20  # Azure's 4000 MiB per block
MAX_UNCOMMITTED_BLOCKS = 100_000
MAX_COMMITTED_BLOCKS = 50_000
UNCOMMITTED_BLOCK_TTL = 7 * 86400.0  # Azure collects blocks of a blob never committed after a week
BLOCK_LIST_KINDS = ("committed", "uncommitted", "latest")
_EMPTY_MD5 = hashlib.md5(b"").hexdigest()


@dataclass(slots=True)
class BlockList:
    """What Get Block List reports: the current version (None while the name has only uncommitted blocks), its
    committed blocks (id, size) and the name's uncommitted blocks, oldest first."""

    version: ObjectVersion | None
    committed: list[tuple[str, int]] = field(default_factory=list)
    uncommitted: list[Block] = field(default_factory=list)


@dataclass(slots=True)
class ChosenBlocks:
    """A Put Block List resolved against what is stored: the new version's extents and block list, the
    uncommitted blocks it uses (block id, blob id) and whether it reuses blocks of the current version."""

    extents: list[Extent]
    blocks: list[tuple[str, int, str]]
    staged: list[tuple[str, str]]
    reuses_committed: bool

    @property
    def size(self) -> int:
        return sum(size for _, size, _ in self.blocks)

    @property
    def etag(self) -> str:
        # As multipart (md5 of the block MD5s, "-N"): opaque to Azure clients, familiar to S3 ones.
        return cks.multipart_etag([md5 for _, _, md5 in self.blocks]) if self.blocks else _EMPTY_MD5

    @property
    def part_count(self) -> int:
        """Blocks are parts for S3 (``partNumber`` reads) when each is exactly one extent."""
        return len(self.blocks) if len(self.extents) == len(self.blocks) else 0


def block_verifier(verify: Callable[[dict[str, bytes], int], dict[str, str]] | None,
                   content_md5: bytes | None) -> Callable[[dict[str, bytes], int], dict[str, str]]:
    """The Namespace's Verifier for a block: the caller's, and the MD5 it expects if any."""
    def check(digests: dict[str, bytes], size: int) -> dict[str, str]:
        if content_md5 is not None and digests["md5"] != content_md5:
            raise errors.BadDigest("The MD5 value specified in the request did not match with the MD5 value "
                                   "calculated by the server.", code="Md5Mismatch")
        return verify(digests, size) if verify is not None else {}
    return check


def invalid_block_id() -> errors.InvalidRequest:
    return errors.InvalidRequest("The specified block ID is invalid. The block ID must be Base64-encoded and at "
                                 f"most {MAX_BLOCK_ID_BYTES} bytes long once decoded.", code="InvalidBlockId")


def validate_block_id(block_id: str) -> None:
    try:
        raw = base64.b64decode(block_id.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise invalid_block_id() from None
    if not raw or len(raw) > MAX_BLOCK_ID_BYTES:
        raise invalid_block_id()


def mixed_id_lengths() -> errors.InvalidRequest:
    return errors.InvalidRequest("The specified blob or block content is invalid: every block id of a blob must "
                                 "have the same length.", code="InvalidBlobOrBlock")


def invalid_block_list() -> errors.InvalidRequest:
    return errors.InvalidRequest("The specified block list is invalid.", code="InvalidBlockList")


def slice_extents(extents: Sequence[Extent], start: int, length: int) -> list[Extent]:
    """The extents holding bytes [start, start + length) of a version whose bytes are ``extents``."""
    out: list[Extent] = []
    position = 0
    end = start + length
    for extent in extents:
        extent_end = position + extent.length
        if extent_end > start and position < end:
            lo = max(start, position) - position
            hi = min(end, extent_end) - position
            out.append(Extent(extent.blob_id, extent.offset + lo, hi - lo))
        position = extent_end
        if position >= end:
            break
    if sum(e.length for e in out) != length:
        raise errors.Unavailable("A committed block lies outside its blob's bytes; run atoll fsck.")
    return out


def choose_blocks(requested: Sequence[tuple[str, str]], current: ObjectVersion | None,
                  uncommitted: Sequence[Block]) -> ChosenBlocks:
    """Resolve a Put Block List: each (block id, 'committed' | 'uncommitted' | 'latest') names a block of the
    current version's committed list, of the uncommitted blocks, or the latest of the two (the uncommitted one
    when both exist). A block may be named more than once. Raises InvalidBlockList for a block that is not there.
    ``current`` must have its bytes warm when a committed block is named."""
    by_id = {b.block_id: b for b in uncommitted}
    committed: dict[str, tuple[int, int, str]] = {}
    if current is not None:
        position = 0
        for block_id, size, md5 in current.blocks:
            committed.setdefault(block_id, (position, size, md5))
            position += size
    chosen = ChosenBlocks([], [], [], False)
    for block_id, kind in requested:
        if kind not in BLOCK_LIST_KINDS:
            raise invalid_block_list()
        block = by_id.get(block_id) if kind != "committed" else None
        if block is not None:
            chosen.extents.append(Extent(block.blob_id, 0, block.size))
            chosen.blocks.append((block_id, block.size, block.md5))
            chosen.staged.append((block_id, block.blob_id))
            continue
        kept = committed.get(block_id) if kind != "uncommitted" else None
        if kept is None:
            raise invalid_block_list()
        start, size, md5 = kept
        chosen.extents.extend(slice_extents(current.extents, start, size))
        chosen.blocks.append((block_id, size, md5))
        chosen.reuses_committed = True
    return chosen
