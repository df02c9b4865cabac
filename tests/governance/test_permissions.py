"""Per-identity permissions inside one tenant, on both endpoints, against the session server: read-only identities
cannot write or delete, read-write ones cannot create, delete or configure buckets, admins can; an identity scoped
to "bucket/prefix" reaches only keys (and listings) under the prefix; a SAS or presigned URL never exceeds its
signer's role, whatever permissions it names. Also the ``atoll tenant`` / ``atoll key create`` commands and the
pure rules of atoll.core.permissions.
"""

from __future__ import annotations

import json
import secrets
from datetime import datetime, timedelta, timezone

import pytest
import requests
from azure.core.exceptions import HttpResponseError
from azure.storage.blob import (AccountSasPermissions, BlobClient, BlobServiceClient, ContainerClient, ResourceTypes,
                                generate_account_sas, generate_blob_sas, generate_container_sas)
from botocore.exceptions import ClientError

from atoll.core import permissions
from atoll.core.models import Bucket, Identity
from harness import AtollProcess

PREFIX = "team/"


class Member:
    """An identity of the test tenant and its S3 and Blob clients."""

    def __init__(self, server: AtollProcess, tenant: str, role: str, *scopes: str) -> None:
        account = role[:5] + secrets.token_hex(5)
        args = ["key", "create", "--name", f"{role}-member", "--tenant", tenant, "--role", role, "--account",
                account, "--json"]
        for scope in scopes:
            args += ["--scope", scope]
        self.user = json.loads(server.cli(*args).stdout)
        assert (self.user["tenant"], self.user["role"], self.user["scopes"]) == (tenant, role, list(scopes))
        self.account, self.key = account, self.user["account_key"]
        self.s3 = server.client(self.user["access_key_id"], self.user["secret_access_key"])
        self.blob_url = f"http://127.0.0.1:{server.blob_port}/{account}"
        self.blob = BlobServiceClient(self.blob_url, credential={"account_name": account, "account_key": self.key},
                                      retry_total=0)


class Team:
    def __init__(self, server: AtollProcess) -> None:
        self.tenant = "perm-" + secrets.token_hex(4)
        server.cli("tenant", "create", self.tenant, "--wan-weight", "2")
        self.admin = Member(server, self.tenant, "admin")
        self.bucket = f"{self.tenant}-data"
        self.other = f"{self.tenant}-other"
        for name in (self.bucket, self.other):
            self.admin.s3.create_bucket(Bucket=name)
            self.admin.s3.put_object(Bucket=name, Key="kept.txt", Body=b"kept")
        self.admin.s3.put_object(Bucket=self.bucket, Key=PREFIX + "in.txt", Body=b"inside")
        self.writer = Member(server, self.tenant, "write")
        self.reader = Member(server, self.tenant, "read")
        self.scoped = Member(server, self.tenant, "write", f"{self.bucket}/{PREFIX}")


@pytest.fixture(scope="module")
def team(atoll):
    return Team(atoll)


def _expiry() -> datetime:
    return datetime.now(timezone.utc) + timedelta(hours=1)


def s3_denied(call) -> None:
    with pytest.raises(ClientError) as caught:
        call()
    error = caught.value.response
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 403, error
    assert error["Error"]["Code"] in ("AccessDenied", "403"), error


def blob_denied(call) -> None:
    with pytest.raises(HttpResponseError) as caught:
        call()
    assert (caught.value.status_code, caught.value.error_code) == (403, "AuthorizationPermissionMismatch"), \
        caught.value


def keys(s3, bucket: str, prefix: str = "") -> list[str]:
    return [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]


