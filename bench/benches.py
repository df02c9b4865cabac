"""Benchmark rows: how each is measured on each server, and how its result is judged against its target.

A Bench has Cases (one per server, plus pseudo-cases such as the in-process MD5 rate). Each case's run()
returns one sample: a dict of metrics with "ok" (and "problem" when not ok). main.py runs them round-robin
(rep -> bench -> case) and hands the medians to Bench.judge(), which yields the table rows.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import time
from typing import Callable

from . import common
from .common import GIB, MIB, ClientRun, fmt_num, human_size, run_client
from .peers import ACCESS_KEY, SECRET_KEY, Peer, S3Peer

LIST_BUCKET = "dataset"
LIST_GOAL = 50_000


@dataclasses.dataclass
class Case:
    label: str
    run: Callable[[], dict]
    peer: Peer | None = None
    note: str = ""               # shown in the details column (e.g. "64 MiB object")
    skip: str | None = None      # reason not to run


@dataclasses.dataclass
class Row:
    bench: str
    server: str
    result: str
    ratio: str
    goal: str
    status: str                  # PASS / MISS / ref / info / SKIP / ERR
    details: str


@dataclasses.dataclass
class Bench:
    id: str
    title: str
    value_key: str
    unit: str
    cases: list[Case]
    judge: Callable[["Bench", dict, dict], list[Row]]  # (bench, its summary, all summaries by bench id)
    scale: float = 1.0           # value shown = metric * scale

    def show(self, v) -> str:
        return "n/a" if v is None else f"{fmt_num(v * self.scale)} {self.unit}"


# ------------------------------------------------------------------ measurement primitives

def _fail(problem: str, **kw) -> dict:
    return {**kw, "ok": False, "problem": problem[:500]}  # a measurement's own "ok" must not hide the failure


def _client_failed(r: ClientRun, what: str) -> str:
    if r.rc is None:
        return f"{what}: killed at its time limit after {r.wall:.0f}s"
    return f"{what}: exit {r.rc}: {(r.err or r.out).strip()[-300:]}"


def _peer_dead(peer: Peer | None) -> str | None:
    if peer is not None and peer.proc is not None and not peer.alive():
        return f"{peer.label} is no longer running (exit {peer.proc.returncode}); log tail: {common.tail(peer.log_path, 600)}"
    return None


def curl_get(peer: Peer) -> dict:
    size = peer.sizes["big"]
    s0 = peer.cpu()
    r = run_client(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{speed_download} %{size_download}",
                    peer.get_url("big")], timeout=30 + size / 20e6)
    scpu = peer.cpu() - s0
    if r.rc != 0:
        return _fail(_peer_dead(peer) or _client_failed(r, "curl"))
    code, speed, got = r.out.split()
    if code != "200" or int(got) != size:
        return _fail(f"HTTP {code}, {got} of {size} bytes")
    return {"ok": True, "gbps": float(speed) / 1e9, "srv_cpu_per_gib": scpu * GIB / size,
            "cli_cpu_per_gib": r.cpu * GIB / size, "wall": r.wall, "srv_cpu": scpu, "cli_cpu": r.cpu}


def range_part(size: int) -> int:
    """64 MiB ranges (16 of them for 1 GiB), smaller for small objects so that 8 streams still run in parallel."""
    return max(MIB, min(64 * MIB, size // 8))


def ranged_get(peer: Peer, conc: int = 8) -> dict:
    size = peer.sizes["big"]
    s0 = peer.cpu()
    r = run_client([common.PY, os.path.join(common.CLIENTS, "ranges.py"), peer.get_url("big"), "--size", str(size),
                    "--conc", str(conc), "--part", str(range_part(size))], timeout=30 + size / 20e6)
    scpu = peer.cpu() - s0
    if r.rc != 0:
        return _fail(_peer_dead(peer) or _client_failed(r, "ranges client"))
    d = json.loads(r.out.strip().splitlines()[-1])
    if not d["ok"] or d["bytes"] != size:
        return _fail(f"ranges: {d.get('problem')}; statuses {d['statuses']}, {d['bytes']} of {size} bytes")
    return {"ok": True, "gbps": d["gbps"], "srv_cpu_per_gib": scpu * GIB / size,
            "cli_cpu_per_gib": d["cpu"] * GIB / size, "wall": r.wall, "srv_cpu": scpu, "cli_cpu": r.cpu}


# Each server's previous PUT object is deleted right before its next PUT (not right after): the freed page-cache
# pages are then reused at once. Freed memory sits idle otherwise, and this VM hands idle free memory back to the
# host within ~2-3 s (free page reporting); writing 1 GiB into such cold pages costs ~2.4 CPU-s more, which would
# dominate the PUT numbers. Deleting just before keeps every server in the same, steady-state condition.
_pending_delete: dict[str, Callable[[], None]] = {}


def flush_put_objects(label: str | None = None) -> list[str]:
    """Delete the leftover PUT object of one server (or of all). Returns problems."""
    problems = []
    for lab in [label] if label else list(_pending_delete):
        fn = _pending_delete.pop(lab, None)
        if fn is not None:
            try:
                fn()
            except Exception as e:  # noqa: BLE001
                problems.append(f"{lab}: deleting the previous PUT object failed: {e}")
    return problems


def curl_put(peer: Peer, path: str, size: int, md5: str, key: str) -> dict:
    problems = flush_put_objects(peer.label)
    if problems:
        return _fail(problems[0])
    url = peer.put_url(key)
    s0 = peer.cpu()
    r = run_client(["curl", "-sS", "-o", "/dev/null", "-H", "Expect:", "-w",
                    "%{http_code} %{speed_upload} %{size_upload} %header{etag}", "-T", path, url],
                   timeout=60 + size / 20e6)
    scpu = peer.cpu() - s0
    _pending_delete[peer.label] = lambda: peer.put_delete(key)
    if r.rc != 0:
        return _fail(_peer_dead(peer) or _client_failed(r, "curl -T"))
    parts = r.out.split()
    code, speed, sent = parts[0], float(parts[1]), int(parts[2])
    etag = parts[3].strip('"') if len(parts) > 3 else None
    problem = peer.put_check(key, size, md5, etag)
    if not code.startswith("2") or sent != size:
        return _fail(f"HTTP {code}, sent {sent} of {size} bytes")
    if problem:
        return _fail(problem)
    return {"ok": True, "gbps": speed / 1e9, "srv_cpu_per_gib": scpu * GIB / size,
            "cli_cpu_per_gib": r.cpu * GIB / size, "wall": r.wall, "srv_cpu": scpu, "cli_cpu": r.cpu}


BLOCK_SIZE = 8 * MIB  # blockput: Put Block size of both clients


def block_put(view, label: str, path: str, size: int, blob: str, client: str) -> dict:
    """One upload of `path` as a block blob through the Blob port of an Atoll (bench/blobpeer.BlobView):
    client "lean" = clients/blockput.py (sequential Put Blocks on one connection, then Put Block List),
    "sdk" = azure-storage-blob's upload_blob with 4 blocks in flight. Checked afterwards by size, committed
    block count and three ranges compared with the source. Like curl_put, the previous upload is deleted right
    before this one (see _pending_delete)."""
    problems = flush_put_objects(label)
    if problems:
        return _fail(problems[0])
    from azure.storage.blob._shared.constants import X_MS_VERSION
    url = view.sas_url(blob, write=True)
    script, extra = {"lean": ("blockput.py", ["--version", X_MS_VERSION]),
                     "sdk": ("blob_sdk_upload.py", ["--conc", "4"])}[client]
    s0 = view.cpu()
    r = run_client([common.PY, os.path.join(common.CLIENTS, script), url, path, "--block", str(BLOCK_SIZE)] + extra,
                   timeout=60 + size / 20e6)
    scpu = view.cpu() - s0
    _pending_delete[label] = lambda: view.delete(blob)
    if r.rc != 0:
        return _fail(_peer_dead(view) or _client_failed(r, script))
    d = json.loads(r.out.strip().splitlines()[-1])
    if not d["ok"]:
        return _fail(f"{script}: {d['problem']}")
    problem = view.check_upload(blob, path, size, -(-size // BLOCK_SIZE))
    if problem:
        return _fail(problem)
    return {"ok": True, "gbps": d["gbps"], "srv_cpu_per_gib": scpu * GIB / size,
            "cli_cpu_per_gib": d["cpu"] * GIB / size, "wall": r.wall, "srv_cpu": scpu, "cli_cpu": r.cpu}


def md5_rate(size: int) -> dict:
    """Single-core hashlib.md5 over `size` bytes in 1 MiB bytes chunks, in this process (the PUT target)."""
    chunk = os.urandom(MIB)
    n = max(1, size // MIB)
    h = hashlib.md5()
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(n):
        h.update(chunk)
    h.hexdigest()
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"ok": True, "gbps": n * MIB / dt / 1e9, "cpu_per_gib": cpu * GIB / (n * MIB), "cli_cpu": cpu}


_UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def parse_wrk(out: str) -> dict:
    def lat(s):
        m = re.match(r"([\d.]+)(us|ms|s)$", s)
        return float(m.group(1)) * _UNIT_MS[m.group(2)] if m else None

    d: dict = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    d["rps"] = float(m.group(1)) if m else None
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    d["requests"] = int(m.group(1)) if m else None
    for pct in ("50", "90", "99"):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", out, re.M)
        d[f"p{pct}_ms"] = lat(m.group(1)) if m else None
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    d["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: (.*)", out)
    d["socket_errors"] = m.group(1).strip() if m else ""
    return d


def wrk(peer: Peer, url: str, dur: int, conn: int, threads: int, lua: str | None = None, delay_ms: int = 0) -> dict:
    cmd = [shutil.which("wrk") or "wrk", f"-t{threads}", f"-c{conn}", f"-d{dur}s", "--latency", "--timeout", "5s"]
    if lua:
        cmd += ["-s", os.path.join(common.CLIENTS, lua)]
    cmd.append(url)
    s0 = peer.cpu()
    r = run_client(cmd, timeout=dur + 30, env={"WRK_DELAY_MS": str(delay_ms)})
    scpu = peer.cpu() - s0
    if r.rc != 0:
        return _fail(_peer_dead(peer) or _client_failed(r, "wrk"))
    d = parse_wrk(r.out)
    if not d["rps"] or not d["requests"]:
        return _fail(f"wrk output not understood: {r.out[-300:]}")
    if d["non2xx"]:
        return _fail(f"{d['non2xx']} of {d['requests']} responses were not 2xx/3xx (auth or URL problem?)", **d)
    # "Socket errors: connect 0, read 0, write 0, timeout 0"; timed-out requests are missing from wrk's latency stats
    d["sock_errors"] = sum(int(x) for x in re.findall(r"\d+", d["socket_errors"]))
    m = re.search(r"timeout (\d+)", d["socket_errors"])
    d["timeouts"] = int(m.group(1)) if m else 0
    d.update(ok=True, server_cores=scpu / dur, wrk_cores=r.cpu / dur, srv_cpu=scpu, cli_cpu=r.cpu,
             us_per_req_server=(scpu / d["requests"] * 1e6) if d["requests"] else None)
    return d


def list_run(peer: S3Peer, client: str, bucket: str, expect: int | None, max_s: float, max_pages: int) -> dict:
    script = {"lean": "list_lean.py", "botocore": "list_botocore.py"}[client]
    cmd = [common.PY, os.path.join(common.CLIENTS, script), "--endpoint", peer.base, "--bucket", bucket,
           "--ak", ACCESS_KEY, "--sk", SECRET_KEY, "--max-seconds", str(max_s), "--max-pages", str(max_pages)]
    if client == "lean" and expect is not None:
        cmd += ["--expect", str(expect)]
    s0 = peer.cpu()
    r = run_client(cmd, timeout=max_s + 60)
    scpu = peer.cpu() - s0
    if r.rc != 0:
        return _fail(_peer_dead(peer) or _client_failed(r, f"{client} list client"))
    d = json.loads(r.out.strip().splitlines()[-1])
    if not d["ok"]:
        return _fail(d["problem"] or "listing failed", keys=d["keys"])
    d.update(srv_cpu=scpu, cli_cpu=r.cpu, srv_cpu_per_1k=scpu / d["keys"] * 1000 if d["keys"] else None,
             cli_cpu_per_1k=d["cpu"] / d["keys"] * 1000 if d["keys"] else None)
    return d


# ------------------------------------------------------------------ judging helpers

def _ok(summ: dict, label: str) -> dict | None:
    m = summ.get(label)
    return m if m and m.get("n") else None


def _status(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def _spread(b: Bench, m: dict) -> str:
    lo, hi = m.get("min"), m.get("max")
    if lo is None or m.get("n", 0) < 2:
        return ""
    return f"runs {fmt_num(lo * b.scale)}–{fmt_num(hi * b.scale)}"


OTHER_LOAD_WARN = 0.25  # cores used by processes outside the benchmark while a run was measured


def _other(m: dict) -> str:
    o = m.get("other_cores")
    return f"⚠ other load {o:.2f} cores" if o is not None and o >= OTHER_LOAD_WARN else ""


def _sock(m: dict) -> str:
    n, t = m.get("sock_errors") or 0, m.get("timeouts") or 0
    if not n:
        return ""
    return f"⚠ {n:.0f} socket errors per run" + (f" ({t:.0f} timeouts >5 s, not in the latency figures)" if t else "")


def _join(*parts) -> str:
    return "; ".join(p for p in parts if p)


def _unmeasured(b: Bench, c: Case, summ: dict) -> Row:
    m = summ.get(c.label) or {}
    if c.skip:
        return Row(b.title, c.label, "—", "—", "—", "SKIP", c.skip)
    return Row(b.title, c.label, "—", "—", "—", "ERR", _join(c.note, (m.get("errors") or ["no successful run"])[0]))


def _rows(b: Bench, summ: dict, ref_label: str, ref_name: str,
          goal_for: Callable[[Case], tuple[str, Callable[[dict, float | None], bool]] | None],
          details: Callable[[Case, dict], str]) -> list[Row]:
    rows = []
    ref = _ok(summ, ref_label)
    refv = ref[b.value_key] if ref else None
    for c in b.cases:
        m = _ok(summ, c.label)
        if not m:
            rows.append(_unmeasured(b, c, summ))
            continue
        v = m[b.value_key]
        ratio = v / refv if (v is not None and refv) else None
        ratio_txt = f"{ratio:.2f}× {ref_name}" if ratio is not None else f"n/a (no {ref_name})"
        g = goal_for(c)
        if c.label == ref_label:
            goal, status = "reference", "ref"
        elif g is None:
            goal, status = "—", "info"
        else:
            goal, check = g
            status = "NOREF" if ratio is None and "×" in goal else _status(check(m, ratio))
        errs = m.get("errors") or []
        rows.append(Row(b.title, c.label, b.show(v), ratio_txt, goal, status,
                        _join(c.note, details(c, m), _spread(b, m), _other(m),
                              f"{len(errs)} failed runs: {errs[0]}" if errs else "")))
    return rows


# ------------------------------------------------------------------ the benchmarks

def _cpu_details(c: Case, m: dict) -> str:
    return f"server {fmt_num(m.get('srv_cpu_per_gib'))} / client {fmt_num(m.get('cli_cpu_per_gib'))} CPU-s/GiB"


def judge_get1(b: Bench, summ: dict, _all: dict) -> list[Row]:
    def goal(c):
        if c.peer is not None and c.peer.kind == "atoll":
            return ("≥0.85× nginx, ≤0.45 srv CPU-s/GiB",
                    lambda m, r: r is not None and r >= 0.85 and m.get("srv_cpu_per_gib") is not None
                    and m["srv_cpu_per_gib"] <= 0.45)
        return None
    return _rows(b, summ, "nginx w1", "nginx", goal, _cpu_details)


def judge_ranges(b: Bench, summ: dict, _all: dict) -> list[Row]:
    def goal(c):
        if c.peer is not None and c.peer.kind == "atoll":
            return "≥0.95× nginx", lambda m, r: r is not None and r >= 0.95
        return None
    return _rows(b, summ, "nginx w1", "nginx", goal, _cpu_details)


MD5_LABEL = "hashlib.md5, 1 core"


def judge_put(b: Bench, summ: dict, _all: dict) -> list[Row]:
    ng = _ok(summ, "nginx w1 (dav)")

    def goal(c):
        if c.peer is not None and c.peer.kind == "atoll":
            return "≥0.9× md5 rate", lambda m, r: r is not None and r >= 0.9
        return None

    def details(c, m):
        if c.peer is None:
            return f"{fmt_num(m.get('cpu_per_gib'))} CPU-s/GiB, in-process, same run"
        x = f"{m['gbps'] / ng['gbps']:.2f}× nginx dav" if ng and c.label != "nginx w1 (dav)" else ""
        return _join(_cpu_details(c, m), x)
    return _rows(b, summ, MD5_LABEL, "md5", goal, details)


def judge_blockput(b: Bench, summ: dict, all_summ: dict) -> list[Row]:
    s3_put = _ok(all_summ.get("put1", {}), "atoll w1")

    def goal(c):
        if c.peer is not None and c.peer.kind == "atoll" and "SDK" not in c.label:
            return "≥0.9× md5 rate", lambda m, r: r is not None and r >= 0.9
        return None  # the SDK row measures the SDK as much as the server: information

    def details(c, m):
        if c.peer is None:
            return f"{fmt_num(m.get('cpu_per_gib'))} CPU-s/GiB, in-process, same run"
        x = f"{m['gbps'] / s3_put['gbps']:.2f}× atoll w1 S3 PUT (put1)" if s3_put else ""
        return _join(_cpu_details(c, m), x)
    return _rows(b, summ, MD5_LABEL, "md5", goal, details)


def with_segment_check(peer, result: dict) -> dict:
    """Adds segment_files (1/0) to an Atoll run: whether its data directory has segment files (#8 packed store), i.e.
    whether its small object, written by PutObject, can be in one. Checked at run time: the directory is gone when
    the rows are judged."""
    data_dir = getattr(peer, "data_dir", None)
    if getattr(peer, "kind", "") == "atoll" and data_dir and result.get("ok"):
        try:
            seg = os.path.join(data_dir, "segments")
            result["segment_files"] = int(any(e.is_file() and e.stat().st_size for e in os.scandir(seg)))
        except OSError:
            result["segment_files"] = 0
    return result


def _packed_note(m: dict) -> str:
    if m.get("segment_files") is None:
        return ""
    return "packed store (segment files)" if m["segment_files"] else "⚠ per-file (no segment files)"


def judge_small(b: Bench, summ: dict, _all: dict) -> list[Row]:
    def ref_for(c):  # atoll wN against nginx wN
        return f"nginx w{c.peer.workers}" if c.peer is not None and hasattr(c.peer, "workers") else "nginx w1"

    rows = []
    for c in b.cases:
        ref_label = ref_for(c)
        sub = dataclasses.replace(b, cases=[c])

        def goal(cc):  # #8: the S3 GET of a 4 KiB object (packed store) ≥ 0.9× nginx; the Blob port keeps 0.75×
            if cc.peer is not None and cc.peer.kind == "atoll":
                want = 0.75 if "blob" in cc.label else 0.9
                return f"≥{want:g}× {ref_label}", lambda m, r: r is not None and r >= want
            return None

        def details(cc, m):
            return _join(_sock(m), _packed_note(m), f"p50 {fmt_num(m.get('p50_ms'))} / p99 {fmt_num(m.get('p99_ms'))} ms",
                         f"server {fmt_num(m.get('server_cores'))} cores, wrk {fmt_num(m.get('wrk_cores'))}",
                         f"{fmt_num(m.get('us_per_req_server'), 1)} µs server CPU/req")
        r = _rows(sub, summ, ref_label, ref_label, goal, details)[0]
        if c.label == ref_label:
            r.goal, r.status = "reference", "ref"
        rows.append(r)
    return rows


def judge_head(b: Bench, summ: dict, _all: dict) -> list[Row]:
    def goal(c):  # #8: HEAD at 64 connections p99 ≤ 1 ms, judged on the paced row; the closed loop is information
        if c.peer is not None and c.peer.kind == "atoll" and b.id == "head-paced":
            return "p99 ≤ 1 ms", lambda m, r: m.get("p99_ms") is not None and m["p99_ms"] <= 1.0
        return None

    def details(c, m):
        return _join(_sock(m), f"{fmt_num(m.get('rps'))} req/s",
                     f"p50 {fmt_num(m.get('p50_ms'))} / p90 {fmt_num(m.get('p90_ms'))} ms",
                     f"server {fmt_num(m.get('server_cores'))} cores")
    return _rows(b, summ, "nginx w1", "nginx p99", goal, details)


def judge_list(b: Bench, summ: dict, _all: dict) -> list[Row]:
    summ = dict(summ)
    summ["__goal__"] = {"n": 1, "keys_per_s": LIST_GOAL}

    def goal(c):
        if c.peer is not None and c.peer.kind == "atoll":
            return f"≥{LIST_GOAL:,} keys/s", lambda m, r: m["keys_per_s"] >= LIST_GOAL
        return None

    def details(c, m):
        return _join(f"{fmt_num(m.get('keys'))} keys in {fmt_num(m.get('secs'))} s",
                     f"server {fmt_num(m.get('srv_cpu_per_1k'), 3)} / client {fmt_num(m.get('cli_cpu_per_1k'), 3)} CPU-s per 1k keys")
    return _rows(b, summ, "__goal__", "goal", goal, details)


def judge_botocore(b: Bench, summ: dict, all_summ: dict) -> list[Row]:
    rows = []
    lean = all_summ.get("list", {})
    for c in b.cases:
        m = _ok(summ, c.label)
        if not m:
            rows.append(_unmeasured(b, c, summ))
            continue
        lm = _ok(lean, c.label)
        ratio = f"{m['keys_per_s'] / lm['keys_per_s']:.2f}× lean client" if lm else "n/a (no lean run)"
        rows.append(Row(b.title, c.label, b.show(m["keys_per_s"]), ratio, "— (client-bound)", "info",
                        _join(c.note, f"{fmt_num(m.get('keys'))} keys in {fmt_num(m.get('secs'))} s",
                              f"client {fmt_num(m.get('cli_cpu_per_1k'), 3)} CPU-s per 1k keys",
                              _spread(b, m), _other(m))))
    return rows


def build(settings, peers: dict, src, list_info: dict) -> list[Bench]:
    """peers: label -> Peer for those that started (missing ones get SKIP cases with peer_skip reasons).
    list_info: label -> {"bucket", "n", "skip"} for the listing servers."""
    s = settings
    skip_reason = peers.get("__skip__", {})

    def pc(label, fn, note=""):
        p = peers.get(label)
        if p is None:
            return Case(label, lambda: {}, None, note, skip=skip_reason.get(label, "not selected (TARGETS)"))
        return Case(label, fn(p), p, note)

    moto_note = f"{human_size(s.moto_big_size)} object (moto is slow on large objects)"
    big = human_size(s.big_size)

    def put_case(label, key):
        p = peers.get(label.replace(" (dav)", ""))
        if p is None:
            return Case(label, lambda: {}, None, skip=skip_reason.get(label.replace(" (dav)", ""), "not selected"))
        size = s.moto_big_size if p.kind == "moto" else s.big_size
        path = src.path(size)
        md5 = src.md5(size)
        return Case(label, lambda: curl_put(p, path, size, md5, key), p,
                    moto_note if p.kind == "moto" else ("dav_methods PUT, reference" if p.kind == "nginx" else "MD5 ETag checked"))

    benches = [
        Bench("get1", f"{big} GET, one stream (curl)", "gbps", "GB/s",
              [pc("nginx w1", lambda p: lambda: curl_get(p)), pc("atoll w1", lambda p: lambda: curl_get(p)),
               pc("atoll blob w1", lambda p: lambda: curl_get(p), "Get Blob, service SAS"),
               pc("moto", lambda p: lambda: curl_get(p), moto_note)], judge_get1),
        Bench("ranges8", f"{big} GET, {human_size(range_part(s.big_size))} ranges, 8 in parallel (Python threads, "
              "keep-alive)", "gbps", "GB/s",
              [pc("nginx w1", lambda p: lambda: ranged_get(p)), pc("atoll w1", lambda p: lambda: ranged_get(p)),
               pc("moto", lambda p: lambda: ranged_get(p),
                  moto_note + f", {human_size(range_part(s.moto_big_size))} ranges")], judge_ranges),
        Bench("put1", f"{big} PUT, one stream (curl -T), MD5 ETag", "gbps", "GB/s",
              [Case(MD5_LABEL, lambda: md5_rate(s.big_size), None, "target reference"),
               put_case("nginx w1 (dav)", "put-big"), put_case("atoll w1", "put-big"), put_case("moto", "put-big")],
              judge_put),
        Bench("small", f"4 KiB GET, {s.conn} connections (wrk -t{s.wrk_threads}, {s.dur}s)", "rps", "req/s",
              [pc(lab, (lambda p: lambda: with_segment_check(p, wrk(p, p.get_url("small"), s.dur, s.conn,
                                                                    s.wrk_threads))))
               for lab in ("nginx w1", "atoll w1", "atoll blob w1", "nginx w2", "atoll w2")]
              + [pc("moto", lambda p: lambda: wrk(p, p.get_url("small"), s.moto_dur, s.conn, s.wrk_threads),
                    f"presigned GET, {s.moto_dur}s runs")], judge_small),
        Bench("head", f"HEAD, {s.conn} connections (wrk --latency, {s.dur}s; 0-byte object)", "p99_ms", "ms p99",
              [pc("nginx w1", lambda p: lambda: wrk(p, p.head_url("empty"), s.dur, s.conn, s.wrk_threads, "head.lua")),
               pc("atoll w1", lambda p: lambda: wrk(p, p.head_url("empty"), s.dur, s.conn, s.wrk_threads, "head.lua"),
                  "presigned HEAD"),
               pc("moto", lambda p: lambda: wrk(p, p.head_url("empty"), s.moto_dur, s.conn, s.wrk_threads, "head.lua"),
                  f"presigned HEAD, {s.moto_dur}s runs")], judge_head),
        Bench("head-paced", f"HEAD, {s.conn} connections paced: random 0–{2 * s.pace_ms} ms pause after each response "
              f"(≤{s.conn * 1000 // max(1, s.pace_ms):,} req/s offered; {s.dur}s; 0-byte object)", "p99_ms", "ms p99",
              [pc(lab, (lambda p: lambda: wrk(p, p.head_url("empty"), s.moto_dur if p.kind == "moto" else s.dur,
                                              s.conn, s.wrk_threads, "head.lua", s.pace_ms)))
               for lab in ("nginx w1", "atoll w1", "moto")], judge_head),
    ]

    def list_case(label, client):
        info = list_info.get(label)
        p = peers.get(label)
        if p is None or info is None or info.get("skip"):
            reason = (info or {}).get("skip") or skip_reason.get(label, "not selected (TARGETS)")
            return Case(label, lambda: {}, None, skip=reason)
        n = info["n"]
        note = f"{n:,}-key bucket" + (f", {info['how']}" if info.get("how") else "")
        if client == "lean":
            return Case(label, lambda: list_run(p, "lean", info["bucket"], n, s.list_max_s, n // 1000 + 5), p, note)
        return Case(label, lambda: list_run(p, "botocore", info["bucket"], None, s.botocore_max_s, n // 1000 + 5),
                    p, note + f", capped at {s.botocore_max_s:g}s")

    def blockput_case(label, client, blob, note):
        p = peers.get("atoll blob w1")
        if p is None:
            return Case(label, lambda: {}, None, skip=skip_reason.get("atoll blob w1", "not selected (TARGETS)"))
        path = src.path(s.big_size)
        return Case(label, lambda: block_put(p, label, path, s.big_size, blob, client), p, note)

    benches.append(Bench(
        "blockput", f"{big} Blob upload: Put Block × {human_size(BLOCK_SIZE)} + Put Block List (SAS)", "gbps", "GB/s",
        [Case(MD5_LABEL, lambda: md5_rate(s.big_size), None, "target reference"),
         blockput_case("atoll blob w1", "lean", "blockput.bin",
                       "one stream, blocks one after the other (clients/blockput.py, mmap); "
                       "size and block list checked"),
         blockput_case("atoll blob w1 (SDK)", "sdk", "blockput-sdk.bin",
                       "azure-storage-blob upload_blob, max_concurrency=4; size and block list checked")],
        judge_blockput))

    lean = Bench("list", "ListObjectsV2, pages of 1,000 (lean client: http.client + SigV4 + regex XML)",
                 "keys_per_s", "keys/s", [list_case("atoll list", "lean"), list_case("moto", "lean")], judge_list)
    benches.append(lean)
    benches.append(Bench("list-botocore", "ListObjectsV2, botocore list_objects_v2 paginator", "keys_per_s", "keys/s",
                         [list_case("atoll list", "botocore"), list_case("moto", "botocore")], judge_botocore))
    return benches
