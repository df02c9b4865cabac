"""Tiering rows: Atoll in front of a cold store (Azurite on loopback) against direct obstore reads of the same
objects, in the same rep.

    cold1        first read of a cold object through a bucket linked in cache mode (curl, presigned GET) vs one
                 streaming obstore `get_async` of the same object
    cold1-warm   the second read of that object through the same Atoll (now resident) vs nginx serving the file
    stage-small  `atoll stage BUCKET --prefix P` of N small objects (job created -> job done) vs `stage_concurrency`
    stage-large  concurrent obstore streams over the same objects (listing included on both sides); the same with
                 large objects

Every Atoll run gets a fresh server and data directory (started, linked and removed outside the measured time),
so nothing is resident before it; afterwards the run checks that the bytes really came from the cold store
(Azurite's socket output, Atoll's own cold-traffic counters and resident bytes from its admin API) and that they
are the right bytes (sizes, and sampled ranges compared with the source file).

The cold data sets are uploaded once into Azurite's directory under the bench dir and kept across runs: a marker
per data set names the source file's MD5, and a listing check at start-up finds a missing or damaged one.
"""
from __future__ import annotations

import dataclasses
import http.client
import json
import os
import random
import secrets
import shutil
import signal
import time

from . import common
from .common import GIB, HOST, MIB, ClientRun, fmt_num, free_port, human_size, run_client, tail
from .peers import AtollPeer, Peer

AZ_ACCOUNT = "devstoreaccount1"
# Azurite's well-known development key: public, the same in every Azurite install.
AZ_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
COLD_CONTAINER = "atollbench"
TIER_BUCKET = "cold"
DIRECT = "obstore direct"
TO_FILE = "obstore → file"
ATOLL = "atoll cache"
SAMPLE = 64 * 1024

# row group -> bench ids (ONLY=cold1 selects both cold1 rows)
GROUPS = {"cold1": ["cold1", "cold1-warm"], "stage": ["stage-small", "stage-large"]}
ROW_IDS = [r for ids in GROUPS.values() for r in ids]


def slice_offset(i: int, size: int, src_size: int) -> int:
    """Object i of a data set holds source-file bytes [offset, offset + size): different, unaligned offsets."""
    span = src_size - size + 1
    if span <= 0:
        raise ValueError(f"a {size}-byte object cannot be cut from a {src_size}-byte source file")
    return (i * 1_048_583) % span


@dataclasses.dataclass
class DataSet:
    id: str
    count: int
    size: int

    @property
    def prefix(self) -> str:
        return f"{self.id}-{self.size}x{self.count}"

    def key(self, i: int) -> str:
        from .coldload import object_key
        return object_key(self.prefix, i)

    @property
    def total(self) -> int:
        return self.count * self.size

    def describe(self) -> str:
        return f"{self.count:,} × {human_size(self.size)}" if self.count > 1 else human_size(self.size)


def datasets(s) -> dict[str, DataSet]:
    return {"cold1": DataSet("cold1", 1, s.cold_size),
            "stage-small": DataSet("stage-small", s.stage_small_n, s.stage_small_size),
            "stage-large": DataSet("stage-large", s.stage_large_n, s.stage_large_size)}


def source_size(s) -> int:
    """The source file the cold objects are cut from (the cold1 object is its first cold_size bytes)."""
    return max(s.cold_size, s.stage_large_size, s.stage_small_size)


def parse_fills(spec: str) -> list[tuple[int, int]]:
    """COLD1_FILLS="8Mx8,16Mx4" -> [(8 MiB, 8), (16 MiB, 4)]: extra Atoll variants of the cold1 row."""
    out = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        block, _, par = part.lower().partition("x")
        mult = {"k": 1024, "m": MIB}.get(block[-1:], 1)
        out.append((int(block.rstrip("km")) * mult, int(par)))
    return out


# ------------------------------------------------------------------ processes

def tree_io_out(root_pid: int) -> int:
    """Bytes a process tree handed to write-family syscalls (files and sockets: /proc/<pid>/io wchar)."""
    total, todo, kids = 0, [root_pid], {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    raw = f.read()
            except OSError:
                continue
            kids.setdefault(int(raw[raw.rfind(b")") + 2:].split()[1]), []).append(int(name))
    while todo:
        pid = todo.pop()
        try:
            with open(f"/proc/{pid}/io") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("wchar:"))
        except (OSError, StopIteration, ValueError):
            pass
        todo.extend(kids.get(pid, ()))
    return total