# S3 ------------------------------------------------------------------------------------------------------------
def test_read_only_identity_reads_but_never_writes(team):
    s3, bucket = team.reader.s3, team.bucket
    assert s3.get_object(Bucket=bucket, Key="kept.txt")["Body"].read() == b"kept"
    assert s3.head_object(Bucket=bucket, Key="kept.txt")["ContentLength"] == 4
    assert "kept.txt" in keys(s3, bucket)
    s3.head_bucket(Bucket=bucket)
    assert sorted(b["Name"] for b in s3.list_buckets()["Buckets"]) == sorted([team.bucket, team.other])
    s3_denied(lambda: s3.put_object(Bucket=bucket, Key="new.txt", Body=b"x"))
    s3_denied(lambda: s3.delete_object(Bucket=bucket, Key="kept.txt"))
    s3_denied(lambda: s3.copy_object(Bucket=bucket, Key="copy.txt", CopySource={"Bucket": bucket, "Key": "kept.txt"}))
    s3_denied(lambda: s3.create_multipart_upload(Bucket=bucket, Key="big.bin"))
    s3_denied(lambda: s3.create_bucket(Bucket=f"{team.tenant}-reader"))
    s3_denied(lambda: s3.delete_bucket(Bucket=team.other))
    # DeleteObjects refuses each key on its own, as S3 does.
    answer = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "kept.txt"}]})
    assert [(e["Key"], e["Code"]) for e in answer["Errors"]] == [("kept.txt", "AccessDenied")]
    assert "Deleted" not in answer
    # A writer's upload in progress can be listed by a reader, not added to.
    upload = team.writer.s3.create_multipart_upload(Bucket=bucket, Key="big.bin")["UploadId"]
    try:
        assert [u["UploadId"] for u in s3.list_multipart_uploads(Bucket=bucket)["Uploads"]] == [upload]
        assert s3.list_parts(Bucket=bucket, Key="big.bin", UploadId=upload).get("Parts", []) == []
        s3_denied(lambda: s3.upload_part(Bucket=bucket, Key="big.bin", UploadId=upload, PartNumber=1, Body=b"x"))
        s3_denied(lambda: s3.abort_multipart_upload(Bucket=bucket, Key="big.bin", UploadId=upload))
    finally:
        team.writer.s3.abort_multipart_upload(Bucket=bucket, Key="big.bin", UploadId=upload)
    assert keys(team.admin.s3, bucket) == ["kept.txt", PREFIX + "in.txt"]


def test_read_write_identity_writes_objects_but_not_buckets(team):
    s3, bucket = team.writer.s3, team.bucket
    s3.put_object(Bucket=bucket, Key="w/new.txt", Body=b"written")
    s3.copy_object(Bucket=bucket, Key="w/copy.txt", CopySource={"Bucket": team.other, "Key": "kept.txt"})
    assert s3.get_object(Bucket=bucket, Key="w/copy.txt")["Body"].read() == b"kept"
    upload = s3.create_multipart_upload(Bucket=bucket, Key="w/parts.bin")["UploadId"]
    etag = s3.upload_part(Bucket=bucket, Key="w/parts.bin", UploadId=upload, PartNumber=1, Body=b"p")["ETag"]
    s3.complete_multipart_upload(Bucket=bucket, Key="w/parts.bin", UploadId=upload,
                                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]})
    answer = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in
                                                                  ("w/new.txt", "w/copy.txt", "w/parts.bin")]})
    assert len(answer["Deleted"]) == 3 and "Errors" not in answer
    s3_denied(lambda: s3.create_bucket(Bucket=f"{team.tenant}-writer"))
    s3_denied(lambda: s3.delete_bucket(Bucket=team.other))
    assert sorted(b["Name"] for b in team.admin.s3.list_buckets()["Buckets"]) == sorted([team.bucket, team.other])


def test_admin_identity_creates_and_deletes_buckets(team):
    name = f"{team.tenant}-made"
    team.admin.s3.create_bucket(Bucket=name)
    assert name in [b["Name"] for b in team.reader.s3.list_buckets()["Buckets"]]  # the tenant's bucket
    team.admin.s3.delete_bucket(Bucket=name)
    container = team.admin.blob.create_container(name)
    container.set_container_metadata({"purpose": "test"})
    container.delete_container()


def test_presigned_urls_act_as_their_signer(atoll, team):
    for signature in ("s3v4", "s3"):
        signer = atoll.client(team.reader.user["access_key_id"], team.reader.user["secret_access_key"],
                              signature_version=signature)
        get = signer.generate_presigned_url("get_object", Params={"Bucket": team.bucket, "Key": "kept.txt"})
        assert requests.get(get, timeout=10).content == b"kept"
        put = signer.generate_presigned_url("put_object", Params={"Bucket": team.bucket, "Key": "kept.txt"})
        delete = signer.generate_presigned_url("delete_object", Params={"Bucket": team.bucket, "Key": "kept.txt"})
        for answer in (requests.put(put, data=b"replaced", timeout=10), requests.delete(delete, timeout=10)):
            assert answer.status_code == 403 and "<Code>AccessDenied</Code>" in answer.text, answer.text
    assert team.admin.s3.get_object(Bucket=team.bucket, Key="kept.txt")["Body"].read() == b"kept"


