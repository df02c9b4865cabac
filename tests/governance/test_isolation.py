"""Tenant isolation on both endpoints, against the session server: two tenants (made by ``atoll key create``
without --tenant, each key its own tenant) must not see or reach each other's buckets through listing, reading,
writing, deleting, copying (S3 copy and part copy, Copy Blob, Put Blob / Put Block From URL), SAS tokens (service
and account) or presigned URLs (SigV4 and SigV2). S3 answers 403 AccessDenied; Blob 403
AuthorizationPermissionMismatch, and CannotVerifyCopySource for a copy source that cannot be read.
"""

from __future__ import annotations

import json
import secrets
import time
from datetime import datetime, timedelta, timezone

import pytest
import requests
from azure.core.exceptions import HttpResponseError
from azure.storage.blob import (AccountSasPermissions, BlobClient, BlobSasPermissions, BlobServiceClient,
                                ContainerClient, ResourceTypes, generate_account_sas, generate_blob_sas,
                                generate_container_sas)
from botocore.exceptions import ClientError

from harness import AtollProcess


def _tenant_user(server: AtollProcess, hint: str) -> dict:
    account = hint + secrets.token_hex(4)
    out = server.cli("key", "create", "--name", hint, "--account", account, "--json")
    return json.loads(out.stdout)


class Side:
    """One tenant's identity, its clients and a bucket holding ``secret.txt``."""

    def __init__(self, server: AtollProcess, hint: str) -> None:
        self.user = _tenant_user(server, hint)
        self.account, self.key = self.user["account_name"], self.user["account_key"]
        self.s3 = server.client(self.user["access_key_id"], self.user["secret_access_key"])
        self.blob_url = f"http://127.0.0.1:{server.blob_port}/{self.account}"
        self.blob = BlobServiceClient(self.blob_url, credential={"account_name": self.account,
                                                                  "account_key": self.key}, retry_total=0)
        self.bucket = f"{hint}-{secrets.token_hex(4)}"
        self.s3.create_bucket(Bucket=self.bucket)
        self.s3.put_object(Bucket=self.bucket, Key="secret.txt", Body=f"{hint}'s data".encode())


@pytest.fixture(scope="module")
def tenants(atoll):
    return Side(atoll, "isoa"), Side(atoll, "isob")


def _expiry() -> datetime:
    return datetime.now(timezone.utc) + timedelta(hours=1)


def s3_denied(call) -> None:
    with pytest.raises(ClientError) as caught:
        call()
    error = caught.value.response
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 403, error
    assert error["Error"]["Code"] in ("AccessDenied", "403"), error  # HEAD answers have no body to name it


def blob_denied(call, code: str = "AuthorizationPermissionMismatch", status: int = 403) -> None:
    with pytest.raises(HttpResponseError) as caught:
        call()
    assert caught.value.status_code == status, caught.value
    assert caught.value.error_code == code, caught.value


def copy_fails(target: BlobClient, source: str, status: str) -> None:
    """An asynchronous Copy Blob of a source fetched over HTTP is accepted, then fails with the source's status;
    the destination keeps only the empty placeholder Azure creates."""
    started = target.start_copy_from_url(source)
    deadline = time.monotonic() + 10
    while (copy := target.get_blob_properties().copy).status == "pending" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert copy.id == started["copy_id"] and copy.status == "failed", copy
    assert copy.status_description.startswith(status), copy.status_description
    assert target.download_blob().readall() == b""


def test_s3_listing_reading_writing_deleting_across_tenants(tenants):
    a, b = tenants
    assert [x["Name"] for x in a.s3.list_buckets()["Buckets"]] == [a.bucket]
    assert [x["Name"] for x in b.s3.list_buckets()["Buckets"]] == [b.bucket]
    s3_denied(lambda: a.s3.head_bucket(Bucket=b.bucket))
    s3_denied(lambda: a.s3.get_bucket_location(Bucket=b.bucket))
    s3_denied(lambda: a.s3.list_objects_v2(Bucket=b.bucket))
    s3_denied(lambda: a.s3.list_objects(Bucket=b.bucket))
    s3_denied(lambda: a.s3.list_multipart_uploads(Bucket=b.bucket))
    s3_denied(lambda: a.s3.get_object(Bucket=b.bucket, Key="secret.txt"))
    s3_denied(lambda: a.s3.head_object(Bucket=b.bucket, Key="secret.txt"))
    s3_denied(lambda: a.s3.put_object(Bucket=b.bucket, Key="planted.txt", Body=b"x"))
    s3_denied(lambda: a.s3.delete_object(Bucket=b.bucket, Key="secret.txt"))
    s3_denied(lambda: a.s3.delete_objects(Bucket=b.bucket, Delete={"Objects": [{"Key": "secret.txt"}]}))
    s3_denied(lambda: a.s3.create_multipart_upload(Bucket=b.bucket, Key="planted.bin"))
    s3_denied(lambda: a.s3.delete_bucket(Bucket=b.bucket))
    # Bucket names are unique on the island: B's name is taken for A, and A is not told whose it is.
    with pytest.raises(ClientError) as caught:
        a.s3.create_bucket(Bucket=b.bucket)
    assert caught.value.response["Error"]["Code"] == "BucketAlreadyExists"
    assert b.s3.get_object(Bucket=b.bucket, Key="secret.txt")["Body"].read() == b"isob's data"
    assert [o["Key"] for o in b.s3.list_objects_v2(Bucket=b.bucket)["Contents"]] == ["secret.txt"]


