"""Write-through buckets and link management against real cold stores (moto S3 and Azurite) behind a FaultProxy.

A write-through write is acknowledged only once the cold store has it: right after the 200 the cold store is read
directly and must hold the bytes and metadata. With the cold store unreachable a write fails with 503 and leaves
nothing behind locally. ``atoll bucket link`` with a wrong endpoint or wrong credentials fails with one clear
message; secret option values never appear in ``bucket show``, the server log, error messages or the metadata.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import stat
import time

import pytest
from botocore.exceptions import ClientError

from coldstores import MotoS3Server, fresh_name
from harness import AtollProcess, free_port
from test_writeback import COLD_KINDS, PART, PREFIX, SERVER_ENV, Cold, make_cold, meta_query, module_server, uploads

pytestmark = pytest.mark.timeout(120)

KiB = 1 << 10


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # Debug logging: whatever the cold-store layer logs about failures must still carry no secret.
    yield from module_server(tmp_path_factory, "wt", {**SERVER_ENV, "ATOLL_LOG_LEVEL": "debug"})


@pytest.fixture(params=COLD_KINDS)
def cold(request) -> Cold:
    return make_cold(request.param, request)


def link(server: AtollProcess, cold: Cold, *options: str) -> str:
    name = f"wt-{secrets.token_hex(5)}"
    server.client().create_bucket(Bucket=name)
    done = server.cli("bucket", "link", name, cold.url, "--mode", "writethrough", *(options or cold.link_options()),
                      check=False)
    assert done.returncode == 0, done.stderr + done.stdout
    cold.proxy.reset_counts()
    return name


def no_retry_client(server: AtollProcess):
    """A client that shows the first answer (boto3 would otherwise retry a 503 itself)."""
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=server.endpoint, aws_access_key_id=server.access_key,
                        aws_secret_access_key=server.secret_key, region_name="us-east-1",
                        config=Config(retries={"max_attempts": 1, "mode": "standard"}, read_timeout=60))


def error_of(call, **kwargs) -> ClientError:
    with pytest.raises(ClientError) as failed:
        call(**kwargs)
    return failed.value


def after_heal(call, timeout: float = 10.0):
    """``call()`` once the server has noticed that the cold store is back: until its breaker's probe closes
    it, cold calls answer 503 at once (with Retry-After), which is what a client retries on."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            outcome = call()
        except ClientError as exc:
            if exc.response["ResponseMetadata"]["HTTPStatusCode"] != 503 or time.monotonic() > deadline:
                raise
            time.sleep(0.2)
            continue
        if not (isinstance(outcome, ClientError) and
                outcome.response["ResponseMetadata"]["HTTPStatusCode"] == 503 and time.monotonic() < deadline):
            return outcome
        time.sleep(0.2)


def unreachable(cold: Cold) -> None:
    """Connections to the cold store are refused, and the ones Atoll keeps open are reset."""
    cold.proxy.refuse()
    cold.proxy.reset_all()


def local_files(server: AtollProcess) -> set[str]:
    """Blob and temp files of the data store."""
    found = set()
    for sub in ("blobs", "tmp"):
        for root, _, files in os.walk(os.path.join(server.data_dir, sub)):
            found.update(os.path.join(root, f) for f in files)
    return found


def journal_size(server: AtollProcess, bucket: str) -> int:
    return meta_query(server, "SELECT count(*) FROM drain WHERE bucket = ?", (bucket,))[0][0]


