"""The workload rows of issue #8 (small objects, KV cache, checkpoints): put4k, mix, kv, dcp.

They run on servers of their own, started here next to the ones main.py starts: nginx w1 with `dav_methods PUT`
(the reference; it serves what it was sent from the same ext4 bench directory), Atoll w1 and w2 with the default
packed store, and Atoll w1 started with `--packed-max-size 0` (one file per object, the path of #2). Peers are
labelled "wl ..." internally (own logs and data directories); the table shows the plain names.

- put4k: 4 KiB PUTs, wrk -c64 with clients/put_cycle.lua cycling through P4K_KEYS pre-signed PUT URLs (new keys
  and overwrites); after every run a sample of the keys written in that run is read back and compared.
- mix: 80% GET / 20% PUT of 4 KiB objects over MIX_KEYS pre-loaded keys (clients/mix.lua); afterwards a sample is
  read back and must hold a body some run wrote for that key.
- kv: LMCache-shaped chunks (`model@rank@group@hash`) of 256 KiB, 2.5 MiB and 10 MiB: every key PUT once (64 in
  flight), then a HEAD-then-GET probe at 256 in flight for KV_PROBE_S seconds (clients/kv.py).
- dcp: torch.distributed.checkpoint save + load through fsspec/s3fs, and the same files through http.client.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import hmac
import http.client
import importlib.util
import json
import os
import random
import re
import secrets
import shutil
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

from . import common
from .benches import Bench, Case, Row, _client_failed, _fail, _join, _other, _peer_dead, _sock, _spread, _unmeasured, parse_wrk
from .common import MIB, HOST, fmt_num, human_size, run_client, tail
from .peers import ACCESS_KEY, NGINX_CONF, REGION, SECRET_KEY, AtollPeer, NginxPeer, Peer

ROW_IDS = ["put4k", "mix", "kv", "dcp"]
BUCKET = "workloads"
SMALL = 4096
NGINX = "nginx w1"
ATOLL = "atoll w1"
ATOLL2 = "atoll w2"
PERFILE = "atoll w1 per-file"
ATOLL_BIG = "atoll w1 kv+dcp"  # shown as "atoll w1": its GiBs of overwrites and deletes must not slow put4k and mix
PEERS_FOR = {"put4k": [NGINX, ATOLL, ATOLL2, PERFILE], "mix": [ATOLL, PERFILE, NGINX], "kv": [NGINX, ATOLL_BIG],
             "dcp": [ATOLL_BIG]}
KV_SRC_SIZE = 32 * MIB
KV_PUT_CONC = 64

_started: list[Peer] = []
_scratch_dirs: list[str] = []


@dataclasses.dataclass
class WlSettings:
    p4k_keys: int
    mix_keys: int
    kv_sizes: list[tuple[int, int]]   # (object size, number of keys)
    kv_conc: int                      # probe: requests in flight
    kv_probe_s: float
    dcp_mib: int
    dcp_threads: int

    @classmethod
    def from_env(cls, quick: bool) -> "WlSettings":
        scale = 8 if quick else 1
        return cls(p4k_keys=common.env_int("P4K_KEYS", 20_000 // scale // 2 if quick else 20_000),
                   mix_keys=common.env_int("MIX_KEYS", 5_000 // scale if quick else 5_000),
                   kv_sizes=[(256 << 10, 1024 // scale), (5 * MIB // 2, 256 // scale), (10 * MIB, 64 // scale)],
                   kv_conc=common.env_int("KV_CONC", 256),
                   kv_probe_s=float(os.environ.get("KV_PROBE_S", 2 if quick else 4)),
                   dcp_mib=common.env_int("DCP_MIB", 32 if quick else 256),
                   dcp_threads=common.env_int("DCP_THREADS", 4))


# ------------------------------------------------------------------ signing

class Presigner:
    """SigV4 query-string signing (what boto3's generate_presigned_url makes, at ~20 µs instead of ~700 µs per URL:
    the rows need tens of thousands). Returns path?query for path-style URLs on one host."""

    def __init__(self, host: str, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY, ttl: int = 6 * 3600):
        self.host = host
        now = datetime.datetime.now(datetime.timezone.utc)
        self.amz_date = now.strftime("%Y%m%dT%H%M%SZ")
        day = now.strftime("%Y%m%d")
        self.scope = f"{day}/{REGION}/s3/aws4_request"
        k = hmac.new(("AWS4" + secret_key).encode(), day.encode(), hashlib.sha256).digest()
        for part in (REGION, "s3", "aws4_request"):
            k = hmac.new(k, part.encode(), hashlib.sha256).digest()
        self.key = k
        self.base_query = {"X-Amz-Algorithm": "AWS4-HMAC-SHA256", "X-Amz-Credential": f"{access_key}/{self.scope}",
                           "X-Amz-Date": self.amz_date, "X-Amz-Expires": str(ttl), "X-Amz-SignedHeaders": "host"}

    def __call__(self, method: str, bucket: str, key: str) -> str:
        path = "/" + urllib.parse.quote(bucket, safe="") + "/" + urllib.parse.quote(key, safe="/~")
        query = "&".join(f"{urllib.parse.quote(k, safe='-_.~')}={urllib.parse.quote(v, safe='-_.~')}"
                         for k, v in sorted(self.base_query.items()))
        canonical = f"{method}\n{path}\n{query}\nhost:{self.host}\n\nhost\nUNSIGNED-PAYLOAD"
        to_sign = (f"AWS4-HMAC-SHA256\n{self.amz_date}\n{self.scope}\n"
                   f"{hashlib.sha256(canonical.encode()).hexdigest()}")
        sig = hmac.new(self.key, to_sign.encode(), hashlib.sha256).hexdigest()
        return f"{path}?{query}&X-Amz-Signature={sig}"


# ------------------------------------------------------------------ servers

class WlNginx(NginxPeer):
    """nginx w1 whose /put/ tree (dav PUT, and GET of what was PUT) lives in <bench>/wl-nginx/."""

    def __init__(self, s):
        Peer.__init__(self, s, "wl nginx w1")
        self.workers = 1
        self.dir = os.path.join(s.bench_dir, "wl-nginx")
        self.put_dir = os.path.join(self.dir, "nginx", "put")

    def command(self):
        tmp = os.path.join(self.dir, "tmp")
        for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            os.makedirs(os.path.join(tmp, d), exist_ok=True)
        os.makedirs(self.put_dir, exist_ok=True)
        conf = os.path.join(self.dir, "nginx.conf")
        with open(conf, "w") as f:  # {bench}/nginx/put is the dav root: here <bench>/wl-nginx/nginx/put
            f.write(NGINX_CONF.format(workers=1, dir=self.dir, tmp=tmp, host=HOST, port=self.port, bench=self.dir))
        return [shutil.which("nginx") or "/usr/sbin/nginx", "-p", self.dir, "-e", os.path.join(self.dir, "error.log"),
                "-c", conf], {}

    def path(self, method: str, key: str) -> str:
        return "/put/" + urllib.parse.quote(key, safe="/~@")


class WlAtoll(AtollPeer):
    """An Atoll for the workload rows. packed_max_size None = the server's default (packed store); 0 = per-file.
    Until the packed store exists the option may be refused: the server then starts without it and says so."""

    def __init__(self, s, workers: int, label: str, packed_max_size: int | None):
        d = os.path.join(s.bench_dir, label.replace(" ", "-"))
        shutil.rmtree(d, ignore_errors=True)
        super().__init__(s, workers, os.path.join(d, "data"), label=label)
        self.root = d
        self.packed_max_size = packed_max_size
        self.option_refused = False
        self.sign = Presigner(f"{HOST}:{self.port}")

    def command(self):
        cmd, env = super().command()
        if self.packed_max_size is not None and not self.option_refused:
            cmd += ["--packed-max-size", str(self.packed_max_size)]
        return cmd, env

    def start(self, timeout: float = 30.0) -> bool:
        if super().start(timeout):
            return True
        if self.packed_max_size is not None and "packed-max-size" in tail(self.log_path, 3000):
            self.option_refused, self.error = True, None
            return super().start(timeout)
        return False

    def path(self, method: str, key: str) -> str:
        return self.sign(method, BUCKET, key)

    def segment_bytes(self) -> int:
        d = os.path.join(self.data_dir, "segments")
        try:
            return sum(e.stat().st_size for e in os.scandir(d) if e.is_file())
        except OSError:
            return 0

    def store_note(self, m: dict) -> str:
        """What the data directory showed after the runs (median segment_mib) about where small objects went."""
        if self.option_refused:
            return "⚠ --packed-max-size refused: per-file only"
        seg = m.get("segment_mib") or 0
        if self.packed_max_size == 0:
            return "per-file (--packed-max-size 0)" + (f"; ⚠ {seg:.0f} MiB of segment files" if seg else "")
        return (f"packed store: {seg:.0f} MiB of segment files" if seg
                else "⚠ no segment files: per-file only (no packed store)")


def http_do(peer: Peer, method: str, path: str, body: bytes | None = None, conn=None) -> tuple[int, bytes]:
    c = conn or http.client.HTTPConnection(HOST, peer.port, timeout=30)
    c.request(method, path, body=body)
    r = c.getresponse()
    data = r.read()
    if conn is None:
        c.close()
    return r.status, data


def small_body(i: int, tag: str, size: int = SMALL) -> bytes:
    """The body clients/put_cycle.lua and mix.lua send for key i in run `tag`."""
    unit = tag.ljust(16)[:16]
    fill = (unit * -(-(size - 64) // 16))[:size - 64]
    return (f"atoll-bench key={i} run={tag}".ljust(64) + fill).encode()


BODY_RE = re.compile(rb"atoll-bench key=(\d+) run=(\S+) *$")


class Workloads:
    def __init__(self, s, rows: set[str], src):
        self.s = s
        self.w = WlSettings.from_env(s.quick)
        self.rows = [r for r in ROW_IDS if r in rows]
        self.src = src
        self.peers: dict[str, Peer] = {}
        self.skip: dict[str, str] = {}
        self.notes: list[str] = []
        self.p4k_next: dict[str, int] = {}
        self.mix_tags: dict[str, set[str]] = {}
        self.kv_files: dict[tuple[str, int], str] = {}
        self.dcp_last: str | None = None
        self.dcp_count = 0
        self.wrk = shutil.which("wrk")

    # ------------------------------------------------------------ setup
    def setup(self, log) -> None:
        if not self.rows:
            return
        wanted = []
        for r in self.rows:
            wanted += [p for p in PEERS_FOR[r] if p not in wanted]
        for label in wanted:
            if label == NGINX and "nginx" not in self.s.targets or label != NGINX and "atoll" not in self.s.targets:
                self.skip[label] = "not selected (TARGETS)"
                continue
            if label != NGINX and AtollPeer.base_command(self.s) is None:
                self.skip[label] = "Atoll not available"
                continue
            p = WlNginx(self.s) if label == NGINX else WlAtoll(self.s, 2 if label == ATOLL2 else 1, "wl " + label,
                                                               0 if label == PERFILE else None)
            _started.append(p)
            log(f"starting {label} for {', '.join(r for r in self.rows if label in PEERS_FOR[r])} on {p.base}")
            if not p.start():
                self.skip[label] = f"failed to start: {p.error}"[:300]
                continue
            if isinstance(p, WlAtoll):
                try:
                    p.ensure_bucket(BUCKET)
                except Exception as e:  # noqa: BLE001 - one server failing must not stop the others
                    self.skip[label] = f"creating bucket {BUCKET}: {type(e).__name__}: {e}"[:300]
                    continue
                if p.option_refused:
                    self.notes.append(f"{label}: this Atoll does not know --packed-max-size yet; it ran per-file")
            self.peers[label] = p
        _scratch_dirs.append(os.path.join(self.s.bench_dir, "wl-paths"))
        if "kv" in self.rows:
            self.src.ensure(KV_SRC_SIZE)
        for label, p in self.peers.items():
            try:
                if "put4k" in self.rows and label in PEERS_FOR["put4k"]:
                    self.write_paths(p, "p4k", self.w.p4k_keys, ("PUT",))
                    self.p4k_next[label] = 0
                    if self.wrk:
                        warm = self.put4k(label, dur=1)  # unmeasured: connections, first segment, page cache
                        if not warm.get("ok"):
                            raise RuntimeError(f"warm-up put4k run: {warm.get('problem')}")
                if "mix" in self.rows and label in PEERS_FOR["mix"]:
                    self.write_paths(p, "mix", self.w.mix_keys, ("PUT", "GET"))
                    self.preload_mix(p, label)
                    log(f"{label}: {self.w.mix_keys:,} objects of 4 KiB pre-loaded for mix")
                if "kv" in self.rows and label in PEERS_FOR["kv"]:
                    for size, n in self.w.kv_sizes:
                        self.kv_files[(label, size)] = self.write_kv_keys(p, label, size, n)
            except Exception as e:  # noqa: BLE001 - one server failing must not stop the others
                self.skip[label] = f"setup failed: {type(e).__name__}: {e}"[:300]
                log(f"{label}: setup failed: {e}")
        if self.rows_with_wrk() and not self.wrk:
            for label in list(self.peers):
                self.skip.setdefault(label, "wrk not installed (bash bench/run.sh installs it)")
        if "dcp" in self.rows and importlib.util.find_spec("torch") is None:
            self.notes.append("dcp: PyTorch is not installed (scripts/install-test-deps.sh installs the CPU build)")

    def rows_with_wrk(self) -> bool:
        return bool({"put4k", "mix"} & set(self.rows))

    def pathfile(self, peer: Peer, name: str, method: str) -> str:
        return os.path.join(self.s.bench_dir, "wl-paths", f"{peer.label.replace(' ', '-')}-{name}-{method}.txt")

    @staticmethod
    def key(name: str, i: int) -> str:
        return f"{name}/{i:06d}.bin"

    def write_paths(self, peer: Peer, name: str, n: int, methods) -> None:
        for m in methods:
            path = self.pathfile(peer, name, m)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.writelines(peer.path(m, self.key(name, i)) + "\n" for i in range(n))

    def preload_mix(self, peer: Peer, label: str) -> None:
        n = self.w.mix_keys
        self.mix_tags[label] = {"preload"}

        def put_range(lo: int) -> None:
            conn = http.client.HTTPConnection(HOST, peer.port, timeout=30)
            for i in range(lo, n, 8):
                status, data = http_do(peer, "PUT", peer.path("PUT", self.key("mix", i)), small_body(i, "preload"),
                                       conn)
                if status // 100 != 2:
                    raise RuntimeError(f"pre-load PUT answered {status}: {data[:200]!r}")
            conn.close()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(put_range, range(8)))

    def kv_key(self, size: int, i: int) -> str:
        model = {256 << 10: "llama70b-layer", 5 * MIB // 2: "llama8b-tp4", 10 * MIB: "llama70b-tp8"}.get(size, "m")
        h = hashlib.blake2b(f"{size}/{i}".encode(), digest_size=8).hexdigest()
        return f"kv/{model}@{i % 8:x}@{i // 8 % 4:x}@{h}"

    def kv_offset(self, size: int, i: int) -> int:
        return (i * 7919 * 4096 + size // 3) % (KV_SRC_SIZE - size) // 4096 * 4096

    def write_kv_keys(self, peer: Peer, label: str, size: int, n: int) -> str:
        path = os.path.join(self.s.bench_dir, "wl-paths", f"{peer.label.replace(' ', '-')}-kv-{size}.tsv")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            for i in range(n):
                k = self.kv_key(size, i)
                f.write(f"{size}\t{self.kv_offset(size, i)}\t{peer.path('PUT', k)}\t{peer.path('HEAD', k)}\t"
                        f"{peer.path('GET', k)}\n")
        return path

    # ------------------------------------------------------------ runs
    def wrk_run(self, peer: Peer, lua: str, env: dict, dur: int) -> dict:
        cmd = [self.wrk or "wrk", f"-t{self.s.wrk_threads}", f"-c{self.s.conn}", f"-d{dur}s", "--latency",
               "--timeout", "5s", "-s", os.path.join(common.CLIENTS, lua), peer.base + "/"]
        s0 = peer.cpu()
        r = run_client(cmd, timeout=dur + 30, env={**env, "WRK_THREADS": str(self.s.wrk_threads)})
        scpu = peer.cpu() - s0
        if r.rc != 0:
            return _fail(_peer_dead(peer) or _client_failed(r, "wrk"))
        d = parse_wrk(r.out)
        if not d["rps"] or not d["requests"]:
            return _fail(f"wrk output not understood: {(r.out + r.err)[-300:]}")
        if d["non2xx"]:
            return _fail(f"{d['non2xx']} of {d['requests']} responses were not 2xx/3xx", **d)
        d["sock_errors"] = sum(int(x) for x in re.findall(r"\d+", d["socket_errors"]))
        m = re.search(r"timeout (\d+)", d["socket_errors"])
        d["timeouts"] = int(m.group(1)) if m else 0
        d.update(ok=True, server_cores=scpu / dur, wrk_cores=r.cpu / dur, srv_cpu=scpu, cli_cpu=r.cpu,
                 us_per_req_server=scpu / d["requests"] * 1e6)
        if isinstance(peer, WlAtoll):  # recorded now: the data directory is gone when the rows are judged
            d["segment_mib"] = peer.segment_bytes() / MIB
        return d

    def put4k(self, label: str, dur: int | None = None) -> dict:
        peer = self.peers[label]
        n, start = self.w.p4k_keys, self.p4k_next[label]
        tag = "r" + secrets.token_hex(4)
        d = self.wrk_run(peer, "put_cycle.lua", {"WRK_PATHS": self.pathfile(peer, "p4k", "PUT"),
                                                 "WRK_START": str(start), "WRK_RUN": tag}, dur or self.s.dur)
        if not d.get("ok"):
            return d
        done = d["requests"]
        self.p4k_next[label] = (start + done + 2 * self.s.conn) % n  # past anything still in flight at the end
        # keys written in this run: start .. start+done-1 (mod n), less the last ones, which may have been in flight
        span = min(done, n) - 2 * self.s.conn
        sample = [(start + j) % n for j in random.sample(range(span), min(32, span))] if span > 0 else []
        problem = self.check_bodies(peer, "p4k", sample, lambda i, body: body == small_body(i, tag))
        if problem:
            return _fail(problem, **d)
        d["checked"] = len(sample)
        return d

    def mix(self, label: str) -> dict:
        peer = self.peers[label]
        tag = "m" + secrets.token_hex(4)
        self.mix_tags[label].add(tag)
        d = self.wrk_run(peer, "mix.lua", {"WRK_PUTS": self.pathfile(peer, "mix", "PUT"),
                                           "WRK_GETS": self.pathfile(peer, "mix", "GET"), "WRK_RUN": tag}, self.s.dur)
        if not d.get("ok"):
            return d
        tags = self.mix_tags[label]

        def valid(i: int, body: bytes) -> bool:
            m = BODY_RE.match(body[:64])
            return (m is not None and int(m.group(1)) == i and m.group(2).decode() in tags
                    and body == small_body(i, m.group(2).decode()))
        sample = random.sample(range(self.w.mix_keys), min(32, self.w.mix_keys))
        problem = self.check_bodies(peer, "mix", sample, valid)
        if problem:
            return _fail(problem, **d)
        d["checked"] = len(sample)
        return d

    def check_bodies(self, peer: Peer, name: str, sample, valid) -> str | None:
        conn = http.client.HTTPConnection(HOST, peer.port, timeout=30)
        try:
            for i in sample:
                status, body = http_do(peer, "GET", peer.path("GET", self.key(name, i)), conn=conn)
                if status != 200 or not valid(i, body):
                    return (f"read-back of {self.key(name, i)}: HTTP {status}, {len(body)} bytes, "
                            f"starts {body[:64]!r}")
        finally:
            conn.close()
        return None

    def kv(self, label: str, size: int, phase: str) -> dict:
        peer = self.peers[label]
        keyfile = self.kv_files[(label, size)]
        conc = KV_PUT_CONC if phase == "put" else self.w.kv_conc
        s0 = peer.cpu()
        r = run_client([common.PY, os.path.join(common.CLIENTS, "kv.py"), phase, HOST, str(peer.port), keyfile,
                        self.src.path(KV_SRC_SIZE), "--conc", str(conc), "--seconds", str(self.w.kv_probe_s)],
                       timeout=180 + self.w.kv_probe_s)
        scpu = peer.cpu() - s0
        if r.rc != 0:
            return _fail(_peer_dead(peer) or _client_failed(r, "kv client"))
        d = json.loads(r.out.strip().splitlines()[-1])
        if not d["ok"]:
            return _fail(f"kv client: {d['problem']}")
        d.update(gbps=d["bytes"] / d["secs"] / 1e9, chunks_per_s=d["chunks"] / d["secs"], srv_cpu=scpu,
                 cli_cpu=r.cpu, server_cores=scpu / d["secs"], client_cores=d["cpu"] / d["secs"])
        if phase == "put":
            problem = self.check_kv(peer, size, keyfile)
            if problem:
                return _fail(problem, **d)
        return d

    def check_kv(self, peer: Peer, size: int, keyfile: str) -> str | None:
        """Four keys read back in full and compared with their slice of the source."""
        with open(keyfile) as f:
            lines = [ln.rstrip("\n").split("\t") for ln in f]
        with open(self.src.path(KV_SRC_SIZE), "rb") as f:
            for _size, off, _put, _head, get in random.sample(lines, min(4, len(lines))):
                f.seek(int(off))
                want = hashlib.md5(f.read(size)).hexdigest()
                status, body = http_do(peer, "GET", get)
                if status != 200 or hashlib.md5(body).hexdigest() != want:
                    return f"read-back of a {human_size(size)} chunk: HTTP {status}, {len(body)} bytes, content differs"
        return None

    def dcp(self, mode: str) -> dict:
        peer = self.peers[ATOLL_BIG]
        if mode == "dcp":
            self.dcp_count += 1
            prefix = f"ckpt-{self.dcp_count}"
            extra = ["--mib", str(self.w.dcp_mib)]
        else:
            if self.dcp_last is None:
                return _fail("no DCP checkpoint to send again (the DCP case failed)")
            prefix, extra = f"plain-{self.dcp_count}", ["--source", self.dcp_last]
        s0 = peer.cpu()
        r = run_client([common.PY, os.path.join(common.CLIENTS, "dcp.py"), mode, "--endpoint", peer.base,
                        "--bucket", BUCKET, "--prefix", prefix, "--ak", ACCESS_KEY, "--sk", SECRET_KEY,
                        "--threads", str(self.w.dcp_threads)] + extra, timeout=600)
        scpu = peer.cpu() - s0
        if r.rc != 0:
            return _fail(_peer_dead(peer) or _client_failed(r, "dcp client"))
        d = json.loads(r.out.strip().splitlines()[-1])
        if not d["ok"]:
            return _fail(f"dcp client: {d['problem']}")
        if mode == "dcp":
            self.delete_prefix(peer, self.dcp_last)  # keep one checkpoint of each kind: the disk stays small
            self.dcp_last = prefix
        else:
            self.delete_prefix(peer, f"plain-{self.dcp_count - 1}")
        d.update(srv_cpu=scpu, cli_cpu=r.cpu, srv_cpu_per_gib=scpu / (d["bytes"] / (1 << 30)))
        return d

    def delete_prefix(self, peer, prefix: str | None) -> None:
        if not prefix:
            return
        c = peer.client()
        for o in c.list_objects_v2(Bucket=BUCKET, Prefix=prefix + "/").get("Contents", []):
            c.delete_object(Bucket=BUCKET, Key=o["Key"])

    # ------------------------------------------------------------ rows
    def case(self, shown: str, peer_label: str, fn, note: str = "") -> Case:
        p = self.peers.get(peer_label)
        if p is None or peer_label in self.skip:
            return Case(shown, lambda: {}, None, note, skip=self.skip.get(peer_label, "not started"))
        return Case(shown, fn, p, note)

    def build(self) -> list[Bench]:
        s, w = self.s, self.w
        out = []

        def store(label):
            p = self.peers.get(label)
            return p.store_note if isinstance(p, WlAtoll) else (lambda m: "dav_methods PUT (no fsync)")

        if "put4k" in self.rows:
            out.append(Bench(
                "put4k", f"4 KiB PUT, {s.conn} connections (wrk + put_cycle.lua over {w.p4k_keys:,} keys, {s.dur}s)",
                "rps", "req/s",
                [self.case(lab, lab, lambda lab=lab: self.put4k(lab)) for lab in PEERS_FOR["put4k"]],
                lambda b, summ, _all: judge_wrk(b, summ, NGINX, "nginx dav", 5.0, {ATOLL, ATOLL2}, store)))
        if "mix" in self.rows:
            out.append(Bench(
                "mix", f"4 KiB 80% GET / 20% PUT, {s.conn} connections (wrk + mix.lua over {w.mix_keys:,} keys, "
                f"{s.dur}s)", "rps", "req/s",
                [self.case(lab, lab, lambda lab=lab: self.mix(lab)) for lab in PEERS_FOR["mix"]],
                lambda b, summ, _all: judge_wrk(b, summ, PERFILE, "per-file", 3.0, {ATOLL}, store)))
        if "kv" in self.rows:
            cases = []
            for size, n in w.kv_sizes:
                for phase in ("put", "probe"):
                    for lab in (NGINX, ATOLL_BIG):
                        what = (f"PUT ×{KV_PUT_CONC}, {n} keys" if phase == "put"
                                else f"HEAD+GET ×{w.kv_conc}, {w.kv_probe_s:g}s")
                        shown = NGINX if lab == NGINX else ATOLL
                        cases.append(self.case(f"{shown} · {human_size_kv(size)} {what}", lab,
                                               lambda lab=lab, size=size, phase=phase: self.kv(lab, size, phase)))
            out.append(Bench("kv", "KV cache (LMCache S3 shape, keys model@rank@group@hash): PUT, then HEAD-then-GET "
                             "probe", "gbps", "GB/s", cases, judge_kv))
        if "dcp" in self.rows:
            no_torch = importlib.util.find_spec("torch") is None
            cases = [self.case(f"{ATOLL} · DCP (FsspecWriter/Reader, s3fs)", ATOLL_BIG, lambda: self.dcp("dcp"),
                               f"{w.dcp_mib} MiB state dict, thread_count {w.dcp_threads}"),
                     self.case(f"{ATOLL} · plain PUT/GET (http.client)", ATOLL_BIG, lambda: self.dcp("plain"),
                               f"the DCP files, {w.dcp_threads} in parallel, .metadata last")]
            if no_torch:
                for c in cases:
                    c.skip = "PyTorch not installed (scripts/install-test-deps.sh)"
            out.append(Bench("dcp", "Checkpoint: torch.distributed.checkpoint save + load, bit-exact", "save_gbps",
                             "GB/s save", cases, judge_dcp))
        return out


def human_size_kv(size: int) -> str:
    return "2.5 MiB" if size == 5 * MIB // 2 else human_size(size)


# ------------------------------------------------------------------ judging

def _ratio_rows(b: Bench, summ: dict, ref_label: str, ref_name: str, goal_for, details) -> list[Row]:
    rows = []
    ref = summ.get(ref_label) if (summ.get(ref_label) or {}).get("n") else None
    for c in b.cases:
        m = summ.get(c.label) or {}
        if not m.get("n"):
            rows.append(_unmeasured(b, c, summ))
            continue
        v = m.get(b.value_key)
        refv = ref.get(b.value_key) if ref else None
        ratio = v / refv if v is not None and refv else None
        g = goal_for(c)
        if c.label == ref_label:
            goal, status = "reference", "ref"
        elif g is None:
            goal, status = "—", "info"
        else:
            goal, status = g[0], ("NOREF" if ratio is None else ("PASS" if g[1](m, ratio) else "MISS"))
        errs = m.get("errors") or []
        rows.append(Row(b.title, c.label, b.show(v), f"{ratio:.2f}× {ref_name}" if ratio is not None
                        else f"n/a (no {ref_name})", goal, status,
                        _join(c.note, details(c, m), _spread(b, m), _other(m),
                              f"{len(errs)} failed runs: {errs[0]}" if errs else "")))
    return rows


def judge_wrk(b: Bench, summ: dict, ref_label: str, ref_name: str, factor: float, judged: set[str], store) -> list[Row]:
    def goal(c):
        if c.label in judged:
            return f"≥{factor:g}× {ref_name}", lambda m, r: r >= factor
        return None

    def details(c, m):
        return _join(_sock(m), store(c.label)(m), f"p50 {fmt_num(m.get('p50_ms'))} / p99 {fmt_num(m.get('p99_ms'))} ms",
                     f"server {fmt_num(m.get('server_cores'))} cores, wrk {fmt_num(m.get('wrk_cores'))}",
                     f"{fmt_num(m.get('us_per_req_server'), 1)} µs server CPU/req",
                     f"{m['checked']:.0f} keys read back per run" if m.get("checked") else "")
    return _ratio_rows(b, summ, ref_label, ref_name, goal, details)


def judge_kv(b: Bench, summ: dict, _all: dict) -> list[Row]:
    rows = []
    for atoll_case in b.cases:
        if atoll_case.label.startswith(NGINX):
            continue
        ref_label = NGINX + atoll_case.label[len(ATOLL):]
        sub = dataclasses.replace(b, cases=[c for c in b.cases if c.label in (ref_label, atoll_case.label)])
        judged = "2.5 MiB HEAD+GET" in atoll_case.label

        def goal(cc, judged=judged):
            if cc.label.startswith(ATOLL) and judged:
                return "≥0.9× nginx", lambda m, r: r >= 0.9
            return None

        def details(cc, m):
            lat = (f"HEAD p50 {fmt_num(m.get('head_p50_ms'))} / p99 {fmt_num(m.get('head_p99_ms'))} ms, "
                   f"GET p50 {fmt_num(m.get('get_p50_ms'))} / p99 {fmt_num(m.get('get_p99_ms'))} ms"
                   if m.get("get_p50_ms") is not None else
                   f"PUT p50 {fmt_num(m.get('put_p50_ms'))} / p99 {fmt_num(m.get('put_p99_ms'))} ms")
            return _join(f"{fmt_num(m.get('chunks_per_s'))} chunks/s", lat,
                         f"server {fmt_num(m.get('server_cores'))} cores, client {fmt_num(m.get('client_cores'))}")
        rows += _ratio_rows(sub, summ, ref_label, "nginx", goal, details)
    return rows


def judge_dcp(b: Bench, summ: dict, _all: dict) -> list[Row]:
    rows = []
    for c in b.cases:
        m = summ.get(c.label) or {}
        if not m.get("n"):
            rows.append(_unmeasured(b, c, summ))
            continue
        errs = m.get("errors") or []
        common_details = _join(c.note, f"{m['bytes'] / MIB:.0f} MiB in "
                               f"{m.get('files', 0):.0f} objects", _other(m),
                               f"{len(errs)} failed runs: {errs[0]}" if errs else "")
        rows.append(Row(b.title, c.label + " save", f"{fmt_num(m.get('save_gbps'))} GB/s", "—", "— (no target)",
                        "info", _join(f"committed (marker acknowledged) after {fmt_num(m.get('marker_s'))} s",
                                      f"server {fmt_num(m.get('srv_cpu_per_gib'))} CPU-s/GiB save+load",
                                      _spread(b, m), common_details)))
        rows.append(Row(b.title, c.label + " load", f"{fmt_num(m.get('load_gbps'))} GB/s", "—", "— (no target)",
                        "info", _join("bit-exact (torch.equal)" if "DCP" in c.label else "MD5 of every file equal",
                                      f"{fmt_num(m.get('load_s'))} s")))
    return rows


def stop_all() -> None:
    for p in _started[::-1]:  # every server first: removing a data directory of ~100k files takes a while
        try:
            p.stop()
        except Exception:  # noqa: BLE001
            pass
    for p in _started:
        root = getattr(p, "root", None) or (p.dir if isinstance(p, WlNginx) else None)
        if root:
            shutil.rmtree(root, ignore_errors=True)
    _started.clear()
    for d in _scratch_dirs:
        shutil.rmtree(d, ignore_errors=True)
    _scratch_dirs.clear()
