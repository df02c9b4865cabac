"""`make soak`: a long partition of the cold store under a steady load, and what it cost.

Starts its own Azurite, a FaultProxy in front of it (tests/coldstores.py, the same fault harness as the test
suite) and an Atoll server with a write-back bucket linked through the proxy, all on 127.0.0.1 with default
cold-store timeouts and breaker settings (any ATOLL_* variable in the environment still applies). Then:

1. seed: SOAK_WARM_OBJECTS objects written through Atoll and drained (the warm set);
2. healthy: for SOAK_HEALTHY seconds, paced warm reads (two reader processes) and a writer (SOAK_WRITE_RATE
   writes/s: new keys, overwrites, deletes, and a 12 MiB object now and then, a multipart upload);
3. partition: the proxy black-holes the cold store for SOAK_PARTITION seconds; reads and writes carry on;
4. heal: writes stop, reads carry on until the backlog has drained (at most SOAK_DRAIN_TIMEOUT seconds);
5. verify: every acknowledged write is compared byte for byte (SHA-256) with what the cold store holds, read
   directly from Azurite, and every deleted key must be gone.

Prints a table (healthy vs partitioned warm-read p50/p99, read errors, writes accepted during the partition,
backlog and recovery-point peaks, time to drain after the heal, objects lost) and exits 1 if any acknowledged
write is missing or wrong in the cold store, or the backlog did not drain. See bench/README.md ("Soak").
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import random
import shutil
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The emulator, the fault proxy, the server harness and the warm readers are the test suite's own.
sys.path[:0] = [os.path.join(REPO, "tests"), os.path.join(REPO, "tests", "wan")]

from coldstores import AzuriteServer, FaultProxy  # noqa: E402
from harness import AtollProcess  # noqa: E402
from wanutil import WarmReaders, admin_status, no_retry_client, percentile  # noqa: E402

KIB, MIB = 1 << 10, 1 << 20
BIG = 12 * MIB


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name, "").strip()
    return float(value) if value else default


@dataclasses.dataclass
class Settings:
    partition: float  # seconds the cold store is black-holed
    healthy: float  # seconds of load before it
    write_rate: float  # writes per second
    warm_objects: int
    drain_timeout: float  # longest wait for the backlog to drain after the heal
    workdir: str
    keep: bool  # keep the data directories

    @classmethod
    def from_env(cls) -> "Settings":
        return cls(partition=_env_float("SOAK_PARTITION", 600), healthy=_env_float("SOAK_HEALTHY", 60),
                   write_rate=_env_float("SOAK_WRITE_RATE", 5), warm_objects=int(_env_float("SOAK_WARM_OBJECTS", 200)),
                   drain_timeout=_env_float("SOAK_DRAIN_TIMEOUT", 900),
                   workdir=os.environ.get("SOAK_DIR", "/var/tmp/atoll-soak"), keep=bool(os.environ.get("SOAK_KEEP")))


def log(message: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {message}", flush=True)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Loop:
    """``_run`` on a daemon thread from ``start`` until ``stop`` sets ``_stop``."""

    stop_timeout = 30.0  # the longest wait for ``_run`` to return

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self.stop_timeout)

    def _run(self) -> None:
        raise NotImplementedError


class Writer(Loop):
    """Writes at a steady rate from a thread; ``expected`` is the newest acknowledged state of every key (a
    SHA-256, or None once deleted). A failed write makes its key ambiguous: either state may be right."""

    stop_timeout = 120.0  # a 12 MiB write under way

    def __init__(self, client, bucket: str, rate: float) -> None:
        super().__init__()
        self.client = client
        self.bucket = bucket
        self.interval = 1.0 / rate
        self.rng = random.Random(42)
        self.expected: dict[str, str | None] = {}
        self.ambiguous: dict[str, set[str | None]] = {}
        self.phase = "healthy"
        self.accepted: dict[str, int] = {}
        self.failed: dict[str, int] = {}
        self.slowest: dict[str, float] = {}

    def _run(self) -> None:
        n = 0
        next_at = time.monotonic()
        while not self._stop.is_set():
            next_at += self.interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))
            n += 1
            # Overwrites and deletes pick small objects the writer made (never the warm set the readers check).
            live = [k for k, v in self.expected.items() if v is not None and k.startswith("obj/")]
            if n % 50 == 0:
                self._write(f"big/{n:07d}", os.urandom(BIG))
            elif live and n % 25 == 0:
                self._write(self.rng.choice(live), None)
            elif live and n % 10 == 0:
                self._write(self.rng.choice(live), os.urandom(self.rng.randint(1, 256) * KIB))
            else:
                self._write(f"obj/{n:07d}", os.urandom(self.rng.randint(1, 256) * KIB))

    def _write(self, key: str, body: bytes | None) -> None:
        phase = self.phase
        started = time.monotonic()
        try:
            if body is None:
                self.client.delete_object(Bucket=self.bucket, Key=key)
            else:
                self.client.put_object(Bucket=self.bucket, Key=key, Body=body)
        except Exception:  # noqa: BLE001 - counted and reported; the key's state becomes ambiguous
            self.failed[phase] = self.failed.get(phase, 0) + 1
            self.ambiguous.setdefault(key, {self.expected.get(key)}).add(None if body is None else sha256(body))
            return
        self.accepted[phase] = self.accepted.get(phase, 0) + 1
        self.slowest[phase] = max(self.slowest.get(phase, 0.0), time.monotonic() - started)
        self.expected[key] = None if body is None else sha256(body)
        self.ambiguous.pop(key, None)


class Sampler(Loop):
    """The server's own view, once a second: backlog and recovery point (admin API), cold store state."""

    def __init__(self, server: AtollProcess) -> None:
        super().__init__()
        self.server = server
        self.samples: list[tuple[float, str, int, int, float, str]] = []  # (t, phase, objects, bytes, rp, state)
        self.phase = "healthy"

    def latest(self) -> tuple:
        return self.samples[-1] if self.samples else (0.0, "", 0, 0, 0.0, "")

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            try:
                status = admin_status(self.server)
            except (OSError, AssertionError):  # no answer, or not a 2xx one: the next sample will tell
                continue
            backlog = status["drain"]["backlog"]
            states = {view["state"] for view in status["cold_stores"]}
            self.samples.append((time.monotonic(), self.phase, backlog["objects"], backlog["bytes"],
                                 backlog["oldest_age_seconds"], "/".join(sorted(states))))

    def peak(self, phase: str, index: int) -> float:
        return max((s[index] for s in self.samples if s[1] == phase), default=0)