def test_writes_are_in_the_cold_store_when_acknowledged(server, cold):
    bucket = link(server, cold)
    s3 = server.client()

    data = os.urandom(100 * KiB + 3)
    s3.put_object(Bucket=bucket, Key="put/obj", Body=data, ContentType="application/x-wt", Metadata={"m": "1"})
    assert cold.get_object("put/obj") == (data, {"content-type": "application/x-wt"}, {"m": "1"})
    assert uploads(cold, "put/obj") == 1
    # The local row records the cold identity it was sent as, so it is clean (evictable) at once.
    attrs = json.loads(meta_query(server, "SELECT attrs FROM objects WHERE bucket = ? AND key = ?",
                                  (bucket, "put/obj"))[0][0])
    assert attrs.get("k") and attrs["k"][0]

    newer = os.urandom(5 * KiB)
    s3.put_object(Bucket=bucket, Key="put/obj", Body=newer, ContentType="application/x-wt2")
    assert cold.get_object("put/obj") == (newer, {"content-type": "application/x-wt2"}, {})

    parts = [os.urandom(PART), os.urandom(PART), os.urandom(777)]
    upload = s3.create_multipart_upload(Bucket=bucket, Key="multi/obj", ContentType="application/x-multi",
                                        Metadata={"parts": "3"})
    done = [{"PartNumber": n, "ETag": s3.upload_part(Bucket=bucket, Key="multi/obj", UploadId=upload["UploadId"],
                                                     PartNumber=n, Body=p)["ETag"]}
            for n, p in enumerate(parts, 1)]
    assert cold.get("multi/obj") is None  # parts stay local until the upload completes
    s3.complete_multipart_upload(Bucket=bucket, Key="multi/obj", UploadId=upload["UploadId"],
                                 MultipartUpload={"Parts": done})
    assert cold.get_object("multi/obj") == (b"".join(parts), {"content-type": "application/x-multi"},
                                            {"parts": "3"})

    s3.copy_object(Bucket=bucket, Key="copy/obj", CopySource={"Bucket": bucket, "Key": "put/obj"},
                   MetadataDirective="REPLACE", ContentType="text/x-copy", Metadata={"copied": "1"})
    assert cold.get_object("copy/obj") == (newer, {"content-type": "text/x-copy"}, {"copied": "1"})

    s3.copy_object(Bucket=bucket, Key="multi/obj", CopySource={"Bucket": bucket, "Key": "multi/obj"},
                   MetadataDirective="REPLACE", ContentType="text/x-recast", Metadata={"recast": "yes"})
    got = cold.get_object("multi/obj")
    assert got[1:] == ({"content-type": "text/x-recast"}, {"recast": "yes"}) and got[0] == b"".join(parts)

    s3.delete_object(Bucket=bucket, Key="put/obj")
    assert cold.get("put/obj") is None
    s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "copy/obj"}, {"Key": "multi/obj"}]})
    assert cold.keys() == {}
    assert set(cold.names()) == set()

    # Nothing was journaled: there is nothing left for a drain to do.
    assert journal_size(server, bucket) == 0
    s3.put_object(Bucket=bucket, Key="last", Body=b"z")
    assert cold.get("last") == b"z" and s3.get_object(Bucket=bucket, Key="last")["Body"].read() == b"z"
    assert set(cold.keys()) == {"last"} and journal_size(server, bucket) == 0


