"""The process model: ``--workers N`` serves one port from N processes sharing one store; SIGTERM lets in-flight
requests finish and refuses new connections; a dead worker is replaced; bad settings fail clearly at start.

Which worker answered is read from the request id: its first hex digits are the serving process's pid (see
``atoll/http/server.py``, ``_ID_PREFIX``: pid, then 6 hex digits of start time, then a 10-hex-digit counter).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import pytest

ATOLL = str(Path(sys.executable).parent / "atoll")
MiB = 1 << 20


# helpers ---------------------------------------------------------------------------------------------------
def pid_of_request(request_id: str) -> int:
    return int(request_id[:-16], 16)


def worker_pids(master: int, count: int, timeout: float = 15.0, exclude: set[int] = frozenset()) -> set[int]:
    """The master's children once there are ``count`` of them, none in ``exclude``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            children = {int(p) for p in Path(f"/proc/{master}/task/{master}/children").read_text().split()}
        except OSError:
            children = set()
        alive = {p for p in children if _state(p) not in ("Z", "X", "")}
        if len(alive) == count and not alive & exclude:
            return alive
        time.sleep(0.05)
    raise AssertionError(f"master {master} did not have {count} workers within {timeout}s")


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


class Conn:
    """One persistent connection, sending presigned requests; knows which worker it landed on."""

    def __init__(self, server) -> None:
        self.server = server
        self.presigner = server.client(signature_version="s3v4")
        self.http = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        self.pid = 0

    def call(self, operation: str, body: bytes | None = None, **params) -> tuple[int, dict, bytes]:
        method = {"put_object": "PUT", "create_bucket": "PUT", "delete_object": "DELETE", "delete_bucket": "DELETE",
                  "head_object": "HEAD", "head_bucket": "HEAD"}.get(operation, "GET")
        url = urlsplit(self.presigner.generate_presigned_url(operation, Params=params, ExpiresIn=600))
        self.http.request(method, f"{url.path}?{url.query}", body=body)
        response = self.http.getresponse()
        data = response.read()
        headers = {k.lower(): v for k, v in response.getheaders()}
        pid = pid_of_request(headers["x-amz-request-id"])
        assert self.pid in (0, pid), "a keep-alive connection moved to another process"
        self.pid = pid
        return response.status, headers, data

    def close(self) -> None:
        self.http.close()


def one_connection_per_worker(server, workers: set[int], tries: int = 60) -> dict[int, Conn]:
    found: dict[int, Conn] = {}
    for _ in range(tries):
        conn = Conn(server)
        conn.call("list_buckets")
        if conn.pid in found:
            conn.close()
        else:
            found[conn.pid] = conn
        if len(found) == len(workers):
            break
    assert set(found) == workers, f"connections landed on {set(found)}, workers are {workers}"
    return found


