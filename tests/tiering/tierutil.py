"""Helpers for the tiering tests: cold stores (moto S3 or Azurite) reached through counting FaultProxies, and an
Atoll server whose buckets are linked to them with the ``atoll bucket link`` CLI, as an operator would do it.

The test writes to the cold store *directly* (not through the proxy), so a proxy counts only what Atoll itself
asks of the cold store. Each ``Cold`` is one prefix of a container behind its own proxy: tests that share an
emulator, a container or an Atoll server still count only their own requests.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import sqlite3
import subprocess
from dataclasses import dataclass, field

from coldstores import AzuriteServer, FaultProxy, MotoS3Server, fresh_name
from harness import ATOLL, AtollProcess

COLD_KINDS = ["s3", "azure"]
BLOCK = 64 << 10  # the smallest fill block the config accepts: many blocks from small objects


def pattern(size: int, seed: str) -> bytes:
    """Deterministic bytes that differ every 2 KiB (so a block served at the wrong offset shows), cheap to make."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest() * 64
        counter += 1
    return bytes(out[:size])


@dataclass
class Cold:
    """``prefix`` of one cold bucket/container, seen directly (``put``/``delete``) and by Atoll via ``proxy``."""

    kind: str  # "s3" | "azure"
    server: MotoS3Server | AzuriteServer
    container: str
    prefix: str
    proxy: FaultProxy
    _direct: object = field(default=None, repr=False, compare=False)

    @property
    def url(self) -> str:
        return f"{'s3' if self.kind == 's3' else 'az'}://{self.container}/{self.prefix}"

    def link_options(self) -> list[str]:
        if self.kind == "s3":
            pairs = {"endpoint": self.proxy.endpoint(), "access_key_id": self.server.access_key,
                     "secret_access_key": self.server.secret_key, "region": self.server.region}
        else:
            pairs = {"account_name": self.server.account_name, "account_key": self.server.account_key,
                     "endpoint": self.proxy.endpoint(f"/{self.server.account_name}")}
        return [arg for name, value in pairs.items() for arg in ("-o", f"{name}={value}")]

    def path(self, key: str) -> str:
        """The request path of ``key`` as the proxy records it (without a query string)."""
        account = f"/{self.server.account_name}" if self.kind == "azure" else ""
        return f"{account}/{self.container}/{self.prefix}/{key}"

    def direct(self):
        """A client of the emulator itself (not through the proxy), made once: a boto3 client costs ~40 ms."""
        if self._direct is None:
            self._direct = self.server.client() if self.kind == "s3" else self.server.service_client()
        return self._direct

    def put(self, key: str, body: bytes, content_type: str | None = None,
            metadata: dict[str, str] | None = None) -> None:
        name = f"{self.prefix}/{key}"
        if self.kind == "s3":
            extra = {"ContentType": content_type} if content_type else {}
            self.direct().put_object(Bucket=self.container, Key=name, Body=body, Metadata=metadata or {}, **extra)
        else:
            from azure.storage.blob import ContentSettings

            settings = ContentSettings(content_type=content_type) if content_type else None
            self.direct().get_blob_client(self.container, name).upload_blob(
                body, overwrite=True, metadata=metadata, content_settings=settings)

    def get(self, key: str) -> bytes | None:
        name = f"{self.prefix}/{key}"
        if self.kind == "s3":
            client = self.direct()
            try:
                return client.get_object(Bucket=self.container, Key=name)["Body"].read()
            except client.exceptions.NoSuchKey:
                return None
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return self.direct().get_blob_client(self.container, name).download_blob().readall()
        except ResourceNotFoundError:
            return None

    # what Atoll asked of this cold store ------------------------------------------------------------------
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
    """One fresh container (or bucket) on an emulator, with any number of proxied ``Cold`` prefixes in it."""

    def __init__(self, kind: str, server: MotoS3Server | AzuriteServer, hint: str = "tier") -> None:
        self.kind = kind
        self.server = server
        self.container = fresh_name(f"{hint}-{kind}")
        if kind == "s3":
            server.create_bucket(self.container)
        else:
            server.create_container(self.container)
        self.proxies: list[FaultProxy] = []

    def cold(self, prefix: str | None = None) -> Cold:
        proxy = FaultProxy(("127.0.0.1", self.server.port))
        self.proxies.append(proxy)
        return Cold(self.kind, self.server, self.container, prefix or f"p{secrets.token_hex(3)}", proxy)

    def close(self) -> None:
        for proxy in self.proxies:
            proxy.close()
        if self.kind == "s3":
            client = self.server.client()
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.container):
                for obj in page.get("Contents", []):
                    client.delete_object(Bucket=self.container, Key=obj["Key"])
            client.delete_bucket(Bucket=self.container)
        else:
            self.server.delete_container(self.container)


