"""Azure Blob Shared Key and Shared Key Lite verification: pure logic, no I/O, no HTTP framework.

Contract
--------
``verify_shared_key(method, raw_path, raw_query, headers, account, key, now=None)`` returns ``None`` when the
``Authorization: SharedKey account:signature`` (or ``SharedKeyLite``) header verifies for ``account`` and
``key``, and raises ``BlobAuthError`` (403 ``AuthenticationFailed``) otherwise. ``headers`` are the request
headers with lower-case names, as ``atoll.http.server.Request`` holds them (latin-1 decoded, repeated headers
joined with ","). ``key`` is the decoded account key (bytes) or its base64 text (str). ``shared_key_account``
names the account an Authorization header claims, so the caller can look its key up first.

What is signed ("Authorize with Shared Key", Blob service, version 2009-09-19 and later), HMAC-SHA256 with the
decoded key, base64::

    VERB \\n Content-Encoding \\n Content-Language \\n Content-Length \\n Content-MD5 \\n Content-Type \\n Date \\n
    If-Modified-Since \\n If-Match \\n If-None-Match \\n If-Unmodified-Since \\n Range \\n
    CanonicalizedHeaders CanonicalizedResource

* Content-Length is signed empty when it is 0 (x-ms-version 2015-02-21 and later; "0" before). Date is signed
  empty when x-ms-date is present.
* CanonicalizedHeaders: every x-ms-* header, ``name:value\\n``, names lower-cased, in the service's collation
  (``header_sort_key``: hyphens count only to break ties, so ``x-ms-meta-a_b`` sorts before ``x-ms-meta-ab``
  whatever ASCII says).
* CanonicalizedResource: ``/`` + account + the path exactly as sent, then ``\\nname:value`` per query parameter,
  names lower-cased and sorted, values percent-decoded (``unquote``, not ``unquote_plus``), a repeated name's
  values sorted and comma-joined. A path-style emulator URL ``/ACCOUNT/container/blob`` therefore signs as
  ``/ACCOUNT/ACCOUNT/container/blob``, which is what azure-storage-blob sends.

Shared Key Lite signs ``VERB \\n Content-MD5 \\n Content-Type \\n Date \\n CanonicalizedHeaders`` + ``/`` +
account + path [+ ``?comp=`` value].

Equivalent spellings of the same request are also accepted, tried only after the exact form fails: the
percent-decoded path (the front end routes by the decoded path, so both name the same resource) and header values
with runs of whitespace folded to one space (the documented canonical form; the Python SDK signs values as sent).
A path-style path without its account segment is not: ``/ACCOUNT/x`` would then verify a signature made for the
host-style ``/x``, another resource.

The request time (x-ms-date, else Date) must be within ``max_skew`` (15 minutes) of ``now``. Errors never carry
the key or the signature the server computed; ``BlobAuthError.detail`` carries the string to sign, as Azure's
AuthenticationErrorDetail does (it is derived from the request alone).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from urllib.parse import unquote

__all__ = [
    "BlobAuthError", "MAX_CLOCK_SKEW", "decode_account_key", "header_sort_key", "shared_key_account",
    "string_to_sign", "string_to_sign_lite", "verify_shared_key",
]

MAX_CLOCK_SKEW = 15 * 60.0

_AUTH_FAILED = ("Server failed to authenticate the request. Make sure the value of Authorization header is formed "
                "correctly including the signature.")

# Headers signed by position, in order, after the verb.
_SIGNED_STANDARD_HEADERS = (
    "content-encoding", "content-language", "content-length", "content-md5", "content-type", "date",
    "if-modified-since", "if-match", "if-none-match", "if-unmodified-since", "range",
)

# The service sorts header names with a Windows-style collation: at the first level the characters below weigh in
# this order (upper and lower case alike) and every other character (hyphen, apostrophe, separators) is ignored;
# ties are then broken by where hyphens and apostrophes stand. Header names are HTTP tokens, so this covers them.
_PRIMARY_ORDER = "!#$%&*.^_`|~+0123456789abcdefghijklmnopqrstuvwxyz"
_PRIMARY_WEIGHT = {c: i + 1 for i, c in enumerate(_PRIMARY_ORDER)}
# Second level, per position: an ordinary character < end of name < apostrophe < hyphen.
_SECONDARY_WEIGHT = {"'": 2, "-": 3}
_END_OF_NAME = 1

_WHITESPACE_RUN = re.compile(r"[ \t\r\n]+")


class BlobAuthError(Exception):
    """A Blob request failed authentication or SAS authorisation.

    ``code`` is the Azure error code (``AuthenticationFailed``, ``AuthorizationPermissionMismatch``,
    ``AuthorizationSourceIPMismatch``, ``AuthorizationProtocolMismatch``, ``AuthorizationResourceTypeMismatch``,
    ``AuthorizationServiceMismatch``, ``AuthorizationFailure``), ``status`` the HTTP status (403), ``message``
    the text for ``<Message>`` and ``detail`` optional text for ``<AuthenticationErrorDetail>``. None of them
    ever holds a key or a signature the server computed.
    """

    def __init__(self, code: str, message: str, *, status: int = 403, detail: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.detail = detail


def decode_account_key(key: bytes | str) -> bytes:
    """The HMAC key: ``key`` itself when bytes (already decoded), else the base64 text decoded."""
    if isinstance(key, bytes):
        return key
    try:
        return base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("the account key is not valid base64") from exc


def shared_key_account(headers: Mapping[str, str]) -> str | None:
    """The account an ``Authorization: SharedKey[Lite] account:signature`` header names, else None."""
    parsed = _parse_authorization(headers.get("authorization"))
    return parsed[1] if parsed else None


def header_sort_key(name: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Sort key putting lower-cased x-ms-* header names in the order the service canonicalizes them."""
    primary = tuple(_PRIMARY_WEIGHT[c] for c in name.lower() if c in _PRIMARY_WEIGHT)
    secondary = tuple(_SECONDARY_WEIGHT.get(c, 0) for c in name) + (_END_OF_NAME,)
    return primary, secondary


