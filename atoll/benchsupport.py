"""Bulk index loading for benchmarks: a bucket of a million keys in seconds instead of an hour of PUTs.

Inserts zero-byte objects (no data blob is needed for an empty object) straight into the metadata store in large
transactions. It goes through the store's own writer, so a running server on the same data directory stays
consistent (its read caches see the commit). Not a request path: never used by the server itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from itertools import islice
from typing import Iterable

from atoll.core.models import Bucket, ObjectVersion
from atoll.stores.meta import open_metastore

_EMPTY_MD5 = hashlib.md5(b"").hexdigest()


def bulk_insert_empty_objects(data_dir: str, bucket: str, keys: Iterable[str], batch: int = 20000,
                              metadata: str = "") -> int:
    """Create ``bucket`` (owned by the root identity) if needed and insert every key as an empty object
    (``metadata``: the server's setting, "" for the data directory's SQLite file)."""
    import os

    meta = open_metastore(metadata, os.path.join(data_dir, "meta.sqlite3"))
    meta.open_sync()
    try:
        async def owner() -> str:
            roots = [i for i in await meta.list_identities() if i.is_root]
            if not roots:
                raise RuntimeError("no root identity: start `atoll serve` on this data directory once first")
            if await meta.get_bucket(bucket) is None:
                await meta.create_bucket(Bucket(bucket, roots[0].owner_id, time.time()))
            return roots[0].owner_id

        owner_id = asyncio.run(owner())
        inserted = 0
        iterator = iter(keys)
        now = time.time()
        while True:
            chunk = list(islice(iterator, batch))
            if not chunk:
                return inserted
            meta.bulk_insert_sync([
                ObjectVersion(bucket=bucket, key=key, version_id=f"bulk-{inserted + i}", size=0, etag=_EMPTY_MD5,
                              last_modified=now, owner_id=owner_id) for i, key in enumerate(chunk)])
            inserted += len(chunk)
    finally:
        meta.close_sync()
