"""Parallel ranged GET of one object: CONC threads, each on its own keep-alive http.client connection,
each reading its Range into a reused buffer (data discarded). The URL may be presigned (Range is not signed).
Prints one JSON line: {bytes, secs, cpu, gbps, statuses}. cpu = this process during the transfer (imports excluded).
"""
import argparse
import http.client
import json
import threading
import time
from urllib.parse import urlsplit

ap = argparse.ArgumentParser()
ap.add_argument("url")
ap.add_argument("--size", type=int, required=True)
ap.add_argument("--conc", type=int, default=8)
ap.add_argument("--buf", type=int, default=1 << 20)
ap.add_argument("--timeout", type=float, default=120)
a = ap.parse_args()
u = urlsplit(a.url)
target = u.path + ("?" + u.query if u.query else "")
part = -(-a.size // a.conc)
ranges = [(off, min(off + part, a.size) - 1) for off in range(0, a.size, part)]
got = [0] * len(ranges)
statuses = [None] * len(ranges)


def fetch(i):
    start, end = ranges[i]
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=a.timeout)
    try:
        c.request("GET", target, headers={"Range": f"bytes={start}-{end}"})
        r = c.getresponse()
        statuses[i] = r.status
        mv = memoryview(bytearray(a.buf))
        n = 0
        while True:
            k = r.readinto(mv)
            if not k:
                break
            n += k
        got[i] = n if n == end - start + 1 else -n
    except Exception as e:  # noqa: BLE001
        statuses[i] = repr(e)[:200]
    finally:
        c.close()


c0, t0 = time.process_time(), time.perf_counter()
ts = [threading.Thread(target=fetch, args=(i,)) for i in range(len(ranges))]
for t in ts:
    t.start()
for t in ts:
    t.join(a.timeout)
dt, cpu = time.perf_counter() - t0, time.process_time() - c0
ok = all(s == 206 for s in statuses) and all(g > 0 for g in got)
print(json.dumps({"bytes": sum(max(g, 0) for g in got), "secs": dt, "cpu": cpu,
                  "gbps": sum(max(g, 0) for g in got) / dt / 1e9, "ok": ok, "statuses": sorted(set(map(str, statuses)))}))