def client_for(server: AtollProcess):
    return no_retry_client(server, read_timeout=120)


def verify(azurite: AzuriteServer, container: str, prefix: str, writer: Writer) -> dict:
    """Compare every acknowledged write with the cold store, read directly (not through the proxy)."""
    blobs = azurite.service_client().get_container_client(container)
    present = {b.name[len(prefix) + 1:] for b in blobs.list_blobs(name_starts_with=prefix + "/")}
    lost, wrong, undeleted, checked = [], [], [], 0
    for key, digest in sorted(writer.expected.items()):
        allowed = writer.ambiguous.get(key, {digest})
        if key not in present:
            if None not in allowed:
                lost.append(key)
            continue
        if allowed == {None}:
            undeleted.append(key)
            continue
        hasher = hashlib.sha256()
        for chunk in blobs.get_blob_client(f"{prefix}/{key}").download_blob().chunks():
            hasher.update(chunk)
        checked += 1
        if hasher.hexdigest() not in allowed:
            wrong.append(key)
    return {"checked": checked, "lost": lost, "wrong": wrong, "undeleted": undeleted,
            "unexpected": sorted(present - set(writer.expected))}


def ms(values: list[float], q: float) -> str:
    return f"{percentile(values, q) * 1000:.2f} ms" if values else "-"


def run(settings: Settings) -> int:
    os.makedirs(settings.workdir, exist_ok=True)
    base = tempfile.mkdtemp(prefix="soak-", dir=settings.workdir)
    azurite = AzuriteServer(location=os.path.join(base, "azurite"))
    os.makedirs(azurite.location)
    proxy = server = None
    try:
        log(f"starting Azurite, the fault proxy and Atoll under {base}")
        azurite.start()
        container = azurite.create_container("soak")
        proxy = FaultProxy(("127.0.0.1", azurite.port))
        server = AtollProcess(data_dir=os.path.join(base, "atoll")).start()
        s3 = client_for(server)
        bucket, prefix = "soak", "run"
        s3.create_bucket(Bucket=bucket)
        server.cli("bucket", "link", bucket, f"az://{container}/{prefix}", "--mode", "writeback",
                   "-o", f"account_name={azurite.account_name}", "-o", f"account_key={azurite.account_key}",
                   "-o", f"endpoint={proxy.endpoint('/' + azurite.account_name)}")

        log(f"seeding {settings.warm_objects} warm objects of 64 KiB")
        warm = {f"warm/{i:05d}": os.urandom(64 * KIB) for i in range(settings.warm_objects)}
        for key, body in warm.items():
            s3.put_object(Bucket=bucket, Key=key, Body=body)
        expiry = int(settings.healthy + settings.partition + settings.drain_timeout + 3600)
        urls = {key: s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key},
                                               ExpiresIn=expiry) for key in warm}
        writer = Writer(client_for(server), bucket, settings.write_rate)
        writer.expected.update({key: sha256(body) for key, body in warm.items()})
        sampler = Sampler(server)
        sampler.start()
        deadline = time.monotonic() + 120
        while sampler.latest()[2] or not sampler.samples:
            if time.monotonic() > deadline:
                raise RuntimeError("the seed writes did not drain in 120 s")
            time.sleep(0.5)

        with WarmReaders(urls, {key: sha256(body) for key, body in warm.items()}) as readers:
            time.sleep(2.0)
            log(f"healthy phase: {settings.healthy:.0f} s of warm reads and {settings.write_rate:g} writes/s")
            readers.phase = "healthy"
            writer.start()
            time.sleep(settings.healthy)

            log(f"partition: the cold store is black-holed for {settings.partition:.0f} s")
            readers.phase = writer.phase = sampler.phase = "partition"
            proxy.blackhole()
            partition_end = time.monotonic() + settings.partition
            while time.monotonic() < partition_end:
                time.sleep(min(30.0, max(0.0, partition_end - time.monotonic())))
                _, _, objects, size, rp, state = sampler.latest()
                log(f"  backlog {objects} objects / {size / MIB:.1f} MiB, recovery point {rp:.0f} s, cold store "
                    f"{state}")
            state_in_partition = sampler.latest()[5]

            log("heal: writes stop, reads go on until the backlog has drained")
            writer.stop()
            readers.phase = sampler.phase = "healed"
            proxy.heal()
            healed = time.monotonic()
            closed_after = drained_after = None
            while time.monotonic() - healed < settings.drain_timeout:
                time.sleep(0.5)
                sample = sampler.latest()
                if sample[0] > healed and closed_after is None and "partitioned" not in sample[5]:
                    closed_after = sample[0] - healed
                if sample[0] > healed and sample[2] == 0:
                    drained_after = sample[0] - healed
                    break
            sampler.stop()

        log("verifying every acknowledged write in the cold store")
        result = verify(azurite, container, prefix, writer)
    finally:
        if server is not None:
            server.stop()
        if proxy is not None:
            proxy.close()
        azurite.stop()
        if not settings.keep:
            shutil.rmtree(base, ignore_errors=True)

    drain = {"state_in_partition": state_in_partition, "closed_after": closed_after, "drained_after": drained_after}
    lost = report(settings, readers, writer, sampler, drain, result)
    return 1 if lost or drained_after is None else 0


