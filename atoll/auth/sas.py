"""Azure Blob shared access signatures (service SAS and account SAS): pure verification, no I/O.

Contract
--------
``is_sas(query)`` tells whether a request carries a SAS (a ``sig`` parameter). ``verify_sas(query, account=,
key=, container=, blob=, client_ip=, scheme=, now=)`` checks the signature over the request's own target and the
SAS's time window, IP range and protocol, and returns a ``SasGrant``; anything wrong raises ``BlobAuthError``
(``atoll.auth.sharedkey``) with Azure's code, always 403:

* a signature that does not verify, a malformed or missing field, an unsupported kind (user delegation SAS,
  ``sv`` older than 2015-04-05), an unknown stored access policy, or a time outside ``[st, se]``:
  ``AuthenticationFailed``;
* a client address outside ``sip``: ``AuthorizationSourceIPMismatch``; plain HTTP when ``spr=https``:
  ``AuthorizationProtocolMismatch``; an account SAS without ``b`` in ``ss``: ``AuthorizationServiceMismatch``.

``query`` is the decoded query with lower-cased names (``BlobContext.query``). ``container``/``blob`` name the
request's target: a service SAS is verified against the resource the request names (as Azure does), so a SAS for
one blob presented for another fails its signature. ``policies`` maps the container's stored access policy ids
(signed identifiers of its ACL, ``policies_from_acl``) to ``StoredAccessPolicy``; a SAS naming ``si`` without it
is refused.

Then, per operation, ``SasGrant.authorize(operation, container, blob)`` raises
``AuthorizationPermissionMismatch`` (the SAS lacks every permission the operation accepts, or a service SAS
cannot do this operation at all) or ``AuthorizationResourceTypeMismatch`` (account SAS without the resource
type); ``SasGrant.allows(permissions, container, blob)`` is the boolean form for one permission check inside a
handler. ``OPERATION_PERMISSIONS`` is the table behind both, keyed by the operation names of
``atoll.blob.router``.

Strings to sign (learn.microsoft.com "Create a service SAS" / "Create an account SAS"; what azure-storage-blob
12.x generates):

* service SAS, sv >= 2020-12-06: sp, st, se, ``/blob/<account>/<container>[/<blob>]``, si, sip, spr, sv, sr,
  snapshot time, ses, rscc, rscd, rsce, rscl, rsct, joined with ``\\n`` (no trailing newline);
  2018-11-09 <= sv < 2020-12-06 drops ses; 2015-04-05 <= sv < 2018-11-09 also drops sr and the snapshot time.
* account SAS: account, sp, ss, srt, st, se, sip, spr, sv[, ses from 2020-12-06], each followed by ``\\n``.

The signed values are the decoded query values exactly as sent; ``st``/``se`` are also parsed (ISO 8601 UTC:
date, minutes, seconds or fractional seconds) for the time check.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone

from atoll.auth.sharedkey import BlobAuthError, decode_account_key

__all__ = [
    "ACCOUNT_SAS_PERMISSIONS", "OPERATION_PERMISSIONS", "RESPONSE_OVERRIDES", "SasGrant", "StoredAccessPolicy",
    "is_sas", "policies_from_acl", "verify_sas",
]

_AUTH_FAILED = ("Server failed to authenticate the request. Make sure the value of Authorization header is formed "
                "correctly including the signature.")
_PERMISSION_MISMATCH = "This request is not authorized to perform this operation using this permission."
_RESOURCE_TYPE_MISMATCH = "This request is not authorized to perform this operation using this resource type."

# Response header overrides a service SAS may sign, and the response header each one sets on GET/HEAD.
RESPONSE_OVERRIDES = {
    "rscc": "cache-control", "rscd": "content-disposition", "rsce": "content-encoding",
    "rscl": "content-language", "rsct": "content-type",
}

# What each Blob operation accepts: any one of these permission letters. "" means a service SAS can never
# authorise the operation (only an account SAS or Shared Key can). Sources: the permission tables of "Create a
# service SAS" and "Create an account SAS"; Create (c) only ever creates, Write (w) also overwrites, so a write
# that may create accepts either here, and the handler refuses a c-only SAS that would overwrite.
OPERATION_PERMISSIONS: dict[str, str] = {
    # account level: account SAS only
    "ListContainers": "", "GetBlobServiceProperties": "", "SetBlobServiceProperties": "",
    "GetBlobServiceStats": "", "GetAccountInformation": "racwdl", "FindBlobsByTags": "",
    "GetUserDelegationKey": "", "BlobBatch": "",
    # containers: only List Blobs is reachable by a service SAS
    "CreateContainer": "", "DeleteContainer": "", "GetContainerProperties": "", "GetContainerMetadata": "",
    "SetContainerMetadata": "", "GetContainerACL": "", "SetContainerACL": "", "LeaseContainer": "",
    "RestoreContainer": "", "RenameContainer": "",
    "ListBlobs": "l",
    # blobs
    "PutBlob": "cw", "PutAppendBlob": "cw", "PutPageBlob": "cw", "PutBlobFromURL": "cw",
    "GetBlob": "r", "GetBlobProperties": "r", "GetBlobMetadata": "r", "GetBlockList": "r", "GetPageRanges": "r",
    "QueryBlobContents": "r",
    "SetBlobProperties": "w", "SetBlobMetadata": "w", "PutBlock": "w", "PutBlockFromURL": "w",
    "PutBlockList": "w", "PutPage": "w", "AbortCopyBlob": "w", "SetBlobTier": "w", "UndeleteBlob": "w",
    "LeaseBlob": "w", "AppendBlock": "aw",
    "CopyBlob": "cw", "CopyBlobFromURL": "cw", "SnapshotBlob": "cw",
    "DeleteBlob": "d",
    "GetBlobTags": "t", "SetBlobTags": "t",
    "SetBlobExpiry": "w", "SetBlobImmutabilityPolicy": "i", "DeleteBlobImmutabilityPolicy": "i",
    "SetBlobLegalHold": "i",
}

# Account SAS: (resource type, accepted permissions). The resource type is s(ervice), c(ontainer) or o(bject).
ACCOUNT_SAS_PERMISSIONS: dict[str, tuple[str, str]] = {
    "ListContainers": ("s", "l"), "GetBlobServiceProperties": ("s", "r"), "SetBlobServiceProperties": ("s", "w"),
    "GetBlobServiceStats": ("s", "r"), "GetAccountInformation": ("sco", "racwdlup"), "FindBlobsByTags": ("s", "f"),
    "GetUserDelegationKey": ("", ""), "BlobBatch": ("", ""),
    "CreateContainer": ("c", "cw"), "DeleteContainer": ("c", "d"), "GetContainerProperties": ("c", "r"),
    "GetContainerMetadata": ("c", "r"), "SetContainerMetadata": ("c", "w"), "LeaseContainer": ("c", "w"),
    # Stored access policies are managed with the account key only.
    "GetContainerACL": ("", ""), "SetContainerACL": ("", ""),
    "RestoreContainer": ("c", "w"), "RenameContainer": ("", ""),
    "ListBlobs": ("c", "l"),
}

_TITLE_CASE = {name: "-".join(part.capitalize() for part in name.split("-")) for name in RESPONSE_OVERRIDES.values()}

_API_2015 = "2015-04-05"
_API_2018 = "2018-11-09"
_API_2020 = "2020-12-06"

_SERVICE_RESOURCES = ("b", "c", "bs", "bv", "d")
_TIME_FORMATS = ("%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%MZ", "%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%d")


@dataclass(frozen=True, slots=True)
class StoredAccessPolicy:
    """A container's signed identifier: the fields a SAS naming it (``si``) leaves out come from here."""

    start: str | None = None
    expiry: str | None = None
    permission: str | None = None