class AzuritePeer(Peer):
    """azurite-blob on a free port, its data in <bench dir>/azurite (kept across runs: the cold data sets)."""
    kind = "azurite"

    def __init__(self, settings):
        super().__init__(settings, "azurite")
        self.location = os.path.join(settings.bench_dir, "azurite")

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}/{AZ_ACCOUNT}"

    def command(self):
        os.makedirs(self.location, exist_ok=True)
        exe = shutil.which("azurite-blob") or "azurite-blob"
        # --loose/--skipApiVersionCheck: obstore and azure-storage-blob send API versions newer than the emulator's
        return [exe, "--blobHost", HOST, "--blobPort", str(self.port), "--location", self.location, "--silent",
                "--skipApiVersionCheck", "--loose"], {}

    def start(self, timeout: float = 60.0) -> bool:
        if shutil.which("azurite-blob") is None:
            self.error = "azurite-blob is not installed (bash bench/run.sh installs it: npm install -g azurite)"
            return False
        return super().start(timeout)

    def stop(self) -> None:
        """Azurite closes its listener and saves its index on SIGTERM, then its node process idles on timers for
        minutes: wait for the 'closed' line (or the exit), then kill the group."""
        p = self.proc
        if p is None or p.poll() is not None:
            return
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 15
        while p.poll() is None and time.monotonic() < deadline:
            if "successfully closed" in tail(self.log_path, 2000):
                break
            time.sleep(0.1)
        common.stop_group(p, grace=0.5)

    def io_out(self) -> int:
        return tree_io_out(self.proc.pid) if self.proc else 0

    def link_options(self) -> list[str]:
        return ["-o", f"account_name={AZ_ACCOUNT}", "-o", f"account_key={AZ_KEY}", "-o", f"endpoint={self.endpoint}"]

    def client_args(self) -> list[str]:
        return ["--endpoint", self.endpoint, "--account", AZ_ACCOUNT, "--container", COLD_CONTAINER]

    def ensure_dataset(self, ds: DataSet, src_path: str, src_md5: str, conc: int = 8) -> str:
        """Upload the data set unless a marker for this source file says it is there and a listing agrees.
        Returns how it was obtained (for the notes); raises RuntimeError on failure."""
        marker = os.path.join(self.location, f"dataset-{ds.prefix}.json")
        cached = None
        try:
            with open(marker) as f:
                cached = json.load(f)
        except (OSError, ValueError):
            pass
        same_source = cached is not None and cached.get("src_md5") == src_md5
        cmd = [common.PY, "-m", "bench.coldload", *self.client_args(), "--src", src_path, "--prefix", ds.prefix,
               "--count", str(ds.count), "--size", str(ds.size), "--conc", str(conc)]
        if not same_source:
            cmd.append("--force")
        r = run_client(cmd, timeout=600 + ds.total / 5e6, env={"BENCH_AZURE_KEY": AZ_KEY})
        out = _last_json(r)
        if r.rc != 0 or not out or not out.get("ok"):
            raise RuntimeError(f"loading {ds.prefix} into Azurite failed: "
                               f"{(out or {}).get('problem') or _client_problem(r, 'bench.coldload')}")
        with open(marker, "w") as f:
            json.dump({"prefix": ds.prefix, "count": ds.count, "size": ds.size, "src_md5": src_md5,
                       "time": time.strftime("%Y-%m-%d %H:%M:%S"), **({"upload_secs": out["secs"]}
                                                                      if out.get("uploaded") else {})}, f)
        if out.get("uploaded"):
            return f"uploaded {out['uploaded']:,} objects in {out['secs']:.0f}s"
        return "cached"


def _last_json(r: ClientRun) -> dict | None:
    for line in reversed(r.out.strip().splitlines()):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return None


def _client_problem(r: ClientRun, what: str) -> str:
    if r.rc is None:
        return f"{what}: killed at its time limit after {r.wall:.0f}s"
    return f"{what}: exit {r.rc}: {(r.err or r.out).strip()[-400:]}"


_live: list["TierAtoll"] = []  # per-run Atoll servers still running (teardown stops them)


