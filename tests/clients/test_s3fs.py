"""s3fs (fsspec on aiobotocore) against a live Atoll: the calls data loaders and checkpoint writers make through
``storage_options`` — ls/info/exists, open for reading and multipart writing, ranged cat, put/get, mv, rm,
find/glob, makedirs — and a PyTorch-DCP-like checkpoint (many shards, ``.metadata`` renamed into place last).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
import s3fs

MiB = 1 << 20


@pytest.fixture
def fs(atoll):
    return s3fs.S3FileSystem(key=atoll.access_key, secret=atoll.secret_key, skip_instance_cache=True,
                             client_kwargs={"endpoint_url": atoll.endpoint, "region_name": "us-east-1"},
                             config_kwargs={"retries": {"max_attempts": 2}})


def test_open_write_multipart_then_read_ls_info_cat(fs, s3, bucket):
    data = os.urandom(12 * MiB + 777)
    with fs.open(f"{bucket}/data/big.bin", "wb", block_size=5 * MiB) as f:
        for at in range(0, len(data), 3 * MiB):  # writes that straddle part boundaries
            f.write(data[at:at + 3 * MiB])
    head = s3.head_object(Bucket=bucket, Key="data/big.bin")
    assert head["ETag"].endswith('-3"')  # 5 + 5 + 2 MiB: it went multipart
    with fs.open(f"{bucket}/data/small.txt", "wb") as f:
        f.write(b"small file")

    info = fs.info(f"{bucket}/data/big.bin")
    assert info["size"] == len(data) and info["type"] == "file" and info["ETag"] == head["ETag"]
    assert fs.info(f"{bucket}/data")["type"] == "directory"
    assert fs.exists(f"{bucket}/data/big.bin") and fs.exists(f"{bucket}/data") and fs.exists(bucket)
    assert not fs.exists(f"{bucket}/data/missing") and not fs.exists(f"{bucket}/nope/")
    assert fs.isdir(f"{bucket}/data") and fs.isfile(f"{bucket}/data/small.txt")
    assert not fs.isfile(f"{bucket}/data")
    assert fs.ls(bucket) == [f"{bucket}/data"]
    listed = fs.ls(f"{bucket}/data", detail=True)
    assert sorted((e["name"], e["size"]) for e in listed) == [
        (f"{bucket}/data/big.bin", len(data)), (f"{bucket}/data/small.txt", 10)]
    assert fs.du(f"{bucket}/data") == len(data) + 10

    with fs.open(f"{bucket}/data/big.bin", "rb", block_size=2 * MiB) as f:
        f.seek(5 * MiB - 10)
        assert f.read(20) == data[5 * MiB - 10:5 * MiB + 10]
        f.seek(-100, os.SEEK_END)
        assert f.read() == data[-100:]
        f.seek(0)
        assert hashlib.sha256(f.read()).digest() == hashlib.sha256(data).digest()
    assert fs.cat_file(f"{bucket}/data/big.bin", start=1000, end=1010) == data[1000:1010]
    assert fs.cat_file(f"{bucket}/data/big.bin", start=-50) == data[-50:]
    assert fs.cat_file(f"{bucket}/data/big.bin", start=len(data) - 5, end=len(data) + 100) == data[-5:]
    assert fs.cat_ranges([f"{bucket}/data/big.bin"] * 2 + [f"{bucket}/data/small.txt"],
                         [0, 8 * MiB, 6], [4, 8 * MiB + 3, 10]) == [data[:4], data[8 * MiB:8 * MiB + 3], b"file"]
    assert fs.cat(f"{bucket}/data/small.txt") == b"small file"
    assert fs.head(f"{bucket}/data/small.txt", 5) == b"small" and fs.tail(f"{bucket}/data/small.txt", 4) == b"file"
    with pytest.raises(FileNotFoundError):
        fs.cat(f"{bucket}/data/missing")


def test_put_get_mv_rm_find_glob_makedirs(fs, s3, bucket, tmp_path):
    local = tmp_path / "local"
    files = {"a.txt": b"alpha", "sub/b.bin": os.urandom(300_000), "sub/deeper/c.bin": os.urandom(1000),
             "with space/d é.txt": b"unicode"}
    for name, body in files.items():
        (local / name).parent.mkdir(parents=True, exist_ok=True)
        (local / name).write_bytes(body)
    fs.put(str(local) + "/", f"{bucket}/tree/", recursive=True)
    assert sorted(fs.find(f"{bucket}/tree")) == sorted(f"{bucket}/tree/{n}" for n in files)
    assert sorted(fs.glob(f"{bucket}/tree/**/*.bin")) == [f"{bucket}/tree/sub/b.bin", f"{bucket}/tree/sub/deeper/c.bin"]
    assert fs.glob(f"{bucket}/tree/*.txt") == [f"{bucket}/tree/a.txt"]
    assert sorted(fs.find(f"{bucket}/tree", maxdepth=1, withdirs=True)) == [  # fsspec lists the root too
        f"{bucket}/tree", f"{bucket}/tree/a.txt", f"{bucket}/tree/sub", f"{bucket}/tree/with space"]

    back = tmp_path / "back"
    fs.get(f"{bucket}/tree/", str(back) + "/", recursive=True)
    assert {p.relative_to(back).as_posix(): p.read_bytes() for p in back.rglob("*") if p.is_file()} == files
    fs.get_file(f"{bucket}/tree/sub/b.bin", str(tmp_path / "one.bin"))
    assert (tmp_path / "one.bin").read_bytes() == files["sub/b.bin"]
    fs.put_file(str(local / "a.txt"), f"{bucket}/single.txt")
    assert fs.cat(f"{bucket}/single.txt") == b"alpha"

    fs.mv(f"{bucket}/tree/sub/b.bin", f"{bucket}/moved/b.bin")  # CopyObject + DeleteObject
    assert fs.cat(f"{bucket}/moved/b.bin") == files["sub/b.bin"]
    assert not fs.exists(f"{bucket}/tree/sub/b.bin")
    # fsspec's recursive mv refuses pseudo-directories (it copies them as keys, with on_error="raise"), so
    # move a tree the way callers do: recursive copy (directory keys' NoSuchKey ignored), then recursive rm
    fs.copy(f"{bucket}/tree/sub", f"{bucket}/moved/sub", recursive=True)
    fs.rm(f"{bucket}/tree/sub", recursive=True)
    assert fs.find(f"{bucket}/moved/sub") == [f"{bucket}/moved/sub/deeper/c.bin"]
    assert not fs.exists(f"{bucket}/tree/sub/deeper/c.bin") and not fs.exists(f"{bucket}/tree/sub")
    fs.copy(f"{bucket}/single.txt", f"{bucket}/copied.txt")
    assert fs.cat(f"{bucket}/copied.txt") == b"alpha"

    fs.rm(f"{bucket}/tree", recursive=True)  # DeleteObjects, without Content-MD5
    assert not fs.exists(f"{bucket}/tree")
    assert sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]) == [
        "copied.txt", "moved/b.bin", "moved/sub/deeper/c.bin", "single.txt"]

    # makedirs under a bucket is a no-op (S3 has no directories); at bucket level it creates the bucket
    fs.makedirs(f"{bucket}/made/dirs", exist_ok=True)
    new_bucket = f"{bucket}-mk"[:63]
    fs.makedirs(new_bucket, exist_ok=True)
    assert new_bucket in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    fs.pipe(f"{new_bucket}/x", b"1")
    fs.rm(f"{new_bucket}/x")
    fs.rmdir(new_bucket)
    assert new_bucket not in [b["Name"] for b in s3.list_buckets()["Buckets"]]


def test_url_xattrs_touch_append(atoll, fs, s3, bucket):
    fs.pipe(f"{bucket}/x/a.txt", b"hello")
    url = fs.url(f"{bucket}/x/a.txt", expires=300)  # botocore's default for S3 presigning: SigV2 query auth
    assert "AWSAccessKeyId=" in url
    with urllib.request.urlopen(url, timeout=30) as r:
        assert r.read() == b"hello"
    v4 = s3fs.S3FileSystem(key=atoll.access_key, secret=atoll.secret_key, skip_instance_cache=True,
                           client_kwargs={"endpoint_url": atoll.endpoint, "region_name": "us-east-1"},
                           config_kwargs={"signature_version": "s3v4"})
    url = v4.url(f"{bucket}/x/a.txt", expires=300)
    assert "X-Amz-Signature=" in url
    with urllib.request.urlopen(url, timeout=30) as r:
        assert r.read() == b"hello"

    fs.setxattr(f"{bucket}/x/a.txt", purpose="test")  # CopyObject onto itself with REPLACE
    assert fs.getxattr(f"{bucket}/x/a.txt", "purpose") == "test" and fs.cat(f"{bucket}/x/a.txt") == b"hello"
    fs.touch(f"{bucket}/x/empty")
    assert fs.info(f"{bucket}/x/empty")["size"] == 0 and fs.cat(f"{bucket}/x/empty") == b""

    with fs.open(f"{bucket}/x/a.txt", "ab") as f:  # small: s3fs reads the old object and rewrites it
        f.write(b" world")
    assert fs.cat(f"{bucket}/x/a.txt") == b"hello world"
    big = os.urandom(6 * MiB)
    fs.pipe(f"{bucket}/x/big", big)
    with fs.open(f"{bucket}/x/big", "ab") as f:  # >= 5 MiB: UploadPartCopy of the old object as part 1
        f.write(b"appended")
    assert fs.cat(f"{bucket}/x/big") == big + b"appended"
    assert s3.head_object(Bucket=bucket, Key="x/big")["ETag"].endswith('-2"')


def test_dcp_like_checkpoint_shards_then_metadata(fs, bucket):
    """What torch.distributed.checkpoint's FsspecWriter/Reader do, without torch: makedirs, every rank writes
    its shard file through fs.open in threads, the coordinator writes .metadata to a temporary name and renames
    it into place last; loading checks .metadata exists, then reads tensors with ranged reads."""
    root = f"{bucket}/checkpoints/step-100"
    fs.makedirs(root, exist_ok=True)
    shards = {f"__{rank}_0.distcp": [os.urandom(300_000 + 4099 * rank + 17 * t) for t in range(3)]
              for rank in range(8)}
    shards["__7_0.distcp"].append(os.urandom(6 * MiB))  # one shard big enough to go multipart

    def write_shard(name: str) -> dict:
        index, offset = {}, 0
        with fs.open(f"{root}/{name}", "wb", block_size=5 * MiB) as f:
            for t, tensor in enumerate(shards[name]):
                f.write(tensor)
                index[f"{name}/tensor{t}"] = (name, offset, len(tensor), hashlib.sha256(tensor).hexdigest())
                offset += len(tensor)
        return index

    assert not fs.exists(f"{root}/.metadata")
    with ThreadPoolExecutor(4) as pool:
        indexes = list(pool.map(write_shard, shards))
    metadata = {k: v for index in indexes for k, v in index.items()}
    with fs.open(f"{root}/.metadata.tmp", "wb") as f:
        f.write(pickle.dumps(metadata))
    fs.mv(f"{root}/.metadata.tmp", f"{root}/.metadata")
    fs.invalidate_cache()

    assert fs.exists(f"{root}/.metadata") and not fs.exists(f"{root}/.metadata.tmp")
    assert sorted(fs.ls(root)) == sorted(f"{root}/{n}" for n in [*shards, ".metadata"])
    with fs.open(f"{root}/.metadata", "rb") as f:
        loaded = pickle.loads(f.read())
    assert loaded == metadata
    for name, offset, length, digest in loaded.values():
        with fs.open(f"{root}/{name}", "rb") as f:
            f.seek(offset)
            assert hashlib.sha256(f.read(length)).hexdigest() == digest
    fs.rm(root, recursive=True)
    assert fs.find(f"{bucket}/checkpoints") == []