@dataclass(frozen=True, slots=True)
class SasGrant:
    """What a verified SAS lets its bearer do.

    ``resource`` is the service SAS ``sr`` ('b', 'bs', 'bv', 'c', 'd') or 'account'. ``container``/``blob`` are
    the resource the SAS was verified for (the request's target; for 'c' the blob is None, for 'd' the blob is
    the directory). ``response_headers`` maps response header names (content-type, ...) to the values a service
    SAS signed (rsct, ...): GET and HEAD must answer with them.
    """

    account: str
    permissions: str
    resource: str
    container: str | None
    blob: str | None
    version: str
    start: float | None
    expiry: float
    services: str = ""
    resource_types: str = ""
    ip_range: str | None = None
    protocol: str = "https,http"
    identifier: str | None = None
    encryption_scope: str | None = None
    response_headers: dict[str, str] = field(default_factory=dict)

    def override_response_headers(self, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """``headers`` (a GET/HEAD answer's) with the signed rscc/rscd/rsce/rscl/rsct values in place."""
        if not self.response_headers:
            return headers
        kept = [(name, value) for name, value in headers if name.lower() not in self.response_headers]
        return kept + [(_TITLE_CASE[name], value) for name, value in self.response_headers.items()]

    def allows(self, permission: str, container: str | None, blob: str | None) -> bool:
        """Whether the SAS grants any one of the letters in ``permission`` on ``container``/``blob``
        (``blob`` None: the container itself, ``container`` None: the account)."""
        if not any(letter in self.permissions for letter in permission):
            return False
        if self.resource == "account":
            return _level(container, blob) in self.resource_types
        if blob is None and "l" not in permission:
            # The only container-level operation a service SAS reaches is List Blobs: a container SAS with 'd'
            # deletes blobs, never the container.
            return False
        return self._covers(container, blob)

    def authorize(self, operation: str, container: str | None, blob: str | None) -> None:
        """Raise ``BlobAuthError`` unless this SAS may perform ``operation`` (an ``atoll.blob.router`` name)."""
        if self.resource == "account":
            resource_types, permissions = ACCOUNT_SAS_PERMISSIONS.get(
                operation, ("o", OPERATION_PERMISSIONS.get(operation, "")))
            if permissions and not any(t in self.resource_types for t in resource_types):
                raise BlobAuthError("AuthorizationResourceTypeMismatch", _RESOURCE_TYPE_MISMATCH)
        else:
            permissions = OPERATION_PERMISSIONS.get(operation, "")
            if not self._covers(container, blob):
                raise BlobAuthError("AuthorizationPermissionMismatch", _PERMISSION_MISMATCH)
        if not permissions or not any(letter in self.permissions for letter in permissions):
            raise BlobAuthError("AuthorizationPermissionMismatch", _PERMISSION_MISMATCH)

    def _covers(self, container: str | None, blob: str | None) -> bool:
        if container is None or container != self.container:
            return False
        if self.resource == "c":
            return True
        if blob is None:
            # A blob or directory SAS reaches no container-level operation.
            return False
        if self.resource == "d":
            return self.blob is not None and blob.startswith(self.blob.rstrip("/") + "/")
        return blob == self.blob


def policies_from_acl(entries: list[dict[str, str]]) -> dict[str, StoredAccessPolicy]:
    """A container ACL's signed identifiers (``{"Id", "Start", "Expiry", "Permission"}`` dicts, as
    ``BucketProperties.access_policies`` keeps them) as ``verify_sas``'s ``policies``."""
    return {entry["Id"]: StoredAccessPolicy(start=entry.get("Start") or None, expiry=entry.get("Expiry") or None,
                                            permission=entry.get("Permission") or None)
            for entry in entries if entry.get("Id")}


def is_sas(query: Mapping[str, str]) -> bool:
    """Whether the (decoded, lower-cased) query carries a shared access signature."""
    return "sig" in query


def verify_sas(query: Mapping[str, str], *, account: str, key: bytes | str, container: str | None,
               blob: str | None, client_ip: str, scheme: str, now: float,
               policies: Mapping[str, StoredAccessPolicy] | None = None) -> SasGrant:
    """Verify the SAS in ``query`` for a request on ``container``/``blob`` of ``account`` (see the module doc)."""
    # What the signature proves depends only on the query, the target and the key: a SAS URL that a data loader
    # fetches again and again is verified once (a dict lookup instead of an HMAC and a parse per request). The
    # time window, the client's address and the protocol are checked on every request.
    cache_key = (tuple(query.items()), account, key, container, blob) if policies is None else None
    grant = _verified.get(cache_key) if cache_key is not None else None
    if grant is None:
        grant = _verified_grant(query, account=account, key=key, container=container, blob=blob, policies=policies)
        if cache_key is not None:
            if len(_verified) >= _VERIFIED_MAX:
                _verified.clear()
            _verified[cache_key] = grant
    return _check_use(grant, query, client_ip=client_ip, scheme=scheme, now=now)


_VERIFIED_MAX = 4096
_verified: dict[tuple, "SasGrant"] = {}


def _verified_grant(query: Mapping[str, str], *, account: str, key: bytes | str, container: str | None,
                    blob: str | None, policies: Mapping[str, StoredAccessPolicy] | None) -> SasGrant:
    q = {name.lower(): value for name, value in query.items()}
    version = q.get("sv", "")
    if not version:
        raise _failed("The signed version (sv) is required.")
    if version < _API_2015:
        raise _failed(f"Signed version {version} is not supported; use 2015-04-05 or later.")
    if "skoid" in q or "sktid" in q:
        raise _failed("User delegation SAS is not supported by Atoll; use a service or account SAS.")
    signature = _signature(q.get("sig", ""))
    try:
        secret = decode_account_key(key)
    except ValueError:
        raise _failed("The SAS could not be verified.") from None

    # The signature is checked before any stored access policy is looked up, so an unsigned probe learns nothing
    # about the container's policies.
    if "ss" in q or "srt" in q:
        sts = _account_string_to_sign(q, account, version)
    else:
        resource, granted_blob = _service_target(q, container, blob)
        sts = _service_string_to_sign(q, account, container, granted_blob, resource, version)
    if not hmac.compare_digest(hmac.new(secret, sts.encode("utf-8"), hashlib.sha256).digest(), signature):
        raise _failed("Signature did not match. String to sign used was " + repr(sts))
    if "ss" in q or "srt" in q:
        grant = _account_grant(q, account, version)
    else:
        grant = _service_grant(q, account, container, granted_blob, resource, version, policies)
    return grant


def _check_use(grant: SasGrant, q: Mapping[str, str], *, client_ip: str, scheme: str, now: float) -> SasGrant:
    if grant.start is not None and now < grant.start or now > grant.expiry:
        raise _failed(f"Signature not valid in the specified time frame: Start [{q.get('st', '')}] - "
                      f"Expiry [{q.get('se', '')}] - Current [{_format_time(now)}]")
    if grant.ip_range is not None and not _ip_in_range(client_ip, grant.ip_range):
        raise BlobAuthError("AuthorizationSourceIPMismatch",
                            f"This request is not authorized to perform this operation using this source IP "
                            f"{client_ip or 'unknown'}.")
    if grant.protocol == "https" and scheme.lower() != "https":
        raise BlobAuthError("AuthorizationProtocolMismatch",
                            "This request is not authorized to perform this operation using this protocol.")
    if grant.resource == "account" and "b" not in grant.services:
        raise BlobAuthError("AuthorizationServiceMismatch",
                            "This request is not authorized to perform this operation using this service.")
    return grant


# --- service SAS ------------------------------------------------------------------------------------------------

def _service_target(q: Mapping[str, str], container: str | None, blob: str | None) -> tuple[str, str | None]:
    """(sr, the blob or directory the SAS must have been signed for) for a request on ``container``/``blob``."""
    resource = q.get("sr", "")
    if resource not in _SERVICE_RESOURCES:
        raise _failed("The signed resource (sr) must be one of b, bs, bv, c, d.")
    if container is None:
        raise _failed("A service SAS cannot authorise an account-level request.")
    granted_blob: str | None = None
    if resource == "d":
        depth = q.get("sdd", "")
        if not depth.isdigit() or int(depth) < 1 or blob is None:
            raise _failed("A directory SAS (sr=d) needs a signed directory depth (sdd) and a path below it.")
        segments = blob.split("/")
        if len(segments) <= int(depth):
            raise _failed("The request path is not below the SAS directory.")
        granted_blob = "/".join(segments[:int(depth)])
    elif resource != "c":
        if blob is None:
            raise _failed("A blob SAS cannot authorise a container-level request.")
        granted_blob = blob
    return resource, granted_blob


def _service_grant(q: Mapping[str, str], account: str, container: str, granted_blob: str | None, resource: str,
                   version: str, policies: Mapping[str, StoredAccessPolicy] | None) -> SasGrant:
    permission, start, expiry = q.get("sp"), q.get("st"), q.get("se")
    identifier = q.get("si") or None
    if identifier is not None:
        policy = (policies or {}).get(identifier)
        if policy is None:
            raise _failed(f"The signed identifier '{identifier}' is not a stored access policy of the container.")
        for name, own, stored in (("sp", permission, policy.permission), ("st", start, policy.start),
                                  ("se", expiry, policy.expiry)):
            if own and stored:
                raise _failed(f"{name} is given both in the SAS and in its stored access policy.")
        permission, start, expiry = permission or policy.permission, start or policy.start, expiry or policy.expiry
    if not permission or not expiry:
        raise _failed("The signed permissions (sp) and expiry (se) are required.")

    return SasGrant(
        account=account, permissions=permission, resource=resource, container=container, blob=granted_blob,
        version=version, start=_parse_time(start, "st") if start else None, expiry=_parse_time(expiry, "se"),
        ip_range=_ip_range(q.get("sip")), protocol=_protocol(q.get("spr")), identifier=identifier,
        encryption_scope=q.get("ses") or None,
        response_headers={header: q[name] for name, header in RESPONSE_OVERRIDES.items() if q.get(name)},
    )


def _service_string_to_sign(q: Mapping[str, str], account: str, container: str | None, granted_blob: str | None,
                            sr: str, version: str) -> str:
    resource = f"/blob/{account}/{container}"
    if granted_blob is not None:
        resource += "/" + granted_blob
    fields = [q.get("sp", ""), q.get("st", ""), q.get("se", ""), resource, q.get("si", ""), q.get("sip", ""),
              q.get("spr", ""), version]
    if version >= _API_2018:
        # The snapshot time: the request's snapshot for sr=bs, its version id for sr=bv (the SDK signs either
        # in this slot and leaves it out of the token: the request URL carries it).
        snapshot = {"bs": q.get("snapshot", ""), "bv": q.get("versionid", "")}.get(sr, "")
        fields += [sr, snapshot]
    if version >= _API_2020:
        fields.append(q.get("ses", ""))
    fields += [q.get(name, "") for name in RESPONSE_OVERRIDES]
    return "\n".join(fields)


# --- account SAS ------------------------------------------------------------------------------------------------

def _account_grant(q: Mapping[str, str], account: str, version: str) -> SasGrant:
    services, resource_types = q.get("ss", ""), q.get("srt", "")
    permission, expiry = q.get("sp", ""), q.get("se", "")
    if not services or not resource_types or not permission or not expiry:
        raise _failed("An account SAS needs ss, srt, sp and se.")
    if "si" in q:
        raise _failed("An account SAS cannot refer to a stored access policy (si).")
    if set(resource_types) - set("sco"):
        raise _failed("The signed resource types (srt) may contain only s, c and o.")
    start = q.get("st")
    return SasGrant(
        account=account, permissions=permission, resource="account", container=None, blob=None, version=version,
        start=_parse_time(start, "st") if start else None, expiry=_parse_time(expiry, "se"),
        services=services, resource_types=resource_types, ip_range=_ip_range(q.get("sip")),
        protocol=_protocol(q.get("spr")), encryption_scope=q.get("ses") or None,
    )


def _account_string_to_sign(q: Mapping[str, str], account: str, version: str) -> str:
    names = ["sp", "ss", "srt", "st", "se", "sip", "spr", "sv"]
    if version >= _API_2020:
        names.append("ses")
    return account + "\n" + "".join(q.get(name, "") + "\n" for name in names)


# --- fields -----------------------------------------------------------------------------------------------------

def _failed(detail: str) -> BlobAuthError:
    return BlobAuthError("AuthenticationFailed", _AUTH_FAILED, detail=detail)


def _signature(text: str) -> bytes:
    # A '+' sent unencoded arrives as a space once the query is decoded; base64 has no spaces of its own.
    try:
        return base64.b64decode(text.replace(" ", "+"), validate=True)
    except (binascii.Error, ValueError):
        raise _failed("The signature (sig) is not valid base64.") from None


@functools.lru_cache(maxsize=4096)
def _parse_time(text: str, name: str) -> float:
    # Cached: a SAS URL is reused for many requests, and strptime was half the cost of checking one.
    for fmt in _TIME_FORMATS:
        try:
            return datetime.strptime(text, fmt).replace(tzinfo=timezone.utc).timestamp()
        except ValueError:
            continue
    # Fractional seconds longer than Python's microseconds (Azure allows 7 digits).
    head, dot, tail = text.partition(".")
    if dot and tail.endswith("Z") and tail[:-1].isdigit():
        return _parse_time(head + "Z", name) + float("0." + tail[:-1])
    raise _failed(f"The {name} value '{text}' is not an ISO 8601 UTC time.")


def _format_time(stamp: float) -> str:
    return datetime.fromtimestamp(stamp, timezone.utc).strftime("%a, %d %b %Y %H:%M:%S GMT")


def _protocol(value: str | None) -> str:
    if not value:
        return "https,http"
    if value not in ("https", "https,http", "http,https"):
        raise _failed(f"The signed protocol (spr) '{value}' must be https or https,http.")
    return value


def _ip_range(value: str | None) -> str | None:
    if not value:
        return None
    low, _, high = value.partition("-")
    try:
        ipaddress.ip_address(low)
        if high:
            ipaddress.ip_address(high)
    except ValueError:
        raise _failed(f"The signed IP (sip) '{value}' is not an address or an address range.") from None
    return value


def _ip_in_range(client_ip: str, ip_range: str) -> bool:
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    low_text, _, high_text = ip_range.partition("-")
    low = ipaddress.ip_address(low_text)
    high = ipaddress.ip_address(high_text) if high_text else low
    if low.version != address.version or high.version != address.version:
        return False
    return low <= address <= high


def _level(container: str | None, blob: str | None) -> str:
    return "s" if container is None else "c" if blob is None else "o"
