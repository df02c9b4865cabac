"""Operators may sign admin API requests with their own S3 keys instead of sending the bearer token.

A request whose ``Authorization`` is ``AWS4-HMAC-SHA256 ...`` is checked like an S3 request (atoll.auth.sigv4),
except that the credential scope may name any service (curl's ``--aws-sigv4 "aws:amz:REGION:atoll"`` signs for
"atoll") and must name the island's region. Such clients hash the body without sending
``x-amz-content-sha256``, so the body is read here, before routing, and handed to the handler (admin bodies are
small JSON documents, bounded by the route's limit). Only operators (``Identity.operator``: the root identity or
an unscoped admin of the root tenant) get in: anyone else is 403 ``AccessDenied``; a signature that does not
verify is 401, like a wrong token.
"""

from __future__ import annotations

import hashlib
import time

from atoll.admin.jsonapi import BODY_STATE, ApiError
from atoll.auth.sigv4 import ALGORITHM, AuthError, verify_service_request
from atoll.core.models import Identity
from atoll.core.namespace import Namespace
from atoll.http.server import BodyTooLarge, Request

MAX_SKEW = 900.0  # seconds, as for S3


def is_signed(authorization: str | None) -> bool:
    return authorization is not None and authorization.lstrip().startswith(ALGORITHM + " ")


def _access_key(authorization: str) -> str:
    """The access key named by ``Credential=AK/date/region/service/aws4_request`` ("" if there is none)."""
    _, found, rest = authorization.partition("Credential=")
    credential = rest.split(",", 1)[0].strip() if found else ""
    parts = credential.rsplit("/", 4)
    return parts[0] if len(parts) == 5 else ""


def _unauthorized(code: str, message: str) -> ApiError:
    return ApiError(401, code, message, [("WWW-Authenticate", 'Bearer realm="atoll-admin"')])


async def signed_operator(request: Request, ns: Namespace, body_limit: int) -> Identity:
    """The operator who signed ``request``; ApiError 401 (bad signature), 403 (not an operator) or 413."""
    authorization = request.headers.get("authorization") or ""
    try:
        body = await request.read_body(body_limit)
    except BodyTooLarge:
        raise ApiError(413, "BodyTooLarge", f"The request body exceeds {body_limit} bytes.") from None
    request.state[BODY_STATE] = body
    access_key = _access_key(authorization)
    identity = await ns.identity(access_key) if access_key else None
    secret = identity.secret_key if identity is not None else None
    try:
        _, region = verify_service_request(request.method, request.raw_path, request.raw_query, request.headers,
                                           hashlib.sha256(body).hexdigest(),
                                           lambda key: secret if key == access_key else None, time.time(), MAX_SKEW)
    except AuthError as exc:
        raise _unauthorized(exc.code, exc.message) from None
    assert identity is not None  # verified against its secret
    request.state["access_key"] = access_key
    if region != ns.region:
        raise _unauthorized("AuthorizationHeaderMalformed", f"The credential names region {region[:64]!r}; this "
                            f"island's region is {ns.region!r}.")
    if not identity.operator:
        raise ApiError(403, "AccessDenied", "Only operators (the root identity, or an admin of the root tenant on "
                       "every bucket) may use the admin API.")
    return identity
