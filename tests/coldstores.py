"""Real cold stores for the tiering tests, and a fault-injecting TCP proxy to put between Atoll and them.

``AzuriteServer`` and ``MotoS3Server`` start the real emulators as child processes on free ports; ``FaultProxy``
relays TCP to one of them, counts the HTTP requests that pass, and can be made slow, stalled, reset, blackholed
or refused at any moment from a synchronous test. Fixtures live in cold_fixtures.py (a pytest plugin module);
classes and helpers live here so that any test module can ``from coldstores import ...``.
"""

from __future__ import annotations

import asyncio
import http.client
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Callable, NamedTuple

from harness import free_port

VENV_BIN = Path(sys.executable).parent
TEST_TMP = os.environ.get("ATOLL_TEST_TMP", "/var/tmp")
INSTALL_HINT = "run `make test-deps` (or `bash scripts/install-test-deps.sh`)"


def fresh_name(hint: str = "t") -> str:
    """A bucket/container name valid for both S3 and Azure (3-63 chars, lowercase, digits, single hyphens),
    unique per call so tests sharing one emulator never see each other's data."""
    cleaned = "".join(c if c.isalnum() else "-" for c in hint.lower())
    cleaned = "-".join(part for part in cleaned.split("-") if part)[:40].strip("-") or "t"
    return f"{cleaned}-{secrets.token_hex(4)}"


# --- emulator processes -----------------------------------------------------------------------------------------