def test_scoped_identity_stays_inside_its_prefix(team):
    s3, bucket = team.scoped.s3, team.bucket
    assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == [bucket]
    assert s3.get_object(Bucket=bucket, Key=PREFIX + "in.txt")["Body"].read() == b"inside"
    s3.put_object(Bucket=bucket, Key=PREFIX + "mine.txt", Body=b"mine")
    assert keys(s3, bucket, PREFIX) == [PREFIX + "in.txt", PREFIX + "mine.txt"]
    assert keys(s3, bucket, PREFIX + "mi") == [PREFIX + "mine.txt"]
    s3.copy_object(Bucket=bucket, Key=PREFIX + "copy.txt", CopySource={"Bucket": bucket, "Key": PREFIX + "in.txt"})
    s3.delete_object(Bucket=bucket, Key=PREFIX + "copy.txt")
    s3.head_bucket(Bucket=bucket)
    s3_denied(lambda: s3.get_object(Bucket=bucket, Key="kept.txt"))
    s3_denied(lambda: s3.put_object(Bucket=bucket, Key="outside.txt", Body=b"x"))
    s3_denied(lambda: s3.delete_object(Bucket=bucket, Key="kept.txt"))
    s3_denied(lambda: s3.list_objects_v2(Bucket=bucket))
    s3_denied(lambda: s3.list_objects_v2(Bucket=bucket, Prefix="te"))
    s3_denied(lambda: s3.copy_object(Bucket=bucket, Key=PREFIX + "stolen.txt",
                                     CopySource={"Bucket": bucket, "Key": "kept.txt"}))
    s3_denied(lambda: s3.copy_object(Bucket=bucket, Key="out.txt",
                                     CopySource={"Bucket": bucket, "Key": PREFIX + "in.txt"}))
    s3_denied(lambda: s3.create_multipart_upload(Bucket=bucket, Key="outside.bin"))
    s3_denied(lambda: s3.list_multipart_uploads(Bucket=bucket))
    s3_denied(lambda: s3.get_object(Bucket=team.other, Key="kept.txt"))
    s3_denied(lambda: s3.head_bucket(Bucket=team.other))
    s3_denied(lambda: s3.delete_bucket(Bucket=bucket))
    answer = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "kept.txt"}, {"Key": PREFIX + "mine.txt"}]})
    assert [d["Key"] for d in answer["Deleted"]] == [PREFIX + "mine.txt"]
    assert [(e["Key"], e["Code"]) for e in answer["Errors"]] == [("kept.txt", "AccessDenied")]
    assert keys(team.admin.s3, bucket) == ["kept.txt", PREFIX + "in.txt"]


# Blob ----------------------------------------------------------------------------------------------------------
def test_blob_roles(team):
    bucket = team.bucket
    reader = team.reader.blob.get_container_client(bucket)
    assert reader.get_blob_client("kept.txt").download_blob().readall() == b"kept"
    assert "kept.txt" in [b.name for b in reader.list_blobs()]
    reader.get_container_properties()
    blob_denied(lambda: reader.upload_blob("new.txt", b"x"))
    blob_denied(lambda: reader.get_blob_client("kept.txt").delete_blob())
    blob_denied(lambda: reader.get_blob_client("kept.txt").set_blob_metadata({"k": "v"}))
    blob_denied(lambda: reader.get_blob_client("kept.txt").acquire_lease())
    blob_denied(lambda: team.reader.blob.create_container(f"{team.tenant}-rblob"))

    writer = team.writer.blob.get_container_client(bucket)
    blob = writer.upload_blob("w/blob.txt", b"by blob")
    blob.set_blob_metadata({"k": "v"})
    lease = blob.acquire_lease()
    lease.release()
    blob.delete_blob()
    blob_denied(lambda: writer.set_container_metadata({"k": "v"}))
    blob_denied(lambda: writer.set_container_access_policy(signed_identifiers={}, public_access="blob"))
    blob_denied(lambda: writer.acquire_lease())
    blob_denied(writer.delete_container)
    blob_denied(lambda: team.writer.blob.create_container(f"{team.tenant}-wblob"))

    admin = team.admin.blob.get_container_client(team.other)
    admin.set_container_access_policy(signed_identifiers={})
    admin.acquire_lease().release()
    assert admin.get_container_properties().public_access is None
    assert keys(team.admin.s3, bucket) == ["kept.txt", PREFIX + "in.txt"]


