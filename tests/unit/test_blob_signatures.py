"""Azure Shared Key and SAS verification (atoll.auth.sharedkey, atoll.auth.sas) against what the real client signs:
azure-storage-blob's SharedKeyCredentialPolicy applied to a real azure.core HttpRequest, and its generate_*_sas
functions. Every tampered field must fail with Azure's error code; nothing secret may appear in an error."""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
import time
from datetime import datetime, timezone
from email.utils import formatdate
from functools import cmp_to_key
from urllib.parse import parse_qsl, quote, urlsplit

import pytest
from azure.core.pipeline import PipelineContext, PipelineRequest
from azure.core.pipeline.transport import HttpRequest
from azure.storage.blob import (
    AccountSasPermissions, BlobSasPermissions, ContainerSasPermissions, ResourceTypes, UserDelegationKey,
    generate_account_sas, generate_blob_sas, generate_container_sas,
)
from azure.storage.blob._shared.authentication import SharedKeyCredentialPolicy
from azure.storage.blob._shared.authentication import compare as sdk_header_compare
from azure.storage.blob._shared_access_signature import BlobSharedAccessSignature
from azure.storage.blob._shared.shared_access_signature import SharedAccessSignature

from atoll.auth.sas import OPERATION_PERMISSIONS, SasGrant, StoredAccessPolicy, is_sas, verify_sas
from atoll.auth.sharedkey import (
    BlobAuthError, header_sort_key, shared_key_account, string_to_sign, verify_shared_key,
)

ACCOUNT = "devstoreaccount1"
KEY = base64.b64encode(b"atoll-test-account-key-0123456789-abcdef").decode()
OTHER_KEY = base64.b64encode(b"some-other-key").decode()
NOW = time.time()


# --- Shared Key ---------------------------------------------------------------------------------------------------

class Wire:
    """A request as Atoll's HTTP layer holds it: method, raw path, raw query, lower-case latin-1 headers."""

    def __init__(self, method: str, url: str, headers: dict[str, str]) -> None:
        parts = urlsplit(url)
        self.method = method
        self.path = parts.path or "/"
        self.query = parts.query
        self.headers = {name.lower(): value.encode("utf-8").decode("latin-1") for name, value in headers.items()}

    def verify(self, account: str = ACCOUNT, key: str | bytes = KEY, now: float | None = None) -> None:
        verify_shared_key(self.method, self.path, self.query, self.headers, account, key,
                          now=NOW if now is None else now)


def sdk_signed(method: str, url: str, headers: dict[str, str] | None = None, *, account: str = ACCOUNT,
               key: str = KEY, date: float | None = None) -> Wire:
    """Sign a request exactly as azure-storage-blob does, and return it as the server receives it."""
    all_headers = {"x-ms-version": "2026-02-06", "x-ms-date": formatdate(NOW if date is None else date, usegmt=True),
                   "x-ms-client-request-id": "4f1e3c1a-0000-11ef-9d7e-0242ac120002"}
    all_headers.update(headers or {})
    request = HttpRequest(method, url, headers=all_headers)
    SharedKeyCredentialPolicy(account, key).on_request(PipelineRequest(request, PipelineContext(None)))
    return Wire(method, url, dict(request.headers))


PATH_STYLE = f"http://127.0.0.1:10000/{ACCOUNT}"
HOST_STYLE = f"http://{ACCOUNT}.blob.localhost:10000"

