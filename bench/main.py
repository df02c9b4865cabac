"""Atoll benchmark driver: starts nginx (reference), Atoll and moto_server on 127.0.0.1, loads the same objects into
each, measures every selected row round-robin (rep -> benchmark -> server), prints the table with same-run ratios and
PASS/MISS against the targets, and writes bench/results/<timestamp>.md and .json. Everything it started is stopped
at the end, on errors and on Ctrl-C / SIGTERM too.

Run via `bash bench/run.sh` (installs nginx-light, wrk, curl when missing). Knobs are environment variables, see
bench/README.md: REPS, ONLY, TARGETS, QUICK, DUR, CONN, ATOLL_BENCH_DIR, LIST_KEYS, ...
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from typing import Callable

from . import benches as benches_mod
from . import common, data, populate, report, tiering
from . import noisy as noisy_row
from . import scale
from . import workloads
from .blobpeer import BlobView
from .benches import LIST_BUCKET, build
from .common import Settings, human_size, run_client
from .peers import EMPTY_SIZE, SMALL_SIZE, AtollPeer, MotoPeer, NginxPeer, Peer, S3Peer

ROW_IDS = (["get1", "ranges8", "put1", "blockput", "small", "head", "head-paced", "noisy", "list", "list-botocore"]
           + tiering.ROW_IDS + workloads.ROW_IDS + scale.ROW_IDS)
BIG_ROWS = {"get1", "ranges8", "put1", "blockput"}
HTTP_ROWS = {"get1", "ranges8", "put1", "blockput", "small", "head", "head-paced"}
BLOB_ROWS = {"get1", "small", "blockput"}  # rows with an "atoll blob w1" case (the Blob port of atoll w1)
LIST_ROWS = {"list", "list-botocore"}
TIER_ROWS = set(tiering.ROW_IDS)
NGINX_BIG_ROWS = {"get1", "ranges8", "cold1-warm"}  # rows that need nginx serving the big source file


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Run:
    def __init__(self, s: Settings):
        self.s = s
        self.rows = [r for r in ROW_IDS if s.only is None or r in s.only]
        self.peers: dict[str, Peer] = {}
        self.skip: dict[str, str] = {}           # peer label -> why it is not measured
        self.notes: list[str] = []
        self.list_info: dict[str, dict] = {}
        self.per_run_dirs: list[str] = []
        self.src = data.SourceFiles(s.bench_dir)
        self.tier: tiering.Tiering | None = None
        self.tier_skip: str | None = None       # why the tiering rows cannot run
        self.tier_info: dict[str, str] = {}     # data set -> how it got into Azurite

    # ---------------------------------------------------------------- setup
    def check_tools(self) -> None:
        need = {"curl"}
        if "nginx" in self.s.targets and self.rows_need(HTTP_ROWS):
            need.add("nginx")
        if self.rows_need({"small", "head", "head-paced"}):
            need.add("wrk")
        if "nginx" in self.s.targets and "cold1-warm" in self.rows:
            need.add("nginx")
        if self.rows_need(TIER_ROWS):
            need.add("azurite-blob")
        missing = [t for t in sorted(need) if not (shutil.which(t) or os.path.exists(f"/usr/sbin/{t}"))]
        if missing:
            raise SystemExit(f"missing tools: {', '.join(missing)} — run `bash bench/run.sh` (it installs nginx-light, "
                             "wrk and curl) or apt-get install them")

    def rows_need(self, ids) -> bool:
        return bool(set(self.rows) & set(ids))

    def prepare_data(self) -> None:
        s = self.s
        sizes = [SMALL_SIZE, EMPTY_SIZE]
        if self.rows_need(BIG_ROWS):
            sizes.append(s.big_size)
            if "moto" in s.targets:
                sizes.append(s.moto_big_size)
        if self.rows_need(NGINX_BIG_ROWS):
            sizes.append(s.big_size)
        if self.rows_need(TIER_ROWS):
            sizes.append(tiering.source_size(s))
        missing = self.src.missing_bytes(sizes)
        need = data.space_needed(s.big_size if self.rows_need(BIG_ROWS) else 0,
                                 s.moto_big_size if self.rows_need(BIG_ROWS) else 0, missing)
        if not s.quick and self.rows_need(BIG_ROWS):
            need = max(need, 3 * 10**9)
        if self.rows_need(LIST_ROWS) and not os.path.exists(
                os.path.join(s.bench_dir, f"atoll-list-{s.list_keys}", "populated.json")):
            need += 400 * s.list_keys  # the listing bucket's index (~300 B per key in SQLite, with margin)
        if self.rows_need(TIER_ROWS):
            need += tiering.space_needed(s, set(self.rows), os.path.join(s.bench_dir, "azurite"))
        ok, msg = data.check_space(s.bench_dir, need)
        log(msg)
        if not ok:
            raise SystemExit(f"NOT ENOUGH DISK SPACE: {msg}. Free some space or point ATOLL_BENCH_DIR at a "
                             "filesystem with more room (QUICK=1 needs far less).")
        for size in sorted(set(sizes)):
            if self.src.missing_bytes([size]):
                log(f"creating {human_size(size)} source object in {self.src.dir}")
            self.src.ensure(size)
        if self.rows_need(BIG_ROWS | NGINX_BIG_ROWS):
            data.warm(self.src.path(s.big_size))

    def start_peers(self) -> None:
        s = self.s
        wanted: list[tuple[str, Callable[[], Peer]]] = []
        http = self.rows_need(HTTP_ROWS)
        small = self.rows_need({"small"})
        if "nginx" in s.targets and (http or "cold1-warm" in self.rows):
            wanted.append(("nginx w1", lambda: NginxPeer(s, 1, self.src)))
            if small:
                wanted.append(("nginx w2", lambda: NginxPeer(s, 2, self.src)))
        if "atoll" in s.targets:
            atoll_cmd = AtollPeer.base_command(s)
            labels = (["atoll w1"] if http else []) + (["atoll w2"] if small or "noisy" in self.rows else [])
            if atoll_cmd is None:
                for lab in labels + (["atoll list"] if self.rows_need(LIST_ROWS) else []):
                    self.skip[lab] = f"Atoll not available ({s.atoll_bin} missing and no atoll/cli/main.py)"
            else:
                if atoll_cmd[0] != s.atoll_bin:
                    self.notes.append(f"{s.atoll_bin} not found; started Atoll through `python -c ... atoll.cli.main`")
                for lab in labels:
                    w = int(lab[-1])
                    d = os.path.join(s.bench_dir, f"atoll-w{w}")
                    shutil.rmtree(d, ignore_errors=True)  # fresh data dir every run
                    self.per_run_dirs.append(d)
                    wanted.append((lab, lambda w=w, d=d: AtollPeer(s, w, os.path.join(d, "data"))))
                    if w == 1 and self.rows_need(BLOB_ROWS):
                        wanted.append(("atoll blob w1", self.blob_view))
        if "moto" in s.targets and (http or self.rows_need(LIST_ROWS)):
            wanted.append(("moto", lambda: MotoPeer(s)))
        if self.rows_need(TIER_ROWS):
            wanted.append(("azurite", lambda: tiering.AzuritePeer(s)))
        for label, make in wanted:
            try:
                p = make()
            except RuntimeError as e:
                self.skip[label] = f"{label}: {e}"
                continue
            self.peers[label] = p  # registered before start so teardown always sees it
            log(f"starting {label} on 127.0.0.1:{p.port}")
            if not p.start():
                self.peer_failed(label, f"failed to start: {p.error}")

    def blob_view(self) -> Peer:
        atoll = self.peers.get("atoll w1")
        if atoll is None:
            raise RuntimeError("atoll w1 did not start")
        return BlobView(self.s, atoll)

    def peer_failed(self, label: str, why: str) -> None:
        p = self.peers.pop(label, None)
        if p is not None:
            p.stop()
        first = why.strip().splitlines()[0] if why.strip() else why
        self.skip[label] = f"{label} {first}"[:300]
        self.notes.append(f"{label}: {why}")
        log(f"{label}: {why}")

    def load_objects(self) -> None:
        s = self.s
        big_rows = self.rows_need({"get1", "ranges8"})
        for label, p in list(self.peers.items()):
            if isinstance(p, tiering.AzuritePeer):
                continue  # its data sets are loaded by setup_tiering
            try:
                if isinstance(p, BlobView):  # after atoll w1 (inserted after it): reads the objects it put
                    p.setup_objects(self.src, s.big_size if "get1" in self.rows else None)
                elif isinstance(p, NginxPeer):
                    p.setup_objects(self.src, s.big_size if self.rows_need(NGINX_BIG_ROWS) else None)
                elif isinstance(p, S3Peer):
                    size = None
                    if big_rows and label != "atoll w2":
                        size = s.moto_big_size if p.kind == "moto" else s.big_size
                    t0 = time.perf_counter()
                    p.setup_objects(self.src, size)
                    if size:
                        log(f"{label}: uploaded {human_size(size)} as one PutObject in {time.perf_counter() - t0:.1f}s")
                problem = self.sanity(p)
                if problem:
                    self.peer_failed(label, f"sanity check failed: {problem}")
            except Exception as e:  # noqa: BLE001 - one peer failing must not stop the others
                self.peer_failed(label, f"setup failed: {type(e).__name__}: {e}")

    @staticmethod
    def sanity(p: Peer) -> str | None:
        """GET and HEAD of the small object through the same URLs the load tools use."""
        r = run_client(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_download}", p.get_url("small")],
                       timeout=20)
        if r.rc != 0 or r.out.split() != ["200", str(SMALL_SIZE)]:
            return f"GET small object: {r.out.strip() or r.err.strip()[:200]}"
        for obj in ("small", "empty"):
            r = run_client(["curl", "-sS", "-I", "-o", "/dev/null", "-w", "%{http_code}", p.head_url(obj)], timeout=20)
            if r.rc != 0 or r.out.strip() != "200":
                return f"HEAD {obj} object: {r.out.strip() or r.err.strip()[:200]}"
        return None

    def setup_lists(self) -> None:
        if not self.rows_need(LIST_ROWS):
            return
        s = self.s
        if "atoll" in s.targets and "atoll list" not in self.skip:
            self.setup_atoll_list()
        moto = self.peers.get("moto")
        if moto is not None:
            n = s.moto_list_keys
            t0 = time.perf_counter()
            try:
                moto.ensure_bucket(LIST_BUCKET)
                done = populate.populate_via_s3(moto.client(), LIST_BUCKET, populate.dataset_keys(n), threads=8,
                                                max_seconds=300)
                if done != n:
                    raise RuntimeError(f"only {done} of {n} keys were put within the time limit")
                log(f"moto: {n:,} keys put in {time.perf_counter() - t0:.1f}s")
                self.list_info["moto"] = {"bucket": LIST_BUCKET, "n": n, "how": "filled by PutObject"}
            except Exception as e:  # noqa: BLE001
                self.list_info["moto"] = {"skip": f"filling the moto bucket failed: {e}"[:300]}

    def setup_atoll_list(self) -> None:
        s, n = self.s, self.s.list_keys
        ldir = os.path.join(s.bench_dir, f"atoll-list-{n}")
        marker = os.path.join(ldir, "populated.json")
        meta = None
        if os.path.exists(marker) and not s.repopulate:
            try:
                with open(marker) as f:
                    meta = json.load(f)
                if meta.get("n") != n:
                    meta = None
            except (OSError, ValueError):
                meta = None
        for _attempt in (1, 2):  # a stale cache gets one re-populate
            if meta is None:
                shutil.rmtree(ldir, ignore_errors=True)
            p = AtollPeer(s, 1, os.path.join(ldir, "data"), label="atoll list")
            self.peers["atoll list"] = p
            log(f"starting atoll list (data dir {ldir}, {'cached' if meta else 'new'}) on 127.0.0.1:{p.port}")
            if not p.start(timeout=120):
                self.peer_failed("atoll list", f"failed to start: {p.error}")
                return
            if meta is not None:
                if self.verify_list(p, n):
                    self.list_info["atoll list"] = {"bucket": LIST_BUCKET, "n": n, "how": f"cached, {meta.get('how')}"}
                    return
                log("atoll list: cached bucket does not answer as expected; populating again")
                p.stop()
                self.peers.pop("atoll list", None)
                meta = None
                continue
            try:
                how = self.populate_atoll(p, ldir, n)
            except Exception as e:  # noqa: BLE001
                self.list_info["atoll list"] = {"skip": str(e)[:400]}
                self.notes.append(f"atoll list: {e}")
                how = None
            if how is not None and not self.verify_list(p, n):
                self.list_info["atoll list"] = {"skip": "populated, but the first/last keys are not visible over S3"}
                how = None
            if how is None:  # no listing row for Atoll: do not keep an idle server around
                p.stop()
                self.peers.pop("atoll list", None)
                return
            with open(marker, "w") as f:
                json.dump({"n": n, "bucket": LIST_BUCKET, "how": how, "time": time.strftime("%Y-%m-%d %H:%M:%S")}, f)
            self.list_info["atoll list"] = {"bucket": LIST_BUCKET, "n": n, "how": how}
            return

    def populate_atoll(self, p: AtollPeer, ldir: str, n: int) -> str | None:
        p.ensure_bucket(LIST_BUCKET)
        t0 = time.perf_counter()
        if populate.benchsupport_available():
            log(f"atoll list: bulk-inserting {n:,} keys via atoll.benchsupport (cached afterwards)")
            r = run_client([common.PY, "-m", "bench.populate", "--data-dir", p.data_dir, "--bucket", LIST_BUCKET,
                            "--n", str(n)], timeout=1800)
            if r.rc != 0:
                raise RuntimeError(f"bench.populate failed (rc={r.rc}): {(r.err or r.out).strip()[-400:]}")
            how = f"bulk_insert_empty_objects, {time.perf_counter() - t0:.0f}s"
        elif n <= 50_000:
            log(f"atoll list: atoll.benchsupport not available; putting {n:,} keys over HTTP")
            done = populate.populate_via_s3(p.client(), LIST_BUCKET, populate.dataset_keys(n), threads=8,
                                            max_seconds=300)
            if done != n:
                raise RuntimeError(f"only {done} of {n} keys were put within the time limit")
            how = f"filled by PutObject, {time.perf_counter() - t0:.0f}s"
        else:
            self.list_info["atoll list"] = {
                "skip": "atoll.benchsupport.bulk_insert_empty_objects is not available yet "
                        f"(needed for {n:,} keys; LIST_KEYS≤50000 fills the bucket over HTTP instead)"}
            return None
        log(f"atoll list: {n:,} keys ready ({how})")
        return how

    @staticmethod
    def verify_list(p: S3Peer, n: int) -> bool:
        c = p.client()
        try:
            for k in (populate.dataset_key(0), populate.dataset_key(n - 1)):
                c.head_object(Bucket=LIST_BUCKET, Key=k)
            return True
        except Exception:  # noqa: BLE001
            return False

    def setup_tiering(self) -> None:
        """The cold data sets in Azurite (uploaded once, cached in its directory) and the tiering run state."""
        if not self.rows_need(TIER_ROWS):
            return
        s = self.s
        az = self.peers.get("azurite")
        if az is None:
            self.tier_skip = self.skip.get("azurite", "Azurite did not start")
            return
        if "atoll" not in s.targets or AtollPeer.base_command(s) is None:
            self.tier_skip = "Atoll not selected (TARGETS) or not available"
            return
        src_size = tiering.source_size(s)
        src_path, src_md5 = self.src.path(src_size), self.src.md5(src_size)
        for name, ds in tiering.datasets(s).items():
            if not (set(self.rows) & set(tiering.GROUPS["cold1"] if name == "cold1" else [name])):
                continue
            log(f"azurite: data set {ds.prefix} ({ds.describe()}): checking, uploading what is missing")
            t0 = time.perf_counter()
            try:
                how = az.ensure_dataset(ds, src_path, src_md5)
            except RuntimeError as e:
                self.tier_skip = str(e)[:300]
                self.notes.append(f"tiering rows: {e}")
                return
            self.tier_info[ds.prefix] = how
            log(f"azurite: {ds.prefix} ready ({how}, {time.perf_counter() - t0:.0f}s)")
        self.tier = tiering.Tiering(s, az, src_path)
        if s.cold_size != s.big_size and "cold1-warm" in self.rows:
            self.notes.append(f"cold1-warm: nginx serves the {human_size(s.big_size)} object, the cold object is "
                              f"{human_size(s.cold_size)} (COLD_SIZE != BIG_SIZE)")

    def warm_up(self, benches) -> None:
        """Unmeasured: one GET of each large object (page cache), one PUT per server (so that every measured PUT
        finds its previous object to delete, see benches.curl_put) and a 1 s wrk per server."""
        for b in benches:
            if b.id in ("put1", "blockput"):
                for c in b.cases:
                    if c.peer is not None and not c.skip:
                        log(f"warm-up PUT to {c.label}")
                        c.run()
        if self.tier is not None:  # Azurite's files into the page cache: one unmeasured direct read per data set
            for b in benches:
                if b.id in ("cold1", "stage-small", "stage-large"):
                    log(f"warm-up: direct read of the {b.id} data set")
                    r = b.cases[0].run()
                    if not r.get("ok"):
                        log(f"warm-up {b.id}: {r.get('problem')}")
            if "cold1" in self.rows:  # leaves a warm copy whose pages rep 1's fill reuses (see Tiering.fresh_atoll)
                log("warm-up: one first read through Atoll")
                r = self.tier.atoll_first(None, keep=False)
                if not r.get("ok"):
                    log(f"warm-up atoll cold1: {r.get('problem')}")
        for label, p in self.peers.items():
            if p.kind == "azurite":
                continue
            if "big" in p.sizes:
                run_client(["curl", "-s", "-o", "/dev/null", p.get_url("big")], timeout=60 + p.sizes["big"] / 20e6)
            if "small" in self.rows and label != "atoll list" and not self.s.quick:
                run_client([shutil.which("wrk") or "wrk", "-t1", f"-c{self.s.conn}", "-d1s", p.get_url("small")],
                           timeout=30)

    # ---------------------------------------------------------------- measuring
    def measure(self, benches) -> dict:
        samples: dict[str, dict[str, list]] = {b.id: {c.label: [] for c in b.cases if not c.skip} for b in benches}
        self.samples = samples
        for rep in range(self.s.reps):
            if self.tier is not None:
                self.tier.rep = rep + 1
            for b in benches:
                for c in b.cases:
                    if c.skip:
                        continue
                    if c.peer is not None and c.peer.label in self.skip:
                        continue
                    b0, t0 = common.cpu_busy_seconds(), time.perf_counter()
                    try:
                        r = c.run()
                    except Exception as e:  # noqa: BLE001 - record and go on
                        r = {"ok": False, "problem": f"{type(e).__name__}: {e}"}
                    busy, wall = common.cpu_busy_seconds() - b0, time.perf_counter() - t0
                    if r.get("ok") and wall > 0.2 and "other_cores" not in r:
                        # CPU used meanwhile by anything but this server and client (other sessions, daemons)
                        r["other_cores"] = max(0.0, busy - r.get("srv_cpu", 0.0) - r.get("cli_cpu", 0.0)) / wall
                    r["rep"] = rep + 1
                    samples[b.id][c.label].append(r)
                    log(f"rep {rep + 1}/{self.s.reps} {b.id:<13} {c.label:<20} {report.short(b, r)}")
                    if c.peer is not None and not c.peer.alive():
                        self.peer_failed(c.peer.label, f"died during {b.id}; log tail: {common.tail(c.peer.log_path, 800)}")
        return samples

    # ---------------------------------------------------------------- teardown
    def teardown(self) -> None:
        common.kill_current_client()
        tiering.stop_all()
        workloads.stop_all()
        scale.stop_all()
        shutil.rmtree(os.path.join(self.s.bench_dir, "atoll-tier"), ignore_errors=True)
        for problem in benches_mod.flush_put_objects():
            print(problem, file=sys.stderr)
        for p in list(self.peers.values())[::-1]:
            try:
                p.stop()
            except Exception as e:  # noqa: BLE001
                print(f"stopping {p.label}: {e}", file=sys.stderr)
        for d in self.per_run_dirs + [os.path.join(self.s.bench_dir, "nginx", "put")]:
            shutil.rmtree(d, ignore_errors=True)
        for d in os.listdir(self.s.bench_dir) if os.path.isdir(self.s.bench_dir) else []:
            if d.startswith("nginx-w"):
                shutil.rmtree(os.path.join(self.s.bench_dir, d, "tmp"), ignore_errors=True)


def versions(s: Settings) -> dict:
    def out(cmd):
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=10, cwd=common.REPO)
            return (r.stdout + r.stderr).strip().splitlines()[0] if (r.stdout + r.stderr).strip() else ""
        except (OSError, subprocess.TimeoutExpired, IndexError):
            return "n/a"
    v = {"nginx": out(["nginx", "-v"]), "wrk": out(["wrk", "-v"]).split(" [")[0], "curl": " ".join(out(["curl", "--version"]).split()[:2])}
    for mod in ("moto", "boto3", "botocore"):
        try:
            v[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            v[mod] = "n/a"
    rev = out(["git", "rev-parse", "--short", "HEAD"])
    dirty = out(["git", "status", "--porcelain", "--untracked-files=no"])
    v["atoll git"] = (rev + (" (+ uncommitted changes)" if dirty else "")) if rev and "fatal" not in rev else "no commit yet"
    return v


def main() -> int:
    s = Settings.from_env()
    if s.only:  # group names (cold1, stage) stand for their rows
        s.only = {r for x in s.only for r in tiering.GROUPS.get(x, [x])}
    bad = (s.only or set()) - set(ROW_IDS)
    if bad:
        groups = ", ".join(g + "=" + "+".join(ids) for g, ids in tiering.GROUPS.items())
        print(f"unknown ONLY rows {sorted(bad)}; rows are: {', '.join(ROW_IDS)} (groups: {groups})", file=sys.stderr)
        return 2

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    # SIGINT too: a shell that starts us in the background leaves SIGINT ignored, and Ctrl-C must always tear down
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    run = Run(s)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    info = {"time_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
            "mode": "QUICK (smoke: small sizes, short runs)" if s.quick else "full",
            "reps": s.reps, "rows": ",".join(run.rows), "targets": ",".join(sorted(s.targets)),
            "sizes": f"big {human_size(s.big_size)}, moto big {human_size(s.moto_big_size)}, small 4 KiB, "
                     f"list {s.list_keys:,} keys (moto {s.moto_list_keys:,})",
            "tiering": f"cold object {human_size(s.cold_size)}, staging {s.stage_small_n:,} × "
                       f"{human_size(s.stage_small_size)} and {s.stage_large_n:,} × {human_size(s.stage_large_size)}, "
                       f"direct streams {s.stage_conc}, Atoll fill {human_size(s.fill_block_size)} × "
                       f"{s.fill_parallelism}" + (f", cold1 variants {s.cold1_fills}" if s.cold1_fills else ""),
            "wrk": f"-t{s.wrk_threads} -c{s.conn} -d{s.dur}s (moto -d{s.moto_dur}s)",
            "machine": f"{os.cpu_count()} cores, {platform.system()} {platform.release()}, Python {platform.python_version()}",
            "bench dir": s.bench_dir, "loadavg start": " ".join(f"{x:.2f}" for x in os.getloadavg())}
    busy = common.machine_busy(1.0)
    info["cpu busy before start"] = f"{busy:.0%}"
    if busy > 0.10:
        log(f"WARNING: the machine is already {busy:.0%} busy before the benchmark starts; other processes share "
            "the 2 cores, so absolute numbers will be low and noisy (same-run ratios suffer less)")
    t_start = time.perf_counter()
    samples, benches, interrupted = {}, [], None
    rc = 0
    try:
        run.check_tools()
        run.prepare_data()
        run.start_peers()
        run.load_objects()
        run.setup_lists()
        run.setup_tiering()
        wl = workloads.Workloads(s, set(run.rows), run.src)
        wl.setup(log)
        run.notes += wl.notes
        sc = scale.Scale(s, set(run.rows))
        sc.setup(log)
        run.notes += sc.notes + [f"scale: {lab}: {why}" for lab, why in sc.skip.items()]
        peers = dict(run.peers)
        peers["__skip__"] = run.skip
        benches = [b for b in build(s, peers, run.src, run.list_info)
                   + tiering.build(s, run.tier, run.peers.get("nginx w1"), run.tier_skip)
                   + [noisy_row.build(s, run.peers.get("atoll w2"), run.skip.get("atoll w2"))] + wl.build()
                   + sc.build()
                   if b.id in run.rows]
        log(f"setup done in {time.perf_counter() - t_start:.0f}s; measuring {', '.join(b.id for b in benches)} "
            f"× {s.reps} reps")
        run.warm_up(benches)
        samples = run.measure(benches)
    except KeyboardInterrupt as e:
        interrupted = str(e) or "Ctrl-C"
        log(f"interrupted ({interrupted}); tearing down")
        samples = getattr(run, "samples", {})
        rc = 130
    finally:
        run.teardown()
    if not benches:
        return rc or 1
    info["loadavg end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    info["duration"] = f"{time.perf_counter() - t_start:.0f}s"
    info.update({f"version {k}": v for k, v in versions(s).items()})
    if interrupted:
        info["INTERRUPTED"] = interrupted
    summaries = {b.id: report.summarize(b, samples.get(b.id, {})) for b in benches}
    rows = [r for b in benches for r in b.judge(b, summaries[b.id], summaries)]
    title = (f"Atoll benchmark — {info['mode']}, medians of {s.reps} run(s), same-run ratios"
             + (" — INTERRUPTED" if interrupted else ""))
    report.print_table(rows, title)
    notes = run.notes + [f"{lab}: {why}" for lab, why in run.skip.items() if not any(lab in n for n in run.notes)]
    noisy = [r for per in samples.values() for runs in per.values() for r in runs if (r.get("other_cores") or 0) >= 0.25]
    total = sum(len(runs) for per in samples.values() for runs in per.values())
    if noisy:
        notes.append(f"{len(noisy)} of {total} runs had ≥0.25 cores used by processes outside the benchmark (median "
                     f"{statistics.median(r['other_cores'] for r in noisy):.2f} cores): the machine was shared, so treat "
                     "absolute numbers with care and prefer a rerun on an idle machine")
    for lab, li in run.list_info.items():
        if li.get("skip"):
            notes.append(f"{lab} listing: {li['skip']}")
    md, js = report.write_results(s.results_dir, stamp, info, rows, benches, samples, summaries, notes)
    for n in notes:
        print(f"note: {n[:400]}")
    print(f"results: {os.path.relpath(md, common.REPO)} and {os.path.relpath(js, common.REPO)}")
    misses = [r for r in rows if r.status in ("MISS", "ERR")]
    if s.strict and misses and not rc:
        rc = 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