def test_sas_never_exceeds_its_signers_role(team):
    bucket, reader = team.bucket, team.reader
    service = ContainerClient.from_container_url(
        f"{reader.blob_url}/{bucket}?" + generate_container_sas(reader.account, bucket, account_key=reader.key,
                                                                permission="racwdl", expiry=_expiry()),
        retry_total=0)
    assert service.get_blob_client("kept.txt").download_blob().readall() == b"kept"
    assert "kept.txt" in [b.name for b in service.list_blobs()]
    blob_denied(lambda: service.upload_blob("sas.txt", b"x"))
    blob_denied(lambda: service.get_blob_client("kept.txt").upload_blob(b"x", overwrite=True))
    blob_denied(lambda: service.get_blob_client("kept.txt").delete_blob())
    blob_sas = generate_blob_sas(reader.account, bucket, "kept.txt", account_key=reader.key, permission="rwd",
                                 expiry=_expiry())
    one = BlobClient.from_blob_url(f"{reader.blob_url}/{bucket}/kept.txt?{blob_sas}", retry_total=0)
    assert one.download_blob().readall() == b"kept"
    blob_denied(lambda: one.upload_blob(b"x", overwrite=True))
    blob_denied(one.delete_blob)
    account = BlobServiceClient(reader.blob_url, retry_total=0, credential=generate_account_sas(
        reader.account, reader.key, ResourceTypes(service=True, container=True, object=True),
        AccountSasPermissions(read=True, write=True, delete=True, list=True, create=True), _expiry()))
    assert sorted(c.name for c in account.list_containers()) == sorted([team.bucket, team.other])
    blob_denied(lambda: account.get_blob_client(bucket, "kept.txt").upload_blob(b"x", overwrite=True))
    blob_denied(lambda: account.create_container(f"{team.tenant}-sas"))
    blob_denied(lambda: account.get_container_client(team.other).delete_container())
    assert team.admin.s3.get_object(Bucket=bucket, Key="kept.txt")["Body"].read() == b"kept"


def test_blob_scoped_identity(team):
    scoped = team.scoped.blob
    assert [c.name for c in scoped.list_containers()] == [team.bucket]
    container = scoped.get_container_client(team.bucket)
    container.upload_blob(PREFIX + "blob.txt", b"scoped")
    assert [b.name for b in container.list_blobs(name_starts_with=PREFIX)] == [PREFIX + "blob.txt",
                                                                                PREFIX + "in.txt"]
    blob_denied(lambda: list(container.list_blobs()))
    blob_denied(lambda: container.upload_blob("outside.txt", b"x"))
    blob_denied(lambda: container.get_blob_client("kept.txt").download_blob().readall())
    blob_denied(lambda: container.get_blob_client("kept.txt").delete_blob())
    # Copies: a source outside the scope is not the scoped identity's to read, wherever it goes.
    source = f"{team.scoped.blob_url}/{team.bucket}/kept.txt"
    with pytest.raises(HttpResponseError) as caught:
        container.get_blob_client(PREFIX + "copied.txt").upload_blob_from_url(source)
    assert caught.value.error_code == "CannotVerifyCopySource"
    blob_denied(lambda: container.get_blob_client("outside.txt").upload_blob_from_url(
        f"{team.scoped.blob_url}/{team.bucket}/{PREFIX}in.txt"))
    container.get_blob_client(PREFIX + "blob.txt").delete_blob()
    blob_denied(lambda: scoped.get_container_client(team.other).get_container_properties())


# CLI -----------------------------------------------------------------------------------------------------------
def _fails(server: AtollProcess, *args: str) -> str:
    answer = server.cli(*args, check=False)
    assert answer.returncode == 1, answer
    assert "Traceback" not in answer.stderr + answer.stdout
    return " ".join((answer.stderr + answer.stdout).split())