SIGNED_REQUESTS = [
    ("GET", "/?comp=list&maxresults=5&prefix=a%20b", {}),
    ("PUT", "/c1?restype=container", {"Content-Length": "0"}),
    ("PUT", "/c1/dir/blob.bin", {"Content-Length": "11", "Content-Type": "application/octet-stream",
                                 "x-ms-blob-type": "BlockBlob", "Content-MD5": "XrY7u+Ae7tCTyyK7j1rNww==",
                                 "x-ms-meta-ab": "1", "x-ms-meta-a_b": "2", "x-ms-meta-a-b": "3",
                                 "x-ms-meta-A1": "four", "If-None-Match": "*"}),
    ("PUT", "/c1/blob?comp=block&blockid=" + quote(base64.b64encode(b"block-000001").decode(), safe=""),
     {"Content-Length": "4194304"}),
    ("PUT", "/c1/blob?comp=blocklist", {"Content-Length": "120", "x-ms-blob-content-type": "text/plain",
                                        "Content-Type": "application/xml; charset=utf-8"}),
    ("GET", "/c1/" + quote("ünï©ødé/日本語 file+x.txt"), {"x-ms-range": "bytes=0-33554431",
                                                          "If-Match": '"0x8DB"'}),
    ("HEAD", "/c1/blob?snapshot=2024-01-01T00%3A00%3A00.0000000Z", {"If-Modified-Since": "Mon, 01 Jan 2024 "
                                                                   "00:00:00 GMT"}),
    ("DELETE", "/c1/blob", {"x-ms-lease-id": "d2b5c3f0-3f6e-4b8e-9e2c-0c7a1f0b9e11"}),
    ("PUT", "/c1?restype=container&comp=lease", {"x-ms-lease-action": "acquire", "x-ms-lease-duration": "-1"}),
]


@pytest.mark.parametrize("base", [PATH_STYLE, HOST_STYLE], ids=["path-style", "host-style"])
@pytest.mark.parametrize("method,target,headers", SIGNED_REQUESTS, ids=[f"{m} {t[:30]}" for m, t, _ in SIGNED_REQUESTS])
def test_sdk_shared_key_requests_verify(base, method, target, headers):
    wire = sdk_signed(method, base + target, headers)
    assert shared_key_account(wire.headers) == ACCOUNT
    wire.verify()
    wire.verify(key=base64.b64decode(KEY))  # the decoded key works the same


def test_path_style_signs_account_twice():
    wire = sdk_signed("GET", PATH_STYLE + "/c1/b?comp=metadata")
    sts = string_to_sign(wire.method, wire.path, wire.query, wire.headers, ACCOUNT)
    assert sts.endswith(f"\n/{ACCOUNT}/{ACCOUNT}/c1/b\ncomp:metadata")


