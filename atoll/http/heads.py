"""Response header lines built once per object version, for the front ends' GET and HEAD answers.

A version's ETag, dates, content headers and metadata never change (a metadata update makes a new modification
time), and hot small objects are read over and over: their header lines are built and encoded once and then
sent as bytes. A version not yet read from its cold store is not cached: its attributes may still arrive, under
the same version id (atoll.core.tiering.tier.Tiering.with_attributes).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from atoll.core.models import ABSENT, ObjectVersion

Pairs = tuple[tuple[str, str], ...]


class VersionHeads:
    """``heads(version)`` -> (header pairs, the same as encoded header lines, ``extra(version)``)."""

    def __init__(self, build: Callable[[ObjectVersion], Sequence[tuple[str, str]]],
                 extra: Callable[[ObjectVersion], Any] = lambda version: None, limit: int = 16384) -> None:
        self._build = build
        self._extra = extra
        self._limit = limit
        self._cache: dict[tuple[str, float], tuple[Pairs, bytes, Any]] = {}

    def __call__(self, version: ObjectVersion) -> tuple[Pairs, bytes, Any]:
        key = (version.version_id, version.last_modified)
        cached = self._cache.get(key)
        if cached is None:
            pairs = tuple(self._build(version))
            encoded = "".join([f"{name}: {value}\r\n" for name, value in pairs]).encode("latin-1", "replace")
            cached = (pairs, encoded, self._extra(version))
            if version.residency == ABSENT:
                return cached
            if len(self._cache) >= self._limit:
                self._cache.clear()
            self._cache[key] = cached
        return cached
