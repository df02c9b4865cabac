"""The scale row of issue #9: Atoll on PostgreSQL, one node against three nodes behind HAProxy, on this machine.

Servers of its own, started next to the others: nginx w1 (the same-run reference, serving the same files and
taking dav PUTs), one Atoll node on a PostgreSQL database, three Atoll nodes on another database sharing one data
directory behind HAProxy (round robin, the configuration of tests/cluster/clusterutil.py and the README), and one
Atoll node on the embedded SQLite (for the metadata cost). PostgreSQL is the throwaway cluster of the tests
(tests/pgserver.py: Debian's package, started as an unprivileged user, removed at exit).

Cases (wrk, pre-signed URLs, ``s.dur`` seconds each):
- 4 KiB GET (64 connections), 1 MiB GET (16) and 1 MiB PUT (16, clients/put_cycle.lua over SCALE_PUT_KEYS keys):
  nginx w1, atoll 1 node, atoll 3 nodes. The machine has 2 cores (``os.cpu_count()`` is in the table): three nodes,
  HAProxy, PostgreSQL and wrk share them, so the 3-node figure shows the cost of the extra hop and processes, not
  the scale-out a cluster of real machines gets.
- metadata cost per operation: 4 KiB PUT and HEAD on one node with SQLite and with PostgreSQL; server CPU µs per
  request, Atoll's processes and PostgreSQL's backends counted apart.
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
import sys
import time
import urllib.parse

from . import common
from .benches import Bench, Case, Row, _client_failed, _fail, _join, _other, _peer_dead, _sock, _spread, _unmeasured, parse_wrk
from .common import HOST, MIB, fmt_num, run_client, tree_cpu
from .peers import NGINX_CONF, AtollPeer, Peer
from .workloads import Presigner, http_do, small_body

ROW_IDS = ["scale"]
BUCKET = "scale"
SMALL, BIG = 4096, MIB
BIG_CONN = 16
PUT_KEYS = common.env_int("SCALE_PUT_KEYS", 256)
NODES = 3
NGINX = "nginx w1"
ONE = "atoll 1 node (PostgreSQL)"
THREE = f"atoll {NODES} nodes + HAProxy (PostgreSQL)"
SQLITE = "atoll 1 node (SQLite)"

_started: list[Peer] = []
_scratch: list[str] = []


def _tests_on_path() -> None:
    for sub in ("tests", os.path.join("tests", "cluster")):
        path = os.path.join(common.REPO, sub)
        if path not in sys.path:
            sys.path.insert(0, path)


class ScaleNginx(Peer):
    """nginx w1 serving <dir>/src/{small,big}.bin and taking dav PUTs under /put/."""

    kind = "nginx"

    def __init__(self, s):
        super().__init__(s, "scale nginx w1")
        self.workers = 1
        self.dir = os.path.join(s.bench_dir, "scale-nginx")

    def command(self):
        tmp = os.path.join(self.dir, "tmp")
        for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            os.makedirs(os.path.join(tmp, d), exist_ok=True)
        os.makedirs(os.path.join(self.dir, "nginx", "put"), exist_ok=True)
        conf = os.path.join(self.dir, "nginx.conf")
        with open(conf, "w") as f:
            f.write(NGINX_CONF.format(workers=1, dir=self.dir, tmp=tmp, host=HOST, port=self.port, bench=self.dir))
        return [shutil.which("nginx") or "/usr/sbin/nginx", "-p", self.dir, "-e", os.path.join(self.dir, "error.log"),
                "-c", conf], {}

    def put_objects(self, bodies: dict[str, bytes]) -> None:
        os.makedirs(os.path.join(self.dir, "src"), exist_ok=True)
        for name, data in bodies.items():
            with open(os.path.join(self.dir, "src", name), "wb") as f:
                f.write(data)

    def path(self, method: str, key: str) -> str:
        # PUT targets (put/...) live in the dav tree, read back from there too; the measured objects in src/.
        return ("/put/" if key.startswith("put/") else "/src/") + urllib.parse.quote(key, safe="/~")


class ScaleAtoll(AtollPeer):
    """One Atoll node: ``metadata`` "" = SQLite in its data directory, else a postgresql:// URL."""

    def __init__(self, s, label: str, data_dir: str, metadata: str = "", node: str = ""):
        super().__init__(s, 1, data_dir, label=label)
        self.metadata = metadata
        self.node = node

    def command(self):
        cmd, env = super().command()
        if self.metadata:
            env["ATOLL_METADATA"] = self.metadata
        if self.node:
            env["ATOLL_NODE"] = self.node
        return cmd, env


