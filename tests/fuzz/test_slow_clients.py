"""Slow and idle clients: each is cut off by the timeout meant for it, and fifty of them at once do not slow down
a normal client.

One private server with short timeouts (keep-alive 2 s, request head 2 s, stall 3 s). The server checks its
timeouts once a second, so a connection is closed between its timeout and about a second later; the windows below
allow that, plus scheduling slack on a loaded 2-core machine.
"""

from __future__ import annotations

import gc
import http.client
import json
import os
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest

from harness import AtollProcess
from fuzzwire import Signer, Wire

KEEP_ALIVE = 2.0
HEAD_TIMEOUT = 2.0
STALL = 3.0
SWEEP = 1.0  # how often the server looks for timed-out connections
SLACK = 1.0
BUCKET = "slow"
BIG = 64 << 20

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def server(workdir):
    root = tempfile.mkdtemp(prefix="slow-", dir=workdir)
    atoll = AtollProcess(data_dir=os.path.join(root, "data"), extra_env={
        "ATOLL_KEEP_ALIVE_TIMEOUT": str(KEEP_ALIVE), "ATOLL_REQUEST_HEAD_TIMEOUT": str(HEAD_TIMEOUT),
        "ATOLL_STALL_TIMEOUT": str(STALL)})
    atoll.start()
    s3 = atoll.client()
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key="small", Body=b"s" * 4096)
    with open(os.path.join(root, "big"), "wb") as f:
        f.truncate(BIG)  # sparse: cheap to write here, still 64 MiB for the server to store and send
    s3.upload_file(os.path.join(root, "big"), BUCKET, "big")
    yield atoll
    atoll.kill()


@pytest.fixture(scope="module")
def signer(server):
    return Signer(server.port, server.access_key, server.secret_key)


def seconds_until_closed(wire: Wire, limit: float) -> float:
    """Wait (reading and discarding anything that arrives) until the server closes; seconds waited."""
    started = time.monotonic()
    wire.sock.settimeout(0.2)
    while time.monotonic() - started < limit:
        try:
            if wire.sock.recv(1 << 20) == b"":
                return time.monotonic() - started
        except (socket.timeout, TimeoutError):
            continue
        except ConnectionResetError:
            return time.monotonic() - started
    raise AssertionError(f"the server kept the connection open for more than {limit} s")


def access_log(server: AtollProcess) -> list[dict]:
    time.sleep(0.7)  # flushed every 0.5 s
    path = Path(server.data_dir, "logs", "access.log")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_idle_keep_alive_connections_are_closed(server, signer):
    used = Wire(server.port)
    used.send(signer.sign("GET", f"/{BUCKET}/small").raw())
    assert used.reply("GET").status == 200
    never_used = Wire(server.port)
    waited = seconds_until_closed(used, KEEP_ALIVE + SWEEP + SLACK + 2)
    assert KEEP_ALIVE - 0.5 <= waited <= KEEP_ALIVE + SWEEP + SLACK, f"idle connection closed after {waited:.2f} s"
    assert never_used.closed_by_server(SWEEP + SLACK), "a connection that never sent a byte was kept open"
    used.close()
    never_used.close()


def test_slowloris_head_gets_408(server, signer):
    head = signer.sign("GET", f"/{BUCKET}/small").raw()
    wire = Wire(server.port)
    started = time.monotonic()
    answer = b""
    try:
        for byte in head[:20]:  # one header byte a second: never the whole head
            if not wire.send(bytes([byte])):
                break
            wire.sock.settimeout(1.0)
            try:
                chunk = wire.sock.recv(65536)
            except (socket.timeout, TimeoutError):
                continue
            except ConnectionResetError:
                break
            answer += chunk
            if not chunk or answer.endswith(b"</Error>"):
                break
        waited = time.monotonic() - started
    finally:
        wire.close()
    assert HEAD_TIMEOUT - 0.5 <= waited <= HEAD_TIMEOUT + SWEEP + SLACK, f"slowloris cut off after {waited:.2f} s"
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    if answer:
        assert b"<Code>RequestTimeout</Code>" in answer, answer


def test_stalled_upload_is_dropped_and_stores_nothing(server, signer):
    body = os.urandom(1 << 20)
    request = signer.sign("PUT", f"/{BUCKET}/stalled", body=body, payload="UNSIGNED-PAYLOAD").raw()
    wire = Wire(server.port)
    wire.send(request[: len(request) - len(body) + 200_000])  # the head and a fifth of the body, then nothing
    waited = seconds_until_closed(wire, STALL + SWEEP + SLACK + 3)
    wire.close()
    assert STALL - 0.5 <= waited <= STALL + SWEEP + SLACK, f"stalled upload dropped after {waited:.2f} s"
    check = Wire(server.port)
    check.send(signer.sign("HEAD", f"/{BUCKET}/stalled").raw())
    assert check.reply("HEAD").status == 404, "a body that never finished was stored"
    check.close()
    tmp = os.path.join(server.data_dir, "tmp")
    deadline = time.monotonic() + 3  # the temp file is removed off the event loop, just after the drop
    while os.listdir(tmp) and time.monotonic() < deadline:
        time.sleep(0.05)
    leftovers = os.listdir(tmp)
    assert not leftovers, f"temp files of the dropped upload were left behind: {leftovers}"


