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

def _text(value: str | None) -> str:
    return "null" if value is None else encode_basestring(value)


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
        # Formatted by hand: json.dumps of a dict cost ~15 µs, a third of a small GET; only the strings a
        # client controls go through the JSON string encoder.
        state = request.state
        key = state.get("key")
        received = request.content_length
        line = (f'{{"time":{time.time():.3f},"request_id":"{request.id}","remote":{_text(request.client)},'
                f'"method":{_text(request.method)},"op":{_text(state.get("op", "-"))},'
                f'"bucket":{_text(state.get("bucket"))},"key":{_text(key[:1024] if key else None)},'
                f'"status":{status},"bytes_sent":{sent},'
                f'"bytes_received":{"null" if received is None else received},"ms":{elapsed * 1000:.3f},'
                f'"access_key":{_text(state.get("access_key"))},'
                f'"agent":{_text(request.headers.get("user-agent", "")[:200])}}}')
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
