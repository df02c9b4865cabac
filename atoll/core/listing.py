"""Key listing with prefixes and delimiters, answered from the index with one seek per page and per common prefix.

A delimiter listing never scans the keys it rolls up: after emitting a common prefix ``cp`` it seeks straight to
the first key after every key that starts with ``cp`` (a skip-scan), so a million keys under ten prefixes cost
ten seeks. Keys compare as UTF-8 bytes; Python compares ``str`` by code point, which is the same order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from atoll.core.models import ListEntry
from atoll.stores.meta.base import MetaStore

_MAX_CODE_POINT = 0x10FFFF
_PROBE_ROWS = 8


def prefix_successor(prefix: str) -> str | None:
    """The smallest string greater than every string that starts with ``prefix`` (None if there is none)."""
    chars = list(prefix)
    while chars:
        code = ord(chars[-1])
        if code < _MAX_CODE_POINT:
            code += 1
            if 0xD800 <= code <= 0xDFFF:  # surrogates cannot be encoded; skip to the next scalar value
                code = 0xE000
            chars[-1] = chr(code)
            return "".join(chars)
        chars.pop()
    return None


def _is_common_prefix(name: str, prefix: str, delimiter: str) -> bool:
    """True if ``name`` is what a key rolls up to under ``prefix``: it ends at the first delimiter after it."""
    if not name.startswith(prefix):
        return False
    at = name.find(delimiter, len(prefix))
    return at >= 0 and at + len(delimiter) == len(name)


@dataclass(slots=True)
class ListPage:
    entries: list[ListEntry] = field(default_factory=list)
    prefixes: list[str] = field(default_factory=list)
    truncated: bool = False
    last: str | None = None  # the last key or common prefix returned: where the next page starts after
    incomplete: bool = False  # from the index alone, because the bucket's cold store could not be listed


async def list_page(meta: MetaStore, bucket: str, *, prefix: str = "", delimiter: str = "",
                    start_after: str = "", max_keys: int = 1000) -> ListPage:
    page = ListPage()
    if max_keys <= 0:
        return page
    end = prefix_successor(prefix) if prefix else None
    if prefix and start_after < prefix:
        cursor, inclusive = prefix, True
    elif delimiter and _is_common_prefix(start_after, prefix, delimiter):
        # A page that ended on a common prefix continues after it (a v1 NextMarker or a v2 token names it):
        # the keys under it were rolled up already and must not come back as the same prefix.
        successor = prefix_successor(start_after)
        if successor is None:
            return page
        cursor, inclusive = successor, True
    else:
        cursor, inclusive = start_after, False
    if end is not None and cursor >= end:
        return page
    count = 0
    # With a delimiter, a batch may end at its first key (a rolled-up prefix, then a seek): ask for a few keys
    # after each seek and grow while the keys stay plain, so a page of 1,000 prefixes reads ~1,000 rows, not 1M.
    probe = _PROBE_ROWS if delimiter else max_keys
    while count < max_keys:
        wanted = min(max_keys - count, probe)
        batch = await meta.list_objects(bucket, cursor, inclusive, end, wanted)
        if not batch:
            return page
        jumped = False
        for entry in batch:
            key = entry.key
            if delimiter:
                at = key.find(delimiter, len(prefix))
                if at >= 0:
                    common = key[: at + len(delimiter)]
                    page.prefixes.append(common)
                    page.last = common
                    count += 1
                    successor = prefix_successor(common)
                    if successor is None or (end is not None and successor >= end):
                        return page
                    cursor, inclusive = successor, True
                    jumped = True
                    break
            page.entries.append(entry)
            page.last = key
            count += 1
            cursor, inclusive = key, False
        if not jumped and len(batch) < wanted:
            return page  # the store had fewer keys than asked for: nothing follows
        probe = _PROBE_ROWS if jumped else probe * 4
    page.truncated = bool(await meta.list_objects(bucket, cursor, inclusive, end, 1))
    return page