class TierAtoll(AtollPeer):
    """A fresh Atoll for one measured run: own data directory, admin API on a free port (for its counters),
    one bucket linked in cache mode to the Azurite container."""

    def __init__(self, settings, data_dir: str, fill: tuple[int, int] | None = None, tag: str = ""):
        super().__init__(settings, 1, data_dir, label=ATOLL)
        if tag:  # one log per run, kept with the others in <bench dir>/logs
            os.unlink(self.log_path)
            self.log_path = os.path.join(os.path.dirname(self.log_path), f"atoll-{tag}.log")
            open(self.log_path, "w").close()
        self.admin_port = free_port()
        self.admin_token = secrets.token_urlsafe(24)
        self.fill = fill

    def command(self):
        cmd, env = super().command()
        env = {**env, "ATOLL_ADMIN_ADDRESS": f"{HOST}:{self.admin_port}", "ATOLL_ADMIN_TOKEN": self.admin_token}
        if self.fill:
            env["ATOLL_FILL_BLOCK_SIZE"], env["ATOLL_FILL_PARALLELISM"] = str(self.fill[0]), str(self.fill[1])
        return cmd, env

    def cli(self, args: list[str], timeout: float = 60) -> ClientRun:
        return run_client(self.base_command(self.s) + args + ["--data-dir", self.data_dir], timeout=timeout)

    def admin(self, path: str) -> dict:
        deadline = time.monotonic() + 15  # the admin port opens a moment after the S3 port
        while True:
            c = http.client.HTTPConnection(HOST, self.admin_port, timeout=10)
            try:
                c.request("GET", path, headers={"Authorization": f"Bearer {self.admin_token}"})
                r = c.getresponse()
                body = r.read()
                if r.status != 200:
                    raise RuntimeError(f"admin API {path}: HTTP {r.status} {body[:200]!r}")
                return json.loads(body)
            except (OSError, http.client.HTTPException) as e:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"admin API {path}: {e}") from None
                time.sleep(0.1)
            finally:
                c.close()

    def tier_state(self) -> dict:
        """Resident bytes of the warm tier and bytes this server read from the bucket's cold store, per class."""
        st = self.admin("/api/v1/status")
        traffic = {}
        for store in st.get("cold_stores") or []:
            if store.get("bucket") == TIER_BUCKET:
                traffic = {k: v.get("bytes_in", 0) for k, v in (store.get("traffic") or {}).items()}
        return {"resident": (st.get("warm") or {}).get("resident_bytes"), "cold_in": traffic}

    def stop(self) -> None:
        super().stop()
        if self in _live:
            _live.remove(self)


def stop_all() -> None:
    for p in list(_live):
        p.stop()


# ------------------------------------------------------------------ a measured window

class Window:
    """CPU of Atoll, Azurite and the machine, and Azurite's output bytes, over the measured part of a run."""

    def __init__(self, azurite: AzuritePeer, atoll: TierAtoll | None = None):
        self.az, self.atoll = azurite, atoll

    def __enter__(self) -> "Window":
        self.busy0, self.t0 = common.cpu_busy_seconds(), time.perf_counter()
        self.az_cpu0, self.az_io0 = self.az.cpu(), self.az.io_out()
        self.at_cpu0 = self.atoll.cpu() if self.atoll else 0.0
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self.t0
        self.busy = common.cpu_busy_seconds() - self.busy0
        self.az_cpu = self.az.cpu() - self.az_cpu0
        self.az_io = self.az.io_out() - self.az_io0
        self.at_cpu = (self.atoll.cpu() - self.at_cpu0) if self.atoll else 0.0

    def metrics(self, size: int, cli_cpu: float) -> dict:
        srv = self.az_cpu + self.at_cpu
        return {"srv_cpu": srv, "cli_cpu": cli_cpu, "atoll_cpu_per_gib": self.at_cpu * GIB / size,
                "azurite_cpu_per_gib": self.az_cpu * GIB / size, "cli_cpu_per_gib": cli_cpu * GIB / size,
                "cold_out_bytes": self.az_io, "wall": self.wall,
                # measured here, over the transfer only (main.measure would include the unmeasured server start)
                "other_cores": max(0.0, self.busy - srv - cli_cpu) / self.wall if self.wall > 0.2 else None}


def _fail(problem: str, **kw) -> dict:
    return {"ok": False, "problem": problem[:500], **kw}


# ------------------------------------------------------------------ the runs

