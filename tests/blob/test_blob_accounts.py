"""Blob accounts: the root account (from the environment, or generated and printed once), accounts made with the
CLI, isolation between them, and the Blob port's settings (off, several workers)."""

from __future__ import annotations

import base64
import json
import os
import re
import socket

import pytest
from azure.core.exceptions import HttpResponseError
from azure.storage.blob import BlobServiceClient

from blobutil import blob_service_for
from coldstores import fresh_name
from harness import wait_until


def _service(server, account: str, key: str) -> BlobServiceClient:
    return BlobServiceClient(f"http://127.0.0.1:{server.blob_port}/{account}",
                             credential={"account_name": account, "account_key": key})


def test_cli_account_is_isolated_from_root(blob_server, blob_service):
    out = blob_server.cli("key", "create", "--name", "alice", "--account", "al" + os.urandom(4).hex(), "--json")
    user = json.loads(out.stdout)
    assert len(base64.b64decode(user["account_key"])) == 64
    alice = _service(blob_server, user["account_name"], user["account_key"])
    mine = alice.create_container(fresh_name("alice"))
    mine.upload_blob("a.txt", b"alice's")
    root_container = blob_service.create_container(fresh_name("root"))
    try:
        with pytest.raises(HttpResponseError) as exc:
            alice.get_container_client(root_container.container_name).get_container_properties()
        assert exc.value.status_code == 403
        assert exc.value.error_code == "AuthorizationPermissionMismatch"
        assert [c.name for c in alice.list_containers()] == [mine.container_name]
        # Her S3 key sees the same bucket; the root sees everything.
        s3 = blob_server.client(user["access_key_id"], user["secret_access_key"])
        assert s3.get_object(Bucket=mine.container_name, Key="a.txt")["Body"].read() == b"alice's"
        assert root_container.container_name in [c.name for c in blob_service.list_containers()]
        # A key that is not alice's does not pass for her.
        forged = _service(blob_server, user["account_name"], blob_server.account_key)
        with pytest.raises(HttpResponseError) as exc:
            list(forged.list_containers())
        assert exc.value.status_code == 403 and exc.value.error_code == "AuthenticationFailed"
    finally:
        mine.delete_container()
        root_container.delete_container()


def test_bad_account_names_are_refused_by_the_cli(blob_server):
    result = blob_server.cli("key", "create", "--name", "bob", "--account", "Not_Valid", check=False)
    assert result.returncode != 0
    assert "account" in result.stderr.lower()


def test_generated_root_account_is_printed_once_and_kept(new_server):
    env = {"ATOLL_ROOT_ACCOUNT_NAME": "", "ATOLL_ROOT_ACCOUNT_KEY": ""}
    server = new_server(extra_env=env)
    # The port opens a moment before the start-up lines are printed; the S3 one comes after the account.
    wait_until(lambda: "Atoll S3 endpoint on" in server.log_text(), 10, "the start-up lines")
    log = server.log_text()
    found = re.search(r"account name: (\S+)\n  account key:  (\S+)", log)
    assert found, log
    account, key = found.groups()
    with open(os.path.join(server.data_dir, "root-credentials")) as f:
        stored = f.read()
    assert f"account_name = {account}" in stored and f"account_key = {key}" in stored
    _service(server, account, key).create_container("kept")
    server.stop()
    server.start()
    wait_until(lambda: server.log_text().count("Atoll S3 endpoint on") == 2, 10, "the second start-up lines")
    assert server.log_text().count("Generated root Blob account") == 1
    assert [c.name for c in _service(server, account, key).list_containers()] == ["kept"]


def test_blob_port_off_and_several_workers(new_server):
    off = new_server(extra_env={"ATOLL_BLOB_LISTEN": "off"})
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", off.blob_port), timeout=1).close()
    assert off.client().list_buckets()["Buckets"] == []
    off.stop()

    two = new_server(workers=2)
    service = blob_service_for(two)
    client = service.create_container("shared")
    for i in range(8):  # new connections: the kernel spreads them over both workers
        blob_service_for(two).get_container_client("shared").upload_blob(f"b{i}", b"x" * i)
    assert len(list(client.list_blobs())) == 8
