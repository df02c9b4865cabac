"""From-URL operations and Copy Blob through azure-storage-blob against a live Atoll: Put Blob From URL, Put Block
From URL (source ranges), Copy Blob From URL (requires_sync) and Copy Blob (start_copy_from_url, abort_copy), with
each kind of source: this same Atoll (a blob written with boto3), a moto presigned URL, an Azurite SAS URL, a plain
HTTP server, and a linked bucket's own cold store (the copy leaves the key warm). Bytes are checked with boto3;
source failures must answer CannotVerifyCopySource with the source's status. Where Azurite supports a scenario
(copies within one Azurite), it runs there too.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import os
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
from azure.core.exceptions import HttpResponseError, ResourceExistsError
from azure.storage.blob import (BlobBlock, BlobClient, BlobSasPermissions, ContainerSasPermissions, ContentSettings,
                                generate_blob_sas, generate_container_sas)

from coldside import ColdSite, pattern
from coldstores import fresh_name
from blobutil import blob_service_for
from harness import AtollProcess, meta_query, wait_for_port, wait_until
from tiering.tierutil import link_bucket


# a plain HTTP source -------------------------------------------------------------------------------------------
class _Files(http.server.BaseHTTPRequestHandler):
    """GET of in-memory files with single Range support; ``/slow/NAME`` sends its first 64 KiB, then waits for
    ``release`` (a copy stays pending meanwhile)."""

    files: dict[str, bytes] = {}
    release = threading.Event()

    def do_GET(self):  # noqa: N802 - http.server's name
        slow = self.path.startswith("/slow/")
        name = self.path.split("?")[0].removeprefix("/slow")
        body = self.files.get(name)
        if body is None:
            self.send_error(404)
            return
        start, end = 0, len(body) - 1
        wanted = self.headers.get("Range")
        if wanted:
            first, _, last = wanted.removeprefix("bytes=").partition("-")
            start, end = int(first), min(int(last), len(body) - 1)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Type", "text/x-plain-source")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        if slow:
            self.wfile.write(body[start:start + (64 << 10)])
            self.wfile.flush()
            self.release.wait(30)
            return  # the connection closes short: the copy must not commit what it got
        self.wfile.write(body[start:end + 1])

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def web():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Files.files
    _Files.release.set()
    server.shutdown()
    server.server_close()


# helpers -------------------------------------------------------------------------------------------------------
def container_of(s3) -> str:
    name = fresh_name("copy")
    s3.create_bucket(Bucket=name)
    return name


def s3_bytes(s3, bucket: str, key: str) -> tuple[bytes, str]:
    reply = s3.get_object(Bucket=bucket, Key=key)
    return reply["Body"].read(), reply["ETag"].strip('"')


def own_url(blob_service, container: str, name: str) -> str:
    return f"{blob_service.url.rstrip('/')}/{container}/{name}"


def azurite_sas_url(azurite, container: str, name: str, permission: str = "r") -> str:
    sas = generate_blob_sas(azurite.account_name, container, name, account_key=azurite.account_key,
                            permission=BlobSasPermissions.from_string(permission),
                            expiry=datetime.now(timezone.utc) + timedelta(hours=1))
    return f"{azurite.endpoint.rstrip('/')}/{container}/{name}?{sas}"


def assert_copy_source_error(exc: HttpResponseError, status: int) -> None:
    assert exc.status_code == status, exc
    assert exc.error_code == "CannotVerifyCopySource", exc


# sources -------------------------------------------------------------------------------------------------------
def test_put_blob_from_url_from_this_atoll_is_a_server_side_copy(blob_service, s3):
    bucket = container_of(s3)
    data = os.urandom(300_000)
    s3.put_object(Bucket=bucket, Key="dir/src.bin", Body=data, ContentType="application/x-src",
                  Metadata={"origin": "boto3"})
    target = blob_service.get_blob_client(bucket, "dst.bin")
    reply = target.upload_blob_from_url(own_url(blob_service, bucket, "dir/src.bin"))
    md5 = hashlib.md5(data).hexdigest()
    assert reply["etag"].strip('"') == md5
    body, etag = s3_bytes(s3, bucket, "dst.bin")
    assert body == data and etag == md5
    props = target.get_blob_properties()
    assert props.size == len(data)
    assert props.content_settings.content_md5 == hashlib.md5(data).digest()
    assert props.content_settings.content_type == "application/x-src"  # the source's properties, by default
    # the same object through a presigned URL of this Atoll's own S3 endpoint (fetched over loopback)
    presigned = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "dir/src.bin"},
                                          ExpiresIn=600)
    blob_service.get_blob_client(bucket, "via-s3.bin").upload_blob_from_url(presigned)
    assert s3_bytes(s3, bucket, "via-s3.bin") == (data, md5)
    # a source that is not there: CannotVerifyCopySource with the source's 404, and nothing written
    with pytest.raises(HttpResponseError) as caught:
        blob_service.get_blob_client(bucket, "none.bin").upload_blob_from_url(
            own_url(blob_service, bucket, "missing.bin"))
    assert_copy_source_error(caught.value, 404)
    with pytest.raises(s3.exceptions.ClientError):
        s3.head_object(Bucket=bucket, Key="none.bin")
    # If-None-Match: * on an existing destination
    with pytest.raises(ResourceExistsError) as exists:
        target.upload_blob_from_url(own_url(blob_service, bucket, "dir/src.bin"), overwrite=False)
    assert exists.value.error_code == "BlobAlreadyExists"


def test_a_sas_for_the_destination_does_not_open_other_containers(blob_server, s3):
    """A caller holding only a SAS for the destination must show the source's own authorization (a SAS in the
    source URL): the destination's SAS does not let it copy out of another container."""
    source_bucket, dest_bucket = container_of(s3), container_of(s3)
    s3.put_object(Bucket=source_bucket, Key="secret.bin", Body=b"not yours")
    write_only = generate_container_sas(blob_server.account_name, dest_bucket, account_key=blob_server.account_key,
                                        permission=ContainerSasPermissions(write=True, create=True),
                                        expiry=datetime.now(timezone.utc) + timedelta(hours=1))
    dest = BlobClient.from_blob_url(f"{blob_server.blob_endpoint}/{dest_bucket}/copied.bin?{write_only}")
    source = f"{blob_server.blob_endpoint}/{source_bucket}/secret.bin"
    with pytest.raises(HttpResponseError) as caught:
        dest.upload_blob_from_url(source)
    # fetched without authorization, a private blob answers 404 (as Azure hides what an anonymous caller may not see)
    assert_copy_source_error(caught.value, 404)
    with pytest.raises(s3.exceptions.ClientError):
        s3.head_object(Bucket=dest_bucket, Key="copied.bin")
    read_sas = generate_blob_sas(blob_server.account_name, source_bucket, "secret.bin",
                                 account_key=blob_server.account_key, permission=BlobSasPermissions(read=True),
                                 expiry=datetime.now(timezone.utc) + timedelta(hours=1))
    dest.upload_blob_from_url(f"{source}?{read_sas}")
    assert s3_bytes(s3, dest_bucket, "copied.bin")[0] == b"not yours"