class Tiering:
    """State shared by the tiering cases of one benchmark run."""

    def __init__(self, s, azurite: AzuritePeer, src_path: str):
        self.s = s
        self.az = azurite
        self.src_path = src_path
        self.ds = datasets(s)
        self.rep = 0
        self.warm_server: TierAtoll | None = None   # cold1's server, kept for cold1-warm in the same rep
        self.warm_problem: str | None = None
        self.leftovers: list[str] = []               # data dirs of finished runs, removed right before the next
        self.runs = 0
        logs = os.path.join(s.bench_dir, "logs")
        for name in os.listdir(logs) if os.path.isdir(logs) else []:
            if name.startswith("atoll-") and name[6:9].isdigit():  # per-run logs of an earlier benchmark run
                os.unlink(os.path.join(logs, name))

    # servers --------------------------------------------------------------------------------------------
    def fresh_atoll(self, tag: str, fill: tuple[int, int] | None = None) -> TierAtoll:
        self.runs += 1
        tag = f"{self.runs:03d}-{tag}"
        d = os.path.join(self.s.bench_dir, "atoll-tier", tag)
        shutil.rmtree(d, ignore_errors=True)
        p = TierAtoll(self.s, os.path.join(d, "data"), fill, tag)
        _live.append(p)
        try:
            if not p.start(timeout=60):
                raise RuntimeError(f"Atoll did not start: {p.error}")
            for args in (["bucket", "create", TIER_BUCKET],
                         ["bucket", "link", TIER_BUCKET, f"az://{COLD_CONTAINER}", "--mode", "cache",
                          *self.az.link_options()]):
                r = p.cli(args)
                if r.rc != 0:
                    raise RuntimeError(f"atoll {' '.join(args[:2])}: {(r.err or r.out).strip()[-300:]}")
            st = p.tier_state()
            if st["resident"] != 0:
                raise RuntimeError(f"a fresh Atoll reports {st['resident']} resident bytes before the run")
        except BaseException:
            self.discard(p)
            raise
        # The previous runs' warm copies go now, right before this run fills: their page-cache pages are then
        # reused at once. Freed earlier, they would sit idle and this VM hands idle free memory back to the host
        # within ~2-3 s (free page reporting); filling such cold pages costs ~1.5 CPU-s/GiB more (the put1 row
        # deletes its previous object right before the next PUT for the same reason).
        for old in self.leftovers:
            shutil.rmtree(old, ignore_errors=True)
        self.leftovers.clear()
        return p

    def discard(self, p: TierAtoll | None) -> None:
        """Stop a run's server; its data dir stays until the next run's server is ready (see fresh_atoll)."""
        if p is None:
            return
        p.stop()
        self.leftovers.append(os.path.dirname(p.data_dir))

    # content checks -------------------------------------------------------------------------------------
    def expected(self, ds: DataSet, i: int, start: int, length: int) -> bytes:
        off = slice_offset(i, ds.size, os.path.getsize(self.src_path)) + start
        with open(self.src_path, "rb") as f:
            f.seek(off)
            return f.read(length)

    def check_sampled(self, p: TierAtoll, ds: DataSet, objects: list[int], seed: int) -> str | None:
        """Ranged GETs through Atoll of a few 64 KiB ranges per object (first, last, random), compared with the
        source file; the Content-Range total must be the object size."""
        rnd = random.Random(seed)
        c = p.client()
        for i in objects:
            starts = {0, max(0, ds.size - SAMPLE)} | {rnd.randrange(0, max(1, ds.size - SAMPLE)) for _ in range(2)}
            for start in sorted(starts):
                n = min(SAMPLE, ds.size - start)
                r = c.get_object(Bucket=TIER_BUCKET, Key=ds.key(i), Range=f"bytes={start}-{start + n - 1}")
                body = r["Body"].read()
                total = int(r.get("ContentRange", "/-1").rsplit("/", 1)[-1])
                if total != ds.size:
                    return f"{ds.key(i)}: Content-Range total {total}, expected {ds.size}"
                if body != self.expected(ds, i, start, n):
                    return f"{ds.key(i)}: bytes {start}-{start + n - 1} differ from the source"
        return None

    # cold1 ----------------------------------------------------------------------------------------------
    def direct_one(self) -> dict:
        ds = self.ds["cold1"]
        return self._direct(ds, ["--key", ds.key(0)])

    def direct_to_file(self) -> dict:
        """Informational: the same stream written to a new file and fdatasync'ed, the least a warm tier does. The
        previous run's file is deleted right before, like the Atoll runs' warm copies (see fresh_atoll)."""
        ds = self.ds["cold1"]
        self.runs += 1
        d = os.path.join(self.s.bench_dir, "atoll-tier", f"{self.runs:03d}-to-file")
        os.makedirs(d, exist_ok=True)
        for old in self.leftovers:
            shutil.rmtree(old, ignore_errors=True)
        self.leftovers[:] = [d]
        return self._direct(ds, ["--key", ds.key(0), "--to-file", os.path.join(d, "object.bin")])

    def direct_many(self, row: str) -> dict:
        ds = self.ds[row]
        return self._direct(ds, ["--prefix", ds.prefix, "--conc", str(self.s.stage_conc)])

    def _direct(self, ds: DataSet, args: list[str]) -> dict:
        with Window(self.az) as w:
            r = run_client([common.PY, os.path.join(common.CLIENTS, "obstore_read.py"), *self.az.client_args(),
                            *args, "--expect-bytes", str(ds.total), "--expect-objects", str(ds.count)],
                           timeout=120 + ds.total / 5e6, env={"BENCH_AZURE_KEY": AZ_KEY})
        out = _last_json(r)
        if r.rc != 0 or not out:
            return _fail(_client_problem(r, "obstore client"))
        if not out["ok"]:
            return _fail(f"obstore client: {out['problem']}")
        m = w.metrics(ds.total, r.cpu)
        m.update(ok=True, gbps=out["gbps"], secs=out["secs"], list_secs=out["list_secs"], objects=out["objects"])
        if w.az_io < ds.total:
            return _fail(f"Azurite wrote only {w.az_io} bytes for {ds.total} read (counting broken?)")
        return m

    def atoll_first(self, fill: tuple[int, int] | None, keep: bool) -> dict:
        """First read: a fresh Atoll, nothing resident; curl GETs the object while Atoll fills it from cold."""
        ds = self.ds["cold1"]
        tag = f"cold1-r{self.rep}" + (f"-{fill[0] >> 20}Mx{fill[1]}" if fill else "")
        if keep:
            self.discard(self.warm_server)
            self.warm_server, self.warm_problem = None, "the first read of this rep failed"
        p = None
        try:
            p = self.fresh_atoll(tag, fill)
            url = p.presign("get_object", TIER_BUCKET, ds.key(0))
            with Window(self.az, p) as w:
                r = _curl(url, ds.size)
            problem = _curl_problem(r, ds.size, p)
            if problem is None:
                st = p.tier_state()
                got = st["cold_in"].get("demand", 0)
                if st["resident"] != ds.size:
                    problem = f"after the first read Atoll reports {st['resident']} resident bytes, not {ds.size}"
                elif got < ds.size:
                    problem = f"Atoll counted {got} bytes read from the cold store, expected ≥ {ds.size}"
                elif w.az_io < ds.size:
                    problem = f"Azurite sent only {w.az_io} bytes during the first read"
            if problem:
                return _fail(problem)
            m = w.metrics(ds.size, r.cpu)
            m.update(ok=True, gbps=float(r.out.split()[1]) / 1e9, ttfb_ms=float(r.out.split()[3]) * 1000,
                     cold_in=got)
            if keep:
                self.warm_server, self.warm_problem, p = p, None, None
            return m
        except RuntimeError as e:
            return _fail(str(e))
        finally:
            self.discard(p)

    def atoll_warm(self) -> dict:
        """Second read of the same object through the same Atoll: served from the warm copy, no cold bytes."""
        ds = self.ds["cold1"]
        p, self.warm_server = self.warm_server, None
        if p is None:
            return _fail(self.warm_problem or "no first read in this rep")
        try:
            url = p.presign("get_object", TIER_BUCKET, ds.key(0))
            with Window(self.az, p) as w:
                r = _curl(url, ds.size)
            problem = _curl_problem(r, ds.size, p)
            if problem is None and w.az_io > MIB:
                problem = f"the warm read made Azurite send {w.az_io} bytes (expected none)"
            if problem is None:
                problem = self.check_sampled(p, ds, [0], seed=self.rep)
            if problem:
                return _fail(problem)
            m = w.metrics(ds.size, r.cpu)
            m.update(ok=True, gbps=float(r.out.split()[1]) / 1e9, srv_cpu_per_gib=w.at_cpu * GIB / ds.size)
            return m
        finally:
            self.discard(p)

    # staging --------------------------------------------------------------------------------------------
    def atoll_stage(self, row: str) -> dict:
        ds = self.ds[row]
        p = None
        try:
            p = self.fresh_atoll(f"{row}-r{self.rep}")
            with Window(self.az, p) as w:
                # S3 prefix semantics: "stage-small-1048576x200" would also take "...x2000/" (obstore's listing, used by
                # the direct client, matches whole path segments instead)
                r = p.cli(["stage", TIER_BUCKET, "--prefix", ds.prefix + "/", "--json"],
                          timeout=300 + ds.total / 5e6)
            job = _last_json(r)
            if r.rc != 0 or not job:
                return _fail(_client_problem(r, "atoll stage"))
            prog = job.get("progress") or {}
            if job.get("state") != "done":
                return _fail(f"job {job.get('state')}: {job.get('error')}")
            if (prog.get("objects_staged"), prog.get("failed"), prog.get("bytes_fetched")) != (ds.count, 0, ds.total):
                return _fail(f"job progress: {prog.get('objects_staged')} staged, {prog.get('failed')} failed, "
                             f"{prog.get('bytes_fetched')} bytes fetched; expected {ds.count}, 0, {ds.total}")
            st = p.tier_state()
            if st["resident"] != ds.total:
                return _fail(f"after staging Atoll reports {st['resident']} resident bytes, not {ds.total}")
            if st["cold_in"].get("stage", 0) < ds.total:
                return _fail(f"Atoll counted {st['cold_in'].get('stage', 0)} bytes staged from cold, < {ds.total}")
            if w.az_io < ds.total:
                return _fail(f"Azurite sent only {w.az_io} bytes during the job")
            rnd = random.Random(self.rep)
            sample = sorted({0, ds.count - 1, rnd.randrange(ds.count), rnd.randrange(ds.count)})
            problem = self.check_sampled(p, ds, sample, seed=self.rep)
            if problem:
                return _fail(problem)
            secs = job["updated"] - job["created"]
            m = w.metrics(ds.total, r.cpu)
            m.update(ok=True, gbps=ds.total / secs / 1e9, secs=secs, objects=ds.count,
                     claim_s=max(0.0, prog.get("started", job["created"]) - job["created"]),
                     verified_md5=prog.get("verified", 0), verified_size=prog.get("verified_by_size", 0))
            return m
        except RuntimeError as e:
            return _fail(str(e))
        finally:
            self.discard(p)