def test_tenant_commands(atoll, team):
    shown = json.loads(atoll.cli("tenant", "show", team.tenant, "--json").stdout)
    assert shown["wan_weight"] == 2 and sorted(shown["buckets"]) == sorted([team.bucket, team.other])
    people = {p["access_key_id"]: p for p in shown["identities"]}
    assert people[team.reader.user["access_key_id"]]["role"] == "read"
    assert people[team.scoped.user["access_key_id"]]["scopes"] == [f"{team.bucket}/{PREFIX}"]
    assert "secret" not in json.dumps(shown) and team.admin.key not in json.dumps(shown)

    spare = "spare-" + secrets.token_hex(4)
    atoll.cli("tenant", "create", spare, "--warm-reserved", "1GiB", "--warm-cap", "10GiB")
    atoll.cli("tenant", "set", spare, "--wan-weight", "3", "--warm-cap", "2GiB")
    settings = json.loads(atoll.cli("tenant", "show", spare, "--json").stdout)
    assert (settings["warm_reserved"], settings["warm_cap"], settings["wan_weight"]) == (1 << 30, 2 << 30, 3)
    assert "already exists" in _fails(atoll, "tenant", "create", spare)
    assert "tenant name" in _fails(atoll, "tenant", "create", "Not_Valid")
    assert "no tenant named" in _fails(atoll, "key", "create", "--name", "x", "--tenant", "nobody-x1")
    assert "--role" in _fails(atoll, "key", "create", "--name", "x", "--tenant", spare, "--role", "owner")
    assert "--scope" in _fails(atoll, "key", "create", "--name", "x", "--tenant", spare, "--scope", "Bad_Name")
    assert "not a size" in _fails(atoll, "tenant", "set", spare, "--warm-cap", "lots")
    assert "larger than the warm cap" in _fails(atoll, "tenant", "set", spare, "--warm-reserved", "3GiB")

    # A bucket made for the tenant by the operator; the tenant cannot go while it owns it, and takes its
    # identities when it goes.
    member = json.loads(atoll.cli("key", "create", "--name", "spare-admin", "--tenant", spare, "--json").stdout)
    atoll.cli("bucket", "create", f"{spare}-b", "--tenant", spare)
    client = atoll.client(member["access_key_id"], member["secret_access_key"])
    assert [b["Name"] for b in client.list_buckets()["Buckets"]] == [f"{spare}-b"]
    assert "still owns buckets" in _fails(atoll, "tenant", "delete", spare)
    client.delete_bucket(Bucket=f"{spare}-b")
    atoll.cli("tenant", "delete", spare)
    tenants = {t["name"]: t for t in json.loads(atoll.cli("tenant", "list", "--json").stdout)}
    assert spare not in tenants
    assert (tenants[team.tenant]["identities"], tenants[team.tenant]["buckets"]) == (4, 2)
    identities = {k["access_key_id"]: k for k in json.loads(atoll.cli("key", "list", "--json").stdout)}
    assert member["access_key_id"] not in identities
    writer = identities[team.writer.user["access_key_id"]]
    assert (writer["tenant"], writer["role"]) == (team.tenant, "write")
    assert "no tenant named" in _fails(atoll, "tenant", "show", spare)


# the rules themselves ------------------------------------------------------------------------------------------
def _identity(tenant: str = "t1", role: str = "admin", scopes: tuple[str, ...] = (), root: bool = False):
    return Identity("AK", "s", "o", "n", 0.0, is_root=root, tenant=tenant, role=role, scopes=scopes)


def test_permission_rules():
    data, other = Bucket("data", "o", 0.0, tenant="t1"), Bucket("other", "o", 0.0, tenant="t1")
    foreign = Bucket("theirs", "o", 0.0, tenant="t2")
    assert permissions.allows(_identity(root=True, tenant="t9"), foreign, "admin")
    assert permissions.allows(_identity(tenant="root"), foreign, "admin")  # an unscoped root-tenant admin
    assert not permissions.allows(_identity(tenant="root", role="write"), foreign, "read")
    assert not permissions.allows(None, data, "read")
    assert not permissions.allows(_identity(), foreign, "read", "k")
    reader = _identity(role="read")
    assert permissions.allows(reader, data, "read", "k") and not permissions.allows(reader, data, "write", "k")
    writer = _identity(role="write")
    assert permissions.allows(writer, data, "write", "k") and not permissions.allows(writer, data, "admin")
    scoped = _identity(role="admin", scopes=("data/team/", "other"))
    assert permissions.allows(scoped, data, "write", "team/x") and not permissions.allows(scoped, data, "write", "x")
    assert permissions.allows(scoped, data, "read", prefix="team/sub/")
    assert not permissions.allows(scoped, data, "read", prefix="") and not permissions.allows(scoped, data, "read",
                                                                                               prefix="te")
    assert permissions.allows(scoped, data, "read") and not permissions.allows(scoped, data, "admin")
    assert permissions.allows(scoped, other, "admin") and permissions.allows(scoped, other, "read", prefix="")
    assert permissions.may_create_bucket(scoped, "other") and not permissions.may_create_bucket(scoped, "data")
    assert not permissions.may_create_bucket(writer, "new") and permissions.may_create_bucket(_identity(), "new")
    assert [b.name for b in permissions.visible_buckets(scoped, [data, other, Bucket("x", "o", 0.0)])] == \
        ["data", "other"]
    assert "role (read)" in permissions.denial(reader, data, "write", "k")
    assert permissions.denial(_identity(), foreign, "read") == "Access Denied."  # nothing about the other tenant
