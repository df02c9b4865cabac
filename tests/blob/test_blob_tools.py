"""Stock Azure tools against the Blob endpoint: adlfs through fsspec (what PyTorch data loaders and pandas use)
and rclone's ``azureblob`` backend. Each scenario runs against Atoll and, as the reference, against Azurite: the
same calls must give the same answers. Objects written by the tools are then read through S3 (boto3), so the
two endpoints agree on bytes and sizes.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess

import pytest

MiB = 1 << 20


class Target:
    """An Azure Blob service to talk to: Atoll (with its S3 endpoint beside it) or Azurite."""

    def __init__(self, name: str, account: str, key: str, endpoint: str, s3=None) -> None:
        self.name = name
        self.account = account
        self.key = key
        self.endpoint = endpoint  # http://127.0.0.1:PORT/ACCOUNT
        self.s3 = s3

    @property
    def connection_string(self) -> str:
        return (f"DefaultEndpointsProtocol=http;AccountName={self.account};AccountKey={self.key};"
                f"BlobEndpoint={self.endpoint};")

    def container(self) -> str:
        from azure.storage.blob import BlobServiceClient

        name = f"tools-{secrets.token_hex(4)}"
        BlobServiceClient.from_connection_string(self.connection_string).create_container(name)
        return name


@pytest.fixture(params=["atoll", "azurite"])
def target(request) -> Target:
    if request.param == "atoll":
        server = request.getfixturevalue("blob_server")
        return Target("atoll", server.account_name, server.account_key, server.blob_endpoint, server.client())
    azurite = request.getfixturevalue("azurite")
    return Target("azurite", azurite.account_name, azurite.account_key, azurite.endpoint)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- adlfs -----------------------------------------------------------------------------------------------------

def test_adlfs_writes_lists_reads_ranges_and_deletes(target):
    import fsspec

    container = target.container()
    fs = fsspec.filesystem("abfs", connection_string=target.connection_string, skip_instance_cache=True)
    small = os.urandom(1000)
    big = os.urandom(9 * MiB + 123)  # larger than adlfs' 4 MiB blocks: Put Block + Put Block List
    fs.pipe(f"{container}/data/small.bin", small)
    with fs.open(f"{container}/data/shards/big.bin", "wb", blocksize=4 * MiB) as f:
        for at in range(0, len(big), MiB):
            f.write(big[at:at + MiB])

    assert sorted(fs.ls(f"{container}/data", detail=False)) == [f"{container}/data/shards",
                                                                f"{container}/data/small.bin"]
    assert sorted(fs.find(f"{container}/data")) == [f"{container}/data/shards/big.bin",
                                                     f"{container}/data/small.bin"]
    info = fs.info(f"{container}/data/shards/big.bin")
    assert info["size"] == len(big) and info["type"] == "file"
    assert fs.info(f"{container}/data/shards")["type"] == "directory"
    assert fs.cat(f"{container}/data/small.bin") == small
    assert digest(fs.cat(f"{container}/data/shards/big.bin")) == digest(big)
    with fs.open(f"{container}/data/shards/big.bin", "rb", block_size=MiB) as f:  # ranged reads
        f.seek(5 * MiB - 7)
        assert f.read(100) == big[5 * MiB - 7:5 * MiB + 93]
    assert fs.cat_file(f"{container}/data/shards/big.bin", start=10, end=20) == big[10:20]

    if target.s3 is not None:  # the same objects through S3
        got = target.s3.get_object(Bucket=container, Key="data/shards/big.bin")["Body"].read()
        assert digest(got) == digest(big)
        listed = target.s3.list_objects_v2(Bucket=container, Prefix="data/")["Contents"]
        assert {o["Key"]: o["Size"] for o in listed} == {"data/small.bin": 1000, "data/shards/big.bin": len(big)}

    fs.rm(f"{container}/data", recursive=True)
    assert fs.find(f"{container}/data") == []
    with pytest.raises(FileNotFoundError):
        fs.info(f"{container}/data/small.bin")


# --- rclone ----------------------------------------------------------------------------------------------------

def account_sas_url(target: Target, key: str | None = None) -> str:
    """An account SAS URL of the service (path style): how rclone (Debian's 1.60, whose ``endpoint`` option
    only takes a domain suffix behind https://ACCOUNT.) reaches a service at http://HOST:PORT/ACCOUNT."""
    from datetime import datetime, timedelta, timezone

    from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas

    token = generate_account_sas(target.account, key or target.key,
                                 ResourceTypes(service=True, container=True, object=True),
                                 AccountSasPermissions(read=True, write=True, delete=True, list=True, add=True,
                                                       create=True),
                                 expiry=datetime.now(timezone.utc) + timedelta(hours=1))
    return f"{target.endpoint}?{token}"


def rclone(target: Target, *args: str, check: bool = True, key: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "RCLONE_CONFIG": "/dev/null", "RCLONE_CONFIG_ISLAND_TYPE": "azureblob",
           "RCLONE_CONFIG_ISLAND_SAS_URL": account_sas_url(target, key)}
    result = subprocess.run(["rclone", *args, "--retries", "1", "--low-level-retries", "1"], env=env,
                            capture_output=True, text=True, timeout=120)
    if check:
        assert result.returncode == 0, f"rclone {' '.join(args)} failed:\n{result.stderr[-3000:]}"
    return result


def test_rclone_copies_a_tree_up_checks_it_and_copies_it_back(target, tmp_path):
    container = target.container()
    source = tmp_path / "up"
    files = {"a.txt": b"alpha\n", "dir/b.bin": os.urandom(300_000), "dir/sub/c.bin": os.urandom(6 * MiB + 5),
             "dir/sub/empty": b""}
    for name, body in files.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(body)

    # Chunks of 4 MiB above a 4 MiB cut-off: the 6 MiB file goes up as blocks and a block list.
    rclone(target, "copy", str(source), f"island:{container}/tree", "--azureblob-chunk-size", "4M",
           "--azureblob-upload-cutoff", "4M")
    listed = json.loads(rclone(target, "lsjson", "-R", "--files-only", f"island:{container}/tree").stdout)
    assert {entry["Path"]: entry["Size"] for entry in listed} == {name: len(body) for name, body in files.items()}
    # rclone compares sizes and the MD5s it can get (Content-MD5 of every blob, block blobs included).
    rclone(target, "check", str(source), f"island:{container}/tree")

    back = tmp_path / "down"
    rclone(target, "copy", f"island:{container}/tree", str(back))
    for name, body in files.items():
        assert (back / name).read_bytes() == body, name

    if target.s3 is not None:
        got = target.s3.get_object(Bucket=container, Key="tree/dir/sub/c.bin")["Body"].read()
        assert digest(got) == digest(files["dir/sub/c.bin"])

    rclone(target, "delete", f"island:{container}/tree/dir")
    remaining = json.loads(rclone(target, "lsjson", "-R", "--files-only", f"island:{container}/tree").stdout)
    assert [entry["Path"] for entry in remaining] == ["a.txt"]


def test_rclone_with_a_sas_signed_by_a_wrong_key_is_refused_and_writes_nothing(target, tmp_path):
    container = target.container()
    (tmp_path / "f").write_bytes(b"x")
    result = rclone(target, "copy", str(tmp_path), f"island:{container}", check=False, key="d3Jvbmcta2V5" * 8)
    assert result.returncode != 0
    assert "AuthenticationFailed" in result.stderr or "403" in result.stderr, result.stderr[-2000:]
    assert json.loads(rclone(target, "lsjson", f"island:{container}").stdout) == []
