"""Parallel ranged GET of one object, s3transfer-style: the object is cut into --part byte ranges and --conc threads,
each with its own keep-alive http.client connection, take ranges from a shared queue and read each into a reused
buffer (data discarded). The URL may be presigned (Range is not part of the signature).
Prints one JSON line: {bytes, secs, cpu, gbps, parts, ok, statuses}. cpu = this process during the transfer
(imports excluded).
"""
import argparse
import http.client
import json
import queue
import threading
import time
from urllib.parse import urlsplit

ap = argparse.ArgumentParser()
ap.add_argument("url")
ap.add_argument("--size", type=int, required=True)
ap.add_argument("--conc", type=int, default=8)
ap.add_argument("--part", type=int, default=64 << 20)
ap.add_argument("--buf", type=int, default=1 << 20)
ap.add_argument("--timeout", type=float, default=120)
a = ap.parse_args()
u = urlsplit(a.url)
target = u.path + ("?" + u.query if u.query else "")
todo = queue.Queue()
for off in range(0, a.size, a.part):
    todo.put((off, min(off + a.part, a.size) - 1))
parts = todo.qsize()
lock = threading.Lock()
total = [0]
statuses = set()
problems = []


def worker():
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=a.timeout)
    mv = memoryview(bytearray(a.buf))
    try:
        while not problems:
            try:
                start, end = todo.get_nowait()
            except queue.Empty:
                return
            c.request("GET", target, headers={"Range": f"bytes={start}-{end}"})
            r = c.getresponse()
            n = 0
            while True:
                k = r.readinto(mv)
                if not k:
                    break
                n += k
            with lock:
                statuses.add(r.status)
                total[0] += n
                if r.status != 206 or n != end - start + 1:
                    problems.append(f"bytes={start}-{end}: HTTP {r.status}, {n} bytes")
    except Exception as e:  # noqa: BLE001
        problems.append(repr(e)[:200])
    finally:
        c.close()


c0, t0 = time.process_time(), time.perf_counter()
ts = [threading.Thread(target=worker) for _ in range(min(a.conc, parts))]
for t in ts:
    t.start()
for t in ts:
    t.join(a.timeout)
dt, cpu = time.perf_counter() - t0, time.process_time() - c0
print(json.dumps({"bytes": total[0], "secs": dt, "cpu": cpu, "gbps": total[0] / dt / 1e9, "parts": parts,
                  "ok": not problems and total[0] == a.size, "statuses": sorted(map(str, statuses)),
                  "problem": problems[0] if problems else None}))