class _ChildServer:
    """A server child process in its own session (so stop() takes its whole process group), logging to a file."""

    name = "server"
    closed_marker: str | None = None  # a log line after which the process has nothing left to do but exit

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log_path = ""

    def _launch(self, argv: list[str], log_dir: str, timeout: float) -> None:
        self.log_path = os.path.join(log_dir, f"{self.name}.log")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True, env=_clean_env())
        try:
            self._wait_until_answering(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_until_answering(self, timeout: float) -> None:
        # Poll for a complete HTTP response (any status), not just an open port: that is what a test needs.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            try:
                conn.request("GET", "/")
                conn.getresponse().read()
                return
            except OSError:
                time.sleep(0.05)
            finally:
                conn.close()
        raise TimeoutError(f"{self.name} not answering on {self.port} after {timeout}s:\n{self.log_text()[-3000:]}")

    def log_text(self) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while self.proc.poll() is None and time.monotonic() < deadline:
            if self.closed_marker and self.closed_marker in self.log_text():
                break
            time.sleep(0.05)
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


def _clean_env() -> dict[str, str]:
    # The emulators must not pick up a developer's real cloud credentials or endpoints.
    env = dict(os.environ)
    for var in list(env):
        if var.startswith(("AWS_", "AZURE_")):
            env.pop(var)
    return env


class AzuriteServer(_ChildServer):
    """``azurite-blob`` (npm azurite 3.37.0) on 127.0.0.1:<free port> with a fresh ``--location`` directory."""

    name = "azurite"
    # On SIGTERM Azurite closes its server at once, but its node process then lingers for minutes (seen with
    # 3.37.0: ~3 min); once it logs this line it has flushed its state, and the rest is only waiting.
    closed_marker = "successfully closed"
    account_name = "devstoreaccount1"
    # Azurite's well-known development key: public, the same in every Azurite install.
    account_key = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

    def __init__(self, location: str | None = None) -> None:
        super().__init__()
        self._own_location = location is None
        self.location = location or tempfile.mkdtemp(prefix="azurite-", dir=TEST_TMP)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/{self.account_name}"

    @property
    def connection_string(self) -> str:
        return _azure_connection_string(self.account_name, self.account_key, self.endpoint)

    def start(self, timeout: float = 60.0) -> "AzuriteServer":
        binary = shutil.which("azurite-blob")
        if binary is None:
            raise RuntimeError(f"azurite-blob is not on PATH: {INSTALL_HINT}")
        # --loose/--skipApiVersionCheck: accept headers and API versions newer than this Azurite knows, since
        # azure-storage-blob and obstore move faster than the emulator.
        self._launch([binary, "--blobHost", "127.0.0.1", "--blobPort", str(self.port), "--location", self.location,
                      "--silent", "--skipApiVersionCheck", "--loose"], self.location, timeout)
        return self

    def service_client(self, endpoint: str | None = None, **kwargs):
        """A BlobServiceClient; ``endpoint`` (e.g. ``proxy.endpoint("/devstoreaccount1")``) routes it elsewhere,
        ``kwargs`` go to the SDK (``retry_total=0``, ``connection_timeout``, ``read_timeout`` for fault tests)."""
        from azure.storage.blob import BlobServiceClient

        conn = _azure_connection_string(self.account_name, self.account_key, endpoint or self.endpoint)
        return BlobServiceClient.from_connection_string(conn, **kwargs)

    def create_container(self, name: str) -> str:
        self.service_client().create_container(name)
        return name

    def delete_container(self, name: str) -> None:
        self.service_client().delete_container(name)

    def blob_client(self, container: str, name: str, endpoint: str | None = None, **kwargs):
        return self.service_client(endpoint, **kwargs).get_blob_client(container, name)

    def stop(self) -> None:
        super().stop()
        if self._own_location and not os.environ.get("ATOLL_KEEP_TEST_DATA"):
            shutil.rmtree(self.location, ignore_errors=True)


def _azure_connection_string(account: str, key: str, blob_endpoint: str) -> str:
    return (f"DefaultEndpointsProtocol=http;AccountName={account};AccountKey={key};"
            f"BlobEndpoint={blob_endpoint};")


class MotoS3Server(_ChildServer):
    """``moto_server`` (moto[server] 5.2.5, from this venv) on 127.0.0.1:<free port>; all state in memory."""

    name = "moto"
    access_key = "testing"
    secret_key = "testing"
    region = "us-east-1"

    def __init__(self, log_dir: str | None = None) -> None:
        super().__init__()
        self._own_log_dir = log_dir is None
        self.log_dir = log_dir or tempfile.mkdtemp(prefix="moto-", dir=TEST_TMP)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> "MotoS3Server":
        binary = VENV_BIN / "moto_server"
        if not binary.exists():
            raise RuntimeError(f"{binary} is missing: install the test extras (`pip install -e '.[test]'`)")
        self._launch([str(binary), "-H", "127.0.0.1", "-p", str(self.port)], self.log_dir, timeout)
        return self

    def client(self, endpoint: str | None = None, **config_kwargs):
        """A boto3 S3 client; ``endpoint`` (e.g. ``proxy.endpoint()``) routes it elsewhere, ``config_kwargs``
        override the botocore Config (``connect_timeout``, ``read_timeout``, ``retries``...). Mind that
        ``retries={"max_attempts": n}`` means n *retries*; ``{"total_max_attempts": 1}`` means no retry."""
        import boto3
        from botocore.config import Config

        config = Config(retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=10, read_timeout=60)
        return boto3.client("s3", endpoint_url=endpoint or self.endpoint, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name=self.region,
                            config=config.merge(Config(**config_kwargs)))

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def reset(self) -> None:
        """Forget every bucket and object (moto's own reset API)."""
        urllib.request.urlopen(urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST"),
                               timeout=10).read()

    def stop(self) -> None:
        super().stop()
        if self._own_log_dir and not os.environ.get("ATOLL_KEEP_TEST_DATA"):
            shutil.rmtree(self.log_dir, ignore_errors=True)


# --- HTTP request counting --------------------------------------------------------------------------------------

class Request(NamedTuple):
    method: str
    path: str  # the request-target as sent: path and query string


class RequestFramer:
    """Finds HTTP/1.1 request boundaries in a client→server byte stream, fed in arbitrary pieces.

    Only framing is parsed (request line, Content-Length, chunked encoding), which is what it takes to count
    keep-alive and pipelined requests one by one. Anything that is not HTTP/1.x sets ``broken`` and stops
    counting on that connection, rather than inventing requests.
    """

    MAX_HEAD = 1 << 20

    def __init__(self, on_request: Callable[[Request], None]) -> None:
        self.on_request = on_request
        self.broken = False
        self._buf = bytearray()
        self._state = "head"  # head | body | chunk-size | chunk-data | trailer
        self._left = 0  # bytes still to skip in "body" / "chunk-data"

    def feed(self, data: bytes) -> None:
        if self.broken:
            return
        self._buf += data
        try:
            while self._step():
                pass
        except ValueError:
            self.broken = True

    def _step(self) -> bool:
        """Consume one framing element from the buffer; False when more bytes are needed."""
        if self._state in ("body", "chunk-data"):
            n = min(self._left, len(self._buf))
            del self._buf[:n]
            self._left -= n
            if self._left:
                return False
            self._state = "head" if self._state == "body" else "chunk-size"
            return True
        if self._state == "head":
            return self._head()
        end = self._buf.find(b"\r\n")
        if end < 0:
            return False
        line = bytes(self._buf[:end])
        del self._buf[:end + 2]
        if self._state == "trailer":
            self._state = "trailer" if line else "head"
        else:
            size = int(line.split(b";")[0].strip(), 16)  # chunk extensions after ';' are ignored
            self._state, self._left = ("trailer", 0) if size == 0 else ("chunk-data", size + 2)  # + CRLF
        return True

    def _head(self) -> bool:
        while self._buf.startswith(b"\r\n"):  # RFC 9112 2.2: a server ignores empty lines before a request
            del self._buf[:2]
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > self.MAX_HEAD:
                raise ValueError("request head too long")
            return False
        lines = bytes(self._buf[:end]).decode("latin-1").split("\r\n")
        del self._buf[:end + 4]
        method, target, version = (lines[0].split(" ") + ["", ""])[:3]
        if not method or not version.startswith("HTTP/1."):
            raise ValueError(f"not an HTTP/1.x request line: {lines[0]!r}")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        self.on_request(Request(method, target))
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self._state = "chunk-size"
        elif int(headers.get("content-length") or 0) > 0:
            self._state, self._left = "body", int(headers["content-length"])
        return True


# --- the fault-injecting proxy ----------------------------------------------------------------------------------

class _Link:
    """One client connection and its upstream connection."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.dead = False  # blackholed: never forwards another byte, whatever heal() does
        self.task: asyncio.Task | None = None

    def abort(self, rst: bool) -> None:
        for writer in (self.client, self.upstream):
            if writer is None:
                continue
            if rst:
                # SO_LINGER with a zero timeout turns close() into a TCP RST instead of a FIN.
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    try:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    except OSError:
                        pass
            writer.transport.abort()


class FaultProxy:
    """A TCP relay 127.0.0.1:<port> → ``target`` that counts HTTP requests and injects faults on demand.

    It runs its own event loop in a daemon thread, so synchronous tests drive it with plain calls; every control
    takes effect before it returns and applies to open connections as well as new ones.

    Counting: ``requests()`` lists each HTTP request (method, path?query) forwarded client→server, keep-alive
    and pipelined ones included, in order, from the moment its head is forwarded (so a stalled or blackholed
    request is not listed: it has not reached the server). ``bytes_down`` / ``bytes_up`` count bytes forwarded
    server→client / client→server; ``connections`` counts accepted connections. ``reset_counts()`` zeroes all.

    Faults (all combinable with each other except the four modes, which replace one another):

    * ``latency`` (seconds, attribute): every chunk read is delivered that long after it arrived, in each
      direction. It is a delay line, not a per-chunk pause: chunks in flight overlap, so a request/response
      round trip costs about 2 × latency and throughput is not reduced. TCP handshakes are not delayed.
    * ``bandwidth`` (bytes/s, attribute, None = unlimited): a cap per direction, shared by all connections
      (one link between Atoll and the cold store, full duplex).
    * ``stall()``: accept connections, forward nothing, hold what arrives; ``heal()`` delivers it late.
    * ``blackhole()``: accept new connections and never answer them; open connections freeze. Bytes are
      dropped, not held, so a connection touched by a blackhole stays silent for good, even after heal():
      the client must time out and reconnect, as after a real network partition.
    * ``reset_all()``: a TCP RST to every open connection (both sides); new connections are unaffected.
      (A target that refuses the proxy's own connect shows up the same way: the client gets a reset.)
    * ``refuse()``: close the listening socket, so connects fail with ECONNREFUSED; open connections carry on.
    * ``heal()``: back to a transparent relay: mode normal, listening again on the same port, no latency,
      no bandwidth cap.
    """

    CHUNK = 64 << 10
    QUEUE_CHUNKS = 64  # the delay line holds up to 4 MiB per direction per connection

    def __init__(self, target: tuple[str, int], port: int = 0) -> None:
        self.target = target
        self.port = port
        self.latency = 0.0
        self.bandwidth: float | None = None
        self.bytes_up = 0
        self.bytes_down = 0
        self.connections = 0  # accepted, ever (reset_counts zeroes it too)
        self._requests: list[Request] = []
        self._lock = threading.Lock()  # guards the counters against the test thread reading them
        self._mode = "normal"  # normal | stall | blackhole | refuse
        self._links: set[_Link] = set()
        self._next_free = {True: 0.0, False: 0.0}  # bandwidth pacing, per direction (True = up)
        self._loop = asyncio.new_event_loop()
        self._flowing: asyncio.Event | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"fault-proxy-{target[1]}",
                                        daemon=True)
        self._thread.start()
        self._call(self._open)

    # -- test-thread API --

    def endpoint(self, scheme_path: str = "") -> str:
        """``http://127.0.0.1:<port>`` + ``scheme_path`` (e.g. ``"/devstoreaccount1"``)."""
        return f"http://127.0.0.1:{self.port}{scheme_path}"

    def requests(self, method: str | None = None, path_contains: str | None = None) -> list[Request]:
        with self._lock:
            found = list(self._requests)
        return [r for r in found if (method is None or r.method == method.upper())
                and (path_contains is None or path_contains in r.path)]

    def reset_counts(self) -> None:
        with self._lock:
            self._requests.clear()
            self.bytes_up = self.bytes_down = self.connections = 0

    def stall(self) -> None:
        self._call(self._set_mode, "stall")

    def blackhole(self) -> None:
        self._call(self._set_mode, "blackhole")

    def refuse(self) -> None:
        self._call(self._set_mode, "refuse")

    def heal(self) -> None:
        self.latency, self.bandwidth = 0.0, None
        self._call(self._set_mode, "normal")

    def reset_all(self) -> None:
        self._call(self._abort_links, True)

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._shutdown)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> "FaultProxy":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, fn, *args):
        """Run ``fn`` on the proxy's loop and wait, so a fault is in force when the control returns."""
        async def run():
            result = fn(*args)
            return await result if asyncio.iscoroutine(result) else result
        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    # -- loop side --

    async def _open(self) -> None:
        if self._flowing is None:
            self._flowing = asyncio.Event()
            self._flowing.set()
        # reuse_address (the asyncio default on Unix) lets heal() rebind the port of a refused proxy even with
        # connections of the old listener in TIME_WAIT.
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _set_mode(self, mode: str) -> None:
        self._mode = mode
        if mode == "refuse" and self._server is not None:
            self._server.close()  # closes the listening socket only; open connections carry on
            self._server = None
        elif mode != "refuse" and self._server is None:
            await self._open()
        if mode == "blackhole":
            for link in self._links:
                link.dead = True
        if mode == "stall":
            self._flowing.clear()
        else:
            self._flowing.set()  # also wakes held chunks of blackholed links, which then drop them

    def _abort_links(self, rst: bool) -> None:
        for link in list(self._links):
            link.abort(rst)
            if link.task is not None:
                link.task.cancel()  # its sender may be held by a stall; nothing of it is wanted any more
        self._links.clear()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        tasks = [link.task for link in self._links if link.task is not None]
        self._abort_links(False)
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = _Link(writer)
        link.task = asyncio.current_task()
        link.dead = self._mode == "blackhole"
        self._links.add(link)
        with self._lock:
            self.connections += 1
        try:
            if link.dead:
                await self._drain_forever(reader)
                return
            try:
                up_reader, link.upstream = await asyncio.open_connection(*self.target)
            except OSError:
                link.abort(rst=True)  # as a router would answer for a dead host: the client sees a reset
                return
            framer = RequestFramer(self._record)
            await asyncio.gather(self._pump(link, reader, link.upstream, True, framer),
                                 self._pump(link, up_reader, writer, False, None))
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self._links.discard(link)
            link.abort(rst=False)

    @staticmethod
    async def _drain_forever(reader: asyncio.StreamReader) -> None:
        # Reading (and dropping) rather than ignoring the socket notices when the client gives up and closes.
        while await reader.read(FaultProxy.CHUNK):
            pass

    async def _pump(self, link: _Link, reader, writer, up: bool, framer: RequestFramer | None) -> None:
        """Read one direction into a delay line; a sender task empties it, applying the faults."""
        line: asyncio.Queue = asyncio.Queue(self.QUEUE_CHUNKS)
        sender = asyncio.ensure_future(self._send(link, line, writer, up, framer))
        try:
            while data := await reader.read(self.CHUNK):
                if not link.dead:
                    await line.put((self._loop.time() + self.latency, data))
            if link.dead and up:
                link.abort(rst=False)  # the client gave up on a blackholed link: end the upstream half too
            await line.put(None)
            await sender
        except BaseException:
            # One direction failing (reset, cancelled) ends the whole link, or its other half would hang.
            sender.cancel()
            link.abort(rst=False)
            raise

    async def _send(self, link: _Link, line: asyncio.Queue, writer: asyncio.StreamWriter, up: bool,
                    framer: RequestFramer | None) -> None:
        while (item := await line.get()) is not None:
            due, data = item
            await asyncio.sleep(max(0.0, due - self._loop.time()))
            while data and not link.dead:
                # Pieces of at most ~50 ms at the current cap, so a changed bandwidth applies promptly.
                rate = self.bandwidth
                piece = data if not rate else data[:max(1024, int(rate / 20))]
                data = data[len(piece):]
                await self._pace(len(piece), up)
                await self._flowing.wait()
                if link.dead:
                    break
                # Counted as forwarded (a stalled or blackholed request has not reached the server), but before
                # the write, so whatever the peer has received is already in the counts a test reads.
                if framer is not None:
                    framer.feed(piece)
                with self._lock:
                    if up:
                        self.bytes_up += len(piece)
                    else:
                        self.bytes_down += len(piece)
                writer.write(piece)
                await writer.drain()
        if not link.dead and writer.can_write_eof():
            writer.write_eof()  # pass half-closes on, so a server that reads to EOF still answers

    async def _pace(self, n: int, up: bool) -> None:
        rate = self.bandwidth
        if not rate:
            return
        now = self._loop.time()
        start = max(now, self._next_free[up])
        self._next_free[up] = start + n / rate
        await asyncio.sleep(self._next_free[up] - now)

    def _record(self, request: Request) -> None:
        with self._lock:
            self._requests.append(request)
