"""Query strings of object-storage requests, parsed once: S3 and Blob clients repeat the same query (a presigned
or SAS URL that a data loader fetches again and again, a listing's fixed parameters), so a parse is cached and
the result shared. It must not be modified."""

from __future__ import annotations

from urllib.parse import unquote

_CACHE_MAX = 4096
_parsed: dict[tuple[str, bool], dict[str, str]] = {}


def parse_query(raw: str, *, lower_names: bool = False) -> dict[str, str]:
    """Names and values decoded with ``unquote``, never ``unquote_plus``: both protocols' clients encode '+' as
    %2B, and a literal '+' stays '+'. ``lower_names`` for Azure, whose parameter names are case-insensitive.
    Raises UnicodeDecodeError for escapes that are not UTF-8."""
    if not raw:
        return {}
    cached = _parsed.get((raw, lower_names))
    if cached is not None:
        return cached
    params: dict[str, str] = {}
    for item in raw.split("&"):
        if not item:
            continue
        name, _, value = item.partition("=")
        # Most names and values carry no escapes: skipping unquote() for them halves the parse of a presigned
        # URL's query, which is on the path of every small GET.
        if "%" in name:
            name = unquote(name, errors="strict")
        if "%" in value:
            value = unquote(value, errors="strict")
        params[name.lower() if lower_names else name] = value
    if len(_parsed) >= _CACHE_MAX:
        _parsed.clear()
    _parsed[(raw, lower_names)] = params
    return params
