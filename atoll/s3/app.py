"""The S3 front end: turns an HTTP request into a call on the namespace and its answer into S3's wire format.

Order for every request: find bucket and key (path or virtual-host style) → authenticate (SigV4 header or
presigned; anonymous is refused, no bucket is public yet) → route → run → map any core error to S3 XML. Every
answer carries x-amz-request-id; every request lands in the access log.
"""

from __future__ import annotations

import logging
import time
from urllib.parse import unquote

from atoll import errors
from atoll.auth.sigv4 import AuthError, verify_request
from atoll.core.namespace import Namespace
from atoll.core.models import Identity
from atoll.core.qos import Governor
from atoll.http.server import BodyTooLarge, ClientGone, Request, Response
from atoll.s3 import errors as s3errors
from atoll.s3.context import S3Context, parse_query
from atoll.s3.errors import S3Error
from atoll.s3.router import route
from atoll.server import throttle
from atoll.server.accesslog import AccessLog

log = logging.getLogger("atoll.s3")


def _access_key_of(request: Request, query: dict[str, str]) -> str | None:
    auth = request.headers.get("authorization")
    if auth:
        if auth.startswith("AWS "):  # SigV2: "AWS AKID:signature", and base64 has no ":"
            return auth[4:].strip().rpartition(":")[0] or None
        at = auth.find("Credential=")
        if at < 0:
            return None
        return auth[at + 11:].split("/", 1)[0].strip()
    credential = query.get("X-Amz-Credential")
    if credential:
        return credential.split("/", 1)[0]
    return query.get("AWSAccessKeyId") or None  # a SigV2 presigned URL


def _declared_bytes_in(request: Request) -> int:
    """The body bytes a request brings, for QoS admission."""
    declared = request.headers.get("x-amz-decoded-content-length")  # aws-chunked: the payload without its framing
    return int(declared) if declared is not None and declared.isdigit() else request.content_length or 0


class S3App:
    def __init__(self, ns: Namespace, *, domains: tuple[str, ...] = (), access_log: AccessLog | None = None,
                 max_skew: float = 900.0, governor: Governor | None = None) -> None:
        self.ns = ns
        self.governor = governor
        self.domains = tuple(d.lower().lstrip(".") for d in domains if d)
        self.access_log = access_log
        self.max_skew = max_skew

    # http.App ----------------------------------------------------------------------------------------
    async def handle(self, request: Request) -> Response:
        head = request.method == "HEAD"
        ctx: S3Context | None = None
        try:
            ctx = self._parse(request)
            access_key = _access_key_of(request, ctx.query)
            # Awaited here rather than inside a helper coroutine: each coroutine layer costs about half a
            # microsecond, and this path runs for every request.
            self._authenticate(ctx, access_key, await self.ns.identity(access_key) if access_key else None)
            operation, handler = route(request.method, ctx)
            ctx.operation = operation
            request.state["op"] = operation
            if handler is None:
                raise self._unroutable(operation, request.method)
            ticket = None
            if self.governor is not None and ctx.identity is not None:
                ticket = await throttle.admit(self.governor, request, ctx.identity.tenant, ctx.bucket,
                                              _declared_bytes_in(request))
            response = await handler(ctx)
            throttle.charge(ticket, response)
        except S3Error as exc:
            response = s3errors.error_response(exc.code, exc.message, exc.status, request.id,
                                               resource=exc.resource, head=head)
        except errors.AtollError as exc:
            response = s3errors.from_core(exc, request.id, head=head)
        except BodyTooLarge:
            response = s3errors.error_response("MaxMessageLengthExceeded", "Your request was too big.", 400,
                                               request.id, head=head)
        except ClientGone:
            raise
        response.headers += [("x-amz-request-id", request.id), ("x-amz-id-2", request.id)]
        return response

    def protocol_error(self, request: Request | None, status: int, code: str, message: str) -> Response:
        request_id = request.id if request is not None else "0"
        response = s3errors.error_response(code, message, status, request_id,
                                           head=request is not None and request.method == "HEAD")
        response.headers += [("x-amz-request-id", request_id), ("x-amz-id-2", request_id)]
        return response

    def log_access(self, request: Request, status: int, sent: int, elapsed: float) -> None:
        if self.access_log is not None:
            self.access_log.record(request, status, sent, elapsed)

    # parsing -----------------------------------------------------------------------------------------
    def _parse(self, request: Request) -> S3Context:
        query = parse_query(request.raw_query)
        raw_path = request.raw_path
        if not raw_path.startswith("/"):
            raise S3Error("InvalidURI", "Couldn't parse the specified URI.")
        try:
            path = unquote(raw_path, errors="strict") if "%" in raw_path else raw_path
        except UnicodeDecodeError:
            raise S3Error("InvalidURI", "Couldn't parse the specified URI.") from None
        host_bucket = bucket = self._virtual_host_bucket(request.headers.get("host", ""))
        if bucket is not None:
            key = path[1:] or None
        else:
            name, slash, rest = path[1:].partition("/")
            bucket = name or None
            key = rest if slash and rest else None
        request.state["bucket"] = bucket
        request.state["key"] = key
        return S3Context(http=request, ns=self.ns, bucket=bucket, key=key, query=query, host_bucket=host_bucket)

    def _virtual_host_bucket(self, host: str) -> str | None:
        if not self.domains:
            return None
        name = host.rsplit(":", 1)[0].lower() if not host.endswith("]") else host
        for domain in self.domains:
            if name.endswith("." + domain):
                return name[: -len(domain) - 1]
        return None

    def _authenticate(self, ctx: S3Context, access_key: str | None, identity: Identity | None) -> None:
        """Verify the request's signature; ``identity`` is the one ``access_key`` names (None if unknown)."""
        request = ctx.http
        secret = identity.secret_key if identity is not None else None

        def secret_for(key: str) -> str | None:
            return secret if key == access_key else None

        try:
            auth = verify_request(request.method, request.raw_path, request.raw_query, request.headers, secret_for,
                                  time.time(), self.max_skew, ctx.host_bucket)
        except AuthError as exc:
            raise S3Error(exc.code, exc.message) from None
        if auth is None:
            return  # anonymous: handlers refuse what it may not do
        ctx.auth = auth
        ctx.identity = identity
        request.state["access_key"] = access_key

    @staticmethod
    def _unroutable(operation: str, method: str) -> S3Error:
        if operation == "MethodNotAllowed":
            return S3Error("MethodNotAllowed", f"The specified method is not allowed against this resource.",
                           status=405, Method=method)
        if operation == "InvalidPartRequest":
            return S3Error("InvalidRequest", "partNumber and uploadId must be given together.")
        name = operation.split(":", 1)[-1]
        return S3Error("NotImplemented", f"A header or query you provided implies functionality that is not "
                                         f"implemented ({name}).", status=501)
