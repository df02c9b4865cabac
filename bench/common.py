"""Shared plumbing for the Atoll benchmark: settings, process CPU accounting, client runs, small helpers.

Everything here talks only to 127.0.0.1 and every wait is bounded in time.
"""
from __future__ import annotations

import ctypes
import dataclasses
import http.client
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time

GIB = 1 << 30
MIB = 1 << 20
HOST = "127.0.0.1"
BENCH_PKG = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH_PKG)
CLIENTS = os.path.join(BENCH_PKG, "clients")
PY = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")


def env_int(name: str, default: int) -> int:
    v = os.environ.get(name, "").strip()
    return int(v.replace("_", "")) if v else default


@dataclasses.dataclass
class Settings:
    """All knobs, from the environment (see README). QUICK shrinks every size and duration."""
    quick: bool
    reps: int
    only: set[str] | None
    targets: set[str]
    bench_dir: str
    results_dir: str
    big_size: int          # the "1 GiB" object for nginx and Atoll
    moto_big_size: int     # moto is very slow on large objects
    dur: int               # wrk seconds per run
    moto_dur: int
    conn: int              # wrk connections
    pace_ms: int           # head-paced: per-connection wait between requests
    wrk_threads: int
    list_keys: int         # Atoll listing bucket size
    moto_list_keys: int
    botocore_max_s: float  # time cap of one botocore paginator run
    list_max_s: float      # time cap of one lean listing run
    atoll_bin: str
    repopulate: bool
    strict: bool
    cold_size: int         # tiering: the cold object of cold1 / cold1-warm
    stage_small_n: int     # tiering: the two staging data sets
    stage_small_size: int
    stage_large_n: int
    stage_large_size: int
    stage_conc: int        # concurrent streams of the direct reference (= Atoll's stage_concurrency)
    fill_block_size: int   # Atoll's read-through fill settings (what the server gets from ATOLL_FILL_*)
    fill_parallelism: int
    cold1_fills: str       # extra cold1 Atoll variants, e.g. "16Mx4,4Mx16"

    @classmethod
    def from_env(cls) -> "Settings":
        quick = os.environ.get("QUICK", "") not in ("", "0")
        only = {x.strip() for x in os.environ.get("ONLY", "").split(",") if x.strip()} or None
        targets = {x.strip() for x in os.environ.get("TARGETS", "nginx,atoll,moto").split(",") if x.strip()}
        bench_dir = os.environ.get("ATOLL_BENCH_DIR", "/var/tmp/atoll-bench")
        return cls(
            quick=quick,
            reps=env_int("REPS", 1 if quick else 3),
            only=only,
            targets=targets,
            bench_dir=bench_dir,
            results_dir=os.environ.get("RESULTS_DIR", os.path.join(BENCH_PKG, "results")),
            big_size=env_int("BIG_SIZE", 64 * MIB if quick else GIB),
            moto_big_size=env_int("MOTO_BIG_SIZE", 16 * MIB if quick else 64 * MIB),
            dur=env_int("DUR", 2 if quick else 10),
            moto_dur=env_int("MOTO_DUR", 1 if quick else 5),
            conn=env_int("CONN", 64),
            pace_ms=env_int("PACE_MS", 10),
            wrk_threads=env_int("WRK_THREADS", 1),
            list_keys=env_int("LIST_KEYS", 3_000 if quick else 1_000_000),
            moto_list_keys=env_int("MOTO_LIST_KEYS", 500 if quick else 10_000),
            botocore_max_s=float(os.environ.get("BOTOCORE_MAX_S", 2 if quick else 15)),
            list_max_s=float(os.environ.get("LIST_MAX_S", 20 if quick else 120)),
            atoll_bin=os.environ.get("ATOLL_BIN", os.path.join(os.path.dirname(PY), "atoll")),
            repopulate=os.environ.get("ATOLL_BENCH_REPOPULATE", "") not in ("", "0"),
            strict=os.environ.get("STRICT", "") not in ("", "0"),
            cold_size=env_int("COLD_SIZE", env_int("BIG_SIZE", 64 * MIB if quick else GIB)),
            stage_small_n=env_int("STAGE_SMALL_N", 200 if quick else 2000),
            stage_small_size=env_int("STAGE_SMALL_SIZE", MIB),
            stage_large_n=env_int("STAGE_LARGE_N", 2 if quick else 20),
            stage_large_size=env_int("STAGE_LARGE_SIZE", 64 * MIB if quick else 256 * MIB),
            stage_conc=env_int("STAGE_CONC", env_int("ATOLL_STAGE_CONCURRENCY", 16)),
            fill_block_size=env_int("ATOLL_FILL_BLOCK_SIZE", 8 * MIB),
            fill_parallelism=env_int("ATOLL_FILL_PARALLELISM", 8),
            cold1_fills=os.environ.get("COLD1_FILLS", ""),
        )


