"""A small HTTP/1.1 server on httptools + uvloop, written for object-storage traffic.

Why not a framework: perf-baseline.md measured that the request path of aiohttp, uvicorn or Starlette costs 2–4×
the whole budget of a 4 KiB GET, and that only ``os.sendfile`` keeps large GETs near nginx under uvloop. This module
keeps that to one place: HTTP parsing is httptools (llhttp); what is here is connection management — keep-alive,
pipelining, ``Expect: 100-continue``, back-pressure in both directions, sendfile, timeouts against idle and slow
clients, limits on request heads, and graceful shutdown. Front ends see only ``Request`` and ``Response``.

Bodies stream: ``Request.body_chunks`` yields what arrived (joined into pieces of at least ``min_size`` to keep
per-chunk overhead low) and pauses the socket while the handler lags, so a slow consumer slows its own client,
never grows memory. Responses are bytes, file extents (sent with ``sendfile``) or an async iterator.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import AsyncIterator, Awaitable, Callable, Protocol

import httptools

from atoll.http.context import request_id as current_request_id

MAX_HEAD_BYTES = 64 * 1024  # request line + headers; S3 allows 8 KiB of user metadata, AWS rejects heads > 16 KiB
MAX_HEADERS = 200
# Pause reading when this much body waits for the handler: 2 MiB keeps the 1 MiB pieces the ingest pipeline wants
# while bounding what every concurrent upload holds (8 parallel parts at 4 MiB each cost 32 MiB of RSS on their own).
BODY_HIGH_WATER = 2 << 20
SMALL_FILE_INLINE = 64 << 10  # extents up to this size are read and written, not sendfile'd
SWEEP_INTERVAL = 1.0
# An answer sent before the request body was read ends in a lingering close (nginx's lingering_close): FIN, then
# read and discard what the client still sends until it closes, goes quiet this long, or the total runs out.
LINGER_IDLE = 2.0
LINGER_TOTAL = 30.0

_STATUS_LINES = {
    code: f"HTTP/1.1 {code} {phrase}\r\n".encode()
    for code, phrase in (
        (100, "Continue"), (200, "OK"), (201, "Created"), (202, "Accepted"), (204, "No Content"),
        (206, "Partial Content"), (304, "Not Modified"), (400, "Bad Request"), (401, "Unauthorized"),
        (403, "Forbidden"), (404, "Not Found"), (405, "Method Not Allowed"), (408, "Request Timeout"),
        (409, "Conflict"), (411, "Length Required"), (412, "Precondition Failed"), (413, "Payload Too Large"),
        (416, "Range Not Satisfiable"), (431, "Request Header Fields Too Large"), (500, "Internal Server Error"),
        (501, "Not Implemented"), (503, "Service Unavailable"), (507, "Insufficient Storage"),
    )
}


class ClientGone(Exception):
    """The client closed the connection or stalled before sending the whole body."""


class BodyTooLarge(Exception):
    """``read_body`` was asked for a body larger than its limit."""


@dataclass(slots=True)
class FileExtent:
    """``length`` bytes of the open file ``fd`` from ``offset``. The server closes ``fd`` when done."""

    fd: int
    offset: int
    length: int


@dataclass(slots=True)
class Response:
    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    files: list[FileExtent] | None = None
    stream: AsyncIterator[bytes] | None = None
    content_length: int | None = None  # required with ``files``/``stream``; for HEAD the length to announce
    head_only: bool = False
    close: bool = False
    # Header lines already encoded ("Name: value\r\n" each), sent before ``headers``: what a front end caches per
    # object version, so a hot object's head is not rebuilt and re-encoded on every request.
    encoded_headers: bytes = b""

    def release(self) -> None:
        """Close file descriptors of a response that will not be sent."""
        if self.files:
            for extent in self.files:
                try:
                    os.close(extent.fd)
                except OSError:
                    pass
            self.files = None


class App(Protocol):
    async def handle(self, request: "Request") -> Response: ...

    def protocol_error(self, request: "Request | None", status: int, code: str, message: str) -> Response: ...

    def log_access(self, request: "Request", status: int, sent: int, elapsed: float) -> None: ...


def _new_id_prefix() -> str:
    return f"{os.getpid():x}{int(time.time()) & 0xFFFFFF:06x}".upper()


_request_ids = itertools.count(1)
_ID_PREFIX = _new_id_prefix()


def _reset_request_ids() -> None:
    # Workers are forked after this module is imported: each needs its own prefix, or two processes hand out the
    # same request ids (and the access log cannot tell which process served a request).
    global _request_ids, _ID_PREFIX
    _request_ids = itertools.count(1)
    _ID_PREFIX = _new_id_prefix()


os.register_at_fork(after_in_child=_reset_request_ids)


class Request:
    __slots__ = (
        "method", "raw_path", "raw_query", "headers", "keep_alive", "client", "id", "started",
        "content_length", "_conn", "_chunks", "_buffered", "_complete", "_waiter", "_continue_sent",
        "_expect_continue", "_consumed", "_error", "state",
    )

    def __init__(self, conn: "HttpConnection", method: str, url: bytes, headers: dict[str, str],
                 keep_alive: bool) -> None:
        self._conn = conn
        self.method = method
        path, _, query = url.partition(b"?")
        self.raw_path = path.decode("latin-1")
        self.raw_query = query.partition(b"#")[0].decode("latin-1")
        self.headers = headers
        self.keep_alive = keep_alive
        self.client = conn.peer
        self.id = f"{_ID_PREFIX}{next(_request_ids):010X}"
        self.started = time.monotonic()
        cl = headers.get("content-length")
        self.content_length = int(cl) if cl is not None and cl.isdigit() else None
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._complete = False
        self._waiter: asyncio.Future | None = None
        self._expect_continue = "expect" in headers and headers["expect"].lower() == "100-continue"
        self._continue_sent = False
        self._consumed = False
        self._error: BaseException | None = None
        self.state: dict = {}  # per-request scratch space for the front end (identity, timings)

    @property
    def body_complete(self) -> bool:
        return self._complete and not self._chunks

    # called by the connection --------------------------------------------------------------------------
    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered >= BODY_HIGH_WATER:
            self._conn.pause_reading_for_body()
        self._wake()

    def _finish(self) -> None:
        self._complete = True
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        self._error = exc
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # used by handlers ----------------------------------------------------------------------------------
    async def body_chunks(self, min_size: int = 1 << 20) -> AsyncIterator[bytes]:
        """Yield the body in arrival order, in pieces of at least ``min_size`` bytes except the last.
        Raises ClientGone if the connection breaks first."""
        if self._expect_continue and not self._continue_sent:
            self._continue_sent = True
            self._conn.write_raw(b"HTTP/1.1 100 Continue\r\n\r\n")
        self._consumed = True
        while True:
            if self._error is not None:
                raise ClientGone(str(self._error))
            if self._chunks and (self._buffered >= min_size or self._complete):
                if len(self._chunks) == 1:
                    data = self._chunks.popleft()
                else:
                    data = b"".join(self._chunks)
                    self._chunks.clear()
                self._buffered = 0
                self._conn.resume_reading_for_body()
                yield data
                continue
            if self._complete:
                return
            self._conn.resume_reading_for_body()
            self._waiter = self._conn.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    async def read_body(self, limit: int) -> bytes:
        """The whole body, for small XML request documents. Raises BodyTooLarge past ``limit`` bytes."""
        parts = []
        total = 0
        async for chunk in self.body_chunks(min_size=limit + 1):
            total += len(chunk)
            if total > limit:
                raise BodyTooLarge()
            parts.append(chunk)
        return b"".join(parts)

    @property
    def body_started(self) -> bool:
        return self._consumed


class HttpConnection(asyncio.Protocol):
    """One client connection: parses requests, runs them one at a time in order, writes responses."""

    def __init__(self, server: "HttpServer") -> None:
        self.server = server
        self.app = server.app
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.parser = httptools.HttpRequestParser(self)
        self._url = bytearray()
        self._headers: dict[str, str] = {}
        self._head_bytes = 0
        self._header_name = b""
        self._current: Request | None = None  # request being parsed
        self._queue: deque[Request] = deque()  # parsed requests waiting for their turn (pipelining)
        self._active: Request | None = None  # request whose handler runs
        self._task: asyncio.Task | None = None
        self._reading_paused_for_body = False
        self._write_paused = False
        self._waiting_writable = False
        self._drain_waiter: asyncio.Future | None = None
        self._closed = False
        self._peer_eof = False  # the client half-closed: answer what is complete, then close
        self._pending_reject: tuple[int, str, str] | None = None  # a parse error, answered after earlier requests
        self._lingering_since: float | None = None  # answered early: discarding the rest of a body before closing
        self.last_activity = time.monotonic()
        self.head_started: float | None = None  # when the first byte of a request head arrived

    # asyncio.Protocol --------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else ""
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self.server.connections.discard(self)
        gone = ConnectionResetError("client disconnected")
        for req in (self._current, self._active, *self._queue):
            if req is not None and not req._complete:
                req._fail(gone)
        # A running handler is not cancelled: one streaming a body to the closed socket learns it from its next
        # write, one still reading the request body from body_chunks, and one committing must finish its commit.
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ClientGone("client disconnected"))

    def data_received(self, data: bytes) -> None:
        if self._lingering_since is not None:
            self.last_activity = time.monotonic()
            return  # the rest of a body nobody reads
        if self._pending_reject is not None:
            return  # the stream broke before these bytes: they mean nothing
        self.last_activity = time.monotonic()
        if self.head_started is None and self._current is None:
            self.head_started = self.last_activity
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserUpgrade, httptools.HttpParserError, _HeadTooLarge) as exc:
            if self._lingering_since is None:  # else: answered early within this very buffer (an eager handler)
                self._parse_failed(exc)

    def _parse_failed(self, exc: Exception) -> None:
        if isinstance(exc, httptools.HttpParserUpgrade):
            self._reject(400, "InvalidRequest", "Protocol upgrades are not supported.")
        elif isinstance(exc, _HeadTooLarge):
            self._reject(431 if self._current is None else 400, "RequestHeaderSectionTooLarge",
                         "Your request header section exceeds the maximum allowed size.")
        elif isinstance(exc.__context__, _HeadTooLarge):
            self._reject(400, "RequestHeaderSectionTooLarge",
                         "Your request header section exceeds the maximum allowed size.")
        else:
            self._reject(400, "BadRequest", "The HTTP request could not be parsed.")

    def eof_received(self) -> bool | None:
        # The client will send nothing more. A request it cut off (a partial head, or a body short of its length)
        # can never complete: fail it now rather than hold it, and its temp file, until a timeout. Complete
        # requests still get their answers (a half-closed client may be waiting for them), then ``_next`` closes.
        self._peer_eof = True
        if self._lingering_since is not None:
            return False  # the client is done sending: close now
        current = self._current
        if current is not None and not current._complete:
            current._fail(ConnectionResetError("the client closed the connection before sending the whole body"))
        return self.busy  # False: nothing left to answer, so the transport closes now

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # httptools callbacks ------------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._url.clear()
        self._headers = {}
        self._head_bytes = 0
        if self.head_started is None:
            self.head_started = time.monotonic()

    def on_url(self, url: bytes) -> None:
        self._head_bytes += len(url)
        if self._head_bytes > MAX_HEAD_BYTES:
            raise _HeadTooLarge()
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > MAX_HEAD_BYTES or len(self._headers) >= MAX_HEADERS:
            raise _HeadTooLarge()
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        previous = self._headers.get(key)
        self._headers[key] = text if previous is None else f"{previous},{text}"

    def on_headers_complete(self) -> None:
        if self._lingering_since is not None:
            return  # a request pipelined behind one answered early, in the same buffer: never run
        method = self.parser.get_method().decode("latin-1")
        req = Request(self, method, bytes(self._url), self._headers, self.parser.should_keep_alive())
        self.head_started = None
        self._current = req
        if not req.content_length and "chunked" not in req.headers.get("transfer-encoding", "").lower():
            req._complete = True  # no body follows: the handler may answer before llhttp reports the message end
        if self._closed:
            return
        if self._active is None:
            self._start(req)
        else:
            self._queue.append(req)

    def on_body(self, body: bytes) -> None:
        if self._current is not None:
            self._current._feed(body)

    def on_message_complete(self) -> None:
        req = self._current
        self._current = None
        if req is not None:
            req._finish()

    # request execution -------------------------------------------------------------------------------
    def _start(self, req: Request) -> None:
        """Run the request's handler eagerly: most GETs and HEADs of hot objects finish without ever waiting,
        and a task per request would cost more than the whole handler. Only a handler that suspends gets a task,
        which drives it on from where it stopped."""
        self._active = req
        coro = self._run(req)
        # The request's id for log records (atoll.http.context): set in this callback's context while the handler
        # runs eagerly, copied into the task's context if it suspends, and reset here either way (a few hundred ns).
        token = current_request_id.set(req.id)
        try:
            try:
                awaited = coro.send(None)
            except StopIteration:
                return
            self._task = self.loop.create_task(_drive(coro, awaited))
        finally:
            current_request_id.reset(token)

    async def _run(self, req: Request) -> None:
        sent = 0
        status = 500
        try:
            try:
                response = await self.app.handle(req)
            except ClientGone:
                status = 499  # logged as nginx does: the client went away, this is no server error
                self._abort()
                return
            except Exception:  # noqa: BLE001 - last line of defence: answer 500, log, keep serving others
                self.server.log_exception(req)
                response = self.app.protocol_error(req, 500, "InternalError",
                                                   "We encountered an internal error. Please try again.")
                response.close = True
            status = response.status
            if response.head_only or (response.files is None and response.stream is None):
                sent = self._send_now(req, response)  # nothing to wait for: no coroutine needed
            else:
                sent = await self._send(req, response)
        except (ClientGone, ConnectionError, OSError):
            self._abort()
        except Exception:  # noqa: BLE001 - a body stream failed after the head went out: closing is the only
            self._abort()  # way left to tell the client its response is incomplete
            self.server.log_exception(req)
        finally:
            self.app.log_access(req, status, sent, time.monotonic() - req.started)
            self._active = None
            self._task = None
        self._next()

    def _next(self) -> None:
        if self._closed or self._lingering_since is not None:
            return
        if self._queue:
            # Not run from here: ``_next`` is called at the end of a (possibly eager) handler, and a pipelined
            # burst would otherwise nest one handler inside the other's stack.
            req = self._queue.popleft()
            self._active = req
            self.loop.call_soon(self._start, req)
        elif self._pending_reject is not None:
            self._reject(*self._pending_reject)
        elif self.server.stopping or self._peer_eof:
            self._close()

    def _open_answer(self, req: Request, response: Response) -> tuple[bytes, bool]:
        """The head of an answer and whether the connection stays open; ClientGone if the client left. An answer to
        a request whose body was not read (an error, or a body the handler did not want) ends the connection: the
        client may still be sending that body, and closing is the only way not to misread it as the next request."""
        keep_alive = req.keep_alive and not response.close and not self.server.stopping and req.body_complete
        head = self._head(response, keep_alive)
        if self._closed or self.transport is None:
            response.release()
            raise ClientGone()
        return head, keep_alive

    def _send_now(self, req: Request, response: Response) -> int:
        """Send an answer held in memory (a head, or a body of bytes)."""
        head, keep_alive = self._open_answer(req, response)
        transport = self.transport
        sent = 0
        if response.head_only:
            response.release()
            transport.write(head)
        else:
            body = response.body
            sent = len(body)
            if sent < 1 << 16:
                transport.write(head + body if body else head)
            else:
                transport.write(head)
                transport.write(body)
        if not req.body_complete:
            self._linger()
        elif not keep_alive:
            self._close()
        return sent

    async def _send(self, req: Request, response: Response) -> int:
        """An answer with files or a stream, which may have to wait for the socket."""
        head, keep_alive = self._open_answer(req, response)
        transport = self.transport
        sent = 0
        if response.files is not None:
            sent = await self._send_files(head, response)
        else:
            transport.write(head)
            async for chunk in response.stream:
                if self._closed:
                    raise ClientGone()
                transport.write(chunk)
                sent += len(chunk)
                if self._write_paused:
                    await self._drain()
        if not req.body_complete:
            self._linger()
        elif not keep_alive:
            self._close()
        return sent

    def _linger(self) -> None:
        """Close after an answer sent before the request body was read. Closing at once with the client's bytes
        still arriving makes the kernel answer them with a reset, which can destroy the answer before the client
        reads it (and clients report a dropped connection, not the 403 or 503 we sent). So: send FIN after the
        answer, keep reading and discarding, and close when the client closes or goes quiet (``sweep``)."""
        transport = self.transport
        if self._closed or transport is None or not transport.can_write_eof():
            self._close()
            return
        self._lingering_since = time.monotonic()
        self._queue.clear()
        current = self._current
        if current is not None and not current._complete:
            current._fail(ConnectionResetError("the request was answered before its body was read"))
        transport.write_eof()
        if self._reading_paused_for_body:
            self._reading_paused_for_body = False
            transport.resume_reading()

    def _head(self, response: Response, keep_alive: bool) -> bytes:
        status = response.status
        parts = [f"{name}: {value}\r\n" for name, value in response.headers]
        if status != 304 and status != 204 and status >= 200:
            length = response.content_length if response.content_length is not None else len(response.body)
            parts.append(f"Content-Length: {length}\r\n")
        parts.append(self.server.date_lines())
        parts.append("\r\n" if keep_alive else "Connection: close\r\n\r\n")
        return b"".join((_STATUS_LINES.get(status) or f"HTTP/1.1 {status} Status\r\n".encode(),
                         response.encoded_headers, "".join(parts).encode("latin-1", "replace")))

    async def _send_files(self, head: bytes, response: Response) -> int:
        files = response.files or []
        response.files = None
        sent = 0
        try:
            total = sum(e.length for e in files)
            if total <= SMALL_FILE_INLINE:
                pieces = [head]
                for extent in files:
                    data = os.pread(extent.fd, extent.length, extent.offset)
                    if len(data) != extent.length:
                        raise OSError("blob shorter than its metadata")
                    pieces.append(data)
                self.transport.write(b"".join(pieces))
                return total
            self.transport.write(head)
            for extent in files:
                sent += await self._sendfile(extent)
            return sent
        finally:
            for extent in files:
                try:
                    os.close(extent.fd)
                except OSError:
                    pass

    async def _sendfile(self, extent: FileExtent) -> int:
        """os.sendfile on a dup of the socket: uvloop has no loop.sendfile, and copying through Python costs
        3–4× the CPU (perf-baseline.md §1)."""
        await self._wait_transport_empty()
        sock = self.transport.get_extra_info("socket")
        out = os.dup(sock.fileno())
        offset, remaining = extent.offset, extent.length
        try:
            _advise_willneed(extent.fd, offset, remaining)
            while remaining > 0:
                if self._closed:
                    raise ClientGone()
                try:
                    n = os.sendfile(out, extent.fd, offset, min(remaining, 1 << 30))
                except BlockingIOError:
                    await self._writable(out)
                    continue
                if n == 0:
                    raise OSError("blob shorter than its metadata")
                offset += n
                remaining -= n
                self.last_activity = time.monotonic()
        finally:
            os.close(out)
        return extent.length

    async def _wait_transport_empty(self) -> None:
        while self.transport.get_write_buffer_size():
            if self._closed:
                raise ClientGone()
            if self._write_paused:
                await self._drain()
            else:
                await asyncio.sleep(0.0005)

    async def _writable(self, fd: int) -> None:
        fut = self.loop.create_future()
        self.loop.add_writer(fd, _set_none, fut)
        self._drain_waiter = fut
        self._waiting_writable = True
        try:
            await fut
        finally:
            self._drain_waiter = None
            self._waiting_writable = False
            self.loop.remove_writer(fd)

    async def _drain(self) -> None:
        if self._closed:
            raise ClientGone()
        fut = self.loop.create_future()
        self._drain_waiter = fut
        try:
            await fut
        finally:
            self._drain_waiter = None

    # flow control and closing ------------------------------------------------------------------------
    def write_raw(self, data: bytes) -> None:
        if not self._closed and self.transport is not None:
            self.transport.write(data)

    def pause_reading_for_body(self) -> None:
        if not self._reading_paused_for_body and not self._closed:
            self._reading_paused_for_body = True
            self.transport.pause_reading()

    def resume_reading_for_body(self) -> None:
        if self._reading_paused_for_body and not self._closed:
            self._reading_paused_for_body = False
            self.transport.resume_reading()

    @property
    def busy(self) -> bool:
        return self._active is not None or bool(self._queue)

    def _reject(self, status: int, code: str, message: str) -> None:
        """A request we cannot parse: answer once, then close (the byte stream is no longer trustworthy).
        Pipelined requests before it that parsed fine are answered first, in order; one whose body broke off
        mid-way fails (its handler sees ClientGone)."""
        if self._closed or self._lingering_since is not None:
            return
        current = self._current
        if current is not None and not current._complete:
            current._fail(ConnectionResetError("the request body could not be parsed"))
        if self.busy:
            self._pending_reject = (status, code, message)
            self.transport.pause_reading()
            return
        response = self.app.protocol_error(None, status, code, message)
        self.transport.write(self._head(response, keep_alive=False) + response.body)
        self._close()

    def _close(self) -> None:
        if not self._closed and self.transport is not None:
            self._closed = True
            self.transport.close()

    def _abort(self) -> None:
        if self.transport is not None:
            self._closed = True
            self.transport.abort()

    def sweep(self, now: float, limits: "Timeouts") -> None:
        """Close connections that are idle, or that are too slow sending a request head or body."""
        if self._closed:
            return
        if self._lingering_since is not None:
            if now - self.last_activity > LINGER_IDLE or now - self._lingering_since > LINGER_TOTAL:
                self._close()
            return
        if self.head_started is not None and now - self.head_started > limits.head:
            self._reject(408, "RequestTimeout", "Your socket connection to the server was not read from or "
                                                "written to within the timeout period.")
            return
        idle = now - self.last_activity
        if self._active is None and not self._queue:
            if idle > limits.keep_alive:
                self._close()
        elif idle > limits.stall:
            waiting_on_client = self._current is not None and not self._reading_paused_for_body
            if waiting_on_client or self._write_paused or self._waiting_writable:
                self._abort()


class _HeadTooLarge(Exception):
    pass


async def _drive(coro, awaited):
    """Continue a coroutine that was started by hand and suspended on ``awaited`` (a future, or None for a bare
    yield). The coroutine itself observes the future's outcome when resumed (``Future.__await__`` returns
    ``result()``), so errors are only swallowed here, never lost."""
    while True:
        if awaited is None:
            await asyncio.sleep(0)
        else:
            # The coroutine's own ``await`` marked the future as blocking before yielding it to us; a Task
            # clears that flag before waiting on it, and so must we, or the future refuses a second waiter.
            awaited._asyncio_future_blocking = False
            try:
                await awaited
            except BaseException:  # noqa: BLE001 - re-raised inside ``coro`` when it is resumed
                pass
        try:
            awaited = coro.send(None)
        except StopIteration as stop:
            return stop.value


def _set_none(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


def _advise_willneed(fd: int, offset: int, length: int) -> None:
    try:
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_WILLNEED)
    except (OSError, AttributeError):
        pass


@dataclass(slots=True)
class Timeouts:
    keep_alive: float = 60.0  # an idle keep-alive connection is closed after this
    head: float = 30.0  # the whole request head must arrive within this
    stall: float = 60.0  # no byte moves in either direction for this long while a request runs


class HttpServer:
    """Owns the listening socket and the connections; ``serve`` runs until ``stop``."""

    def __init__(self, app: App, loop: asyncio.AbstractEventLoop, timeouts: Timeouts | None = None,
                 on_exception: Callable[[Request], None] | None = None) -> None:
        self.app = app
        self.loop = loop
        self.timeouts = timeouts or Timeouts()
        self.connections: set[HttpConnection] = set()
        self.stopping = False
        self._servers: list[asyncio.AbstractServer] = []
        self._sweeper: asyncio.TimerHandle | None = None
        self._date_cache = (0, "")
        self._date_lines = ""
        self._on_exception = on_exception

    def http_date(self) -> str:
        now = int(time.time())
        if self._date_cache[0] != now:
            self._date_cache = (now, formatdate(now, usegmt=True))
            self._date_lines = f"Date: {self._date_cache[1]}\r\nServer: Atoll\r\n"
        return self._date_cache[1]

    def date_lines(self) -> str:
        """The Date and Server header lines of every answer, rebuilt once a second."""
        if int(time.time()) != self._date_cache[0]:
            self.http_date()
        return self._date_lines

    def log_exception(self, req: Request) -> None:
        if self._on_exception is not None:
            self._on_exception(req)

    async def listen(self, sock: socket.socket) -> None:
        server = await self.loop.create_server(lambda: HttpConnection(self), sock=sock, backlog=4096)
        self._servers.append(server)
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(SWEEP_INTERVAL, self._sweep)

    def _sweep(self) -> None:
        now = time.monotonic()
        for conn in list(self.connections):
            conn.sweep(now, self.timeouts)
        self._sweeper = self.loop.call_later(SWEEP_INTERVAL, self._sweep)

    async def stop(self, deadline: float) -> None:
        """Stop accepting, let running requests finish within ``deadline`` seconds, then close everything."""
        self.stopping = True
        for server in self._servers:
            server.close()
        for conn in list(self.connections):
            if not conn.busy:
                conn._close()
        end = time.monotonic() + deadline
        while any(c.busy for c in self.connections) and time.monotonic() < end:
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn._abort() if conn.busy else conn._close()
        if self._sweeper is not None:
            self._sweeper.cancel()


def bind_socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


Handler = Callable[[Request], Awaitable[Response]]
