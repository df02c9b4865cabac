"""KV-cache load client (the `kv` row), shaped like LMCache's S3 connector: whole-object PUTs of cache chunks, many
in flight, and the probe of a lookup: HEAD a key, then GET it.

One asyncio process (uvloop when available) with C keep-alive HTTP/1.1 connections; requests are pre-signed
paths, so the client does no signing. Responses are parsed by hand (status line and Content-Length) and bodies are
received into one scratch buffer and dropped (BufferedProtocol: no per-response allocation). Bodies of PUTs are
slices of one mmap'ed source file, sent without copying.

  kv.py put   HOST PORT KEYFILE SOURCE --conc 64                   every key once
  kv.py probe HOST PORT KEYFILE SOURCE --conc 256 --seconds 4      HEAD then GET of each key, round robin

KEYFILE: one key per line, tab-separated: size, source offset, PUT path, HEAD path, GET path. Prints one JSON line:
ok, problem, chunks, bytes, secs, cpu (process_time of the measured phase only) and latency percentiles in ms.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import mmap
import time

SCRATCH = bytearray(1 << 20)
SCRATCH_VIEW = memoryview(SCRATCH)


class HttpConnection(asyncio.BufferedProtocol):
    """One keep-alive connection, one request at a time. request() returns (status, content_length, body_bytes)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future | None = None
        self.head = bytearray()
        self.in_body = False
        self.body_left = 0
        self.body_got = 0
        self.status = 0
        self.length = 0
        self.no_body = False
        self.lost: Exception | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.lost = exc or ConnectionError("connection closed by the server")
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(self.lost)

    def get_buffer(self, sizehint: int):
        return SCRATCH_VIEW

    def buffer_updated(self, nbytes: int) -> None:
        if self.in_body:
            self._body(nbytes)
            return
        self.head += SCRATCH_VIEW[:nbytes]
        end = self.head.find(b"\r\n\r\n")
        if end < 0:
            return
        lines = bytes(self.head[:end]).split(b"\r\n")
        self.status = int(lines[0].split()[1])
        self.length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                self.length = int(value)
        extra = len(self.head) - end - 4
        self.head.clear()
        self.body_left = 0 if self.no_body else self.length
        self.body_got = 0
        self.in_body = True
        self._body(extra)

    def _body(self, n: int) -> None:
        self.body_left -= n
        self.body_got += n
        if self.body_left <= 0:
            self.in_body = False
            if self.body_left < 0:
                self.waiter.set_exception(ValueError(f"{-self.body_left} bytes beyond Content-Length"))
            elif self.waiter is not None and not self.waiter.done():
                self.waiter.set_result((self.status, self.length, self.body_got))

    async def request(self, head: bytes, body=None, no_body: bool = False, timeout: float = 60.0):
        if self.lost is not None:
            raise self.lost
        self.waiter = asyncio.get_running_loop().create_future()
        self.no_body = no_body
        self.transport.write(head)
        if body is not None:
            self.transport.write(body)
        return await asyncio.wait_for(self.waiter, timeout)


def request_head(method: str, path: str, host: str, length: int | None = None) -> bytes:
    extra = f"Content-Length: {length}\r\n" if length is not None else ""
    return f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode()


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))] * 1000


async def run(args) -> dict:
    keys = []
    with open(args.keyfile) as f:
        for line in f:
            size, off, put, head, get = line.rstrip("\n").split("\t")
            keys.append((int(size), int(off), put, head, get))
    with open(args.source, "rb") as f:
        src = memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
    hostport = f"{args.host}:{args.port}"
    loop = asyncio.get_running_loop()
    conns = []
    for _ in range(args.conc):
        _, proto = await loop.create_connection(HttpConnection, args.host, args.port)
        conns.append(proto)
    lat_a: list[float] = []   # PUT, or HEAD of the probe
    lat_b: list[float] = []   # GET of the probe
    done = {"chunks": 0, "bytes": 0}
    problems: list[str] = []
    next_key = iter(range(len(keys))) if args.phase == "put" else None
    counter = [0]
    deadline = time.perf_counter() + args.seconds

    async def put_worker(c: HttpConnection) -> None:
        for i in next_key:
            size, off, put, _, _ = keys[i]
            t = time.perf_counter()
            status, _, _ = await c.request(request_head("PUT", put, hostport, size), src[off:off + size])
            lat_a.append(time.perf_counter() - t)
            if status // 100 != 2:
                problems.append(f"PUT answered {status}")
                return
            done["chunks"] += 1
            done["bytes"] += size

    async def probe_worker(c: HttpConnection) -> None:
        while time.perf_counter() < deadline:
            i = counter[0] % len(keys)
            counter[0] += 1
            size, _, _, head, get = keys[i]
            t = time.perf_counter()
            status, length, _ = await c.request(request_head("HEAD", head, hostport), no_body=True)
            t1 = time.perf_counter()
            if status != 200 or length != size:
                problems.append(f"HEAD answered {status}, Content-Length {length}, expected 200 and {size}")
                return
            status, length, got = await c.request(request_head("GET", get, hostport))
            t2 = time.perf_counter()
            if status != 200 or got != size:
                problems.append(f"GET answered {status} with {got} bytes, expected 200 and {size}")
                return
            lat_a.append(t1 - t)
            lat_b.append(t2 - t1)
            done["chunks"] += 1
            done["bytes"] += size

    worker = put_worker if args.phase == "put" else probe_worker
    cpu0, t0 = time.process_time(), time.perf_counter()
    results = await asyncio.gather(*(worker(c) for c in conns), return_exceptions=True)
    secs, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    for r in results:
        if isinstance(r, BaseException):
            problems.append(f"{type(r).__name__}: {r}")
    for c in conns:
        if c.transport is not None:
            c.transport.close()
    if args.phase == "put" and not problems and done["chunks"] != len(keys):
        problems.append(f"{done['chunks']} of {len(keys)} PUTs done")
    a, b = ("put", None) if args.phase == "put" else ("head", "get")
    out = {"ok": not problems, "problem": "; ".join(sorted(set(problems)))[:400] or None, "secs": secs,
           "chunks": done["chunks"], "bytes": done["bytes"], "cpu": cpu,
           f"{a}_p50_ms": pct(lat_a, 50), f"{a}_p99_ms": pct(lat_a, 99)}
    if b:
        out.update({f"{b}_p50_ms": pct(lat_b, 50), f"{b}_p99_ms": pct(lat_b, 99)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("phase", choices=("put", "probe"))
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("keyfile")
    ap.add_argument("source")
    ap.add_argument("--conc", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=4.0, help="probe: duration; put: ignored")
    args = ap.parse_args()
    try:
        import uvloop
        result = uvloop.run(run(args))
    except ImportError:
        result = asyncio.run(run(args))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
