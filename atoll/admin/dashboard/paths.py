"""``data-field`` paths: where a number on a page comes from in the ``/api/v1/dashboard`` document.

A path is the keys from the document's root to the value, joined by ``.``; in each key ``%`` is written ``%25``
and ``.`` is written ``%2E`` (so bucket names, endpoint URLs and node names with dots stay one key). A key into a
list is the item's index. Decoding is ``decodeURIComponent`` (JavaScript) or ``urllib.parse.unquote`` (Python) of
each piece after splitting on ``.``. Examples: ``warm.resident_bytes``, ``buckets.data%2Eset.backlog.objects``,
``jobs.8fd9ec84a767839e.progress.fraction``, ``cold.http://127%2E0%2E0%2E1:5000.state``,
``audit.entries.0.action``.
"""

from __future__ import annotations

from typing import Any, Iterable
from urllib.parse import unquote


def escape_key(key: Any) -> str:
    return str(key).replace("%", "%25").replace(".", "%2E")


def field_path(parts: Iterable[Any]) -> str:
    return ".".join(escape_key(part) for part in parts)


def split_path(path: str) -> list[str]:
    return [unquote(piece) for piece in path.split(".")]


def lookup(document: Any, parts: Iterable[Any]) -> Any:
    """The value at ``parts`` (keys, or a path's pieces), None where the document has nothing there."""
    value = document
    for part in parts:
        if isinstance(value, dict):
            value = value.get(str(part))
        elif isinstance(value, list) and str(part).isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


def row_keys(value: Any) -> list[str]:
    """What identifies the rows made from ``value``: a mapping's keys, a list's items' ids (or indexes)."""
    if isinstance(value, dict):
        return [str(key) for key in value]
    if isinstance(value, list):
        return [str(item.get("id", index)) if isinstance(item, dict) else str(index)
                for index, item in enumerate(value)]
    return []
