"""The ``aws`` command (awscli v1 from the venv) against a live Atoll: ``s3 cp`` of 1 GiB up and down, ``s3 sync`` of
a 1,000-file tree, ``s3 ls``/``rm``, and the low-level ``s3api`` multipart flow.

The CLI is configured only through the environment and ``--endpoint-url``; HOME points at an empty temporary
directory so no user configuration or credentials file can leak in.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

AWS = str(Path(sys.executable).parent / "aws")
MiB = 1 << 20


@pytest.fixture(scope="module")
def aws(atoll, tmp_path_factory):
    home = tmp_path_factory.mktemp("aws-home")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(HOME=str(home), AWS_ACCESS_KEY_ID=atoll.access_key, AWS_SECRET_ACCESS_KEY=atoll.secret_key,
               AWS_DEFAULT_REGION="us-east-1", AWS_CONFIG_FILE=str(home / "no-config"),
               AWS_SHARED_CREDENTIALS_FILE=str(home / "no-credentials"), AWS_EC2_METADATA_DISABLED="true",
               AWS_PAGER="")

    def run(*args: str, timeout: float = 120) -> str:
        done = subprocess.run([AWS, "--endpoint-url", atoll.endpoint, *args], env=env, capture_output=True,
                              text=True, timeout=timeout)
        assert done.returncode == 0, f"aws {' '.join(args)} exited {done.returncode}:\n{done.stderr[-3000:]}"
        return done.stdout

    def api(*args: str) -> dict:
        out = run("s3api", *args, "--output", "json")
        return json.loads(out) if out.strip() else {}

    run.api = api
    return run


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(8 * MiB):
            h.update(block)
    return h.hexdigest()


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_cp_one_gib_up_and_down(aws, s3, bucket, tmp_path):
    src, dst = tmp_path / "one-gib.bin", tmp_path / "back.bin"
    block = os.urandom(MiB)
    with open(src, "wb") as f:
        for i in range(1024):  # every MiB differs (a counter), so a misplaced part cannot go unnoticed
            f.write(i.to_bytes(8, "big") + block[8:])
    try:
        aws("s3", "cp", str(src), f"s3://{bucket}/big/one-gib.bin", "--only-show-errors", timeout=240)
        head = s3.head_object(Bucket=bucket, Key="big/one-gib.bin")
        assert head["ContentLength"] == 1 << 30
        assert head["ETag"].endswith('-128"')  # 8 MiB parts
        aws("s3", "cp", f"s3://{bucket}/big/one-gib.bin", str(dst), "--only-show-errors", timeout=240)
        assert dst.stat().st_size == 1 << 30
        assert sha256_file(dst) == sha256_file(src)
    finally:  # 3 GiB between the two files and the object: not left for pytest's retained temp dirs
        src.unlink(missing_ok=True)
        dst.unlink(missing_ok=True)
        s3.delete_object(Bucket=bucket, Key="big/one-gib.bin")


def test_sync_thousand_file_tree_up_again_and_down(aws, s3, bucket, tmp_path):
    src = tmp_path / "src"
    names = []
    for i in range(1000):
        if i % 100 == 7:
            name = f"ünïcödé dir/spaced name {i}.txt"
        elif i % 3 == 0:
            name = f"a/b{i % 4}/c/{i:04d}.bin"
        elif i % 3 == 1:
            name = f"shard-{i % 10}/{i:04d}+plus.bin"
        else:
            name = f"{i:04d}.dat"
        names.append(name)
        path = src / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(i % 700) + name.encode())
    (src / "empty-file").write_bytes(b"")
    names.append("empty-file")
    prefix = f"s3://{bucket}/tree"

    out = aws("s3", "sync", str(src), prefix, timeout=180)
    assert out.count("upload: ") == 1001
    listed = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="tree/")
    keys = sorted(o["Key"] for page in listed for o in page.get("Contents", []))
    assert keys == sorted(f"tree/{n}" for n in names)

    again = aws("s3", "sync", str(src), prefix, timeout=120)
    assert "upload:" not in again, again[:2000]

    (src / "0002.dat").write_bytes(b"changed, and longer than before")
    changed = aws("s3", "sync", str(src), prefix, timeout=120)
    assert changed.count("upload: ") == 1 and "0002.dat" in changed

    dst = tmp_path / "dst"
    down = aws("s3", "sync", prefix, str(dst), "--only-show-errors", timeout=180)
    assert down == ""
    assert tree(dst) == tree(src)

    gone = names[:1000:97]
    for name in gone:
        (src / name).unlink()
    deleted = aws("s3", "sync", str(src), prefix, "--delete", timeout=120)
    assert deleted.count("delete: ") == len(gone) and "upload:" not in deleted
    listed = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="tree/")
    assert sorted(o["Key"] for page in listed for o in page.get("Contents", [])) == sorted(
        f"tree/{n}" for n in names if n not in gone)


def test_ls_and_rm_recursive(aws, s3, bucket):
    for key in ("top.txt", "dir/one.txt", "dir/two.txt", "dir/sub/three.txt", "other dir/four.txt"):
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    buckets = aws("s3", "ls")
    assert bucket in buckets.split()

    top = aws("s3", "ls", f"s3://{bucket}/")
    prefixes = sorted(line.strip()[4:] for line in top.splitlines() if line.strip().startswith("PRE "))
    objects = [line.split(None, 3) for line in top.splitlines() if not line.strip().startswith("PRE ")]
    assert prefixes == ["dir/", "other dir/"]
    assert [(size, name) for _, _, size, name in objects] == [(str(len(b"top.txt")), "top.txt")]

    recursive = aws("s3", "ls", f"s3://{bucket}/", "--recursive")
    assert sorted(line.split(None, 3)[3] for line in recursive.splitlines()) == [
        "dir/one.txt", "dir/sub/three.txt", "dir/two.txt", "other dir/four.txt", "top.txt"]
    under = aws("s3", "ls", f"s3://{bucket}/dir/")
    assert sorted(line.strip().split(None, 3)[-1] for line in under.splitlines()) == ["one.txt", "sub/", "two.txt"]

    removed = aws("s3", "rm", f"s3://{bucket}/dir/", "--recursive")
    assert removed.count("delete: ") == 3
    remaining = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"])
    assert remaining == ["other dir/four.txt", "top.txt"]
    aws("s3", "rb", f"s3://{bucket}", "--force")  # removes the rest, then the bucket
    assert [b["Name"] for b in s3.list_buckets()["Buckets"] if b["Name"] == bucket] == []


def test_s3api_object_and_multipart_flows(aws, s3, bucket, tmp_path):
    small = tmp_path / "small.txt"
    small.write_bytes(b"hello from s3api\n")
    put = aws.api("put-object", "--bucket", bucket, "--key", "api/small.txt", "--body", str(small),
                  "--content-type", "text/plain", "--metadata", "purpose=test")
    assert put["ETag"] == f'"{hashlib.md5(small.read_bytes()).hexdigest()}"'
    head = aws.api("head-object", "--bucket", bucket, "--key", "api/small.txt")
    assert head["ContentLength"] == small.stat().st_size and head["ETag"] == put["ETag"]
    assert head["ContentType"] == "text/plain" and head["Metadata"] == {"purpose": "test"}

    part_files = []
    for n, size in ((1, 5 * MiB), (2, 1234)):
        path = tmp_path / f"part{n}"
        path.write_bytes(os.urandom(size))
        part_files.append(path)
    upload_id = aws.api("create-multipart-upload", "--bucket", bucket, "--key", "api/mp.bin")["UploadId"]
    etags = []
    for n, path in enumerate(part_files, 1):
        etags.append(aws.api("upload-part", "--bucket", bucket, "--key", "api/mp.bin", "--upload-id", upload_id,
                             "--part-number", str(n), "--body", str(path))["ETag"])
    assert etags == [f'"{hashlib.md5(p.read_bytes()).hexdigest()}"' for p in part_files]
    parts = aws.api("list-parts", "--bucket", bucket, "--key", "api/mp.bin", "--upload-id", upload_id)["Parts"]
    assert [(p["PartNumber"], p["ETag"], p["Size"]) for p in parts] == [
        (n, e, p.stat().st_size) for n, (e, p) in enumerate(zip(etags, part_files), 1)]
    layout = tmp_path / "parts.json"
    layout.write_text(json.dumps({"Parts": [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, 1)]}))
    done = aws.api("complete-multipart-upload", "--bucket", bucket, "--key", "api/mp.bin", "--upload-id",
                   upload_id, "--multipart-upload", f"file://{layout}")
    joined = hashlib.md5(b"".join(bytes.fromhex(e.strip('"')) for e in etags)).hexdigest()
    assert done["ETag"] == f'"{joined}-2"' and done["Key"] == "api/mp.bin"
    whole = b"".join(p.read_bytes() for p in part_files)
    ranged = aws.api("get-object", "--bucket", bucket, "--key", "api/mp.bin", "--range", "bytes=5242870-5242889",
                     str(tmp_path / "range.out"))
    assert ranged["ContentRange"] == f"bytes 5242870-5242889/{len(whole)}" and ranged["ETag"] == done["ETag"]
    assert (tmp_path / "range.out").read_bytes() == whole[5242870:5242890]
    assert s3.get_object(Bucket=bucket, Key="api/mp.bin")["Body"].read() == whole

    aborted = aws.api("create-multipart-upload", "--bucket", bucket, "--key", "api/aborted.bin")["UploadId"]
    s3.upload_part(Bucket=bucket, Key="api/aborted.bin", UploadId=aborted, PartNumber=1, Body=b"x")
    assert [u["UploadId"] for u in aws.api("list-multipart-uploads", "--bucket", bucket)["Uploads"]] == [aborted]
    aws.api("abort-multipart-upload", "--bucket", bucket, "--key", "api/aborted.bin", "--upload-id", aborted)
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []

    listing = aws.api("list-objects-v2", "--bucket", bucket, "--prefix", "api/")
    assert [(o["Key"], o["Size"], o["ETag"]) for o in listing["Contents"]] == [
        ("api/mp.bin", len(whole), done["ETag"]), ("api/small.txt", small.stat().st_size, put["ETag"])]
