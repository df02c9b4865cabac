"""The event log's formats and redaction (atoll/server/logsetup.py): JSON lines with the request id of the request
being handled, the text alternative, credentials masked in messages and tracebacks, levels, and a file that is
reopened after log rotation moved it."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from types import SimpleNamespace

import pytest

from atoll.http.context import request_id
from atoll.server import logsetup

SECRETS = {
    "sigv4": ("Authorization: AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260101/us-east-1/s3/aws4_request, "
              "SignedHeaders=host;x-amz-date, Signature=fe5f80f77d5fa3beca038a248ff027d0445342fe2855ddc963176630326f1024",
              "fe5f80f77d5fa3beca038a248ff027d0445342fe2855ddc963176630326f1024"),
    "presigned": ("GET /b/k?X-Amz-Credential=AKID%2F20260101&X-Amz-Signature=0badc0ffee1234&X-Amz-Expires=60",
                  "0badc0ffee1234"),
    "sas": ("https://acct.blob.core.windows.net/c/blob?sv=2021-08-06&se=2026-12-01&sp=r&sig=Zm9vYmFyYmF6cXV4%3D",
            "Zm9vYmFyYmF6cXV4"),
    "account key": ("DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=c2VjcmV0LWtleS1ieXRlcw==;"
                    "EndpointSuffix=core.windows.net", "c2VjcmV0LWtleS1ieXRlcw=="),
    "url password": ("cannot connect to postgresql://atoll:hunter2-pw@db.local:5432/atoll", "hunter2-pw"),
    "bearer": ("headers: {'authorization': 'Bearer tok-1234567890abcdef'}", "tok-1234567890abcdef"),
    "security token": ("x-amz-security-token: FQoGZXIvYXdzEXAMPLETOKEN", "FQoGZXIvYXdzEXAMPLETOKEN"),
    "secret option": ("link options {'secret_access_key': 'wJalrXUtnFEMI/K7MDENG', 'region': 'r'}",
                      "wJalrXUtnFEMI/K7MDENG"),
}


@pytest.mark.parametrize("name", sorted(SECRETS))
def test_redaction_masks_each_kind_of_credential_and_keeps_the_rest(name):
    text, secret = SECRETS[name]
    redacted = logsetup.redact(text)
    assert secret not in redacted and "***" in redacted, redacted
    assert redacted[:12] == text[:12]  # the message is still there around the mask


def test_redaction_leaves_ordinary_messages_alone():
    for text in ("drain paused through the admin API", "http://127.0.0.1:8080/path?x=a@b",
                 "the last server did not stop cleanly: removed 3 unreferenced blobs",
                 "worker 1234 stopping: finishing in-flight requests (up to 30.0s)", "s3://bucket/prefix/key"):
        assert logsetup.redact(text) == text


def _record(message: str, *args, level: int = logging.INFO, exc_info=None) -> logging.LogRecord:
    return logging.LogRecord("atoll.test", level, __file__, 1, message, args, exc_info)


def _emit(handler: logging.Handler, record: logging.LogRecord) -> None:
    assert handler.filter(record)
    handler.emit(record)


class _Sink(logging.Handler):
    def __init__(self, formatter: logging.Formatter) -> None:
        super().__init__()
        self.lines: list[str] = []
        self.addFilter(logsetup.Redactor())
        self.addFilter(logsetup._RequestIdFilter())
        self.setFormatter(formatter)

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def test_json_lines_carry_time_level_logger_node_pid_and_the_request_id_inside_a_request():
    sink = _Sink(logsetup.JsonFormatter("node-a"))
    _emit(sink, _record("outside %s", "any request"))
    token = request_id.set("4F2A0000000000000001")
    try:
        _emit(sink, _record("inside a request, key=%r", "k"))
    finally:
        request_id.reset(token)
    outside, inside = (json.loads(line) for line in sink.lines)
    assert set(outside) == {"time", "level", "logger", "message", "node", "pid"}
    assert (outside["level"], outside["logger"], outside["message"], outside["node"], outside["pid"]) == (
        "info", "atoll.test", "outside any request", "node-a", os.getpid())
    assert isinstance(outside["time"], float) and round(outside["time"], 3) == outside["time"]
    assert inside["request_id"] == "4F2A0000000000000001" and inside["message"] == "inside a request, key='k'"


def test_tasks_and_threads_started_by_a_request_log_its_id():
    sink = _Sink(logsetup.JsonFormatter("n"))
    log = logging.getLogger("atoll.test.ctx")
    log.addHandler(sink)
    log.setLevel(logging.INFO)
    log.propagate = False

    async def in_task():
        await asyncio.sleep(0)
        log.info("from a task")

    async def handler():
        token = request_id.set("REQ1")
        try:
            await asyncio.to_thread(log.info, "from a thread")
            task = asyncio.create_task(in_task())
        finally:
            request_id.reset(token)
        log.info("after")
        await task
    try:
        asyncio.run(handler())
    finally:
        log.removeHandler(sink)
    lines = [json.loads(line) for line in sink.lines]
    assert [(line["message"], line.get("request_id")) for line in lines] == [
        ("from a thread", "REQ1"), ("after", None), ("from a task", "REQ1")]


def test_exceptions_go_to_exc_redacted_and_the_text_format_tags_the_request():
    try:
        raise ValueError("cannot reach https://u:p4ssw0rd-x@cold.example/c?sig=s1gn4ture")
    except ValueError:
        import sys
        record = _record("upload failed for %s", "AccountKey=a2V5a2V5a2V5", level=logging.ERROR,
                         exc_info=sys.exc_info())
    sink = _Sink(logsetup.JsonFormatter("n"))
    _emit(sink, record)
    line = json.loads(sink.lines[0])
    assert line["level"] == "error" and line["message"] == "upload failed for AccountKey=***"
    assert "Traceback" in line["exc"] and "ValueError" in line["exc"]
    assert "p4ssw0rd-x" not in sink.lines[0] and "s1gn4ture" not in sink.lines[0] and "a2V5" not in sink.lines[0]

    text = _Sink(logsetup.TextFormatter())
    token = request_id.set("REQ9")
    try:
        _emit(text, _record("drain %s", "paused"))
    finally:
        request_id.reset(token)
    assert text.lines[0].endswith(" INFO atoll.test [req REQ9]: drain paused"), text.lines[0]


def _config(tmp_path, **settings) -> SimpleNamespace:
    values = {"log_level": "info", "log_format": "json", "event_log": str(tmp_path / "logs" / "events.log"),
              "node_name": "node-t"}
    values.update(settings)
    return SimpleNamespace(**values)


@pytest.fixture
def restore_root_logging():
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    for handler in saved[0]:
        root.addHandler(handler)
    root.setLevel(saved[1])


def test_configure_writes_at_the_level_and_reopens_a_rotated_file(tmp_path, restore_root_logging):
    path = tmp_path / "logs" / "events.log"
    handler = logsetup.configure(_config(tmp_path, log_level="warning"))
    log = logging.getLogger("atoll.test.configure")
    log.info("an info line")
    log.warning("a warning with password=pw-123456")
    lines = [json.loads(line) for line in path.read_text().splitlines()]  # line-buffered: there already
    assert [(line["level"], line["message"]) for line in lines] == [("warning", "a warning with password=***")]

    os.rename(path, tmp_path / "logs" / "events.log.1")  # logrotate's move
    handler._checked = 0.0  # the next line checks the path at once instead of within a second
    log.error("after rotation")
    assert json.loads(path.read_text())["message"] == "after rotation"
    assert "after rotation" not in (tmp_path / "logs" / "events.log.1").read_text()


def test_text_format_to_stderr(capsys, tmp_path, restore_root_logging):
    logsetup.configure(_config(tmp_path, event_log="-", log_format="text", log_level="debug"))
    logging.getLogger("atoll.test.text").debug("debug line %d", 7)
    err = capsys.readouterr().err
    assert " DEBUG atoll.test.text: debug line 7" in err and not err.lstrip().startswith("{")
