"""AWS Signature Version 4 verification for S3 requests: pure logic, no I/O, no HTTP framework.

Contract
--------
``verify_request(method, raw_path, raw_query, headers, secret_for, now)`` decides who sent a request:

* returns ``None`` for an anonymous request (no ``Authorization`` header and no ``X-Amz-Algorithm`` /
  ``X-Amz-Signature`` query parameter);
* returns an ``AuthContext`` when a SigV4 header signature or presigned URL verifies;
* hands SigV2 (``Authorization: AWS AKID:signature``, or ``AWSAccessKeyId``/``Signature``/``Expires`` in the
  query) to ``atoll.auth.sigv2``, which answers the same way; ``virtual_host_bucket`` (the bucket named by the
  Host header, if any) is for it alone, since SigV2 signs "/bucket" + path whatever the addressing style;
* raises ``AuthError(code, message)`` otherwise, ``code`` being the S3 error code to send.

Inputs are what came off the wire: ``raw_path`` percent-encoded and not normalised, ``raw_query`` without the
``?`` (may be ""), ``headers`` with lower-case names and repeated headers joined with ",". Decode the request
target with ``bytes.decode("utf-8", "surrogateescape")`` (which gives back the exact bytes when re-encoded) and
header values with ``latin-1`` (the HTTP norm; both botocore's and CRT's non-ASCII values then verify).

What the caller still owes after a successful verification (this module never sees the body):

* ``payload_mode == "sha256"``: hash the body and compare with ``payload_sha256``; on mismatch answer
  ``XAmzContentSHA256Mismatch``.
* ``payload_mode`` starting ``"streaming-"``: decode the body with ``atoll.auth.chunked.AwsChunkedDecoder``.
* Decode query values with ``urllib.parse.unquote`` (never ``unquote_plus``): the signature treats a raw ``+``
  as a literal plus, and the router must read the same value the signature covered.

Canonicalisation follows S3 exactly: the path is used as received (S3 does not normalise ``//`` or ``..``),
query names and values are URI-decoded then RFC 3986-encoded and sorted, header values are trimmed with inner
whitespace runs collapsed. Two fallbacks run only after the exact form fails, because real clients differ:
the path decoded and re-encoded (a client may have encoded, say, ``!`` or ``'`` when S3 would not), and the
query sorted exactly as sent (botocore signs the raw query string of a request URL it did not build itself).
Neither fallback lets different wire bytes carry a different meaning under the same signature: the first maps
only encodings that decode to the same path, the second is the wire bytes themselves.

Performance: this runs per request. Signing keys are cached (LRU on secret, date, region), and successful
presigned verifications are cached by (method, host, raw path, raw query) until they expire, because a
presigned URL is replayable by design until then; a cache hit still re-checks expiry, the key's current
secret and the signed header values. Figures are in ``tests/unit/test_sigv4.py``.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.utils import mktime_tz, parsedate_tz
from functools import lru_cache
from urllib.parse import quote_from_bytes, unquote, unquote_to_bytes

__all__ = [
    "ALGORITHM",
    "EMPTY_SHA256",
    "MAX_PRESIGNED_EXPIRES",
    "AuthContext",
    "AuthError",
    "clear_caches",
    "derive_service_signing_key",
    "derive_signing_key",
    "verify_request",
    "verify_service_request",
]

ALGORITHM = "AWS4-HMAC-SHA256"
MAX_PRESIGNED_EXPIRES = 604800  # one week, in seconds: the SigV4 limit for X-Amz-Expires
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"

# x-amz-content-sha256 literal values and the payload mode each one selects; a 64-hex value means "sha256".
_PAYLOAD_MODES = {
    UNSIGNED_PAYLOAD: "unsigned",
    "STREAMING-AWS4-HMAC-SHA256-PAYLOAD": "streaming-signed",
    "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER": "streaming-signed-trailer",
    "STREAMING-UNSIGNED-PAYLOAD-TRAILER": "streaming-unsigned-trailer",
}

_PRESIGNED_CACHE_SIZE = 4096
# A URL longer than this is not worth pinning in memory; it is simply verified in full each time.
_PRESIGNED_CACHE_MAX_URL = 8192

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~")

# Headers that only add integrity checks or aws-chunked framing. A presigned URL's holder may add them without
# having signed them (they cannot change what the request does); every other x-amz-* header must be signed.
_PRESIGNED_UNSIGNED_OK = ("x-amz-content-sha256", "x-amz-checksum-", "x-amz-sdk-checksum-algorithm",
                          "x-amz-trailer", "x-amz-decoded-content-length")

_ONLY_SIGV4 = ("The authorization mechanism you have provided is not supported. "
               "Please use AWS Signature Version 4 (AWS4-HMAC-SHA256).")
_PRESIGNED_REQUIRED = ("Query-string authentication version 4 requires the X-Amz-Algorithm, X-Amz-Credential, "
                       "X-Amz-Signature, X-Amz-Date, X-Amz-SignedHeaders, and X-Amz-Expires parameters.")


class AuthError(Exception):
    """A request failed authentication.

    ``code`` is the S3 error code string, ``message`` human text. Neither ever contains a secret or the
    signature the server expected. ``details`` may carry the canonical request and string to sign for a
    ``SignatureDoesNotMatch`` (S3 returns both so client authors can debug; they are derived from the request
    alone and reveal nothing secret).
    """

    def __init__(self, code: str, message: str, *, details: Mapping[str, str] | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details: dict[str, str] = dict(details or {})


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs four times as much, on every request
class AuthContext:
    """Who signed a request, and what the body still has to prove. Shared by cached presigned verifications:
    never modified."""

    access_key: str
    # "unsigned", "sha256", "streaming-signed", "streaming-signed-trailer" or "streaming-unsigned-trailer"
    payload_mode: str
    payload_sha256: str | None  # lower-case hex declared in x-amz-content-sha256 when payload_mode == "sha256"
    signing_key: bytes = field(repr=False)  # derived key, for chunk signatures; kept out of repr and logs
    seed_signature: str  # the request signature, which seeds the aws-chunked signature chain
    amz_date: str  # e.g. 20261125T120000Z
    scope: str  # date/region/s3/aws4_request
    presigned: bool


def clear_caches() -> None:
    """Forget cached signing keys and presigned verifications (for tests, and after rotating secrets)."""
    for cached in (derive_signing_key, hmac_sha256_hex, _parse_credential, _parse_signed_headers, _parse_amz_date,
                   _cached_canonical_query, _reencode_component, derive_service_signing_key):
        cached.cache_clear()
    _presigned_cache.clear()


@lru_cache(maxsize=256)
def derive_signing_key(secret: str, date: str, region: str) -> bytes:
    """kSigning = HMAC(HMAC(HMAC(HMAC("AWS4" + secret, date), region), "s3"), "aws4_request")."""
    key = hmac.digest(("AWS4" + secret).encode("utf-8"), date.encode("ascii"), "sha256")
    key = hmac.digest(key, region.encode("utf-8", "surrogateescape"), "sha256")
    key = hmac.digest(key, b"s3", "sha256")
    return hmac.digest(key, b"aws4_request", "sha256")


@lru_cache(maxsize=256)
def hmac_sha256_hex(key: bytes) -> Callable[[bytes], str]:
    """A function computing HMAC-SHA256(key, message) as hex, several times faster than ``hmac.digest``.

    OpenSSL 3 spends most of a one-shot HMAC setting up its context; hashing the padded key once and copying
    the two hash states per message costs a fraction of that. Cached per key: a request, and every chunk of an
    aws-chunked body, signs with the same derived key.
    """
    padded = key.ljust(64, b"\0") if len(key) <= 64 else hashlib.sha256(key).digest().ljust(64, b"\0")
    inner_start = hashlib.sha256(padded.translate(_XOR_36))
    outer_start = hashlib.sha256(padded.translate(_XOR_5C))

    def sign(message: bytes) -> str:
        inner = inner_start.copy()
        inner.update(message)
        outer = outer_start.copy()
        outer.update(inner.digest())
        return outer.hexdigest()

    return sign


_XOR_36 = bytes(byte ^ 0x36 for byte in range(256))
_XOR_5C = bytes(byte ^ 0x5C for byte in range(256))


def verify_request(
    method: str,
    raw_path: str,
    raw_query: str,
    headers: Mapping[str, str],
    secret_for: Callable[[str], str | None],
    now: float,
    max_skew: float = 900.0,
    virtual_host_bucket: str | None = None,
) -> AuthContext | None:
    """Authenticate one request; see the module docstring for the contract."""
    authorization = headers.get("authorization")
    if authorization is not None:
        if ("X-Amz-Signature" in raw_query or "X-Amz-Algorithm" in raw_query) and _has_query_auth(raw_query):
            raise AuthError("InvalidArgument", "Only one auth mechanism allowed; use either the Authorization "
                            "header or the X-Amz-Algorithm query parameters, not both.")
        if authorization.startswith("AWS "):
            return _sigv2().verify_request(method, raw_path, raw_query, headers, secret_for, now, max_skew,
                                           virtual_host_bucket)
        return _verify_header_auth(method, raw_path or "/", raw_query, headers, authorization, secret_for,
                                   now, max_skew)
    if not raw_query or ("X-Amz-" not in raw_query and "Signature" not in raw_query
                         and "AWSAccessKeyId" not in raw_query):
        return None  # the common anonymous case, decided without parsing the query
    if "X-Amz-" not in raw_query:  # no SigV4 query authentication; perhaps SigV2's
        return _sigv2().verify_request(method, raw_path, raw_query, headers, secret_for, now, max_skew,
                                       virtual_host_bucket)
    cache_key = (method, headers.get("host", ""), raw_path, raw_query)
    entry = _presigned_cache.get(cache_key)
    if entry is not None:
        context = _reuse_presigned(cache_key, entry, headers, secret_for, now)
        if context is not None:
            return context
    return _verify_presigned(method, raw_path or "/", raw_query, headers, secret_for, now, max_skew, cache_key,
                             virtual_host_bucket)


def _sigv2():
    # Imported on first use: sigv2 builds on this module's AuthContext and AuthError.
    from atoll.auth import sigv2
    return sigv2


# --- header auth ------------------------------------------------------------------------------------------------

def _checked_request_time(headers: Mapping[str, str], scope_date: str, now: float, max_skew: float) -> str:
    """The request's x-amz-date (or Date, as an x-amz-date string), checked against the credential scope's date
    and the clock."""
    amz_date = headers.get("x-amz-date")
    if amz_date is not None:
        timestamp = _parse_amz_date(amz_date)
        if timestamp is None:
            raise AuthError("AccessDenied", "AWS authentication requires a valid Date or x-amz-date header")
    else:
        amz_date, timestamp = _parse_http_date(headers.get("date"))
    if scope_date != amz_date[:8]:
        raise AuthError("AuthorizationHeaderMalformed", "The authorization header is malformed; Invalid "
                        "credential date. Date is not the same as X-Amz-Date.")
    if abs(now - timestamp) > max_skew:
        raise AuthError("RequestTimeTooSkewed",
                        "The difference between the request time and the current time is too large.")
    return amz_date

def _verify_header_auth(method, raw_path, raw_query, headers, authorization, secret_for, now, max_skew):
    credential, signed_headers, signature = _parse_authorization(authorization)
    access_key, scope_date, region, scope = _parse_credential(credential, "AuthorizationHeaderMalformed")
    signed_names = _parse_signed_headers(signed_headers, "AuthorizationHeaderMalformed")

    amz_date = _checked_request_time(headers, scope_date, now, max_skew)

    declared_payload = headers.get("x-amz-content-sha256")
    if declared_payload is None:
        raise AuthError("InvalidRequest", "Missing required header for this request: x-amz-content-sha256")
    payload_mode, payload_sha256 = _payload_mode(declared_payload)

    _reject_unsigned_amz_headers(headers, signed_names, ())
    secret = secret_for(access_key)
    if secret is None:
        raise AuthError("InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records.")
    signing_key = derive_signing_key(secret, scope_date, region)
    canonical_headers = _canonical_headers(signed_names, headers)
    _check_signature(signature, signing_key, amz_date, scope, access_key, method, raw_path, raw_query, None,
                     canonical_headers, signed_headers, (declared_payload,))
    return AuthContext(access_key, payload_mode, payload_sha256, signing_key, signature.lower(), amz_date, scope,
                       False)


def _parse_authorization(value: str) -> tuple[str, str, str]:
    """(credential, signed headers, signature) from an ``AWS4-HMAC-SHA256 Credential=…`` header value."""
    scheme, _, rest = value.strip().partition(" ")
    if scheme != ALGORITHM:
        raise AuthError("InvalidRequest", _ONLY_SIGV4)
    fields: dict[str, str] = {}
    for part in rest.split(","):
        name, sep, field_value = part.partition("=")
        if sep:
            fields[name.strip()] = field_value.strip()
    try:
        return fields["Credential"], fields["SignedHeaders"], fields["Signature"]
    except KeyError as missing:
        raise AuthError("AuthorizationHeaderMalformed",
                        f"The authorization header is malformed; missing {missing.args[0]}.") from None


@lru_cache(maxsize=1024)  # one credential string per key, region and day: worth not re-splitting
def _parse_credential(credential: str, error_code: str) -> tuple[str, str, str, str]:
    """(access key, date, region, scope) from ``AK/date/region/s3/aws4_request``."""
    parts = credential.rsplit("/", 4)  # rsplit: the access key is the only part that could hold a "/"
    if len(parts) != 5 or not parts[0] or not parts[2] or len(parts[1]) != 8 or not parts[1].isascii() \
            or not parts[1].isdigit():
        raise AuthError(error_code, "The Credential is malformed; expecting "
                        "\"<YOUR-AKID>/YYYYMMDD/REGION/SERVICE/aws4_request\".")
    access_key, date, region, service, terminator = parts
    if service != "s3":
        raise AuthError(error_code, f"The Credential has the incorrect service {service!r}; this endpoint "
                        "belongs to 's3'.")
    if terminator != "aws4_request":
        raise AuthError(error_code, f"The Credential has the incorrect terminal {terminator!r}; this endpoint "
                        "uses 'aws4_request'.")
    return access_key, date, region, f"{date}/{region}/s3/aws4_request"


@lru_cache(maxsize=1024)  # clients send the same few header sets over and over
def _parse_signed_headers(signed_headers: str, error_code: str) -> tuple[str, ...]:
    names = tuple(signed_headers.split(";"))
    if "host" not in names:
        raise AuthError(error_code, "The host header must be signed (SignedHeaders must include host).")
    return names


# --- presigned URLs ---------------------------------------------------------------------------------------------

# (method, host, raw path, raw query) -> (context, expires_at, not_before, secret, signed header names, their
# values, x-amz-content-sha256 as sent). Insertion-ordered, so the first key is the oldest, evicted first.
_presigned_cache: dict[tuple[str, str, str, str], tuple] = {}


def _verify_presigned(method, raw_path, raw_query, headers, secret_for, now, max_skew, cache_key,
                      virtual_host_bucket=None):
    auth_params: dict[str, str] = {}
    for pair in raw_query.split("&"):
        name, _, value = pair.partition("=")
        if name.startswith("X-Amz-") or name in ("AWSAccessKeyId", "Signature"):
            if name in auth_params:
                raise AuthError("AuthorizationQueryParametersError", f"Duplicate query parameter {name}.")
            auth_params[name] = unquote(value) if "%" in value else value
    if "X-Amz-Algorithm" not in auth_params and "X-Amz-Signature" not in auth_params:
        if "AWSAccessKeyId" in auth_params or "Signature" in auth_params:  # SigV2, with an X-Amz- elsewhere
            return _sigv2().verify_request(method, raw_path, raw_query, headers, secret_for, now, max_skew,
                                           virtual_host_bucket)
        return None  # X-Amz-* parameters, but not query authentication: anonymous
    try:
        algorithm = auth_params["X-Amz-Algorithm"]
        credential = auth_params["X-Amz-Credential"]
        amz_date = auth_params["X-Amz-Date"]
        expires_text = auth_params["X-Amz-Expires"]
        signed_headers = auth_params["X-Amz-SignedHeaders"]
        signature = auth_params["X-Amz-Signature"]
    except KeyError:
        raise AuthError("AuthorizationQueryParametersError", _PRESIGNED_REQUIRED) from None
    if algorithm != ALGORITHM:
        raise AuthError("AuthorizationQueryParametersError",
                        "X-Amz-Algorithm only supports \"AWS4-HMAC-SHA256\"; " + _ONLY_SIGV4)
    access_key, scope_date, region, scope = _parse_credential(credential, "AuthorizationQueryParametersError")
    signed_names = _parse_signed_headers(signed_headers, "AuthorizationQueryParametersError")
    timestamp = _parse_amz_date(amz_date)
    if timestamp is None:
        raise AuthError("AuthorizationQueryParametersError",
                        "X-Amz-Date must be in the ISO8601 Long Format \"yyyyMMdd'T'HHmmss'Z'\"")
    if scope_date != amz_date[:8]:
        raise AuthError("AuthorizationQueryParametersError",
                        "Invalid credential date. Date is not the same as X-Amz-Date.")
    if not (expires_text.isascii() and expires_text.isdigit()):
        raise AuthError("InvalidArgument", "X-Amz-Expires should be a number of seconds")
    expires = int(expires_text)
    if expires > MAX_PRESIGNED_EXPIRES:
        raise AuthError("InvalidArgument",
                        f"X-Amz-Expires must be less than a week (in seconds) that is {MAX_PRESIGNED_EXPIRES}")
    expires_at = timestamp + expires
    not_before = timestamp - max_skew
    if now > expires_at:
        raise AuthError("AccessDenied", "Request has expired")
    if now < not_before:
        raise AuthError("AccessDenied", "Request is not yet valid")

    _reject_unsigned_amz_headers(headers, signed_names, _PRESIGNED_UNSIGNED_OK)
    secret = secret_for(access_key)
    if secret is None:
        raise AuthError("InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records.")
    signing_key = derive_signing_key(secret, scope_date, region)

    # botocore puts an x-amz-content-sha256 header sent at presign time into the canonical request; without
    # one a presigned request is UNSIGNED-PAYLOAD, which is also what a header added later must fall back to.
    declared_payload = headers.get("x-amz-content-sha256")
    payload_candidates = (declared_payload, UNSIGNED_PAYLOAD) if declared_payload not in (None, UNSIGNED_PAYLOAD) \
        else (UNSIGNED_PAYLOAD,)
    matched_payload = _check_signature(signature, signing_key, amz_date, scope, access_key, method, raw_path,
                                       raw_query, "X-Amz-Signature", _canonical_headers(signed_names, headers),
                                       signed_headers, payload_candidates)
    payload_mode, payload_sha256 = _payload_mode(matched_payload)
    context = AuthContext(access_key, payload_mode, payload_sha256, signing_key, signature.lower(), amz_date,
                          scope, True)

    if len(raw_path) + len(raw_query) <= _PRESIGNED_CACHE_MAX_URL:
        signed_values = tuple(headers.get(name) for name in signed_names)
        entry = (context, expires_at, not_before, secret, signed_names, signed_values, declared_payload)
        while len(_presigned_cache) >= _PRESIGNED_CACHE_SIZE:
            try:
                del _presigned_cache[next(iter(_presigned_cache))]
            except (KeyError, StopIteration, RuntimeError):  # another thread got there first
                break
        _presigned_cache[cache_key] = entry
    return context


def _reuse_presigned(cache_key, entry, headers, secret_for, now) -> AuthContext | None:
    """The cached context if this request is the same verified presigned request; None to verify in full."""
    context, expires_at, not_before, secret, signed_names, signed_values, declared_payload = entry
    if now > expires_at:
        _presigned_cache.pop(cache_key, None)
        raise AuthError("AccessDenied", "Request has expired")
    if now < not_before or headers.get("x-amz-content-sha256") != declared_payload:
        return None
    if secret_for(context.access_key) != secret:  # the key was revoked or rotated since
        _presigned_cache.pop(cache_key, None)
        return None
    for name, value in zip(signed_names, signed_values):
        if headers.get(name) != value:
            return None
    _reject_unsigned_amz_headers(headers, signed_names, _PRESIGNED_UNSIGNED_OK)
    return context


def _has_query_auth(raw_query: str) -> bool:
    for pair in raw_query.split("&"):
        name = pair.partition("=")[0]
        if name == "X-Amz-Signature" or name == "X-Amz-Algorithm":
            return True
    return False


# --- canonical request ------------------------------------------------------------------------------------------

def _check_signature(signature, signing_key, amz_date, scope, access_key, method, raw_path, raw_query,
                     excluded_param, canonical_headers, signed_headers, payload_candidates) -> str:
    """Verify ``signature`` over the canonical request; return the payload hash it was computed with.

    The exact S3 canonical form is tried first; the fallbacks described in the module docstring only when it
    fails, so they cost nothing on the success path.
    """
    provided = signature.lower().encode("ascii", "replace")
    sign = hmac_sha256_hex(signing_key)
    # Everything but the canonical request's hash is the same for every candidate.
    sts_prefix = f"{ALGORITHM}\n{amz_date}\n{scope}\n"
    headers_part = f"{canonical_headers}\n{signed_headers}\n"
    exact_query = _canonical_query(raw_query, excluded_param)
    canonical = f"{method}\n{raw_path}\n{exact_query}\n{headers_part}{payload_candidates[0]}"
    string_to_sign = sts_prefix + hashlib.sha256(canonical.encode("utf-8", "surrogateescape")).hexdigest()
    if hmac.compare_digest(sign(string_to_sign.encode("utf-8", "surrogateescape")).encode(), provided):
        return payload_candidates[0]
    first_attempt = {"AWSAccessKeyId": access_key, "CanonicalRequest": canonical, "StringToSign": string_to_sign}
    for path, query, payload, headers_bytes in _candidates(raw_path, raw_query, exact_query, excluded_param,
                                                           payload_candidates, headers_part):
        canonical_bytes = (f"{method}\n{path}\n{query}\n".encode("utf-8", "surrogateescape") + headers_bytes
                           + payload.encode("utf-8", "surrogateescape"))
        string_to_sign = sts_prefix + hashlib.sha256(canonical_bytes).hexdigest()
        if hmac.compare_digest(sign(string_to_sign.encode("utf-8", "surrogateescape")).encode(), provided):
            return payload
    raise AuthError("SignatureDoesNotMatch", "The request signature we calculated does not match the signature "
                    "you provided. Check your key and signing method.", details=first_attempt)


def _candidates(raw_path, raw_query, exact_query, excluded_param, payload_candidates, headers_part):
    """The (path, query, payload hash, canonical headers as bytes) combinations to try after the exact S3 form
    failed."""
    paths = [raw_path]
    reencoded_path = _reencode_path(raw_path)
    if reencoded_path != raw_path:
        paths.append(reencoded_path)
    queries = [exact_query]
    as_sent_query = _as_sent_query(raw_query, excluded_param)
    if as_sent_query != exact_query:
        queries.append(as_sent_query)
    # Header values arrive decoded as latin-1. botocore signs the text (UTF-8 in the canonical request); CRT signs
    # the bytes it sent, which latin-1 gives back. They only differ for non-ASCII values.
    headers_variants = [headers_part.encode("utf-8", "surrogateescape")]
    if not headers_part.isascii():
        try:
            headers_variants.append(headers_part.encode("latin-1"))
        except UnicodeEncodeError:
            pass
    first = (raw_path, exact_query, payload_candidates[0], headers_variants[0])
    for payload in payload_candidates:
        for path in paths:
            for query in queries:
                for headers_bytes in headers_variants:
                    if (path, query, payload, headers_bytes) != first:
                        yield path, query, payload, headers_bytes


def _canonical_query(raw_query: str, excluded_param: str | None) -> str:
    """S3's canonical query string: names and values URI-decoded, RFC 3986-encoded, sorted; ``name=`` when
    valueless. ``+`` is a literal plus (AWS never reads it as a space), so it canonicalises to ``%2B``."""
    if not raw_query:
        return ""
    if len(raw_query) <= 512:
        return _cached_canonical_query(raw_query, excluded_param)
    return _compute_canonical_query(raw_query, excluded_param)


@lru_cache(maxsize=4096)  # listings, part uploads and ranged reads repeat the same query strings
def _cached_canonical_query(raw_query: str, excluded_param: str | None) -> str:
    return _compute_canonical_query(raw_query, excluded_param)


def _compute_canonical_query(raw_query: str, excluded_param: str | None) -> str:
    pairs = []
    for pair in raw_query.split("&"):
        if not pair:
            continue
        name, _, value = pair.partition("=")
        name = _encode_component(name)
        if name == excluded_param:
            continue
        pairs.append((name, _encode_component(value)))
    pairs.sort()
    return "&".join([f"{name}={value}" for name, value in pairs])


def _as_sent_query(raw_query: str, excluded_param: str | None) -> str:
    """The query as botocore canonicalises a URL it did not build: pairs split and sorted, never re-encoded."""
    if not raw_query:
        return ""
    pairs = sorted(pair.partition("=")[::2] for pair in raw_query.split("&"))
    return "&".join([f"{name}={value}" for name, value in pairs if name != excluded_param])


def _encode_component(text: str) -> str:
    if _UNRESERVED.issuperset(text):
        return text  # the usual case (uploads, partNumber=3, list-type=2): nothing to decode or encode
    if len(text) <= 256:
        return _reencode_component(text)
    return quote_from_bytes(unquote_to_bytes(text.encode("utf-8", "surrogateescape")), safe="")


@lru_cache(maxsize=4096)  # prefixes, delimiters and upload ids repeat from request to request
def _reencode_component(text: str) -> str:
    return quote_from_bytes(unquote_to_bytes(text.encode("utf-8", "surrogateescape")), safe="")


def _reencode_path(raw_path: str) -> str:
    return quote_from_bytes(unquote_to_bytes(raw_path.encode("utf-8", "surrogateescape")), safe="/")


def _canonical_headers(signed_names, headers: Mapping[str, str]) -> str:
    """``name:value\\n`` for each signed header, values trimmed with inner whitespace runs collapsed. A signed
    header missing from the request canonicalises as empty, so the signature check fails rather than crashes."""
    lines = []
    for name in signed_names:
        value = headers.get(name)
        if value is None:
            value = headers.get(name.lower(), "")
        lines.append(f"{name}:{' '.join(value.split())}\n")  # join(split()) beats checking whether it's needed
    return "".join(lines)


def _reject_unsigned_amz_headers(headers: Mapping[str, str], signed_names, allowed_prefixes: tuple[str, ...]):
    """S3 requires every x-amz-* header to be signed: otherwise anyone replaying a captured request could add,
    say, x-amz-copy-source or x-amz-acl to it."""
    unsigned = [name for name in headers
                if name.startswith("x-amz-") and name not in signed_names and not name.startswith(allowed_prefixes)]
    if unsigned:
        raise AuthError("AccessDenied", "There were headers present in the request which were not signed: "
                        + ", ".join(sorted(unsigned)))


def _payload_mode(declared: str) -> tuple[str, str | None]:
    mode = _PAYLOAD_MODES.get(declared)
    if mode is not None:
        return mode, None
    if len(declared) == 64:
        try:
            if len(bytes.fromhex(declared)) == 32:  # 32 bytes from 64 characters: no whitespace slipped in
                return "sha256", declared.lower()
        except ValueError:
            pass
    raise AuthError("InvalidArgument", "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, "
                    "STREAMING-AWS4-HMAC-SHA256-PAYLOAD, STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER, "
                    "STREAMING-UNSIGNED-PAYLOAD-TRAILER or a valid sha256 value.")


# --- dates ------------------------------------------------------------------------------------------------------

@lru_cache(maxsize=256)  # at thousands of requests per second, most share their second with another
def _parse_amz_date(value: str) -> float | None:
    """Seconds since the epoch for ``YYYYMMDDTHHMMSSZ``, or None if malformed."""
    if len(value) != 16 or value[8] != "T" or value[15] != "Z":
        return None
    clock = value[9:15]
    if not (clock.isascii() and clock.isdigit()):
        return None
    hours, minutes, seconds = int(clock[0:2]), int(clock[2:4]), int(clock[4:6])
    if hours > 23 or minutes > 59 or seconds > 60:
        return None
    midnight = _midnight(value[:8])
    if midnight is None:
        return None
    return midnight + hours * 3600 + minutes * 60 + seconds


@lru_cache(maxsize=64)
def _midnight(date: str) -> int | None:
    if not (date.isascii() and date.isdigit()):
        return None
    year, month, day = int(date[0:4]), int(date[4:6]), int(date[6:8])
    if year < 1970 or not 1 <= month <= 12 or not 1 <= day <= calendar.monthrange(year, month)[1]:
        return None
    return calendar.timegm((year, month, day, 0, 0, 0))


def _parse_http_date(value: str | None) -> tuple[str, float]:
    """(x-amz-date form, epoch seconds) of an RFC 1123 ``Date`` header, used when x-amz-date is absent."""
    parsed = parsedate_tz(value) if value else None
    if parsed is None:
        raise AuthError("AccessDenied", "AWS authentication requires a valid Date or x-amz-date header")
    try:
        timestamp = mktime_tz(parsed)
        return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(timestamp)), float(timestamp)
    except (OverflowError, ValueError, OSError):
        raise AuthError("AccessDenied", "AWS authentication requires a valid Date or x-amz-date header") from None


# --- other services (the admin API) -----------------------------------------------------------------------------

@lru_cache(maxsize=64)
def derive_service_signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    """The SigV4 signing key of any service (``derive_signing_key`` is this with "s3")."""
    key = hmac.digest(("AWS4" + secret).encode("utf-8"), date.encode("ascii"), "sha256")
    key = hmac.digest(key, region.encode("utf-8", "surrogateescape"), "sha256")
    key = hmac.digest(key, service.encode("utf-8", "surrogateescape"), "sha256")
    return hmac.digest(key, b"aws4_request", "sha256")


def verify_service_request(method: str, raw_path: str, raw_query: str, headers: Mapping[str, str],
                           body_sha256: str, secret_for: Callable[[str], str | None], now: float,
                           max_skew: float = 900.0) -> tuple[str, str]:
    """SigV4 header authentication for an API other than S3 (the admin API), as curl's ``--aws-sigv4`` and the
    AWS SDKs sign it: the credential scope may name any service, and the caller hashes the (small) body it has
    read, because such clients need not send ``x-amz-content-sha256``; when sent, it must be that hash or
    UNSIGNED-PAYLOAD. Returns (access key, region of the scope); raises AuthError."""
    authorization = headers.get("authorization") or ""
    credential, signed_headers, signature = _parse_authorization(authorization)
    parts = credential.rsplit("/", 4)
    if len(parts) != 5 or not all(parts) or len(parts[1]) != 8 or not parts[1].isascii() \
            or not parts[1].isdigit() or parts[4] != "aws4_request":
        raise AuthError("AuthorizationHeaderMalformed", "The Credential is malformed; expecting "
                        "\"<YOUR-AKID>/YYYYMMDD/REGION/SERVICE/aws4_request\".")
    access_key, scope_date, region, service, _ = parts
    signed_names = _parse_signed_headers(signed_headers, "AuthorizationHeaderMalformed")
    amz_date = _checked_request_time(headers, scope_date, now, max_skew)
    declared = headers.get("x-amz-content-sha256")
    if declared is not None and declared != UNSIGNED_PAYLOAD and declared.lower() != body_sha256:
        raise AuthError("XAmzContentSHA256Mismatch", "The provided 'x-amz-content-sha256' header does not match "
                        "what was computed.")
    _reject_unsigned_amz_headers(headers, signed_names, ())
    secret = secret_for(access_key)
    if secret is None:
        raise AuthError("InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records.")
    signing_key = derive_service_signing_key(secret, scope_date, region, service)
    _check_signature(signature, signing_key, amz_date, f"{scope_date}/{region}/{service}/aws4_request",
                     access_key, method, raw_path or "/", raw_query, None, _canonical_headers(signed_names, headers),
                     signed_headers, (declared if declared is not None else body_sha256,))
    return access_key, region
