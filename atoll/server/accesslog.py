"""The access log: one JSON line per request, written in batches off the request path.

Lines are formatted on the event loop (a few µs) and handed to a background thread that appends them; a burst
of 50,000 requests a second costs one write(2) per flush, not one per request. No secret ever appears: the
access key id is logged, never a signature, a secret, or a presigned query string.

A log that cannot be written (disk full) loses lines, never the server: they are counted, dropped, and the
first line written afterwards starts on a line of its own.
"""

from __future__ import annotations

from json.encoder import encode_basestring
import logging
import os
import sys
import threading
import time

from atoll.http.server import Request

log = logging.getLogger("atoll.accesslog")
_EMPTY = '""'


class AccessLog:
    def __init__(self, path: str, flush_interval: float = 0.5) -> None:
        self.path = path
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._flush_interval = flush_interval
        self.dropped = 0  # lines lost to write errors since the last successful write
        self._torn = False  # a failed write may have left a partial line
        if path not in ("-", ""):
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="atoll-access-log", daemon=True)
        self._thread.start()

    def record(self, request: Request, status: int, sent: int, elapsed: float) -> None:
        # Formatted by hand: json.dumps of a dict cost ~15 µs, a third of a small GET. Only the strings a client
        # controls go through the JSON string encoder (request ids, methods, addresses and operation names are
        # ours or parsed to tokens), and times are formatted as integers: a float's :.3f costs several times more.
        state = request.state
        key = state.get("key")
        bucket = state.get("bucket")
        access_key = state.get("access_key")
        agent = request.headers.get("user-agent")
        received = request.content_length
        millis = int(time.time() * 1000)
        micros = int(elapsed * 1e6)
        line = (f'{{"time":{millis // 1000}.{millis % 1000:03d},"request_id":"{request.id}",'
                f'"remote":"{request.client}","method":"{request.method}","op":"{state.get("op", "-")}",'
                f'"bucket":{"null" if bucket is None else encode_basestring(bucket)},'
                f'"key":{"null" if not key else encode_basestring(key[:1024])},'
                f'"status":{status},"bytes_sent":{sent},'
                f'"bytes_received":{"null" if received is None else received},'
                f'"ms":{micros // 1000}.{micros % 1000:03d},'
                f'"access_key":{"null" if access_key is None else encode_basestring(access_key)},'
                f'"agent":{encode_basestring(agent[:200]) if agent else _EMPTY}}}')
        with self._lock:
            self._lines.append(line)

    def _run(self) -> None:
        while not self._stop.wait(self._flush_interval):
            self.flush()
        self.flush()

    def flush(self) -> None:
        with self._lock:
            lines, self._lines = self._lines, []
        if not lines:
            return
        data = ("\n".join(lines) + "\n").encode("utf-8", "replace")
        try:
            if self.path == "-":
                sys.stderr.buffer.write(data)
                sys.stderr.flush()
            else:
                self._append(b"\n" + data if self._torn else data)
        except OSError as exc:
            if not self.dropped:
                log.warning("access log %s cannot be written (%s): dropping lines until it can", self.path,
                            exc.strerror)
            self.dropped += len(lines)
            return
        if self.dropped:
            log.warning("access log %s is written again; %d lines were lost", self.path, self.dropped)
            self.dropped = 0

    def _append(self, data: bytes) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
                self._torn = bool(view)  # a short write, and the rest may fail
        finally:
            os.close(fd)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