def test_unreachable_cold_store_fails_writes_with_503_and_leaves_nothing(server, cold):
    bucket = link(server, cold)
    s3 = no_retry_client(server)
    s3.put_object(Bucket=bucket, Key="kept", Body=b"version one")
    upload = s3.create_multipart_upload(Bucket=bucket, Key="multi")
    part = s3.upload_part(Bucket=bucket, Key="multi", UploadId=upload["UploadId"], PartNumber=1, Body=b"p" * 1000)
    files_before = local_files(server)

    unreachable(cold)
    with pytest.raises(ClientError) as failed:
        s3.put_object(Bucket=bucket, Key="new", Body=os.urandom(50 * KiB))
    assert failed.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert failed.value.response["ResponseMetadata"]["HTTPHeaders"].get("retry-after")
    with pytest.raises(ClientError) as failed:
        s3.put_object(Bucket=bucket, Key="kept", Body=b"version two")
    assert failed.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    with pytest.raises(ClientError) as failed:
        s3.delete_object(Bucket=bucket, Key="kept")
    assert failed.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    with pytest.raises(ClientError) as failed:
        s3.complete_multipart_upload(Bucket=bucket, Key="multi", UploadId=upload["UploadId"],
                                     MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]})
    assert failed.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503

    # Nothing behind locally: no row, no journal entry, no blob; the old version is untouched and still served
    # (it is warm, so reading it needs no cold store).
    keys = {row[0] for row in meta_query(server, "SELECT key FROM objects WHERE bucket = ?", (bucket,))}
    assert keys == {"kept"}
    assert journal_size(server, bucket) == 0
    assert local_files(server) - files_before == set()  # (older blobs may be collected meanwhile)
    assert s3.get_object(Bucket=bucket, Key="kept")["Body"].read() == b"version one"

    cold.proxy.heal()
    missing = after_heal(lambda: error_of(s3.get_object, Bucket=bucket, Key="new"))
    assert missing.response["Error"]["Code"] == "NoSuchKey"
    assert cold.get("new") is None and cold.get("kept") == b"version one"
    # The upload survived its failed completion and completes once the cold store is back.
    s3.complete_multipart_upload(Bucket=bucket, Key="multi", UploadId=upload["UploadId"],
                                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]})
    assert cold.get("multi") == b"p" * 1000
    s3.put_object(Bucket=bucket, Key="kept", Body=b"version two")
    assert cold.get("kept") == b"version two"


# --- link management: wrong settings and secrets ----------------------------------------------------------------

def assert_clear_failure(done, *secret_values: str) -> str:
    out = done.stdout + done.stderr
    assert done.returncode != 0, out
    assert "Traceback" not in out and "error" in out.lower(), out
    assert "cold store" in out, out  # it says what could not be reached
    for value in secret_values:
        assert value not in out, "a secret was echoed"
    return out


def assert_not_linked(server: AtollProcess, bucket: str) -> None:
    assert meta_query(server, "SELECT count(*) FROM links WHERE bucket = ?", (bucket,)) == [(0,)]
    secrets_path = os.path.join(server.data_dir, "cold-secrets.json")
    if os.path.exists(secrets_path):
        with open(secrets_path) as f:
            assert bucket not in json.load(f)


def test_link_to_a_wrong_endpoint_fails_clearly(server, cold):
    bucket = f"wt-{secrets.token_hex(5)}"
    server.client().create_bucket(Bucket=bucket)
    secret = "NotShown" + secrets.token_hex(12)
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    if cold.kind == "s3":
        options = cold.link_options(endpoint=dead, secret_access_key=secret)
    else:
        key = base64.b64encode(secret.encode() + os.urandom(16)).decode()
        options = cold.link_options(endpoint=f"{dead}/{cold.server.account_name}", account_key=key)
        secret = key
    done = server.cli("bucket", "link", bucket, cold.url, "--mode", "writethrough", *options, check=False)
    assert_clear_failure(done, secret)
    assert_not_linked(server, bucket)
    assert secret not in server.log_text()


