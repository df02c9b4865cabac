"""Helpers for the WAN fault scenarios: an Atoll server with short cold-store timeouts, buckets linked through a
FaultProxy to a fresh container on Azurite or moto, a paced warm-read load with its latencies, and direct looks
at the cold store (contents, half-finished uploads) that bypass the proxy.

Only Atoll's own traffic crosses the proxy: the test writes and reads the cold store directly, so a fault
injected at the proxy is a fault on Atoll's WAN link and nothing else.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import random
import secrets
import sqlite3
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Callable

from coldstores import AzuriteServer, FaultProxy, MotoS3Server, fresh_name
from harness import AtollProcess

COLD_KINDS = ["s3", "azure"]
KiB, MiB = 1 << 10, 1 << 20

# Short timeouts, so that a partition is detected in about three seconds instead of ten: a cold request's first
# byte (and a client's whole wait for a miss) 1 s, connects 1 s, the breaker's first cooldown 0.5 s and its
# longest 2 s (the default 30 s would make "time to notice the heal" dominate every test).
FAST_FAILURE_ENV = {"ATOLL_COLD_FIRST_BYTE_TIMEOUT": "1", "ATOLL_COLD_CONNECT_TIMEOUT": "1",
                    "ATOLL_BREAKER_COOLDOWN": "0.5", "ATOLL_BREAKER_MAX_COOLDOWN": "2"}


def start_server(workdir: str, env: dict[str, str]) -> AtollProcess:
    server = AtollProcess(data_dir=os.path.join(workdir, f"wan-{secrets.token_hex(4)}"), extra_env=env)
    return server.start()


def stop_server(server: AtollProcess) -> None:
    """Stop cleanly; a traceback anywhere in the log fails the module."""
    code = server.stop()
    log = server.log_text()
    assert code == 0, f"atoll did not shut down cleanly ({code}):\n{log[-3000:]}"
    assert "Traceback" not in log, log[-5000:]


# --- the cold side ------------------------------------------------------------------------------------------------

@dataclass
class ColdSide:
    """``prefix`` of a fresh container on one emulator: Atoll reaches it through ``proxy``, the test directly."""

    kind: str  # "s3" | "azure"
    server: MotoS3Server | AzuriteServer
    container: str
    proxy: FaultProxy
    prefix: str = field(default_factory=lambda: f"wan-{secrets.token_hex(3)}")
    _direct: object = field(default=None, repr=False)

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

    def direct(self):
        if self._direct is None:
            self._direct = self.server.client() if self.kind == "s3" else \
                self.server.service_client().get_container_client(self.container)
        return self._direct

    def put(self, key: str, body: bytes) -> None:
        name = f"{self.prefix}/{key}"
        if self.kind == "s3":
            self.direct().put_object(Bucket=self.container, Key=name, Body=body)
        else:
            self.direct().get_blob_client(name).upload_blob(body, overwrite=True)

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
            return self.direct().get_blob_client(name).download_blob().readall()
        except ResourceNotFoundError:
            return None

    def names(self) -> dict[str, int]:
        """Every committed object of the container (whole names, under the prefix or not) -> size."""
        if self.kind == "s3":
            pages = self.direct().get_paginator("list_objects_v2").paginate(Bucket=self.container)
            return {o["Key"]: o["Size"] for page in pages for o in page.get("Contents", [])}
        return {b.name: b.size for b in self.direct().list_blobs()}

    def keys(self) -> dict[str, int]:
        """Committed objects under the prefix, by key relative to it -> size."""
        start = f"{self.prefix}/"
        return {name[len(start):]: size for name, size in self.names().items() if name.startswith(start)}

    def half_finished_uploads(self, keys: list[str] = ()) -> list[str]:
        """Uploads started and never completed nor aborted: S3 multipart uploads still open anywhere in the
        bucket; Azure blobs that exist only as uncommitted blocks, and uncommitted blocks left on ``keys``."""
        if self.kind == "s3":
            listed = self.direct().list_multipart_uploads(Bucket=self.container)
            return [f"{u['Key']} (upload {u['UploadId'][:12]})" for u in listed.get("Uploads", [])]
        container = self.direct()
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


class LeftBehind(AssertionError):
    """A half-finished upload stayed in the cold store."""


def wait_no_leftovers(cold: ColdSide, keys: list[str], timeout: float) -> None:
    """Wait until ``cold`` holds no half-finished upload (see ``half_finished_uploads``); says what is left."""
    deadline = time.monotonic() + timeout
    while left := cold.half_finished_uploads(keys):
        if time.monotonic() > deadline:
            raise LeftBehind(f"half-finished uploads left in the {cold.kind} cold store after {timeout} s: {left}")
        time.sleep(0.2)


class ColdSites:
    """A factory of ``ColdSide``s, each in a fresh container behind its own proxy (so its own cold endpoint in
    Atoll, with its own breaker); everything made is closed and deleted at the end."""

    def __init__(self, request) -> None:
        self.request = request
        self.made: list[ColdSide] = []

    def make(self, kind: str) -> ColdSide:
        server = self.request.getfixturevalue("moto_s3" if kind == "s3" else "azurite")
        container = fresh_name(f"wan-{kind}")
        if kind == "s3":
            server.create_bucket(container)
        else:
            server.create_container(container)
        side = ColdSide(kind, server, container, FaultProxy(("127.0.0.1", server.port)))
        self.made.append(side)
        return side

    def close(self) -> None:
        for side in self.made:
            side.proxy.close()
            if side.kind == "s3":
                client = side.direct()
                for upload in client.list_multipart_uploads(Bucket=side.container).get("Uploads", []):
                    client.abort_multipart_upload(Bucket=side.container, Key=upload["Key"],
                                                  UploadId=upload["UploadId"])
                names = list(side.names())
                for at in range(0, len(names), 1000):
                    client.delete_objects(Bucket=side.container, Delete={
                        "Objects": [{"Key": name} for name in names[at:at + 1000]], "Quiet": True})
                client.delete_bucket(Bucket=side.container)
            else:
                side.server.delete_container(side.container)


# --- Atoll: links, journal, status --------------------------------------------------------------------------------

def link(server: AtollProcess, cold: ColdSide, mode: str, revalidate: str = "never") -> str:
    """A new bucket linked to ``cold`` with the CLI, as an operator does it; the proxy's counts start at zero."""
    name = fresh_name("wan")
    server.client().create_bucket(Bucket=name)
    done = server.cli("bucket", "link", name, cold.url, "--mode", mode, "--revalidate", revalidate,
                      *cold.link_options(), check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    cold.proxy.reset_counts()
    return name


def meta_query(server: AtollProcess, sql: str, params: tuple = ()) -> list[tuple]:
    """A read-only look at the running server's metadata."""
    conn = sqlite3.connect(f"file:{os.path.join(server.data_dir, 'meta.sqlite3')}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def backlog(server: AtollProcess, bucket: str) -> tuple[int, int]:
    """(entries, bytes) waiting in the bucket's drain journal."""
    n, size = meta_query(server, "SELECT count(*), coalesce(sum(size), 0) FROM drain WHERE bucket = ?",
                         (bucket,))[0]
    return int(n), int(size)


def wait_drained(server: AtollProcess, bucket: str, timeout: float) -> float:
    """Wait until the bucket's journal is empty; the monotonic time it was. On timeout, says what is left."""
    deadline = time.monotonic() + timeout
    while backlog(server, bucket)[0]:
        if time.monotonic() > deadline:
            rows = meta_query(server, "SELECT key, op, size, attempts, last_error, not_before - ? FROM drain "
                              "WHERE bucket = ? ORDER BY key", (time.time(), bucket))
            raise AssertionError(f"{len(rows)} journal entries still waiting after {timeout} s: {rows[:8]}\n"
                                 f"{server.log_text()[-3000:]}")
        time.sleep(0.05)
    return time.monotonic()


def admin_call(server: AtollProcess, method: str, path: str, body: dict | None = None) -> dict:
    """One admin API request (``path`` under /api/v1); its JSON answer. The API, not the CLI: a CLI run costs
    seconds of Python start-up on a loaded 2-core machine, too slow for a step timed against the link."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{server.admin_endpoint}/api/v1/{path}", data=data, method=method,
                                     headers={"Authorization": f"Bearer {server.admin_token}",
                                              "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def admin_status(server: AtollProcess) -> dict:
    return admin_call(server, "GET", "status")


def cold_state(server: AtollProcess, bucket: str) -> str:
    """healthy | degraded | partitioned: the server's view of the bucket's cold store."""
    for view in admin_status(server)["cold_stores"]:
        if view["bucket"] == bucket:
            return view["state"]
    raise AssertionError(f"no cold store reported for bucket {bucket}")


def wait_until(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def no_retry_client(server: AtollProcess, read_timeout: float = 60):
    """A boto3 client that shows Atoll's first answer (boto3 would retry a 503 itself); its presigned URLs are
    SigV4 (boto3 would make SigV2 ones in us-east-1)."""
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=server.endpoint, aws_access_key_id=server.access_key,
                        aws_secret_access_key=server.secret_key, region_name="us-east-1",
                        config=Config(signature_version="s3v4", retries={"total_max_attempts": 1},
                                      connect_timeout=5, read_timeout=read_timeout))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- timed requests -----------------------------------------------------------------------------------------------

@dataclass
class Answer:
    status: int
    seconds: float  # request sent -> last body byte
    body: bytes
    headers: dict[str, str]
    first_byte: float = 0.0  # request sent -> response head


def timed_get(url: str, conn: http.client.HTTPConnection | None = None, timeout: float = 30) -> Answer:
    """One GET of a presigned URL, timed from sending to the last body byte (no client-side signing inside)."""
    parts = urllib.parse.urlsplit(url)
    own = conn is None
    conn = conn or http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        started = time.perf_counter()
        conn.request("GET", f"{parts.path}?{parts.query}")
        response = conn.getresponse()
        first_byte = time.perf_counter() - started
        body = response.read()
        seconds = time.perf_counter() - started
        return Answer(response.status, seconds, body, {k.lower(): v for k, v in response.getheaders()}, first_byte)
    finally:
        if own:
            conn.close()


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank percentile (q in 0..100) of ``values``."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


PHASES = ("warmup", "healthy", "partition", "healed", "after")


class WarmReaders:
    """Paced GETs of presigned URLs, checked against their SHA-256, from ``processes`` reader processes (one
    keep-alive connection each): a reader in the test's own process would time the GIL of the test's other
    threads (boto3 writers) as read latency. Each reader pauses a random 0-2 x ``pause`` between requests:
    latency at a steady, moderate load rather than at saturation, where a p99 measures queueing. ``phase``
    (one of PHASES) labels the samples, so one load runs on while the test changes the link under it."""

    def __init__(self, urls: dict[str, str], expected: dict[str, str], processes: int = 2,
                 pause: float = 0.005) -> None:
        import multiprocessing

        context = multiprocessing.get_context("spawn")  # no fork of a process with proxy threads running
        self._phase = context.Value("i", 0)
        self._stop = context.Event()
        self._results = context.Queue()
        self._procs = [context.Process(target=_read_loop, daemon=True,
                                       args=(urls, expected, pause, seed, self._phase, self._stop, self._results))
                       for seed in range(processes)]
        self.samples: dict[str, list[float]] = {}
        self.errors: dict[str, list[str]] = {}

    @property
    def phase(self) -> str:
        return PHASES[self._phase.value]

    @phase.setter
    def phase(self, name: str) -> None:
        self._phase.value = PHASES.index(name)

    def __enter__(self) -> "WarmReaders":
        for proc in self._procs:
            proc.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for _ in self._procs:
            samples, errors = self._results.get(timeout=60)
            for phase, values in samples.items():
                self.samples.setdefault(phase, []).extend(values)
            for phase, values in errors.items():
                self.errors.setdefault(phase, []).extend(values)
        for proc in self._procs:
            proc.join(30)

    def take(self, phase: str) -> tuple[list[float], list[str]]:
        """(latencies in seconds, error descriptions) of a phase; complete once the readers have stopped."""
        return list(self.samples.get(phase, [])), list(self.errors.get(phase, []))


def _read_loop(urls: dict[str, str], expected: dict[str, str], pause: float, seed: int, phase_index, stop,
               results) -> None:
    rng = random.Random(seed)
    keys = list(urls)
    parts = urllib.parse.urlsplit(next(iter(urls.values())))
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    samples: dict[str, list[float]] = {}
    errors: dict[str, list[str]] = {}
    while not stop.is_set():
        key = rng.choice(keys)
        phase = PHASES[phase_index.value]
        try:
            answer = timed_get(urls[key], conn)
            if answer.status == 200 and sha256(answer.body) == expected[key]:
                samples.setdefault(phase, []).append(answer.seconds)
            else:
                errors.setdefault(phase, []).append(f"{key}: HTTP {answer.status} {answer.body[:200]!r}")
        except (OSError, http.client.HTTPException) as exc:
            errors.setdefault(phase, []).append(f"{key}: {type(exc).__name__}: {exc}")
            conn.close()
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        stop.wait(rng.uniform(0, 2 * pause))
    conn.close()
    results.put((samples, errors))