def _curl(url: str, size: int) -> ClientRun:
    return run_client(["curl", "-sS", "-o", "/dev/null", "-w",
                       "%{http_code} %{speed_download} %{size_download} %{time_starttransfer}", url],
                      timeout=120 + size / 5e6)


def _curl_problem(r: ClientRun, size: int, p: Peer) -> str | None:
    if r.rc != 0:
        dead = "" if p.alive() else f"; Atoll died: {tail(p.log_path, 600)}"
        return _client_problem(r, "curl") + dead
    code, _, got, _ = r.out.split()
    if code != "200" or int(got) != size:
        return f"HTTP {code}, {got} of {size} bytes; server log {p.log_path}: {tail(p.log_path, 400)}"
    return None


# ------------------------------------------------------------------ rows and judging

def build(s, tier: Tiering | None, nginx: Peer | None, skip: str | None):
    """The tiering Bench objects (all ids of ROW_IDS); with tier None every case is a SKIP with `skip`."""
    from .benches import Bench, Case, curl_get

    ds = datasets(s)
    fills = parse_fills(s.cold1_fills)

    def case(label, fn, note="", peer=None):
        if tier is None:
            return Case(label, lambda: {}, None, note, skip=skip or "not available")
        return Case(label, fn, peer, note)

    default_fill = f"fill {human_size(s.fill_block_size)} × {s.fill_parallelism}"
    cold_cases = [case(DIRECT, lambda: tier.direct_one(), "one streaming get_async, bytes discarded, reference"),
                  case(TO_FILE, lambda: tier.direct_to_file(), "the same stream written to a new file + fdatasync: "
                       "what writing a warm copy costs by itself here"),
                  case(ATOLL, lambda: tier.atoll_first(None, keep=True), default_fill + ", curl → /dev/null")]
    for f in fills:
        cold_cases.append(case(f"{ATOLL} {f[0] >> 20}M×{f[1]}", lambda f=f: tier.atoll_first(f, keep=False),
                               f"fill {human_size(f[0])} × {f[1]}"))
    if nginx is None:
        ng = Case("nginx w1", lambda: {}, None, skip="nginx not started (TARGETS)")
    else:
        ng = Case("nginx w1", lambda: curl_get(nginx), nginx, "same bytes from the page cache, reference")
    warm_cases = [ng, case(ATOLL, lambda: tier.atoll_warm(), "same server, object now resident")]

    def stage_cases(row):
        return [case(DIRECT, lambda: tier.direct_many(row), f"list + {s.stage_conc} concurrent get_async streams, "
                     "bytes discarded, reference"),
                case(ATOLL, lambda: tier.atoll_stage(row), "atoll stage --prefix: job created → job done")]

    cold = f"{ds['cold1'].describe()} cold object"
    return [
        Bench("cold1", f"{cold}, first read (Azurite on loopback)", "gbps", "GB/s", cold_cases, judge_cold1),
        Bench("cold1-warm", f"{cold}, second read (now warm)", "gbps", "GB/s", warm_cases, judge_warm),
        Bench("stage-small", f"stage {ds['stage-small'].describe()} (Azurite)", "gbps", "GB/s",
              stage_cases("stage-small"), judge_stage),
        Bench("stage-large", f"stage {ds['stage-large'].describe()} (Azurite)", "gbps", "GB/s",
              stage_cases("stage-large"), judge_stage),
    ]


