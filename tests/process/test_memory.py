"""No object is ever held whole in memory: a 5 GiB PUT and a 5 GiB GET each grow the serving process's resident
memory by at most 64 MiB over its baseline, and so does a 1 GiB multipart upload sending 8 parts at once.

Bodies are streamed by plain http.client to presigned SigV4 URLs from a generator (nothing is ever whole in the
test either); the client computes the MD5 while sending and compares it with the ETag, and checks every byte it
reads back. RSS is sampled from /proc/<pid>/status every 100 ms while the transfer runs.
"""

from __future__ import annotations

import hashlib
import http.client
import queue
import random
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest

GiB = 1 << 30
MiB = 1 << 20
BLOCK = MiB
RSS_GROWTH_LIMIT = 64 * MiB
FREE_DISK_NEEDED = 12 * 10**9
_BASE = random.Random(1).randbytes(BLOCK)


def block(stream: int, index: int) -> bytes:
    """Block ``index`` of stream ``stream``: a shared random MiB stamped with both numbers, so any misplaced,
    repeated or foreign block is caught by a byte comparison (cheap, unlike hashing 5 GiB twice)."""
    stamp = f"{stream:04d}:{index:010d};".encode()
    return stamp + _BASE[len(stamp):]


def blocks(stream: int, size: int):
    for index in range((size + BLOCK - 1) // BLOCK):
        data = block(stream, index)
        yield data if (index + 1) * BLOCK <= size else data[: size - index * BLOCK]


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0
        self.samples = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, rss(self.pid))
            self.samples += 1
            self._done.wait(0.1)

    def __enter__(self) -> "RssSampler":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self.join(5)
        self.peak = max(self.peak, rss(self.pid))


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def baseline(pid: int) -> int:
    """RSS of the idle process: the highest of a few samples once the previous transfer has settled."""
    samples = []
    for _ in range(5):
        time.sleep(0.1)
        samples.append(rss(pid))
    return max(samples)


def presigned(server, method: str, **params) -> str:
    client = server.client(signature_version="s3v4")
    url = client.generate_presigned_url(method, Params=params, ExpiresIn=3600)
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def stream_put(port: int, path: str, stream: int, size: int) -> tuple[int, str, str]:
    """PUT ``size`` bytes of ``stream`` with a Content-Length; returns (status, ETag, MD5 of what was sent)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        conn.putrequest("PUT", path, skip_accept_encoding=True)
        conn.putheader("Content-Length", str(size))
        conn.endheaders()
        with Md5Thread() as md5:
            for data in blocks(stream, size):
                md5.feed(data)
                conn.send(data)
        response = conn.getresponse()
        body = response.read()
        assert response.status == 200, body[:500]
        return response.status, (response.getheader("ETag") or "").strip('"'), md5.hexdigest
    finally:
        conn.close()


class Md5Thread(threading.Thread):
    """Hashes what is sent on another core (hashlib releases the GIL), a few MiB behind the sender, so the
    client's MD5 does not halve its sending rate."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.inbox: queue.Queue = queue.Queue(maxsize=8)
        self.hexdigest = ""

    def run(self) -> None:
        md5 = hashlib.md5()
        for data in iter(self.inbox.get, None):
            md5.update(data)
        self.hexdigest = md5.hexdigest()

    def feed(self, data: bytes) -> None:
        self.inbox.put(data)

    def __enter__(self) -> "Md5Thread":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.inbox.put(None)
        self.join(60)


