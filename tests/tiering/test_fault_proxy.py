"""The test rig for the tiering tests, tested: real Azurite and moto servers, reached through FaultProxy, by the
clients Atoll's tiering uses (obstore) and the reference SDKs (boto3, azure-storage-blob).

What the later tiering tests rely on is shown here: the proxy counts requests exactly, and each fault looks to a
real client like the failure it imitates (timeout, connection reset, refused connect, a slow link).
"""

from __future__ import annotations

import concurrent.futures
import os
import socket
import time

import pytest
from azure.core.exceptions import ServiceResponseTimeoutError
from botocore.exceptions import ConnectionClosedError, EndpointConnectionError

from coldstores import Request, RequestFramer

# Generous: it includes starting the session emulators, slow on a busy 2-core machine; the tests take seconds.
pytestmark = pytest.mark.timeout(120)

MiB = 1 << 20
# No retries, 1 s timeouts: a fault shows as the client's own error, at once.
FAST_FAIL = {"retries": {"total_max_attempts": 1, "mode": "standard"}, "connect_timeout": 1, "read_timeout": 1}
AZ_FAST_FAIL = {"retry_total": 0, "connection_timeout": 1, "read_timeout": 1}


def put_direct(moto_s3, bucket: str, key: str, body: bytes) -> None:
    moto_s3.client().put_object(Bucket=bucket, Key=key, Body=body)


def elapsed(fn) -> float:
    start = time.monotonic()
    fn()
    return time.monotonic() - start


def wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


# --- counting ---------------------------------------------------------------------------------------------------

def test_boto3_gets_counted_exactly(moto_s3, s3_cold_bucket, cold_proxy):
    put_direct(moto_s3, s3_cold_bucket, "obj", b"x" * 1000)
    proxy = cold_proxy(moto_s3)
    client = moto_s3.client(proxy.endpoint())
    for _ in range(5):
        assert client.get_object(Bucket=s3_cold_bucket, Key="obj")["Body"].read() == b"x" * 1000
    assert proxy.requests() == [Request("GET", f"/{s3_cold_bucket}/obj")] * 5
    assert proxy.bytes_down > 5000

    proxy.reset_counts()
    client.head_object(Bucket=s3_cold_bucket, Key="obj")
    client.list_objects_v2(Bucket=s3_cold_bucket, Prefix="o")
    assert [r.method for r in proxy.requests()] == ["HEAD", "GET"]
    assert len(proxy.requests("GET", path_contains="list-type=2")) == 1  # the query string is kept
    assert proxy.requests("get", path_contains="/obj") == []  # method matching ignores case


def test_keep_alive_requests_counted_one_by_one(azurite, azure_container, cold_proxy):
    # moto's server closes every connection after one response, Azurite keeps them open: keep-alive is
    # shown against Azurite.
    proxy = cold_proxy(azurite)
    blob = azurite.blob_client(azure_container, "k", endpoint=proxy.endpoint("/devstoreaccount1"))
    blob.upload_blob(b"v" * 100)
    for _ in range(5):
        assert blob.download_blob().readall() == b"v" * 100
    assert len(proxy.requests("GET")) == 5 and len(proxy.requests()) == 6
    assert proxy.connections == 1  # six requests framed out of one byte stream


def test_pipelined_chunked_and_sized_bodies_counted(azurite, azure_container, cold_proxy):
    """Three requests in one write: a chunked PUT whose body looks like a request, a Content-Length PUT whose
    body does too, and a GET. They are unsigned, so Azurite refuses them, but answers each one."""
    proxy = cold_proxy(azurite)
    fake = b"GET /not-a-request HTTP/1.1\r\n\r\n"
    host = f"Host: 127.0.0.1:{proxy.port}\r\n".encode()
    path = f"/devstoreaccount1/{azure_container}"
    pipeline = (
        f"PUT {path}/a HTTP/1.1\r\n".encode() + host + b"Transfer-Encoding: chunked\r\n\r\n"
        + b"%x;ext=1\r\n" % len(fake) + fake + b"\r\n5\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n"
        + f"PUT {path}/b HTTP/1.1\r\n".encode() + host + b"Content-Length: %d\r\n\r\n" % len(fake) + fake
        + f"GET {path}/b HTTP/1.1\r\n".encode() + host + b"\r\n"
    )
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(pipeline)
        replies = b""
        while replies.count(b"HTTP/1.1 ") < 3:
            chunk = sock.recv(65536)
            assert chunk, replies
            replies += chunk
    assert proxy.requests() == [Request("PUT", f"{path}/a"), Request("PUT", f"{path}/b"),
                                Request("GET", f"{path}/b")]
    assert proxy.connections == 1


