"""The cold side of a tiering test: a prefix of a container (or bucket) on Azurite or moto S3 that Atoll reaches
through its own counting FaultProxy, while the test reads and writes it directly.

Only Atoll's own traffic crosses the proxy, so its counts and its faults are Atoll's alone; and each ``Cold`` has
its own proxy, so tests that share an emulator, a container or an Atoll server still count only their requests.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field

from coldstores import AzuriteServer, FaultProxy, MotoS3Server, fresh_name

COLD_KINDS = ["s3", "azure"]


def pattern(size: int, seed: str) -> bytes:
    """Deterministic bytes that differ every 2 KiB (so a block served at the wrong offset shows), cheap to make."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest() * 64
        counter += 1
    return bytes(out[:size])


def emulator(request, kind: str) -> MotoS3Server | AzuriteServer:
    """The session's emulator of ``kind`` (the ``moto_s3`` or ``azurite`` fixture)."""
    return request.getfixturevalue("moto_s3" if kind == "s3" else "azurite")


@dataclass
class Cold:
    """``prefix`` of one cold bucket/container: Atoll reaches it through ``proxy``, the test directly."""

    kind: str  # "s3" | "azure"
    server: MotoS3Server | AzuriteServer
    container: str
    proxy: FaultProxy
    prefix: str
    # Clients of the emulator, made once: a boto3 client costs ~40 ms.
    _direct: object = field(default=None, repr=False, compare=False)
    _container: object = field(default=None, repr=False, compare=False)

    @property
    def url(self) -> str:
        return f"{'s3' if self.kind == 's3' else 'az'}://{self.container}/{self.prefix}"

    def link_options(self, **override: str) -> list[str]:
        """``-o name=value`` arguments of ``atoll bucket link`` that reach the cold store through the proxy."""
        if self.kind == "s3":
            pairs = {"endpoint": self.proxy.endpoint(), "access_key_id": self.server.access_key,
                     "secret_access_key": self.server.secret_key, "region": self.server.region}
        else:
            pairs = {"account_name": self.server.account_name, "account_key": self.server.account_key,
                     "endpoint": self.proxy.endpoint(f"/{self.server.account_name}")}
        pairs.update(override)
        return [arg for name, value in pairs.items() for arg in ("-o", f"{name}={value}")]

    def path(self, key: str) -> str:
        """The request path of ``key`` as the proxy records it (without a query string)."""
        account = f"/{self.server.account_name}" if self.kind == "azure" else ""
        return f"{account}/{self.container}/{self.prefix}/{key}"

    # the cold store seen directly, not through the proxy --------------------------------------------------------
    def direct(self):
        """A client of the emulator itself: a boto3 S3 client, or an Azure BlobServiceClient."""
        if self._direct is None:
            self._direct = self.server.client() if self.kind == "s3" else self.server.service_client()
        return self._direct

    def container_client(self):
        """The Azure ContainerClient of the container (Azure only)."""
        if self._container is None:
            self._container = self.direct().get_container_client(self.container)
        return self._container

    def put(self, key: str, body: bytes, content_type: str | None = None,
            metadata: dict[str, str] | None = None) -> str:
        """Store ``key`` directly; the cold store's ETag of it, unquoted."""
        name = f"{self.prefix}/{key}"
        if self.kind == "s3":
            extra = {"ContentType": content_type} if content_type else {}
            reply = self.direct().put_object(Bucket=self.container, Key=name, Body=body, Metadata=metadata or {},
                                             **extra)
            return reply["ETag"].strip('"')
        from azure.storage.blob import ContentSettings

        settings = ContentSettings(content_type=content_type) if content_type else None
        reply = self.container_client().get_blob_client(name).upload_blob(
            body, overwrite=True, metadata=metadata, content_settings=settings)
        return reply["etag"].strip('"')

    def get(self, key: str) -> bytes | None:
        found = self.get_object(key)
        return None if found is None else found[0]

    def get_object(self, key: str) -> tuple[bytes, dict[str, str], dict[str, str]] | None:
        """(bytes, stored headers by lower-case name, user metadata), or None if there is no such object."""
        name = f"{self.prefix}/{key}"
        if self.kind == "s3":
            client = self.direct()
            try:
                got = client.get_object(Bucket=self.container, Key=name)
            except client.exceptions.NoSuchKey:
                return None
            headers = {"content-type": got.get("ContentType"), "content-disposition": got.get("ContentDisposition"),
                       "cache-control": got.get("CacheControl")}
            return got["Body"].read(), {k: v for k, v in headers.items() if v}, got["Metadata"]
        from azure.core.exceptions import ResourceNotFoundError

        try:
            downloader = self.container_client().get_blob_client(name).download_blob()
        except ResourceNotFoundError:
            return None
        settings = downloader.properties.content_settings
        headers = {"content-type": settings.content_type, "content-disposition": settings.content_disposition,
                   "cache-control": settings.cache_control}
        return downloader.readall(), {k: v for k, v in headers.items() if v}, dict(downloader.properties.metadata)

    def names(self, starting: str = "") -> dict[str, int]:
        """Every committed object of the container whose whole name starts with ``starting`` (by default all,
        under the prefix or not: nothing may land outside it) -> size."""
        if self.kind == "s3":
            pages = self.direct().get_paginator("list_objects_v2").paginate(Bucket=self.container, Prefix=starting)
            return {o["Key"]: o["Size"] for page in pages for o in page.get("Contents", [])}
        return {b.name: b.size for b in self.container_client().list_blobs(name_starts_with=starting or None)}

    def keys(self) -> dict[str, int]:
        """Committed objects under the prefix, by key relative to it -> size."""
        start = f"{self.prefix}/"
        return {name[len(start):]: size for name, size in self.names(start).items()}

    def half_finished_uploads(self, keys: list[str] = ()) -> list[str]:
        """Uploads started and never completed nor aborted: S3 multipart uploads still open anywhere in the
        bucket; Azure blobs that exist only as uncommitted blocks, and uncommitted blocks left on ``keys``."""
        if self.kind == "s3":
            listed = self.direct().list_multipart_uploads(Bucket=self.container)
            return [f"{u['Key']} (upload {u['UploadId'][:12]})" for u in listed.get("Uploads", [])]
        container = self.container_client()
        committed = self.names()
        found = [f"{b.name} (uncommitted blob)" for b in container.list_blobs(include=["uncommittedblobs"])
                 if b.name not in committed]
        for key in keys:
            blob = container.get_blob_client(f"{self.prefix}/{key}")
            try:
                _, uncommitted = blob.get_block_list("uncommitted")
            except Exception:  # noqa: BLE001 - no such blob: nothing left on it
                continue
            if uncommitted:
                found.append(f"{self.prefix}/{key} ({len(uncommitted)} uncommitted blocks)")
        return found

    # what Atoll asked of this cold store ------------------------------------------------------------------------
    def _for(self, key: str, method: str | None = None) -> int:
        return len([r for r in self.proxy.requests(method) if r.path.split("?")[0] == self.path(key)])

    def lookups(self, key: str) -> int:
        """HEAD requests for ``key``: Atoll asks "what is this key" (lookup, revalidation) with a HEAD."""
        return self._for(key, "HEAD")

    def gets(self, key: str) -> int:
        """GET requests for ``key``: block fetches (ranged GETs) or a pass-through read."""
        return self._for(key, "GET")

    def requests(self, key: str) -> int:
        return self._for(key)


