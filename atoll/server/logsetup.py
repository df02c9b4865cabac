"""The event log: what the server says about itself (starts, stops, drains paused, cold stores failing), as opposed
to the access log (one line per request, atoll.server.accesslog).

``configure(config)`` installs one handler on the root logger, at ``log_level``, writing to ``event_log`` ("" or
"-": stderr; else a file, appended to and line-buffered, so that each line reaches the file whole and at once), in
``log_format``:

- ``json``: one object per line: ``time`` (epoch seconds, ms precision), ``level``, ``logger``, ``message``,
  ``node``, ``pid``, ``request_id`` (only while a request is handled: the access log's id of that request), and
  ``exc`` (the traceback text) when an exception is logged.
- ``text``: ``2026-11-26 15:04:05,123 INFO atoll.admin [req 4F2A..]: message``.

Every record passes ``Redactor`` first: credentials that may end up in a message (a SigV4 ``Signature=``, a SAS
``sig=``, an Azure ``AccountKey=``, ``scheme://user:password@``, a bearer token, ``X-Amz-Security-Token``, a
presigned URL's ``X-Amz-Credential``) are replaced by ``***`` in the final message and exception text, whatever
the format.

Workers of ``--workers N`` are forked after this runs and inherit the handler and its open file: their lines go to
the same place (O_APPEND: lines of different processes never overwrite each other), each with its own ``pid``.
Rotation: the file is reopened by path when it was moved or removed (checked at most once a second), so
``logrotate`` with ``create`` (move, then the next line opens a new file) or ``copytruncate`` both work.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time

from atoll.http.context import request_id as current_request_id

_PATTERNS: list[tuple[re.Pattern, str]] = [
    # scheme://user:password@host  ->  scheme://user:***@host
    (re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://[^/\s:@]*):[^@\s/]*@"), r"\1:***@"),
    # SigV4 (header and presigned query), SAS signatures, Azure keys, session tokens
    (re.compile(r"(?i)\b((?:x-amz-)?signature=)[^,&\s\"']+"), r"\1***"),
    (re.compile(r"(?i)\b(x-amz-credential=)[^&\s\"']+"), r"\1***"),
    (re.compile(r"(?i)((?:^|[?&;\s\"'])sig=)[^&\s\"';]+"), r"\1***"),
    (re.compile(r"(?i)\b((?:accountkey|sharedaccesssignature)=)[^;\s\"']+"), r"\1***"),
    # Authorization headers of any scheme, and a bearer token anywhere
    (re.compile(r"(?i)\b(authorization[\"']?\s*[=:]\s*[\"']?[A-Za-z0-9\-]+\s+)[^\"'\n]+"), r"\1***"),
    (re.compile(r"\b(Bearer\s+)[A-Za-z0-9\-._~+/]{8,}=*"), r"\1***"),
    # name=value and "name": "value" where the name says secret: passwords, secret keys, account keys, tokens
    (re.compile(r"(?i)\b([a-z0-9_\-]*(?:secret|password|passwd|account_key|token)[a-z0-9_\-]*[\"']?\s*[=:]\s*"
                r"[\"']?)[^&\s\"',;}]+"), r"\1***"),
]


def redact(text: str) -> str:
    """``text`` without the credentials listed in the module docstring."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class Redactor(logging.Filter):
    """Renders each record's message once (``msg % args``), redacts it and the exception text, and leaves the
    record carrying only the safe strings, so that every handler and formatter sees them."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string must not lose the line
            message = f"{record.msg!r} {record.args!r}"
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        record.exc_info = None  # the text above is what is written
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


class JsonFormatter(logging.Formatter):
    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        millis = int(record.created * 1000)
        line = {"time": millis / 1000, "level": record.levelname.lower(), "logger": record.name,
                "message": record.getMessage(), "node": self.node, "pid": record.process}
        request_id = getattr(record, "request_id", None)
        if request_id:
            line["request_id"] = request_id
        if record.exc_text:
            line["exc"] = record.exc_text
        if record.stack_info:
            line["stack"] = record.stack_info
        return json.dumps(line, ensure_ascii=False, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(request_tag)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        request_id = getattr(record, "request_id", None)
        record.request_tag = f" [req {request_id}]" if request_id else ""
        return super().format(record)


class _RequestIdFilter(logging.Filter):
    """Stamps the id of the request being handled (if any) on the record, in the thread that logged it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = current_request_id.get()
        return True


class ReopeningFileHandler(logging.StreamHandler):
    """Appends to ``path``, line-buffered; reopens it when the file at ``path`` is no longer the one open (moved
    or deleted by log rotation), checked at most once a second."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        super().__init__(self._open())
        self._checked = time.monotonic()

    def _open(self):
        stream = open(self.path, "a", buffering=1, encoding="utf-8", errors="replace")
        self._identity = os.fstat(stream.fileno())[1:3]  # (inode, device)
        return stream

    def emit(self, record: logging.LogRecord) -> None:
        now = time.monotonic()
        if now - self._checked >= 1.0:
            self._checked = now
            try:
                moved = os.stat(self.path)[1:3] != self._identity
            except OSError:
                moved = True
            if moved:
                try:
                    old, self.stream = self.stream, self._open()
                    old.close()
                except OSError:
                    pass  # keep writing where we can; the next check tries again
        super().emit(record)

    def close(self) -> None:
        self.acquire()
        try:
            try:
                self.flush()
            finally:
                if self.stream is not None:
                    self.stream.close()
        finally:
            self.release()
            super().close()


def make_handler(log_format: str, event_log: str, node: str) -> logging.Handler:
    handler: logging.Handler
    if event_log in ("", "-"):
        handler = logging.StreamHandler(sys.stderr)
    else:
        handler = ReopeningFileHandler(event_log)
    handler.addFilter(Redactor())
    handler.addFilter(_RequestIdFilter())
    handler.setFormatter(JsonFormatter(node) if log_format == "json" else TextFormatter())
    return handler


def configure(config) -> logging.Handler:
    """Send every logger's records to the event log of ``config`` (replacing earlier handlers of the root)."""
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    handler = make_handler(config.log_format, config.event_log, config.node_name)
    root.addHandler(handler)
    root.setLevel(config.log_level.upper())
    logging.captureWarnings(True)
    return handler
