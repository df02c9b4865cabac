"""The Blob endpoint's containers, blobs, listings, conditions and errors through real azure-storage-blob clients
(sync and aio, path and host style), and the same namespace through boto3. Scenarios Azurite supports run
against it too (``target``), so a difference in behaviour shows as a failure of one parameter only."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import http.client
import os
from datetime import datetime, timedelta, timezone

import pytest
from azure.core import MatchConditions
from azure.core.exceptions import (ClientAuthenticationError, HttpResponseError, ResourceExistsError,
                                   ResourceModifiedError, ResourceNotFoundError)
from azure.storage.blob import BlobClient, BlobServiceClient, ContainerClient, ContentSettings

from coldstores import fresh_name
from blobutil import aio_blob_service_for, blob_service_for
from harness import AtollProcess

TARGETS = ("atoll", "azurite")
CONTENT = ContentSettings(content_type="text/plain; charset=utf-8", content_encoding="identity",
                          content_language="fr-FR", content_disposition='attachment; filename="a.txt"',
                          cache_control="max-age=60")


@pytest.fixture(params=TARGETS)
def service(request) -> BlobServiceClient:
    if request.param == "atoll":
        return request.getfixturevalue("blob_service")
    return request.getfixturevalue("azurite").service_client()


@pytest.fixture
def container(service, request) -> ContainerClient:
    client = service.create_container(fresh_name(request.node.name))
    yield client
    try:
        client.delete_container()
    except ResourceNotFoundError:
        pass


def error_code(exc: HttpResponseError) -> str:
    return exc.error_code or (exc.response.headers.get("x-ms-error-code") if exc.response is not None else "")


# containers ------------------------------------------------------------------------------------------------
# single_node: asserts that a container change answers at once on the next request, which a cluster gives only
# within the 1 s bucket cache of another node (docs/NOTES.md; tests/cluster/test_cluster_consistency.py)
@pytest.mark.single_node
def test_container_lifecycle_and_metadata(service):
    name = fresh_name("lifecycle")
    client = service.create_container(name, metadata={"team": "ml", "stage": "raw"})
    with pytest.raises(ResourceExistsError) as exc:
        service.create_container(name)
    assert error_code(exc.value) == "ContainerAlreadyExists"
    assert exc.value.status_code == 409
    props = client.get_container_properties()
    assert props.metadata == {"team": "ml", "stage": "raw"}
    assert props.lease.status == "unlocked" and props.lease.state == "available"
    assert props.etag and props.last_modified
    client.set_container_metadata({"stage": "clean"})
    after = client.get_container_properties()
    assert after.metadata == {"stage": "clean"}
    client.delete_container()
    with pytest.raises(ResourceNotFoundError) as exc:
        client.get_container_properties()
    assert error_code(exc.value) == "ContainerNotFound"


# single_node: asserts that a container change answers at once on the next request, which a cluster gives only
# within the 1 s bucket cache of another node (docs/NOTES.md; tests/cluster/test_cluster_consistency.py)
@pytest.mark.single_node
def test_delete_container_deletes_its_blobs(service):
    client = service.create_container(fresh_name("full"))
    for i in range(3):
        client.upload_blob(f"b{i}", b"x")
    client.delete_container()
    with pytest.raises(ResourceNotFoundError):
        client.get_container_properties()


def test_list_containers_prefix_paging_and_metadata(service):
    stem = fresh_name("lc")
    names = [f"{stem}-{i}" for i in range(5)]
    for i, name in enumerate(names):
        service.create_container(name, metadata={"n": str(i)})
    try:
        pages = service.list_containers(name_starts_with=stem, include_metadata=True, results_per_page=2).by_page()
        seen = []
        page_count = 0
        for page in pages:
            page_count += 1
            seen.extend((c.name, c.metadata) for c in page)
        assert [n for n, _ in seen] == names
        assert [m for _, m in seen] == [{"n": str(i)} for i in range(5)]
        assert page_count == 3
    finally:
        for name in names:
            service.delete_container(name)


def test_invalid_container_names_are_refused(service):
    for bad in ("UPPER", "a", "double--hyphen", "-leading"):
        with pytest.raises(HttpResponseError) as exc:
            service.create_container(bad)
        assert exc.value.status_code == 400, bad
        assert error_code(exc.value) in ("InvalidResourceName", "OutOfRangeInput"), bad


# single_node: asserts that a container change answers at once on the next request, which a cluster gives only
# within the 1 s bucket cache of another node (docs/NOTES.md; tests/cluster/test_cluster_consistency.py)
@pytest.mark.single_node
def test_container_acl_public_access_and_anonymous_reads(service, request):
    client = service.create_container(fresh_name("public"))
    try:
        client.upload_blob("open.txt", b"for everyone")
        anonymous_blob = BlobClient.from_blob_url(f"{client.url}/open.txt")
        anonymous_container = ContainerClient.from_container_url(client.url)
        with pytest.raises(HttpResponseError) as exc:  # private: nothing for anonymous callers
            anonymous_blob.download_blob().readall()
        assert exc.value.status_code in (401, 403, 404)

        client.set_container_access_policy(signed_identifiers={}, public_access="blob")
        assert client.get_container_access_policy()["public_access"] == "blob"
        assert client.get_container_properties().public_access == "blob"
        assert anonymous_blob.download_blob().readall() == b"for everyone"
        assert anonymous_blob.get_blob_properties().size == 12
        with pytest.raises(HttpResponseError):  # level "blob": no anonymous listing
            list(anonymous_container.list_blobs())
        with pytest.raises(HttpResponseError):  # and never an anonymous write
            anonymous_container.upload_blob("evil.txt", b"x")

        client.set_container_access_policy(signed_identifiers={}, public_access="container")
        assert [b.name for b in anonymous_container.list_blobs()] == ["open.txt"]

        client.set_container_access_policy(signed_identifiers={})  # private again
        assert client.get_container_access_policy()["public_access"] is None
        if request.node.callspec.params["service"] == "atoll":
            import time
            time.sleep(1.1)  # other workers' property cache (1 s); one worker here, but keep the test honest
        with pytest.raises(HttpResponseError):
            anonymous_blob.download_blob().readall()
        assert [b.name for b in client.list_blobs()] == ["open.txt"]
    finally:
        client.delete_container()


def test_stored_access_policies_round_trip(container):
    from azure.storage.blob import AccessPolicy, ContainerSasPermissions

    start = datetime(2030, 1, 1, tzinfo=timezone.utc)
    policy = AccessPolicy(permission=ContainerSasPermissions(read=True, list=True), start=start,
                          expiry=start + timedelta(days=1))
    container.set_container_access_policy(signed_identifiers={"readers": policy})
    got = container.get_container_access_policy()
    assert [i.id for i in got["signed_identifiers"]] == ["readers"]
    assert got["signed_identifiers"][0].access_policy.permission == "rl"


# blobs -----------------------------------------------------------------------------------------------------
def test_put_get_properties_metadata_delete(container):
    data = os.urandom(100_000)
    blob = container.get_blob_client("dir/data.bin")
    blob.upload_blob(data, content_settings=CONTENT, metadata={"origin": "test", "epoch": "3"})
    assert blob.download_blob().readall() == data
    props = blob.get_blob_properties()
    assert props.size == len(data)
    assert props.blob_type == "BlockBlob"
    assert props.metadata == {"origin": "test", "epoch": "3"}
    assert props.content_settings.content_md5 == bytearray(hashlib.md5(data).digest())
    for field in ("content_type", "content_encoding", "content_language", "content_disposition", "cache_control"):
        assert getattr(props.content_settings, field) == getattr(CONTENT, field), field
    assert props.creation_time is not None and props.last_modified is not None

    blob.set_blob_metadata({"origin": "changed"})
    assert blob.get_blob_properties().metadata == {"origin": "changed"}
    blob.set_http_headers(ContentSettings(content_type="application/json"))
    props = blob.get_blob_properties()
    assert props.content_settings.content_type == "application/json"
    assert props.content_settings.cache_control is None  # Set Blob Properties replaces them all
    assert props.metadata == {"origin": "changed"}
    assert blob.download_blob().readall() == data

    blob.delete_blob()
    with pytest.raises(ResourceNotFoundError) as exc:
        blob.get_blob_properties()
    assert exc.value.status_code == 404
    with pytest.raises(ResourceNotFoundError) as exc:
        blob.download_blob()
    assert error_code(exc.value) == "BlobNotFound"
    with pytest.raises(ResourceNotFoundError) as exc:
        blob.delete_blob()
    assert error_code(exc.value) == "BlobNotFound"


def test_ranges_and_range_md5(container):
    data = bytes(range(256)) * 64  # 16 KiB
    blob = container.get_blob_client("ranged.bin")
    blob.upload_blob(data)
    assert blob.download_blob(offset=100, length=1000).readall() == data[100:1100]
    assert blob.download_blob(offset=16000).readall() == data[16000:]
    # validate_content asks for x-ms-range-get-content-md5 and checks the Content-MD5 of each range.
    assert blob.download_blob(offset=5, length=4000, validate_content=True).readall() == data[5:4005]
    with pytest.raises(HttpResponseError) as exc:
        blob.download_blob(offset=len(data) + 10, length=5)
    assert exc.value.status_code == 416
    assert error_code(exc.value) == "InvalidRange"
    empty = container.get_blob_client("empty.bin")
    empty.upload_blob(b"")
    assert empty.download_blob().readall() == b""
    assert empty.get_blob_properties().size == 0


def test_large_blob_uses_chunked_download(container, service):
    data = os.urandom(9 << 20)
    chunked = BlobServiceClient(service.url, credential=service.credential, max_single_get_size=1 << 20,
                                max_chunk_get_size=1 << 20)
    blob = chunked.get_blob_client(container.container_name, "large.bin")
    blob.upload_blob(data)
    downloaded = blob.download_blob(max_concurrency=4)
    assert downloaded.size == len(data)
    assert hashlib.sha256(downloaded.readall()).digest() == hashlib.sha256(data).digest()


def test_content_md5_is_checked(container, service):
    conn_blob = container.get_blob_client("md5.bin")
    conn_blob.upload_blob(b"right", validate_content=True)  # sends a correct Content-MD5
    host, port, path = _raw_target(service, container.container_name, "md5-bad.bin")
    status, headers, _ = _signed_request(service, "PUT", path, body=b"payload", headers={
        "x-ms-blob-type": "BlockBlob", "Content-MD5": base64.b64encode(hashlib.md5(b"other").digest()).decode()})
    assert status == 400
    assert headers.get("x-ms-error-code") == "Md5Mismatch"
    with pytest.raises(ResourceNotFoundError):
        container.get_blob_client("md5-bad.bin").get_blob_properties()


def test_crc64_is_checked(blob_service):
    from atoll.core import checksums as cks

    client = blob_service.create_container(fresh_name("crc"))
    hasher = cks.new_hasher("crc64nvme")
    hasher.update(b"payload")
    right = cks.azure_crc64(hasher.digest())
    path = f"/{blob_service.account_name}/{client.container_name}/c.bin"
    status, headers, _ = _signed_request(blob_service, "PUT", path, body=b"payload", headers={
        "x-ms-blob-type": "BlockBlob", "x-ms-content-crc64": base64.b64encode(b"\0" * 8).decode()})
    assert (status, headers.get("x-ms-error-code")) == (400, "Crc64Mismatch")
    status, headers, _ = _signed_request(blob_service, "PUT", path, body=b"payload", headers={
        "x-ms-blob-type": "BlockBlob", "x-ms-content-crc64": right})
    assert status == 201 and headers["x-ms-content-crc64"] == right
    client.delete_container()


def test_conditional_requests(container):
    blob = container.get_blob_client("cond.txt")
    first = blob.upload_blob(b"v1")
    with pytest.raises(ResourceExistsError) as exc:  # overwrite=False sends If-None-Match: *
        blob.upload_blob(b"v2")
    assert error_code(exc.value) == "BlobAlreadyExists"
    assert exc.value.status_code == 409
    etag = first["etag"]
    with pytest.raises(ResourceModifiedError) as exc:
        blob.download_blob(etag='"0000"', match_condition=MatchConditions.IfNotModified)
    assert error_code(exc.value) == "ConditionNotMet" and exc.value.status_code == 412
    assert blob.download_blob(etag=etag, match_condition=MatchConditions.IfNotModified).readall() == b"v1"
    with pytest.raises(HttpResponseError) as exc:
        blob.get_blob_properties(etag=etag, match_condition=MatchConditions.IfModified)
    assert exc.value.status_code == 304
    future = datetime.now(timezone.utc) + timedelta(days=1)
    past = datetime.now(timezone.utc) - timedelta(days=1)
    with pytest.raises(HttpResponseError) as exc:
        blob.download_blob(if_modified_since=future).readall()
    assert exc.value.status_code == 304
    with pytest.raises(ResourceModifiedError):
        blob.download_blob(if_unmodified_since=past)
    # Conditional writes: a stale ETag refuses, the current one overwrites.
    with pytest.raises(ResourceModifiedError):
        blob.upload_blob(b"v3", overwrite=True, etag='"0000"', match_condition=MatchConditions.IfNotModified)
    second = blob.upload_blob(b"v3", overwrite=True, etag=etag, match_condition=MatchConditions.IfNotModified)
    assert blob.download_blob().readall() == b"v3"
    with pytest.raises(ResourceModifiedError):
        blob.set_blob_metadata({"a": "b"}, etag=etag, match_condition=MatchConditions.IfNotModified)
    with pytest.raises(ResourceModifiedError):
        blob.delete_blob(etag=etag, match_condition=MatchConditions.IfNotModified)
    with pytest.raises(ResourceModifiedError):
        blob.upload_blob(b"v4", overwrite=True, if_unmodified_since=past)
    blob.delete_blob(etag=second["etag"], match_condition=MatchConditions.IfNotModified)
    with pytest.raises(ResourceNotFoundError):
        blob.get_blob_properties()


# listing ---------------------------------------------------------------------------------------------------
NAMES = ["a.txt", "b/1.txt", "b/2.txt", "b/c/3.txt", "d/4.txt", "e.txt", "f g+h.txt"]


def test_list_blobs_flat_and_hierarchical_with_paging(container):
    for name in NAMES:
        container.upload_blob(name, name.encode(), metadata={"n": name[0]})
    flat = []
    pages = 0
    for page in container.list_blobs(include=["metadata"], results_per_page=2).by_page():
        pages += 1
        flat.extend(page)
    assert [b.name for b in flat] == NAMES
    assert pages == 4
    assert all(b.metadata == {"n": b.name[0]} for b in flat)
    assert all(b.size == len(b.name) and b.blob_type == "BlockBlob" for b in flat)
    assert flat[0].content_settings.content_md5 == bytearray(hashlib.md5(b"a.txt").digest())

    top = []
    for page in container.walk_blobs(delimiter="/", results_per_page=2).by_page():
        top.append(sorted(item.name for item in page))  # the SDK yields a page's prefixes before its blobs
    assert top == [["a.txt", "b/"], ["d/", "e.txt"], ["f g+h.txt"]]
    under_b = sorted(item.name for item in container.walk_blobs(name_starts_with="b/", delimiter="/"))
    assert under_b == ["b/1.txt", "b/2.txt", "b/c/"]
    assert [b.name for b in container.list_blobs(name_starts_with="b/c")] == ["b/c/3.txt"]


def test_listing_agrees_with_s3(blob_service, s3):
    client = blob_service.create_container(fresh_name("agree"))
    try:
        for name in NAMES:
            s3.put_object(Bucket=client.container_name, Key=name, Body=b"x")
        s3_keys = [o["Key"] for o in s3.list_objects_v2(Bucket=client.container_name)["Contents"]]
        assert [b.name for b in client.list_blobs(results_per_page=3)] == s3_keys
    finally:
        client.delete_container()


# cross-protocol --------------------------------------------------------------------------------------------
def test_s3_writes_blob_reads(blob_service, s3):
    name = fresh_name("s3-to-blob")
    s3.create_bucket(Bucket=name)
    data = os.urandom(50_000)
    s3.put_object(Bucket=name, Key="k/obj.bin", Body=data, ContentType="image/png", ContentEncoding="identity",
                  ContentDisposition="inline", CacheControl="no-cache", ContentLanguage="en",
                  Metadata={"source": "boto3"})
    blob = blob_service.get_blob_client(name, "k/obj.bin")
    props = blob.get_blob_properties()
    assert props.size == len(data)
    assert props.metadata == {"source": "boto3"}
    assert props.content_settings.content_md5 == bytearray(hashlib.md5(data).digest())
    assert props.etag == s3.head_object(Bucket=name, Key="k/obj.bin")["ETag"]
    settings = props.content_settings
    assert (settings.content_type, settings.content_encoding, settings.content_disposition, settings.cache_control,
            settings.content_language) == ("image/png", "identity", "inline", "no-cache", "en")
    assert blob.download_blob().readall() == data

    # A multipart object: readable and listed through Blob, with no Content-MD5 (its ETag is no MD5).
    upload = s3.create_multipart_upload(Bucket=name, Key="mp.bin")
    parts = [os.urandom(5 << 20), os.urandom(1000)]
    etags = [s3.upload_part(Bucket=name, Key="mp.bin", UploadId=upload["UploadId"], PartNumber=i + 1,
                            Body=part)["ETag"] for i, part in enumerate(parts)]
    s3.complete_multipart_upload(Bucket=name, Key="mp.bin", UploadId=upload["UploadId"], MultipartUpload={
        "Parts": [{"PartNumber": i + 1, "ETag": etag} for i, etag in enumerate(etags)]})
    mp = blob_service.get_blob_client(name, "mp.bin")
    assert mp.download_blob().readall() == b"".join(parts)
    assert mp.get_blob_properties().content_settings.content_md5 is None
    assert [b.name for b in blob_service.get_container_client(name).list_blobs()] == ["k/obj.bin", "mp.bin"]
    blob_service.delete_container(name)


def test_blob_writes_s3_reads(blob_service, s3):
    client = blob_service.create_container(fresh_name("blob-to-s3"))
    data = os.urandom(70_000)
    client.upload_blob("w.bin", data, content_settings=CONTENT, metadata={"writer": "azure"})
    got = s3.get_object(Bucket=client.container_name, Key="w.bin")
    assert got["Body"].read() == data
    assert got["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'
    assert got["Metadata"] == {"writer": "azure"}
    assert (got["ContentType"], got["ContentEncoding"], got["ContentLanguage"], got["ContentDisposition"],
            got["CacheControl"]) == (CONTENT.content_type, CONTENT.content_encoding, CONTENT.content_language,
                                     CONTENT.content_disposition, CONTENT.cache_control)
    assert [b["Name"] for b in s3.list_buckets()["Buckets"] if b["Name"] == client.container_name]
    client.delete_container()


# clients and URL styles -------------------------------------------------------------------------------------
def test_aio_client(blob_server):
    async def run():
        async with aio_blob_service_for(blob_server) as service:
            container = await service.create_container(fresh_name("aio"))
            data = os.urandom(300_000)
            await container.upload_blob("x/aio.bin", data, metadata={"a": "1"})
            downloader = await container.download_blob("x/aio.bin")
            assert await downloader.readall() == data
            names = [b.name async for b in container.list_blobs(include=["metadata"])]
            assert names == ["x/aio.bin"]
            props = await container.get_blob_client("x/aio.bin").get_blob_properties()
            assert props.metadata == {"a": "1"}
            await container.delete_container()

    asyncio.run(run())


def test_host_style_urls(new_server):
    server = new_server(extra_env={"ATOLL_BLOB_DOMAINS": "blob.localhost"})
    # *.localhost does not resolve here: the SDK goes through Atoll as an HTTP proxy, so the request line carries
    # the absolute URL and the Host header names ACCOUNT.blob.localhost, as a DNS name would.
    account_url = f"http://{server.account_name}.blob.localhost:{server.blob_port}"
    proxies = {"http": f"http://127.0.0.1:{server.blob_port}"}
    service = BlobServiceClient(account_url, credential={"account_name": server.account_name,
                                                         "account_key": server.account_key}, proxies=proxies)
    container = service.create_container("hosted")
    container.upload_blob("p/q.txt", b"host style")
    assert container.download_blob("p/q.txt").readall() == b"host style"
    assert [c.name for c in service.list_containers()] == ["hosted"]
    assert [b.name for b in container.list_blobs()] == ["p/q.txt"]
    # The same data path style.
    assert blob_service_for(server).get_blob_client("hosted", "p/q.txt").download_blob().readall() == b"host style"
    assert server.client().get_object(Bucket="hosted", Key="p/q.txt")["Body"].read() == b"host style"


# errors ----------------------------------------------------------------------------------------------------
def test_wrong_key_is_refused(blob_server, service):
    account = service.account_name
    wrong = base64.b64encode(os.urandom(64)).decode()
    bad = BlobServiceClient(service.url, credential={"account_name": account, "account_key": wrong})
    name = fresh_name("nope")
    with pytest.raises(HttpResponseError) as exc:  # Atoll: AuthenticationFailed, as Azure; Azurite 3.x differs
        bad.create_container(name)
    assert exc.value.status_code == 403
    assert error_code(exc.value) in ("AuthenticationFailed", "AuthorizationFailure")
    with pytest.raises(ResourceNotFoundError):  # and nothing changed
        service.get_container_client(name).get_container_properties()


def test_unknown_account_is_refused(blob_server):
    other = BlobServiceClient(f"http://127.0.0.1:{blob_server.blob_port}/nosuchaccount",
                              credential={"account_name": "nosuchaccount",
                                          "account_key": base64.b64encode(os.urandom(64)).decode()})
    with pytest.raises(ClientAuthenticationError) as exc:
        list(other.list_containers())
    assert exc.value.status_code == 403


def _raw_target(service: BlobServiceClient, container: str, blob: str) -> tuple[str, int, str]:
    from urllib.parse import quote, urlparse

    url = urlparse(service.url)
    return url.hostname, url.port, f"{url.path.rstrip('/')}/{container}/{quote(blob)}"


def _signed_request(service: BlobServiceClient, method: str, path: str, *, body: bytes = b"", query: str = "",
                    headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One Shared Key request with exactly these headers (what the SDK would not send)."""
    from azure.storage.blob._shared.authentication import SharedKeyCredentialPolicy
    from email.utils import formatdate
    from urllib.parse import urlparse

    url = urlparse(service.url)
    sent = {"x-ms-version": "2025-11-05", "x-ms-date": formatdate(usegmt=True), **(headers or {})}
    if body or method == "PUT":
        sent["Content-Length"] = str(len(body))
    key = service.credential.account_key
    account = service.account_name

    class Req:  # the shape SharedKeyCredentialPolicy signs
        pass

    import hmac
    from azure.storage.blob._shared.authentication import _storage_header_sort

    def canonical_headers() -> str:
        pairs = [(k.lower(), v) for k, v in sent.items() if k.lower().startswith("x-ms-")]
        return "".join(f"{k}:{v}\n" for k, v in _storage_header_sort(pairs))

    lower = {k.lower(): v for k, v in sent.items()}
    standard = ["content-encoding", "content-language", "content-length", "content-md5", "content-type", "date",
                "if-modified-since", "if-match", "if-none-match", "if-unmodified-since", "range"]
    values = [lower.get(h, "") for h in standard]
    if values[2] == "0":
        values[2] = ""
    resource = f"/{account}{path}"
    if query:
        from urllib.parse import parse_qsl
        for name, value in sorted(parse_qsl(query, keep_blank_values=True)):
            resource += f"\n{name.lower()}:{value}"
    to_sign = method + "\n" + "".join(v + "\n" for v in values) + canonical_headers() + resource
    signature = base64.b64encode(hmac.new(base64.b64decode(key), to_sign.encode(), hashlib.sha256).digest()).decode()
    sent["Authorization"] = f"SharedKey {account}:{signature}"
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        conn.request(method, path + (f"?{query}" if query else ""), body=body or None, headers=sent)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def test_client_mistakes_are_4xx_never_5xx(blob_service):
    client = blob_service.create_container(fresh_name("mistakes"))
    client.upload_blob("b.bin", b"0123456789")
    name = client.container_name
    account_path = f"/{blob_service.account_name}"
    cases = [
        ("PUT", f"{account_path}/{name}/nobt.bin", "", {}, b"x"),  # no x-ms-blob-type
        ("PUT", f"{account_path}/{name}/ab.bin", "", {"x-ms-blob-type": "AppendBlob"}, b""),
        ("GET", f"{account_path}/{name}/b.bin", "", {"x-ms-range": "bytes=oops"}, b""),
        ("GET", f"{account_path}/{name}/b.bin", "", {"x-ms-version": "yesterday"}, b""),
        ("GET", f"{account_path}/{name}/b.bin", "comp=nonsense", {}, b""),
        ("GET", f"{account_path}/{name}", "", {}, b""),  # no restype
        ("GET", f"{account_path}/{name}", "restype=container&comp=list&maxresults=0", {}, b""),
        ("GET", f"{account_path}/{name}", "restype=container&comp=list&marker=%25%25", {}, b""),
        ("GET", f"{account_path}/{name}", "restype=container&comp=list&include=everything", {}, b""),
        ("PUT", f"{account_path}/{name}", "restype=container&comp=metadata", {"x-ms-meta-bad-name": "v"}, b""),
        ("PUT", f"{account_path}/{name}", "restype=container&comp=acl", {"x-ms-blob-public-access": "world"}, b""),
        ("PUT", f"{account_path}/{name}", "restype=container&comp=acl", {}, b"<not-xml"),
        ("GET", f"{account_path}/{name}/b.bin", "", {"x-ms-range": "bytes=0-9999999",
                                                      "x-ms-range-get-content-md5": "true"}, b""),
        ("PATCH", f"{account_path}/{name}/b.bin", "", {}, b""),
        ("GET", f"{account_path}/nosuchcontainer", "restype=container", {}, b""),
        ("PUT", f"{account_path}/{name}/s.bin", "comp=snapshot", {}, b""),
    ]
    for method, path, query, headers, body in cases:
        status, answer, payload = _signed_request(blob_service, method, path, query=query, headers=headers,
                                                  body=body)
        assert 400 <= status < 500 or status == 501, (method, path, query, headers, status, payload[:300])
        assert answer.get("x-ms-error-code"), (method, path, query, status)
        assert answer.get("x-ms-request-id"), (method, path, query)
        if method != "HEAD" and payload:
            assert payload.startswith(b'<?xml version="1.0" encoding="utf-8"?><Error><Code>'), payload[:200]
    client.delete_container()


def test_every_answer_names_request_and_version(blob_service):
    client = blob_service.create_container(fresh_name("hdrs"))
    status, headers, _ = _signed_request(blob_service, "GET", f"/{blob_service.account_name}/{client.container_name}",
                                         query="restype=container", headers={"x-ms-version": "2026-02-06"})
    assert status == 200
    assert headers["x-ms-version"] == "2026-02-06"  # newer than this code knows: accepted and echoed
    assert headers["x-ms-request-id"] and headers["date"]
    client.delete_container()