def string_to_sign(method: str, raw_path: str, raw_query: str, headers: Mapping[str, str], account: str,
                   *, fold_whitespace: bool = False) -> str:
    """The Shared Key string to sign for a request, as the client must have built it (see the module doc)."""
    values = {name: headers.get(name, "") for name in _SIGNED_STANDARD_HEADERS}
    if values["content-length"] == "0" and _version(headers) >= "2015-02-21":
        values["content-length"] = ""
    if "x-ms-date" in headers:
        values["date"] = ""
    standard = "".join(values[name] + "\n" for name in _SIGNED_STANDARD_HEADERS)
    return (method.upper() + "\n" + standard + _canonical_headers(headers, fold_whitespace)
            + _canonical_resource(account, raw_path, raw_query))


def string_to_sign_lite(method: str, raw_path: str, raw_query: str, headers: Mapping[str, str], account: str,
                        *, fold_whitespace: bool = False) -> str:
    """The Shared Key Lite string to sign (Blob service, 2009-09-19 and later)."""
    date = "" if "x-ms-date" in headers else headers.get("date", "")
    resource = "/" + account + raw_path
    comp = _query_values(raw_query).get("comp")
    if comp:
        resource += "?comp=" + ",".join(comp)
    return (method.upper() + "\n" + headers.get("content-md5", "") + "\n" + headers.get("content-type", "") + "\n"
            + date + "\n" + _canonical_headers(headers, fold_whitespace) + resource)


