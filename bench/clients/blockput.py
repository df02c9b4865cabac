"""Upload one file as an Azure block blob through a SAS URL: Put Block of each --block bytes, one keep-alive
http.client connection, one block after the other (the Blob counterpart of `curl -T`), then Put Block List.
Each block is sent from a memoryview of the mmap'ed file, so the client copies nothing itself.
Prints one JSON line: {ok, bytes, blocks, secs, cpu, gbps, etag, problem}. cpu = this process during the upload
(imports excluded).
"""
import argparse
import base64
import http.client
import json
import mmap
import os
import time
from urllib.parse import quote, urlsplit

ap = argparse.ArgumentParser()
ap.add_argument("url", help="the blob's SAS URL (write permission)")
ap.add_argument("path")
ap.add_argument("--block", type=int, default=8 << 20)
ap.add_argument("--version", default="2025-01-05", help="x-ms-version to send")
ap.add_argument("--timeout", type=float, default=120)
a = ap.parse_args()
u = urlsplit(a.url)
size = os.path.getsize(a.path)
headers = {"x-ms-version": a.version}


def target(extra: str) -> str:
    return f"{u.path}?{extra}" + (f"&{u.query}" if u.query else "")


def result(ok: bool, problem: str = "", **kw) -> None:
    print(json.dumps({"ok": ok, "problem": problem, **kw}))


def main() -> None:
    ids = [base64.b64encode(f"block-{i:08d}".encode()).decode() for i in range((size + a.block - 1) // a.block)]
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=a.timeout)
    with open(a.path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        view = memoryview(mm)
        try:
            c0, t0 = time.process_time(), time.perf_counter()
            for i, block_id in enumerate(ids):
                chunk = view[i * a.block:min(size, (i + 1) * a.block)]
                conn.request("PUT", target(f"comp=block&blockid={quote(block_id, safe='')}"), body=chunk,
                             headers=headers)
                r = conn.getresponse()
                body = r.read()
                chunk.release()
                if r.status != 201:
                    return result(False, f"Put Block {i}: HTTP {r.status} {body[:300]!r}", bytes=i * a.block)
            xml = ('<?xml version="1.0" encoding="utf-8"?><BlockList>'
                   + "".join(f"<Latest>{b}</Latest>" for b in ids) + "</BlockList>").encode()
            conn.request("PUT", target("comp=blocklist"), body=xml,
                         headers={**headers, "Content-Type": "application/xml"})
            r = conn.getresponse()
            body = r.read()
            secs, cpu = time.perf_counter() - t0, time.process_time() - c0
        finally:
            view.release()
            conn.close()
    if r.status != 201:
        return result(False, f"Put Block List: HTTP {r.status} {body[:300]!r}", bytes=size)
    result(True, bytes=size, blocks=len(ids), secs=secs, cpu=cpu, gbps=size / secs / 1e9,
           etag=r.getheader("ETag", "").strip('"'))


main()