def test_put_blob_from_a_moto_presigned_url(blob_service, s3, moto_s3, s3_cold_bucket):
    data = os.urandom(700_000)
    source = moto_s3.client()
    source.put_object(Bucket=s3_cold_bucket, Key="obj", Body=data, ContentType="image/x-moto")
    url = source.generate_presigned_url("get_object", Params={"Bucket": s3_cold_bucket, "Key": "obj"},
                                        ExpiresIn=600)
    bucket = container_of(s3)
    target = blob_service.get_blob_client(bucket, "from-moto")
    target.upload_blob_from_url(url, content_settings=ContentSettings(content_type="text/x-chosen"))
    body, etag = s3_bytes(s3, bucket, "from-moto")
    assert body == data and etag == hashlib.md5(data).hexdigest()
    assert s3.head_object(Bucket=bucket, Key="from-moto")["ContentType"] == "text/x-chosen"
    # a presigned URL of a key that is not there: the source's 404 comes back as CannotVerifyCopySource
    missing = source.generate_presigned_url("get_object", Params={"Bucket": s3_cold_bucket, "Key": "gone"},
                                            ExpiresIn=600)
    with pytest.raises(HttpResponseError) as caught:
        blob_service.get_blob_client(bucket, "missing").upload_blob_from_url(missing)
    assert_copy_source_error(caught.value, 404)
    assert "Signature" not in str(caught.value.message)  # the source URL's secrets are never echoed


@pytest.mark.parametrize("target", ["atoll", "azurite"])
def test_sync_copy_from_an_azurite_sas_url(target, blob_service, s3, azurite, azure_container):
    data = os.urandom(200_000)
    azurite.service_client().get_blob_client(azure_container, "src").upload_blob(data, metadata={"k": "v"})
    url = azurite_sas_url(azurite, azure_container, "src")
    if target == "atoll":
        service, bucket = blob_service, container_of(s3)
    else:
        service, bucket = azurite.service_client(), azure_container
    dest = service.get_blob_client(bucket, "synced")
    reply = dest.start_copy_from_url(url, requires_sync=True)
    assert reply["copy_status"] == "success"
    assert dest.download_blob().readall() == data
    props = dest.get_blob_properties()
    assert props.copy.status == "success" and props.copy.id == reply["copy_id"]
    assert props.metadata == {"k": "v"}  # Copy Blob From URL keeps the source's metadata unless given some
    assert props.copy.source.split("?")[0] == url.split("?")[0]
    if target == "azurite":
        return  # Azurite does not check a source SAS for a copy within itself; a remote source does (below)
    # an expired SAS: the source refuses with 403
    expired = generate_blob_sas(azurite.account_name, azure_container, "src", account_key=azurite.account_key,
                                permission=BlobSasPermissions(read=True),
                                expiry=datetime.now(timezone.utc) - timedelta(hours=1))
    with pytest.raises(HttpResponseError) as caught:
        service.get_blob_client(bucket, "refused").start_copy_from_url(
            f"{url.split('?')[0]}?{expired}", requires_sync=True)
    assert_copy_source_error(caught.value, 403)