def _cpu(m: dict) -> str:
    parts = []
    if m.get("atoll_cpu_per_gib"):
        parts.append(f"atoll {fmt_num(m['atoll_cpu_per_gib'])}")
    parts.append(f"azurite {fmt_num(m.get('azurite_cpu_per_gib'))}")
    parts.append(f"client {fmt_num(m.get('cli_cpu_per_gib'))}")
    return " / ".join(parts) + " CPU-s/GiB"


def judge_cold1(b, summ, _all):
    from .benches import _rows

    def goal(c):
        if c.label.startswith(ATOLL):
            return "≥0.9× direct", lambda m, r: r is not None and r >= 0.9
        return None

    def details(c, m):
        ttfb = f"first byte {fmt_num(m['ttfb_ms'])} ms" if m.get("ttfb_ms") is not None else ""
        return "; ".join(x for x in (_cpu(m), ttfb) if x)
    return _rows(b, summ, DIRECT, "direct", goal, details)


def judge_warm(b, summ, _all):
    from .benches import _cpu_details, _rows

    def goal(c):
        if c.label.startswith(ATOLL):
            return "≥0.85× nginx", lambda m, r: r is not None and r >= 0.85
        return None

    def details(c, m):
        return _cpu_details(c, m) if c.label == "nginx w1" else _cpu(m)
    return _rows(b, summ, "nginx w1", "nginx", goal, details)


