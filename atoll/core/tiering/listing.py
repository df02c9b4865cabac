"""Listing a linked bucket: the union of the index and the cold store's listing, until a sync-index imports it.

``core.listing.list_page`` does the S3 part (prefixes, delimiters, pagination) over any source with the index's
``list_objects(bucket, start, inclusive, end, limit)``. For a linked bucket whose cold listing has not been
imported, ``UnionSource`` is that source: each call merges one index read with a window of the cold listing, the
index row winning when both have a key (it is newer or the same), and keys deleted here but not yet deleted in
the cold store (a pending delete in the drain journal) hidden. Once a whole-bucket sync-index has completed
(the ``synced:<bucket>`` flag, cleared when the link moves to another URL), listings come from the index alone
and cost no cold request.

The cold window reads ahead a page (up to 1,000 keys, one request) and answers the skip-scan's many small seeks
from it, so a delimiter listing costs about one cold request per 1,000 keys it passes, not one per prefix.
Cold listings are trusted to come in key order only from stores that list in order (S3, GCS, Azure); a window
still keeps its keys sorted, so a store that orders a few keys differently (Azurite sorts by UTF-16 units) can
at worst leave such a key out of a page, never repeat one.
"""

from __future__ import annotations

import bisect
import time
from typing import TYPE_CHECKING, AsyncIterator

from obstore.store import AzureStore, GCSStore, MemoryStore, S3Store

from atoll import errors
from atoll.core.listing import ListPage, list_page
from atoll.core.models import Link, ListEntry
from atoll.stores.cold.store import ColdObject, ColdStore, Traffic
from atoll.stores.meta.base import MetaStore

if TYPE_CHECKING:
    from atoll.core.tiering.tier import Tiering

COLD_PAGE = 1000
_TRIM_AT = 4096  # entries behind the cursor kept before the window drops them

_ORDERED_STORES = (S3Store, AzureStore, GCSStore, MemoryStore)


# the "synced" flag --------------------------------------------------------------------------------------------
def synced_flag(bucket: str) -> str:
    return f"synced:{bucket}"


async def is_synced(meta: MetaStore, bucket: str) -> bool:
    return await meta.get_flag(synced_flag(bucket)) > 0


async def mark_synced(meta: MetaStore, bucket: str) -> None:
    await meta.set_flag(synced_flag(bucket), int(time.time()))


async def clear_synced(meta: MetaStore, bucket: str) -> None:
    await meta.set_flag(synced_flag(bucket), 0)


# cold paths -----------------------------------------------------------------------------------------------------
def listing_is_ordered(store: ColdStore) -> bool:
    """Whether the store lists in key order (object stores do; a local directory or WebDAV does not)."""
    return isinstance(store.store, _ORDERED_STORES)


def path_floor(text: str) -> str:
    """The longest prefix of ``text`` that is a valid cold path ("" if none). Every key >= ``text`` is also
    > the result, so it is a safe exclusive offset; obstore refuses offsets that are not valid paths."""
    for i, char in enumerate(text):
        if ord(char) < 0x20 or char == "\x7f":  # object_store refuses ASCII control characters in paths
            text = text[:i]
            break
    kept = []
    for segment in text.split("/"):
        if segment in ("", ".", ".."):
            break
        kept.append(segment)
    return "/".join(kept)


def cold_directory(prefix: str) -> str | None:
    """The obstore prefix to list for keys starting with ``prefix``: its directory part, since obstore prefixes
    are whole path segments ("" for the whole store). None when no valid cold path can start with ``prefix``."""
    cut = prefix.rfind("/")
    if cut < 0:
        return ""
    directory = prefix[:cut]
    return directory if directory and path_floor(directory) == directory else None


def _predecessor(key: str) -> str:
    """A string just below ``key``: no realistic key lies strictly between the two."""
    if not key:
        return ""
    code = ord(key[-1])
    if code == 0:
        return key[:-1]
    code -= 1
    if 0xD800 <= code <= 0xDFFF:
        code = 0xD7FF
    return key[:-1] + chr(code) + "\U0010ffff"


def cold_offset(start: str, inclusive: bool) -> str:
    """An exclusive obstore offset that lets through every key after ``start`` (and ``start`` if inclusive)."""
    return path_floor(_predecessor(start) if inclusive else start)


