"""Conditional reads (If-Match, If-None-Match, If-Modified-Since, If-Unmodified-Since) as RFC 9110 and S3 define
them, evaluated against an object version. Pure logic shared by every front end."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timezone
from email.utils import parsedate_to_datetime

from atoll import errors


@dataclass(slots=True, frozen=True)
class ReadConditions:
    if_match: str | None = None
    if_none_match: str | None = None
    if_modified_since: str | None = None
    if_unmodified_since: str | None = None

    @property
    def empty(self) -> bool:
        return not (self.if_match or self.if_none_match or self.if_modified_since or self.if_unmodified_since)


def _etags(header: str) -> list[str]:
    return [t.strip().removeprefix("W/").strip('"') for t in header.split(",") if t.strip()]


def parse_http_date(value: str) -> float | None:
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:  # the asctime form has no zone; HTTP dates are always GMT, never server-local
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def check(conditions: ReadConditions, etag: str, last_modified: float) -> None:
    """Raise PreconditionFailed or NotModified when the conditions say so (S3's precedence: If-Match beats
    If-Unmodified-Since, If-None-Match beats If-Modified-Since). Unparseable dates are ignored, as HTTP says."""
    modified = int(last_modified)  # HTTP dates have whole seconds
    if conditions.if_match is not None:
        tags = _etags(conditions.if_match)
        if "*" not in tags and etag not in tags:
            raise errors.PreconditionFailed(condition="If-Match")
    elif conditions.if_unmodified_since is not None:
        since = parse_http_date(conditions.if_unmodified_since)
        if since is not None and modified > since:
            raise errors.PreconditionFailed(condition="If-Unmodified-Since")
    if conditions.if_none_match is not None:
        tags = _etags(conditions.if_none_match)
        if "*" in tags or etag in tags:
            raise errors.NotModified(etag=etag)
    elif conditions.if_modified_since is not None:
        since = parse_http_date(conditions.if_modified_since)
        if since is not None and modified <= since:
            raise errors.NotModified(etag=etag)
