"""Blob and container leases through azure-storage-blob against a live Atoll, and the same scenarios against
Azurite as the reference; S3 writes to a leased blob; two worker processes seeing one lease.

Waits are kept short: infinite leases and breaks of 0-1 s everywhere, one 15 s expiry (Atoll only, where it also
checks the lease across workers)."""

from __future__ import annotations

import time
import uuid

import pytest
from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.storage.blob import BlobLeaseClient, BlobServiceClient
from botocore.exceptions import ClientError

from coldstores import fresh_name
from harness import AtollProcess, stop_cleanly

TARGETS = ("atoll", "azurite")


@pytest.fixture
def two_worker_blob_server(tmp_path):
    """An Atoll with two worker processes on one Blob port; a factory of clients, each on new connections."""
    server = AtollProcess(data_dir=str(tmp_path / "data"), workers=2).start()
    endpoint = f"http://127.0.0.1:{server.blob_port}/{server.account_name}"
    credential = {"account_name": server.account_name, "account_key": server.account_key}
    yield lambda: BlobServiceClient(endpoint, credential=credential)
    stop_cleanly(server)


@pytest.fixture(params=TARGETS)
def service(request) -> BlobServiceClient:
    if request.param == "atoll":
        return request.getfixturevalue("blob_service")
    return request.getfixturevalue("azurite").service_client()


@pytest.fixture
def container(service, request):
    name = fresh_name(request.node.name)[:63].rstrip("-")
    client = service.create_container(name)
    yield client
    try:
        if client.get_container_properties().lease.state in ("leased", "breaking"):
            BlobLeaseClient(client).break_lease(0)
        client.delete_container()  # leased blobs go with it
    except ResourceNotFoundError:
        pass  # the test deleted it


def error_code(call) -> tuple[int, str]:
    with pytest.raises(HttpResponseError) as caught:
        call()
    return caught.value.status_code, caught.value.error_code


def lease_of(props) -> tuple[str, str, str | None]:
    return props.lease.status, props.lease.state, props.lease.duration


def test_blob_lease_guards_writes_and_deletes(container):
    blob = container.get_blob_client("guarded.bin")
    blob.upload_blob(b"v1")
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    lease = blob.acquire_lease(lease_duration=-1, lease_id=first)
    assert lease.id == first
    assert lease_of(blob.get_blob_properties()) == ("locked", "leased", "infinite")

    # Writes, metadata and deletes need the lease; reads do not.
    assert error_code(lambda: blob.upload_blob(b"v2", overwrite=True)) == (412, "LeaseIdMissing")
    assert error_code(lambda: blob.upload_blob(b"v2", overwrite=True, lease=second)) == (
        412, "LeaseIdMismatchWithBlobOperation")
    assert error_code(lambda: blob.set_blob_metadata({"a": "1"})) == (412, "LeaseIdMissing")
    assert error_code(lambda: blob.delete_blob()) == (412, "LeaseIdMissing")
    assert blob.download_blob().readall() == b"v1"
    blob.upload_blob(b"v2", overwrite=True, lease=lease)
    blob.set_blob_metadata({"a": "1"}, lease=lease)
    assert blob.download_blob().readall() == b"v2"
    assert lease_of(blob.get_blob_properties()) == ("locked", "leased", "infinite")  # overwrite keeps the lease

    # Lease operations and their conflicts.
    assert error_code(lambda: blob.acquire_lease(lease_id=second)) == (409, "LeaseAlreadyPresent")
    lease.renew()
    lease.change(second)
    assert lease.id == second
    assert error_code(lambda: BlobLeaseClient(blob, first).release()) == (409, "LeaseIdMismatchWithLeaseOperation")
    assert error_code(lambda: blob.delete_blob(lease=first)) == (412, "LeaseIdMismatchWithBlobOperation")
    lease.release()
    assert lease_of(blob.get_blob_properties()) == ("unlocked", "available", None)
    assert error_code(lambda: blob.delete_blob(lease=second)) == (412, "LeaseNotPresentWithBlobOperation")
    assert error_code(lambda: BlobLeaseClient(blob, second).renew()) == (409, "LeaseIdMismatchWithLeaseOperation")
    assert error_code(lambda: BlobLeaseClient(blob, second).break_lease()) == (409,
                                                                               "LeaseNotPresentWithLeaseOperation")

    # A delete with the lease ends the lease: a new blob of the same name is not leased.
    lease = blob.acquire_lease(lease_duration=15)
    assert lease_of(blob.get_blob_properties()) == ("locked", "leased", "fixed")
    blob.delete_blob(lease=lease)
    blob.upload_blob(b"new")
    assert lease_of(blob.get_blob_properties()) == ("unlocked", "available", None)
    assert error_code(lambda: container.get_blob_client("missing").acquire_lease()) == (404, "BlobNotFound")

    # Lease Blob honours conditional headers.
    etag = blob.get_blob_properties().etag
    assert error_code(lambda: blob.acquire_lease(etag='"0x1"', match_condition=MatchConditions.IfNotModified)) == (
        412, "ConditionNotMet")
    assert lease_of(blob.get_blob_properties())[1] == "available"
    blob.acquire_lease(etag=etag, match_condition=MatchConditions.IfNotModified).release()