def test_put_block_from_url_with_source_ranges(blob_service, s3, web):
    base, files = web
    data = os.urandom(3 * 100_000 + 17)
    files["/ranged.bin"] = data
    bucket = container_of(s3)
    dest = blob_service.get_blob_client(bucket, "assembled")
    cut = [0, 100_000, 250_000, len(data)]
    ids = []
    for at, (start, end) in enumerate(zip(cut, cut[1:])):
        block_id = base64.b64encode(f"block-{at:03d}".encode()).decode()
        dest.stage_block_from_url(block_id, f"{base}/ranged.bin", source_offset=start, source_length=end - start)
        ids.append(block_id)
    # and one block from this Atoll itself (a server-side range read)
    s3.put_object(Bucket=bucket, Key="local-part", Body=b"0123456789" * 1000)
    local_id = base64.b64encode(b"block-own").decode()  # ids of one blob have one length
    dest.stage_block_from_url(local_id, own_url(blob_service, bucket, "local-part"), source_offset=10,
                              source_length=20)
    dest.commit_block_list([BlobBlock(i) for i in ids] + [BlobBlock(local_id)])
    body, _ = s3_bytes(s3, bucket, "assembled")
    assert body == data + (b"0123456789" * 3)[:20]
    with pytest.raises(HttpResponseError) as caught:
        dest.stage_block_from_url(base64.b64encode(b"block-404").decode(), f"{base}/nope.bin",
                                  source_offset=0, source_length=10)
    assert_copy_source_error(caught.value, 404)


def test_async_copy_from_http_completes_and_reports_its_state(blob_service, s3, web):
    base, files = web
    data = os.urandom(1_500_000)
    files["/async.bin"] = data
    bucket = container_of(s3)
    dest = blob_service.get_blob_client(bucket, "async")
    reply = dest.start_copy_from_url(f"{base}/async.bin?token=secret", metadata={"set": "by-copy"})
    assert reply["copy_status"] in ("pending", "success")
    props = wait_until(lambda: (p := dest.get_blob_properties()).copy.status == "success" and p, 20, "copy")
    assert props.copy.id == reply["copy_id"]
    assert props.copy.source == f"{base}/async.bin"  # stored without its query: no signature is kept
    assert props.copy.progress == f"{len(data)}/{len(data)}"
    assert props.copy.completion_time is not None
    assert props.metadata == {"set": "by-copy"}
    body, etag = s3_bytes(s3, bucket, "async")
    assert body == data and etag == hashlib.md5(data).hexdigest()
    listed = {b.name: b for b in blob_service.get_container_client(bucket).list_blobs(include=["copy"])}
    assert (listed["async"].copy.id, listed["async"].copy.status, listed["async"].copy.source) == \
        (reply["copy_id"], "success", f"{base}/async.bin")
    assert listed["async"].copy.progress == f"{len(data)}/{len(data)}"
    # aborting a finished copy
    with pytest.raises(HttpResponseError) as caught:
        dest.abort_copy(reply["copy_id"])
    assert caught.value.status_code == 409 and caught.value.error_code == "NoPendingCopyOperation"
    # an overwrite drops the copy properties
    dest.upload_blob(b"new", overwrite=True)
    assert dest.get_blob_properties().copy.status is None


def test_abort_a_pending_copy_leaves_no_partial_blob(blob_service, s3, web):
    base, files = web
    data = os.urandom(1 << 20)
    files["/held.bin"] = data
    _Files.release.clear()
    bucket = container_of(s3)
    dest = blob_service.get_blob_client(bucket, "held")
    try:
        reply = dest.start_copy_from_url(f"{base}/slow/held.bin")
        assert reply["copy_status"] == "pending"
        props = wait_until(lambda: (p := dest.get_blob_properties()).copy.progress not in (None, f"0/{len(data)}")
                           and p, 10, "copy progress")
        assert props.copy.status == "pending" and props.size == 0  # the destination exists, empty, meanwhile
        with pytest.raises(HttpResponseError) as caught:
            dest.abort_copy("not-" + reply["copy_id"])
        assert caught.value.error_code == "CopyIdMismatch"
        dest.abort_copy(reply["copy_id"])
        props = dest.get_blob_properties()
        assert props.copy.status == "aborted" and props.size == 0
    finally:
        _Files.release.set()
    time.sleep(0.5)
    assert dest.get_blob_properties().copy.status == "aborted"
    assert s3_bytes(s3, bucket, "held")[0] == b""
    with pytest.raises(HttpResponseError) as again:
        dest.abort_copy(reply["copy_id"])
    assert again.value.error_code == "NoPendingCopyOperation"