def verify_shared_key(method: str, raw_path: str, raw_query: str, headers: Mapping[str, str], account: str,
                      key: bytes | str, *, now: float | None = None, max_skew: float = MAX_CLOCK_SKEW) -> None:
    """Verify a Shared Key or Shared Key Lite signed request for ``account``; raise ``BlobAuthError`` if it fails."""
    parsed = _parse_authorization(headers.get("authorization"))
    if parsed is None:
        raise BlobAuthError("AuthenticationFailed", _AUTH_FAILED,
                            detail="The Authorization header is not of the form 'SharedKey account:signature'.")
    scheme, claimed_account, signature_text = parsed
    if claimed_account != account:
        raise BlobAuthError("AuthenticationFailed", _AUTH_FAILED,
                            detail=f"The account in the Authorization header is not '{account}'.")
    try:
        signature = base64.b64decode(signature_text, validate=True)
    except (binascii.Error, ValueError):
        raise BlobAuthError("AuthenticationFailed", _AUTH_FAILED,
                            detail="The signature is not valid base64.") from None
    _check_request_time(headers, time.time() if now is None else now, max_skew)
    try:
        secret = decode_account_key(key)
    except ValueError:
        # A broken stored key is a server problem, but the client can only be told that it failed to sign.
        raise BlobAuthError("AuthenticationFailed", _AUTH_FAILED) from None

    build = string_to_sign_lite if scheme == "SharedKeyLite" else string_to_sign
    exact = build(method, raw_path or "/", raw_query, headers, account)
    if hmac.compare_digest(_sign(secret, exact), signature):
        return
    for path in dict.fromkeys((raw_path or "/", unquote(raw_path) or "/")):
        for fold in (False, True):
            sts = build(method, path, raw_query, headers, account, fold_whitespace=fold)
            if sts != exact and hmac.compare_digest(_sign(secret, sts), signature):
                return
    raise BlobAuthError(
        "AuthenticationFailed", _AUTH_FAILED,
        detail=("The MAC signature found in the HTTP request is not the same as any computed signature. "
                f"Server used following string to sign: '{exact}'."))


# --- helpers ----------------------------------------------------------------------------------------------------

def _parse_authorization(value: str | None) -> tuple[str, str, str] | None:
    if not value:
        return None
    scheme, _, credential = value.strip().partition(" ")
    if scheme not in ("SharedKey", "SharedKeyLite"):
        return None
    claimed_account, sep, signature = credential.strip().rpartition(":")
    if not sep or not claimed_account or not signature:
        return None
    return scheme, claimed_account, signature


def _sign(secret: bytes, sts: str) -> bytes:
    return hmac.new(secret, sts.encode("utf-8"), hashlib.sha256).digest()


def _version(headers: Mapping[str, str]) -> str:
    # Requests without x-ms-version are signed like current ones; a missing version is the newest behaviour.
    return headers.get("x-ms-version") or "9999-99-99"


def _as_text(value: str) -> str:
    """The header value as the client had it: the HTTP layer decodes bytes as latin-1, clients sign UTF-8."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return value


def _canonical_headers(headers: Mapping[str, str], fold_whitespace: bool) -> str:
    names = sorted((name.lower() for name in headers if name.lower().startswith("x-ms-")), key=header_sort_key)
    lines = []
    for name in names:
        value = _as_text(headers[name])
        if fold_whitespace:
            value = _WHITESPACE_RUN.sub(" ", value).strip()
        lines.append(f"{name}:{value}\n")
    return "".join(lines)


def _query_values(raw_query: str) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for part in raw_query.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        values.setdefault(unquote(name).lower(), []).append(unquote(value))
    return values


def _canonical_resource(account: str, raw_path: str, raw_query: str) -> str:
    resource = "/" + account + (raw_path or "/")
    for name, values in sorted(_query_values(raw_query).items()):
        resource += "\n" + name + ":" + ",".join(sorted(values))
    return resource


def _check_request_time(headers: Mapping[str, str], now: float, max_skew: float) -> None:
    raw = headers.get("x-ms-date") or headers.get("date")
    if not raw:
        raise BlobAuthError("AuthenticationFailed", _AUTH_FAILED,
                            detail="Request date header not specified (x-ms-date or Date is required).")
    try:
        stamp = parsedate_to_datetime(raw).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        raise BlobAuthError("AuthenticationFailed", _AUTH_FAILED,
                            detail=f"The request date '{raw}' is not a valid RFC 1123 date.") from None
    if abs(stamp - now) > max_skew:
        raise BlobAuthError("AuthenticationFailed", _AUTH_FAILED,
                            detail=(f"Request date header too old or too far in the future: '{raw}'; the "
                                    f"request time must be within {max_skew / 60:g} minutes of the server's."))