def test_s3_copies_across_tenants(tenants):
    a, b = tenants
    # Out of B's bucket into A's, and out of A's into B's.
    s3_denied(lambda: a.s3.copy_object(Bucket=a.bucket, Key="stolen.txt",
                                       CopySource={"Bucket": b.bucket, "Key": "secret.txt"}))
    s3_denied(lambda: a.s3.copy_object(Bucket=b.bucket, Key="planted.txt",
                                       CopySource={"Bucket": a.bucket, "Key": "secret.txt"}))
    upload = a.s3.create_multipart_upload(Bucket=a.bucket, Key="parts.bin")["UploadId"]
    s3_denied(lambda: a.s3.upload_part_copy(Bucket=a.bucket, Key="parts.bin", UploadId=upload, PartNumber=1,
                                            CopySource={"Bucket": b.bucket, "Key": "secret.txt"}))
    a.s3.abort_multipart_upload(Bucket=a.bucket, Key="parts.bin", UploadId=upload)
    # B's multipart upload is not A's to touch either.
    theirs = b.s3.create_multipart_upload(Bucket=b.bucket, Key="big.bin")["UploadId"]
    s3_denied(lambda: a.s3.upload_part(Bucket=b.bucket, Key="big.bin", UploadId=theirs, PartNumber=1, Body=b"x"))
    s3_denied(lambda: a.s3.list_parts(Bucket=b.bucket, Key="big.bin", UploadId=theirs))
    s3_denied(lambda: a.s3.abort_multipart_upload(Bucket=b.bucket, Key="big.bin", UploadId=theirs))
    b.s3.abort_multipart_upload(Bucket=b.bucket, Key="big.bin", UploadId=theirs)
    assert "Contents" not in a.s3.list_objects_v2(Bucket=a.bucket, Prefix="stolen")


@pytest.mark.parametrize("signature", ["s3v4", "s3"])
def test_presigned_urls_across_tenants(atoll, tenants, signature):
    a, b = tenants
    signer = atoll.client(a.user["access_key_id"], a.user["secret_access_key"], signature_version=signature)
    get = signer.generate_presigned_url("get_object", Params={"Bucket": b.bucket, "Key": "secret.txt"})
    put = signer.generate_presigned_url("put_object", Params={"Bucket": b.bucket, "Key": "planted.txt"})
    delete = signer.generate_presigned_url("delete_object", Params={"Bucket": b.bucket, "Key": "secret.txt"})
    for answer in (requests.get(get, timeout=10), requests.put(put, data=b"x", timeout=10),
                   requests.delete(delete, timeout=10)):
        assert answer.status_code == 403, answer.text
        assert "<Code>AccessDenied</Code>" in answer.text
    # The same signer's URL for its own object works: the refusal is the tenant's, not the signature's.
    own = signer.generate_presigned_url("get_object", Params={"Bucket": a.bucket, "Key": "secret.txt"})
    assert requests.get(own, timeout=10).content == b"isoa's data"


def test_blob_listing_reading_writing_deleting_across_tenants(tenants):
    a, b = tenants
    assert [c.name for c in a.blob.list_containers()] == [a.bucket]
    theirs = a.blob.get_container_client(b.bucket)
    blob = theirs.get_blob_client("secret.txt")
    blob_denied(theirs.get_container_properties)
    blob_denied(theirs.get_container_access_policy)
    blob_denied(lambda: list(theirs.list_blobs()))
    blob_denied(lambda: blob.download_blob().readall())
    blob_denied(blob.get_blob_properties)
    blob_denied(lambda: blob.get_block_list())
    blob_denied(lambda: theirs.upload_blob("planted.txt", b"x"))
    blob_denied(lambda: blob.upload_blob(b"overwritten", overwrite=True))
    blob_denied(lambda: blob.stage_block("YmxvY2stMQ==", b"x"))
    blob_denied(lambda: blob.set_blob_metadata({"k": "v"}))
    blob_denied(lambda: blob.acquire_lease())
    blob_denied(lambda: theirs.acquire_lease())
    blob_denied(lambda: theirs.set_container_metadata({"k": "v"}))
    blob_denied(lambda: theirs.set_container_access_policy(signed_identifiers={}, public_access="container"))
    blob_denied(blob.delete_blob)
    blob_denied(theirs.delete_container)
    blob_denied(lambda: a.blob.create_container(b.bucket), "ContainerAlreadyExists", 409)
    assert b.s3.get_object(Bucket=b.bucket, Key="secret.txt")["Body"].read() == b"isob's data"
    assert b.blob.get_container_client(b.bucket).get_container_properties().metadata == {}


