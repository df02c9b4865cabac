"""What a Blob handler gets: the parsed, authenticated request."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from atoll.blob.errors import BlobError
from atoll.core.models import Identity
from atoll.core.namespace import Namespace
from atoll.http.server import Request

if TYPE_CHECKING:
    from atoll.auth.sas import SasGrant


@dataclass(slots=True)
class BlobContext:
    http: Request
    ns: Namespace
    account: str  # account name from the path or the host
    container: str | None
    blob: str | None
    query: dict[str, str]  # decoded; names lower-cased (Azure query names are case-insensitive)
    identity: Identity | None = None  # None: anonymous (read of a public container)
    sas: "SasGrant | None" = None  # set when the request was authenticated by a SAS
    operation: str = ""
    # For an anonymous read of a public container: who the namespace sees reading (its owner, reads only).
    public_reader: Identity | None = None

    @property
    def actor(self) -> Identity | None:
        """The identity to pass to the namespace for a read: the caller, or the public reader."""
        return self.identity if self.identity is not None else self.public_reader

    @property
    def headers(self) -> dict[str, str]:
        """Request headers; names are lower-case."""
        return self.http.headers

    @property
    def request_id(self) -> str:
        return self.http.id

    def require(self, permission: str) -> None:
        """Refuse a SAS that does not grant ``permission`` ('r', 'a', 'c', 'w', 'd', 'l', ...) on this target.
        Shared Key callers hold every permission; anonymous callers were already limited to public reads."""
        if self.sas is None:
            return
        if not self.sas.allows(permission, self.container, self.blob):
            raise BlobError("AuthorizationPermissionMismatch",
                            "This request is not authorized to perform this operation using this permission.", 403)

    def int_param(self, name: str, default: int, *, low: int = 0, high: int | None = None) -> int:
        raw = self.query.get(name)
        if raw is None or raw == "":
            return default
        if not raw.isascii() or not raw.isdigit() or len(raw) > 10:
            raise BlobError("InvalidQueryParameterValue", f"Value for one of the query parameters specified in "
                            f"the request URI is invalid. ({name})", 400)
        value = int(raw)
        if value < low or (high is not None and value > high):
            raise BlobError("OutOfRangeQueryParameterValue", f"One of the query parameters specified in the "
                            f"request URI is outside the permissible range. ({name})", 400)
        return value