def test_header_collation_matches_the_service():
    names = ["x-ms-meta-ab", "x-ms-meta-a_b", "x-ms-meta-a-b", "x-ms-meta-a", "x-ms-meta-a1", "x-ms-meta-a.b",
             "x-ms-meta-b", "x-ms-meta-_", "x-ms-meta-a--b", "x-ms-meta-ab-", "x-ms-meta-a'b", "x-ms-date",
             "x-ms-version", "x-ms-meta-Z", "x-ms-meta-~", "x-ms-meta-+", "x-ms-meta-9", "x-ms-blob-type"]
    rng = random.Random(6)
    alphabet = "ab1_-.~+z'"
    names += ["x-ms-meta-" + "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 5))) for _ in range(300)]
    names = [n.lower() for n in dict.fromkeys(names)]
    expected = sorted(names, key=cmp_to_key(sdk_header_compare))
    assert sorted(names, key=header_sort_key) == expected
    assert expected.index("x-ms-meta-a_b") < expected.index("x-ms-meta-ab")  # not ASCII order


@pytest.mark.parametrize("tamper", [
    "method", "path", "query", "query-value", "header", "x-ms-header", "added-x-ms-header", "content-length",
    "account", "key", "signature",
])
def test_tampered_shared_key_request_fails(tamper):
    wire = sdk_signed("PUT", PATH_STYLE + "/c1/blob?comp=metadata", {"x-ms-meta-k": "v", "Content-Length": "0",
                                                                     "Content-Type": "text/plain"})
    account, key = ACCOUNT, KEY
    if tamper == "method":
        wire.method = "DELETE"
    elif tamper == "path":
        wire.path = wire.path.replace("blob", "blob2")
    elif tamper == "query":
        wire.query += "&comp2=x"
    elif tamper == "query-value":
        wire.query = "comp=lease"
    elif tamper == "header":
        wire.headers["content-type"] = "text/html"
    elif tamper == "x-ms-header":
        wire.headers["x-ms-meta-k"] = "w"
    elif tamper == "added-x-ms-header":
        wire.headers["x-ms-meta-extra"] = "1"
    elif tamper == "content-length":
        wire.headers["content-length"] = "5"
    elif tamper == "account":
        account = "otheraccount"
    elif tamper == "key":
        key = OTHER_KEY
    elif tamper == "signature":
        scheme, _, cred = wire.headers["authorization"].partition(" ")
        sig = bytearray(base64.b64decode(cred.rpartition(":")[2]))
        sig[0] ^= 1
        wire.headers["authorization"] = f"{scheme} {ACCOUNT}:{base64.b64encode(bytes(sig)).decode()}"
    with pytest.raises(BlobAuthError) as info:
        wire.verify(account=account, key=key)
    err = info.value
    assert (err.code, err.status) == ("AuthenticationFailed", 403)
    # Never the key, never the signature the server computed.
    text = f"{err.message} {err.detail}"
    expected = base64.b64encode(hmac.new(base64.b64decode(KEY), string_to_sign(
        wire.method, wire.path, wire.query, wire.headers, ACCOUNT).encode(), hashlib.sha256).digest()).decode()
    assert KEY not in text and OTHER_KEY not in text and expected not in text


@pytest.mark.parametrize("offset,ok", [(-14 * 60, True), (14 * 60, True), (-16 * 60, False), (16 * 60, False)])
def test_shared_key_clock_skew(offset, ok):
    wire = sdk_signed("GET", PATH_STYLE + "/c1/blob", date=NOW + offset)
    if ok:
        wire.verify()
    else:
        with pytest.raises(BlobAuthError) as info:
            wire.verify()
        assert info.value.code == "AuthenticationFailed" and "15 minutes" in info.value.detail


def test_shared_key_needs_a_date_and_a_well_formed_header():
    wire = sdk_signed("GET", PATH_STYLE + "/c1/blob")
    del wire.headers["x-ms-date"]
    with pytest.raises(BlobAuthError, match="AuthenticationFailed"):
        wire.verify()
    for header in ("SharedKey", "SharedKey nocolon", "Bearer abc", f"SharedKey {ACCOUNT}:not*base64"):
        wire = sdk_signed("GET", PATH_STYLE + "/c1/blob")
        wire.headers["authorization"] = header
        with pytest.raises(BlobAuthError, match="AuthenticationFailed"):
            wire.verify()


def test_shared_key_with_date_header_instead_of_x_ms_date():
    date = formatdate(NOW, usegmt=True)
    request = HttpRequest("GET", PATH_STYLE + "/c1/blob", headers={"x-ms-version": "2021-08-06", "Date": date})
    SharedKeyCredentialPolicy(ACCOUNT, KEY).on_request(PipelineRequest(request, PipelineContext(None)))
    Wire("GET", request.url, dict(request.headers)).verify()


def test_shared_key_lite():
    date = formatdate(NOW, usegmt=True)
    headers = {"x-ms-date": date, "x-ms-version": "2021-08-06", "content-type": "text/plain",
               "x-ms-meta-b": "2", "x-ms-meta-a": "1"}
    # The Shared Key Lite string to sign for the Blob service, written out from the documentation.
    sts = (f"PUT\n\ntext/plain\n\nx-ms-date:{date}\nx-ms-meta-a:1\nx-ms-meta-b:2\nx-ms-version:2021-08-06\n"
           f"/{ACCOUNT}/{ACCOUNT}/c1/blob?comp=metadata")
    sig = base64.b64encode(hmac.new(base64.b64decode(KEY), sts.encode(), hashlib.sha256).digest()).decode()
    wire = Wire("PUT", PATH_STYLE + "/c1/blob?comp=metadata",
                {**headers, "authorization": f"SharedKeyLite {ACCOUNT}:{sig}"})
    wire.verify()
    wire.headers["x-ms-meta-a"] = "9"
    with pytest.raises(BlobAuthError, match="AuthenticationFailed"):
        wire.verify()


# --- SAS ----------------------------------------------------------------------------------------------------------

def utc(offset_seconds: float) -> datetime:
    return datetime.fromtimestamp(NOW + offset_seconds, timezone.utc).replace(microsecond=0)


def query_of(token: str, **extra: str) -> dict[str, str]:
    """The SAS as BlobContext.query holds it: decoded values, lower-cased names."""
    q = {name.lower(): value for name, value in parse_qsl(token, keep_blank_values=True)}
    q.update(extra)
    return q


def check(q, *, container="c1", blob="dir/blob.bin", client_ip="127.0.0.1", scheme="http", now=None,
          policies=None, key=KEY) -> SasGrant:
    return verify_sas(q, account=ACCOUNT, key=key, container=container, blob=blob, client_ip=client_ip,
                      scheme=scheme, now=NOW if now is None else now, policies=policies)


def blob_sas(**kwargs) -> str:
    args = dict(account_name=ACCOUNT, container_name="c1", blob_name="dir/blob.bin", account_key=KEY,
                permission=BlobSasPermissions(read=True, write=True), expiry=utc(3600))
    args.update(kwargs)
    return generate_blob_sas(**args)


def test_blob_sas_from_the_sdk_verifies():
    token = blob_sas(start=utc(-60), ip="127.0.0.1", protocol="https,http", content_type="text/csv",
                     cache_control="no-cache", content_disposition="attachment; filename=x.csv",
                     content_language="de", content_encoding="identity", encryption_scope="scope1")
    grant = check(query_of(token))
    assert grant.resource == "b" and grant.permissions == "rw" and grant.blob == "dir/blob.bin"
    assert grant.response_headers == {"cache-control": "no-cache", "content-disposition": "attachment; filename=x.csv",
                                      "content-encoding": "identity", "content-language": "de",
                                      "content-type": "text/csv"}
    assert grant.encryption_scope == "scope1"
    grant.authorize("GetBlob", "c1", "dir/blob.bin")
    grant.authorize("PutBlock", "c1", "dir/blob.bin")
    assert grant.allows("r", "c1", "dir/blob.bin") and not grant.allows("d", "c1", "dir/blob.bin")


def test_blob_names_are_signed_unencoded():
    name = "ünï ©/日本語+x%20y.txt"
    grant = check(query_of(blob_sas(blob_name=name)), blob=name)
    assert grant.blob == name


def test_container_sas_from_the_sdk_verifies():
    token = generate_container_sas(ACCOUNT, "c1", account_key=KEY, expiry=utc(600),
                                   permission=ContainerSasPermissions(read=True, list=True))
    grant = check(query_of(token), blob=None)
    assert grant.resource == "c"
    grant.authorize("ListBlobs", "c1", None)
    check(query_of(token), blob="any/blob").authorize("GetBlob", "c1", "any/blob")
    for operation, blob in (("PutBlob", "x"), ("DeleteBlob", "x"), ("CreateContainer", None),
                            ("DeleteContainer", None), ("SetContainerACL", None)):
        with pytest.raises(BlobAuthError) as info:
            grant.authorize(operation, "c1", blob)
        assert (info.value.code, info.value.status) == ("AuthorizationPermissionMismatch", 403)
    with pytest.raises(BlobAuthError, match="AuthorizationPermissionMismatch"):
        grant.authorize("GetBlob", "c2", "x")  # a grant never covers another container
    # A container SAS that may delete blobs may not delete (or otherwise change) the container itself.
    deleter = check(query_of(generate_container_sas(ACCOUNT, "c1", account_key=KEY, expiry=utc(600),
                                                    permission="rwdlc")), blob=None)
    assert deleter.allows("d", "c1", "some/blob") and deleter.allows("l", "c1", None)
    assert not any(deleter.allows(letter, "c1", None) for letter in "rwdc")


def test_account_sas_from_the_sdk_verifies():
    token = generate_account_sas(ACCOUNT, KEY, ResourceTypes(service=True, container=True, object=True),
                                 AccountSasPermissions(read=True, list=True, create=True), utc(600), start=utc(-5),
                                 ip="127.0.0.0-127.0.0.255", protocol="https,http")
    grant = check(query_of(token), container=None, blob=None)
    assert grant.resource == "account" and grant.services == "b"
    for operation, container, blob in (("ListContainers", None, None), ("CreateContainer", "c1", None),
                                       ("ListBlobs", "c1", None), ("GetBlob", "c1", "b"), ("PutBlob", "c1", "b")):
        grant.authorize(operation, container, blob)
    for operation, container, blob in (("DeleteBlob", "c1", "b"), ("PutBlock", "c1", "b"),
                                       ("SetContainerACL", "c1", None)):
        with pytest.raises(BlobAuthError, match="AuthorizationPermissionMismatch"):
            grant.authorize(operation, container, blob)


def test_account_sas_resource_types_and_services():
    token = generate_account_sas(ACCOUNT, KEY, ResourceTypes(object=True), "rwdl", utc(600))
    grant = check(query_of(token), container=None, blob=None)
    grant.authorize("GetBlob", "c1", "b")
    for operation, container, blob in (("ListBlobs", "c1", None), ("ListContainers", None, None)):
        with pytest.raises(BlobAuthError) as info:
            grant.authorize(operation, container, blob)
        assert info.value.code == "AuthorizationResourceTypeMismatch"
    assert not grant.allows("l", "c1", None) and grant.allows("r", "c1", "b")
    sas = SharedAccessSignature(ACCOUNT, KEY)
    queue_only = sas.generate_account("q", "sco", "rl", utc(600))
    with pytest.raises(BlobAuthError) as info:
        check(query_of(queue_only), container=None, blob=None)
    assert info.value.code == "AuthorizationServiceMismatch"


@pytest.mark.parametrize("version", ["2020-12-06", "2021-08-06", "2025-11-05"])
def test_account_sas_2020_and_later_sign_ses(version):
    token = SharedAccessSignature(ACCOUNT, KEY, x_ms_version=version).generate_account(
        "bf", "sco", "racwdl", utc(600), encryption_scope="scope1")
    assert check(query_of(token), container=None, blob=None).version == version


@pytest.mark.parametrize("version", ["2020-12-06", "2023-11-03"])
def test_service_sas_2020_and_later(version):
    signer = BlobSharedAccessSignature(ACCOUNT, KEY)
    signer.x_ms_version = version
    token = signer.generate_blob("c1", "dir/blob.bin", permission="r", expiry=utc(600), content_type="x/y")
    assert check(query_of(token)).version == version


def hand_signed(fields: list[str], key: str = KEY) -> str:
    return base64.b64encode(hmac.new(base64.b64decode(key), "\n".join(fields).encode(), hashlib.sha256)
                            .digest()).decode()


@pytest.mark.parametrize("version", ["2015-04-05", "2017-07-29", "2018-11-09", "2019-12-12"])
def test_service_sas_older_versions(version):
    # The documented pre-2020 strings to sign: no ses; before 2018-11-09 also no sr and no snapshot time.
    se = utc(600).strftime("%Y-%m-%dT%H:%M:%SZ")
    fields = ["r", "", se, f"/blob/{ACCOUNT}/c1/dir/blob.bin", "", "", "", version]
    if version >= "2018-11-09":
        fields += ["b", ""]
    fields += ["", "", "", "", ""]
    q = {"sp": "r", "se": se, "sv": version, "sr": "b", "sig": hand_signed(fields)}
    check(q).authorize("GetBlob", "c1", "dir/blob.bin")
    q["sp"] = "rw"
    with pytest.raises(BlobAuthError, match="AuthenticationFailed"):
        check(q)


def test_account_sas_before_2020_has_no_ses():
    se = utc(600).strftime("%Y-%m-%dT%H:%M:%SZ")
    sts = f"{ACCOUNT}\nrl\nb\nsco\n\n{se}\n\n\n2019-02-02\n"
    sig = base64.b64encode(hmac.new(base64.b64decode(KEY), sts.encode(), hashlib.sha256).digest()).decode()
    q = {"sp": "rl", "ss": "b", "srt": "sco", "se": se, "sv": "2019-02-02", "sig": sig}
    check(q, container=None, blob=None).authorize("ListContainers", None, None)


# Each tampering changes one signed field of a valid blob SAS: the signature no longer matches.
TAMPERINGS = {
    "permission": ("sp", "rwd"),
    "expiry": ("se", utc(7200).strftime("%Y-%m-%dT%H:%M:%SZ")),
    "start": ("st", utc(-7200).strftime("%Y-%m-%dT%H:%M:%SZ")),
    "resource": ("sr", "c"),
    "ip": ("sip", "0.0.0.0-255.255.255.255"),
    "protocol": ("spr", "https,http"),
    "version": ("sv", "2021-08-06"),
    "response header": ("rsct", "text/html"),
    "encryption scope": ("ses", "other"),
    "signature": ("sig", base64.b64encode(b"\x00" * 32).decode()),
}


@pytest.mark.parametrize("field_name", list(TAMPERINGS))
def test_tampered_sas_fails(field_name):
    token = blob_sas(start=utc(-60), ip="127.0.0.1", protocol="https", content_type="text/csv",
                     encryption_scope="scope1")
    name, value = TAMPERINGS[field_name]
    q = query_of(token, **{name: value})
    with pytest.raises(BlobAuthError) as info:
        check(q, scheme="https")
    err = info.value
    assert (err.code, err.status) == ("AuthenticationFailed", 403)
    assert KEY not in f"{err.message} {err.detail}"
    check(query_of(token), scheme="https")  # untampered, it verifies


def test_sas_for_one_blob_does_not_open_another():
    q = query_of(blob_sas())
    for container, blob in (("c1", "dir/other.bin"), ("c2", "dir/blob.bin"), ("c1", None), (None, None)):
        with pytest.raises(BlobAuthError, match="AuthenticationFailed"):
            check(q, container=container, blob=blob)


def test_sas_signed_with_another_key_fails():
    with pytest.raises(BlobAuthError, match="AuthenticationFailed"):
        check(query_of(blob_sas(account_key=OTHER_KEY)))


@pytest.mark.parametrize("when,offset", [("expired", 3601), ("not yet valid", -120)])
def test_sas_outside_its_time_window(when, offset):
    q = query_of(blob_sas(start=utc(-60)))
    with pytest.raises(BlobAuthError) as info:
        check(q, now=NOW + offset)
    assert (info.value.code, info.value.status) == ("AuthenticationFailed", 403)
    assert "time frame" in info.value.detail


@pytest.mark.parametrize("sip,client,ok", [
    ("127.0.0.1", "127.0.0.1", True), ("127.0.0.1", "127.0.0.2", False), ("10.0.0.1-10.0.0.9", "10.0.0.9", True),
    ("10.0.0.1-10.0.0.9", "10.0.0.10", False), ("127.0.0.1", "::ffff:127.0.0.1", True), ("127.0.0.1", "", False),
    ("::1", "::1", True),
])
def test_sas_ip_range(sip, client, ok):
    q = query_of(blob_sas(ip=sip))
    if ok:
        check(q, client_ip=client)
    else:
        with pytest.raises(BlobAuthError) as info:
            check(q, client_ip=client)
        assert (info.value.code, info.value.status) == ("AuthorizationSourceIPMismatch", 403)


def test_sas_https_only_refuses_http():
    q = query_of(blob_sas(protocol="https"))
    check(q, scheme="https")
    with pytest.raises(BlobAuthError) as info:
        check(q, scheme="http")
    assert (info.value.code, info.value.status) == ("AuthorizationProtocolMismatch", 403)


def test_sas_with_too_few_permissions():
    grant = check(query_of(blob_sas(permission=BlobSasPermissions(read=True))))
    for operation in ("PutBlob", "PutBlock", "PutBlockList", "DeleteBlob", "SetBlobMetadata", "LeaseBlob",
                      "CopyBlob", "PutBlobFromURL"):
        with pytest.raises(BlobAuthError) as info:
            grant.authorize(operation, "c1", "dir/blob.bin")
        assert (info.value.code, info.value.status) == ("AuthorizationPermissionMismatch", 403)
    create_only = check(query_of(blob_sas(permission=BlobSasPermissions(create=True))))
    create_only.authorize("PutBlob", "c1", "dir/blob.bin")
    with pytest.raises(BlobAuthError, match="AuthorizationPermissionMismatch"):
        create_only.authorize("GetBlob", "c1", "dir/blob.bin")


def test_every_router_operation_has_a_permission_entry():
    from atoll.blob.router import OPERATIONS
    assert set(OPERATIONS) <= set(OPERATION_PERMISSIONS)


def test_user_delegation_sas_is_refused_clearly():
    udk = UserDelegationKey()
    udk.signed_oid, udk.signed_tid = "00000000-0000-0000-0000-000000000001", "00000000-0000-0000-0000-000000000002"
    udk.signed_start, udk.signed_expiry = "2024-01-01T00:00:00Z", "2099-01-01T00:00:00Z"
    udk.signed_service, udk.signed_version = "b", "2021-08-06"
    udk.value = KEY
    token = generate_blob_sas(ACCOUNT, "c1", "dir/blob.bin", user_delegation_key=udk, permission="r",
                              expiry=utc(600))
    with pytest.raises(BlobAuthError) as info:
        check(query_of(token))
    assert info.value.code == "AuthenticationFailed" and "not supported" in info.value.detail


def test_stored_access_policy():
    token = blob_sas(permission=None, expiry=None, policy_id="readers")
    policy = StoredAccessPolicy(start=None, expiry=utc(600).strftime("%Y-%m-%dT%H:%M:%SZ"), permission="r")
    grant = check(query_of(token), policies={"readers": policy})
    assert grant.permissions == "r" and grant.identifier == "readers"
    with pytest.raises(BlobAuthError, match="AuthenticationFailed"):
        check(query_of(token), policies={})
    expired = StoredAccessPolicy(expiry=utc(-10).strftime("%Y-%m-%dT%H:%M:%SZ"), permission="r")
    with pytest.raises(BlobAuthError, match="AuthenticationFailed"):
        check(query_of(token), policies={"readers": expired})
    # A field in both the SAS and the policy is ambiguous and refused.
    both = blob_sas(permission="r", expiry=None, policy_id="readers")
    with pytest.raises(BlobAuthError, match="AuthenticationFailed"):
        check(query_of(both), policies={"readers": policy})


def test_snapshot_and_version_sas():
    snapshot = "2024-05-06T07:08:09.1234567Z"
    token = blob_sas(snapshot=snapshot)
    assert "snapshot" not in query_of(token)  # the SDK leaves it to the request URL
    assert check(query_of(token, snapshot=snapshot)).resource == "bs"
    with pytest.raises(BlobAuthError, match="AuthenticationFailed"):
        check(query_of(token, snapshot="2024-05-06T07:08:10.0000000Z"))
    version_id = "2024-05-06T07:08:09.7654321Z"
    token = blob_sas(version_id=version_id)
    assert check(query_of(token, versionid=version_id)).resource == "bv"


def test_directory_sas():
    token = blob_sas(blob_name="dir", is_directory=True, permission="rl")
    grant = check(query_of(token), blob="dir/sub/file.bin")
    assert grant.resource == "d" and grant.blob == "dir"
    grant.authorize("GetBlob", "c1", "dir/sub/file.bin")
    assert not grant.allows("r", "c1", "other/file.bin")
    with pytest.raises(BlobAuthError, match="AuthenticationFailed"):
        check(query_of(token), blob="other/file.bin")


@pytest.mark.parametrize("text", ["2099-01-01", "2099-01-01T10:00Z", "2099-01-01T10:00:00Z",
                                  "2099-01-01T10:00:00.1234567Z"])
def test_sas_time_formats(text):
    fields = ["r", "", text, f"/blob/{ACCOUNT}/c1/dir/blob.bin", "", "", "", "2021-08-06", "b", "", "",
              "", "", "", "", ""]
    check({"sp": "r", "se": text, "sv": "2021-08-06", "sr": "b", "sig": hand_signed(fields)})


def test_malformed_sas_fields_fail_cleanly():
    good = query_of(blob_sas())
    for name, value in (("se", "tomorrow"), ("sr", "x"), ("sv", ""), ("sip", "not-an-ip"), ("spr", "http"),
                        ("sig", "***"), ("sv", "2012-02-12")):
        with pytest.raises(BlobAuthError) as info:
            check({**good, name: value})
        assert info.value.code == "AuthenticationFailed"
    q = dict(good)
    q["sig"] = q["sig"].replace("+", " ")  # an unencoded '+' decoded as a space still verifies
    check(q)


def test_is_sas():
    assert is_sas(query_of(blob_sas()))
    assert not is_sas({"comp": "list", "restype": "container"})


def test_response_header_overrides_replace_the_stored_ones():
    grant = check(query_of(blob_sas(content_type="text/csv", content_disposition="attachment")))
    out = grant.override_response_headers([("ETag", '"1"'), ("Content-Type", "application/octet-stream"),
                                           ("Content-Language", "en")])
    assert sorted(out) == [("Content-Disposition", "attachment"), ("Content-Language", "en"),
                           ("Content-Type", "text/csv"), ("ETag", '"1"')]
    plain = check(query_of(blob_sas()))
    assert plain.override_response_headers([("Content-Type", "a/b")]) == [("Content-Type", "a/b")]


def test_policies_from_a_container_acl():
    from atoll.auth.sas import policies_from_acl
    expiry = utc(600).strftime("%Y-%m-%dT%H:%M:%SZ")
    policies = policies_from_acl([{"Id": "readers", "Expiry": expiry, "Permission": "r"}, {"Id": "empty"}])
    assert policies["readers"] == StoredAccessPolicy(start=None, expiry=expiry, permission="r")
    grant = check(query_of(blob_sas(permission=None, expiry=None, policy_id="readers")), policies=policies)
    assert grant.permissions == "r"
    with pytest.raises(BlobAuthError, match="AuthenticationFailed"):  # the policy grants nothing: no sp, no se
        check(query_of(blob_sas(permission=None, expiry=None, policy_id="empty")), policies=policies)


def signed_by_hand(wire: Wire, sts: str) -> None:
    sig = base64.b64encode(hmac.new(base64.b64decode(KEY), sts.encode(), hashlib.sha256).digest()).decode()
    wire.headers["authorization"] = f"SharedKey {ACCOUNT}:{sig}"


def test_equivalent_spellings_verify():
    # A client that signs the decoded path, and one that folds whitespace in header values (the documented form).
    wire = sdk_signed("GET", PATH_STYLE + "/c1/a%20b%C3%BC.txt", {"x-ms-meta-k": "two  spaces"})
    decoded = string_to_sign(wire.method, "/devstoreaccount1/c1/a bü.txt", wire.query, wire.headers, ACCOUNT)
    signed_by_hand(wire, decoded)
    wire.verify()
    folded = string_to_sign(wire.method, wire.path, wire.query, wire.headers, ACCOUNT, fold_whitespace=True)
    assert "x-ms-meta-k:two spaces\n" in folded
    signed_by_hand(wire, folded)
    wire.verify()


def test_host_style_signature_does_not_verify_a_path_style_request():
    """DELETE /x?restype=container on the host-style endpoint signs /ACCOUNT/x: replayed on the path-style
    /ACCOUNT/x it would name blob x in a container called ACCOUNT, so it must not verify there."""
    host_style = sdk_signed("DELETE", HOST_STYLE + "/x?restype=container")
    host_style.verify()
    replay = Wire("DELETE", f"{PATH_STYLE}/x?restype=container", {})
    replay.headers = dict(host_style.headers)
    assert replay.path == f"/{ACCOUNT}/x"
    with pytest.raises(BlobAuthError, match="AuthenticationFailed"):
        replay.verify()
