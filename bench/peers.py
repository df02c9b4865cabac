"""The servers under test: nginx (reference), Atoll, moto_server. All on 127.0.0.1, free ports.

A peer knows how to start/stop itself, its process-tree CPU, and how to address the two benchmark
objects ("big" and "small") for GET, HEAD and PUT. nginx serves the same source files from the same
filesystem; the S3 peers get them uploaded through the S3 API (big one as a single PutObject via a
presigned PUT with curl, so its ETag is a plain MD5).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time

from . import common
from .common import HOST, Settings, free_port, spawn_server, stop_group, tail, tree_cpu, wait_http
from .data import SourceFiles

ACCESS_KEY = "AKIDBENCHATOLL000001"
SECRET_KEY = "benchSecretKey0000000000000000000000000x"  # 40 chars, local throwaway credentials
ACCOUNT_NAME = "atollbench"  # the root identity's Azure Blob account (bench/blobpeer.py), equally throwaway
ACCOUNT_KEY = "YXRvbGwtYmVuY2gtYmxvYi1rZXktMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMA=="  # 64 bytes
REGION = "us-east-1"
OBJ_BUCKET = "bench"
SMALL_SIZE = 4096
EMPTY_SIZE = 0   # HEAD target: wrk waits for Content-Length body bytes after a HEAD response, so HEAD a 0-byte object
PRESIGN_TTL = 3600

NGINX_CONF = """\
worker_processes {workers};
user root;
daemon off;
master_process on;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  default_type application/octet-stream;
  sendfile on;
  tcp_nopush off;
  tcp_nodelay on;
  keepalive_timeout 75s;
  keepalive_requests 10000000;
  client_max_body_size 0;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  server {{
    listen {host}:{port} reuseport backlog=4096;
    location /src/ {{ root {bench}; }}
    location /put/ {{ root {bench}/nginx; dav_methods PUT; create_full_put_path on; client_body_buffer_size 128k; }}
  }}
}}
"""


class Peer:
    kind = "?"

    def __init__(self, settings: Settings, label: str):
        self.s = settings
        self.label = label
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.error: str | None = None
        self.log_path = os.path.join(settings.bench_dir, "logs", label.replace(" ", "-") + ".log")
        os.makedirs(os.path.dirname(self.log_path), exist_ok=True)
        with open(self.log_path, "w"):
            pass
        self.sizes: dict[str, int] = {}

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"

    def command(self) -> tuple[list[str], dict]:
        raise NotImplementedError

    def start(self, timeout: float = 30.0) -> bool:
        cmd, env = self.command()
        self.proc = spawn_server(cmd, self.log_path, env=env)
        if not wait_http(self.port, timeout, self.proc):
            self.error = f"did not answer on {self.base} within {timeout:.0f}s; log tail:\n{tail(self.log_path)}"
            self.stop()
            return False
        return True

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc)

    def cpu(self) -> float:
        return tree_cpu(self.proc.pid) if self.proc else 0.0

    # object addressing (overridden)
    def get_url(self, obj: str) -> str: raise NotImplementedError
    def head_url(self, obj: str) -> str: raise NotImplementedError
    def put_url(self, key: str) -> str: raise NotImplementedError
    def put_check(self, key: str, size: int, md5: str, etag: str | None) -> str | None: raise NotImplementedError
    def put_delete(self, key: str) -> None: raise NotImplementedError


class NginxPeer(Peer):
    kind = "nginx"

    def __init__(self, settings: Settings, workers: int, src: SourceFiles):
        super().__init__(settings, f"nginx w{workers}")
        self.workers = workers
        self.src = src
        self.dir = os.path.join(settings.bench_dir, f"nginx-w{workers}")
        self.put_dir = os.path.join(settings.bench_dir, "nginx", "put")

    def command(self):
        tmp = os.path.join(self.dir, "tmp")
        for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            os.makedirs(os.path.join(tmp, d), exist_ok=True)
        os.makedirs(self.put_dir, exist_ok=True)
        conf = os.path.join(self.dir, "nginx.conf")
        with open(conf, "w") as f:
            f.write(NGINX_CONF.format(workers=self.workers, dir=self.dir, tmp=tmp, host=HOST, port=self.port,
                                      bench=self.s.bench_dir))
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        return [nginx, "-p", self.dir, "-e", os.path.join(self.dir, "error.log"), "-c", conf], {}

    def setup_objects(self, src: SourceFiles, big_size: int | None) -> None:
        self.sizes = {"small": SMALL_SIZE, "empty": EMPTY_SIZE, **({"big": big_size} if big_size else {})}

    def _path(self, obj: str) -> str:
        return "/src/" + os.path.basename(self.src.path(self.sizes[obj]))

    def get_url(self, obj):
        return self.base + self._path(obj)

    head_url = get_url

    def put_url(self, key):
        return f"{self.base}/put/{key}"

    def put_check(self, key, size, md5, etag):
        try:
            got = os.path.getsize(os.path.join(self.put_dir, key))
        except OSError:
            return "PUT file missing"
        return None if got == size else f"PUT file has {got} bytes, sent {size}"

    def put_delete(self, key):
        try:
            os.unlink(os.path.join(self.put_dir, key))
        except OSError:
            pass


class S3Peer(Peer):
    """Anything speaking path-style S3 with SigV4. Only the S3 API is used, so Atoll and moto share it."""

    def __init__(self, settings, label):
        super().__init__(settings, label)
        self._client = None
        self.urls: dict[tuple[str, str], str] = {}

    def client(self):
        if self._client is None:
            import boto3
            from botocore.config import Config
            self._client = boto3.client(
                "s3", endpoint_url=self.base, aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                region_name=REGION,
                config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                              retries={"max_attempts": 2, "mode": "standard"}, max_pool_connections=16,
                              connect_timeout=5, read_timeout=120,
                              request_checksum_calculation="when_required",
                              response_checksum_validation="when_required"))
        return self._client

    def presign(self, op: str, bucket: str, key: str) -> str:
        return self.client().generate_presigned_url(op, Params={"Bucket": bucket, "Key": key}, ExpiresIn=PRESIGN_TTL)

    def ensure_bucket(self, bucket: str) -> None:
        c = self.client()
        try:
            c.head_bucket(Bucket=bucket)
            return
        except c.exceptions.ClientError:
            pass
        try:
            c.create_bucket(Bucket=bucket)
        except c.exceptions.ClientError as e:
            if e.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise

    def curl_put(self, url: str, path: str, timeout: float) -> tuple[str, str]:
        r = common.run_client(["curl", "-sS", "-o", "/dev/null", "-H", "Expect:", "-w", "%{http_code} %header{etag}",
                               "-T", path, url], timeout=timeout)
        if r.rc != 0:
            raise RuntimeError(f"curl PUT failed rc={r.rc}: {r.err.strip()[:300]}")
        code, _, etag = r.out.strip().partition(" ")
        return code, etag.strip().strip('"')

    def setup_objects(self, src: SourceFiles, big_size: int | None) -> None:
        """Bucket + small object (PutObject via boto3) + big object (single PutObject, presigned, curl -T).
        big_size None: only the small one (and PUT targets still work)."""
        c = self.client()
        self.ensure_bucket(OBJ_BUCKET)
        with open(src.path(SMALL_SIZE), "rb") as f:
            c.put_object(Bucket=OBJ_BUCKET, Key="small.bin", Body=f.read())
        c.put_object(Bucket=OBJ_BUCKET, Key="empty.bin", Body=b"")
        self.sizes = {"small": SMALL_SIZE, "empty": EMPTY_SIZE}
        if big_size:
            code, etag = self.curl_put(self.presign("put_object", OBJ_BUCKET, "big.bin"), src.path(big_size),
                                       timeout=60 + big_size / 20e6)
            if not code.startswith("2"):
                raise RuntimeError(f"PUT of the {big_size}-byte object answered HTTP {code}")
            if etag != src.md5(big_size):
                raise RuntimeError(f"{big_size}-byte object: ETag {etag!r} is not its MD5 {src.md5(big_size)}")
            self.sizes["big"] = big_size
        for obj in self.sizes:
            self.urls[("GET", obj)] = self.presign("get_object", OBJ_BUCKET, obj + ".bin")
            self.urls[("HEAD", obj)] = self.presign("head_object", OBJ_BUCKET, obj + ".bin")

    def get_url(self, obj):
        return self.urls[("GET", obj)]

    def head_url(self, obj):
        return self.urls[("HEAD", obj)]

    def put_url(self, key):
        return self.presign("put_object", OBJ_BUCKET, key)

    def put_check(self, key, size, md5, etag):
        return None if etag == md5 else f"ETag {etag!r} != MD5 {md5}"

    def put_delete(self, key):
        self.client().delete_object(Bucket=OBJ_BUCKET, Key=key)


class AtollPeer(S3Peer):
    kind = "atoll"

    def __init__(self, settings, workers: int, data_dir: str, label: str | None = None):
        super().__init__(settings, label or f"atoll w{workers}")
        self.workers = workers
        self.data_dir = data_dir
        self.blob_port = free_port()  # every Atoll gets its own Blob port: the default 10000 would collide

    @staticmethod
    def base_command(settings: Settings) -> list[str] | None:
        if os.path.exists(settings.atoll_bin):
            return [settings.atoll_bin]
        if os.path.exists(os.path.join(common.REPO, "atoll", "cli", "main.py")):
            return [common.PY, "-c", "import sys; sys.argv[0] = 'atoll'; from atoll.cli.main import app; app()"]
        return None

    def command(self):
        os.makedirs(self.data_dir, exist_ok=True)
        cmd = self.base_command(self.s) + ["serve", "--data-dir", self.data_dir, "--s3-address",
                                           f"{HOST}:{self.port}", "--workers", str(self.workers)]
        # Admin API off: two Atoll peers run side by side and would both want the default admin port.
        return cmd, {"ATOLL_ROOT_ACCESS_KEY": ACCESS_KEY, "ATOLL_ROOT_SECRET_KEY": SECRET_KEY,
                     "ATOLL_ADMIN_ADDRESS": "off", "ATOLL_BLOB_LISTEN": f"{HOST}:{self.blob_port}",
                     "ATOLL_ROOT_ACCOUNT_NAME": ACCOUNT_NAME, "ATOLL_ROOT_ACCOUNT_KEY": ACCOUNT_KEY}


class MotoPeer(S3Peer):
    kind = "moto"

    def __init__(self, settings):
        super().__init__(settings, "moto")

    def command(self):
        return [common.PY, "-m", "moto.server", "-H", HOST, "-p", str(self.port)], {}


def wait_gone(peers, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(p.alive() for p in peers):
        time.sleep(0.05)
