"""Helpers for the WAN fault scenarios: an Atoll server with short cold-store timeouts, buckets linked through a
FaultProxy to a fresh container on Azurite or moto (``coldside.Cold``: also the direct looks at the cold store,
contents and half-finished uploads, that bypass the proxy), and a paced warm-read load with its latencies.

Only Atoll's own traffic crosses the proxy: the test writes and reads the cold store directly, so a fault
injected at the proxy is a fault on Atoll's WAN link and nothing else.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import random
import secrets
import time
import urllib.parse
from dataclasses import dataclass

from coldside import COLD_KINDS, Cold, ColdSite, emulator  # noqa: F401 - COLD_KINDS for the wan tests
from coldstores import fresh_name
# admin_call, meta_query and wait_until are for the WAN tests to import from here
from harness import (AtollProcess, admin_call, admin_status, first_answer_client, meta_query,  # noqa: F401
                     stop_cleanly, wait_until)

KiB, MiB = 1 << 10, 1 << 20

# Short timeouts, so that a partition is detected in about three seconds instead of ten: a cold request's first
# byte (and a client's whole wait for a miss) 1 s, connects 1 s, the breaker's first cooldown 0.5 s and its
# longest 2 s (the default 30 s would make "time to notice the heal" dominate every test).
FAST_FAILURE_ENV = {"ATOLL_COLD_FIRST_BYTE_TIMEOUT": "1", "ATOLL_COLD_CONNECT_TIMEOUT": "1",
                    "ATOLL_BREAKER_COOLDOWN": "0.5", "ATOLL_BREAKER_MAX_COOLDOWN": "2"}


def start_server(workdir: str, env: dict[str, str]) -> AtollProcess:
    server = AtollProcess(data_dir=os.path.join(workdir, f"wan-{secrets.token_hex(4)}"), extra_env=env)
    return server.start()


stop_server = stop_cleanly  # the WAN tests' name for it


# --- the cold side ------------------------------------------------------------------------------------------------

class LeftBehind(AssertionError):
    """A half-finished upload stayed in the cold store."""


def wait_no_leftovers(cold: Cold, keys: list[str], timeout: float) -> None:
    """Wait until ``cold`` holds no half-finished upload (see ``half_finished_uploads``); says what is left."""
    deadline = time.monotonic() + timeout
    while left := cold.half_finished_uploads(keys):
        if time.monotonic() > deadline:
            raise LeftBehind(f"half-finished uploads left in the {cold.kind} cold store after {timeout} s: {left}")
        time.sleep(0.2)


class ColdSites:
    """A factory of cold prefixes, each in a fresh container behind its own proxy (so its own cold endpoint in
    Atoll, with its own breaker); everything made is closed and deleted at the end."""

    def __init__(self, request) -> None:
        self.request = request
        self.sites: list[ColdSite] = []

    def make(self, kind: str) -> Cold:
        site = ColdSite(kind, emulator(self.request, kind), "wan")
        self.sites.append(site)
        return site.cold(f"wan-{secrets.token_hex(3)}")

    def close(self) -> None:
        for site in self.sites:
            site.close()


# --- Atoll: links, journal, status --------------------------------------------------------------------------------

def link(server: AtollProcess, cold: Cold, mode: str, revalidate: str = "never") -> str:
    """A new bucket linked to ``cold`` with the CLI, as an operator does it; the proxy's counts start at zero."""
    name = fresh_name("wan")
    server.client().create_bucket(Bucket=name)
    done = server.cli("bucket", "link", name, cold.url, "--mode", mode, "--revalidate", revalidate,
                      *cold.link_options(), check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    cold.proxy.reset_counts()
    return name


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


def cold_state(server: AtollProcess, bucket: str) -> str:
    """healthy | degraded | partitioned: the server's view of the bucket's cold store. From the admin API, not
    the CLI: a CLI run costs seconds of Python start-up on a loaded 2-core machine, too slow for a step timed
    against the link."""
    for view in admin_status(server)["cold_stores"]:
        if view["bucket"] == bucket:
            return view["state"]
    raise AssertionError(f"no cold store reported for bucket {bucket}")


def no_retry_client(server: AtollProcess, read_timeout: float = 60):
    """A boto3 client that shows Atoll's first answer; its presigned URLs are SigV4 (boto3 would make SigV2 ones
    in us-east-1)."""
    return first_answer_client(server, signature_version="s3v4", read_timeout=read_timeout)


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
