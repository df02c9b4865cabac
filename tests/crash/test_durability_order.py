"""The durable write order, checked on the system calls of a live server (strace), since SIGKILL cannot show it
(the page cache survives a killed process; only a power loss drops what was not fsynced):

    body -> temp file, fsync -> rename into blobs/ -> fsync the directory -> metadata commit (WAL fsync)
         -> acknowledge

and for a small object packed into a segment file (#8):

    body -> pwritev into segments/<id> -> fdatasync of that segment -> metadata commit (WAL fsync) -> acknowledge

For every write the test finds the response that acknowledged it and checks that each step completed, in that
order, before it; for metadata-only writes (delete, multipart complete) that the WAL was synced before the reply.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TRACED = "openat,mkdir,write,writev,pwritev,pwritev2,pwrite64,sendto,sendmsg,fsync,fdatasync,rename,renameat,renameat2"


@pytest.fixture(scope="module")
def strace() -> str:
    subprocess.run(["bash", str(REPO / "scripts" / "apt-install.sh"), "strace"], check=True, timeout=600)
    return "strace"


@dataclass
class Call:
    index: int
    name: str
    args: str


def parse(text: str) -> list[Call]:
    """Completed system calls in completion order; an interrupted call (``<unfinished ...>``) counts where it
    resumed, with the arguments printed when it started."""
    pending: dict[str, str] = {}
    calls: list[Call] = []
    for line in text.splitlines():
        # strace pads the thread id to a fixed width ("4348  write(..."), so split on any run of spaces.
        tid, _, rest = line.partition(" ")
        rest = rest.lstrip(" ")
        if rest.endswith("<unfinished ...>"):
            pending[tid] = rest[: -len("<unfinished ...>")]
            continue
        resumed = re.match(r"<\.\.\. \w+ resumed>(.*)", rest)
        if resumed:
            rest = pending.pop(tid, "?(") + resumed.group(1)
        name = rest.partition("(")[0]
        calls.append(Call(len(calls), name, rest[len(name):]))
    return calls


def fd_path(call: Call) -> str:
    match = re.match(r"\(\d+<([^>]*)>", call.args)
    return match.group(1) if match else ""


class Trace:
    def __init__(self, calls: list[Call], data_dir: str) -> None:
        self.calls = calls
        self.root = os.path.realpath(data_dir)
        # A final status line, possibly in the same buffer as an earlier "100 Continue" (a transport that could
        # not write at once coalesces them).
        self.responses = [c for c in calls if c.name in ("write", "writev", "sendto", "sendmsg")
                          and "<TCP:" in c.args and re.search(r"HTTP/1\.1 [2-5]\d\d", c.args)]

    def window(self, n: int) -> list[Call]:
        """The calls made while the n-th response was being prepared (after the previous one was sent)."""
        start = self.responses[n - 1].index + 1 if n else 0
        return self.calls[start: self.responses[n].index]

    def syncs_of(self, path: str, calls: list[Call]) -> list[int]:
        return [c.index for c in calls if c.name in ("fsync", "fdatasync") and fd_path(c) == path]

    def check_blob_writes(self, n: int, expected_blobs: int) -> list[str]:
        problems = []
        window = self.window(n)
        response = self.responses[n]
        renames = [c for c in window if c.name.startswith("rename") and "/tmp/" in c.args and "/blobs/" in c.args]
        if len(renames) != expected_blobs:
            return [f"response {n}: {len(renames)} blobs renamed into place, expected {expected_blobs}"]
        wal = f"{self.root}/meta.sqlite3-wal"
        for rename in renames:
            tmp, final = re.findall(r'"([^"]+)"', rename.args)[:2]
            writes = [c.index for c in window if c.name in ("write", "writev") and fd_path(c) == tmp]
            synced = [i for i in self.syncs_of(tmp, window) if i < rename.index]
            if not synced or (writes and max(writes) > max(synced)):
                problems.append(f"response {n}: {final} renamed into place before its content was fsynced")
            directory = os.path.dirname(final)
            made = [c.index for c in window if c.name == "mkdir" and f'"{directory}"' in c.args]
            if made and not [i for i in self.syncs_of(os.path.dirname(directory), window) if made[0] < i < rename.index]:
                problems.append(f"response {n}: new directory {directory} not made durable before its first blob")
            dir_synced = [i for i in self.syncs_of(directory, window) if i > rename.index]
            if not dir_synced:
                problems.append(f"response {n}: the rename of {final} was acknowledged without an fsync of "
                                f"{directory}")
                continue
            if not [i for i in self.syncs_of(wal, window) if i > min(dir_synced)]:
                problems.append(f"response {n}: acknowledged without a metadata commit (WAL sync) after the blob "
                                f"{final} was durable")
        if not re.search(r"HTTP/1\.1 2\d\d", response.args):
            problems.append(f"response {n} is not a success: {response.args[:60]}")
        return problems

    def check_packed_write(self, n: int) -> list[str]:
        """A small object appended to a segment: its record written, the segment fdatasync'ed after that write,
        then the WAL synced, all before the response."""
        window = self.window(n)
        segments = f"{self.root}/segments/"
        writes = [c for c in window if c.name in ("pwritev", "pwritev2", "pwrite64") and fd_path(c).startswith(segments)]
        if not writes:
            return [f"response {n}: no record written to a segment file"]
        problems = []
        last = writes[-1]
        synced = [i for i in self.syncs_of(fd_path(last), window) if i > last.index]
        if not synced:
            return [f"response {n}: acknowledged before the segment {fd_path(last)} was synced after its record"]
        if not [i for i in self.syncs_of(f"{self.root}/meta.sqlite3-wal", window) if i > min(synced)]:
            problems.append(f"response {n}: acknowledged without a metadata commit (WAL sync) after the record "
                            "was durable")
        if not re.search(r"HTTP/1\.1 2\d\d", self.responses[n].args):
            problems.append(f"response {n} is not a success: {self.responses[n].args[:60]}")
        return problems

    def check_metadata_write(self, n: int) -> list[str]:
        if not self.syncs_of(f"{self.root}/meta.sqlite3-wal", self.window(n)):
            return [f"response {n} ({self.responses[n].args[:40]}) acknowledged a write without a WAL sync"]
        return []


def _thread_statuses(pid: int) -> list[str]:
    statuses = []
    for thread in os.listdir(f"/proc/{pid}/task"):
        try:
            statuses.append(Path(f"/proc/{pid}/task/{thread}/status").read_text())
        except (FileNotFoundError, ProcessLookupError):
            pass  # a thread that just ended
    return statuses


def attach(strace: str, pid: int, out: str) -> subprocess.Popen:
    tracer = subprocess.Popen([strace, "-f", "-qq", "-yy", "-s", "64", "-e", f"trace={TRACED}", "-o", out,
                               "-p", str(pid)], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if all(re.search(r"TracerPid:\s+[1-9]", s) for s in _thread_statuses(pid)):
            return tracer
        assert tracer.poll() is None, f"strace could not attach: {tracer.stderr.read().decode()[-500:]}"
        time.sleep(0.05)
    raise AssertionError("strace did not attach to every thread of the server")


@pytest.mark.timeout(120)
def test_every_acknowledged_write_is_durable_first(new_server, strace, tmp_path):
    server = new_server(extra_env={"ATOLL_MIN_PART_SIZE": str(64 << 10)})
    s3 = server.client(max_pool_connections=1)
    s3.create_bucket(Bucket="order")
    s3.put_object(Bucket="order", Key="warm-up", Body=b"x")
    out = str(tmp_path / "strace.txt")
    tracer = attach(strace, server.proc.pid, out)
    expected = []  # per response, in order: ("blobs", count), ("packed", 1) or ("meta", 0)
    try:
        s3.put_object(Bucket="order", Key="small", Body=b"hello")
        expected.append(("packed", 1))
        s3.put_object(Bucket="order", Key="empty", Body=b"")
        expected.append(("packed", 1))
        s3.put_object(Bucket="order", Key="large", Body=os.urandom(3 << 20))  # through the two-thread pipeline
        expected.append(("blobs", 1))
        s3.put_object(Bucket="order", Key="small", Body=b"overwritten")
        expected.append(("packed", 1))
        s3.put_object(Bucket="order", Key="mid", Body=os.urandom(300 << 10))  # above packed_max_size: a file
        expected.append(("blobs", 1))
        upload = s3.create_multipart_upload(Bucket="order", Key="multi")["UploadId"]
        expected.append(("meta", 0))
        parts = []
        for number, size in ((1, 64 << 10), (2, 300 << 10)):
            reply = s3.upload_part(Bucket="order", Key="multi", UploadId=upload, PartNumber=number,
                                   Body=os.urandom(size))
            parts.append({"PartNumber": number, "ETag": reply["ETag"]})
            expected.append(("blobs", 1))
        s3.complete_multipart_upload(Bucket="order", Key="multi", UploadId=upload, MultipartUpload={"Parts": parts})
        expected.append(("meta", 0))
        s3.copy_object(Bucket="order", Key="copy", CopySource={"Bucket": "order", "Key": "large"})
        expected.append(("blobs", 1))
        s3.delete_object(Bucket="order", Key="small")
        expected.append(("meta", 0))
        s3.delete_objects(Bucket="order", Delete={"Objects": [{"Key": "empty"}, {"Key": "copy"}]})
        expected.append(("meta", 0))
    finally:
        tracer.send_signal(signal.SIGINT)
        tracer.wait(20)
    trace = Trace(parse(Path(out).read_text(errors="replace")), server.data_dir)
    assert len(trace.responses) == len(expected), \
        f"{len(trace.responses)} responses traced for {len(expected)} requests: {[r.args[:90] for r in trace.responses]}"
    problems = []
    for n, (kind, blobs) in enumerate(expected):
        problems += (trace.check_blob_writes(n, blobs) if kind == "blobs" else trace.check_packed_write(n)
                     if kind == "packed" else trace.check_metadata_write(n))
    assert not problems, "\n".join(problems)
    # The objects are all there, as acknowledged.
    assert s3.get_object(Bucket="order", Key="multi")["ContentLength"] == (64 << 10) + (300 << 10)
    assert s3.get_object(Bucket="order", Key="large")["ContentLength"] == 3 << 20
