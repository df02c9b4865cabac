"""Blob authentication end to end: azure-storage-blob (sync) with Shared Key and SAS URLs against a live Atoll,
and the same scenarios against Azurite as the reference.

Refusals must be 403 with Azure's x-ms-error-code and must change nothing: every refused write is followed by a
check, with the real key, that the blob's bytes, ETag and metadata are what they were. Azurite answers some
refusals with other codes than Azure (``AZURITE_CODES``); Atoll answers with Azure's. Clients built here do not
retry, so an unexpected 5xx fails at once instead of after the SDK's back-off."""

from __future__ import annotations

import base64
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from email.utils import formatdate
from urllib.parse import parse_qsl, quote, urlencode

import pytest
from azure.core.exceptions import HttpResponseError
from azure.storage.blob import (
    AccessPolicy, AccountSasPermissions, BlobClient, BlobSasPermissions, BlobServiceClient, ContainerClient,
    ContainerSasPermissions, ResourceTypes, generate_account_sas, generate_blob_sas, generate_container_sas,
)

from coldstores import fresh_name

TARGETS = ("atoll", "azurite")
WRONG_KEY = base64.b64encode(b"not the account key, but well formed").decode()
ORIGINAL = b"original bytes"

# Where Azurite 3.x differs from Azure in the error code of a refusal (the status is 403 on both).
AZURITE_CODES = {
    "AuthenticationFailed": "AuthorizationFailure",
}


@pytest.fixture(params=TARGETS)
def target(request) -> str:
    return request.param


@pytest.fixture
def service(target, request) -> BlobServiceClient:
    if target == "atoll":
        return request.getfixturevalue("blob_service")
    return request.getfixturevalue("azurite").service_client()


@pytest.fixture
def container(service, request) -> ContainerClient:
    name = fresh_name(request.node.name)[:63].rstrip("-").lower()
    client = service.create_container(name)
    client.get_blob_client("kept.bin").upload_blob(ORIGINAL, metadata={"v": "1"})
    yield client
    try:
        client.delete_container()
    except HttpResponseError:
        pass


def key_of(service: BlobServiceClient) -> str:
    return service.credential.account_key


def utc(offset: timedelta) -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0) + offset


def refused(target: str, call, code: str) -> None:
    """``call`` fails with 403 and ``code`` (Azurite's equivalent on Azurite)."""
    with pytest.raises(HttpResponseError) as caught:
        call()
    expected = AZURITE_CODES.get(code, code) if target == "azurite" else code
    assert (caught.value.status_code, caught.value.error_code) == (403, expected), caught.value.message


def snapshot(container: ContainerClient, name: str = "kept.bin") -> tuple[bytes, str, dict]:
    blob = container.get_blob_client(name)
    props = blob.get_blob_properties()
    return blob.download_blob().readall(), props.etag, dict(props.metadata)


def with_sas(service: BlobServiceClient, token: str) -> BlobServiceClient:
    return BlobServiceClient(service.url, credential=token, retry_total=0)


def attempt_writes(target: str, client: BlobServiceClient, container: str, code: str) -> None:
    """Every kind of change to kept.bin and its container, each refused with ``code``."""
    blob = client.get_blob_client(container, "kept.bin")
    refused(target, lambda: blob.upload_blob(b"overwritten", overwrite=True), code)
    refused(target, lambda: blob.set_blob_metadata({"v": "2"}), code)
    refused(target, lambda: blob.stage_block("YmxvY2stMQ==", b"block"), code)
    refused(target, lambda: blob.delete_blob(), code)
    refused(target, lambda: client.get_blob_client(container, "new.bin").upload_blob(b"new"), code)


# --- Shared Key -----------------------------------------------------------------------------------------------------

def test_wrong_key_is_refused_and_changes_nothing(target, service, container):
    before = snapshot(container)
    wrong = BlobServiceClient(service.url, credential={"account_name": service.account_name,
                                                       "account_key": WRONG_KEY}, retry_total=0)
    attempt_writes(target, wrong, container.container_name, "AuthenticationFailed")
    refused(target, lambda: wrong.get_blob_client(container.container_name, "kept.bin").download_blob(),
            "AuthenticationFailed")
    refused(target, lambda: list(wrong.list_containers()), "AuthenticationFailed")
    refused(target, lambda: wrong.create_container(container.container_name + "x"), "AuthenticationFailed")
    assert snapshot(container) == before
    assert [b.name for b in container.list_blobs()] == ["kept.bin"]
    assert not service.get_container_client(container.container_name + "x").exists()


