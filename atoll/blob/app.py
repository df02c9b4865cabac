"""The Azure Blob front end: turns an HTTP request into a call on the namespace and its answer into Blob's wire
format.

Order for every request: find account, container and blob (path style ``/ACCOUNT/container/blob``, or host style
``ACCOUNT.<blob domain>``) → authenticate (Shared Key header, SAS query, or anonymous for a public container's
reads) → route → run → map any core error to Azure XML. Every answer carries x-ms-request-id and x-ms-version;
every request lands in the access log (shared with S3).
"""

from __future__ import annotations

import re
import time
from urllib.parse import unquote

from atoll import errors
from atoll.auth import sas as sas_auth
from atoll.auth import sharedkey
from atoll.auth.sharedkey import BlobAuthError
from atoll.blob import errors as blob_errors
from atoll.blob.context import BlobContext
from atoll.blob.errors import BlobError
from atoll.blob.router import route
from atoll.core.models import Bucket, Identity
from atoll.core.namespace import Namespace
from atoll.core.qos import Governor
from atoll.http.query import parse_query
from atoll.http.server import BodyTooLarge, ClientGone, Request, Response
from atoll.server import throttle
from atoll.server.accesslog import AccessLog

# Answered when a request names no x-ms-version (anonymous browser reads do not): the newest this code follows.
DEFAULT_VERSION = "2025-11-05"
_VERSION = re.compile(r"^20\d\d-\d\d-\d\d$")
_OLDEST_VERSION = "2009-09-19"

# Reads an anonymous caller may make, by the container's public access level.
_PUBLIC_BLOB_READS = frozenset(("GetBlob", "GetBlobProperties", "GetBlobMetadata"))
_PUBLIC_CONTAINER_READS = _PUBLIC_BLOB_READS | {"GetContainerProperties", "GetContainerMetadata", "ListBlobs"}


def _parse_query(raw: str) -> dict[str, str]:
    """Names lower-cased (Azure's are case-insensitive); see atoll.http.query (the result is shared)."""
    try:
        return parse_query(raw, lower_names=True)
    except UnicodeDecodeError:
        raise BlobError("InvalidUri", "The requested URI does not represent any resource on the server.",
                        400) from None


def anonymous_reader(bucket: Bucket) -> Identity:
    """The identity an anonymous read of a public container runs as: a read-only member of the container's
    tenant, scoped to that container (the app routes nothing else for an anonymous caller)."""
    return Identity(access_key="", secret_key="", owner_id=bucket.owner_id, display_name="anonymous", created=0.0,
                    tenant=bucket.tenant, role="read", scopes=(bucket.name,))