def test_break_and_broken_leases(container):
    blob = container.get_blob_client("broken.bin")
    blob.upload_blob(b"x")
    lease = blob.acquire_lease(lease_duration=-1)
    assert lease.break_lease(lease_break_period=1) == 1
    assert lease_of(blob.get_blob_properties())[:2] == ("locked", "breaking")
    assert error_code(lambda: blob.upload_blob(b"y", overwrite=True)) == (412, "LeaseIdMissing")
    assert error_code(lambda: blob.acquire_lease(lease_id=lease.id)) == (409, "LeaseIsBreakingAndCannotBeAcquired")
    assert error_code(lambda: blob.acquire_lease()) == (409, "LeaseAlreadyPresent")
    blob.upload_blob(b"y", overwrite=True, lease=lease)  # a breaking lease still guards with its id
    time.sleep(1.3)
    assert lease_of(blob.get_blob_properties())[:2] == ("unlocked", "broken")
    assert error_code(lambda: lease.renew()) == (409, "LeaseIsBrokenAndCannotBeRenewed")
    blob.upload_blob(b"z", overwrite=True)  # a broken lease guards nothing
    second = blob.acquire_lease(lease_duration=-1)
    assert second.break_lease(lease_break_period=0) == 0
    assert lease_of(blob.get_blob_properties())[:2] == ("unlocked", "broken")
    assert error_code(lambda: blob.acquire_lease(lease_duration=10)) == (400, "InvalidHeaderValue")


# single_node: asserts that a container change answers at once on the next request, which a cluster gives only
# within the 1 s bucket cache of another node (docs/NOTES.md; tests/cluster/test_cluster_consistency.py)
@pytest.mark.single_node
def test_container_lease(service, container):
    blob = container.get_blob_client("inside.bin")
    blob.upload_blob(b"x")
    leased_blob = container.get_blob_client("leased.bin")
    leased_blob.upload_blob(b"y")
    leased_blob.acquire_lease(lease_duration=-1)
    lease = container.acquire_lease(lease_duration=-1)
    assert lease_of(container.get_container_properties()) == ("locked", "leased", "infinite")
    listed = {b.name: lease_of(b) for b in container.list_blobs()}
    assert listed == {"inside.bin": ("unlocked", "available", None), "leased.bin": ("locked", "leased", "infinite")}
    assert [lease_of(c) for c in service.list_containers(name_starts_with=container.container_name)] == [
        ("locked", "leased", "infinite")]

    # Container metadata may be set without the lease; Delete Container needs it.
    container.set_container_metadata({"k": "v"})
    assert error_code(lambda: container.delete_container()) == (412, "LeaseIdMissing")
    assert error_code(lambda: container.delete_container(lease=str(uuid.uuid4()))) == (
        412, "LeaseIdMismatchWithContainerOperation")
    assert error_code(lambda: container.acquire_lease()) == (409, "LeaseAlreadyPresent")
    assert blob.download_blob().readall() == b"x"
    blob.upload_blob(b"writes to blobs need no container lease", overwrite=True)
    container.delete_container(lease=lease)  # with its blobs, the leased one too
    assert error_code(lambda: container.get_container_properties()) == (404, "ContainerNotFound")