def pattern(seed: int, size: int) -> bytes:
    """``size`` bytes, a random MiB repeated with the seed and block number stamped on every copy."""
    block = random.Random(seed).randbytes(MiB)
    stamps = (f"{seed}:{i:08d};".encode() for i in range(size // MiB + 1))
    data = b"".join(stamp + block[len(stamp):] for stamp in stamps)[:size]
    assert len(data) == size
    return data


def connection_refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True


def wait_refused(port: int, timeout: float = 5.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if connection_refused(port):
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"new connections to {port} were still accepted {timeout}s after SIGTERM")


# serving with two workers ----------------------------------------------------------------------------------
@pytest.mark.timeout(120)
def test_two_workers_serve_one_port_and_share_the_store(new_server):
    server = new_server(workers=2)
    workers = worker_pids(server.proc.pid, 2)
    server.client().create_bucket(Bucket="shared")

    # Many concurrent clients, each on its own connections: all succeed, and both workers take a share.
    served: list[int] = []
    lock = threading.Lock()

    def client_job(n: int) -> None:
        s3 = server.client()
        for i in range(12):
            data = pattern(n * 100 + i, random.Random(n * 100 + i).choice([0, 100, 70_000, 300_000, 2 * MiB]))
            put = s3.put_object(Bucket="shared", Key=f"c{n}/{i}", Body=data)
            got = s3.get_object(Bucket="shared", Key=f"c{n}/{i}")
            assert got["Body"].read() == data and put["ETag"] == got["ETag"]
            with lock:
                served.extend(pid_of_request(r["ResponseMetadata"]["RequestId"]) for r in (put, got))

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(client_job, range(16)))
    assert len(served) == 16 * 12 * 2
    assert set(served) == workers, f"requests were served by {set(served)}, the workers are {workers}"

    # Read-after-write across processes: write on one worker, read on the other, for new keys, overwrites
    # and deletes, back to back.
    conns = one_connection_per_worker(server, workers)
    a, b = conns.values()
    rng = random.Random(11)
    for i in range(40):
        writer, reader = (a, b) if i % 2 else (b, a)
        key = f"raw/{i % 5}"
        data = pattern(i, rng.choice([1, 5000, 100_000, MiB + 7]))
        status, headers, _ = writer.call("put_object", body=data, Bucket="shared", Key=key)
        assert status == 200
        status, got_headers, got = reader.call("get_object", Bucket="shared", Key=key)
        assert status == 200 and got == data, f"round {i}: worker {reader.pid} served stale data after a write " \
                                              f"on worker {writer.pid}"
        assert got_headers["etag"] == headers["etag"]
        if i % 3 == 0:
            assert writer.call("delete_object", Bucket="shared", Key=key)[0] == 204
            status, _, _ = reader.call("head_object", Bucket="shared", Key=key)
            assert status == 404, f"round {i}: worker {reader.pid} still serves a key deleted on {writer.pid}"
            status, _, body = reader.call("list_objects_v2", Bucket="shared", Prefix=key)
            assert status == 200 and f"<Key>{key}</Key>".encode() not in body

    # Buckets too: a bucket looked up (and missing) on one worker, created on the other, is usable at once. A
    # deleted one takes no more writes anywhere at once; reads may see it for up to a second (bucket metadata
    # is eventually consistent in S3 too), but not longer.
    for i in range(5):
        name = f"late-bucket-{i}"
        assert b.call("head_bucket", Bucket=name)[0] == 404
        assert a.call("create_bucket", Bucket=name)[0] == 200
        status, _, body = b.call("put_object", body=b"x", Bucket=name, Key="k")
        assert status == 200, f"worker {b.pid} does not see bucket {name} created on worker {a.pid}: {body[:300]!r}"
        assert a.call("delete_object", Bucket=name, Key="k")[0] == 204
        assert a.call("delete_bucket", Bucket=name)[0] == 204
        status, _, body = b.call("put_object", body=b"y", Bucket=name, Key="k")
        assert status == 404 and b"NoSuchBucket" in body, f"worker {b.pid} wrote into bucket {name} deleted on " \
                                                          f"worker {a.pid}: {body[:300]!r}"
        deleted = time.monotonic()
        while b.call("list_objects_v2", Bucket=name)[0] != 404:
            assert time.monotonic() - deleted < 3, f"worker {b.pid} lists bucket {name} 3s after its deletion"
            time.sleep(0.1)
    for conn in conns.values():
        conn.close()
    assert "Traceback" not in server.log_text(), server.log_text()[-3000:]


@pytest.mark.timeout(60)
def test_killed_worker_is_replaced_and_service_continues(new_server):
    server = new_server(workers=2)
    s3 = server.client()
    s3.create_bucket(Bucket="phoenix")
    before = worker_pids(server.proc.pid, 2)
    victim = min(before)

    # Kill the victim in the middle of an upload: its temp file must not outlive it.
    conns = one_connection_per_worker(server, before)
    upload = conns[victim]
    url = urlsplit(upload.presigner.generate_presigned_url("put_object", Params={"Bucket": "phoenix", "Key": "cut"}))
    upload.http.putrequest("PUT", f"{url.path}?{url.query}")
    upload.http.putheader("Content-Length", str(64 * MiB))
    upload.http.endheaders()
    upload.http.send(pattern(3, 16 * MiB))
    tmp = Path(server.data_dir) / "tmp"
    deadline = time.monotonic() + 10
    while not any(name.endswith(f".{victim}") for name in os.listdir(tmp)):
        assert time.monotonic() < deadline, "the upload never reached a temp file"
        time.sleep(0.02)
    os.kill(victim, signal.SIGKILL)
    after = worker_pids(server.proc.pid, 2, exclude={victim})
    replacement = (after - before).pop()
    assert server.proc.poll() is None, "the master died with its worker"

    served = set()
    for i in range(40):  # fresh connections, spread over both processes by SO_REUSEPORT
        conn = Conn(server)
        status, _, _ = conn.call("put_object", body=f"v{i}".encode(), Bucket="phoenix", Key=f"k{i}")
        assert status == 200
        status, _, body = conn.call("get_object", Bucket="phoenix", Key=f"k{i}")
        assert (status, body) == (200, f"v{i}".encode())
        served.add(conn.pid)
        conn.close()
    assert served == after and replacement in served, f"served by {served}, workers {after}"
    left = [name for name in os.listdir(tmp) if name.endswith(f".{victim}")]
    assert not left, f"temp files of the killed worker are still there: {left}"
    for conn in conns.values():
        conn.close()
    assert server.stop() == 0


# graceful shutdown -----------------------------------------------------------------------------------------
@pytest.mark.timeout(90)
@pytest.mark.parametrize("workers,signal_to", [(2, "master"), (1, "group")])
def test_sigterm_finishes_a_slow_get_refuses_new_connections_and_exits_0(new_server, workers, signal_to):
    size = 256 * MiB
    server = new_server(workers=workers, extra_env={"ATOLL_SHUTDOWN_GRACE": "30"})
    s3 = server.client()
    s3.create_bucket(Bucket="drain")
    data = pattern(7, size)
    s3.put_object(Bucket="drain", Key="big", Body=data)
    want = hashlib.sha256(data).hexdigest()
    del data

    reader = Conn(server)
    url = urlsplit(reader.presigner.generate_presigned_url("get_object", Params={"Bucket": "drain", "Key": "big"}))
    reader.http.request("GET", f"{url.path}?{url.query}")
    response = reader.http.getresponse()
    assert response.status == 200
    got = hashlib.sha256(response.read(8 * MiB))
    idle = Conn(server)  # a keep-alive connection with nothing in flight must not hold the shutdown up
    assert idle.call("list_buckets")[0] == 200

    if signal_to == "master":
        os.kill(server.proc.pid, signal.SIGTERM)
    else:
        os.killpg(server.proc.pid, signal.SIGTERM)
    signalled = time.monotonic()
    wait_refused(server.port)
    assert server.proc.poll() is None, "the server exited with a response still in flight"
    idle.http.sock.settimeout(10)
    assert idle.http.sock.recv(1) == b"", "an idle keep-alive connection was not closed on SIGTERM"
    idle.close()

    # Read the rest slowly (about 2.5 s) while the server is stopping.
    received = 8 * MiB
    while received < size:
        chunk = response.read(4 * MiB)
        assert chunk, f"the response was cut at {received} of {size} bytes"
        got.update(chunk)
        received += len(chunk)
        time.sleep(0.04)
    assert got.hexdigest() == want
    finished = time.monotonic()
    reader.http.sock.settimeout(10)
    assert reader.http.sock.recv(1) == b"", "the connection stayed open after its response during shutdown"
    reader.close()
    assert server.proc.wait(30) == 0, server.log_text()[-3000:]
    assert time.monotonic() - finished < 5, "the server lingered after its last request finished"
    assert finished - signalled < 30
    assert "Traceback" not in server.log_text(), server.log_text()[-3000:]


@pytest.mark.timeout(60)
def test_shutdown_grace_is_a_deadline(new_server):
    """A client that stops reading cannot hold a stopping server past shutdown_grace: its response is cut and
    the server still exits 0."""
    server = new_server(extra_env={"ATOLL_SHUTDOWN_GRACE": "1"})
    s3 = server.client()
    s3.create_bucket(Bucket="stuck")
    s3.put_object(Bucket="stuck", Key="big", Body=pattern(5, 64 * MiB))
    stuck = Conn(server)
    url = urlsplit(stuck.presigner.generate_presigned_url("get_object", Params={"Bucket": "stuck", "Key": "big"}))
    stuck.http.request("GET", f"{url.path}?{url.query}")
    response = stuck.http.getresponse()
    assert response.status == 200 and len(response.read(MiB)) == MiB
    signalled = time.monotonic()
    os.killpg(server.proc.pid, signal.SIGTERM)
    assert server.proc.wait(15) == 0, server.log_text()[-3000:]
    assert time.monotonic() - signalled < 6, "the server overstayed its 1 s shutdown grace"
    received = MiB
    try:
        while chunk := response.read(MiB):
            received += len(chunk)
    except (ConnectionError, http.client.IncompleteRead):
        pass
    assert received < 64 * MiB, "the stuck response was completed, so this test proved nothing"
    stuck.close()


@pytest.mark.timeout(90)
def test_sigterm_during_a_slow_put_lets_it_commit(new_server):
    size = 256 * MiB
    server = new_server(workers=2, extra_env={"ATOLL_SHUTDOWN_GRACE": "30"})
    server.client().create_bucket(Bucket="drain")
    data = pattern(9, size)
    conn = Conn(server)
    url = urlsplit(conn.presigner.generate_presigned_url("put_object", Params={"Bucket": "drain", "Key": "big"}))
    conn.http.putrequest("PUT", f"{url.path}?{url.query}")
    conn.http.putheader("Content-Length", str(size))
    conn.http.endheaders()
    view = memoryview(data)
    conn.http.send(view[: 64 * MiB])

    os.killpg(server.proc.pid, signal.SIGTERM)
    wait_refused(server.port)
    for offset in range(64 * MiB, size, 8 * MiB):
        conn.http.send(view[offset: offset + 8 * MiB])
        time.sleep(0.05)
    response = conn.http.getresponse()
    assert response.status == 200, response.read()[:500]
    assert response.getheader("ETag").strip('"') == hashlib.md5(data).hexdigest()
    conn.close()
    assert server.proc.wait(30) == 0, server.log_text()[-3000:]

    server.start()
    got = server.client().get_object(Bucket="drain", Key="big")["Body"].read()
    assert got == data, "the PUT acknowledged during shutdown did not survive the restart"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_right_after_start_is_still_graceful(new_server, workers):
    """A stop that arrives while the server is still starting (the port is already open) must not kill it by
    the signal's default action: it exits 0 like any other stop."""
    server = new_server(workers=workers)
    code = server.stop()
    assert code == 0, f"exit status {code} for a SIGTERM just after start:\n{server.log_text()[-2000:]}"


# start-up errors -------------------------------------------------------------------------------------------
def serve(tmp: Path, *args: str, timeout: float = 20) -> tuple[int | None, str]:
    """Run ``atoll serve``; (exit status, output), or (None, output) if it was still running after ``timeout``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATOLL_")}
    # Not the default admin and Blob ports (9001, 10000): another server on the machine may hold them.
    env.update(ATOLL_ADMIN_ADDRESS=f"127.0.0.1:{free_port()}", ATOLL_BLOB_LISTEN=f"127.0.0.1:{free_port()}")
    # Off a terminal rich wraps at 80 columns, and a long tmp_path (pytest-xdist adds a level) would be cut
    # mid-name in the message the test looks for.
    env["COLUMNS"] = "1000"
    log = tmp / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([ATOLL, "serve", "--data-dir", str(tmp / "data"), *args], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
            code = None
    return code, log.read_text(errors="replace")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(180)
def test_bad_settings_and_busy_ports_fail_clearly(new_server, tmp_path):
    typo_top = tmp_path / "typo-top.toml"
    typo_top.write_text("wokers = 2\n")
    typo_nested = tmp_path / "typo-nested.toml"
    typo_nested.write_text("[timeouts]\nkeep_alvie = 5\n")
    address = ["--s3-address", f"127.0.0.1:{free_port()}"]
    cases = [
        (["--workers", "0", *address], "workers"),
        (["--s3-address", "nonsense"], "s3_address"),
        (["--s3-address", "127.0.0.1:99999"], "s3_address"),
        (["--config", str(typo_top), *address], "wokers"),
        (["--config", str(typo_nested), *address], "keep_alvie"),
        (["--config", str(tmp_path / "missing.toml"), *address], "missing.toml"),
    ]
    for args, mention in cases:
        code, output = serve(tmp_path, *args)
        assert code is not None, f"{args}: the server started anyway:\n{output}"
        assert code != 0, f"{args}: exit status 0 for a bad setting:\n{output}"
        assert "Traceback" not in output, f"{args}: traceback instead of a message:\n{output}"
        assert mention in output, f"{args}: the message does not name {mention!r}:\n{output}"

    # A port held by some other program.
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        code, output = serve(tmp_path, "--s3-address", f"127.0.0.1:{port}")
    assert code not in (0, None) and "Traceback" not in output, output
    assert f"127.0.0.1:{port}" in output and "in use" in output.lower(), output

    # A port held by another Atoll: SO_REUSEPORT must not let a second server, with another data directory,
    # silently take half of the first one's connections.
    running = new_server()
    code, output = serve(tmp_path, "--s3-address", f"127.0.0.1:{running.port}", timeout=10)
    assert code is not None, f"a second Atoll started on the port of a running one:\n{output}"
    assert code != 0 and "in use" in output.lower() and "Traceback" not in output, output