class BlobApp:
    def __init__(self, ns: Namespace, *, domains: tuple[str, ...] = (), access_log: AccessLog | None = None,
                 max_skew: float = sharedkey.MAX_CLOCK_SKEW, governor: Governor | None = None) -> None:
        self.ns = ns
        self.governor = governor
        self.domains = tuple(d.lower().strip(".") for d in domains if d)
        self.access_log = access_log
        self.max_skew = max_skew

    # http.App ----------------------------------------------------------------------------------------
    async def handle(self, request: Request) -> Response:
        head = request.method == "HEAD"
        version = request.headers.get("x-ms-version") or DEFAULT_VERSION
        try:
            if not _VERSION.match(version) or version < _OLDEST_VERSION:
                version = DEFAULT_VERSION
                raise BlobError("InvalidHeaderValue", "The value for one of the HTTP headers is not in the correct "
                                "format. (x-ms-version)", 400)
            ctx = self._parse(request)
            operation, handler = route(request.method, ctx)
            ctx.operation = operation
            request.state["op"] = operation
            await self._authenticate(ctx)
            if handler is None:
                raise self._unroutable(operation)
            caller = ctx.identity or ctx.public_reader
            ticket = None if self.governor is None or caller is None else await throttle.admit(
                self.governor, request, caller.tenant, ctx.container, request.content_length or 0)
            response = await handler(ctx)
            throttle.charge(ticket, response)
        except BlobError as exc:
            response = blob_errors.error_response(exc.code, exc.message, exc.status, request.id, head=head,
                                                  headers=exc.headers)
        except BlobAuthError as exc:
            response = blob_errors.error_response(exc.code, exc.message, exc.status, request.id, head=head)
        except errors.AtollError as exc:
            response = blob_errors.from_core(exc, request.id, head=head)
        except BodyTooLarge:
            response = blob_errors.error_response("RequestBodyTooLarge", "The request body is too large.", 413,
                                                  request.id, head=head)
        except ClientGone:
            raise
        response.headers += [("x-ms-request-id", request.id), ("x-ms-version", version)]
        return response

    def protocol_error(self, request: Request | None, status: int, code: str, message: str) -> Response:
        request_id = request.id if request is not None else "0"
        response = blob_errors.error_response(code, message, status, request_id,
                                              head=request is not None and request.method == "HEAD")
        response.headers += [("x-ms-request-id", request_id), ("x-ms-version", DEFAULT_VERSION)]
        return response

    def log_access(self, request: Request, status: int, sent: int, elapsed: float) -> None:
        if self.access_log is not None:
            self.access_log.record(request, status, sent, elapsed)

    # parsing -----------------------------------------------------------------------------------------
    def _parse(self, request: Request) -> BlobContext:
        raw_path = request.raw_path
        host = request.headers.get("host", "")
        if raw_path.startswith(("http://", "https://")):
            # Absolute form (RFC 9112 §3.2.2), as a client sends it through a proxy: the authority is the host.
            authority, slash, rest = raw_path.split("://", 1)[1].partition("/")
            host, raw_path = authority, "/" + rest
            request.raw_path = raw_path  # Shared Key signs the path alone
        if not raw_path.startswith("/"):
            raise BlobError("InvalidUri", "The requested URI does not represent any resource on the server.", 400)
        try:
            path = unquote(raw_path, errors="strict") if "%" in raw_path else raw_path
        except UnicodeDecodeError:
            raise BlobError("InvalidUri", "The requested URI does not represent any resource on the server.",
                            400) from None
        query = _parse_query(request.raw_query) if request.raw_query else {}
        account = self._host_account(host)
        host_style = account is not None
        rest = path[1:]
        if account is None:
            account, _, rest = rest.partition("/")
            if not account:
                raise BlobError("InvalidUri", "The requested URI does not represent any resource on the server: "
                                "name the account in the path (/ACCOUNT/container/blob) or the host.", 400)
        container, slash, blob = rest.partition("/")
        ctx = BlobContext(http=request, ns=self.ns, account=account, container=container or None,
                          blob=blob or None, query=query)
        request.state["host_style"] = host_style
        request.state["bucket"] = ctx.container
        request.state["key"] = ctx.blob
        return ctx

    def _host_account(self, host: str) -> str | None:
        if not self.domains or not host:
            return None
        name = host.rsplit(":", 1)[0].lower() if not host.endswith("]") else host
        for domain in self.domains:
            if name.endswith("." + domain):
                account = name[: -len(domain) - 1]
                if account and "." not in account:
                    return account
        return None

    async def _authenticate(self, ctx: BlobContext) -> None:
        request = ctx.http
        headers = request.headers
        authorization = headers.get("authorization")
        sas = sas_auth.is_sas(ctx.query)
        if authorization is None and not sas:
            await self._allow_anonymous(ctx)
            return
        identity = await self.ns.identity_by_account(ctx.account)
        if identity is None or not identity.account_key:
            raise BlobAuthError("AuthenticationFailed", "Server failed to authenticate the request. The account "
                                "is not known here.")
        key = identity.account_key
        if authorization is not None:
            claimed = sharedkey.shared_key_account(headers)
            if claimed is None:
                raise BlobAuthError("AuthenticationFailed", "Server failed to authenticate the request: only "
                                    "Shared Key and SAS are supported.")
            if claimed != ctx.account:
                raise BlobAuthError("AuthenticationFailed", "Server failed to authenticate the request: the "
                                    "Authorization header names another account.")
            sharedkey.verify_shared_key(request.method, request.raw_path, request.raw_query, headers, ctx.account,
                                        key)
        else:
            policies = None
            if ctx.query.get("si") and ctx.container is not None:
                # A SAS naming a stored access policy takes its missing fields from the container's ACL.
                acl = (await self.ns.bucket_properties(ctx.container)).access_policies
                policies = sas_auth.policies_from_acl(acl)
            ctx.sas = sas_auth.verify_sas(ctx.query, account=ctx.account, key=key, container=ctx.container,
                                          blob=ctx.blob, client_ip=request.client, scheme="http",
                                          now=time.time(), policies=policies)
            # The operation table in atoll.auth.sas, once per request: Azure's codes for a SAS of the wrong kind
            # (AuthorizationResourceTypeMismatch), and a floor under the handlers' own ctx.require checks.
            ctx.sas.authorize(ctx.operation, ctx.container, ctx.blob)
        ctx.identity = identity
        request.state["access_key"] = ctx.account

    async def _allow_anonymous(self, ctx: BlobContext) -> None:
        """An anonymous caller may read a public container (level "blob": its blobs; "container": also list it
        and read its properties). Anything else is answered as if the resource did not exist, as Azure does."""
        if ctx.container is not None and (ctx.operation in _PUBLIC_CONTAINER_READS):
            bucket = await self.ns.meta.get_bucket(ctx.container)
            if bucket is not None:
                level = (await self.ns.bucket_properties(ctx.container)).public_access
                allowed = _PUBLIC_CONTAINER_READS if level == "container" else \
                    _PUBLIC_BLOB_READS if level == "blob" else frozenset()
                if ctx.operation in allowed and (ctx.blob is not None or level == "container"):
                    ctx.public_reader = anonymous_reader(bucket)
                    return
            raise BlobError("ResourceNotFound", "The specified resource does not exist.", 404)
        raise BlobError("NoAuthenticationInformation", "Server failed to authenticate the request. Please refer "
                        "to the information in the www-authenticate header.", 401)

    @staticmethod
    def _unroutable(operation: str) -> BlobError:
        if operation == "UnsupportedHttpVerb":
            return BlobError("UnsupportedHttpVerb", "The resource doesn't support the specified HTTP verb.", 405)
        if operation == "InvalidUri":
            return BlobError("InvalidUri", "The requested URI does not represent any resource on the server.", 400)
        return BlobError("NotImplemented", f"The operation {operation} is not implemented by Atoll.", 501)

