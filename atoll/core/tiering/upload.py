"""Sending a local version's bytes to a cold store: shared by the drain and by write-through writes."""

from __future__ import annotations

import os
from typing import AsyncIterator

from atoll import errors
from atoll.core import ingest
from atoll.core.models import ObjectVersion
from atoll.stores.cold.store import ColdObject, ColdStore, Traffic
from atoll.stores.data.base import DataStore

CHUNK = 1 << 20  # the WAN scheduler paces uploads chunk by chunk; obstore gathers chunks into parts
# obstore buffers one part per upload slot: PART_SIZE x PART_CONCURRENCY bytes per large upload in flight.
PART_SIZE = 8 << 20
PART_CONCURRENCY = 4


def _open_extents(data: DataStore, version: ObjectVersion) -> list[tuple[int, int, int]]:
    opened: list[tuple[int, int, int]] = []
    try:
        for extent in version.extents:
            opened.append((data.open_blob(extent.blob_id), extent.offset, extent.length))
    except BaseException:
        for fd, _, _ in opened:
            os.close(fd)
        raise
    return opened


async def _chunks(opened: list[tuple[int, int, int]]) -> AsyncIterator[bytes]:
    for fd, offset, length in opened:
        while length > 0:
            step = min(length, CHUNK)
            data = await ingest.run_io(os.pread, fd, step, offset)
            if len(data) != step:
                raise errors.Unavailable("Object data is shorter than its metadata; run atoll fsck.")
            offset += step
            length -= step
            yield data


async def upload_version(store: ColdStore, data: DataStore, version: ObjectVersion, traffic: Traffic, *,
                         attributes: dict[str, str], concurrency: int = PART_CONCURRENCY) -> ColdObject:
    """Upload the whole of ``version`` under its key. The blobs are opened first, so a concurrent overwrite and
    garbage collection cannot pull them away mid-transfer (raises FileNotFoundError if already gone)."""
    if version.residency != "resident":
        raise errors.Unavailable("Only a wholly warm version can be uploaded.")
    opened = await ingest.run_io(_open_extents, data, version)
    try:
        if version.size <= PART_SIZE:
            # One request: obstore buffers a single-part upload in memory, which is bounded here.
            body = b"".join([chunk async for chunk in _chunks(opened)])
            return await store.put(version.key, body, version.size, traffic, attributes=attributes,
                                   part_size=PART_SIZE)
        return await store.put(version.key, _chunks(opened), version.size, traffic,
                               attributes=attributes, part_size=PART_SIZE, concurrency=concurrency)
    finally:
        for fd, _, _ in opened:
            os.close(fd)