# the cold side ------------------------------------------------------------------------------------------------
class ColdWindow:
    """A sorted run of the cold listing known to be complete over (floor, high] (or to the end when exhausted).

    A query inside the run is answered from memory; one that runs past it pulls the next page of the same
    stream; one that jumps past it (the skip-scan after a rolled-up prefix) restarts the listing at the new
    position, which S3, GCS and Azure all serve natively (start-after / startFrom).
    """

    def __init__(self, store: ColdStore, directory: str, owner_id: str, page_size: int = COLD_PAGE) -> None:
        self.store = store
        self.directory = directory
        self.owner_id = owner_id
        self.page_size = page_size
        self.ordered = listing_is_ordered(store)
        self._keys: list[str] = []
        self._entries: list[ListEntry] = []
        self._floor: str | None = None  # None: nothing read yet
        self._high: str | None = None
        self._exhausted = False
        self._batches: AsyncIterator[list[ColdObject]] | None = None
        self._last_jump_wasted = False

    async def take(self, start: str, inclusive: bool, end: str | None, limit: int) -> list[ListEntry]:
        """Up to ``limit`` cold entries in the range, in key order."""
        if not self._covers(start, inclusive):
            if self._may_continue(start):
                # A skip-scan jump often lands within the next page of the same listing (small rolled-up
                # prefixes): one page further costs what a restart costs, and a restart is the fallback.
                await self._pull()
                self._last_jump_wasted = not self._covers(start, inclusive)
            if not self._covers(start, inclusive):
                await self._restart(start, inclusive)
        while True:
            keys = self._keys
            lo = bisect.bisect_left(keys, start) if inclusive else bisect.bisect_right(keys, start)
            hi = len(keys) if end is None else bisect.bisect_left(keys, end, lo)
            past_end = end is not None and self._high is not None and self._high >= end
            if hi - lo >= limit or self._exhausted or past_end:
                return self._entries[lo:min(hi, lo + limit)]
            await self._pull()

    def forget_before(self, key: str) -> None:
        """Drop entries below ``key``: ``list_page`` never asks for them again (each of its reads starts at or
        after the previous one's start, though it may re-read what followed a rolled-up prefix)."""
        at = bisect.bisect_left(self._keys, key)
        if at > _TRIM_AT and self._floor is not None:
            self._floor = self._keys[at - 1]
            del self._keys[:at], self._entries[:at]

    def _may_continue(self, start: str) -> bool:
        if not self.ordered or self._batches is None or self._exhausted or self._floor is None:
            return False
        if self._last_jump_wasted:
            self._last_jump_wasted = False  # big prefixes: restart at once this time, try again next time
            return False
        return self._floor < start

    def _covers(self, start: str, inclusive: bool) -> bool:
        if self._floor is None:
            return False
        if not self.ordered:
            return True  # read whole on first use
        above_floor = self._floor < start or (self._floor == start and not inclusive)
        return above_floor and (self._exhausted or (self._high is not None and start <= self._high))

    async def _restart(self, start: str, inclusive: bool) -> None:
        await self.close()
        self._keys, self._entries, self._exhausted = [], [], False
        offset = cold_offset(start, inclusive) if self.ordered else ""
        self._floor = offset
        self._high = None
        self._batches = self.store.list(self.directory, Traffic.DEMAND, offset=offset or None,
                                        page_size=self.page_size).__aiter__()
        if not self.ordered:
            await self._read_whole()

    async def _read_whole(self) -> None:
        by_key: dict[str, ListEntry] = {}
        async for batch in self._batches:
            for cold in batch:
                by_key[cold.key] = ListEntry(cold.key, cold.size, cold.etag, cold.mtime, self.owner_id)
        self._keys = sorted(by_key)
        self._entries = [by_key[key] for key in self._keys]
        self._high = self._keys[-1] if self._keys else None
        self._exhausted = True
        await self.close()

    async def _pull(self) -> None:
        try:
            batch = await self._batches.__anext__()
        except StopAsyncIteration:
            self._exhausted = True
            await self.close()
            return
        keys, entries = self._keys, self._entries
        for cold in batch:
            entry = ListEntry(cold.key, cold.size, cold.etag, cold.mtime, self.owner_id)
            if self._high is None or cold.key > self._high:
                keys.append(cold.key)
                entries.append(entry)
                self._high = cold.key
            else:  # out of order: keep the run sorted and free of duplicates
                at = bisect.bisect_left(keys, cold.key)
                if at == len(keys) or keys[at] != cold.key:
                    keys.insert(at, cold.key)
                    entries.insert(at, entry)

    async def close(self) -> None:
        batches, self._batches = self._batches, None
        if batches is not None:
            await batches.aclose()


