"""Storage quotas (#7): when a write is over a limit, how the refusal reads, and early admission of bodies.

The exact check runs inside the metadata transaction of every client write (``atoll.stores.meta``): it compares
the usage counters before and after the change, so concurrent writers on any process can never overshoot. A
write is refused only when it *grows* a dimension past its limit: deletes, aborts and shrinking overwrites pass
even above a lowered limit.

Early admission is the cheap first line: before a body is read, its declared size plus the bytes this process
has admitted for bodies still streaming in must fit next to the committed usage. A reservation ends when its
body is stored, just before the commit: between the two the bytes are counted by neither side, so admission can
only ever be too lenient (the commit check then refuses), never refuse what the exact check would allow.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from atoll import errors

_UNITS = (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10))


def format_size(size: int) -> str:
    """``10 GiB``, ``1000 bytes``: a limit exactly, in the largest binary unit that divides it."""
    for name, unit in _UNITS:
        if size >= unit and size % unit == 0:
            return f"{size // unit} {name}"
    return f"{size} bytes"


def grows_past(limit: int, before: int, after: int) -> bool:
    """Whether a change from ``before`` to ``after`` is refused under ``limit`` (0: none)."""
    return 0 < limit < after and after > before


def exceeded(scope: str, name: str, dimension: str, limit: int, bucket: str) -> errors.QuotaExceeded:
    """The refusal: ``scope`` is "tenant" or "bucket", ``dimension`` "bytes" or "objects"."""
    what = f"{format_size(limit)} byte quota" if dimension == "bytes" else f"{limit} object quota"
    return errors.QuotaExceeded(f"{scope} {name}: {what} exceeded", bucket=bucket, scope=scope,
                                dimension=dimension)


@dataclass(slots=True, frozen=True)
class Scope:
    """One quota scope of a write: its kind ("tenant" or "bucket"), name, limits and committed usage."""

    kind: str
    name: str
    max_bytes: int
    max_objects: int
    used_bytes: int
    used_objects: int


class Admission:
    """Bytes this process admitted for bodies still streaming in, per scope; one per process (Namespace)."""

    def __init__(self) -> None:
        self._held: Counter[tuple[str, str]] = Counter()

    def admit(self, scopes: list[Scope], bucket: str, size: int, new_objects: int) -> list[tuple[str, str]]:
        """Reserve ``size`` bytes in every scope, or raise QuotaExceeded naming the first that cannot take them;
        returns the reservation for ``release``."""
        for scope in scopes:
            key = (scope.kind, scope.name)
            if size > 0 and grows_past(scope.max_bytes, scope.used_bytes,
                                       scope.used_bytes + self._held[key] + size):
                raise exceeded(scope.kind, scope.name, "bytes", scope.max_bytes, bucket)
            if new_objects > 0 and grows_past(scope.max_objects, scope.used_objects,
                                              scope.used_objects + new_objects):
                raise exceeded(scope.kind, scope.name, "objects", scope.max_objects, bucket)
        held = [(scope.kind, scope.name) for scope in scopes] if size > 0 else []
        for key in held:
            self._held[key] += size
        return held

    def release(self, held: list[tuple[str, str]], size: int) -> None:
        for key in held:
            self._held[key] -= size
            if self._held[key] <= 0:
                del self._held[key]

    def held(self, kind: str, name: str) -> int:
        return self._held.get((kind, name), 0)