def test_blob_copies_across_tenants(tenants):
    a, b = tenants
    # The source URL names B's blob under A's own account (what A's Shared Key would cover if it could read it),
    # and under B's account without a SAS: either way A's copy cannot read it.
    for source in (f"{a.blob_url}/{b.bucket}/secret.txt", f"{b.blob_url}/{b.bucket}/secret.txt"):
        target = a.blob.get_blob_client(a.bucket, "stolen.txt")
        copy_fails(target, source, "404")
        blob_denied(lambda: target.start_copy_from_url(source, requires_sync=True), "CannotVerifyCopySource", 404)
        blob_denied(lambda: target.upload_blob_from_url(source), "CannotVerifyCopySource", 404)
        blob_denied(lambda: target.stage_block_from_url("YmxvY2stMQ==", source), "CannotVerifyCopySource", 404)
    # A SAS that A signs for B's blob is A's authority, which does not reach B's container.
    forged = generate_blob_sas(a.account, b.bucket, "secret.txt", account_key=a.key,
                               permission=BlobSasPermissions(read=True), expiry=_expiry())
    source = f"{a.blob_url}/{b.bucket}/secret.txt?{forged}"
    target = a.blob.get_blob_client(a.bucket, "stolen.txt")
    blob_denied(lambda: target.upload_blob_from_url(source), "CannotVerifyCopySource", 403)
    copy_fails(target, source, "403")
    # Copying A's own blob into B's container is a write there.
    a.s3.put_object(Bucket=a.bucket, Key="mine.txt", Body=b"mine")
    into_b = a.blob.get_blob_client(b.bucket, "planted.txt")
    mine = f"{a.blob_url}/{a.bucket}/mine.txt"
    blob_denied(lambda: into_b.start_copy_from_url(mine))
    blob_denied(lambda: into_b.upload_blob_from_url(mine))
    blob_denied(lambda: into_b.stage_block_from_url("YmxvY2stMQ==", mine))
    assert a.s3.get_object(Bucket=a.bucket, Key="stolen.txt")["Body"].read() == b""  # Copy Blob's placeholder
    assert [o["Key"] for o in b.s3.list_objects_v2(Bucket=b.bucket)["Contents"]] == ["secret.txt"]
    # A SAS B signs for its own blob is B's grant to whoever holds it (as on Azure): the source is read as B.
    shared = generate_blob_sas(b.account, b.bucket, "secret.txt", account_key=b.key,
                               permission=BlobSasPermissions(read=True), expiry=_expiry())
    target.upload_blob_from_url(f"{b.blob_url}/{b.bucket}/secret.txt?{shared}", overwrite=True)
    assert a.s3.get_object(Bucket=a.bucket, Key="stolen.txt")["Body"].read() == b"isob's data"
    a.s3.delete_object(Bucket=a.bucket, Key="stolen.txt")


def test_sas_signed_by_one_tenant_for_another_tenants_container(tenants):
    a, b = tenants
    service_sas = generate_container_sas(a.account, b.bucket, account_key=a.key, permission="racwdl",
                                         expiry=_expiry())
    via_service = ContainerClient.from_container_url(f"{a.blob_url}/{b.bucket}?{service_sas}", retry_total=0)
    blob_denied(lambda: list(via_service.list_blobs()))
    blob_denied(lambda: via_service.get_blob_client("secret.txt").download_blob().readall())
    blob_denied(lambda: via_service.upload_blob("planted.txt", b"x"))
    blob_denied(lambda: via_service.get_blob_client("secret.txt").delete_blob())
    blob_sas = generate_blob_sas(a.account, b.bucket, "secret.txt", account_key=a.key, permission="racwd",
                                 expiry=_expiry())
    via_blob = BlobClient.from_blob_url(f"{a.blob_url}/{b.bucket}/secret.txt?{blob_sas}", retry_total=0)
    blob_denied(lambda: via_blob.download_blob().readall())
    blob_denied(lambda: via_blob.upload_blob(b"overwritten", overwrite=True))
    account_sas = generate_account_sas(a.account, a.key, ResourceTypes(service=True, container=True, object=True),
                                       AccountSasPermissions(read=True, write=True, delete=True, list=True,
                                                             create=True), _expiry())
    via_account = BlobServiceClient(a.blob_url, credential=account_sas, retry_total=0)
    assert [c.name for c in via_account.list_containers()] == [a.bucket]
    theirs = via_account.get_container_client(b.bucket)
    blob_denied(lambda: list(theirs.list_blobs()))
    blob_denied(theirs.get_container_properties)
    blob_denied(lambda: theirs.get_blob_client("secret.txt").download_blob().readall())
    blob_denied(lambda: theirs.upload_blob("planted.txt", b"x"))
    blob_denied(lambda: theirs.get_blob_client("secret.txt").delete_blob())
    blob_denied(theirs.delete_container)
    # The same account SAS works in A's own container.
    assert via_account.get_blob_client(a.bucket, "secret.txt").download_blob().readall() == b"isoa's data"
    assert [o["Key"] for o in b.s3.list_objects_v2(Bucket=b.bucket)["Contents"]] == ["secret.txt"]