class EmptyColdSide:
    """For a prefix no cold path can start with."""

    async def take(self, start: str, inclusive: bool, end: str | None, limit: int) -> list[ListEntry]:
        return []

    def forget_before(self, key: str) -> None:
        pass

    async def close(self) -> None:
        pass


# the union --------------------------------------------------------------------------------------------------
def merge_entries(warm: list[ListEntry], cold: list[ListEntry], limit: int) -> list[tuple[ListEntry, bool]]:
    """The first ``limit`` distinct keys of two sorted runs, in key order, as (entry, from the cold side only);
    when both have a key, the index's entry is taken."""
    merged: list[tuple[ListEntry, bool]] = []
    i = j = 0
    while len(merged) < limit and (i < len(warm) or j < len(cold)):
        if j == len(cold) or (i < len(warm) and warm[i].key <= cold[j].key):
            if j < len(cold) and warm[i].key == cold[j].key:
                j += 1
            merged.append((warm[i], False))
            i += 1
        else:
            merged.append((cold[j], True))
            j += 1
    return merged


class UnionSource:
    """What ``list_page`` reads for a linked bucket not yet synced: index and cold listing, merged."""

    def __init__(self, meta: MetaStore, cold: ColdWindow | EmptyColdSide) -> None:
        self.meta = meta
        self.cold = cold

    async def list_objects(self, bucket: str, start: str, inclusive: bool, end: str | None,
                           limit: int) -> list[ListEntry]:
        self.cold.forget_before(start)
        found: list[ListEntry] = []
        while len(found) < limit:
            wanted = limit - len(found)
            warm = await self.meta.list_objects(bucket, start, inclusive, end, wanted)
            cold = await self.cold.take(start, inclusive, end, wanted)
            merged = merge_entries(warm, cold, wanted)
            if not merged:
                break
            for entry, cold_only in merged:
                if cold_only and await self._deleted_here(bucket, entry.key):
                    continue
                found.append(entry)
            if len(merged) < wanted:
                break  # short of the limit: both sides ran out and ``merged`` took all they had
            # Hidden keys left the page short: go on after the last key looked at.
            start, inclusive = merged[-1][0].key, False
        return found

    async def _deleted_here(self, bucket: str, key: str) -> bool:
        pending = await self.meta.get_drain(bucket, key)
        return pending is not None and pending.op == "delete"

    async def close(self) -> None:
        await self.cold.close()


def union_source(tier: "Tiering", link: Link, owner_id: str, prefix: str) -> UnionSource:
    directory = cold_directory(prefix)
    cold = EmptyColdSide() if directory is None else ColdWindow(tier.store(link), directory, owner_id)
    return UnionSource(tier.meta, cold)


async def list_linked(tier: "Tiering", link: Link, owner_id: str, *, prefix: str, delimiter: str,
                      start_after: str, max_keys: int) -> ListPage:
    """One ListObjects page of a linked bucket: from the index alone once it is synced, else the union. While
    the cold store is unreachable, an unsynced bucket lists what the index holds (warm and known keys), marked
    ``incomplete``: a data loader listing its shard during a partition gets an answer, not a 503."""
    if await is_synced(tier.meta, link.bucket):
        return await list_page(tier.meta, link.bucket, prefix=prefix, delimiter=delimiter,
                               start_after=start_after, max_keys=max_keys)
    if tier.reachable(link):
        source = union_source(tier, link, owner_id, prefix)
        try:
            return await list_page(source, link.bucket, prefix=prefix, delimiter=delimiter,  # type: ignore[arg-type]
                                   start_after=start_after, max_keys=max_keys)
        except errors.ColdStoreUnavailable:
            if tier.reachable(link):
                raise  # a failure of this listing alone: the client retries
        finally:
            await source.close()
    page = await list_page(tier.meta, link.bucket, prefix=prefix, delimiter=delimiter, start_after=start_after,
                           max_keys=max_keys)
    page.incomplete = True
    return page
