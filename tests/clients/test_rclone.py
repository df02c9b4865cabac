"""rclone (the Debian package, aws-sdk-go underneath) against a live Atoll: copy up with multipart, ``check``,
``lsf``, ranged ``cat``, ``delete``, ``sync`` with deletions, copy down, and the server-side verbs (multipart
copy, ``link`` presigned URLs, ``touch``, ``moveto``, ``purge``).

rclone is configured purely through RCLONE_CONFIG_ATOLL_* environment variables (an empty config file, HOME in a
temporary directory). ``rclone check`` compares sizes and MD5s: the ETag of a single-part object, and for a
multipart object the X-Amz-Meta-Md5chksum metadata rclone stores on upload — so both must round-trip exactly.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest

MiB = 1 << 20


@pytest.fixture(scope="module")
def rclone(atoll, tmp_path_factory):
    binary = shutil.which("rclone")
    if binary is None:
        repo = Path(__file__).resolve().parents[2]
        subprocess.run(["bash", str(repo / "scripts" / "apt-install.sh"), "rclone"], check=True, timeout=600)
        binary = shutil.which("rclone")
    assert binary, "rclone is not installed and scripts/apt-install.sh could not install it"
    home = tmp_path_factory.mktemp("rclone-home")
    (home / "rclone.conf").write_text("")
    # no inherited RCLONE_*/AWS_* either: rclone's aws-sdk-go reads AWS_CA_BUNDLE, for instance, and then refuses
    # to build its HTTP transport at all ("LoadCustomCABundleError: unsupported transport")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RCLONE_", "AWS_"))}
    env.update(HOME=str(home), RCLONE_CONFIG=str(home / "rclone.conf"), RCLONE_CONFIG_ATOLL_TYPE="s3",
               RCLONE_CONFIG_ATOLL_PROVIDER="Other", RCLONE_CONFIG_ATOLL_ENDPOINT=atoll.endpoint,
               RCLONE_CONFIG_ATOLL_ACCESS_KEY_ID=atoll.access_key,
               RCLONE_CONFIG_ATOLL_SECRET_ACCESS_KEY=atoll.secret_key, RCLONE_CONFIG_ATOLL_REGION="us-east-1",
               RCLONE_CONFIG_ATOLL_FORCE_PATH_STYLE="true")

    def run(*args: str, timeout: float = 180, check: bool = True) -> subprocess.CompletedProcess:
        """Run rclone; stdout stays bytes (``cat`` output), stderr is text."""
        done = subprocess.run([binary, *args, "--retries", "1", "--low-level-retries", "2"], env=env,
                              capture_output=True, timeout=timeout)
        done.stderr = done.stderr.decode(errors="replace")
        if check:
            assert done.returncode == 0, f"rclone {' '.join(args)} exited {done.returncode}:\n{done.stderr[-3000:]}"
        return done

    def lines(*args: str) -> list[str]:
        return run(*args).stdout.decode().splitlines()

    run.lines = lines
    return run


def make_tree(root: Path, files: dict[str, bytes]) -> None:
    for name, body in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(body)


def digests(root: Path) -> dict[str, str]:
    out = {}
    for path in root.rglob("*"):
        if path.is_file():
            h = hashlib.sha256()
            with open(path, "rb") as f:
                while block := f.read(8 * MiB):
                    h.update(block)
            out[path.relative_to(root).as_posix()] = h.hexdigest()
    return out


def test_copy_multipart_check_lsf_cat_and_copy_down(rclone, s3, bucket, tmp_path):
    src = tmp_path / "src"
    block = os.urandom(MiB)
    big = b"".join(i.to_bytes(4, "big") + block[4:] for i in range(105)) + b"tail"
    files = {"big/model.safetensors": big, "a.txt": b"alpha\n", "nested/dir/b.bin": os.urandom(70_000),
             "ünï cödé/c d.txt": b"spaces and unicode", "empty": b""}
    make_tree(src, files)
    remote = f"atoll:{bucket}/tree"
    rclone("copy", str(src), remote, "--s3-upload-cutoff", "16M", "--s3-chunk-size", "16M",
           "--s3-upload-concurrency", "4", "--transfers", "4", timeout=240)

    head = s3.head_object(Bucket=bucket, Key="tree/big/model.safetensors")
    assert head["ContentLength"] == len(big)
    assert head["ETag"].endswith('-7"')  # 105 MiB + 4 bytes in 16 MiB parts: it went multipart
    assert head["Metadata"].get("md5chksum")  # rclone's own MD5 for multipart objects, read back by check

    check = rclone("check", str(src), remote, "--one-way", check=False)
    assert check.returncode == 0, check.stderr[-3000:]
    assert "0 differences found" in check.stderr

    listed = rclone.lines("lsf", "-R", "--files-only", remote)
    assert sorted(listed) == sorted(files)
    top = rclone.lines("lsf", remote)
    assert sorted(top) == sorted(["a.txt", "big/", "empty", "nested/", "ünï cödé/"])
    sizes = rclone.lines("lsf", "-R", "--files-only", "--format", "ps", remote)
    assert f"big/model.safetensors;{len(big)}" in sizes

    cat = rclone("cat", f"{remote}/big/model.safetensors", "--offset", str(50 * MiB - 3),
                           "--count", "10").stdout
    assert cat == big[50 * MiB - 3:50 * MiB + 7]
    tail = rclone("cat", f"{remote}/big/model.safetensors", "--offset", "-4").stdout
    assert tail == b"tail"
    assert rclone("cat", f"{remote}/a.txt").stdout == b"alpha\n"

    md5s = dict(reversed(line.split("  ", 1)) for line in rclone.lines("md5sum", remote))
    assert md5s["big/model.safetensors"] == hashlib.md5(big).hexdigest()
    assert md5s["nested/dir/b.bin"] == hashlib.md5(files["nested/dir/b.bin"]).hexdigest()

    down = tmp_path / "down"
    rclone("copy", remote, str(down), "--multi-thread-streams", "4", "--multi-thread-cutoff", "32M", timeout=240)
    assert digests(down) == digests(src)


def test_delete_and_sync_with_deletions(rclone, s3, bucket, tmp_path):
    src = tmp_path / "src"
    files = {f"shard-{i % 4}/part-{i:03d}.bin": os.urandom(1000 + i) for i in range(40)}
    files.update({f"logs/run-{i}.log": f"log {i}".encode() for i in range(5)})
    make_tree(src, files)
    remote = f"atoll:{bucket}/data"
    rclone("copy", str(src), remote, "--transfers", "8")
    assert s3.list_objects_v2(Bucket=bucket, Prefix="data/")["KeyCount"] == 45

    rclone("delete", remote, "--include", "*.log")
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="data/")["Contents"]}
    assert keys == {f"data/{name}" for name in files if not name.endswith(".log")}

    for i in range(0, 40, 5):
        (src / f"shard-{i % 4}/part-{i:03d}.bin").unlink()
    (src / "shard-1/part-001.bin").write_bytes(b"rewritten with different content")
    (src / "new/added.txt").parent.mkdir()
    (src / "new/added.txt").write_bytes(b"new file")
    shutil.rmtree(src / "logs")
    rclone("sync", str(src), remote, "--transfers", "8")
    remote_keys = sorted(o["Key"][5:] for o in s3.list_objects_v2(Bucket=bucket, Prefix="data/")["Contents"])
    assert remote_keys == sorted(digests(src))
    assert s3.get_object(Bucket=bucket, Key="data/shard-1/part-001.bin")["Body"].read() == \
        b"rewritten with different content"
    check = rclone("check", str(src), remote, check=False)
    assert check.returncode == 0 and "0 differences found" in check.stderr, check.stderr[-3000:]

    # and check really compares content: change one object behind rclone's back
    s3.put_object(Bucket=bucket, Key="data/new/added.txt", Body=b"new filf")
    check = rclone("check", str(src), remote, check=False)
    assert check.returncode != 0 and "1 differences found" in check.stderr, check.stderr[-3000:]


def test_server_side_copy_link_touch_moveto_purge(rclone, s3, bucket, tmp_path):
    data = os.urandom(20 * MiB + 3)
    (tmp_path / "obj.bin").write_bytes(data)
    remote = f"atoll:{bucket}/ops"
    # uploaded multipart, so rclone stores its MD5 as X-Amz-Meta-Md5chksum; the copy must carry it over
    rclone("copyto", str(tmp_path / "obj.bin"), f"{remote}/obj.bin", "--s3-upload-cutoff", "8M",
           "--s3-chunk-size", "8M")
    # above --s3-copy-cutoff rclone copies server-side in parts: UploadPartCopy with byte ranges
    copied = rclone("copyto", f"{remote}/obj.bin", f"{remote}/copy.bin", "--s3-copy-cutoff", "8M", "-v")
    assert "server-side copy" in copied.stderr
    head = s3.head_object(Bucket=bucket, Key="ops/copy.bin")
    assert head["ContentLength"] == len(data) and head["ETag"].endswith('-3"')
    assert s3.get_object(Bucket=bucket, Key="ops/copy.bin")["Body"].read() == data
    md5s = dict(reversed(line.split("  ", 1)) for line in rclone.lines("md5sum", remote))
    assert md5s == {"obj.bin": hashlib.md5(data).hexdigest(), "copy.bin": hashlib.md5(data).hexdigest()}

    url = rclone.lines("link", f"{remote}/obj.bin", "--expire", "1h")[-1]
    assert "X-Amz-Signature=" in url
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Range": "bytes=0-99"}), timeout=30) as r:
        assert r.status == 206 and r.read() == data[:100]

    rclone("touch", f"{remote}/obj.bin", "-t", "2020-01-02T03:04:05")  # CopyObject onto itself, REPLACE
    listed = rclone.lines("lsl", remote)
    assert any(line.split()[1:3] == ["2020-01-02", "03:04:05.000000000"] and line.endswith(" obj.bin")
               for line in listed), listed
    assert s3.get_object(Bucket=bucket, Key="ops/obj.bin")["Body"].read() == data

    rclone("moveto", f"{remote}/copy.bin", f"{remote}/moved/copy.bin")
    assert sorted(rclone.lines("lsf", "-R", "--files-only", remote)) == ["moved/copy.bin", "obj.bin"]
    rclone("purge", remote)
    assert s3.list_objects_v2(Bucket=bucket, Prefix="ops/")["KeyCount"] == 0