def test_container_lease_break_and_release(container):
    lease = container.acquire_lease(lease_duration=-1)
    assert lease.break_lease(lease_break_period=0) == 0
    assert lease_of(container.get_container_properties())[:2] == ("unlocked", "broken")
    assert error_code(lambda: container.delete_container(lease=lease)) == (412,
                                                                          "LeaseNotPresentWithContainerOperation")
    lease = container.acquire_lease(lease_duration=-1)
    lease.release()
    assert lease_of(container.get_container_properties()) == ("unlocked", "available", None)


def test_s3_writes_to_a_leased_blob_are_denied(blob_service, s3):
    name = fresh_name("s3-leased")[:63].rstrip("-")
    container = blob_service.create_container(name)
    blob = container.get_blob_client("held.txt")
    blob.upload_blob(b"held")
    lease = blob.acquire_lease(lease_duration=-1)

    for call in (lambda: s3.put_object(Bucket=name, Key="held.txt", Body=b"overwrite"),
                 lambda: s3.delete_object(Bucket=name, Key="held.txt"),
                 lambda: s3.copy_object(Bucket=name, Key="held.txt", CopySource={"Bucket": name, "Key": "held.txt"},
                                        MetadataDirective="REPLACE")):
        with pytest.raises(ClientError) as caught:
            call()
        assert caught.value.response["Error"]["Code"] == "AccessDenied"
        assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    result = s3.delete_objects(Bucket=name, Delete={"Objects": [{"Key": "held.txt"}]})
    assert [e["Code"] for e in result["Errors"]] == ["AccessDenied"]
    assert s3.get_object(Bucket=name, Key="held.txt")["Body"].read() == b"held"
    lease.release()
    s3.delete_object(Bucket=name, Key="held.txt")
    blob_service.delete_container(name)


def test_two_workers_see_one_lease_and_it_expires_by_time(two_worker_blob_server):
    """Every worker process answers with the same lease (request ids start with the worker's pid), and a fixed
    lease lapses by wall-clock time on all of them."""
    make_client = two_worker_blob_server
    container = make_client().create_container(fresh_name("workers")[:63].rstrip("-"))
    container.get_blob_client("b").upload_blob(b"x")
    lease = container.get_blob_client("b").acquire_lease(lease_duration=15)
    started = time.monotonic()

    def states_by_worker(expect: str) -> set[str]:
        workers: set[str] = set()
        for _ in range(40):  # new connections until both workers answered
            client = make_client().get_blob_client(container.container_name, "b")
            props = client.get_blob_properties(raw_response_hook=lambda r: workers.add(
                r.http_response.headers["x-ms-request-id"][:-10]))
            assert props.lease.state == expect
            if expect == "leased":
                assert error_code(lambda: client.upload_blob(b"y", overwrite=True)) == (412, "LeaseIdMissing")
            if len(workers) == 2:
                break
        return workers

    assert len(states_by_worker("leased")) == 2
    time.sleep(max(0.0, 15.2 - (time.monotonic() - started)))
    assert len(states_by_worker("expired")) == 2
    client = make_client().get_blob_client(container.container_name, "b")
    client.upload_blob(b"after expiry", overwrite=True)  # an expired lease guards nothing
    lease.renew()  # and can be renewed by its holder (Azure: while no one else took the blob)
    assert client.get_blob_properties().lease.state == "leased"
