"""What an S3 handler gets: the parsed, authenticated request."""

from __future__ import annotations

from dataclasses import dataclass

from atoll.auth.sigv4 import AuthContext
from atoll.core.models import Identity
from atoll.core.namespace import Namespace
from atoll.http.query import parse_query as parse_http_query
from atoll.http.server import Request
from atoll.s3.errors import S3Error
from atoll.s3.numbers import is_integer


@dataclass(slots=True)
class S3Context:
    http: Request
    ns: Namespace
    bucket: str | None
    key: str | None
    query: dict[str, str]
    identity: Identity | None = None
    auth: AuthContext | None = None
    operation: str = "Unknown"
    host_bucket: str | None = None  # the bucket named by a virtual-hosted Host header (SigV2 signs it)

    @property
    def headers(self) -> dict[str, str]:
        return self.http.headers

    @property
    def request_id(self) -> str:
        return self.http.id

    def require_identity(self):
        if self.identity is None:
            raise S3Error("AccessDenied", "Access Denied")
        return self.identity

    def int_param(self, name: str, default: int, *, low: int = 0, high: int | None = None) -> int:
        raw = self.query.get(name)
        if raw is None or raw == "":
            return default
        if not is_integer(raw):
            raise S3Error("InvalidArgument", f"Provided {name} not an integer or within integer range",
                          ArgumentName=name, ArgumentValue=raw[:64])
        value = int(raw)
        if value < low or (high is not None and value > high):
            raise S3Error("InvalidArgument", f"Argument {name} must be an integer between {low} and "
                          f"{high if high is not None else 2**31 - 1}", ArgumentName=name, ArgumentValue=raw[:64])
        return value


def parse_query(raw: str) -> dict[str, str]:
    """Query parameters (see atoll.http.query; the result is shared and must not be modified)."""
    try:
        return parse_http_query(raw)
    except UnicodeDecodeError:
        raise S3Error("InvalidURI", "Couldn't parse the specified URI.") from None