def stream_get_check(port: int, path: str, expected: list[tuple[int, int]]) -> int:
    """GET and compare every byte with the concatenation of ``expected`` (stream, size) pieces, keeping at most a
    MiB in hand. Returns the number of bytes read."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        assert response.status == 200, response.read()[:500]
        total = sum(size for _, size in expected)
        assert int(response.getheader("Content-Length")) == total
        received = 0
        for stream, size in expected:
            for want in blocks(stream, size):
                got = response.read(len(want))
                while len(got) < len(want):
                    more = response.read(len(want) - len(got))
                    assert more, f"body ended at {received + len(got)} of {total} bytes"
                    got += more
                assert got == want, f"wrong bytes in the MiB at offset {received}"
                received += len(got)
        assert response.read(1) == b""
        return received
    finally:
        conn.close()


def check_free_disk(path: str) -> None:
    free = shutil.disk_usage(path).free
    if free < FREE_DISK_NEEDED:
        pytest.fail(f"test_memory needs {FREE_DISK_NEEDED / 1e9:.0f} GB free under {path} for a 5 GiB object and a "
                    f"1 GiB one; only {free / 1e9:.1f} GB are free. Free some space or point ATOLL_TEST_TMP elsewhere.")


@pytest.mark.serial  # 6 GiB of disk traffic and an RSS ceiling: neither should share the machine
@pytest.mark.timeout(300)
def test_huge_put_get_and_parallel_multipart_stay_in_bounded_memory(new_server, workdir):
    check_free_disk(workdir)
    server = new_server()
    pid = server.proc.pid  # one worker: the process we started is the one serving
    s3 = server.client()
    s3.create_bucket(Bucket="mem")
    # Warm up the code paths (imports, thread pools) with a small object, so the baseline is a serving process.
    small = 8 * MiB
    _, etag, md5 = stream_put(server.port, presigned(server, "put_object", Bucket="mem", Key="warm"), 9, small)
    assert etag == md5
    stream_get_check(server.port, presigned(server, "get_object", Bucket="mem", Key="warm"), [(9, small)])
    report = []
    try:
        # 5 GiB PUT, from a generator.
        size = 5 * GiB
        base = baseline(pid)
        started = time.monotonic()
        with RssSampler(pid) as sampler:
            _, etag, md5 = stream_put(server.port, presigned(server, "put_object", Bucket="mem", Key="huge"), 1, size)
        report.append(f"PUT 5 GiB: {time.monotonic() - started:.1f}s, RSS {base / MiB:.0f} -> peak "
                      f"{sampler.peak / MiB:.0f} MiB over {sampler.samples} samples")
        assert etag == md5, "the ETag of the 5 GiB PUT is not the MD5 of what was sent"
        assert sampler.samples >= 10
        assert sampler.peak - base <= RSS_GROWTH_LIMIT, report[-1]
        assert s3.head_object(Bucket="mem", Key="huge")["ContentLength"] == size

        # 5 GiB GET, every byte checked.
        base = baseline(pid)
        started = time.monotonic()
        with RssSampler(pid) as sampler:
            got = stream_get_check(server.port, presigned(server, "get_object", Bucket="mem", Key="huge"),
                                   [(1, size)])
        report.append(f"GET 5 GiB: {time.monotonic() - started:.1f}s, RSS {base / MiB:.0f} -> peak "
                      f"{sampler.peak / MiB:.0f} MiB")
        assert got == size
        assert sampler.peak - base <= RSS_GROWTH_LIMIT, report[-1]
        s3.delete_object(Bucket="mem", Key="huge")

        # 1 GiB multipart upload, 8 parts of 128 MiB sent at the same time.
        parts = 8
        part_size = GiB // parts
        upload_id = s3.create_multipart_upload(Bucket="mem", Key="multi")["UploadId"]
        paths = [presigned(server, "upload_part", Bucket="mem", Key="multi", UploadId=upload_id, PartNumber=n)
                 for n in range(1, parts + 1)]
        base = baseline(pid)
        started = time.monotonic()
        with RssSampler(pid) as sampler, ThreadPoolExecutor(parts) as pool:
            results = list(pool.map(lambda n: stream_put(server.port, paths[n], 100 + n, part_size), range(parts)))
        report.append(f"multipart 8 x 128 MiB in parallel: {time.monotonic() - started:.1f}s, RSS "
                      f"{base / MiB:.0f} -> peak {sampler.peak / MiB:.0f} MiB")
        for n, (_, etag, md5) in enumerate(results):
            assert etag == md5, f"part {n + 1}: ETag {etag} is not the MD5 of what was sent ({md5})"
        assert sampler.peak - base <= RSS_GROWTH_LIMIT, report[-1]
        done = s3.complete_multipart_upload(
            Bucket="mem", Key="multi", UploadId=upload_id,
            MultipartUpload={"Parts": [{"PartNumber": n + 1, "ETag": f'"{r[1]}"'} for n, r in enumerate(results)]})
        expected_etag = hashlib.md5(b"".join(bytes.fromhex(r[1]) for r in results)).hexdigest() + f"-{parts}"
        assert done["ETag"].strip('"') == expected_etag
        got = stream_get_check(server.port, presigned(server, "get_object", Bucket="mem", Key="multi"),
                               [(100 + n, part_size) for n in range(parts)])
        assert got == GiB
        s3.delete_object(Bucket="mem", Key="multi")
    finally:
        print("\n".join(report))
        # Free the disk now rather than at the end of the session.
        server.kill()
        shutil.rmtree(server.data_dir, ignore_errors=True)