def test_shared_key_refusal_on_the_wire(target, service, container):
    """A raw request signed with the wrong key: 403, x-ms-error-code, an Azure XML error body, no secret."""
    url = f"{service.url.rstrip('/')}/{container.container_name}/kept.bin"
    date = formatdate(usegmt=True)
    request = urllib.request.Request(url, method="GET", headers={
        "x-ms-date": date, "x-ms-version": "2021-08-06",
        "Authorization": f"SharedKey {service.account_name}:{base64.b64encode(b'x' * 32).decode()}"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    answer = caught.value
    body = answer.read().decode()
    expected = AZURITE_CODES.get("AuthenticationFailed") if target == "azurite" else "AuthenticationFailed"
    assert answer.status == 403 and answer.headers["x-ms-error-code"] == expected
    assert f"<Code>{expected}</Code>" in body and answer.headers["x-ms-request-id"]
    assert key_of(service) not in body


# --- SAS ------------------------------------------------------------------------------------------------------------

def blob_token(service: BlobServiceClient, container: str, blob: str = "kept.bin", **kwargs) -> str:
    args = dict(account_name=service.account_name, container_name=container, blob_name=blob,
                account_key=key_of(service), permission=BlobSasPermissions(read=True), expiry=utc(timedelta(hours=1)))
    args.update(kwargs)
    return generate_blob_sas(**args)


def test_forged_sas_is_refused_and_changes_nothing(target, service, container):
    name = container.container_name
    before = snapshot(container)
    read_only = generate_container_sas(service.account_name, name, account_key=key_of(service),
                                       permission=ContainerSasPermissions(read=True), expiry=utc(timedelta(hours=1)))
    # The bearer grants itself every permission and a later expiry: the signature no longer matches.
    fields = dict(parse_qsl(read_only))
    for forged_fields in ({**fields, "sp": "racwdl"}, {**fields, "se": fields["se"].replace("20", "21", 1)}):
        attempt_writes(target, with_sas(service, urlencode(forged_fields)), name, "AuthenticationFailed")
    # A SAS signed with another key, and a SAS for one blob used on another.
    foreign = generate_container_sas(service.account_name, name, account_key=WRONG_KEY, permission="racwdl",
                                     expiry=utc(timedelta(hours=1)))
    attempt_writes(target, with_sas(service, foreign), name, "AuthenticationFailed")
    other_blob = blob_token(service, name, "other.bin", permission="racwd")
    refused(target, lambda: with_sas(service, other_blob).get_blob_client(name, "kept.bin").upload_blob(
        b"overwritten", overwrite=True), "AuthenticationFailed")
    assert snapshot(container) == before
    assert [b.name for b in container.list_blobs()] == ["kept.bin"]


@pytest.mark.parametrize("window", ["expired", "not yet valid"])
def test_sas_outside_its_time_window_is_refused(target, service, container, window):
    name = container.container_name
    before = snapshot(container)
    start, expiry = ((timedelta(hours=-2), timedelta(hours=-1)) if window == "expired"
                     else (timedelta(hours=1), timedelta(hours=2)))
    token = generate_container_sas(service.account_name, name, account_key=key_of(service), permission="racwdl",
                                   start=utc(start), expiry=utc(expiry))
    client = with_sas(service, token)
    attempt_writes(target, client, name, "AuthenticationFailed")
    refused(target, lambda: client.get_blob_client(name, "kept.bin").download_blob(), "AuthenticationFailed")
    refused(target, lambda: list(client.get_container_client(name).list_blobs()), "AuthenticationFailed")
    assert snapshot(container) == before


def test_sas_with_too_few_permissions_is_refused(target, service, container):
    name = container.container_name
    before = snapshot(container)
    reader = with_sas(service, blob_token(service, name, permission=BlobSasPermissions(read=True)))
    assert reader.get_blob_client(name, "kept.bin").download_blob().readall() == ORIGINAL
    blob = reader.get_blob_client(name, "kept.bin")
    refused(target, lambda: blob.upload_blob(b"overwritten", overwrite=True), "AuthorizationPermissionMismatch")
    refused(target, lambda: blob.set_blob_metadata({"v": "2"}), "AuthorizationPermissionMismatch")
    refused(target, lambda: blob.stage_block("YmxvY2stMQ==", b"block"), "AuthorizationPermissionMismatch")
    refused(target, lambda: blob.delete_blob(), "AuthorizationPermissionMismatch")
    # A container SAS that may read but not list; one that may write but not delete.
    no_list = with_sas(service, generate_container_sas(service.account_name, name, account_key=key_of(service),
                                                       permission="rw", expiry=utc(timedelta(hours=1))))
    refused(target, lambda: list(no_list.get_container_client(name).list_blobs()), "AuthorizationPermissionMismatch")
    refused(target, lambda: no_list.get_blob_client(name, "kept.bin").delete_blob(),
            "AuthorizationPermissionMismatch")
    # An account SAS for objects only cannot list containers or create one.
    objects_only = with_sas(service, generate_account_sas(
        service.account_name, key_of(service), ResourceTypes(object=True), AccountSasPermissions(read=True,
                                                                                              list=True, create=True),
        utc(timedelta(hours=1))))
    refused(target, lambda: list(objects_only.list_containers()), "AuthorizationResourceTypeMismatch")
    refused(target, lambda: objects_only.create_container(name + "x"), "AuthorizationResourceTypeMismatch")
    assert snapshot(container) == before
    assert not service.get_container_client(name + "x").exists()


@pytest.mark.parametrize("target", ["atoll"])
def test_sas_ip_restriction(target, service, container):
    """Atoll only: Azurite 3.37 ignores sip (a SAS for 10.1.2.3 works from 127.0.0.1 there)."""
    name = container.container_name
    elsewhere = with_sas(service, blob_token(service, name, ip="10.1.2.3"))
    refused(target, lambda: elsewhere.get_blob_client(name, "kept.bin").download_blob(),
            "AuthorizationSourceIPMismatch")
    here = with_sas(service, blob_token(service, name, ip="127.0.0.0-127.0.0.255"))
    assert here.get_blob_client(name, "kept.bin").download_blob().readall() == ORIGINAL


def test_sas_protocol_restriction(target, service, container):
    name = container.container_name
    https_only = with_sas(service, blob_token(service, name, protocol="https"))
    refused(target, lambda: https_only.get_blob_client(name, "kept.bin").download_blob(),
            "AuthorizationProtocolMismatch")


def test_sas_urls_read_write_and_list(target, service, container):
    name = container.container_name
    token = generate_container_sas(service.account_name, name, account_key=key_of(service), permission="racwdl",
                                   expiry=utc(timedelta(hours=1)))
    via_url = ContainerClient.from_container_url(f"{service.url.rstrip('/')}/{name}?{token}", retry_total=0)
    via_url.upload_blob("dir/a.txt", b"alpha", metadata={"k": "v"})
    via_url.get_blob_client("dir/b.txt").upload_blob(b"beta" * 1000)
    assert sorted(b.name for b in via_url.list_blobs(name_starts_with="dir/")) == ["dir/a.txt", "dir/b.txt"]
    assert via_url.get_blob_client("dir/a.txt").download_blob().readall() == b"alpha"
    assert via_url.get_blob_client("dir/a.txt").get_blob_properties().metadata == {"k": "v"}
    via_url.get_blob_client("dir/a.txt").delete_blob()
    assert [b.name for b in container.list_blobs(name_starts_with="dir/")] == ["dir/b.txt"]

    # A create-only blob SAS for a blob that does not exist yet, used through the blob URL itself.
    blob_url = f"{service.url.rstrip('/')}/{name}/{quote('new ü.bin')}"
    creator = blob_token(service, name, "new ü.bin", permission=BlobSasPermissions(create=True, write=True))
    BlobClient.from_blob_url(f"{blob_url}?{creator}", retry_total=0).upload_blob(b"created by SAS")
    assert container.get_blob_client("new ü.bin").download_blob().readall() == b"created by SAS"

    # An account SAS lists containers and reads any blob.
    account = with_sas(service, generate_account_sas(
        service.account_name, key_of(service), ResourceTypes(service=True, container=True, object=True),
        AccountSasPermissions(read=True, list=True), utc(timedelta(hours=1))))
    assert name in [c.name for c in account.list_containers(name_starts_with=name)]
    assert account.get_blob_client(name, "kept.bin").download_blob().readall() == ORIGINAL


def test_sas_naming_a_stored_access_policy(target, service, container):
    name = container.container_name
    before = snapshot(container)
    container.set_container_access_policy(signed_identifiers={
        "readers": AccessPolicy(permission=ContainerSasPermissions(read=True, list=True),
                                expiry=utc(timedelta(hours=1)), start=utc(timedelta(minutes=-5)))})
    token = generate_container_sas(service.account_name, name, account_key=key_of(service), policy_id="readers")
    reader = with_sas(service, token)
    assert reader.get_blob_client(name, "kept.bin").download_blob().readall() == ORIGINAL
    assert [b.name for b in reader.get_container_client(name).list_blobs()] == ["kept.bin"]
    refused(target, lambda: reader.get_blob_client(name, "kept.bin").upload_blob(b"x", overwrite=True),
            "AuthorizationPermissionMismatch")
    unknown = with_sas(service, generate_container_sas(service.account_name, name, account_key=key_of(service),
                                                       policy_id="nobody"))
    refused(target, lambda: unknown.get_blob_client(name, "kept.bin").download_blob(), "AuthenticationFailed")
    assert snapshot(container) == before


def test_sas_response_header_overrides(target, service, container):
    name = container.container_name
    token = blob_token(service, name, content_type="text/csv", content_disposition="attachment; filename=k.csv",
                       cache_control="no-store", content_language="de")
    blob = with_sas(service, token).get_blob_client(name, "kept.bin")
    for props in (blob.get_blob_properties(), blob.download_blob().properties):
        settings = props.content_settings
        assert (settings.content_type, settings.content_disposition, settings.cache_control,
                settings.content_language) == ("text/csv", "attachment; filename=k.csv", "no-store", "de")
    # The stored headers are untouched.
    assert container.get_blob_client("kept.bin").get_blob_properties().content_settings.content_type != "text/csv"


ODD_NAMES = ["ünï ©/日本語+x%20y.txt", "sub-delims!$&'()*+,;=:@.bin", "q?and#hash.bin", "tilde~/x..y"]


def test_odd_blob_names_sign_and_verify(target, service, container, request):
    """Shared Key and blob SAS over percent-encoded paths, with the sync client and with the aio client (which
    signs the path as yarl re-encodes it)."""
    import asyncio

    from azure.storage.blob.aio import BlobServiceClient as AioBlobServiceClient

    name = container.container_name
    for blob_name in ODD_NAMES:
        container.get_blob_client(blob_name).upload_blob(blob_name.encode(), metadata={"Odd_Key_x": "v  w"})
        sas = with_sas(service, blob_token(service, name, blob_name, permission="rw"))
        assert sas.get_blob_client(name, blob_name).download_blob().readall() == blob_name.encode()
        sas.get_blob_client(name, blob_name).upload_blob(b"by sas", overwrite=True)
    assert sorted(b.name for b in container.list_blobs()) == sorted(ODD_NAMES + ["kept.bin"])

    async def through_aio() -> None:
        credential = {"account_name": service.account_name, "account_key": key_of(service)}
        async with AioBlobServiceClient(service.url, credential=credential, retry_total=0) as aio:
            for blob_name in ODD_NAMES:
                blob = aio.get_blob_client(name, blob_name)
                await blob.set_blob_metadata({"b_a": "1", "ba": "2", "b1": "3"})
                assert await (await blob.download_blob()).readall() == b"by sas"
        token = blob_token(service, name, ODD_NAMES[0], permission="r")
        async with AioBlobServiceClient(service.url, credential=token, retry_total=0) as aio:
            assert await (await aio.get_blob_client(name, ODD_NAMES[0]).download_blob()).readall() == b"by sas"

    asyncio.run(through_aio())
    assert container.get_blob_client(ODD_NAMES[1]).get_blob_properties().metadata == {"b_a": "1", "ba": "2",
                                                                                       "b1": "3"}