def test_framer_finds_requests_fed_one_byte_at_a_time():
    seen: list[Request] = []
    framer = RequestFramer(seen.append)
    stream = (b"\r\nPOST /x?uploads HTTP/1.1\r\nContent-Length: 4\r\n\r\nGET "
              b"PUT /y HTTP/1.1\r\ntransfer-encoding: Chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
              b"DELETE /z HTTP/1.1\r\n\r\n")
    for i in range(len(stream)):
        framer.feed(stream[i:i + 1])
    assert seen == [Request("POST", "/x?uploads"), Request("PUT", "/y"), Request("DELETE", "/z")]
    framer.feed(b"\x16\x03\x01 not http\r\n\r\n")  # e.g. a TLS hello: stop counting, do not invent requests
    framer.feed(b"GET / HTTP/1.1\r\n\r\n")
    assert framer.broken and len(seen) == 3


def test_azure_sdk_upload_and_download_counted(azurite, azure_container, cold_proxy):
    proxy = cold_proxy(azurite)
    blob = azurite.blob_client(azure_container, "dir/blob.bin", endpoint=proxy.endpoint("/devstoreaccount1"))
    data = os.urandom(256 << 10)
    blob.upload_blob(data, overwrite=True)
    assert blob.download_blob().readall() == data
    path = f"/devstoreaccount1/{azure_container}/dir/blob.bin"
    assert proxy.requests() == [Request("PUT", path), Request("GET", path)]
    assert proxy.bytes_up > len(data) and proxy.bytes_down > len(data)


# --- obstore, the client the tiering core uses ------------------------------------------------------------------

def test_obstore_s3_through_proxy(moto_s3, s3_cold_bucket, cold_proxy):
    import obstore
    from obstore.store import S3Store

    proxy = cold_proxy(moto_s3)
    store = S3Store(s3_cold_bucket, endpoint=proxy.endpoint(), access_key_id=moto_s3.access_key,
                    secret_access_key=moto_s3.secret_key, region=moto_s3.region,
                    client_options={"allow_http": True})
    obstore.put(store, "cold/one", b"payload")
    assert obstore.get(store, "cold/one").bytes().to_bytes() == b"payload"
    assert [m["path"] for m in obstore.list(store, prefix="cold").collect()] == ["cold/one"]
    assert [r.method for r in proxy.requests()] == ["PUT", "GET", "GET"]
    assert proxy.requests("PUT") == [Request("PUT", f"/{s3_cold_bucket}/cold/one")]
    assert moto_s3.client().get_object(Bucket=s3_cold_bucket, Key="cold/one")["Body"].read() == b"payload"


def test_obstore_azure_through_proxy(azurite, azure_container, cold_proxy):
    import obstore
    from obstore.store import AzureStore

    proxy = cold_proxy(azurite)
    store = AzureStore(azure_container, account_name=azurite.account_name, account_key=azurite.account_key,
                       endpoint=proxy.endpoint("/devstoreaccount1"), client_options={"allow_http": True})
    obstore.put(store, "cold/one", b"payload")
    assert obstore.get(store, "cold/one").bytes().to_bytes() == b"payload"
    assert [m["path"] for m in obstore.list(store, prefix="cold").collect()] == ["cold/one"]
    assert [r.method for r in proxy.requests()] == ["PUT", "GET", "GET"]
    assert proxy.requests("PUT") == [Request("PUT", f"/devstoreaccount1/{azure_container}/cold/one")]
    direct = azurite.blob_client(azure_container, "cold/one").download_blob().readall()
    assert direct == b"payload"


# --- faults -----------------------------------------------------------------------------------------------------