def judge_stage(b, summ, _all):
    from .benches import _rows

    def goal(c):
        if c.label == ATOLL:
            return "≥0.9× direct", lambda m, r: r is not None and r >= 0.9
        return None

    def details(c, m):
        extra = (f"job claimed after {fmt_num(m.get('claim_s'))} s" if c.label == ATOLL
                 else f"listing {fmt_num(m.get('list_secs'))} s")
        return "; ".join((f"{fmt_num(m.get('secs'))} s", extra, _cpu(m)))
    return _rows(b, summ, DIRECT, "direct", goal, details)


def space_needed(s, rows: set[str], azurite_dir: str) -> int:
    """Azurite's copy of the data sets not uploaded yet + the warm copies of one rep's Atoll runs (each is kept
    until the next run is ready, see Tiering.fresh_atoll) + margin."""
    need, warm = 0, 0
    for ds in datasets(s).values():
        if not rows & set(GROUPS["cold1"] if ds.id == "cold1" else [ds.id]):
            continue
        if not os.path.exists(os.path.join(azurite_dir, f"dataset-{ds.prefix}.json")):
            need += ds.total
        warm += ds.total * (1 + len(parse_fills(s.cold1_fills)) if ds.id == "cold1" else 1)
    return need + warm + GIB // 4