def report(settings: Settings, readers: WarmReaders, writer: Writer, sampler: Sampler, drain: dict,
           result: dict) -> int:
    """Print the table; returns the number of objects lost."""
    healthy, healthy_errors = readers.take("healthy")
    partitioned, partition_errors = readers.take("partition")
    after, after_errors = readers.take("healed")
    lost = len(result["lost"]) + len(result["wrong"])
    rows = [
        ("warm-read p50", ms(healthy, 50), ms(partitioned, 50)),
        ("warm-read p99", ms(healthy, 99), ms(partitioned, 99)),
        ("warm reads", f"{len(healthy):,}", f"{len(partitioned):,}"),
        ("read errors", str(len(healthy_errors)), str(len(partition_errors))),
        ("writes accepted", f"{writer.accepted.get('healthy', 0):,}", f"{writer.accepted.get('partition', 0):,}"),
        ("writes failed", str(writer.failed.get("healthy", 0)), str(writer.failed.get("partition", 0))),
        ("slowest write", f"{writer.slowest.get('healthy', 0) * 1000:.0f} ms",
         f"{writer.slowest.get('partition', 0) * 1000:.0f} ms"),
    ]
    print()
    print(f"Atoll soak: {settings.healthy:.0f} s healthy, {settings.partition:.0f} s partition (Azurite behind a "
          f"black-holed FaultProxy), {settings.write_rate:g} writes/s, {settings.warm_objects} warm objects")
    print()
    print("| | healthy | partitioned |")
    print("|---|---|---|")
    for name, a, b in rows:
        print(f"| {name} | {a} | {b} |")
    print()
    print("| after the partition began | |")
    print("|---|---|")
    print(f"| cold store state at the end of the partition | {drain['state_in_partition']} |")
    print(f"| backlog peak | {sampler.peak('partition', 2):,.0f} objects, "
          f"{sampler.peak('partition', 3) / MIB:,.1f} MiB |")
    print(f"| recovery point peak | {sampler.peak('partition', 4):,.0f} s |")
    closed_after, drained_after = drain["closed_after"], drain["drained_after"]
    print(f"| breaker closed after the heal | {'-' if closed_after is None else f'{closed_after:.1f} s'} |")
    drained = f"NOT DRAINED in {settings.drain_timeout:.0f} s" if drained_after is None else f"{drained_after:.1f} s"
    print(f"| time to drain after the heal | {drained} |")
    print(f"| warm reads while draining (p50 / p99, errors) | {ms(after, 50)} / {ms(after, 99)}, "
          f"{len(after_errors)} |")
    print(f"| objects checked in the cold store | {result['checked']:,} (byte-exact, SHA-256) |")
    print(f"| **objects lost** | **{lost}** |")
    if result["undeleted"] or result["unexpected"]:
        print(f"| deleted keys still in the cold store | {len(result['undeleted'])} |")
        print(f"| unexpected keys in the cold store | {len(result['unexpected'])} |")
    for name in ("lost", "wrong", "undeleted", "unexpected"):
        if result[name]:
            print(f"{name}: {result[name][:20]}")
    for errors in (healthy_errors, partition_errors, after_errors):
        if errors:
            print(f"read errors (first 5): {errors[:5]}")
    return lost


def main() -> None:
    sys.exit(run(Settings.from_env()))


if __name__ == "__main__":
    main()