# ---------------------------------------------------------------- processes

def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _die_with_parent():  # runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def spawn_server(cmd: list[str], log_path: str, env: dict | None = None, cwd: str | None = None) -> subprocess.Popen:
    """Start a server in its own session (so it can be stopped as a group by its own pgid) that also
    gets SIGTERM if this process dies."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    log = open(log_path, "ab")
    try:
        return subprocess.Popen(cmd, env=full_env, cwd=cwd or REPO, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent)
    finally:
        log.close()


def stop_group(p: subprocess.Popen, grace: float = 5.0) -> None:
    """Stop a process started by spawn_server: SIGTERM to its own process group, SIGKILL after grace."""
    if p.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            return
        try:
            p.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def tree_cpu(root_pid: int) -> float:
    """user+sys CPU seconds (including reaped children) of a process and all its descendants, from /proc."""
    kids: dict[int, list[int]] = {}
    cpu: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        fields = raw[raw.rfind(b")") + 2:].split()
        pid = int(name)
        kids.setdefault(int(fields[1]), []).append(pid)          # ppid
        cpu[pid] = sum(int(x) for x in fields[11:15])             # utime stime cutime cstime
    total, todo = 0, [root_pid]
    while todo:
        pid = todo.pop()
        total += cpu.get(pid, 0)
        todo.extend(kids.get(pid, ()))
    return total / CLK_TCK


@dataclasses.dataclass
class ClientRun:
    rc: int | None          # None = killed at its time limit
    out: str
    err: str
    wall: float
    cpu: float              # user+sys of the client process (and anything it waited for), from rusage


_current_client: subprocess.Popen | None = None


def run_client(cmd: list[str], timeout: float, env: dict | None = None) -> ClientRun:
    """Run a load client to completion, bounded by timeout; its CPU comes from RUSAGE_CHILDREN deltas
    (the servers are children too but are never reaped while a client runs)."""
    global _current_client
    full_env = None if env is None else {**os.environ, **env}
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=full_env,
                         cwd=REPO)
    _current_client = p
    try:
        out, err = p.communicate(timeout=timeout)
        rc = p.returncode
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        rc = None
    finally:
        _current_client = None
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return ClientRun(rc, out.decode(errors="replace"), err.decode(errors="replace"), wall, cpu)


def kill_current_client() -> None:
    p = _current_client
    if p is not None and p.poll() is None:
        p.kill()


def wait_http(port: int, timeout: float, proc: subprocess.Popen | None = None) -> bool:
    """Ready = GET / gets any HTTP answer (403 for anonymous is fine). Bounded by timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            c = http.client.HTTPConnection(HOST, port, timeout=2)
            c.request("GET", "/")
            c.getresponse().read()
            c.close()
            return True
        except (OSError, http.client.HTTPException):
            time.sleep(0.1)
    return False


def machine_busy(seconds: float = 1.0) -> float:
    """Fraction of all CPUs busy over `seconds` (before the run starts: anything else competing for the 2 cores)."""
    def snap():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v), v[3] + v[4]  # total, idle + iowait
    t0, i0 = snap()
    time.sleep(seconds)
    t1, i1 = snap()
    return 1.0 - (i1 - i0) / max(1, t1 - t0)


def cpu_busy_seconds() -> float:
    """CPU-seconds spent in user+nice+system on all CPUs since boot (irq/softirq/steal left out)."""
    with open("/proc/stat") as f:
        v = f.readline().split()
    return (int(v[1]) + int(v[2]) + int(v[3])) / CLK_TCK


def tail(path: str, n: int = 1500) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - n))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


# ---------------------------------------------------------------- numbers

def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt_num(x, nd=2) -> str:
    if x is None:
        return "n/a"
    if abs(x) >= 10000:
        return f"{x:,.0f}"
    if abs(x) >= 100:
        return f"{x:.0f}"
    return f"{x:.{nd}f}"


def human_size(n: int) -> str:
    for unit, div in (("GiB", GIB), ("MiB", MIB), ("KiB", 1024)):
        if n >= div and n % div == 0:
            return f"{n // div} {unit}"
    return f"{n} B"