class ColdSite:
    """One fresh container (or bucket) on an emulator, with any number of proxied ``Cold`` prefixes in it; all
    of it is closed and deleted by ``close``."""

    def __init__(self, kind: str, server: MotoS3Server | AzuriteServer, hint: str = "tier") -> None:
        self.kind = kind
        self.server = server
        self.container = fresh_name(f"{hint}-{kind}")
        if kind == "s3":
            server.create_bucket(self.container)
        else:
            server.create_container(self.container)
        self.proxies: list[FaultProxy] = []

    def __enter__(self) -> "ColdSite":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def cold(self, prefix: str | None = None) -> Cold:
        proxy = FaultProxy(("127.0.0.1", self.server.port))
        self.proxies.append(proxy)
        return Cold(self.kind, self.server, self.container, proxy, prefix or f"p{secrets.token_hex(3)}")

    def close(self) -> None:
        for proxy in self.proxies:
            proxy.close()
        if self.kind == "azure":
            self.server.delete_container(self.container)
            return
        client = self.server.client()
        for upload in client.list_multipart_uploads(Bucket=self.container).get("Uploads", []):
            client.abort_multipart_upload(Bucket=self.container, Key=upload["Key"], UploadId=upload["UploadId"])
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=self.container)
        names = [o["Key"] for page in pages for o in page.get("Contents", [])]
        for at in range(0, len(names), 1000):
            client.delete_objects(Bucket=self.container, Delete={
                "Objects": [{"Key": name} for name in names[at:at + 1000]], "Quiet": True})
        client.delete_bucket(Bucket=self.container)