def test_an_early_answer_to_a_large_upload_reaches_the_client_intact(server, signer):
    """A PUT refused before its body is read (here: a wrong signature on a 48 MiB body sent without Expect) gets
    its 403, not a reset: the server half-closes after the answer and discards the rest of the body until the
    client is done (a lingering close). Closing at once would reset the connection under the client's send."""
    body_size = 48 << 20
    request = signer.sign("PUT", f"/{BUCKET}/refused", body=b"", payload="UNSIGNED-PAYLOAD").replace(
        "Content-Length", str(body_size)).replace("Authorization", signer.sign(
            "PUT", f"/{BUCKET}/other", payload="UNSIGNED-PAYLOAD").header("Authorization")).raw()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(request)
    chunk = b"\0" * (1 << 20)
    for _ in range(body_size // len(chunk)):
        sock.sendall(chunk)  # a reset would raise here (EPIPE / ECONNRESET) on the tens of MiB after the answer
    answer = b""
    while True:
        data = sock.recv(1 << 16)
        if not data:
            break
        answer += data
    sock.close()
    head, _, rest = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 403"), head[:200]
    assert b"<Code>SignatureDoesNotMatch</Code>" in rest
    assert b"connection: close" in head.lower()


def test_client_that_never_reads_a_large_get_is_dropped(server, signer):
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)  # fill up fast, then read nothing
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(signer.sign("GET", f"/{BUCKET}/big", headers={"User-Agent": "never-reads"}).raw())
    time.sleep(STALL + SWEEP + SLACK + 0.5)
    received = 0
    sock.settimeout(5)
    try:
        while chunk := sock.recv(1 << 20):
            received += len(chunk)
    except ConnectionResetError:
        pass
    finally:
        sock.close()
    assert received < BIG, "the whole object arrived although the client stopped reading"
    entries = [e for e in access_log(server) if e["agent"] == "never-reads"]
    assert len(entries) == 1, entries
    assert STALL * 1000 - 500 <= entries[0]["ms"] <= (STALL + SWEEP + SLACK) * 1000, entries[0]


@pytest.mark.serial  # a p99 latency bound
def test_fifty_slow_and_idle_connections_do_not_slow_a_normal_client(server, signer):
    stop = threading.Event()
    slow: list[socket.socket] = []
    head = signer.sign("GET", f"/{BUCKET}/small").raw()
    upload = signer.sign("PUT", f"/{BUCKET}/slow-upload", body=b"u" * 100_000, payload="UNSIGNED-PAYLOAD").raw()
    for n in range(50):
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.setblocking(False)
        kind = n % 5
        if kind == 3:
            sock.sendall(upload[:-50_000])  # an upload that stalls half way
        elif kind == 4:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
            sock.sendall(signer.sign("GET", f"/{BUCKET}/big").raw())  # a download nobody reads
        slow.append(sock)

    def dribble() -> None:
        """Slowloris on a fifth of them (kind 1 and 2 send a head byte every 0.3 s); the rest stay idle."""
        position = 0
        while not stop.wait(0.3) and position < len(head):
            for n, sock in enumerate(slow):
                if n % 5 in (1, 2):
                    try:
                        sock.send(head[position:position + 1])
                    except OSError:
                        pass
            position += 1

    dribbler = threading.Thread(target=dribble, daemon=True)
    dribbler.start()
    requests = [signer.sign("GET", f"/{BUCKET}/small") for _ in range(100)]
    latencies = []
    gc.disable()  # a collection in this process is not the server's latency
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        for req in requests:  # spread over ~3 s, so the sweeps that drop the slow connections fall inside
            started = time.perf_counter()
            conn.request("GET", req.target, headers=dict(req.headers))
            response = conn.getresponse()
            body = response.read()
            latencies.append(time.perf_counter() - started)
            assert response.status == 200 and body == b"s" * 4096
            time.sleep(0.03)
    finally:
        gc.enable()
        conn.close()
        stop.set()
        dribbler.join(5)
        for sock in slow:
            sock.close()
    latencies.sort()
    p99 = latencies[98]
    assert p99 < 0.050, f"GET p99 {p99 * 1000:.1f} ms with 50 slow connections open (median " \
                        f"{latencies[50] * 1000:.1f} ms)"
    entries = access_log(server)
    assert not [e for e in entries if e["status"] >= 500], [e for e in entries if e["status"] >= 500][:5]
    assert "Traceback" not in server.log_text(), server.log_text()[-3000:]