def emulator(request, kind: str) -> MotoS3Server | AzuriteServer:
    return request.getfixturevalue("moto_s3" if kind == "s3" else "azurite")


def tier_env(**settings: object) -> dict[str, str]:
    """ATOLL_* environment for a tiered server: small fill blocks, plus ``settings`` by config name
    (``warm_capacity=4 << 20`` -> ATOLL_WARM_CAPACITY)."""
    # No admin API: these tests do not use it, and a server starts faster without it.
    env = {"ATOLL_FILL_BLOCK_SIZE": str(BLOCK), "ATOLL_ADMIN_ADDRESS": "off"}
    env.update({f"ATOLL_{name.upper()}": str(value) for name, value in settings.items()})
    return env


def start_server(workdir: str, **settings: object) -> AtollProcess:
    server = AtollProcess(data_dir=os.path.join(workdir, f"tier-{secrets.token_hex(4)}"),
                          extra_env=tier_env(**settings))
    return server.start()


def link_buckets(server: AtollProcess, specs: list[tuple]) -> list[str]:
    """For each (cold, mode, revalidate[, other_server]): create a bucket on ``server`` (or ``other_server``)
    over S3 and link it to ``cold`` with the CLI. The links are made concurrently, as each CLI run costs a
    Python start-up. Returns the bucket names; the running servers see the links at once. Proxy counters are
    zeroed (the CLI's link check lists the cold store once)."""
    names = [fresh_name("warm") for _ in specs]
    procs = []
    for name, (cold, mode, revalidate, *on) in zip(names, specs):
        target = on[0] if on else server
        target.client().create_bucket(Bucket=name)
        argv = [ATOLL, "bucket", "link", name, cold.url, "--mode", mode, "--revalidate", revalidate,
                *cold.link_options(), "--data-dir", target.data_dir]
        procs.append(subprocess.Popen(argv, env=target.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out
    # No wait for the server's link cache (about a second): it holds only buckets the server has looked at,
    # and nothing has asked about these new buckets yet.
    for cold, *_ in specs:
        cold.proxy.reset_counts()
    return names


def link_bucket(server: AtollProcess, cold: Cold, mode: str = "cache", revalidate: str = "never") -> str:
    return link_buckets(server, [(cold, mode, revalidate)])[0]


def client(server: AtollProcess, **config):
    """A boto3 client of ``server`` with any botocore Config (the harness's fixes ``retries``)."""
    import boto3
    from botocore.config import Config

    settings = {"retries": {"total_max_attempts": 1}, "connect_timeout": 5, "read_timeout": 60, **config}
    return boto3.client("s3", endpoint_url=server.endpoint, aws_access_key_id=server.access_key,
                        aws_secret_access_key=server.secret_key, region_name="us-east-1",
                        config=Config(**settings))


# a read-only look at the server's metadata while it runs -------------------------------------------------------

def meta_path(server: AtollProcess) -> str:
    return os.path.join(server.data_dir, "meta.sqlite3")


def meta_query(server: AtollProcess, sql: str, params: tuple = ()) -> list[tuple]:
    conn = sqlite3.connect(f"file:{meta_path(server)}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def resident_bytes(server: AtollProcess) -> int:
    rows = meta_query(server, "SELECT value FROM counters WHERE name = 'resident_bytes'")
    return int(rows[0][0]) if rows else 0


def residency(server: AtollProcess, bucket: str, key: str) -> str | None:
    rows = meta_query(server, "SELECT residency FROM objects WHERE bucket = ? AND key = ?", (bucket, key))
    return {0: "absent", 1: "partial", 2: "resident"}[rows[0][0]] if rows else None
