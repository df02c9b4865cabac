"""Governance through the admin API (#7): operators sign in with the token or SigV4, manage tenants, keys, quotas
and rate limits, and read usage; `atoll usage` shows the same numbers.

Everything runs against the session server over real sockets: boto3 for S3, botocore's SigV4 signer and curl's
``--aws-sigv4`` for the admin API, the `atoll` CLI on the server's data directory.
"""

from __future__ import annotations

import json
import secrets
import subprocess

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from harness import AdminAnswer, AtollProcess, admin_call, admin_request, meta_query, s3_client, wait_until


def _name(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def signed(server: AtollProcess, method: str, path: str, body=None, *, key: str | None = None,
           secret: str | None = None, region: str = "us-east-1", service: str = "atoll",
           send: bytes | None = None) -> AdminAnswer:
    """An admin request signed with SigV4 by botocore (which, for a service other than s3, sends no
    x-amz-content-sha256: the server hashes the body); ``send`` replaces the body after signing."""
    data = json.dumps(body).encode() if body is not None else b""
    request = AWSRequest(method=method, url=server.admin_endpoint + path, data=data,
                         headers={"Content-Type": "application/json"} if data else {})
    SigV4Auth(Credentials(key or server.access_key, secret or server.secret_key), service, region).add_auth(request)
    return admin_request(server, method, path, token=None, headers=dict(request.headers.items()),
                         raw=send if send is not None else (data or None))


def new_tenant(server: AtollProcess, **settings) -> str:
    name = _name("gov")
    admin_call(server, "POST", "/api/v1/tenants", {"name": name, **settings})
    return name


def new_key(server: AtollProcess, tenant: str, **fields) -> dict:
    answer = admin_request(server, "POST", f"/api/v1/tenants/{tenant}/keys", {"name": _name("key"), **fields})
    assert answer.status == 201, answer.body
    return answer.json


def error_of(answer: AdminAnswer) -> tuple[int, str]:
    return answer.status, answer.json["error"]["code"]


def test_operators_sign_in_with_the_token_or_sigv4_and_nobody_else(atoll):
    assert admin_request(atoll, "GET", "/api/v1/tenants").status == 200
    assert error_of(admin_request(atoll, "GET", "/api/v1/tenants", token=None)) == (401, "Unauthorized")

    # The root identity, signing for any service name.
    for service in ("atoll", "execute-api"):
        answer = signed(atoll, "GET", "/api/v1/tenants", service=service)
        assert answer.status == 200, answer.body
        assert "root" in [t["name"] for t in answer.json["tenants"]]

    # An unscoped admin of the root tenant is an operator too; it may write (the body is hashed by the server).
    operator = new_key(atoll, "root", role="admin")
    tenant = _name("gov")
    answer = signed(atoll, "POST", "/api/v1/tenants", {"name": tenant}, key=operator["access_key_id"],
                    secret=operator["secret_access_key"])
    assert answer.status == 201, answer.body
    assert answer.headers["location"] == f"/api/v1/tenants/{tenant}"

    # Not operators: a tenant's admin, a root-tenant identity below admin, a scoped root-tenant admin.
    outsiders = [new_key(atoll, tenant, role="admin"), new_key(atoll, "root", role="write"),
                 new_key(atoll, "root", role="admin", scopes=["some-bucket"])]
    for outsider in outsiders:
        answer = signed(atoll, "GET", "/api/v1/tenants", key=outsider["access_key_id"],
                        secret=outsider["secret_access_key"])
        assert error_of(answer) == (403, "AccessDenied"), answer.body
        assert outsider["secret_access_key"] not in answer.text

    # Bad signatures are 401, like a bad token, and never say more than why.
    assert error_of(signed(atoll, "GET", "/api/v1/tenants", secret="wrong" * 8)) == (401, "SignatureDoesNotMatch")
    assert error_of(signed(atoll, "GET", "/api/v1/tenants", key="AKNOBODY")) == (401, "InvalidAccessKeyId")
    assert error_of(signed(atoll, "GET", "/api/v1/tenants", region="eu-west-1")) == \
        (401, "AuthorizationHeaderMalformed")
    tampered = signed(atoll, "PATCH", f"/api/v1/tenants/{tenant}", {"wan_weight": 2},
                      send=json.dumps({"wan_weight": 50}).encode())
    assert error_of(tampered) == (401, "SignatureDoesNotMatch")
    assert admin_call(atoll, "GET", f"/api/v1/tenants/{tenant}")["wan_weight"] == 1.0

    # curl, as docs/admin-api.md shows it.
    base = ["curl", "-s", "-w", "\n%{http_code}", "--aws-sigv4", "aws:amz:us-east-1:atoll",
            "--user", f"{atoll.access_key}:{atoll.secret_key}"]
    out = subprocess.run([*base, "-X", "PATCH", "-H", "Content-Type: application/json", "-d", '{"wan_weight": 4}',
                          f"{atoll.admin_endpoint}/api/v1/tenants/{tenant}"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    body, status = out.rsplit("\n", 1)
    assert status == "200", out
    assert json.loads(body)["wan_weight"] == 4.0


def test_tenant_keys_quotas_and_qos_through_the_api(atoll):
    tenant = new_tenant(atoll, warm_reserved=1 << 20, warm_cap=1 << 30, wan_weight=3)
    assert error_of(admin_request(atoll, "POST", "/api/v1/tenants", {"name": tenant})) == \
        (409, "TenantAlreadyExists")

    # A key made through the API works on S3 at once, inside its tenant.
    key = new_key(atoll, tenant, role="admin")
    assert key["tenant"] == tenant and key["role"] == "admin" and key["secret_access_key"]
    s3 = s3_client(atoll.endpoint, key["access_key_id"], key["secret_access_key"])
    bucket = _name("govb")
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="hello", Body=b"world")
    assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == [bucket]
    reader = new_key(atoll, tenant, role="read", scopes=[bucket])
    s3_reader = s3_client(atoll.endpoint, reader["access_key_id"], reader["secret_access_key"])
    assert s3_reader.get_object(Bucket=bucket, Key="hello")["Body"].read() == b"world"
    with pytest.raises(ClientError) as refused:
        s3_reader.put_object(Bucket=bucket, Key="nope", Body=b"x")
    assert refused.value.response["Error"]["Code"] == "AccessDenied"

    # Settings, quotas and rate limits: fields left out keep their value, 0 or null removes a limit.
    assert admin_call(atoll, "PATCH", f"/api/v1/tenants/{tenant}", {"wan_weight": 2.5})["warm_cap"] == 1 << 30
    admin_call(atoll, "PUT", f"/api/v1/tenants/{tenant}/quota", {"max_bytes": 10 << 30, "max_objects": 1000})
    view = admin_call(atoll, "PUT", f"/api/v1/tenants/{tenant}/quota", {"max_objects": None})
    assert view["quota"] == {"max_bytes": 10 << 30, "max_objects": 0}
    view = admin_call(atoll, "PUT", f"/api/v1/tenants/{tenant}/qos",
                      {"requests_per_second": 500, "request_burst": 1000, "bytes_per_second": 100 << 20})
    assert view["qos"] == {"requests_per_second": 500.0, "request_burst": 1000.0,
                           "bytes_per_second": float(100 << 20), "bytes_burst": 0.0}
    admin_call(atoll, "PUT", f"/api/v1/buckets/{bucket}/quota", {"max_bytes": 1 << 30, "max_objects": 50})
    view = admin_call(atoll, "PUT", f"/api/v1/buckets/{bucket}/qos", {"requests_per_second": 200})
    assert view == {"bucket": bucket, "tenant": tenant, "quota": {"max_bytes": 1 << 30, "max_objects": 50},
                    "qos": {"requests_per_second": 200.0, "request_burst": 0.0, "bytes_per_second": 0.0,
                            "bytes_burst": 0.0}}

    # The CLI and the metadata see what the API set.
    shown = json.loads(atoll.cli("tenant", "show", tenant, "--json").stdout)
    assert (shown["warm_reserved"], shown["warm_cap"], shown["wan_weight"]) == (1 << 20, 1 << 30, 2.5)
    assert shown["limits"] == {"max_bytes": 10 << 30, "max_objects": 0, "requests_per_second": 500.0,
                               "request_burst": 1000.0, "bytes_per_second": float(100 << 20), "bytes_burst": 0.0}
    assert {p["access_key_id"]: p["role"] for p in shown["identities"]} == \
        {key["access_key_id"]: "admin", reader["access_key_id"]: "read"}
    assert shown["buckets"] == [bucket]
    (limits,) = meta_query(atoll, "SELECT limits FROM buckets WHERE name = ?", (bucket,))[0]
    assert json.loads(limits)["max_objects"] == 50 and json.loads(limits)["requests_per_second"] == 200

    listed = admin_call(atoll, "GET", f"/api/v1/tenants/{tenant}")
    assert [b["bucket"] for b in listed["buckets"]] == [bucket]
    assert all("secret" not in field for person in listed["identities"] for field in person)

    # A tenant goes only once it owns no buckets, and takes its identities along.
    assert error_of(admin_request(atoll, "DELETE", f"/api/v1/tenants/{tenant}")) == (409, "TenantNotEmpty")
    s3.delete_object(Bucket=bucket, Key="hello")
    s3.delete_bucket(Bucket=bucket)
    assert admin_call(atoll, "DELETE", f"/api/v1/tenants/{tenant}") == {"tenant": tenant, "deleted": True}
    assert error_of(admin_request(atoll, "GET", f"/api/v1/tenants/{tenant}")) == (404, "NoSuchTenant")
    assert meta_query(atoll, "SELECT 1 FROM identities WHERE tenant = ?", (tenant,)) == []


def test_usage_matches_what_was_written_and_the_counters_move(atoll):
    tenant = new_tenant(atoll)
    key = new_key(atoll, tenant)
    s3 = s3_client(atoll.endpoint, key["access_key_id"], key["secret_access_key"])
    buckets = [_name("usea"), _name("useb")]
    for bucket in buckets:
        s3.create_bucket(Bucket=bucket)
    sizes = {buckets[0]: [1000, 2000, 3000], buckets[1]: [70000]}
    for bucket, object_sizes in sizes.items():
        for i, size in enumerate(object_sizes):
            s3.put_object(Bucket=bucket, Key=f"obj-{i}", Body=secrets.token_bytes(size))
    s3.put_object(Bucket=buckets[0], Key="obj-0", Body=b"x" * 500)  # an overwrite that shrinks
    sizes[buckets[0]][0] = 500
    upload = s3.create_multipart_upload(Bucket=buckets[1], Key="big")["UploadId"]
    s3.upload_part(Bucket=buckets[1], Key="big", UploadId=upload, PartNumber=1, Body=b"p" * 4096)  # counts
    for i in range(3):
        s3.get_object(Bucket=buckets[0], Key=f"obj-{i}")["Body"].read()
    requests_made = 2 + 4 + 1 + 2 + 3
    stored = {bucket: sum(object_sizes) for bucket, object_sizes in sizes.items()}
    stored[buckets[1]] += 4096

    def usage() -> dict:
        (view,) = admin_call(atoll, "GET", f"/api/v1/usage?tenant={tenant}")["tenants"]
        return view

    # Counters move from the workers into the node-wide counters once a second.
    view = wait_until(lambda: (v := usage())["requests"] >= requests_made and v, 10, "the request counters")
    assert view["tenant"] == tenant
    assert (view["bytes"], view["objects"]) == (sum(stored.values()), 4)
    assert {b["bucket"]: (b["bytes"], b["objects"]) for b in view["buckets"]} == \
        {buckets[0]: (stored[buckets[0]], 3), buckets[1]: (stored[buckets[1]], 1)}
    assert view["warm_bytes"] >= sum(sum(s) for s in sizes.values())
    assert view["throttled"] == 0
    assert view["bytes_in"] == sum(stored.values()) + 1000  # the first obj-0 too
    assert view["bytes_out"] >= stored[buckets[0]]  # the objects read, and XML answers
    assert view["rates"]["requests_per_second"] > 0 and view["rates"]["bytes_in_per_second"] > 0
    assert view["wan"] == {"bytes": 0, "bytes_per_second": 0.0, "share": None, "traffic": {}}  # not linked

    everyone = admin_call(atoll, "GET", "/api/v1/usage")
    assert {"root", tenant} <= {t["tenant"] for t in everyone["tenants"]}
    assert everyone["window_seconds"] > 0

    # atoll usage reaches the same server (its admin address and token come from the environment here).
    report = json.loads(atoll.cli("usage", "--tenant", tenant, "--json").stdout)
    assert report["server"]["reachable"] is True
    (shown,) = report["tenants"]
    assert (shown["bytes"], shown["objects"]) == (sum(stored.values()), 4)
    assert shown["requests"] >= requests_made
    table = atoll.cli("usage", "--tenant", tenant).stdout
    assert tenant in table and buckets[0] in table
    missing = atoll.cli("usage", "--tenant", "no-such-tenant", check=False)
    assert missing.returncode == 1 and "no tenant named no-such-tenant" in missing.stderr
    assert "Traceback" not in missing.stderr
    s3.abort_multipart_upload(Bucket=buckets[1], Key="big", UploadId=upload)


BAD_REQUESTS = [
    ("POST", "/api/v1/tenants", b"{not json", 400, "InvalidJSON"),
    ("POST", "/api/v1/tenants", b"", 400, "MissingBody"),
    ("POST", "/api/v1/tenants", b"[1, 2]", 400, "InvalidJSON"),
    ("POST", "/api/v1/tenants", {"wan_weight": 2}, 400, "MissingField"),
    ("POST", "/api/v1/tenants", {"name": "Not_A_Name"}, 400, "InvalidArgument"),
    ("POST", "/api/v1/tenants", {"name": "fine-name", "colour": "red"}, 400, "UnknownField"),
    ("POST", "/api/v1/tenants", {"name": "fine-name", "warm_reserved": 10, "warm_cap": 5}, 400, "InvalidArgument"),
    ("PATCH", "/api/v1/tenants/{t}", {"wan_weight": 0}, 400, "InvalidArgument"),
    ("PATCH", "/api/v1/tenants/{t}", {"warm_cap": "10GiB"}, 400, "InvalidArgument"),
    ("PATCH", "/api/v1/tenants/{t}", {"max_bytes": 10}, 400, "UnknownField"),
    ("PUT", "/api/v1/tenants/{t}/quota", {"max_bytes": -1}, 400, "InvalidArgument"),
    ("PUT", "/api/v1/tenants/{t}/quota", {"max_objects": 1.5}, 400, "InvalidArgument"),
    ("PUT", "/api/v1/tenants/{t}/quota", {"requests_per_second": 5}, 400, "UnknownField"),
    ("PUT", "/api/v1/tenants/{t}/qos", {"requests_per_second": "fast"}, 400, "InvalidArgument"),
    ("PUT", "/api/v1/tenants/{t}/qos", {"bytes_per_second": True}, 400, "InvalidArgument"),
    ("PUT", "/api/v1/tenants/{t}/qos", b'{"bytes_burst": Infinity}', 400, "InvalidArgument"),
    ("POST", "/api/v1/tenants/{t}/keys", {"name": "k", "role": "owner"}, 400, "InvalidArgument"),
    ("POST", "/api/v1/tenants/{t}/keys", {"name": "k", "scopes": "one-bucket"}, 400, "InvalidArgument"),
    ("POST", "/api/v1/tenants/{t}/keys", {"name": "k", "scopes": ["Bad!Bucket"]}, 400, "InvalidBucketName"),
    ("POST", "/api/v1/tenants/{t}/keys", {"name": ""}, 400, "InvalidArgument"),
    ("POST", "/api/v1/tenants/no-such-tenant/keys", {"name": "k"}, 404, "NoSuchTenant"),
    ("PUT", "/api/v1/tenants/no-such-tenant/quota", {"max_bytes": 1}, 404, "NoSuchTenant"),
    ("PUT", "/api/v1/buckets/no-such-bucket-gov/quota", {"max_bytes": 1}, 404, "NoSuchBucket"),
    ("GET", "/api/v1/usage?colour=red", None, 400, "InvalidArgument"),
    ("GET", "/api/v1/usage?tenant=no-such-tenant", None, 404, "NoSuchTenant"),
    ("DELETE", "/api/v1/tenants/root", None, 400, "InvalidRequest"),
    ("PUT", "/api/v1/tenants", {"name": "x"}, 405, "MethodNotAllowed"),
]


def test_bad_input_is_a_clear_4xx(atoll):
    tenant = new_tenant(atoll)
    for method, path, body, status, code in BAD_REQUESTS:
        path = path.replace("{t}", tenant)
        if isinstance(body, bytes):
            answer = admin_request(atoll, method, path, raw=body)
        else:
            answer = admin_request(atoll, method, path, body)
        assert (answer.status, answer.json["error"]["code"]) == (status, code), (method, path, body, answer.body)
    after = admin_call(atoll, "GET", f"/api/v1/tenants/{tenant}")
    assert after["quota"] == {"max_bytes": 0, "max_objects": 0} and after["wan_weight"] == 1.0
    assert "fine-name" not in [t["name"] for t in admin_call(atoll, "GET", "/api/v1/tenants")["tenants"]]