def test_link_with_wrong_credentials_fails_clearly(server, cold, monkeypatch, tmp_path):
    bucket = f"wt-{secrets.token_hex(5)}"
    server.client().create_bucket(Bucket=bucket)
    if cold.kind == "azure":
        wrong = base64.b64encode(os.urandom(64)).decode()
        done = server.cli("bucket", "link", bucket, cold.url, "--mode", "writethrough",
                          *cold.link_options(account_key=wrong), check=False)
        assert_clear_failure(done, wrong)
        assert_not_linked(server, bucket)
        # The right key works (the failure above was the key, nothing else).
        assert server.cli("bucket", "link", bucket, cold.url, "--mode", "writethrough", *cold.link_options(),
                          check=False).returncode == 0
        return
    # moto accepts any credentials unless IAM auth is on: a private moto with it on, and a real IAM key.
    monkeypatch.setenv("INITIAL_NO_AUTH_ACTION_COUNT", "4")  # user, key, policy and bucket are made unchecked
    strict = MotoS3Server(log_dir=str(tmp_path)).start()
    try:
        import boto3

        iam = boto3.client("iam", endpoint_url=strict.endpoint, aws_access_key_id="testing",
                           aws_secret_access_key="testing", region_name="us-east-1")
        iam.create_user(UserName="atoll")
        key = iam.create_access_key(UserName="atoll")["AccessKey"]
        iam.put_user_policy(UserName="atoll", PolicyName="all", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        container = fresh_name("strict")
        boto3.client("s3", endpoint_url=strict.endpoint, aws_access_key_id=key["AccessKeyId"],
                     aws_secret_access_key=key["SecretAccessKey"], region_name="us-east-1").create_bucket(
            Bucket=container)
        url = f"s3://{container}/{PREFIX}"
        wrong = "Wrong" + secrets.token_hex(16)

        def options(secret: str) -> list[str]:
            pairs = {"endpoint": strict.endpoint, "access_key_id": key["AccessKeyId"], "secret_access_key": secret,
                     "region": "us-east-1"}
            return [arg for name, value in pairs.items() for arg in ("-o", f"{name}={value}")]

        done = server.cli("bucket", "link", bucket, url, "--mode", "writethrough", *options(wrong), check=False)
        assert_clear_failure(done, wrong)
        assert_not_linked(server, bucket)
        done = server.cli("bucket", "link", bucket, url, "--mode", "writethrough", *options(key["SecretAccessKey"]),
                          check=False)
        assert done.returncode == 0, done.stderr
        assert key["SecretAccessKey"] not in done.stdout + done.stderr
    finally:
        strict.stop()

    # A bucket that does not exist is reported the same way.
    other = f"wt-{secrets.token_hex(5)}"
    server.client().create_bucket(Bucket=other)
    missing = cold.url.replace(cold.container, fresh_name("missing"))
    done = server.cli("bucket", "link", other, missing, "--mode", "writethrough", *cold.link_options(), check=False)
    assert_clear_failure(done, cold.server.secret_key + "-never")
    assert_not_linked(server, other)


def test_secret_options_never_shown_logged_or_stored_in_metadata(server, cold):
    if cold.kind == "s3":
        secret = "Sekr1t" + secrets.token_hex(16)  # moto takes any secret
        bucket = link(server, cold, *cold.link_options(secret_access_key=secret))
    else:
        secret = cold.server.account_key  # Azurite checks it: the real (well-known) key is the secret here
        bucket = link(server, cold)

    s3 = no_retry_client(server)
    s3.put_object(Bucket=bucket, Key="a", Body=b"x")
    unreachable(cold)  # failures, with their error messages and debug logs
    with pytest.raises(ClientError) as failed:
        s3.put_object(Bucket=bucket, Key="b", Body=b"y")
    assert failed.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert secret not in str(failed.value.response)
    cold.proxy.heal()

    shown = server.cli("bucket", "show", bucket, check=False)
    assert shown.returncode == 0, shown.stderr
    assert secret not in shown.stdout + shown.stderr
    assert cold.url in shown.stdout and "writethrough" in shown.stdout
    secret_option = "secret_access_key" if cold.kind == "s3" else "account_key"
    assert re.search(rf"secret options.*{secret_option}", shown.stdout), shown.stdout  # named, not valued

    assert secret not in server.log_text()
    metadata = b""
    for suffix in ("", "-wal"):
        path = os.path.join(server.data_dir, "meta.sqlite3" + suffix)
        if os.path.exists(path):
            with open(path, "rb") as f:
                metadata += f.read()
    assert secret.encode() not in metadata
    secrets_path = os.path.join(server.data_dir, "cold-secrets.json")
    assert stat.S_IMODE(os.stat(secrets_path).st_mode) == 0o600
    with open(secrets_path) as f:
        assert json.load(f)[bucket][secret_option] == secret