def test_a_source_that_breaks_off_fails_the_copy(blob_service, s3, web):
    base, files = web
    files["/short.bin"] = os.urandom(1 << 20)
    _Files.release.set()  # the slow path answers 64 KiB of the announced 1 MiB, then closes
    bucket = container_of(s3)
    dest = blob_service.get_blob_client(bucket, "short")
    dest.start_copy_from_url(f"{base}/slow/short.bin")
    props = wait_until(lambda: (p := dest.get_blob_properties()).copy.status == "failed" and p, 20, "failure")
    assert props.size == 0 and props.copy.status_description
    with pytest.raises(HttpResponseError) as caught:
        blob_service.get_blob_client(bucket, "short-sync").start_copy_from_url(f"{base}/slow/short.bin",
                                                                                requires_sync=True)
    assert caught.value.error_code == "CannotVerifyCopySource"
    with pytest.raises(s3.exceptions.ClientError):
        s3.head_object(Bucket=bucket, Key="short-sync")


def test_copy_from_the_linked_cold_store_ends_warm(blob_server, blob_service, s3, azurite, request):
    site = ColdSite("azure", azurite, hint="fromurl")
    request.addfinalizer(site.close)
    cold = site.cold()
    data = pattern(400_000, "cold-src")
    cold.put("ckpt/model.bin", data, content_type="application/x-cold")
    bucket = link_bucket(blob_server, cold, mode="writeback")
    # The URL a client has for the cold object: through the same endpoint the link uses.
    sas = generate_blob_sas(azurite.account_name, cold.container, f"{cold.prefix}/ckpt/model.bin",
                            account_key=azurite.account_key, permission=BlobSasPermissions(read=True),
                            expiry=datetime.now(timezone.utc) + timedelta(hours=1))
    url = f"{cold.proxy.endpoint('/' + azurite.account_name)}/{cold.container}/{cold.prefix}/ckpt/model.bin?{sas}"
    same = blob_service.get_blob_client(bucket, "ckpt/model.bin")
    same.start_copy_from_url(url, requires_sync=True)
    assert meta_query(blob_server, "SELECT residency FROM objects WHERE bucket = ? AND key = ?",
                      (bucket, "ckpt/model.bin")) == [(2,)]
    other = blob_service.get_blob_client(bucket, "ckpt/copy.bin")
    other.upload_blob_from_url(url)
    gets = cold.gets("ckpt/model.bin")
    assert other.download_blob().readall() == data
    assert same.download_blob().readall() == data
    assert cold.gets("ckpt/model.bin") == gets  # both served warm: no cold GET
    assert meta_query(blob_server, "SELECT residency FROM objects WHERE bucket = ? AND key = ?",
                      (bucket, "ckpt/copy.bin")) == [(2,)]
    # one ETag through both endpoints (a copy of a cold object keeps the cold store's ETag, as tiering does)
    assert other.get_blob_properties().etag.strip('"') == s3.head_object(Bucket=bucket, Key="ckpt/copy.bin")[
        "ETag"].strip('"')


def test_a_crash_mid_copy_leaves_a_failed_copy_not_a_partial_blob(tmp_path, web):
    """SIGKILL while an async copy streams: after the restart the copy reports failed and the destination holds
    no bytes of the source (its empty placeholder), never a torn blob served as whole."""
    base, files = web
    files["/crash.bin"] = os.urandom(1 << 20)
    _Files.release.clear()
    server = AtollProcess(data_dir=str(tmp_path / "atoll")).start()
    wait_for_port(server.blob_port, 30, server.proc)
    try:
        service = blob_service_for(server)
        s3 = server.client()
        bucket = container_of(s3)
        dest = service.get_blob_client(bucket, "crashed")
        reply = dest.start_copy_from_url(f"{base}/slow/crash.bin")
        wait_until(lambda: (dest.get_blob_properties().copy.progress or "0/").startswith("65536/"), 10,
                   "copy progress")
        server.kill()
        _Files.release.set()
        server.start()
        wait_for_port(server.blob_port, 30, server.proc)
        props = dest.get_blob_properties()
        assert (props.copy.id, props.copy.status, props.size) == (reply["copy_id"], "failed", 0)
        assert "interrupted" in props.copy.status_description
        assert s3.get_object(Bucket=bucket, Key="crashed")["Body"].read() == b""
    finally:
        _Files.release.set()
        server.stop()