def test_stall_times_out_open_and_new_connections_then_heal_delivers(azurite, azure_container, cold_proxy):
    proxy = cold_proxy(azurite)
    blob = azurite.blob_client(azure_container, "k", endpoint=proxy.endpoint("/devstoreaccount1"), **AZ_FAST_FAIL)
    blob.upload_blob(b"data")  # leaves a pooled keep-alive connection (Azurite keeps them)
    proxy.stall()
    with pytest.raises(ServiceResponseTimeoutError):
        blob.get_blob_properties()
    assert proxy.connections == 1  # that was the open connection, now stalled
    fresh = azurite.blob_client(azure_container, "k", endpoint=proxy.endpoint("/devstoreaccount1"),
                                **AZ_FAST_FAIL)
    with pytest.raises(ServiceResponseTimeoutError):  # a new connection is accepted, then nothing
        fresh.get_blob_properties()
    assert proxy.connections == 2
    assert len(proxy.requests()) == 1  # held requests have not reached the server

    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(f"GET /devstoreaccount1/{azure_container}/k HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        time.sleep(0.2)
        proxy.heal()  # what was held is delivered, late
        assert sock.recv(65536).startswith(b"HTTP/1.1 ")  # (unsigned, so Azurite refuses it, but answers)
    assert fresh.download_blob().readall() == b"data"


def test_reset_all_gives_in_flight_clients_a_connection_reset(moto_s3, s3_cold_bucket, cold_proxy):
    put_direct(moto_s3, s3_cold_bucket, "obj", b"data")
    proxy = cold_proxy(moto_s3)
    client = moto_s3.client(proxy.endpoint(), **{**FAST_FAIL, "read_timeout": 10})

    raw = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    raw.sendall(b"GET /")  # half a request, waiting
    wait_for(lambda: proxy.connections == 1)
    proxy.stall()  # keeps the boto3 request in flight until the reset
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(client.get_object, Bucket=s3_cold_bucket, Key="obj")
        wait_for(lambda: proxy.connections == 2)
        time.sleep(0.1)  # let the request bytes reach the proxy
        started = time.monotonic()
        proxy.reset_all()
        with pytest.raises(ConnectionClosedError):
            pending.result(10)
        assert time.monotonic() - started < 5  # the reset, not the 10 s read timeout
    with pytest.raises(ConnectionResetError):  # a real RST (SO_LINGER 0), not an orderly FIN
        raw.recv(10)
    raw.close()

    proxy.heal()
    assert client.get_object(Bucket=s3_cold_bucket, Key="obj")["Body"].read() == b"data"


def test_blackhole_hangs_and_touched_connections_stay_dead(azurite, azure_container, cold_proxy):
    proxy = cold_proxy(azurite)
    blob = azurite.blob_client(azure_container, "k", endpoint=proxy.endpoint("/devstoreaccount1"), **AZ_FAST_FAIL)
    blob.upload_blob(b"data")  # leaves a pooled keep-alive connection
    proxy.blackhole()
    assert elapsed(lambda: pytest.raises(ServiceResponseTimeoutError, blob.get_blob_properties)) >= 0.9
    assert proxy.connections == 1  # the open connection froze
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=0.5) as sock:  # accepted...
        wait_for(lambda: proxy.connections == 2)  # (by the proxy's loop, while still blackholed)
        proxy.heal()
        sock.sendall(f"GET /devstoreaccount1/{azure_container}/k HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        with pytest.raises(TimeoutError):  # ...and never answered, even after heal
            sock.recv(100)
    assert len(proxy.requests()) == 1
    assert blob.download_blob().readall() == b"data"  # on a new connection


def test_refuse_then_heal_on_the_same_port(moto_s3, s3_cold_bucket, cold_proxy):
    put_direct(moto_s3, s3_cold_bucket, "obj", b"data")
    proxy = cold_proxy(moto_s3)
    port = proxy.port
    proxy.refuse()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    with pytest.raises(EndpointConnectionError):
        moto_s3.client(proxy.endpoint(), **FAST_FAIL).get_object(Bucket=s3_cold_bucket, Key="obj")
    proxy.heal()
    assert proxy.port == port
    assert moto_s3.client(proxy.endpoint(), **FAST_FAIL).get_object(Bucket=s3_cold_bucket,
                                                                    Key="obj")["Body"].read() == b"data"


def test_bandwidth_cap_slows_a_4mib_download_and_heal_lifts_it(moto_s3, s3_cold_bucket, cold_proxy):
    body = os.urandom(4 * MiB)
    put_direct(moto_s3, s3_cold_bucket, "big", body)
    proxy = cold_proxy(moto_s3)
    client = moto_s3.client(proxy.endpoint())
    proxy.bandwidth = 2 * MiB
    got: list[bytes] = []
    took = elapsed(lambda: got.append(client.get_object(Bucket=s3_cold_bucket, Key="big")["Body"].read()))
    assert got == [body]
    assert took >= 1.6, took  # 4 MiB at 2 MiB/s is 2 s; generous for timer slack
    assert proxy.bytes_down >= 4 * MiB
    proxy.heal()
    assert client.get_object(Bucket=s3_cold_bucket, Key="big")["Body"].read() == body


def test_latency_delays_each_direction(azurite, azure_container, cold_proxy):
    proxy = cold_proxy(azurite)
    blob = azurite.blob_client(azure_container, "b", endpoint=proxy.endpoint("/devstoreaccount1"))
    blob.upload_blob(b"x", overwrite=True)
    proxy.latency = 0.3
    assert elapsed(lambda: blob.get_blob_properties()) >= 0.55  # request and reply each held 0.3 s
    proxy.heal()
    assert proxy.latency == 0 and blob.download_blob().readall() == b"x"