class HAProxyPeer(Peer):
    """HAProxy in front of the nodes' S3 ports (clusterutil.haproxy_config; the Blob backend is unused here)."""

    kind = "haproxy"

    def __init__(self, s, nodes: list[ScaleAtoll]):
        super().__init__(s, "scale haproxy")
        self.nodes = nodes
        self.dir = os.path.join(s.bench_dir, "scale-haproxy")

    def command(self):
        _tests_on_path()
        from clusterutil import HAPROXY, haproxy_config

        os.makedirs(self.dir, exist_ok=True)
        conf = os.path.join(self.dir, "haproxy.cfg")
        with open(conf, "w") as f:
            f.write(haproxy_config([n.port for n in self.nodes], [n.blob_port for n in self.nodes], self.port,
                                   common.free_port(), os.path.join(self.dir, "haproxy.sock")))
        return [HAPROXY, "-db", "-f", conf], {}


class Group:
    """What one case measures: the peer wrk talks to, the processes whose CPU is the server's, how to sign."""

    def __init__(self, front: Peer, processes: list[Peer], sign):
        self.front = front
        self.processes = processes
        self.sign = sign

    def cpu(self) -> float:
        return sum(p.cpu() for p in self.processes)


class Scale:
    def __init__(self, s, rows: set[str]):
        self.s = s
        self.active = "scale" in rows
        self.groups: dict[str, Group] = {}
        self.skip: dict[str, str] = {}
        self.notes: list[str] = []
        self.pg = None
        self.wrk = shutil.which("wrk")
        self.put_next: dict[str, int] = {}
        self.paths_dir = os.path.join(s.bench_dir, "scale-paths")

    # ------------------------------------------------------------ setup
    def setup(self, log) -> None:
        if not self.active:
            return
        if not self.wrk:
            self.skip["*"] = "wrk not installed (bash bench/run.sh installs it)"
            return
        _scratch.append(self.paths_dir)
        bodies = {"small.bin": small_body(0, "scale", SMALL), "big.bin": os.urandom(BIG), "empty.bin": b""}
        nginx = ScaleNginx(self.s)
        _started.append(nginx)
        if nginx.start():
            nginx.put_objects(bodies)
            self.groups[NGINX] = Group(nginx, [nginx], nginx.path)
        else:
            self.skip[NGINX] = f"failed to start: {nginx.error}"[:300]
        try:
            _tests_on_path()
            import pgserver

            self.pg = pgserver.cluster()
            log(f"scale: PostgreSQL {self.pg.bin.parent.name} on port {self.pg.port}")
        except Exception as e:  # noqa: BLE001 - the SQLite case still runs
            for label in (ONE, THREE):
                self.skip[label] = f"PostgreSQL did not start: {type(e).__name__}: {e}"[:300]
        root = os.path.join(self.s.bench_dir, "scale-atoll")
        shutil.rmtree(root, ignore_errors=True)
        _scratch.append(root)
        specs = [(SQLITE, "", 1)]
        if self.pg is not None:
            specs = [(ONE, self.pg.fresh_database("scale1"), 1), (THREE, self.pg.fresh_database("scale3"), NODES),
                     *specs]
        for label, metadata, n in specs:
            data_dir = os.path.join(root, label.split(" (")[0].replace(" ", "-") + ("-pg" if metadata else "-sqlite"))
            nodes = [ScaleAtoll(self.s, f"scale {label} node{i + 1}", os.path.join(data_dir, "data"), metadata,
                                f"node{i + 1}" if metadata else "") for i in range(n)]
            _started.extend(nodes)
            log(f"starting {label}")
            failed = next((p for p in nodes if not p.start()), None)
            if failed is not None:
                self.skip[label] = f"{failed.label} failed to start: {failed.error}"[:300]
                continue
            front: Peer = nodes[0]
            processes: list[Peer] = list(nodes)
            if n > 1:
                proxy = HAProxyPeer(self.s, nodes)
                _started.append(proxy)
                if not proxy.start():
                    self.skip[label] = f"HAProxy failed to start: {proxy.error}"[:300]
                    continue
                front, processes = proxy, [*nodes, proxy]
            try:
                nodes[0].ensure_bucket(BUCKET)
                sign = Presigner(f"{HOST}:{front.port}")
                for name, data in bodies.items():
                    status, answer = http_do(front, "PUT", sign("PUT", BUCKET, name), data)
                    if status != 200:
                        raise RuntimeError(f"PUT {name}: HTTP {status} {answer[:200]!r}")
            except Exception as e:  # noqa: BLE001 - one server failing must not stop the others
                self.skip[label] = f"setup failed: {type(e).__name__}: {e}"[:300]
                continue
            self.groups[label] = Group(front, processes, lambda m, k, sign=sign: sign(m, BUCKET, k))
        for label, group in self.groups.items():
            path = self._put_paths(label, group)
            self.put_next[label] = 0
            warm = self._wrk(group, group.sign("GET", "small.bin"), None, 1, self.s.conn)  # unmeasured warm-up
            if not warm.get("ok"):
                self.skip[label] = f"warm-up failed: {warm.get('problem')}"[:300]
            log(f"scale: {label} ready ({path})")

    def _put_paths(self, label: str, group: Group) -> str:
        os.makedirs(self.paths_dir, exist_ok=True)
        path = os.path.join(self.paths_dir, re.sub(r"[^\w.-]+", "-", label) + ".txt")
        with open(path, "w") as f:
            f.writelines(group.sign("PUT", f"put/{i:05d}.bin") + "\n" for i in range(PUT_KEYS))
        return path

    # ------------------------------------------------------------ measuring
    def _pg_cpu(self, label: str) -> float:
        if self.pg is None or "PostgreSQL" not in label:
            return 0.0
        try:
            with open(os.path.join(self.pg.data_dir, "postmaster.pid")) as f:
                return tree_cpu(int(f.readline()))
        except (OSError, ValueError):
            return 0.0

    def _wrk(self, group: Group, url_path: str, lua: str | None, dur: int, conn: int, env: dict | None = None,
             label: str = "") -> dict:
        cmd = [self.wrk, f"-t{self.s.wrk_threads}", f"-c{conn}", f"-d{dur}s", "--latency", "--timeout", "5s"]
        if lua:
            cmd += ["-s", os.path.join(common.CLIENTS, lua)]
        cmd.append(group.front.base + url_path)
        self._settle(group)
        s0, p0 = group.cpu(), self._pg_cpu(label)
        r = run_client(cmd, timeout=dur + 30, env={"WRK_THREADS": str(self.s.wrk_threads), **(env or {})})
        scpu, pcpu = group.cpu() - s0, self._pg_cpu(label) - p0
        if r.rc != 0:
            return _fail(next(filter(None, map(_peer_dead, group.processes)), None) or _client_failed(r, "wrk"))
        d = parse_wrk(r.out)
        if not d["rps"] or not d["requests"]:
            return _fail(f"wrk output not understood: {(r.out + r.err)[-300:]}")
        if d["non2xx"]:
            return _fail(f"{d['non2xx']} of {d['requests']} responses were not 2xx/3xx", **d)
        d["sock_errors"] = sum(int(x) for x in re.findall(r"\d+", d["socket_errors"]))
        d.update(ok=True, server_cores=(scpu + pcpu) / dur, wrk_cores=r.cpu / dur, srv_cpu=scpu + pcpu, cli_cpu=r.cpu,
                 us_atoll=scpu / d["requests"] * 1e6, us_pg=pcpu / d["requests"] * 1e6,
                 us_per_req_server=(scpu + pcpu) / d["requests"] * 1e6)
        return d

    def _settle(self, group: Group, limit: float = 60.0) -> None:
        """Wait until a HEAD answers within 0.2 s: the requests a previous run left queued (wrk stops with up to
        64 in flight; on PostgreSQL a burst of PUTs to one bucket drains slowly) must not count in this one."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            began = time.monotonic()
            try:
                status, _ = http_do(group.front, "HEAD", group.sign("HEAD", "empty.bin"))
            except OSError:
                status = 0
            if status == 200 and time.monotonic() - began < 0.2:
                return
            time.sleep(0.2)

    def get(self, label: str, name: str, size: int, conn: int) -> dict:
        group = self.groups[label]
        d = self._wrk(group, group.sign("GET", name), None, self.s.dur, conn, label=label)
        if d.get("ok"):
            d["value"] = d["rps"] if size == SMALL else d["rps"] * size / 1e9
        return d

    def put(self, label: str, size: int, conn: int) -> dict:
        group = self.groups[label]
        tag = "s" + secrets.token_hex(4)
        start = self.put_next[label]
        d = self._wrk(group, "/", "put_cycle.lua", self.s.dur, conn, label=label, env={
            "WRK_PATHS": os.path.join(self.paths_dir, re.sub(r"[^\w.-]+", "-", label) + ".txt"),
            "WRK_START": str(start), "WRK_RUN": tag, "WRK_SIZE": str(size)})
        if not d.get("ok"):
            return d
        done = d["requests"]
        self.put_next[label] = (start + done + 2 * conn) % PUT_KEYS
        # Keys written in this run, past the first connections' first requests (wrk builds one request per
        # connection before the run that it never sends) and before any still in flight at its end: read back a few.
        span = min(done, PUT_KEYS) - 2 * conn
        for j in range(conn, span, max(1, (span - conn) // 4)) if span > conn else ():
            i = (start + j) % PUT_KEYS
            status, body = http_do(group.front, "GET", group.sign("GET", f"put/{i:05d}.bin"))
            if status != 200 or len(body) != size or body[:64] != small_body(i, tag, size)[:64]:
                return {**d, "ok": False,
                        "problem": f"read-back of put/{i:05d}.bin: HTTP {status}, {len(body)} bytes, {body[:48]!r}"}
        d["value"] = d["rps"] if size == SMALL else d["rps"] * size / 1e9
        return d

    def head(self, label: str) -> dict:
        group = self.groups[label]
        d = self._wrk(group, group.sign("HEAD", "empty.bin"), "head.lua", self.s.dur, self.s.conn, label=label)
        if d.get("ok"):
            d["value"] = d["rps"]
        return d

    # ------------------------------------------------------------ the row
    def case(self, shown: str, label: str, fn, note: str = "") -> Case:
        group = self.groups.get(label)
        why = self.skip.get("*") or self.skip.get(label)
        if group is None or why:
            return Case(shown, lambda: {}, None, note, skip=why or "not started")
        return Case(shown, fn, group.front, note)

    def build(self) -> list[Bench]:
        if not self.active:
            return []
        cases = []
        for what, fn in (("4 KiB GET", lambda lab: self.get(lab, "small.bin", SMALL, self.s.conn)),
                         ("1 MiB GET", lambda lab: self.get(lab, "big.bin", BIG, BIG_CONN)),
                         ("1 MiB PUT", lambda lab: self.put(lab, BIG, BIG_CONN))):
            for label in (NGINX, ONE, THREE):
                cases.append(self.case(f"{what} · {label}", label, lambda lab=label, fn=fn: fn(lab)))
        for what, fn in (("4 KiB PUT", lambda lab: self.put(lab, SMALL, self.s.conn)),
                         ("HEAD", lambda lab: self.head(lab))):
            for label in (SQLITE, ONE):
                cases.append(self.case(f"metadata {what} · {label}", label, lambda lab=label, fn=fn: fn(lab)))
        title = (f"Scale-out (#9): 1 node vs {NODES} nodes behind HAProxy on PostgreSQL, on this machine's "
                 f"{os.cpu_count()} cores; metadata cost per op, SQLite vs PostgreSQL")
        return [Bench("scale", title, "value", "", cases, judge_scale)]


def judge_scale(b: Bench, summ: dict, _all: dict) -> list[Row]:
    rows = []
    for c in b.cases:
        m = summ.get(c.label) or {}
        if not m.get("n"):
            rows.append(_unmeasured(b, c, summ))
            continue
        what, _, label = c.label.partition(" · ")
        v = m.get("value")
        big = what.startswith("1 MiB")
        shown = "n/a" if v is None else f"{fmt_num(v)} GB/s" if big else f"{fmt_num(v, 0)} req/s"
        if what.startswith("metadata"):
            ref_label = f"{what} · {SQLITE}"
            ref = summ.get(ref_label) or {}
            ratio = (f"{m['us_per_req_server'] / ref['us_per_req_server']:.2f}× SQLite CPU/op"
                     if label != SQLITE and ref.get("us_per_req_server") else "—")
            goal, status = ("reference", "ref") if label == SQLITE else ("— (information)", "info")
            details = _join(f"server CPU {fmt_num(m.get('us_per_req_server'), 1)} µs/op (Atoll "
                            f"{fmt_num(m.get('us_atoll'), 1)}, PostgreSQL {fmt_num(m.get('us_pg'), 1)})",
                            f"p50 {fmt_num(m.get('p50_ms'))} / p99 {fmt_num(m.get('p99_ms'))} ms", _sock(m), _other(m))
        else:
            ref = summ.get(f"{what} · {NGINX}") or {}
            one = summ.get(f"{what} · {ONE}") or {}
            parts = []
            if label != NGINX and ref.get("value") and v is not None:
                parts.append(f"{v / ref['value']:.2f}× nginx")
            if label == THREE and one.get("value") and v is not None:
                parts.append(f"{v / one['value']:.2f}× 1 node")
            ratio = ", ".join(parts) or "—"
            goal, status = ("reference", "ref") if label == NGINX else ("— (information)", "info")
            details = _join(f"p50 {fmt_num(m.get('p50_ms'))} / p99 {fmt_num(m.get('p99_ms'))} ms",
                            f"server {fmt_num(m.get('server_cores'))} cores (PostgreSQL and HAProxy included), "
                            f"wrk {fmt_num(m.get('wrk_cores'))}",
                            f"{fmt_num(m.get('us_per_req_server'), 1)} µs server CPU/req", _sock(m), _spread(b, m),
                            _other(m))
        errs = m.get("errors") or []
        rows.append(Row(b.title, c.label, shown, ratio, goal, status,
                        _join(details, f"{len(errs)} failed runs: {errs[0]}" if errs else "")))
    return rows


def stop_all() -> None:
    for p in _started[::-1]:
        try:
            p.stop()
        except Exception:  # noqa: BLE001
            pass
    _started.clear()
    for d in _scratch:
        shutil.rmtree(d, ignore_errors=True)
    _scratch.clear()
