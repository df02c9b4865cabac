"""The audit log and the pin API of the admin port (#10), against a real server: every mutating admin request after
authentication leaves one entry (token and SigV4-signed operators named as themselves, refusals with their error
code), ``GET /api/v1/audit`` and ``atoll audit`` page through them newest first, and no entry ever holds a secret
(a cold store's secret key, a created identity's secret, the admin token, a URL's password). Pins set and removed
through ``/api/v1/buckets/{bucket}/pins`` reach the objects' metadata.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import time

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from coldstores import fresh_name
from harness import AdminAnswer, AtollProcess, admin_request, meta_query, stop_cleanly, wait_until

pytestmark = [pytest.mark.single_node, pytest.mark.timeout(120)]

PIN_FOREVER = 253402300799.0


@pytest.fixture(scope="module")
def server(workdir):
    proc = AtollProcess(data_dir=os.path.join(workdir, f"audit-{secrets.token_hex(4)}"))
    proc.start()
    yield proc
    stop_cleanly(proc)


def signed(server: AtollProcess, method: str, path: str, body, key: str, secret: str) -> AdminAnswer:
    data = json.dumps(body).encode() if body is not None else b""
    request = AWSRequest(method=method, url=server.admin_endpoint + path, data=data,
                         headers={"Content-Type": "application/json"} if data else {})
    SigV4Auth(Credentials(key, secret), "atoll", "us-east-1").add_auth(request)
    return admin_request(server, method, path, token=None, headers=dict(request.headers.items()), raw=data or None)


def access_lines(server: AtollProcess) -> list[dict]:
    try:
        with open(os.path.join(server.data_dir, "logs", "access.log"), encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.endswith("\n")]
    except FileNotFoundError:
        return []


def entries(server: AtollProcess, **query) -> list[dict]:
    path = "/api/v1/audit" + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")
    answer = admin_request(server, "GET", path)
    assert answer.status == 200, answer.body
    return answer.json["entries"]


def test_token_and_signed_operators_leave_entries_with_their_own_names(server):
    operator = admin_request(server, "POST", "/api/v1/tenants/root/keys", {"name": "ops", "role": "admin"}).json
    before = entries(server, limit=1)[0]["id"]

    paused = admin_request(server, "POST", "/api/v1/drain/pause")
    assert paused.status == 200, paused.body
    tenant = fresh_name("aud")
    created = signed(server, "POST", "/api/v1/tenants", {"name": tenant, "wan_weight": 2},
                     operator["access_key_id"], operator["secret_access_key"])
    assert created.status == 201, created.body
    again = signed(server, "POST", "/api/v1/tenants", {"name": tenant}, operator["access_key_id"],
                   operator["secret_access_key"])
    assert again.status == 409, again.body
    quota = admin_request(server, "PUT", f"/api/v1/tenants/{tenant}/quota", {"max_bytes": 1 << 30})
    assert quota.status == 200, quota.body
    bad_json = admin_request(server, "POST", "/api/v1/tenants", raw=b"{not json")
    assert bad_json.status == 400
    missing = admin_request(server, "DELETE", "/api/v1/jobs/no-such-job")
    assert missing.status == 404
    # Not authenticated: refused before anything is known of the caller, and not an operator action.
    assert admin_request(server, "POST", "/api/v1/drain/pause", token="wrong").status == 401
    assert signed(server, "POST", "/api/v1/drain/pause", None, operator["access_key_id"], "wrong-secret").status \
        in (401, 403)
    # Reads leave no entry.
    assert admin_request(server, "GET", "/api/v1/status").status == 200

    new = [e for e in entries(server, limit=100) if e["id"] > before]
    got = [(e["actor"], e["action"], e["target"], e["outcome"]) for e in reversed(new)]
    assert got == [
        ("admin-token", "drain.pause", "drain", "ok"),
        (operator["access_key_id"], "tenant.create", tenant, "ok"),
        (operator["access_key_id"], "tenant.create", tenant, "TenantAlreadyExists"),
        ("admin-token", "quota.set", tenant, "ok"),
        ("admin-token", "tenant.create", "", "InvalidJSON"),
        ("admin-token", "job.cancel", "no-such-job", "NoSuchJob"),
    ], new
    by_action = {(e["action"], e["outcome"]): e for e in new}
    assert by_action[("tenant.create", "ok")]["detail"] == {"name": tenant, "wan_weight": 2}
    assert by_action[("quota.set", "ok")]["detail"] == {"max_bytes": 1 << 30}
    for entry in new:
        assert entry["node"] and entry["request_id"] and abs(entry["time"] - time.time()) < 60, entry
    assert len({e["request_id"] for e in new}) == len(new)

    # The request id is the access log's: the line of the refused tenant.create names the same id.
    refused = by_action[("tenant.create", "TenantAlreadyExists")]
    line = wait_until(lambda: next((line for line in access_lines(server)
                                    if line["request_id"] == refused["request_id"]), None), 5, "the access log line")
    assert (line["status"], line["op"], line["method"]) == (409, "admin.tenants", "POST"), line


def test_pages_go_back_with_before_and_the_cli_shows_the_same(server):
    for _ in range(3):
        assert admin_request(server, "POST", "/api/v1/drain/resume").status == 200
    first = entries(server, limit=2)
    second = entries(server, limit=2, before=first[-1]["id"])
    assert [e["id"] for e in first + second] == sorted((e["id"] for e in first + second), reverse=True)
    assert [e["id"] for e in first + second] == [e["id"] for e in entries(server, limit=4)]
    for query in ("limit=0", "limit=1001", "limit=x", "before=-1", "before=abc", "what=1"):
        answer = admin_request(server, "GET", f"/api/v1/audit?{query}")
        assert (answer.status, answer.json["error"]["code"]) in ((400, "InvalidArgument"),), (query, answer.body)

    cli = server.cli("audit", "--json", "--limit", "4")
    assert json.loads(cli.stdout) == entries(server, limit=4)
    table = server.cli("audit", "--limit", "2")
    assert "drain.resume" in table.stdout and "admin-token" in table.stdout
    assert server.cli("audit", "--limit", "0", check=False).returncode != 0


def test_no_secret_reaches_the_audit_log(server, moto_s3, s3_cold_bucket):
    cold_secret = "cold-" + secrets.token_urlsafe(24)
    url_password = "pw-" + secrets.token_hex(8)
    bucket = fresh_name("audsec")
    server.client().create_bucket(Bucket=bucket)
    linked = admin_request(server, "PUT", f"/api/v1/buckets/{bucket}/link", {
        "url": f"s3://{s3_cold_bucket}/x", "mode": "cache",
        "options": {"endpoint": moto_s3.endpoint, "access_key_id": "AKCOLD", "secret_access_key": cold_secret,
                    "region": moto_s3.region}})
    assert linked.status == 200, linked.body
    # Refused (an http:// store is read-only), with a password in its URL.
    refused = admin_request(server, "PUT", f"/api/v1/buckets/{bucket}/link", {
        "url": f"https://reader:{url_password}@127.0.0.1:1/c", "mode": "writeback", "check": False})
    assert refused.status == 400, refused.body
    key = admin_request(server, "POST", "/api/v1/tenants/root/keys", {"name": "robot", "role": "read"})
    assert key.status == 201
    identity_secret = key.json["secret_access_key"]

    log = entries(server, limit=1000)
    text = json.dumps(log) + server.cli("audit", "--json", "--limit", "1000").stdout + \
        server.cli("audit", "--limit", "1000").stdout
    text += json.dumps(meta_query(server, "SELECT * FROM audit"))
    for secret in (cold_secret, url_password, identity_secret, server.admin_token, server.secret_key):
        assert secret not in text
    link_entry = next(e for e in log if e["action"] == "link.set" and e["outcome"] == "ok" and e["target"] == bucket)
    assert link_entry["detail"] == {"url": f"s3://{s3_cold_bucket}/x", "mode": "cache", "options": [
        "access_key_id", "endpoint", "region", "secret_access_key"]}
    refused_entry = next(e for e in log if e["action"] == "link.set" and e["outcome"] == "InvalidArgument")
    assert refused_entry["detail"]["url"] == "https://reader:***@127.0.0.1:1/c", refused_entry
    key_entry = next(e for e in log if e["action"] == "key.create" and e["outcome"] == "ok")
    assert key_entry["detail"] == {"name": "robot", "role": "read", "access_key_id": key.json["access_key_id"]}


# --- pins -----------------------------------------------------------------------------------------------------

def pinned_until(server: AtollProcess, bucket: str) -> dict[str, float]:
    return dict(meta_query(server, "SELECT key, pinned_until FROM objects WHERE bucket = ?", (bucket,)))


def test_pins_are_set_for_a_while_or_for_good_and_removed(server):
    bucket = fresh_name("pins")
    s3 = server.client()
    s3.create_bucket(Bucket=bucket)
    for key, size in (("data/a", 10), ("data/b", 20), ("other/c", 5)):
        s3.put_object(Bucket=bucket, Key=key, Body=b"x" * size)

    answer = admin_request(server, "POST", f"/api/v1/buckets/{bucket}/pins", {"prefix": "data/"})
    assert answer.status == 200, answer.body
    assert answer.json == {"bucket": bucket, "prefix": "data/", "objects": 2, "bytes": 30, "until": None}
    assert pinned_until(server, bucket) == {"data/a": PIN_FOREVER, "data/b": PIN_FOREVER, "other/c": 0}

    start = time.time()
    answer = admin_request(server, "POST", f"/api/v1/buckets/{bucket}/pins", {"prefix": "", "seconds": 600})
    assert answer.status == 200, answer.body
    assert (answer.json["objects"], answer.json["bytes"]) == (3, 35)
    assert start + 600 - 0.01 <= answer.json["until"] <= time.time() + 600
    assert list(pinned_until(server, bucket).values()) == [pytest.approx(answer.json["until"], abs=0.01)] * 3

    answer = admin_request(server, "DELETE", f"/api/v1/buckets/{bucket}/pins?prefix=other%2F")
    assert answer.json == {"bucket": bucket, "prefix": "other/", "objects": 1, "bytes": 5, "until": 0}
    assert pinned_until(server, bucket)["other/c"] == 0 and pinned_until(server, bucket)["data/a"] > start

    log = entries(server, limit=3)
    assert [(e["action"], e["target"], e["outcome"]) for e in log] == [
        ("pin.remove", f"{bucket}/other/", "ok"), ("pin.add", bucket, "ok"), ("pin.add", f"{bucket}/data/", "ok")]
    assert log[0]["detail"] == {"prefix": "other/", "objects": 1, "bytes": 5}


@pytest.mark.parametrize("method, path_tail, body, status, code", [
    ("POST", "pins", {}, 400, "MissingField"),
    ("POST", "pins", {"prefix": 3}, 400, "InvalidArgument"),
    ("POST", "pins", {"prefix": "", "seconds": -1}, 400, "InvalidArgument"),
    ("POST", "pins", {"prefix": "", "seconds": "60"}, 400, "InvalidArgument"),
    ("POST", "pins", {"prefix": "", "seconds": True}, 400, "InvalidArgument"),
    ("POST", "pins", {"prefix": "", "seconds": 1e300}, 400, "InvalidArgument"),
    ("POST", "pins", {"prefix": "", "until": 5}, 400, "UnknownField"),
    ("POST", "pins", {"prefix": "a" * 1025}, 400, "InvalidArgument"),
    ("POST", "pins", None, 400, "MissingBody"),
    ("DELETE", "pins", None, 400, "MissingField"),
    ("DELETE", "pins?prefix=a&seconds=1", None, 400, "InvalidArgument"),
    ("GET", "pins", None, 405, "MethodNotAllowed"),
])
def test_bad_pin_requests_are_clear_client_errors(server, method, path_tail, body, status, code):
    bucket = fresh_name("pinbad")
    server.client().create_bucket(Bucket=bucket)
    answer = admin_request(server, method, f"/api/v1/buckets/{bucket}/pins" + path_tail.removeprefix("pins"), body)
    assert (answer.status, answer.json["error"]["code"]) == (status, code), answer.body


def test_pins_of_an_unknown_bucket_are_404(server):
    for method, tail, body in (("POST", "", {"prefix": ""}), ("DELETE", "?prefix=", None)):
        answer = admin_request(server, method, f"/api/v1/buckets/{fresh_name('nobucket')}/pins{tail}", body)
        assert (answer.status, answer.json["error"]["code"]) == (404, "NoSuchBucket"), answer.body


def test_an_entry_that_cannot_be_written_is_logged_and_the_action_stands(workdir):
    proc = AtollProcess(data_dir=os.path.join(workdir, f"audit-fail-{secrets.token_hex(4)}"))
    proc.start()
    try:
        db = sqlite3.connect(os.path.join(proc.data_dir, "meta.sqlite3"), timeout=10)
        db.execute("ALTER TABLE audit RENAME TO audit_away")  # the store fails every audit write from now on
        db.commit()
        answer = admin_request(proc, "POST", "/api/v1/drain/pause")
        assert answer.status == 200 and answer.json["paused"] is True, answer.body
        assert meta_query(proc, "SELECT value FROM counters WHERE name = 'drain_paused'") == [(1,)]
        line = wait_until(lambda: next((json.loads(line) for line in proc.log_text().splitlines()
                                        if "audit entry not recorded" in line), None), 10, "the error line")
        assert line["level"] == "error" and line["logger"] == "atoll.audit", line
        assert '"action":"drain.pause"' in line["message"] and line["request_id"] in line["message"], line
        db.execute("ALTER TABLE audit_away RENAME TO audit")
        db.commit()
        db.close()
        assert admin_request(proc, "POST", "/api/v1/drain/resume").status == 200
        assert [e["action"] for e in entries(proc, limit=5)] == ["drain.resume"]
    finally:
        stop_cleanly(proc)


def test_cli_actions_leave_entries_named_after_the_unix_user(server, moto_s3, s3_cold_bucket):
    """The CLI changes the metadata store itself, not through the admin API: it records its own entries, refused
    ones included, and keeps link option values (secrets) out of them."""
    import pwd

    actor = f"cli:{pwd.getpwuid(os.getuid()).pw_name}"
    before = entries(server, limit=1)[0]["id"]
    tenant = fresh_name("clit")
    bucket = fresh_name("clib")
    server.cli("tenant", "create", tenant, "--wan-weight", "3")
    server.cli("quota", "set", tenant, "--max-objects", "100")
    server.cli("drain", "pause")
    server.cli("drain", "resume")
    server.client().create_bucket(Bucket=bucket)
    cold_secret = "cold-" + secrets.token_urlsafe(24)
    server.cli("bucket", "link", bucket, f"s3://{s3_cold_bucket}/cli", "--mode", "writeback", "--no-check",
               "-o", f"endpoint={moto_s3.endpoint}", "-o", "access_key_id=AKCOLD", "-o",
               f"secret_access_key={cold_secret}", "-o", f"region={moto_s3.region}")
    server.cli("pin", bucket, "--prefix", "hot/", "--for", "60")
    refused = server.cli("tenant", "delete", "root", check=False)
    assert refused.returncode != 0

    found = [e for e in entries(server, limit=50) if e["id"] > before]
    assert all(e["actor"] == actor and e["request_id"] == "" for e in found), found
    by_action = {e["action"]: e for e in reversed(found)}
    assert {"tenant.create", "quota.set", "drain.pause", "drain.resume", "link.set", "pin.add",
            "tenant.delete"} <= set(by_action), [e["action"] for e in found]
    assert by_action["tenant.create"]["target"] == tenant and by_action["tenant.create"]["detail"]["wan_weight"] == 3
    assert by_action["quota.set"]["detail"] == {"max_objects": 100}
    assert by_action["pin.add"]["target"] == f"{bucket}/hot/" and by_action["pin.add"]["outcome"] == "ok"
    assert by_action["tenant.delete"]["outcome"] == "InvalidRequest"  # the root tenant stays
    link = by_action["link.set"]
    assert link["outcome"] == "ok" and link["detail"]["mode"] == "writeback"
    assert link["detail"]["options"] == ["access_key_id", "endpoint", "region", "secret_access_key"]
    assert cold_secret not in json.dumps(found) + json.dumps(meta_query(server, "SELECT * FROM audit"))
