"""The event log of a real server (#10, atoll/server/logsetup.py): JSON lines in the file ``event_log`` names,
written by every worker of ``--workers 2``; a line logged while a request is handled carries that request's id,
the same id as its access log line; ``log_level = warning`` keeps info lines out, ``log_format = text`` writes
plain lines; and no secret appears in any log, even at debug level, with a bucket linked with a secret key and
clients sending bad signatures.
"""

from __future__ import annotations

import json
import os
import secrets
import urllib.error
import urllib.request

import pytest
from botocore.exceptions import ClientError

from coldstores import fresh_name
from harness import AtollProcess, admin_request, s3_client, stop_cleanly, wait_until

pytestmark = [pytest.mark.single_node, pytest.mark.timeout(120)]


def json_lines(path: str) -> list[dict]:
    try:
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.endswith("\n")]
    except FileNotFoundError:
        return []


def test_event_lines_carry_the_request_id_of_their_access_line_and_no_secret(workdir, moto_s3, s3_cold_bucket):
    data_dir = os.path.join(workdir, f"events-{secrets.token_hex(4)}")
    event_log = os.path.join(data_dir + "-logs", "events.jsonl")
    access_log = os.path.join(data_dir + "-logs", "access.jsonl")
    server = AtollProcess(data_dir=data_dir, workers=2, extra_env={
        "ATOLL_EVENT_LOG": event_log, "ATOLL_ACCESS_LOG": access_log, "ATOLL_LOG_LEVEL": "debug",
        "ATOLL_NODE": "events-node"})
    server.start()
    cold_secret = "cold-" + secrets.token_urlsafe(24)
    bad_secret = "bad-" + secrets.token_urlsafe(24)
    try:
        bucket = fresh_name("events")
        server.client().create_bucket(Bucket=bucket)
        linked = admin_request(server, "PUT", f"/api/v1/buckets/{bucket}/link", {
            "url": f"s3://{s3_cold_bucket}/p", "mode": "writeback",
            "options": {"endpoint": moto_s3.endpoint, "access_key_id": "AKCOLD", "secret_access_key": cold_secret,
                        "region": moto_s3.region}})
        assert linked.status == 200, linked.body
        s3 = server.client()
        s3.put_object(Bucket=bucket, Key="k", Body=b"through to the cold store")  # the drain uses the secret
        wait_until(lambda: moto_s3.client().list_objects_v2(Bucket=s3_cold_bucket).get("KeyCount"), 20,
                   "the drain to upload")

        # Clients signing with a wrong secret, in a header and in a presigned URL.
        bad = s3_client(server.endpoint, server.access_key, bad_secret)
        for _ in range(3):
            with pytest.raises(ClientError):
                bad.get_object(Bucket=bucket, Key="k")
        url = bad.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "k"}, ExpiresIn=60)
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(url, timeout=10)

        paused = admin_request(server, "POST", "/api/v1/drain/pause")
        assert paused.status == 200, paused.body
        event = wait_until(lambda: next((line for line in json_lines(event_log)
                                         if line["message"] == "drain paused through the admin API"), None), 10,
                           "the drain-paused event line")
        access = wait_until(lambda: next((line for line in json_lines(access_log)
                                          if line["op"] == "admin.drain"), None), 10, "the admin access line")
        assert event["request_id"] == access["request_id"], (event, access)
        assert (event["level"], event["logger"], event["node"]) == ("info", "atoll.admin", "events-node")
        assert int(access["request_id"][:-16], 16) == event["pid"]  # the primary worker served and logged it
        assert admin_request(server, "POST", "/api/v1/drain/resume").status == 200
    finally:
        stop_cleanly(server)

    lines = json_lines(event_log)
    # Both workers inherited the event log: each says it is stopping, with its own pid, outside any request.
    stopping = [line for line in lines if line["message"].startswith("worker ") and "stopping" in line["message"]]
    assert len({line["pid"] for line in stopping}) == 2, stopping
    assert all(line["message"].startswith(f"worker {line['pid']} ") and "request_id" not in line for line in stopping)
    assert all({"time", "level", "logger", "message", "node", "pid"} <= set(line) for line in lines)
    everything = "".join(open(path, encoding="utf-8", errors="replace").read()
                         for path in (event_log, access_log, server.log_path))
    for secret in (cold_secret, bad_secret, server.secret_key, server.admin_token):
        assert secret not in everything


def test_warning_level_keeps_info_lines_out_and_text_format_is_plain(workdir):
    server = AtollProcess(data_dir=os.path.join(workdir, f"quiet-{secrets.token_hex(4)}"), extra_env={
        "ATOLL_LOG_LEVEL": "warning", "ATOLL_LOG_FORMAT": "text"})
    server.start()
    try:
        assert admin_request(server, "POST", "/api/v1/drain/pause").status == 200
        assert admin_request(server, "POST", "/api/v1/drain/resume").status == 200
    finally:
        stop_cleanly(server)
    log = server.log_text()  # event lines go to stderr (event_log = ""), which the harness keeps
    assert "Atoll S3 endpoint on" in log  # the start-up lines are printed, not logged
    assert "drain paused" not in log and "stopping" not in log and " INFO " not in log, log[-3000:]
    assert '{"time"' not in log


def test_info_level_text_lines_name_the_request(workdir):
    server = AtollProcess(data_dir=os.path.join(workdir, f"text-{secrets.token_hex(4)}"), extra_env={
        "ATOLL_LOG_FORMAT": "text"})
    server.start()
    try:
        answer = admin_request(server, "POST", "/api/v1/drain/pause")
        assert answer.status == 200
        line = wait_until(lambda: next((line for line in server.log_text().splitlines()
                                        if "drain paused" in line), None), 10, "the drain-paused line")
    finally:
        stop_cleanly(server)
    assert " INFO atoll.admin [req " in line and line.endswith("]: drain paused through the admin API"), line
